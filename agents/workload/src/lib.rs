//! [`Runtime`]: the workloads (guests) this host runs, each a process group led by a
//! supervisor ([`shim`]) that outlives the agent.
//!
//! A workload survives an agent restart: its supervisor is in its own process group, records
//! its pid under `<data-dir>/workloads/<namespace>_<name>/`, and a restarted agent adopts it
//! from there. A workload never outlives the agent's claim on the node: the agent touches
//! `<data-dir>/heartbeat` after each Lease renewal, and a supervisor that sees it go stale
//! for the grace period stops its guest — so a host whose agent died, or whose network is
//! cut, stops its guests before the cluster restarts them elsewhere.

pub mod shim;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_runtime::ObjectRef;
use keel_schemas::datadir::{self, AgentDir, WorkloadDir};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Why a workload operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// A file of the runtime could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor could not be started.
    #[error("cannot start the supervisor of {key}: {source}")]
    Spawn {
        /// The workload.
        key: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = WorkloadError> = std::result::Result<T, E>;

/// A running workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The object it runs for.
    pub key: ObjectRef,
    /// That object's uid.
    pub uid: String,
    /// The supervisor's pid (and process group).
    pub pid: i32,
}

/// What to run for a workload.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The command.
    pub command: Vec<String>,
    /// Where its standard output goes, rotated (else into the workload's `output.log`).
    pub console: Option<shim::ConsoleLog>,
    /// Where its supervisor records how it ended ([`shim::Exit`]).
    pub exit_file: Option<PathBuf>,
    /// The cgroups its supervisor joins before it starts the command.
    pub cgroups: Vec<PathBuf>,
}

/// The workloads of this host.
#[derive(Debug, Clone)]
pub struct Runtime {
    data: AgentDir,
    grace: Duration,
    exe: PathBuf,
}

// === impl Runtime ===

impl Runtime {
    /// The runtime keeping its state under `data_dir`, whose supervisors stop their guests
    /// when the heartbeat is `grace` old; `exe` is the `keel` binary (it runs `keel shim`).
    pub fn new(data_dir: &AgentDir, grace: Duration, exe: PathBuf) -> Result<Runtime> {
        // Supervisors run elsewhere than the agent's working dir: give them absolute paths.
        let root = data_dir.root();
        let data =
            AgentDir::new(std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()));
        let dir = data.workloads();
        std::fs::create_dir_all(&dir).map_err(|source| WorkloadError::Io { path: dir, source })?;
        Ok(Runtime { data, grace, exe })
    }

    /// Records a successful Lease renewal for the supervisors.
    pub fn touch_heartbeat(&self) -> Result<()> {
        let heartbeat = self.data.heartbeat();
        std::fs::write(&heartbeat, keel_schemas::time::now_rfc3339_micros()).map_err(|source| {
            WorkloadError::Io {
                path: heartbeat,
                source,
            }
        })
    }

    /// The workloads whose supervisor is alive.
    pub fn list(&self) -> Vec<Workload> {
        let Ok(entries) = std::fs::read_dir(self.data.workloads()) else {
            return Vec::new();
        };
        let mut out: Vec<Workload> = entries
            .flatten()
            .filter_map(|e| self.read(&WorkloadDir { root: e.path() }))
            .filter(|w| alive(w.pid))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// The workload of `key`, if its supervisor is alive.
    pub fn get(&self, key: &ObjectRef) -> Option<Workload> {
        self.read(&self.dir_of(key)).filter(|w| alive(w.pid))
    }

    /// Starts `launch` for the object `key` (uid `uid`) under a supervisor.
    pub async fn start(&self, key: &ObjectRef, uid: &str, launch: &Launch) -> Result<Workload> {
        let dir = self.dir_of(key);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WorkloadError::Io { path, source }
        };
        std::fs::create_dir_all(&dir.root).map_err(io(&dir.root))?;
        let log = dir.output_log();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(&log))?;
        let err = out.try_clone().map_err(io(&log))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("shim")
            .arg("--heartbeat")
            .arg(self.data.heartbeat())
            .arg("--grace-ms")
            .arg(self.grace.as_millis().to_string());
        if let Some(console) = &launch.console {
            cmd.arg("--console")
                .arg(&console.path)
                .arg("--console-max-bytes")
                .arg(console.max_bytes.to_string())
                .arg("--console-keep")
                .arg(console.keep.to_string());
        }
        if let Some(exit) = &launch.exit_file {
            cmd.arg("--exit-file").arg(exit);
        }
        for cgroup in &launch.cgroups {
            cmd.arg("--cgroup").arg(cgroup);
        }
        cmd.arg("--")
            .args(&launch.command)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: the agent's death (or its signals) leaves it running.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|source| WorkloadError::Spawn {
            key: key.to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or_default() as i32;
        // Reap it when it exits while this agent runs (an adopted one is init's to reap).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let uid_file = dir.uid();
        std::fs::write(&uid_file, uid).map_err(io(&uid_file))?;
        let pid_file = dir.pid();
        std::fs::write(&pid_file, pid.to_string()).map_err(io(&pid_file))?;
        Ok(Workload {
            key: key.clone(),
            uid: uid.to_string(),
            pid,
        })
    }

    /// Stops the workload of `key` (SIGTERM to its process group, SIGKILL after `patience`)
    /// and forgets it.
    pub async fn stop(&self, key: &ObjectRef, patience: Duration) -> Result<()> {
        let dir = self.dir_of(key);
        if let Some(w) = self.read(&dir) {
            let group = Pid::from_raw(w.pid);
            if alive(w.pid) {
                let _ = killpg(group, Signal::SIGTERM);
                let deadline = Instant::now() + patience;
                while alive(w.pid) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if alive(w.pid) {
                    let _ = killpg(group, Signal::SIGKILL);
                }
            }
        }
        match std::fs::remove_dir_all(&dir.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(WorkloadError::Io {
                path: dir.root,
                source,
            }),
        }
    }

    /// The last `bytes` bytes the supervisor of `key` and its command wrote to standard
    /// error (and standard output when no console file takes it).
    pub fn output_tail(&self, key: &ObjectRef, bytes: usize) -> String {
        let text = std::fs::read(self.dir_of(key).output_log()).unwrap_or_default();
        String::from_utf8_lossy(&text[text.len().saturating_sub(bytes)..]).into_owned()
    }

    fn dir_of(&self, key: &ObjectRef) -> WorkloadDir {
        self.data
            .workload(key.namespace.as_deref().unwrap_or(""), &key.name)
    }

    fn read(&self, dir: &WorkloadDir) -> Option<Workload> {
        let file = dir.root.file_name()?.to_str()?;
        let (ns, name) = datadir::parse_object_dir(file)?;
        let pid = std::fs::read_to_string(dir.pid())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let uid = std::fs::read_to_string(dir.uid()).unwrap_or_default();
        Some(Workload {
            key: ObjectRef::new((!ns.is_empty()).then_some(ns), name),
            uid: uid.trim().to_string(),
            pid,
        })
    }
}

/// Whether `pid` is a live (not zombie) `keel shim` process.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    // A reused pid would run something else. A process that is just starting may show an
    // empty command line for a moment, but its name (`keel`) already.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmdline.split(|b| *b == 0).any(|arg| arg == b"shim") {
        return true;
    }
    cmdline.is_empty()
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "keel")
}
