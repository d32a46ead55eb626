//! `keel shim`: the supervisor of one workload. It runs the guest's command as its child and
//! stops it when the agent's heartbeat file has not been touched for the grace period — the
//! fence that holds even when the agent itself is dead. It exits when its child does.

use std::path::Path;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often the supervisor looks at its child and the heartbeat.
const TICK: Duration = Duration::from_millis(200);
/// How long a fenced guest gets between SIGTERM and SIGKILL.
const STOP_PATIENCE: Duration = Duration::from_secs(3);

/// Runs `command` until it exits, or until `heartbeat` is `grace` old; then stops it.
pub fn run(heartbeat: &Path, grace: Duration, command: &[String]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        eprintln!("keel shim: no command to run");
        return ExitCode::from(2);
    };
    let mut child = match Command::new(program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel shim: cannot start {program}: {e}");
            return ExitCode::from(127);
        }
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                eprintln!("keel shim: {program} exited: {status}");
                return ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8);
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("keel shim: cannot wait for {program}: {e}");
                return ExitCode::from(1);
            }
        }
        if let Some(age) = stale(heartbeat, grace) {
            eprintln!(
                "keel shim: the agent's heartbeat is {:.1}s old (grace {:.1}s): fencing, stopping {program}",
                age.as_secs_f64(),
                grace.as_secs_f64()
            );
            stop(&mut child);
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(TICK);
    }
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

fn stop(child: &mut Child) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + STOP_PATIENCE;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
