//! The fence of a node's pods that holds when the agent is dead.
//!
//! A live agent that loses its lease stops its pods itself, through CRI. A dead one cannot,
//! and containerd and its shims outlive it: the pods would run on while the cluster makes
//! them again elsewhere. So every pod's cgroups live under one parent per node
//! ([`cgroup_parent`], `/keel-pods/<node>-<key>`), and `keel pod-fence` — a small process the
//! agent starts, which outlives it as `keel shim` does for guests — kills every process
//! under that parent whenever the agent's heartbeat file is older than the lease. The
//! sandboxes then read as exited, and a live agent runs its pods again once it holds its
//! lease (as after its own fence).
//!
//! Killing a cgroup tree: with cgroup v2, `cgroup.kill`; with v1, the tree is frozen
//! (freezer), every process in it sent SIGKILL, and thawed so that the kills land, until
//! nothing is left. The fence exits when another takes its place (the pid file names
//! another process) or the agent's data dir is gone, removing the node's empty cgroups.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where the cgroup hierarchies are mounted.
const CGROUP_FS: &str = "/sys/fs/cgroup";
/// The first component of every node's cgroup parent.
const ROOT: &str = "keel-pods";
/// How often the fence looks at the heartbeat.
const TICK: Duration = Duration::from_millis(250);
/// How many freeze-kill-thaw rounds a fence tries before it waits for the next tick.
const ROUNDS: usize = 10;

/// What a fence watches and what it kills.
#[derive(Debug, Clone)]
pub struct FenceConfig {
    /// The agent's heartbeat file (touched at each lease renewal).
    pub heartbeat: PathBuf,
    /// How old the heartbeat may get.
    pub grace: Duration,
    /// The node's cgroup parent ([`cgroup_parent`]).
    pub cgroup: String,
    /// The file naming the fence in charge.
    pub pid_file: PathBuf,
}

/// The cgroup parent of the pods of the agent whose data dir is `data_dir`: `/keel-pods/`
/// and the node's name with a key of the data dir, so that agents sharing a host (tests,
/// several nodes in namespaces) never fence each other's pods.
pub fn cgroup_parent(data_dir: &Path, node: &str) -> String {
    let canonical = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: a stable name, not a secret.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let node: String = node
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(63)
        .collect();
    format!("/{ROOT}/{node}-{:08x}", hash as u32)
}

/// The cgroup parent of one pod's sandbox and containers.
pub fn pod_cgroup(parent: &str, uid: &str) -> String {
    let uid: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    format!("{parent}/pod{uid}")
}

/// Removes the (empty) cgroups of pod `uid` once its sandbox is gone; what is not empty
/// stays.
pub fn remove_pod_cgroup(parent: &str, uid: &str) {
    let Some(relative) = checked(&pod_cgroup(parent, uid)) else {
        return;
    };
    for dir in hierarchies(&relative) {
        remove_tree(&dir);
    }
}

/// Starts the node's fence with the `keel` binary `exe`, detached from the agent, in place
/// of any earlier one (named by the pid file).
pub fn spawn(exe: &Path, config: &FenceConfig, log: &Path) -> std::io::Result<u32> {
    stop_earlier(&config.pid_file, &config.cgroup);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    use std::os::unix::process::CommandExt as _;
    let child = Command::new(exe)
        .arg("pod-fence")
        .arg("--heartbeat")
        .arg(&config.heartbeat)
        .arg("--grace-ms")
        .arg(config.grace.as_millis().to_string())
        .arg("--cgroup")
        .arg(&config.cgroup)
        .arg("--pid-file")
        .arg(&config.pid_file)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own session: a signal meant for the agent's group does not reach it.
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    std::fs::write(&config.pid_file, pid.to_string())?;
    // It is reaped by init once the agent is gone; while the agent lives, a thread waits.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(pid)
}

/// `keel pod-fence`: watches the heartbeat until replaced or the data dir is gone.
pub fn run(config: &FenceConfig) -> ExitCode {
    let Some(relative) = checked(&config.cgroup) else {
        eprintln!(
            "keel pod-fence: {:?} is not a cgroup Keel made for pods",
            config.cgroup
        );
        return ExitCode::FAILURE;
    };
    let me = std::process::id().to_string();
    let mut fenced = false;
    loop {
        std::thread::sleep(TICK);
        let named = std::fs::read_to_string(&config.pid_file).map(|s| s.trim().to_string());
        match named {
            Ok(pid) if pid == me => {}
            Ok(_) => return ExitCode::SUCCESS,
            Err(_) => {
                // The data dir is gone (or this fence's file with it): leave nothing behind.
                for dir in hierarchies(&relative) {
                    remove_tree(&dir);
                }
                return ExitCode::SUCCESS;
            }
        }
        let age = std::fs::metadata(&config.heartbeat)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        // No heartbeat yet: the agent never held its lease, so it ran no pod.
        let stale = age.is_some_and(|age| age >= config.grace);
        if !stale {
            if fenced {
                eprintln!("keel pod-fence: the heartbeat is fresh again");
            }
            fenced = false;
            continue;
        }
        match kill_tree(&relative) {
            Ok(0) if fenced => {}
            Ok(killed) => {
                eprintln!(
                    "keel pod-fence: the agent's heartbeat is {:?} old (over {:?}): fenced, killed {killed} processes of the node's pods",
                    age.unwrap_or_default(),
                    config.grace
                );
                fenced = true;
            }
            Err(e) => eprintln!("keel pod-fence: cannot kill the node's pods: {e}"),
        }
    }
}

/// Kills every process in the cgroup tree `relative` (under each hierarchy); how many.
fn kill_tree(relative: &str) -> std::io::Result<usize> {
    let unified = Path::new(CGROUP_FS).join("cgroup.controllers").exists();
    if unified {
        let kill_file = Path::new(CGROUP_FS).join(relative).join("cgroup.kill");
        if kill_file.exists() {
            let count = procs(&Path::new(CGROUP_FS).join(relative)).len();
            std::fs::write(kill_file, "1")?;
            return Ok(count);
        }
    }
    let freezer = Path::new(CGROUP_FS).join("freezer").join(relative);
    let mut killed = 0;
    for _ in 0..ROUNDS {
        let mut pids: Vec<i32> = hierarchies(relative)
            .iter()
            .flat_map(|dir| procs(dir))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        if pids.is_empty() {
            break;
        }
        let frozen =
            freezer.exists() && std::fs::write(freezer.join("freezer.state"), "FROZEN").is_ok();
        for pid in &pids {
            if kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        if frozen {
            std::fs::write(freezer.join("freezer.state"), "THAWED")?;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(killed)
}

/// The directories of cgroup `relative` in every mounted hierarchy that has it.
fn hierarchies(relative: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let unified = Path::new(CGROUP_FS).join(relative);
    if Path::new(CGROUP_FS).join("cgroup.controllers").exists() {
        if unified.is_dir() {
            out.push(unified);
        }
        return out;
    }
    for entry in std::fs::read_dir(CGROUP_FS).into_iter().flatten().flatten() {
        let dir = entry.path().join(relative);
        if dir.is_dir() {
            out.push(dir);
        }
    }
    out
}

/// The processes of a cgroup and its descendants.
fn procs(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(procs(&entry.path()));
        }
    }
    out
}

/// Removes a cgroup tree's directories, deepest first (a cgroup with processes stays).
fn remove_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// `cgroup` relative to the hierarchies' roots, if it is one Keel made for pods (never the
/// root, never a path that climbs out).
fn checked(cgroup: &str) -> Option<String> {
    let relative = cgroup.trim_start_matches('/');
    let mut parts = relative.split('/');
    let ok = parts.next() == Some(ROOT)
        && parts.next().is_some_and(|p| !p.is_empty())
        && relative
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    ok.then(|| relative.to_string())
}

/// Stops the fence an earlier agent started, if the pid file names one still running for
/// the same cgroup.
fn stop_earlier(pid_file: &Path, cgroup: &str) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args.contains(&&b"pod-fence"[..]) && args.contains(&cgroup.as_bytes()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_per_agent_and_only_they_are_fenced() {
        let a = cgroup_parent(Path::new("/var/lib/keel-agent-a"), "node-1");
        let b = cgroup_parent(Path::new("/var/lib/keel-agent-b"), "node-1");
        assert!(a.starts_with("/keel-pods/node-1-") && a != b, "{a} {b}");
        assert_eq!(
            cgroup_parent(Path::new("/x"), "../etc/Ev!l"),
            cgroup_parent(Path::new("/x"), "..etcEvl")
        );
        assert_eq!(pod_cgroup(&a, "ab-12/../x"), format!("{a}/podab-12x"));
        assert!(checked(&a).is_some());
        for bad in [
            "/",
            "",
            "/keel-pods",
            "/keel-pods/",
            "/sys",
            "/keel-pods/a/../../x",
        ] {
            assert_eq!(checked(bad), None, "{bad}");
        }
    }
}
