//! The containerd this host's pods run on, started and supervised by the agent as k3s embeds
//! it: its own config, root, state and socket under `<data-dir>/pods/containerd/`, so it
//! neither needs nor touches a system containerd.
//!
//! Containers outlive containerd: each runs under its own `containerd-shim-runc-v2`. So an
//! agent that restarts stops the containerd a previous agent left (found by its pid file),
//! starts its own, and containerd re-adopts the running shims from its state: pods keep
//! running, and are never started twice.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::cri::Cri;

/// How long containerd may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long containerd may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between restarts of a containerd that keeps exiting.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// How the supervised containerd is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `containerd` binary.
    pub binary: PathBuf,
    /// The image every pod's sandbox runs (Kubernetes' pause image).
    pub sandbox_image: String,
    /// Where the CNI plugins are.
    pub cni_bin_dir: PathBuf,
    /// Mirrors, credentials and TLS of registries (the agent's registries file).
    pub registries: crate::registries::Registries,
}

/// The files of the supervised containerd.
#[derive(Debug, Clone)]
pub struct Dir {
    root: PathBuf,
}

/// Why containerd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It started but did not answer on its socket in time.
    #[error(
        "containerd did not answer on {socket} within {START_TIMEOUT:?}: {last} (its log: {log})"
    )]
    NotAnswering {
        /// The socket.
        socket: PathBuf,
        /// The last error seen.
        last: String,
        /// Its log file.
        log: PathBuf,
    },
}

// === impl Settings ===

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            binary: PathBuf::from("containerd"),
            sandbox_image: "registry.k8s.io/pause:3.6".into(),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            registries: crate::registries::Registries::default(),
        }
    }
}

// === impl Dir ===

impl Dir {
    /// The containerd directory under the pod role's directory `pods`.
    pub fn new(pods: &Path) -> Dir {
        Dir {
            root: pods.join("containerd"),
        }
    }

    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// The CRI and containerd API socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("containerd.sock")
    }

    /// The CNI network configuration directory.
    pub fn cni_conf(&self) -> PathBuf {
        self.root.join("cni")
    }

    /// The per-registry host configuration (`hosts.toml` files, one directory per registry).
    pub fn registry_hosts(&self) -> PathBuf {
        self.root.join("certs.d")
    }

    /// The pid of the running containerd.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("containerd.pid")
    }

    /// containerd's own log.
    pub fn log(&self) -> PathBuf {
        self.root.join("containerd.log")
    }

    /// Its config file, for `settings`.
    pub fn render(&self, settings: &Settings) -> String {
        let q = |p: PathBuf| toml_string(&p.display().to_string());
        let root = &self.root;
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        format!(
            r#"# Written by the Keel agent at each start: edits are lost.
version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[{cri}]
  sandbox_image = {sandbox}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  # Keep what a host without CAP_SYS_RESOURCE (a container, a confined root) cannot do out of
  # the pods' way: the sandbox's oom_score_adj of -998 would fail the start.
  restrict_oom_score_adj = true
  # Pods' network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  max_container_log_line_size = 16384

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = {runc}

[{cri}.cni]
  bin_dir = {cni_bin}
  conf_dir = {cni_conf}
  max_conf_num = 1

[{cri}.registry]
  config_path = {hosts}
{auth}"#,
            root = q(root.join("root")),
            state = q(root.join("state")),
            socket = q(self.socket()),
            ttrpc = q(root.join("containerd.sock.ttrpc")),
            opt = q(root.join("opt")),
            sandbox = toml_string(&settings.sandbox_image),
            runc = q(root.join("runc")),
            cni_bin = q(settings.cni_bin_dir.clone()),
            cni_conf = q(self.cni_conf()),
            hosts = q(self.registry_hosts()),
            auth = settings.registries.auth_toml(cri),
        )
    }
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Starts containerd with its config in `dir` (stopping one a previous agent left) and
/// waits until it answers; then keeps it running — restarting it when it exits — until
/// `shutdown` turns true, and stops it. Returns the client and the supervising task.
pub async fn start(
    dir: Dir,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> Result<(Cri, tokio::task::JoinHandle<()>), ContainerdError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContainerdError::Io { path, source }
    };
    for d in [dir.root.clone(), dir.cni_conf(), dir.registry_hosts()] {
        std::fs::create_dir_all(&d).map_err(io(&d))?;
    }
    std::fs::write(dir.config(), dir.render(&settings)).map_err(io(&dir.config()))?;
    settings
        .registries
        .write_hosts(&dir.registry_hosts())
        .map_err(io(&dir.registry_hosts()))?;
    stop_stale(&dir).await;
    let cri = Cri::new(&dir.socket());
    let child = spawn(&dir, &settings)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match cri.version().await {
            Ok(v) => {
                tracing::info!(runtime = %v.runtime_name, version = %v.runtime_version, socket = %dir.socket().display(), "containerd answers");
                break;
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(ContainerdError::NotAnswering {
                    socket: dir.socket(),
                    last: e.to_string(),
                    log: dir.log(),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let task = tokio::spawn(supervise(dir, settings, child, shutdown));
    Ok((cri, task))
}

fn spawn(dir: &Dir, settings: &Settings) -> Result<Child, ContainerdError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log())
        .map_err(|source| ContainerdError::Io {
            path: dir.log(),
            source,
        })?;
    let err = log.try_clone().map_err(|source| ContainerdError::Io {
        path: dir.log(),
        source,
    })?;
    let child = Command::new(&settings.binary)
        .arg("--config")
        .arg(dir.config())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own process group: a Ctrl-C meant for the agent reaches it through the agent.
        .process_group(0)
        .spawn()
        .map_err(|source| ContainerdError::Spawn {
            binary: settings.binary.clone(),
            source,
        })?;
    if let Some(pid) = child.id() {
        let _ = std::fs::write(dir.pid_file(), pid.to_string());
    }
    Ok(child)
}

/// Stops the containerd of an earlier agent, if its pid file names one still running with
/// this config.
async fn stop_stale(dir: &Dir) {
    let Ok(text) = std::fs::read_to_string(dir.pid_file()) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let config = dir.config().display().to_string();
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == config.as_bytes());
    if !ours {
        return;
    }
    tracing::info!(pid, "stopping the containerd an earlier agent left");
    terminate(pid, || {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`] while `alive` says it still runs.
async fn terminate(pid: i32, alive: impl Fn() -> bool) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive() {
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn supervise(
    dir: Dir,
    settings: Settings,
    mut child: Child,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = shutdown.wait_for(|s| *s) => None,
        };
        if let Some(status) = exited {
            tracing::error!(status = ?status.ok(), log = %dir.log().display(), delay = ?delay, "containerd exited: restarting it");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
            match spawn(&dir, &settings) {
                Ok(c) => child = c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot restart containerd");
                    return;
                }
            }
            continue;
        }
        // Asked to stop: the containers run on under their shims.
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            if tokio::time::timeout(STOP_TIMEOUT, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        let _ = std::fs::remove_file(dir.pid_file());
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_everything_under_the_data_dir() {
        let dir = Dir::new(Path::new("/var/lib/keel/pods"));
        let settings = Settings {
            sandbox_image: "127.0.0.1:5000/pause:\"x\"".into(),
            ..Settings::default()
        };
        let config = dir.render(&settings);
        assert!(config.contains(r#"root = "/var/lib/keel/pods/containerd/root""#));
        assert!(config.contains(r#"address = "/var/lib/keel/pods/containerd/containerd.sock""#));
        assert!(config.contains(r#"sandbox_image = "127.0.0.1:5000/pause:\"x\"""#));
        assert!(config.contains(r#"config_path = "/var/lib/keel/pods/containerd/certs.d""#));
    }
}
