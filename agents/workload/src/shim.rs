//! `keel shim`: the supervisor of one workload. It runs the guest's command as its child,
//! copies the child's standard output into a size-rotated console log, records how the child
//! ended, and stops it when the agent's heartbeat file has not been touched for the grace
//! period — the fence that holds even when the agent itself is dead. It exits when its child
//! does.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How often the supervisor looks at its child and the heartbeat.
const TICK: Duration = Duration::from_millis(200);
/// How long a fenced guest gets between SIGTERM and SIGKILL.
const STOP_PATIENCE: Duration = Duration::from_secs(3);

/// What a supervisor runs and where it writes.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// The agent's heartbeat file.
    pub heartbeat: PathBuf,
    /// How old the heartbeat may get before the child is stopped.
    pub grace: Duration,
    /// Where the child's standard output goes (inherited when `None`).
    pub console: Option<ConsoleLog>,
    /// Where the supervisor records how the child ended ([`Exit`] as JSON).
    pub exit_file: Option<PathBuf>,
    /// The cgroups the supervisor joins before it starts the child (which inherits them).
    pub cgroups: Vec<PathBuf>,
    /// The child's command.
    pub command: Vec<String>,
}

/// A log file rotated by size: `path` is written, `path.1` … `path.<keep>` are older.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLog {
    /// The current file.
    pub path: PathBuf,
    /// Size at which it is rotated.
    pub max_bytes: u64,
    /// How many rotated files are kept.
    pub keep: u32,
}

/// How a workload's process ended, as its supervisor saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    /// The exit code, when it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether the supervisor stopped it because the agent's heartbeat went stale.
    #[serde(default)]
    pub fenced: bool,
    /// When (RFC 3339).
    pub at: String,
}

// === impl Exit ===

impl Exit {
    /// Whether the process ended by itself with success (for a guest: it powered off).
    pub fn clean(&self) -> bool {
        self.code == Some(0) && !self.fenced
    }

    /// How it ended, in words.
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            _ if self.fenced => {
                "stopped by its supervisor: the agent's heartbeat went stale".into()
            }
            (Some(0), _) => "exited cleanly (the guest powered off)".into(),
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "ended for an unknown reason".into(),
        }
    }

    fn of(status: ExitStatus, fenced: bool) -> Exit {
        Exit {
            code: status.code(),
            signal: status.signal(),
            fenced,
            at: keel_schemas::time::now_rfc3339(),
        }
    }
}

/// Runs the configured command until it exits, or until the heartbeat is `grace` old; then
/// stops it.
pub fn run(config: &ShimConfig) -> ExitCode {
    let Some((program, args)) = config.command.split_first() else {
        eprintln!("keel shim: no command to run");
        return ExitCode::from(2);
    };
    // Joined before the child starts, so that none of its life escapes the limits.
    for cgroup in &config.cgroups {
        let procs = cgroup.join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
            eprintln!(
                "keel shim: cannot join the cgroup {}: {e}",
                cgroup.display()
            );
            return ExitCode::from(126);
        }
    }
    let mut command = Command::new(program);
    command.args(args);
    if config.console.is_some() {
        command.stdout(Stdio::piped());
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel shim: cannot start {program}: {e}");
            return ExitCode::from(127);
        }
    };
    let copier = match (&config.console, child.stdout.take()) {
        (Some(log), Some(out)) => {
            let log = log.clone();
            Some(std::thread::spawn(move || copy_rotating(out, &log)))
        }
        _ => None,
    };
    let (status, fenced) = supervise(&mut child, config, program);
    if let Some(copier) = copier {
        // The child's end of the pipe closed with it: the copier drains and returns.
        let _ = copier.join();
    }
    let Some(status) = status else {
        return ExitCode::from(1);
    };
    let exit = Exit::of(status, fenced);
    eprintln!("keel shim: {program} {}", exit.describe());
    if let Some(path) = &config.exit_file {
        let text = serde_json::to_string(&exit).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("keel shim: cannot write {}: {e}", path.display());
        }
    }
    ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8)
}

/// Waits for the child, stopping it when the heartbeat goes stale. Returns its status (none
/// if it could not be waited for) and whether it was fenced.
fn supervise(child: &mut Child, config: &ShimConfig, program: &str) -> (Option<ExitStatus>, bool) {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (Some(status), false),
            Ok(None) => {}
            Err(e) => {
                eprintln!("keel shim: cannot wait for {program}: {e}");
                return (None, false);
            }
        }
        if let Some(age) = stale(&config.heartbeat, config.grace) {
            eprintln!(
                "keel shim: the agent's heartbeat is {:.1}s old (grace {:.1}s): fencing, stopping {program}",
                age.as_secs_f64(),
                config.grace.as_secs_f64()
            );
            return (stop(child), true);
        }
        std::thread::sleep(TICK);
    }
}

/// Copies `from` into the rotating log until end of file.
fn copy_rotating(mut from: impl Read, log: &ConsoleLog) {
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    };
    let Ok(mut file) = open(&log.path) else {
        eprintln!("keel shim: cannot open {}", log.path.display());
        // Keep draining so that the child never blocks on a full pipe.
        let _ = std::io::copy(&mut from, &mut std::io::sink());
        return;
    };
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if size > 0 && size + n as u64 > log.max_bytes {
            drop(file);
            rotate(log);
            match open(&log.path) {
                Ok(f) => file = f,
                Err(e) => {
                    eprintln!("keel shim: cannot reopen {}: {e}", log.path.display());
                    let _ = std::io::copy(&mut from, &mut std::io::sink());
                    return;
                }
            }
            size = 0;
        }
        if file.write_all(&buf[..n]).is_ok() {
            size += n as u64;
        }
    }
}

/// Shifts `path.i` to `path.(i+1)` (dropping the oldest) and `path` to `path.1`.
pub fn rotate(log: &ConsoleLog) {
    let numbered = |i: u32| PathBuf::from(format!("{}.{i}", log.path.display()));
    if log.keep == 0 {
        let _ = std::fs::remove_file(&log.path);
        return;
    }
    let _ = std::fs::remove_file(numbered(log.keep));
    for i in (1..log.keep).rev() {
        let _ = std::fs::rename(numbered(i), numbered(i + 1));
    }
    let _ = std::fs::rename(&log.path, numbered(1));
    // A reader following the log sees the new file appear.
    let _ = File::create(&log.path);
}

/// The heartbeat's age when it is older than `grace` (or missing).
fn stale(heartbeat: &Path, grace: Duration) -> Option<Duration> {
    let age = std::fs::metadata(heartbeat)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(Duration::MAX);
    (age >= grace).then_some(age)
}

fn stop(child: &mut Child) -> Option<ExitStatus> {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + STOP_PATIENCE;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_log_rotates_by_size_and_keeps_a_bounded_history() {
        let dir = tempfile::tempdir().unwrap();
        let log = ConsoleLog {
            path: dir.path().join("console.log"),
            max_bytes: 100,
            keep: 2,
        };
        let input: Vec<u8> = (0..1000).map(|i| b'a' + (i % 26) as u8).collect();
        // Reads of 16 KiB at most: feed it in small pieces as a pipe would.
        struct Chunks<'a>(&'a [u8]);
        impl Read for Chunks<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(30).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        copy_rotating(Chunks(&input), &log);
        let read = |p: &str| std::fs::read(dir.path().join(p)).unwrap_or_default();
        let (cur, one, two) = (
            read("console.log"),
            read("console.log.1"),
            read("console.log.2"),
        );
        assert!(cur.len() <= 100 && one.len() <= 100 && two.len() <= 100);
        assert!(!dir.path().join("console.log.3").exists());
        let tail: Vec<u8> = [two, one, cur].concat();
        assert!(
            input.ends_with(&tail),
            "the newest bytes are kept, in order"
        );
        assert!(tail.len() >= 200);
    }

    #[test]
    fn exits_say_how_the_guest_ended() {
        let clean = Exit::of(ExitStatus::from_raw(0), false);
        assert!(clean.clean());
        assert!(clean.describe().contains("powered off"));
        let killed = Exit::of(ExitStatus::from_raw(9), false);
        assert!(!killed.clean());
        assert_eq!(killed.signal, Some(9));
        assert!(killed.describe().contains("signal 9"));
        let fenced = Exit::of(ExitStatus::from_raw(0), true);
        assert!(!fenced.clean());
    }
}
