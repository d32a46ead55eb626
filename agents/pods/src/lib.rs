//! The pod role of a host: the kubelet's part of the agent. It runs the Pods bound to its
//! node (`spec.nodeName`) through CRI v1 on a containerd it supervises ([`containerd`]),
//! networks them with CNI ([`cni`]) and reports their status as a kubelet does.
//!
//! - [`run`]: a controller over the node's pods. Each pass ([`sync`]) brings one pod's
//!   sandbox and containers to what its spec and restart policy ask — init containers in
//!   order first — and writes its status: phase, conditions, container states, addresses.
//!   The node's finalizer (`keel.dev/pod-host`) keeps a deleted pod until its containers
//!   are stopped (with the grace period) and its sandbox removed.
//! - A relist every second (the kubelet's PLEG) compares the runtime's containers with the
//!   last look and wakes the pods whose containers changed; it stops sandboxes of pods that
//!   are no longer bound here, and every sandbox while the node is fenced.
//! - [`fence`]: `keel pod-fence`, which kills the node's pods when the agent's heartbeat
//!   goes stale, even with the agent dead.
//! - [`logs`]: the containers' log files, for `kubectl logs`.
//! - [`streams`]: `kubectl exec`, `attach` and `port-forward`, through the runtime's stream
//!   server (WebSocket clients translated to its SPDY).
//! - [`services`]: every Service's ClusterIP and NodePorts answered on this node, by
//!   nftables rules made from the EndpointSlices.

pub mod cni;
pub mod containerd;
pub mod cri;
mod dns;
pub mod fence;
pub mod logs;
mod probes;
pub mod registries;
pub mod routes;
pub mod services;
mod spdy;
pub mod streams;
mod volumes;

pub use keel_schemas::net::ClusterDns;
mod sync;
mod tokens;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_client::{Api, ClientError};
use keel_host::Health;
use keel_runtime::{
    Action, Backoff, Controller, FinalizerError, FinalizerEvent, ObjectExt, ObjectRef, Recorder,
    Store, WorkQueue, finalizer, watcher,
};
use keel_schemas::kinds::core::Pod;
use tokio::sync::watch;

use crate::cri::{Cri, CriError, v1};

/// The finalizer a pod's node holds until its containers are gone.
pub const FINALIZER: &str = keel_schemas::wellknown::POD_HOST_FINALIZER;
/// How often the runtime's containers are listed.
const RELIST: Duration = Duration::from_secs(1);
/// How many pods are synced at once (a stop can take its grace period).
const CONCURRENCY: usize = 8;

/// The labels Keel (as the kubelet does) puts on sandboxes and containers.
pub mod labels {
    /// The pod's name.
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    /// The pod's namespace.
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    /// The pod's uid.
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    /// The container's name in its pod.
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
}

/// Why a pod pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The API failed.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// The runtime failed.
    #[error(transparent)]
    Cri(#[from] CriError),
    /// A file of the pod could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The host the pod role serves.
pub struct PodHost {
    /// The node, and its client.
    pub node: keel_host::Node,
    /// The pod role's directory (`<data-dir>/pods`).
    pub dir: PathBuf,
    /// The node's address, reported as each pod's `hostIP`.
    pub host_ip: Option<IpAddr>,
    /// The cluster DNS its pods ask.
    pub dns: ClusterDns,
    /// The cgroup every pod's cgroups go under, which the node's fence kills
    /// ([`fence::cgroup_parent`]).
    pub cgroup_parent: String,
}

/// What the passes share.
pub(crate) struct Context {
    pub(crate) host: PodHost,
    pub(crate) cri: Cri,
    health: watch::Receiver<Health>,
    pub(crate) recorder: Recorder,
    /// The node's pod range, once node IPAM gave it (the CNI configuration is written).
    pub(crate) pod_cidr: watch::Receiver<Option<cni::Cidr>>,
    /// When each container (pod uid, name) may be started again after it failed, and the
    /// delay after the next failure: the kubelet's back-off (10 s doubling to 5 minutes).
    pub(crate) restarts: Mutex<HashMap<(String, String), sync::BackOff>>,
    /// The same for image pulls, by image.
    pub(crate) pulls: Mutex<HashMap<String, sync::BackOff>>,
    /// Which credentials pulled each image on the node ([`registries::Pulled`]).
    pub(crate) pulled: Mutex<registries::Pulled>,
    /// The containers' probes.
    pub(crate) probes: probes::Probes,
    /// The pods' work queue (probes wake pods through it).
    pub(crate) queue: WorkQueue<ObjectRef>,
    /// The local persistent volumes (handles) each pod (uid) of the node mounts.
    pub(crate) claimed: Mutex<HashMap<String, std::collections::HashSet<String>>>,
    /// The `kubernetes` Service's address and port, once read.
    pub(crate) api_service: Mutex<Option<(String, u64)>>,
    /// The service-account tokens written in the pods' volumes, to renew.
    pub(crate) tokens: tokens::Tokens,
}

/// Runs the pod role until `shutdown` turns true. Pods keep running after it returns.
pub async fn run(
    host: PodHost,
    cri: Cri,
    health: watch::Receiver<Health>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(kind) = keel_schemas::lookup("pods") else {
        return;
    };
    let node = host.node.name.clone();
    let selector = format!("spec.nodeName={node}");
    let controller = Controller::new(
        &format!("agent-pods-{node}"),
        Api::all(&host.node.client, kind),
        watcher::Config::default().fields(&selector),
    )
    .resync(Duration::from_secs(30))
    .concurrency(CONCURRENCY)
    .backoff(Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    });
    let store = controller.store();
    let queue = controller.queue();
    let (cidr_tx, pod_cidr) = watch::channel(None);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(&host.node.client, "keel-agent", &node),
        cri,
        health: health.clone(),
        pod_cidr,
        restarts: Mutex::default(),
        pulls: Mutex::default(),
        pulled: Mutex::new(registries::Pulled::load(
            &host.dir.join("pulled-images.json"),
        )),
        probes: probes::Probes::default(),
        queue: queue.clone(),
        claimed: Mutex::default(),
        api_service: Mutex::default(),
        tokens: tokens::Tokens::default(),
        host,
    });
    let network = tokio::spawn(network(ctx.clone(), cidr_tx, shutdown.clone()));
    let proxy = tokio::spawn(services::run(
        ctx.host.node.client.clone(),
        ctx.pod_cidr.clone(),
        shutdown.clone(),
    ));
    let router = tokio::spawn(routes::run(
        ctx.host.node.client.clone(),
        ctx.host.node.name.clone(),
        shutdown.clone(),
    ));
    let relister = tokio::spawn(relist(ctx.clone(), store, queue, shutdown.clone()));
    let renewer = tokio::spawn(tokens::renew(
        ctx.clone(),
        Duration::from_secs(10),
        shutdown.clone(),
    ));
    let sweeper = tokio::spawn(volumes::sweep(
        ctx.clone(),
        Duration::from_secs(10),
        shutdown.clone(),
    ));
    controller.run(reconcile, ctx, shutdown).await;
    let _ = relister.await;
    let _ = sweeper.await;
    let _ = renewer.await;
    let _ = network.await;
    let _ = proxy.await;
    let _ = router.await;
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, PodError> {
    if *ctx.health.borrow() != Health::Healthy {
        // Fenced or not yet renewed: touch nothing; look again soon.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let Some(kind) = keel_schemas::lookup("pods") else {
        return Ok(Action::await_change());
    };
    let api: Api<Pod> = Api::namespaced(
        &ctx.host.node.client,
        kind,
        pod.namespace().unwrap_or("default"),
    );
    let outcome = finalizer(&api, FINALIZER, &pod, |event| async {
        match event {
            FinalizerEvent::Apply(pod) => sync::sync(&pod, &api, &ctx).await,
            FinalizerEvent::Cleanup(pod) => {
                sync::kill(&ctx, pod.uid(), grace(&pod)).await?;
                sync::remove_logs(&ctx, &pod);
                volumes::remove(&ctx, pod.uid());
                forget(&ctx, pod.uid());
                Ok(Action::await_change())
            }
        }
    })
    .await;
    match outcome {
        Ok(action) => Ok(action),
        Err(FinalizerError::Reconcile(e)) => Err(e),
        Err(FinalizerError::Patch { source, .. }) if source.code() == Some(409) => {
            Ok(Action::await_change())
        }
        Err(FinalizerError::Patch { source, .. }) => Err(PodError::Api(source)),
    }
}

/// The pod's termination grace period (30 s by default, as in Kubernetes; a deletion's own
/// grace period shortens it).
pub(crate) fn grace(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod.spec.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// Drops what is remembered of a pod's back-offs, and stops its probes and the renewal of
/// its tokens.
fn forget(ctx: &Context, uid: &str) {
    ctx.tokens.forget(uid);
    ctx.probes.retain(uid, &|_| false);
    let mut restarts = ctx.restarts.lock().unwrap_or_else(|e| e.into_inner());
    restarts.retain(|(pod, _), _| pod != uid);
}

/// Waits for node IPAM to give the node its pod range, then writes the CNI configuration
/// for it (and again if it changes).
async fn network(
    ctx: Arc<Context>,
    cidr: watch::Sender<Option<cni::Cidr>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(kind) = keel_schemas::lookup("nodes") else {
        return;
    };
    let api: Api<keel_schemas::kinds::core::Node> = Api::all(&ctx.host.node.client, kind);
    let conf = containerd::Dir::new(&ctx.host.dir).cni_conf();
    let leases = ctx.host.dir.join("cni-leases");
    loop {
        match api.get_opt(&ctx.host.node.name).await {
            Ok(Some(node)) => {
                let range = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.clone().or_else(|| s.pod_cidrs.first().cloned()));
                match range.as_deref().map(cni::Cidr::parse) {
                    Some(Ok(range)) if *cidr.borrow() != Some(range) => {
                        match cni::write(&conf, range, &leases) {
                            Ok(path) => {
                                tracing::info!(%range, conf = %path.display(), "pod network configured");
                                cidr.send_replace(Some(range));
                            }
                            Err(e) => {
                                tracing::error!(error = %e, conf = %conf.display(), "cannot write the CNI configuration")
                            }
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "the node's pod range"),
                    _ => {}
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the node for its pod range"),
        }
        let wait = if cidr.borrow().is_some() {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What the relist saw of one pod: its sandboxes' and containers' ids and states.
type Seen = HashMap<String, Vec<(String, i32)>>;

/// The kubelet's PLEG: every [`RELIST`], list the runtime's sandboxes and containers; wake
/// the pods whose containers changed; stop the sandboxes of pods no longer bound here; stop
/// every sandbox while the node is fenced.
async fn relist(
    ctx: Arc<Context>,
    store: Store<Pod>,
    queue: WorkQueue<ObjectRef>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen: Seen = HashMap::new();
    let mut health = ctx.health.clone();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = health.changed() => {}
            _ = tokio::time::sleep(RELIST) => {}
        }
        let state = *health.borrow();
        let (sandboxes, containers) = match sync::list_all(&ctx.cri).await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the runtime's containers");
                continue;
            }
        };
        if state == Health::Fenced {
            for sandbox in sandboxes
                .iter()
                .filter(|s| s.state == v1::PodSandboxState::SandboxReady as i32)
            {
                tracing::warn!(sandbox = %sandbox.id, pod = ?sandbox.metadata.as_ref().map(|m| &m.name), "fenced: stopping the pod");
                let request = v1::StopPodSandboxRequest {
                    pod_sandbox_id: sandbox.id.clone(),
                };
                if let Err(e) = ctx.cri.runtime.clone().stop_pod_sandbox(request).await {
                    tracing::error!(error = %e.message(), "cannot stop the pod");
                }
            }
            continue;
        }
        let mut now: Seen = HashMap::new();
        let mut keys: HashMap<String, ObjectRef> = HashMap::new();
        for s in &sandboxes {
            let Some(m) = &s.metadata else { continue };
            now.entry(m.uid.clone())
                .or_default()
                .push((s.id.clone(), s.state));
            keys.insert(m.uid.clone(), ObjectRef::new(Some(&m.namespace), &m.name));
        }
        for c in &containers {
            let Some(uid) = c.labels.get(labels::POD_UID) else {
                continue;
            };
            now.entry(uid.clone())
                .or_default()
                .push((c.id.clone(), c.state));
        }
        for list in now.values_mut() {
            list.sort();
        }
        for (uid, state) in &now {
            if seen.get(uid) != Some(state)
                && let Some(key) = keys.get(uid)
            {
                queue.add(key.clone());
            }
        }
        seen = now;
        if state != Health::Healthy || !store.is_ready() {
            continue;
        }
        // Sandboxes of pods that are gone, or bound elsewhere: deleted while the agent was
        // down, or their object lost.
        let bound: HashSet<String> = store.list().iter().map(|p| p.uid().to_string()).collect();
        let mut orphans: HashSet<&str> = HashSet::new();
        for (uid, key) in &keys {
            if !bound.contains(uid) && store.uid_of(key).as_deref() != Some(uid.as_str()) {
                orphans.insert(uid);
            }
        }
        for uid in orphans {
            tracing::info!(pod_uid = %uid, "the pod is no longer bound here: removing its containers");
            if let Err(e) = sync::kill(&ctx, uid, Duration::from_secs(2)).await {
                tracing::warn!(error = %e, "cannot remove an orphaned pod");
            }
            volumes::remove(&ctx, uid);
            forget(&ctx, uid);
        }
    }
}
