//! The flags of a host's roles (DNS, storage, load balancing, guests), which `keel agent`
//! and the local agent of `keel server` share.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use keel_agent::dns::RateLimits;

use super::flags::{bytes, cidr, duration};

/// What guests of a host may reach: image downloads, QEMU's confinement.
#[derive(Args, Debug)]
pub(super) struct GuestArgs {
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

/// How a host runs pods: the containerd it supervises, or an existing CRI runtime.
#[derive(Args, Debug)]
pub(super) struct PodArgs {
    /// This host runs no pods (by default its agent runs the pods bound to it, on a
    /// containerd it starts when `containerd` is installed).
    #[arg(long)]
    disable_pods: bool,
    /// An existing CRI runtime's socket (`unix:///run/containerd/containerd.sock`) instead
    /// of the agent's own containerd.
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// The image of every pod's sandbox (Kubernetes' pause image).
    #[arg(long, default_value = "registry.k8s.io/pause:3.6")]
    pause_image: String,
    /// The containerd binary the agent starts.
    #[arg(long, default_value = "containerd")]
    containerd: PathBuf,
    /// Where the CNI plugins are.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// The most pods this host runs (its `pods` capacity, as the kubelet's `--max-pods`).
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Registry mirrors, credentials and TLS, in k3s's `registries.yaml` format
    /// (`mirrors.<registry>.endpoint`, `configs.<host>.auth|tls`).
    #[arg(long)]
    private_registry: Option<PathBuf>,
    /// The cluster DNS address every pod's resolv.conf names: the kube-dns Service's
    /// ClusterIP (default: the tenth address of the service range, 10.43.0.10).
    #[arg(long)]
    cluster_dns: Option<std::net::Ipv4Addr>,
    /// The cluster's DNS domain: Services are `NAME.NAMESPACE.svc.<domain>`.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

/// What each listener of a host's L4 proxy may hold (each listener counts on its own).
#[derive(Args, Debug)]
pub(super) struct LbLimitArgs {
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

/// What one client may take of the DNS server: response rate limiting over UDP with BIND's
/// semantics (`rate-limit { ... }`), and the TCP listener's connection caps.
#[derive(Args, Debug)]
pub(super) struct DnsLimitArgs {
    /// Who may ask the DNS server for names outside Keel's zones, which it forwards to the
    /// upstreams (CoreDNS's `forward` in k3s): CIDRs, comma-separated, or `none` (default:
    /// the cluster's pod range, `10.42.0.0/16`); others get REFUSED.
    #[arg(long)]
    dns_recursion_clients: Option<String>,
    /// A resolver the DNS server forwards to (IP or IP:PORT; repeat for more; default: the
    /// host's /etc/resolv.conf).
    #[arg(long)]
    dns_upstream: Vec<String>,
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

/// The S3 endpoint's HTTPS, connection limits and free-space floor.
#[derive(Args, Debug)]
pub(super) struct S3Options {
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

// === impl GuestArgs ===

impl GuestArgs {
    /// Sets the image download policy of `config`.
    pub(super) fn apply(&self, config: &mut keel_agent::AgentConfig) {
        config.images = keel_agent::vm::images::FetchPolicy {
            max_bytes: self.image_max_size,
            timeout: self.image_fetch_timeout,
            allowed_networks: self.image_allowed_networks.clone(),
        };
    }
}

// === impl PodArgs ===

impl PodArgs {
    /// The cluster DNS (`--cluster-dns`, else `default`; `--cluster-domain`), or what is
    /// wrong with the flags.
    pub(super) fn cluster_dns(
        &self,
        default: std::net::Ipv4Addr,
    ) -> Result<keel_agent::pods::ClusterDns, String> {
        keel_agent::pods::ClusterDns::new(self.cluster_dns.unwrap_or(default), &self.cluster_domain)
            .map_err(|e| format!("--cluster-domain: {e}"))
    }

    /// Sets the pod role of `config` (its pods ask `dns`): none when disabled, or when no
    /// runtime is given and no containerd is installed. A registries file that cannot be
    /// read or is wrong stops the agent, naming what is wrong.
    pub(super) fn apply(
        &self,
        config: &mut keel_agent::AgentConfig,
        dns: keel_agent::pods::ClusterDns,
    ) -> Result<(), String> {
        if self.disable_pods {
            return Ok(());
        }
        let registries = match &self.private_registry {
            None => keel_agent::pods::registries::Registries::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--private-registry {}: {e}", path.display()))?;
                let registries: keel_agent::pods::registries::Registries =
                    serde_norway::from_str(&text)
                        .map_err(|e| format!("--private-registry {}: {e}", path.display()))?;
                registries
                    .check()
                    .map_err(|e| format!("--private-registry {}: {e}", path.display()))?;
                registries
            }
        };
        let endpoint = self
            .container_runtime_endpoint
            .as_deref()
            .map(|e| PathBuf::from(e.strip_prefix("unix://").unwrap_or(e)));
        if endpoint.is_none() && !on_path(&self.containerd) {
            tracing::info!(containerd = %self.containerd.display(), "containerd is not installed: this host runs no pods");
            return Ok(());
        }
        config.pods = Some(keel_agent::agent::PodsConfig {
            endpoint,
            containerd: keel_agent::pods::containerd::Settings {
                binary: self.containerd.clone(),
                sandbox_image: self.pause_image.clone(),
                cni_bin_dir: self.cni_bin_dir.clone(),
                registries,
            },
            dns,
            max_pods: self.max_pods,
        });
        Ok(())
    }
}

/// Whether `binary` is a path that exists, or a name found on `PATH`.
fn on_path(binary: &std::path::Path) -> bool {
    if binary.components().count() > 1 {
        return binary.exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

// === impl LbLimitArgs ===

impl LbLimitArgs {
    /// Sets the L4 proxy's limits of `config`; a limit of 0 is refused.
    pub(super) fn apply(&self, config: &mut keel_agent::AgentConfig) -> Result<(), String> {
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

// === impl DnsLimitArgs ===

impl DnsLimitArgs {
    /// Who the DNS server forwards names outside Keel's zones for (`--dns-recursion-clients`,
    /// else `pods`: the cluster's pod range) and to whom (`--dns-upstream`, else the host's
    /// resolv.conf).
    pub(super) fn recursion(&self, pods: &str) -> Result<keel_agent::dns::Recursion, String> {
        let clients = self.dns_recursion_clients.as_deref().unwrap_or(pods);
        let clients = if clients == "none" {
            Vec::new()
        } else {
            clients
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<keel_schemas::Cidr>()
                        .map_err(|e| format!("--dns-recursion-clients {c:?}: {e}"))
                })
                .collect::<Result<_, _>>()?
        };
        let upstreams = if self.dns_upstream.is_empty() {
            keel_agent::dns::Recursion::host_upstreams()
        } else {
            self.dns_upstream
                .iter()
                .map(|u| {
                    u.parse::<std::net::SocketAddr>()
                        .or_else(|_| u.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                        .map_err(|_| format!("--dns-upstream {u:?}: give IP or IP:PORT"))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(keel_agent::dns::Recursion { clients, upstreams })
    }

    /// The DNS server's limits, checked (a rate limit out of range, a connection cap of 0 is
    /// refused).
    pub(super) fn limits(&self) -> Result<keel_agent::dns::Limits, String> {
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

// === impl S3Options ===

impl S3Options {
    /// Applies the options to `config`; `signer` makes a certificate from the cluster CA
    /// (a server's local agent) when no file is given.
    pub(super) fn apply(
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
