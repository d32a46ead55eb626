//! `keel pod-fence`: the watchdog the agent starts for its pods (hidden from help).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

#[derive(Args, Debug)]
pub(super) struct PodFenceArgs {
    /// The agent's heartbeat file.
    #[arg(long)]
    heartbeat: PathBuf,
    /// Milliseconds the heartbeat may go untouched before the pods are killed.
    #[arg(long)]
    grace_ms: u64,
    /// The node's pod cgroup (`/keel-pods/...`).
    #[arg(long)]
    cgroup: String,
    /// The file naming the fence in charge; the fence exits when it names another.
    #[arg(long)]
    pid_file: PathBuf,
}

/// Kills the node's pods whenever the agent's heartbeat is stale, until replaced.
pub(super) fn run(args: &PodFenceArgs) -> ExitCode {
    keel_agent::pods::fence::run(&keel_agent::pods::fence::FenceConfig {
        heartbeat: args.heartbeat.clone(),
        grace: Duration::from_millis(args.grace_ms),
        cgroup: args.cgroup.clone(),
        pid_file: args.pid_file.clone(),
    })
}
