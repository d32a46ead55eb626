//! `keel server`: a Keel server — the replicated store and the HTTPS API, the cluster
//! controllers (run by the elected server) and, unless disabled, a local agent that makes
//! the server a node too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use keel_agent::identity::{IdentityError, NodeIdentity};
use keel_apiserver::raft::{ServerConfig, Tuning};
use keel_apiserver::{ApiConfig, ApiServer};
use keel_schemas::datadir::ServerDir;

use super::flags::{Listen, duration, listen_or_off, seconds};
use super::roles::{DnsLimitArgs, GuestArgs, LbLimitArgs, PodArgs, S3Options};
use super::{hostname, shutdown_signal};

/// How long the certificate a server's local agent serves S3 with lasts; it is issued at
/// every start and renewed two thirds into its life.
const S3_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

#[derive(Args, Debug)]
pub(super) struct ServerArgs {
    /// Where the server keeps its data.
    #[arg(long, default_value = "./keel-data", env = "KEEL_DATA_DIR")]
    data_dir: PathBuf,
    /// This server's node id (default: 1 for a new cluster, the next free id when joining).
    #[arg(long)]
    node_id: Option<u64>,
    /// Where the HTTPS API listens.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Where the Raft and cluster gRPC services listen.
    #[arg(long, default_value = "0.0.0.0:6444")]
    raft_listen: SocketAddr,
    /// The host or IP other servers and clients reach this server at (default: the listen
    /// address, or 127.0.0.1 when listening on every address).
    #[arg(long)]
    advertise: Option<String>,
    /// Join the cluster of this server: its API URL (`https://HOST:6443`).
    #[arg(long, requires = "token")]
    join: Option<String>,
    /// The join token (`<data-dir>/join-token` on any server of the cluster).
    #[arg(long, env = "KEEL_TOKEN")]
    token: Option<String>,
    /// Seconds a joining server may take to catch up before the join is abandoned.
    #[arg(long, default_value_t = 30)]
    join_timeout: u64,
    /// Build a snapshot after this many log entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_after_logs: u64,
    /// Revisions of history kept for watches and past reads before compaction.
    #[arg(long, default_value_t = 100_000)]
    history_revisions: u64,
    /// Heartbeat interval in milliseconds (elections time out after 10 to 20 heartbeats).
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// The name of this server's node (its local agent).
    #[arg(long)]
    node_name: Option<String>,
    /// Do not run a local agent: this server is not a node.
    #[arg(long)]
    disable_agent: bool,
    #[command(flatten)]
    timings: ControllerTimings,
    /// Seconds the local agent's node Lease lasts (it fences after that long without renewal).
    #[arg(long, default_value_t = 40.0)]
    node_lease_duration: f64,
    /// A kernel the local agent boots under KVM to prove guests run there (default: the
    /// host's own from /boot).
    #[arg(long)]
    kvm_probe_kernel: Option<PathBuf>,
    /// The OVN northbound database the network controller programs (`tcp:HOST:PORT` or
    /// `unix:PATH`); without it VPCs are not programmed.
    #[arg(long)]
    ovn_nb: Option<String>,
    /// The external network VPCs' source NAT leads to (`172.16.0.0/24`).
    #[arg(long, requires_all = ["ovn_nb", "ovn_gateway_chassis"])]
    ovn_external_network: Option<String>,
    /// The upstream router on the external network (default: its first address).
    #[arg(long)]
    ovn_external_gateway: Option<String>,
    /// The chassis (ovn-controller's system-id) that hosts the VPCs' gateway ports.
    #[arg(long)]
    ovn_gateway_chassis: Option<String>,
    /// The physical network name the chassis maps to a bridge (`ovn-bridge-mappings`).
    #[arg(long, default_value = "external")]
    ovn_external_physnet: String,
    /// Where the local agent's HTTPS endpoint listens (default: a free port, published in
    /// its Node, so that several servers can share a host).
    #[arg(long, default_value = "0.0.0.0:0")]
    agent_listen: SocketAddr,
    /// Where the local agent's authoritative DNS server answers for the cluster's Zones
    /// (UDP and TCP; port 0: a free port, published in its Node; `off`: no DNS role).
    /// Use port 53 in production.
    #[arg(long, default_value = "0.0.0.0:5353", value_parser = listen_or_off)]
    dns_listen: Listen,
    #[command(flatten)]
    dns_limits: DnsLimitArgs,
    /// Where the local agent's S3 endpoint serves the Buckets bound to this node (port 0: a
    /// free port, published in its Node; `off`: no storage role).
    #[arg(long, default_value = "0.0.0.0:9000", value_parser = listen_or_off)]
    s3_listen: Listen,
    /// The range LoadBalancers without spec.vip or spec.subnet get their VIP from
    /// (`192.0.2.0/28`); the addresses must reach the node serving them.
    #[arg(long)]
    lb_vip_pool: Option<String>,
    /// The local agent serves no LoadBalancer.
    #[arg(long)]
    disable_load_balancer: bool,
    /// The cluster's pod addresses: each node gets a /24 of it for its pods (k3s's
    /// default).
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// The cluster's Service addresses (ClusterIPs; k3s's default).
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    #[command(flatten)]
    lb: LbLimitArgs,
    #[command(flatten)]
    pods: PodArgs,
    #[command(flatten)]
    s3: S3Options,
    #[command(flatten)]
    guests: GuestArgs,
    #[command(flatten)]
    access: AccessArgs,
}

/// Authentication, certificates and the audit log of a server.
#[derive(Args, Debug)]
struct AccessArgs {
    /// How long the client certificates the server signs for nodes (and its own
    /// controllers) last; nodes renew theirs after two thirds of it (720h, 30d, 90s).
    #[arg(long, default_value = "720h", value_parser = duration)]
    node_cert_lifetime: Duration,
    /// The issuer named in service-account tokens, and their default audience.
    #[arg(long, default_value = keel_apiserver::DEFAULT_ISSUER)]
    service_account_issuer: String,
    /// Serve requests without credentials as system:anonymous (which RBAC allows only
    /// health, version and discovery).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    anonymous_auth: bool,
    /// The audit log (default: <data-dir>/audit/audit.log; `off`: none).
    #[arg(long)]
    audit_log_path: Option<String>,
    /// The audit log's size in MiB before it is rotated.
    #[arg(long, default_value_t = 100)]
    audit_log_maxsize: u64,
    /// How many rotated audit logs are kept.
    #[arg(long, default_value_t = 5)]
    audit_log_maxbackup: usize,
}

/// Timings of the cluster controllers (seconds, fractions allowed).
#[derive(Args, Debug)]
struct ControllerTimings {
    /// A node whose Lease is not renewed for this long becomes Ready=Unknown.
    #[arg(long, default_value_t = 40.0)]
    node_monitor_grace_period: f64,
    /// How long after that an unreachable node's VMs are moved (the fencing margin).
    #[arg(long, default_value_t = 20.0)]
    node_eviction_timeout: f64,
    /// How long the controllers' Lease lasts without renewal.
    #[arg(long, default_value_t = 15.0)]
    leader_elect_lease_duration: f64,
    /// The controllers' leader gives up when it could not renew for this long.
    #[arg(long, default_value_t = 10.0)]
    leader_elect_renew_deadline: f64,
    /// How often candidates try to take or renew the controllers' Lease.
    #[arg(long, default_value_t = 2.0)]
    leader_elect_retry_period: f64,
}

/// The client certificates of the server's own components (its controllers), issued by
/// the server itself and re-issued before they expire.
#[derive(Clone)]
struct OwnIdentities {
    server: std::sync::Arc<ApiServer>,
    lifetime: Duration,
    clients:
        std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, keel_client::Client>>>,
}

// === impl OwnIdentities ===

impl OwnIdentities {
    /// Issues a certificate, and makes a client, for each of the server's components.
    fn new(
        server: std::sync::Arc<ApiServer>,
        lifetime: Duration,
    ) -> Result<OwnIdentities, Box<dyn std::error::Error>> {
        let identities = OwnIdentities {
            server,
            lifetime,
            clients: Default::default(),
        };
        let users = std::iter::once(keel_schemas::identity::CONTROLLER_MANAGER.to_string()).chain(
            keel_apiserver::auth::policy::CONTROLLERS
                .iter()
                .map(|c| keel_schemas::identity::controller_user(c)),
        );
        for user in users {
            let issued = identities.server.issue_client(&user, None, lifetime)?;
            let client = keel_client::Client::with_certificate(
                identities.server.url(),
                identities.server.ca_pem(),
                &issued.cert_pem,
                &issued.key_pem,
            )?;
            identities.lock().insert(user, client);
        }
        Ok(identities)
    }

    /// The clients, by user (a poisoned lock is taken over: the map stays whole).
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, keel_client::Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client of `user` (one of the server's components).
    fn client(&self, user: &str) -> keel_client::Client {
        match self.lock().get(user) {
            Some(client) => client.clone(),
            // Invariant: every controller the manager runs is in policy::CONTROLLERS.
            None => panic!("invariant: {user} is one of the server's own identities"),
        }
    }

    /// Re-issues every certificate two thirds into its life, until `stop`.
    async fn keep_renewed(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(self.lifetime * 2 / 3) => {}
            }
            let clients: Vec<(String, keel_client::Client)> = self
                .lock()
                .iter()
                .map(|(u, c)| (u.clone(), c.clone()))
                .collect();
            for (user, client) in clients {
                let renewed = self
                    .server
                    .issue_client(&user, None, self.lifetime)
                    .map_err(|e| e.to_string())
                    .and_then(|i| {
                        client
                            .set_identity(&i.cert_pem, &i.key_pem)
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = renewed {
                    tracing::warn!(%user, error = %e, "cannot renew a controller's certificate");
                }
            }
        }
    }
}

/// Runs the server until SIGINT or SIGTERM, or until its store fails.
pub(super) async fn serve(args: ServerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let api = api_config(&args)?;
    let data_dir = ServerDir::new(&api.raft.data_dir);
    let server = Arc::new(ApiServer::start(api).await?);
    let raft = server.raft();
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut manager = manager_config(&format!("{node_name}-{}", raft.node_id()), &args)?;
    manager.ca_pem = Some(server.ca_pem().to_string());
    let identities = OwnIdentities::new(server.clone(), args.access.node_cert_lifetime)?;
    tasks.spawn(identities.clone().keep_renewed(stopped.clone()));
    let clients = identities.clone();
    tasks.spawn(keel_controllers::run_manager(
        identities.client(keel_schemas::identity::CONTROLLER_MANAGER),
        Arc::new(move |name: &str| clients.client(&keel_schemas::identity::controller_user(name))),
        manager,
        stopped.clone(),
    ));
    if !args.disable_agent {
        let (agent, identity) = local_agent_config(&args, &server, &node_name, &data_dir)?;
        let token = server.agent_token();
        tasks.spawn(run_local_agent(agent, identity, token, stopped.clone()));
    }
    println!(
        "keel server: node {} of cluster {}, API at {}, raft at {}; admin kubeconfig: {}",
        raft.node_id(),
        raft.cluster_id(),
        server.url(),
        raft.raft_addr(),
        server.kubeconfig().display(),
    );
    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        reason = raft.failed() => Err(format!("the server stopped: {reason}").into()),
    };
    stop.send_replace(true);
    while tasks.join_next().await.is_some() {}
    server.shutdown().await;
    result
}

/// The store's and the API's settings from the flags.
fn api_config(args: &ServerArgs) -> Result<ApiConfig, String> {
    let heartbeat = Duration::from_millis(args.heartbeat_ms.max(10));
    let raft_advertise = args.advertise.as_ref().map(|host| {
        let port = args.raft_listen.port();
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    });
    let config = ServerConfig {
        data_dir: args.data_dir.clone(),
        node_id: args.node_id,
        raft_listen: args.raft_listen,
        advertise: raft_advertise,
        join: None,
        tls: None,
        tuning: Tuning {
            heartbeat_interval: heartbeat,
            election_timeout: (heartbeat * 10, heartbeat * 20),
            join_timeout: Duration::from_secs(args.join_timeout),
            snapshot_after_logs: args.snapshot_after_logs.max(1),
            history_revisions: args.history_revisions,
            ..Tuning::default()
        },
    };
    let mut api = ApiConfig::new(config, args.listen);
    api.advertise_host = args.advertise.clone();
    api.join = args.join.clone().zip(args.token.clone());
    api.extra_metrics = Some(process_metrics);
    api.issuer = args.access.service_account_issuer.clone();
    api.node_certificate_lifetime = args.access.node_cert_lifetime;
    api.anonymous = args.access.anonymous_auth;
    match args.access.audit_log_path.as_deref() {
        Some("off") => api.audit = None,
        other => {
            if let (Some(path), Some(audit)) = (other, api.audit.as_mut()) {
                audit.path = PathBuf::from(path);
            }
            if let Some(audit) = api.audit.as_mut() {
                audit.max_bytes = args.access.audit_log_maxsize.max(1) << 20;
                audit.max_backups = args.access.audit_log_maxbackup;
            }
        }
    }
    // Pods reach the API through the `kubernetes` Service: its address and names.
    if let Some(address) = service_range(args)?.nth(1) {
        api.extra_names = vec![
            address.to_string(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            format!("kubernetes.default.svc.{}", cluster_dns(args)?.domain),
        ];
    }
    if let Some(pool) = &args.lb_vip_pool {
        api.tenancy.lb_vip_pool = Some(
            pool.parse::<keel_schemas::Cidr>()
                .map_err(|e| format!("--lb-vip-pool {pool:?}: {e}"))?,
        );
    }
    Ok(api)
}

/// The metrics of this process's controllers and its local agent's DNS server, for the API's
/// `/metrics`.
fn process_metrics() -> String {
    keel_runtime::metrics::render() + &keel_agent::dns::render_metrics()
}

/// The controllers' settings from the flags; `identity` names this server's candidate for
/// the controllers' Lease.
/// The cluster's Service range (`--service-cidr`).
fn service_range(args: &ServerArgs) -> Result<keel_controllers::services::ServiceRange, String> {
    keel_controllers::services::ServiceRange::parse(&args.service_cidr)
        .map_err(|e| format!("--service-cidr: {e}"))
}

/// The cluster DNS (`--cluster-dns`, by default the tenth address of the Service range, and
/// `--cluster-domain`).
fn cluster_dns(args: &ServerArgs) -> Result<keel_agent::pods::ClusterDns, String> {
    let range = service_range(args)?;
    let dns = args
        .pods
        .cluster_dns(range.nth(10).unwrap_or(range.network))?;
    if !range.contains(dns.address) {
        return Err(format!(
            "--cluster-dns {} is not in --service-cidr {}",
            dns.address, args.service_cidr
        ));
    }
    Ok(dns)
}

fn manager_config(
    identity: &str,
    args: &ServerArgs,
) -> Result<keel_controllers::ManagerConfig, String> {
    let t = &args.timings;
    let mut config = keel_controllers::ManagerConfig::new(identity);
    config.lease_duration = seconds(t.leader_elect_lease_duration);
    config.renew_deadline = seconds(t.leader_elect_renew_deadline);
    config.retry_period = seconds(t.leader_elect_retry_period);
    config.nodes.grace_period = seconds(t.node_monitor_grace_period);
    config.nodes.eviction_timeout = seconds(t.node_eviction_timeout);
    config.ovn_nb = args.ovn_nb.clone();
    config.pod_ranges = Some(
        keel_controllers::node_ipam::PodRanges::parse(&args.cluster_cidr, 24)
            .map_err(|e| format!("--cluster-cidr: {e}"))?,
    );
    config.service_range = Some(service_range(args)?);
    config.cluster_dns = Some(cluster_dns(args)?);
    if let Some(pool) = &args.lb_vip_pool {
        config.load_balancers.vip_pool = Some(pool.clone());
    }
    if let Some(cidr) = &args.ovn_external_network {
        let parsed: keel_schemas::Cidr = cidr
            .parse()
            .map_err(|e| format!("--ovn-external-network {cidr:?}: {e}"))?;
        let gateway = match &args.ovn_external_gateway {
            Some(g) => g.clone(),
            None => parsed
                .first_host()
                .ok_or_else(|| format!("--ovn-external-network {cidr:?} has no host address"))?
                .to_string(),
        };
        if !parsed.contains(
            gateway
                .parse()
                .map_err(|_| format!("--ovn-external-gateway {gateway:?} is not an address"))?,
        ) {
            return Err(format!(
                "--ovn-external-gateway {gateway} is not inside {cidr}"
            ));
        }
        config.ovn_external = Some(keel_controllers::network::External {
            cidr: cidr.clone(),
            gateway,
            chassis: args.ovn_gateway_chassis.clone().unwrap_or_default(),
            physnet: args.ovn_external_physnet.clone(),
        });
    }
    Ok(config)
}

/// The local agent's settings from the flags, and its identity: a node like any other,
/// whose S3 endpoint serves a certificate of the cluster CA.
fn local_agent_config(
    args: &ServerArgs,
    server: &Arc<ApiServer>,
    node_name: &str,
    data_dir: &ServerDir,
) -> Result<(keel_agent::AgentConfig, NodeIdentity), Box<dyn std::error::Error>> {
    let mut agent =
        keel_agent::AgentConfig::new(node_name, data_dir.agent(), std::env::current_exe()?);
    agent.lease_duration = seconds(args.node_lease_duration);
    agent.kvm_probe_kernel = args.kvm_probe_kernel.clone();
    agent.listen = args.agent_listen;
    agent.dns_listen = args.dns_listen.0;
    agent.dns_limits = args.dns_limits.limits()?;
    agent.dns_recursion = args.dns_limits.recursion(&args.cluster_cidr)?;
    agent.s3_listen = args.s3_listen.0;
    // The local agent's S3 endpoint serves HTTPS with a certificate of the cluster CA,
    // which every client of the cluster already trusts.
    let signer_server = server.clone();
    let signer: keel_agent::storage::Signer = Arc::new(move |names: Vec<String>| {
        let issued = signer_server
            .issue_server(&names, S3_CERTIFICATE_LIFETIME)
            .map(|issued| (issued.cert_pem, issued.key_pem))
            .map_err(|e| e.to_string());
        Box::pin(std::future::ready(issued))
    });
    args.s3.apply(&mut agent, Some(signer))?;
    agent.load_balancer = !args.disable_load_balancer;
    args.lb.apply(&mut agent)?;
    args.guests.apply(&mut agent);
    args.pods.apply(&mut agent, cluster_dns(args)?)?;
    agent.ca_pem = server.ca_pem().to_string();
    // The local agent is a node like any other: it registers with the agent token and
    // talks as system:node:NAME.
    let identity = NodeIdentity::new(node_name, server.url(), server.ca_pem(), &data_dir.agent());
    agent.identity = Some(identity.clone());
    Ok((agent, identity))
}

/// Registers the local agent as `identity` with the agent `token`, then runs it until
/// `stopped`.
/// Registering waits for the cluster (a quorum, kube-system), so this runs in the
/// background while the server serves; a refusal stops the local agent only.
async fn run_local_agent(
    agent: keel_agent::AgentConfig,
    identity: NodeIdentity,
    token: String,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let client = loop {
        let attempt = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            attempt = identity.client(Some(&token)) => attempt,
        };
        match attempt {
            Ok(client) => break client,
            Err(IdentityError::Server(e)) if !refusal(&e) => {
                tracing::warn!(error = %e, "the local agent cannot register yet");
            }
            Err(e) => {
                tracing::error!(error = %e, "the local agent cannot register: it does not run");
                return;
            }
        }
    };
    if let Err(e) = keel_agent::run(client, agent, stopped).await {
        tracing::error!(error = %e, "the local agent stopped");
    }
}

/// Whether the API refused (rather than could not yet answer).
fn refusal(e: &keel_client::ClientError) -> bool {
    matches!(
        e,
        keel_client::ClientError::Api {
            code: 400 | 401 | 403 | 422,
            ..
        }
    )
}
