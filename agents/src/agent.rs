//! [`run`]: the agent of one host — registers the Node, renews its Lease, fences the host's
//! workloads when it cannot, and runs the host reconcilers.
//!
//! The agent's health is a small state machine ([`Health`]), stepped only by the heartbeat:
//! `Starting` until the first renewal, `Healthy` while renewals succeed, `Fenced` once none
//! has succeeded for the lease duration. Reconcilers start workloads only while `Healthy`;
//! entering `Fenced` stops them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::{Api, Client, ClientError};
use keel_runtime::{Condition, set_condition};
use keel_schemas::datadir::AgentDir;
use keel_schemas::wellknown::{self, NODE_LEASE_NAMESPACE};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::probe::{HostFacts, ProbeConfig, probe};
use keel_vm as vm;
use keel_workload::Runtime;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's name.
    pub node_name: String,
    /// Where the agent keeps its state (node identity, VMs, workloads, heartbeat, images,
    /// object store).
    pub data_dir: AgentDir,
    /// How long the node's Lease lasts: the agent fences after this long without renewing.
    pub lease_duration: Duration,
    /// Labels for the Node besides the ones the agent sets.
    pub labels: Vec<(String, String)>,
    /// The `keel` binary (workload supervisors run `keel shim`).
    pub exe: PathBuf,
    /// Where the DNS server answers (port 0: any free port, published in the Node); none:
    /// this host has no DNS role.
    pub dns_listen: Option<SocketAddr>,
    /// What one client may take of the DNS server: response rate limiting over UDP, TCP
    /// connections and timeouts.
    pub dns_limits: keel_dns::Limits,
    /// Who the DNS server forwards names outside Keel's zones for, and to whom.
    pub dns_recursion: keel_dns::Recursion,
    /// Where the S3 endpoint listens (port 0: any free port, published in the Node); none:
    /// this host has no storage role.
    pub s3_listen: Option<SocketAddr>,
    /// How the S3 endpoint speaks: HTTPS (the operator's certificate, or one the cluster CA
    /// signs), or plain HTTP when asked.
    pub s3_tls: keel_storage::S3Tls,
    /// The S3 endpoint's connection limits (total, per source, handshake and header
    /// timeouts).
    pub s3_limits: keel_host::listen::Limits,
    /// The free space the object store keeps on its file system: S3 writes are refused
    /// below it.
    pub storage_min_free: keel_storage::store::FreeSpaceFloor,
    /// Whether this host's L4 proxy serves the LoadBalancers the cluster places here.
    pub load_balancer: bool,
    /// What each listener of the L4 proxy may hold: connections, UDP sessions, idle time.
    pub lb_limits: keel_lb::limits::Limits,
    /// The Open vSwitch database socket (probed).
    pub ovs_socket: PathBuf,
    /// The kernel the KVM probe boots (default: the host's own, if found in /boot).
    pub kvm_probe_kernel: Option<PathBuf>,
    /// Virtual CPUs schedulable per core (OpenStack's `cpu_allocation_ratio`, default 4).
    pub cpu_allocation_ratio: f64,
    /// Where the agent's HTTPS endpoint listens (port 0: any free port, published in the
    /// Node).
    pub listen: SocketAddr,
    /// The cluster CA (PEM): the endpoint accepts only the API server's client certificate
    /// signed by it.
    pub ca_pem: String,
    /// What image downloads may do (size, time, networks a tenant's URL may reach).
    pub images: keel_vm::images::FetchPolicy,
    /// The node's certificate, which the agent renews before it expires (none: the client's
    /// credentials are someone else's to keep).
    pub identity: Option<crate::identity::NodeIdentity>,
    /// How this host runs pods (none: it runs none).
    pub pods: Option<PodsConfig>,
}

/// How a host runs its pods.
#[derive(Debug, Clone, Default)]
pub struct PodsConfig {
    /// An existing CRI runtime's socket (`--container-runtime-endpoint`); none: the agent
    /// starts and supervises its own containerd.
    pub endpoint: Option<PathBuf>,
    /// How the agent's own containerd is set up.
    pub containerd: keel_pods::containerd::Settings,
    /// The cluster DNS its pods ask.
    pub dns: keel_pods::ClusterDns,
    /// The most pods the node runs (the kubelet's `--max-pods`): its `pods` capacity.
    pub max_pods: u32,
}

pub use keel_host::Health;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The workload runtime could not be set up.
    #[error(transparent)]
    Workload(#[from] keel_workload::WorkloadError),
    /// The HTTPS endpoint could not start.
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    /// The S3 endpoint's TLS certificate or key is unusable.
    #[error("{0}")]
    Storage(String),
    /// The pod role's container runtime cannot be started.
    #[error(transparent)]
    Containerd(#[from] keel_pods::containerd::ContainerdError),
    /// The pod role's fence cannot be started.
    #[error("{0}")]
    Pods(String),
}

/// What the agent's tasks share.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) config: AgentConfig,
    pub(crate) runtime: Runtime,
    pub(crate) facts: HostFacts,
    /// The HTTPS endpoint's port and certificate (PEM), published in the Node.
    pub(crate) endpoint: (u16, String),
    /// The DNS server's address, published in the Node (none: no DNS role).
    pub(crate) dns_endpoint: Option<String>,
    /// The S3 endpoint's URL, published in the Node (none: no storage role).
    pub(crate) s3_endpoint: Option<String>,
    /// The container runtime's name and version (`containerd://1.6.20`), published in the
    /// Node (none: no pod role).
    pub(crate) container_runtime: Option<String>,
}

// === impl Shared ===

impl Shared {
    /// The node, as the roles split into crates of their own know it.
    pub(crate) fn node(&self) -> keel_host::Node {
        keel_host::Node {
            name: self.config.node_name.clone(),
            client: self.client.clone(),
        }
    }
}

// === impl AgentConfig ===

impl AgentConfig {
    /// The Open vSwitch database's OVSDB address.
    pub fn ovs_addr(&self) -> String {
        format!("unix:{}", self.ovs_socket.display())
    }

    /// Kubernetes' kubelet defaults (a 40 s lease) for node `node_name` keeping its state in
    /// `data_dir`.
    pub fn new(node_name: &str, data_dir: AgentDir, exe: PathBuf) -> AgentConfig {
        AgentConfig {
            node_name: node_name.to_string(),
            data_dir,
            lease_duration: Duration::from_secs(40),
            labels: Vec::new(),
            exe,
            dns_listen: None,
            dns_limits: keel_dns::Limits::default(),
            dns_recursion: keel_dns::Recursion::default(),
            s3_listen: None,
            s3_tls: keel_storage::S3Tls::PlainHttp,
            s3_limits: keel_host::listen::Limits::default(),
            storage_min_free: keel_storage::store::FreeSpaceFloor::Bytes(1 << 30),
            load_balancer: true,
            lb_limits: keel_lb::limits::Limits::default(),
            ovs_socket: PathBuf::from("/var/run/openvswitch/db.sock"),
            kvm_probe_kernel: None,
            cpu_allocation_ratio: 4.0,
            listen: SocketAddr::from(([0, 0, 0, 0], 10250)),
            ca_pem: String::new(),
            images: keel_vm::images::FetchPolicy::default(),
            identity: None,
            pods: None,
        }
    }
}

/// Runs the agent until `shutdown` turns true. Workloads keep running after it returns.
pub async fn run(
    client: Client,
    config: AgentConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(config.data_dir.root()).map_err(|source| {
        keel_workload::WorkloadError::Io {
            path: config.data_dir.root().to_path_buf(),
            source,
        }
    })?;
    let runtime = Runtime::new(&config.data_dir, config.lease_duration, config.exe.clone())?;
    let server = server_addr(&client.url());
    // The KVM probe may boot a kernel for seconds: off the async threads.
    let probe_config = config.clone();
    let facts = tokio::task::spawn_blocking(move || {
        probe(&ProbeConfig {
            data_dir: &probe_config.data_dir,
            server,
            kvm_probe_kernel: probe_config.kvm_probe_kernel.as_deref(),
        })
    })
    .await
    .map_err(|e| keel_workload::WorkloadError::Io {
        path: config.data_dir.root().to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let mut facts = facts;
    facts
        .capabilities
        .push(keel_vm::ovs::probe(&config.ovs_addr()).await);
    let (dns_sockets, dns_capability) = bind_dns(config.dns_listen).await;
    facts.capabilities.push(dns_capability);
    let dns_endpoint = dns_sockets
        .as_ref()
        .and_then(|s| s.local_addr().ok())
        .map(|a| a.to_string());
    let (s3_listener, s3_tls, s3_endpoint) = s3_role(&config, &client, &mut facts).await?;
    for c in &facts.capabilities {
        tracing::info!(node = %config.node_name, capability = c.type_, available = c.available, "{}", c.message);
    }
    let mut names = vec![
        config.node_name.clone(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    names.extend(facts.internal_ip.map(|ip| ip.to_string()));
    let endpoint = crate::server::bind(config.listen, names, &config.ca_pem).await?;
    let published = (endpoint.port, endpoint.certificate_pem.clone());
    let pods_runtime = pod_runtime(&config, shutdown.clone()).await?;
    let endpoint_task = tokio::spawn(endpoint.serve(
        config.data_dir.clone(),
        pods_runtime.as_ref().map(|r| r.cri.clone()),
        shutdown.clone(),
    ));
    let renewal = config
        .identity
        .clone()
        .map(|identity| tokio::spawn(identity.keep_renewed(client.clone(), shutdown.clone())));
    let shared = Arc::new(Shared {
        client,
        config,
        runtime,
        facts,
        endpoint: published,
        dns_endpoint,
        s3_endpoint: s3_endpoint.clone(),
        container_runtime: pods_runtime.as_ref().map(|r| r.version.clone()),
    });
    let (health_tx, health) = watch::channel(Health::Starting);
    let heartbeat = tokio::spawn(heartbeat(shared.clone(), health_tx, shutdown.clone()));
    let dns = dns_sockets.map(|sockets| {
        tokio::spawn(keel_dns::run(
            shared.node(),
            shared.config.dns_limits,
            shared.config.dns_recursion.clone(),
            sockets,
            health.clone(),
            shutdown.clone(),
        ))
    });
    let storage = s3_listener.zip(s3_endpoint).map(|(listener, url)| {
        tracing::info!(endpoint = %url, "serving S3");
        let settings = keel_storage::Settings {
            root: shared.config.data_dir.storage(),
            min_free: shared.config.storage_min_free,
            limits: shared.config.s3_limits,
        };
        tokio::spawn(keel_storage::run(
            shared.node(),
            settings,
            listener,
            s3_tls,
            url,
            shutdown.clone(),
        ))
    });
    let balancer = shared.config.load_balancer.then(|| {
        tokio::spawn(keel_lb::run(
            shared.node(),
            shared.config.lb_limits,
            shutdown.clone(),
        ))
    });
    let host = vm::VmHost {
        node: shared.node(),
        data: shared.config.data_dir.clone(),
        runtime: shared.runtime.clone(),
        ovs_addr: shared.config.ovs_addr(),
        ovn: shared.facts.has("NetworkAvailable"),
        accelerator: shared.facts.accelerator,
        images: shared.config.images.clone(),
    };
    let pods = pods_runtime.map(|runtime| {
        let host = keel_pods::PodHost {
            node: shared.node(),
            dir: shared.config.data_dir.pods(),
            host_ip: shared.facts.internal_ip,
            dns: shared
                .config
                .pods
                .as_ref()
                .map(|p| p.dns.clone())
                .unwrap_or_default(),
            cgroup_parent: runtime.cgroup_parent.clone(),
        };
        let role = tokio::spawn(keel_pods::run(
            host,
            runtime.cri,
            health.clone(),
            shutdown.clone(),
        ));
        (role, runtime.supervisor)
    });
    let reconciler = tokio::spawn(vm::run(host, health, shutdown.clone()));
    let _ = shutdown.wait_for(|s| *s).await;
    let _ = heartbeat.await;
    let _ = reconciler.await;
    if let Some(dns) = dns {
        let _ = dns.await;
    }
    if let Some(storage) = storage {
        let _ = storage.await;
    }
    if let Some(balancer) = balancer {
        let _ = balancer.await;
    }
    if let Some((role, supervisor)) = pods {
        let _ = role.await;
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }
    let _ = endpoint_task.await;
    if let Some(renewal) = renewal {
        let _ = renewal.await;
    }
    Ok(())
}

/// The pod role's container runtime: connected to, and running.
struct PodRuntime {
    cri: keel_pods::cri::Cri,
    /// `containerd://1.6.20`.
    version: String,
    /// The task supervising the agent's own containerd (none: an existing runtime).
    supervisor: Option<tokio::task::JoinHandle<()>>,
    /// The cgroup the pods run under, which the fence kills.
    cgroup_parent: String,
}

/// Starts (or connects to) the container runtime of the pod role, if this host has one.
async fn pod_runtime(
    config: &AgentConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<PodRuntime>, AgentError> {
    let Some(pods) = &config.pods else {
        return Ok(None);
    };
    let (cri, supervisor) = match &pods.endpoint {
        Some(socket) => (keel_pods::cri::Cri::new(socket), None),
        None => {
            let dir = keel_pods::containerd::Dir::new(&config.data_dir.pods());
            let (cri, task) =
                keel_pods::containerd::start(dir, pods.containerd.clone(), shutdown).await?;
            (cri, Some(task))
        }
    };
    let version = match cri.version().await {
        Ok(v) => format!("{}://{}", v.runtime_name, v.runtime_version),
        Err(e) => {
            tracing::error!(error = %e, "the container runtime does not answer: this host runs no pods");
            return Ok(None);
        }
    };
    tracing::info!(runtime = %version, "running pods");
    // The fence that stops the pods when this agent is dead: it outlives the agent.
    let data = std::fs::canonicalize(config.data_dir.root())
        .unwrap_or_else(|_| config.data_dir.root().to_path_buf());
    let data = keel_schemas::datadir::AgentDir::new(data);
    let cgroup_parent = keel_pods::fence::cgroup_parent(data.root(), &config.node_name);
    let fence = keel_pods::fence::FenceConfig {
        heartbeat: data.heartbeat(),
        grace: config.lease_duration,
        cgroup: cgroup_parent.clone(),
        pid_file: data.pods().join("fence.pid"),
    };
    let log = data.pods().join("fence.log");
    let pid = keel_pods::fence::spawn(&config.exe, &fence, &log).map_err(|e| {
        AgentError::Pods(format!(
            "cannot start the pods' fence (keel pod-fence): {e}"
        ))
    })?;
    tracing::info!(pid, cgroup = %cgroup_parent, grace = ?config.lease_duration, "the pods' fence runs");
    Ok(Some(PodRuntime {
        cri,
        version,
        supervisor,
        cgroup_parent,
    }))
}

/// The storage role of this host: the S3 listener, its TLS (a certificate asked of the
/// cluster for the address clients reach it at, the server's own names for a server's local
/// agent, or the operator's files) and the endpoint's URL; none of them without `--s3-listen`.
/// `facts` learns why storage is not available when nothing serves it.
async fn s3_role(
    config: &AgentConfig,
    client: &Client,
    facts: &mut HostFacts,
) -> Result<
    (
        Option<tokio::net::TcpListener>,
        Option<keel_storage::Tls>,
        Option<String>,
    ),
    AgentError,
> {
    let s3_listener = bind_s3(config.s3_listen).await;
    let s3_tls = match &s3_listener {
        Some(listener) => {
            let bound = listener
                .local_addr()
                .map_err(|e| AgentError::Storage(format!("the S3 listener's address: {e}")))?;
            let names = match config.s3_tls {
                // What the cluster signs for a host: the address its endpoint is reached at.
                keel_storage::S3Tls::NodeCertificate => {
                    vec![s3_ip(bound, facts.internal_ip).to_string()]
                }
                _ => {
                    let mut names = vec![
                        config.node_name.clone(),
                        "localhost".to_string(),
                        "127.0.0.1".to_string(),
                    ];
                    names.extend(facts.internal_ip.map(|ip| ip.to_string()));
                    if !bound.ip().is_unspecified() && !names.contains(&bound.ip().to_string()) {
                        names.push(bound.ip().to_string());
                    }
                    names
                }
            };
            // A host's certificate is signed by the cluster on the node's request.
            let tls = match (&config.s3_tls, &config.identity) {
                (keel_storage::S3Tls::NodeCertificate, Some(identity)) => {
                    let (identity, client) = (identity.clone(), client.clone());
                    let signer: keel_storage::Signer = Arc::new(move |names: Vec<String>| {
                        let (identity, client) = (identity.clone(), client.clone());
                        Box::pin(async move {
                            identity
                                .serving_certificate(&client, &names)
                                .await
                                .map_err(|e| e.to_string())
                        })
                    });
                    keel_storage::S3Tls::ClusterCa(signer)
                }
                (other, _) => other.clone(),
            };
            keel_storage::acceptor(&tls, &names)
                .await
                .map_err(AgentError::Storage)?
        }
        None => None,
    };
    let s3_endpoint = s3_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| s3_url(a, facts.internal_ip, s3_tls.is_some()));
    if s3_endpoint.is_none()
        && let Some(c) = facts
            .capabilities
            .iter_mut()
            .find(|c| c.type_ == "StorageAvailable")
        && c.available
    {
        // The disk would do, but nothing serves it.
        c.available = false;
        c.reason = "NotConfigured";
        c.message = match config.s3_listen {
            None => "this host has no storage role (no --s3-listen)".into(),
            Some(a) => format!("cannot listen on {a} for the S3 endpoint"),
        };
    }
    Ok((s3_listener, s3_tls, s3_endpoint))
}

/// Renews the node's Lease every quarter of its duration (kubelet's rhythm), keeps the Node
/// registered and its status current, and steps [`Health`].
async fn heartbeat(
    shared: Arc<Shared>,
    health: watch::Sender<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = &shared.config;
    let interval = config.lease_duration / 4;
    let mut last_renewal = Instant::now();
    let mut registered = false;
    loop {
        let started = Instant::now();
        let round = async {
            if !registered {
                register(&shared).await?;
            }
            renew_lease(&shared).await
        };
        match tokio::time::timeout(interval, round).await {
            Ok(Ok(())) => {
                registered = true;
                last_renewal = started;
                if let Err(e) = shared.runtime.touch_heartbeat() {
                    tracing::error!(error = %e, "cannot touch the heartbeat file: workloads will fence");
                }
                if *health.borrow() != Health::Healthy {
                    // Back (or first up): say so on the Node before running anything.
                    match report_ready(&shared).await {
                        Ok(()) => {
                            tracing::info!(node = %config.node_name, "lease renewed: healthy");
                            health.send_replace(Health::Healthy);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot report the node ready"),
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %config.node_name, error = %e, "cannot renew the node's lease");
                if e.code() == Some(404) {
                    registered = false;
                }
            }
            Err(_) => {
                tracing::warn!(node = %config.node_name, "renewing the node's lease timed out")
            }
        }
        if last_renewal.elapsed() >= config.lease_duration && *health.borrow() != Health::Fenced {
            tracing::error!(
                node = %config.node_name,
                since = ?last_renewal.elapsed(),
                "no lease renewal for the lease duration: fencing, stopping every workload"
            );
            health.send_replace(Health::Fenced);
        }
        let next = interval.saturating_sub(started.elapsed());
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// Creates the Node, or brings an existing one's labels up to date.
async fn register(shared: &Shared) -> Result<(), ClientError> {
    let Some(kind) = keel_schemas::lookup("nodes") else {
        return Ok(());
    };
    let api: Api<Value> = Api::all(&shared.client, kind);
    let name = &shared.config.node_name;
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": std::env::consts::ARCH,
        wellknown::KVM_LABEL: shared.facts.has("KVMAvailable").to_string(),
    });
    for (k, v) in &shared.config.labels {
        labels[k] = Value::String(v.clone());
    }
    let mut annotations = json!({wellknown::AGENT_CERTIFICATE_ANNOTATION: shared.endpoint.1});
    // A host that lost the DNS role stops advertising it (null removes the annotation).
    annotations[wellknown::DNS_ENDPOINT_ANNOTATION] = json!(shared.dns_endpoint);
    annotations[wellknown::S3_ENDPOINT_ANNOTATION] = json!(shared.s3_endpoint);
    annotations[wellknown::LOAD_BALANCER_ANNOTATION] =
        json!(shared.config.load_balancer.then_some("true"));
    match api.get_opt(name).await? {
        None => {
            // A new object takes no nulls: they only mean "remove" in a merge patch.
            if let Some(map) = annotations.as_object_mut() {
                map.retain(|_, v| !v.is_null());
            }
            let node = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": annotations},
                "spec": {},
            });
            match api.create(&node).await {
                Ok(_) => tracing::info!(node = %name, "registered the node"),
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
        Some(_) => {
            let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
            api.patch(name, &keel_client::Patch::Merge(patch)).await?;
        }
    }
    Ok(())
}

/// Creates or renews the node's Lease in `kube-node-lease`.
async fn renew_lease(shared: &Shared) -> Result<(), ClientError> {
    let Some(kind) = keel_schemas::lookup("leases") else {
        return Ok(());
    };
    let api: Api<Value> = Api::namespaced(&shared.client, kind, NODE_LEASE_NAMESPACE);
    let name = &shared.config.node_name;
    let now = keel_schemas::time::now_rfc3339_micros();
    let duration = shared.config.lease_duration.as_secs().max(1);
    match api.get_opt(name).await? {
        None => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": duration,
                         "acquireTime": now, "renewTime": now},
            });
            api.create(&lease).await?;
        }
        Some(mut lease) => {
            lease["spec"]["holderIdentity"] = json!(name);
            lease["spec"]["leaseDurationSeconds"] = json!(duration);
            lease["spec"]["renewTime"] = json!(now);
            api.update(&lease).await?;
        }
    }
    Ok(())
}

/// Writes the Node's status: capacity, addresses, `Ready=True` and the capabilities.
async fn report_ready(shared: &Shared) -> Result<(), ClientError> {
    let Some(kind) = keel_schemas::lookup("nodes") else {
        return Ok(());
    };
    let api: Api<Value> = Api::all(&shared.client, kind);
    let mut node = api.get(&shared.config.node_name).await?;
    let facts = &shared.facts;
    let now = keel_schemas::time::now_rfc3339();
    let status = &mut node["status"];
    if !status.is_object() {
        *status = json!({});
    }
    status["capacity"] = facts.capacity();
    status["allocatable"] = facts.allocatable(shared.config.cpu_allocation_ratio);
    if let Some(pods) = &shared.config.pods {
        let max = Value::String(pods.max_pods.to_string());
        status["capacity"]["pods"] = max.clone();
        status["allocatable"]["pods"] = max;
    }
    status["addresses"] = facts.addresses(&shared.config.node_name);
    status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": shared.endpoint.0}});
    status["nodeInfo"] = json!({
        "kernelVersion": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        "kubeletVersion": concat!("keel-agent/", env!("CARGO_PKG_VERSION")),
    });
    if let Some(runtime) = &shared.container_runtime {
        status["nodeInfo"]["containerRuntimeVersion"] = json!(runtime);
    }
    set_condition(
        status,
        &Condition::ready(
            "True",
            "KeelAgentReady",
            "the agent is renewing the node's lease",
        ),
        &now,
    );
    for c in &facts.capabilities {
        set_condition(
            status,
            &Condition {
                type_: c.type_,
                status: if c.available { "True" } else { "False" },
                reason: c.reason,
                message: &c.message,
            },
            &now,
        );
    }
    api.update_status(&node).await?;
    Ok(())
}

/// Binds the DNS server's sockets, and says how that went as the `DNSAvailable` capability.
/// The S3 endpoint's listener, if this host has the storage role and the address is free.
async fn bind_s3(listen: Option<SocketAddr>) -> Option<tokio::net::TcpListener> {
    let listen = listen?;
    match keel_storage::bind(listen).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot listen for the S3 endpoint: no storage role");
            None
        }
    }
}

/// The URL clients reach `bound` at: the host's address when bound to all of them.
/// The address clients reach the S3 endpoint bound at `bound` on: the node's own when it
/// listens on all.
fn s3_ip(bound: SocketAddr, internal_ip: Option<std::net::IpAddr>) -> std::net::IpAddr {
    match internal_ip {
        Some(ip) if bound.ip().is_unspecified() => ip,
        _ => bound.ip(),
    }
}

fn s3_url(bound: SocketAddr, internal_ip: Option<std::net::IpAddr>, tls: bool) -> String {
    let ip = s3_ip(bound, internal_ip);
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, bound.port()))
}

async fn bind_dns(
    listen: Option<SocketAddr>,
) -> (Option<keel_dns::Sockets>, crate::probe::Capability) {
    let Some(listen) = listen else {
        let capability = crate::probe::Capability {
            type_: "DNSAvailable",
            available: false,
            reason: "NotConfigured",
            message: "this host has no DNS role (no --dns-listen)".into(),
        };
        return (None, capability);
    };
    match keel_dns::Sockets::bind(listen).await {
        Ok(sockets) => {
            let at = sockets.local_addr().map_or(listen, |a| a);
            let capability = crate::probe::Capability {
                type_: "DNSAvailable",
                available: true,
                reason: "Serving",
                message: format!("the DNS server answers on {at} (UDP and TCP)"),
            };
            (Some(sockets), capability)
        }
        Err(e) => {
            let capability = crate::probe::Capability {
                type_: "DNSAvailable",
                available: false,
                reason: "PortUnavailable",
                message: format!("cannot bind {listen} (UDP and TCP) for the DNS server: {e}"),
            };
            (None, capability)
        }
    }
}

/// The socket address of a server URL (`https://host:port`), when the host is an IP.
fn server_addr(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    authority.parse().ok()
}
