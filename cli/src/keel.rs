//! `keel`: runs a Keel server (`keel server`, with the cluster controllers and a local
//! agent) or a host agent (`keel agent`); `keel kv` and `keel cluster` are a small debug
//! client of the replicated store; `keel shim` is the supervisor the agent starts for each
//! workload; `keel secrets-encrypt` manages the keys Secrets are encrypted with at rest.
//!
//! Modules: `server` (`keel server`: the API server, the controllers, the local agent),
//! `agent` (`keel agent`), `roles` (the flags of a host's roles, which both share), `flags`
//! (parsers of flag values), `kv` and `cluster` (the store's debug client), `secrets`
//! (`keel secrets-encrypt`), `shim` (`keel shim`).

mod agent;
mod cluster;
mod flags;
mod kv;
mod pod_fence;
mod roles;
mod secrets;
mod server;
mod shim;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keel_apiserver::raft::Client;
use keel_schemas::datadir::ServerDir;

use agent::AgentArgs;
use cluster::ClusterCommand;
use kv::KvCommand;
use pod_fence::PodFenceArgs;
use secrets::SecretsEncryptCommand;
use server::ServerArgs;
use shim::ShimArgs;

/// Keel: a declarative control plane for a small cloud.
#[derive(Parser, Debug)]
#[command(name = "keel", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a server: start a new cluster, restart from the data dir, or join a cluster.
    Server(Box<ServerArgs>),
    /// Run a host agent: register this host as a node of a cluster and run its workloads.
    Agent(Box<AgentArgs>),
    /// Supervise one workload (started by the agent): run COMMAND, stop it when the agent's
    /// heartbeat goes stale.
    #[command(hide = true)]
    Shim(ShimArgs),
    /// Kill the node's pods whenever the agent's heartbeat goes stale (started by the
    /// agent; it outlives it).
    #[command(hide = true)]
    PodFence(PodFenceArgs),
    /// Read and write keys of the replicated store (a debug surface until the HTTPS API).
    Kv {
        #[command(subcommand)]
        command: KvCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Inspect and change the cluster's membership.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        target: Target,
    },
    /// The keys Secrets are encrypted with at rest.
    SecretsEncrypt {
        #[command(subcommand)]
        command: SecretsEncryptCommand,
        /// The server's data dir.
        #[arg(
            long,
            global = true,
            default_value = "./keel-data",
            env = "KEEL_DATA_DIR"
        )]
        data_dir: PathBuf,
    },
}

/// The server `keel kv` and `keel cluster` talk to, and the certificates they use.
#[derive(Args, Debug)]
struct Target {
    /// The server's Raft address.
    #[arg(
        long,
        short = 's',
        global = true,
        default_value = "127.0.0.1:6444",
        env = "KEEL_SERVER"
    )]
    server: String,
    /// A server data dir whose certificates to use (servers only talk to their own cluster).
    #[arg(
        long,
        global = true,
        default_value = "./keel-data",
        env = "KEEL_DATA_DIR"
    )]
    data_dir: PathBuf,
}

// === impl Target ===

impl Target {
    /// Connects with the data dir's certificates, or without TLS when it has none.
    async fn connect(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Client, Box<dyn std::error::Error>> {
        let tls = keel_apiserver::auth::Certificates::load(&ServerDir::new(&self.data_dir))?;
        Ok(match tls {
            Some(certs) => Client::connect_tls(addr, timeout, &certs.peer_tls()).await?,
            None => Client::connect(addr, timeout).await?,
        })
    }
}

/// Runs the command.
pub async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Server(args) => server::serve(*args).await,
        Command::Agent(args) => agent::agent(*args).await,
        Command::Shim(_) | Command::PodFence(_) => Ok(()),
        Command::Kv { command, target } => kv::kv(command, &target).await,
        Command::Cluster { command, target } => cluster::cluster(command, &target).await,
        Command::SecretsEncrypt { command, data_dir } => {
            secrets::secrets_encrypt(command, &data_dir)
        }
    }
}

/// Runs `keel shim`, the workload supervisor, or `keel pod-fence`, the pods' watchdog,
/// which are synchronous and tiny: they need no async runtime and no tracing, so the binary
/// calls this first. `None` for every other command.
pub fn shim(cli: &Cli) -> Option<ExitCode> {
    match &cli.command {
        Command::Shim(args) => Some(shim::run(args)),
        Command::PodFence(args) => Some(pod_fence::run(args)),
        _ => None,
    }
}

/// The host's name, lowercased (`localhost` when it has none): a node's default name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Resolves on SIGINT or SIGTERM: the end of a server or an agent.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
