//! `keel agent`: a host agent — it registers this host as a node of a cluster (with the
//! agent token, once) and runs the workloads the cluster places here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use keel_schemas::datadir::AgentDir;

use super::flags::{Listen, listen_or_off, seconds};
use super::roles::{DnsLimitArgs, GuestArgs, LbLimitArgs, PodArgs, S3Options};
use super::{hostname, shutdown_signal};

#[derive(Args, Debug)]
pub(super) struct AgentArgs {
    /// A server's API URL (`https://HOST:6443`).
    #[arg(long, env = "KEEL_SERVER_URL")]
    server: String,
    /// The agent token (`<data-dir>/agent-token` on a server) to register with; once the
    /// host has its node certificate it is not needed (nor used) again.
    #[arg(long, env = "KEEL_TOKEN")]
    token: Option<String>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Where the agent keeps its state.
    #[arg(long, default_value = "./keel-agent", env = "KEEL_AGENT_DIR")]
    data_dir: PathBuf,
    /// Seconds the node's Lease lasts: the agent stops its workloads after this long without
    /// renewing it.
    #[arg(long, default_value_t = 40.0)]
    lease_duration: f64,
    /// A label for the node (`key=value`); repeat for more.
    #[arg(long = "node-label")]
    node_labels: Vec<String>,
    /// Give this host the DNS role: its authoritative DNS server answers for the cluster's
    /// Zones here (UDP and TCP; port 0: a free port, published in the Node; `off`: no DNS
    /// role, the default).
    #[arg(long, default_value = "off", value_parser = listen_or_off)]
    dns_listen: Listen,
    #[command(flatten)]
    dns_limits: DnsLimitArgs,
    /// Give this host the storage role: its S3 endpoint serves the Buckets bound to it,
    /// with their data under the data directory (port 0: a free port, published in the
    /// Node; `off`: no storage role, the default).
    #[arg(long, default_value = "off", value_parser = listen_or_off)]
    s3_listen: Listen,
    #[command(flatten)]
    s3: S3Options,
    #[command(flatten)]
    guests: GuestArgs,
    /// This host serves no LoadBalancer (by default its agent's L4 proxy serves the VIPs the
    /// cluster places here).
    #[arg(long)]
    disable_load_balancer: bool,
    #[command(flatten)]
    lb: LbLimitArgs,
    #[command(flatten)]
    pods: PodArgs,
    /// The Open vSwitch database socket (probed as a capability).
    #[arg(long, default_value = "/var/run/openvswitch/db.sock")]
    ovs_socket: PathBuf,
    /// A kernel to boot under KVM to prove guests run there (default: the host's own from
    /// /boot); without one that boots, guests run under TCG.
    #[arg(long)]
    kvm_probe_kernel: Option<PathBuf>,
    /// Virtual CPUs the scheduler may place per core of this host.
    #[arg(long, default_value_t = 4.0)]
    cpu_allocation_ratio: f64,
    /// Where the agent's HTTPS endpoint listens (the API server reads consoles there).
    #[arg(long, default_value = "0.0.0.0:10250")]
    listen: SocketAddr,
}

/// Runs the agent until SIGINT or SIGTERM, or until it cannot go on.
pub(super) async fn agent(args: AgentArgs) -> Result<(), Box<dyn std::error::Error>> {
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let data_dir = AgentDir::new(&args.data_dir);
    let mut config =
        keel_agent::AgentConfig::new(&node_name, data_dir.clone(), std::env::current_exe()?);
    // Checked before anything talks to the cluster.
    config.s3_listen = args.s3_listen.0;
    args.s3.apply(&mut config, None)?;
    args.lb.apply(&mut config)?;
    let ca_file = data_dir.ca_cert();
    let ca = match &args.token {
        Some(text) => {
            let token = keel_apiserver::auth::JoinToken::parse(text).ok_or(
                "--token: not a join token (K10<ca hash>::node:<secret>, from <data-dir>/agent-token on a server)",
            )?;
            // The token pins the cluster CA: fetch the CA and check it before trusting the
            // server.
            let ca = keel_apiserver::auth::fetch_ca(&args.server, &token.ca_hash).await?;
            std::fs::create_dir_all(data_dir.pki())?;
            std::fs::write(&ca_file, &ca)?;
            ca
        }
        None => std::fs::read_to_string(&ca_file).map_err(|e| {
            format!("{}: {e}: a host that never registered needs --token (<data-dir>/agent-token on a server)", ca_file.display())
        })?,
    };
    let identity =
        keel_agent::identity::NodeIdentity::new(&node_name, &args.server, &ca, &data_dir);
    let client = identity.client(args.token.as_deref()).await?;
    match client.refresh_servers().await {
        Ok(n) => tracing::info!(servers = n, "learned the cluster's servers"),
        Err(e) => tracing::warn!(error = %e, "cannot list the cluster's servers yet"),
    }
    config.lease_duration = seconds(args.lease_duration);
    config.dns_listen = args.dns_listen.0;
    config.dns_limits = args.dns_limits.limits()?;
    config.dns_recursion = args.dns_limits.recursion("10.42.0.0/16")?;
    config.load_balancer = !args.disable_load_balancer;
    args.guests.apply(&mut config);
    let dns = args
        .pods
        .cluster_dns(keel_agent::pods::ClusterDns::default().address)?;
    args.pods.apply(&mut config, dns)?;
    config.ovs_socket = args.ovs_socket;
    config.kvm_probe_kernel = args.kvm_probe_kernel;
    config.listen = args.listen;
    if !(args.cpu_allocation_ratio > 0.0 && args.cpu_allocation_ratio <= 64.0) {
        return Err(format!(
            "--cpu-allocation-ratio {}: give a ratio above 0 and at most 64",
            args.cpu_allocation_ratio
        )
        .into());
    }
    config.cpu_allocation_ratio = args.cpu_allocation_ratio;
    config.ca_pem = ca;
    config.identity = Some(identity);
    for label in &args.node_labels {
        let (k, v) = label
            .split_once('=')
            .ok_or_else(|| format!("--node-label {label:?}: expected key=value"))?;
        config.labels.push((k.to_string(), v.to_string()));
    }
    println!("keel agent: node {node_name}, server {}", args.server);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut task = tokio::spawn(keel_agent::run(client, config, stopped));
    // An agent that cannot start (an unusable certificate, a port taken) ends now, with why.
    tokio::select! {
        _ = shutdown_signal() => {}
        ended = &mut task => {
            ended??;
            return Ok(());
        }
    }
    stop.send_replace(true);
    task.await??;
    Ok(())
}
