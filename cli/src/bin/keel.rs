//! `keel`: runs a Keel server (`keel server`, with the cluster controllers and a local
//! agent) or a host agent (`keel agent`); `keel kv` and `keel cluster` are a small debug
//! client of the replicated store; `keel shim` is the supervisor the agent starts for each
//! workload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keel_agent::dns::RateLimits;
use keel_apiserver::raft::{Client, Consistency, ServerConfig, Tuning};
use keel_apiserver::store::{EventKind, KeyRange, KeyValue, RangeRequest, Txn, WatchRequest};
use keel_apiserver::{ApiConfig, ApiServer};

/// How long the certificate a server's local agent serves S3 with lasts; it is issued at
/// every start and renewed two thirds into its life.
const S3_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// Keel: a declarative control plane for a small cloud.
#[derive(Parser, Debug)]
#[command(name = "keel", version, about)]
struct Cli {
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

#[derive(Subcommand, Debug)]
enum SecretsEncryptCommand {
    /// Add a new key that reads but does not write yet. In a cluster, do this first, give
    /// every server the file (`encryption-config.json`) and restart them, then rotate.
    Prepare,
    /// Make the prepared key write (or, with none prepared, a new one: enough on a single
    /// server); the old keys stay, to read. After a restart the server writes with it, and
    /// its leader rewrites every Secret stored under an older key. In a cluster, give every
    /// server the file before restarting them.
    Rotate,
    /// The keys, newest first, and which one writes.
    Status,
}

#[derive(Args, Debug)]
struct ServerArgs {
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
    #[command(flatten)]
    lb: LbLimitArgs,
    #[command(flatten)]
    s3: S3Options,
    #[command(flatten)]
    guests: GuestArgs,
    #[command(flatten)]
    access: AccessArgs,
}

/// What guests of a host may reach: image downloads, QEMU's confinement.
#[derive(Args, Debug)]
struct GuestArgs {
    /// The largest image a host downloads (bytes or a quantity: 64Gi).
    #[arg(long, default_value = "64Gi", value_parser = bytes)]
    image_max_size: u64,
    /// How long one image download may take.
    #[arg(long, default_value = "1h", value_parser = duration)]
    image_fetch_timeout: Duration,
    /// A network (CIDR) that image URLs in VMs' specs may reach besides public addresses,
    /// such as an internal mirror; repeatable. ClusterImages may reach any address.
    #[arg(long = "image-allowed-network", value_parser = cidr)]
    image_allowed_networks: Vec<keel_schemas::Cidr>,
}

impl GuestArgs {
    fn apply(&self, config: &mut keel_agent::AgentConfig) {
        config.images = keel_agent::vm::images::FetchPolicy {
            max_bytes: self.image_max_size,
            timeout: self.image_fetch_timeout,
            allowed_networks: self.image_allowed_networks.clone(),
        };
    }
}

/// What each listener of a host's L4 proxy may hold (each listener counts on its own).
#[derive(Args, Debug)]
struct LbLimitArgs {
    /// TCP connections one load balancer listener holds at once; more are reset at once.
    #[arg(long, default_value_t = keel_agent::lb::limits::Limits::default().max_connections)]
    lb_max_connections: usize,
    /// TCP connections one load balancer listener holds at once from one source address.
    #[arg(long, default_value_t = keel_agent::lb::limits::Limits::default().max_connections_per_source)]
    lb_max_connections_per_source: usize,
    /// A proxied TCP connection that moves no byte either way for this long is closed
    /// (1h, 10m, 30s).
    #[arg(long, default_value = "1h", value_parser = duration)]
    lb_idle_timeout: Duration,
    /// UDP sessions (client addresses) one load balancer listener holds at once; datagrams
    /// of new clients beyond them are dropped.
    #[arg(long, default_value_t = keel_agent::lb::limits::Limits::default().max_udp_sessions)]
    lb_max_udp_sessions: usize,
    /// UDP sessions one load balancer listener holds at once for one source address.
    #[arg(long, default_value_t = keel_agent::lb::limits::Limits::default().max_udp_sessions_per_source)]
    lb_max_udp_sessions_per_source: usize,
}

impl LbLimitArgs {
    fn apply(&self, config: &mut keel_agent::AgentConfig) -> Result<(), String> {
        for (flag, value) in [
            ("--lb-max-connections", self.lb_max_connections),
            (
                "--lb-max-connections-per-source",
                self.lb_max_connections_per_source,
            ),
            ("--lb-max-udp-sessions", self.lb_max_udp_sessions),
            (
                "--lb-max-udp-sessions-per-source",
                self.lb_max_udp_sessions_per_source,
            ),
        ] {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        config.lb_limits = keel_agent::lb::limits::Limits {
            max_connections: self.lb_max_connections,
            max_connections_per_source: self.lb_max_connections_per_source,
            idle_timeout: self.lb_idle_timeout,
            max_udp_sessions: self.lb_max_udp_sessions,
            max_udp_sessions_per_source: self.lb_max_udp_sessions_per_source,
        };
        Ok(())
    }
}

/// A size from the command line (`64Gi`, `1000000`).
fn bytes(text: &str) -> Result<u64, String> {
    keel_schemas::parse_quantity(text)
        .and_then(|b| u64::try_from(b).ok())
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{text:?}: give a size like 64Gi or 1000000"))
}

/// A network from the command line (`10.0.0.0/8`).
fn cidr(text: &str) -> Result<keel_schemas::Cidr, String> {
    text.parse()
        .map_err(|e| format!("{text:?}: give a network like 10.0.0.0/8: {e}"))
}

/// What one client may take of the DNS server: response rate limiting over UDP with BIND's
/// semantics (`rate-limit { ... }`), and the TCP listener's connection caps.
#[derive(Args, Debug)]
struct DnsLimitArgs {
    /// Identical UDP responses per second to one source network (BIND's
    /// `responses-per-second`); more are dropped or slipped. 0: no response rate limiting
    /// (unless a rate below is given).
    #[arg(long, default_value_t = RateLimits::DEFAULT.responses_per_second)]
    dns_rate_limit_responses_per_second: u32,
    /// NXDOMAIN responses per second to one source network, all names of a zone counting as
    /// one (default: the responses rate; 0: not limited).
    #[arg(long)]
    dns_rate_limit_nxdomains_per_second: Option<u32>,
    /// Error responses (REFUSED, FORMERR, ...) per second to one source network (default:
    /// the responses rate; 0: not limited).
    #[arg(long)]
    dns_rate_limit_errors_per_second: Option<u32>,
    /// Seconds of debt a source network over its rate runs up (and after which a quiet one
    /// starts afresh), 1 to 3600.
    #[arg(long, default_value_t = RateLimits::DEFAULT.window)]
    dns_rate_limit_window: u32,
    /// Every this-many-th response over the rate is sent as an empty truncated answer
    /// (TC=1), so that real clients retry over TCP; 0: drop them all; 1: slip them all; up
    /// to 10.
    #[arg(long, default_value_t = RateLimits::DEFAULT.slip)]
    dns_rate_limit_slip: u32,
    /// The prefix length that groups IPv4 sources into one network.
    #[arg(long, default_value_t = RateLimits::DEFAULT.ipv4_prefix_length)]
    dns_rate_limit_ipv4_prefix_length: u8,
    /// The prefix length that groups IPv6 sources into one network.
    #[arg(long, default_value_t = RateLimits::DEFAULT.ipv6_prefix_length)]
    dns_rate_limit_ipv6_prefix_length: u8,
    /// TCP connections the DNS server holds at once.
    #[arg(long, default_value_t = keel_agent::dns::Limits::TCP.total)]
    dns_tcp_connections: usize,
    /// TCP connections the DNS server holds at once from one source address.
    #[arg(long, default_value_t = keel_agent::dns::Limits::TCP.per_source)]
    dns_tcp_connections_per_source: usize,
}

impl DnsLimitArgs {
    fn limits(&self) -> Result<keel_agent::dns::Limits, String> {
        let responses = self.dns_rate_limit_responses_per_second;
        let rate = RateLimits {
            responses_per_second: responses,
            nxdomains_per_second: self
                .dns_rate_limit_nxdomains_per_second
                .unwrap_or(responses),
            errors_per_second: self.dns_rate_limit_errors_per_second.unwrap_or(responses),
            window: self.dns_rate_limit_window,
            slip: self.dns_rate_limit_slip,
            ipv4_prefix_length: self.dns_rate_limit_ipv4_prefix_length,
            ipv6_prefix_length: self.dns_rate_limit_ipv6_prefix_length,
            ..RateLimits::DEFAULT
        };
        rate.check()
            .map_err(|e| format!("--dns-rate-limit-*: {e}"))?;
        for (flag, value) in [
            ("--dns-tcp-connections", self.dns_tcp_connections),
            (
                "--dns-tcp-connections-per-source",
                self.dns_tcp_connections_per_source,
            ),
        ] {
            if value == 0 {
                return Err(format!("{flag} 0: give at least 1"));
            }
        }
        Ok(keel_agent::dns::Limits {
            rate,
            tcp: keel_agent::listen::Limits {
                total: self.dns_tcp_connections,
                per_source: self.dns_tcp_connections_per_source,
                ..keel_agent::dns::Limits::TCP
            },
        })
    }
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

/// A duration from the command line (`720h`, `30d`, `90s`).
fn duration(text: &str) -> Result<Duration, String> {
    keel_schemas::time::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?}: give a duration like 720h, 30d or 90s"))
}

/// The S3 endpoint's HTTPS, connection limits and free-space floor.
#[derive(Args, Debug)]
struct S3Options {
    /// The S3 endpoint's certificate chain (PEM), instead of one the cluster CA signs: for
    /// a server's names and addresses on a server, for the address the host reaches the
    /// cluster from on an agent (renewed like the node's certificate; the cluster refuses
    /// loopback addresses, addresses it cannot see the request come from, and those of API
    /// servers or other nodes).
    #[arg(long, requires = "s3_tls_key")]
    s3_tls_cert: Option<PathBuf>,
    /// The private key of `--s3-tls-cert` (PEM).
    #[arg(long, requires = "s3_tls_cert")]
    s3_tls_key: Option<PathBuf>,
    /// Serve S3 over plain HTTP: access keys' signatures and data cross the network in the
    /// clear. For a trusted network or a TLS proxy in front only.
    #[arg(long, conflicts_with_all = ["s3_tls_cert", "s3_tls_key"])]
    s3_plain_http: bool,
    /// S3 connections held at once, from all sources.
    #[arg(long, default_value_t = keel_agent::listen::Limits::default().total)]
    s3_max_connections: usize,
    /// S3 connections held at once from one source address (a slowloris from one address
    /// leaves the rest to everyone else).
    #[arg(long, default_value_t = keel_agent::listen::Limits::default().per_source)]
    s3_max_connections_per_source: usize,
    /// How long an S3 client may take to send a request's header (and to finish its TLS
    /// handshake); also how long a kept-alive connection may sit idle (10s, 1m).
    #[arg(long, default_value = "10s", value_parser = duration)]
    s3_header_timeout: Duration,
    /// Free space the object store keeps on the file system of its data directory: below
    /// it S3 writes (PUT, UploadPart, CopyObject, CompleteMultipartUpload) are refused with
    /// 507 InsufficientStorage; reads and deletes go on. Bytes (1Gi, 0 for none) or a
    /// percentage of the file system (5%).
    #[arg(long, default_value = "1Gi")]
    storage_min_free: keel_agent::storage::store::FreeSpaceFloor,
}

impl S3Options {
    /// Applies the options to `config`; `signer` makes a certificate from the cluster CA
    /// (a server's local agent) when no file is given.
    fn apply(
        &self,
        config: &mut keel_agent::AgentConfig,
        signer: Option<keel_agent::storage::Signer>,
    ) -> Result<(), String> {
        use keel_agent::storage::S3Tls;
        config.s3_tls = match (&self.s3_tls_cert, &self.s3_tls_key, signer) {
            _ if self.s3_plain_http => S3Tls::PlainHttp,
            (Some(cert), Some(key), _) => S3Tls::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (_, _, Some(signer)) => S3Tls::ClusterCa(signer),
            _ if config.s3_listen.is_none() => S3Tls::PlainHttp,
            // A host's agent asks the cluster to sign one for the address it is reached at.
            _ => S3Tls::NodeCertificate,
        };
        if self.s3_max_connections == 0 || self.s3_max_connections_per_source == 0 {
            return Err(
                "--s3-max-connections and --s3-max-connections-per-source must be at least 1"
                    .into(),
            );
        }
        config.s3_limits = keel_agent::listen::Limits {
            total: self.s3_max_connections,
            per_source: self.s3_max_connections_per_source,
            handshake_timeout: self.s3_header_timeout,
            header_timeout: self.s3_header_timeout,
            ..keel_agent::listen::Limits::default()
        };
        config.storage_min_free = self.storage_min_free;
        Ok(())
    }
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

#[derive(Args, Debug)]
struct AgentArgs {
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

#[derive(Args, Debug)]
struct ShimArgs {
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
        let tls = keel_apiserver::auth::Certificates::load(&self.data_dir.join("tls"))?;
        Ok(match tls {
            Some(certs) => Client::connect_tls(addr, timeout, &certs.peer_tls()).await?,
            None => Client::connect(addr, timeout).await?,
        })
    }
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// Write a key; with --if-revision, only if its mod_revision matches (0: must not exist).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Expected mod_revision.
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// Read a key, or every key under a prefix; one JSON object per line.
    Get {
        /// The key or prefix.
        key: String,
        /// Read every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Read at this past revision.
        #[arg(long)]
        rev: Option<u64>,
        /// At most this many keys.
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Read this server's copy without a read index (may be stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Delete a key, or every key under a prefix.
    Del {
        /// The key or prefix.
        key: String,
        /// Delete every key starting with KEY.
        #[arg(long)]
        prefix: bool,
    },
    /// Print changes as they happen, one JSON object per line.
    Watch {
        /// The key or prefix.
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (default: from now on).
        #[arg(long, default_value_t = 0)]
        rev: u64,
    },
    /// Drop history older than a revision.
    Compact {
        /// The revision.
        revision: u64,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Every server's role, term and applied index, as JSON.
    Status,
    /// Remove a server from the cluster.
    Remove {
        /// Its node id.
        node_id: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Everything Keel writes (keys, tokens, the store, disks) is its owner's alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // The supervisor is synchronous and tiny: no async runtime, no tracing.
    if let Command::Shim(args) = &cli.command {
        use keel_agent::workload::shim;
        return shim::run(&shim::ShimConfig {
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
        });
    }
    let raised = keel_agent::listen::raise_file_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The listeners' connection caps, not the default of 1024 files, bound what is held.
    if let Err(e) = raised {
        tracing::warn!(error = %e, "cannot raise the limit of open files");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = e.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                if !msg.contains(&text) {
                    msg.push_str(": ");
                    msg.push_str(&text);
                }
                source = cause.source();
            }
            eprintln!("keel: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Server(args) => serve(*args).await,
        Command::Agent(args) => agent(*args).await,
        Command::Shim(_) => Ok(()),
        Command::Kv { command, target } => kv(command, &target).await,
        Command::Cluster { command, target } => cluster(command, &target).await,
        Command::SecretsEncrypt { command, data_dir } => secrets_encrypt(command, &data_dir),
    }
}

fn secrets_encrypt(
    command: SecretsEncryptCommand,
    data_dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use keel_apiserver::auth::encryption::{CONFIG_FILE, EncryptionConfig};
    let path = data_dir.join(CONFIG_FILE);
    if !path.exists() {
        return Err(format!(
            "{} does not exist: is {} a server's data dir?",
            path.display(),
            data_dir.display()
        )
        .into());
    }
    let mut config = EncryptionConfig::load_or_create(&path)?;
    match command {
        SecretsEncryptCommand::Prepare => {
            let name = config.prepare();
            config.save(&path)?;
            println!(
                "{name} added: it reads, and does not write yet. Copy {} to every server and restart them, then run rotate.",
                path.display()
            );
            return Ok(());
        }
        SecretsEncryptCommand::Rotate => {
            let name = config.rotate();
            config.save(&path)?;
            println!(
                "{name} now writes (the older keys still read). Copy {} to every server, then restart them: the leader rewrites every Secret with {name}.",
                path.display()
            );
            return Ok(());
        }
        SecretsEncryptCommand::Status => {}
    }
    for entry in &config.resources {
        for provider in &entry.providers {
            match &provider.aesgcm {
                Some(list) => {
                    for (i, key) in list.keys.iter().enumerate() {
                        let role = if i == 0 { "writes and reads" } else { "reads" };
                        println!(
                            "{}: aesgcm key {} ({role})",
                            entry.resources.join(","),
                            key.name
                        );
                    }
                }
                None => println!("{}: identity (reads plaintext)", entry.resources.join(",")),
            }
        }
    }
    Ok(())
}

async fn serve(args: ServerArgs) -> Result<(), Box<dyn std::error::Error>> {
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
        data_dir: args.data_dir,
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
    let data_dir = config.data_dir.clone();
    let mut api = ApiConfig::new(config, args.listen);
    api.advertise_host = args.advertise;
    api.join = args.join.zip(args.token);
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
    if let Some(pool) = &args.lb_vip_pool {
        api.tenancy.lb_vip_pool = Some(
            pool.parse::<keel_schemas::Cidr>()
                .map_err(|e| format!("--lb-vip-pool {pool:?}: {e}"))?,
        );
    }
    let server = std::sync::Arc::new(ApiServer::start(api).await?);
    let raft = server.raft();
    let node_name = args.node_name.unwrap_or_else(hostname);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut manager = manager_config(&format!("{node_name}-{}", raft.node_id()), &args.timings);
    manager.ovn_nb = args.ovn_nb.clone();
    if let Some(pool) = &args.lb_vip_pool {
        manager.load_balancers.vip_pool = Some(pool.clone());
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
            return Err(format!("--ovn-external-gateway {gateway} is not inside {cidr}").into());
        }
        manager.ovn_external = Some(keel_controllers::network::External {
            cidr: cidr.clone(),
            gateway,
            chassis: args.ovn_gateway_chassis.clone().unwrap_or_default(),
            physnet: args.ovn_external_physnet.clone(),
        });
    }
    let identities = OwnIdentities::new(server.clone(), args.access.node_cert_lifetime)?;
    tasks.spawn(identities.clone().keep_renewed(stopped.clone()));
    let clients = identities.clone();
    tasks.spawn(keel_controllers::run_manager(
        identities.client(keel_schemas::identity::CONTROLLER_MANAGER),
        std::sync::Arc::new(move |name: &str| {
            clients.client(&keel_schemas::identity::controller_user(name))
        }),
        manager,
        stopped.clone(),
    ));
    if !args.disable_agent {
        let mut agent = keel_agent::AgentConfig::new(
            &node_name,
            data_dir.join("agent"),
            std::env::current_exe()?,
        );
        agent.lease_duration = seconds(args.node_lease_duration);
        agent.kvm_probe_kernel = args.kvm_probe_kernel.clone();
        agent.listen = args.agent_listen;
        agent.dns_listen = args.dns_listen.0;
        agent.dns_limits = args.dns_limits.limits()?;
        agent.s3_listen = args.s3_listen.0;
        // The local agent's S3 endpoint serves HTTPS with a certificate of the cluster CA,
        // which every client of the cluster already trusts.
        let signer_server = server.clone();
        let signer: keel_agent::storage::Signer = std::sync::Arc::new(move |names: Vec<String>| {
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
        agent.ca_pem = server.ca_pem().to_string();
        // The local agent is a node like any other: it registers with the agent token and
        // talks as system:node:NAME.
        let identity = keel_agent::identity::NodeIdentity::new(
            &node_name,
            server.url(),
            server.ca_pem(),
            &data_dir.join("agent"),
        );
        let token = server.agent_token();
        agent.identity = Some(identity.clone());
        let mut stopped = stopped.clone();
        // Registering waits for the cluster (a quorum, kube-system): in the background, so
        // that the server serves meanwhile; a refusal stops the local agent only.
        tasks.spawn(async move {
            let client = loop {
                let attempt = tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return,
                    attempt = identity.client(Some(&token)) => attempt,
                };
                match attempt {
                    Ok(client) => break client,
                    Err(keel_agent::identity::IdentityError::Server(e)) if !refusal(&e) => {
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
        });
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

/// The metrics of this process's controllers and its local agent's DNS server, for the API's
/// `/metrics`.
fn process_metrics() -> String {
    keel_runtime::metrics::render() + &keel_agent::dns::render_metrics()
}

fn manager_config(identity: &str, t: &ControllerTimings) -> keel_controllers::ManagerConfig {
    let mut config = keel_controllers::ManagerConfig::new(identity);
    config.lease_duration = seconds(t.leader_elect_lease_duration);
    config.renew_deadline = seconds(t.leader_elect_renew_deadline);
    config.retry_period = seconds(t.leader_elect_retry_period);
    config.nodes.grace_period = seconds(t.node_monitor_grace_period);
    config.nodes.eviction_timeout = seconds(t.node_eviction_timeout);
    config
}

/// A listen address, or none (`off`).
#[derive(Debug, Clone)]
struct Listen(Option<SocketAddr>);

fn listen_or_off(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("{s:?} is neither an address (0.0.0.0:53) nor off"))
}

/// A duration from seconds given on the command line (negative or NaN: zero).
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

async fn agent(args: AgentArgs) -> Result<(), Box<dyn std::error::Error>> {
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let mut config =
        keel_agent::AgentConfig::new(&node_name, args.data_dir.clone(), std::env::current_exe()?);
    // Checked before anything talks to the cluster.
    config.s3_listen = args.s3_listen.0;
    args.s3.apply(&mut config, None)?;
    args.lb.apply(&mut config)?;
    let ca_file = args.data_dir.join("pki").join("ca.crt");
    let ca = match &args.token {
        Some(text) => {
            let token = keel_apiserver::auth::JoinToken::parse(text).ok_or(
                "--token: not a join token (K10<ca hash>::node:<secret>, from <data-dir>/agent-token on a server)",
            )?;
            // The token pins the cluster CA: fetch the CA and check it before trusting the
            // server.
            let ca = keel_apiserver::auth::fetch_ca(&args.server, &token.ca_hash).await?;
            std::fs::create_dir_all(ca_file.parent().unwrap_or(&args.data_dir))?;
            std::fs::write(&ca_file, &ca)?;
            ca
        }
        None => std::fs::read_to_string(&ca_file).map_err(|e| {
            format!("{}: {e}: a host that never registered needs --token (<data-dir>/agent-token on a server)", ca_file.display())
        })?,
    };
    let identity =
        keel_agent::identity::NodeIdentity::new(&node_name, &args.server, &ca, &args.data_dir);
    let client = identity.client(args.token.as_deref()).await?;
    match client.refresh_servers().await {
        Ok(n) => tracing::info!(servers = n, "learned the cluster's servers"),
        Err(e) => tracing::warn!(error = %e, "cannot list the cluster's servers yet"),
    }
    config.lease_duration = seconds(args.lease_duration);
    config.dns_listen = args.dns_listen.0;
    config.dns_limits = args.dns_limits.limits()?;
    config.load_balancer = !args.disable_load_balancer;
    args.guests.apply(&mut config);
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

/// The client certificates of the server's own components (its controllers), issued by
/// the server itself and re-issued before they expire.
#[derive(Clone)]
struct OwnIdentities {
    server: std::sync::Arc<ApiServer>,
    lifetime: Duration,
    clients:
        std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, keel_client::Client>>>,
}

impl OwnIdentities {
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

fn range(key: String, prefix: bool) -> KeyRange {
    if prefix {
        KeyRange::Prefix(key.into_bytes())
    } else {
        KeyRange::Key(key.into_bytes())
    }
}

fn kv_json(kv: &KeyValue) -> serde_json::Value {
    serde_json::json!({
        "key": String::from_utf8_lossy(&kv.key),
        "value": String::from_utf8_lossy(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    })
}

async fn kv(command: KvCommand, target: &Target) -> Result<(), Box<dyn std::error::Error>> {
    let client = target
        .connect(&target.server, Duration::from_secs(5))
        .await?;
    match command {
        KvCommand::Put {
            key,
            value,
            if_revision,
        } => {
            let txn = match if_revision {
                Some(rev) => Txn::put_if(key.clone(), value, rev),
                None => Txn::put(key.clone(), value),
            };
            let resp = client.txn(txn).await??;
            if !resp.succeeded {
                return Err(format!(
                    "conflict: {key} is not at revision {}",
                    if_revision.unwrap_or(0)
                )
                .into());
            }
            println!("{}", serde_json::json!({"revision": resp.revision}));
        }
        KvCommand::Get {
            key,
            prefix,
            rev,
            limit,
            serializable,
        } => {
            let consistency = if serializable {
                Consistency::Serializable
            } else {
                Consistency::Linearizable
            };
            let resp = client
                .range(
                    RangeRequest {
                        range: Some(range(key, prefix)),
                        revision: rev,
                        limit,
                        ..RangeRequest::default()
                    },
                    consistency,
                )
                .await?;
            for kv in &resp.kvs {
                println!("{}", kv_json(kv));
            }
            eprintln!(
                "revision {}{}",
                resp.revision,
                if resp.continue_token.is_some() {
                    " (more)"
                } else {
                    ""
                }
            );
        }
        KvCommand::Del { key, prefix } => {
            let resp = client.txn(Txn::delete(range(key, prefix))).await??;
            let deleted = resp
                .results
                .iter()
                .map(|r| match r {
                    keel_apiserver::store::OpResult::Delete { deleted } => deleted.len(),
                    _ => 0,
                })
                .sum::<usize>();
            println!(
                "{}",
                serde_json::json!({"revision": resp.revision, "deleted": deleted})
            );
        }
        KvCommand::Watch { key, prefix, rev } => {
            let mut stream = client
                .watch(WatchRequest {
                    range: range(key, prefix),
                    start_revision: rev,
                    prev_kv: false,
                })
                .await?;
            while let Some(events) = stream.next().await {
                for e in events? {
                    let kind = match e.kind {
                        EventKind::Put => "PUT",
                        EventKind::Delete => "DELETE",
                    };
                    let mut obj = kv_json(&e.kv);
                    obj["type"] = kind.into();
                    println!("{obj}");
                }
            }
        }
        KvCommand::Compact { revision } => {
            client.compact(revision).await??;
            println!("{}", serde_json::json!({"compacted": revision}));
        }
    }
    Ok(())
}

async fn cluster(
    command: ClusterCommand,
    target: &Target,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = target
        .connect(&target.server, Duration::from_secs(5))
        .await?;
    match command {
        ClusterCommand::Status => {
            let status = client.status().await?;
            let mut servers = Vec::new();
            for (id, member) in &status.members {
                let view = if *id == status.node_id {
                    Ok(status.clone())
                } else {
                    match target
                        .connect(&member.raft_addr, Duration::from_secs(2))
                        .await
                    {
                        Ok(c) => c.status().await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                };
                servers.push(match view {
                    Ok(s) => serde_json::json!({
                        "node_id": id, "addr": member.raft_addr, "voter": member.voter,
                        "role": format!("{:?}", s.role), "term": s.term, "leader": s.leader,
                        "last_log_index": s.last_log_index, "applied_index": s.applied_index,
                        "snapshot_index": s.snapshot_index, "revision": s.revision,
                        "compacted": s.compacted,
                    }),
                    Err(e) => serde_json::json!({
                        "node_id": id, "addr": member.raft_addr, "voter": member.voter,
                        "error": e.to_string(),
                    }),
                });
            }
            let out = serde_json::json!({
                "cluster_id": status.cluster_id.to_string(),
                "leader": status.leader,
                "servers": servers,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ClusterCommand::Remove { node_id } => {
            client.remove_server(node_id).await?;
            println!("{}", serde_json::json!({"removed": node_id}));
        }
    }
    Ok(())
}
