//! `keel shim`: the supervisor the agent starts for each workload (hidden from help).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use keel_agent::workload::shim;

#[derive(Args, Debug)]
pub(super) struct ShimArgs {
    /// The agent's heartbeat file.
    #[arg(long)]
    heartbeat: PathBuf,
    /// Milliseconds the heartbeat may go untouched before the workload is stopped.
    #[arg(long)]
    grace_ms: u64,
    /// A file for the workload's standard output, rotated by size.
    #[arg(long)]
    console: Option<PathBuf>,
    /// Size at which the console file is rotated.
    #[arg(long, default_value_t = 1 << 20)]
    console_max_bytes: u64,
    /// How many rotated console files are kept.
    #[arg(long, default_value_t = 2)]
    console_keep: u32,
    /// A file where the supervisor records how the workload ended.
    #[arg(long)]
    exit_file: Option<PathBuf>,
    /// A cgroup directory the supervisor joins before it starts the workload; repeatable.
    #[arg(long = "cgroup")]
    cgroups: Vec<PathBuf>,
    /// The workload's command.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Runs COMMAND under the supervisor until it ends or the agent's heartbeat goes stale.
pub(super) fn run(args: &ShimArgs) -> ExitCode {
    shim::run(&shim::ShimConfig {
        heartbeat: args.heartbeat.clone(),
        grace: Duration::from_millis(args.grace_ms),
        console: args.console.clone().map(|path| shim::ConsoleLog {
            path,
            max_bytes: args.console_max_bytes,
            keep: args.console_keep,
        }),
        exit_file: args.exit_file.clone(),
        cgroups: args.cgroups.clone(),
        command: args.command.clone(),
    })
}
