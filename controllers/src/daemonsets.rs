//! The daemon set controller (`apps/v1` DaemonSet): one pod of the template on every node
//! that runs pods (its agent reports a container runtime) and that the template's
//! `nodeSelector` and tolerations allow, as Kubernetes' does it:
//!
//! - each pod is made for its node with a `kubernetes.io/hostname` node selector, so the
//!   scheduler binds it there with its usual checks (capacity shared with VMs and other
//!   pods), and with the tolerations Kubernetes adds to daemon pods (not-ready, unreachable,
//!   unschedulable nodes);
//! - pods on nodes that should not run one, a second pod on a node, and failed pods are
//!   deleted (and the failed ones made again);
//! - `RollingUpdate` (the default) replaces pods of an old template (the
//!   `controller-revision-hash` label) node by node, deleting one only while fewer than
//!   `maxUnavailable` nodes lack an available pod; `OnDelete` waits for someone to delete
//!   them.
//!
//! It remembers the pods it made or deleted until its cache shows them, as the replica set
//! controller does, so it never makes two for one node.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError, DeleteParams};
use keel_runtime::{Action, EventType, ObjectExt, Recorder, Store, watcher};
use keel_schemas::kinds::apps::{DaemonSet, DaemonSetStatus};
use keel_schemas::kinds::core::{Node, Pod, Toleration};
use tokio::sync::watch;

use crate::replicasets::{Expectations, active, available, pod_of, ready};
use crate::{Owning, owning};

/// The label of a pod's template hash.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The node label a daemon pod is pinned by.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

struct Context {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    recorder: Recorder,
    expectations: Expectations,
    ds_kind: &'static keel_schemas::Kind,
    pod_kind: &'static keel_schemas::Kind,
}

/// Runs the daemon set controller until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let (
        Some(Owning {
            controller,
            owned: pods,
            kind: ds_kind,
            owned_kind: pod_kind,
        }),
        Some(node_kind),
    ) = (
        owning::<DaemonSet, Pod>(&client, "daemonsets", "pods", Duration::from_secs(60)),
        keel_schemas::lookup("nodes"),
    )
    else {
        return;
    };
    let all = {
        let sets = controller.store();
        move |_: &Node| sets.keys()
    };
    let controller = controller.watches(
        Api::<Node>::all(&client, node_kind),
        watcher::Config::default(),
        all,
    );
    let Some(nodes) = controller.store_of::<Node>("Node") else {
        return;
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods,
        nodes,
        recorder: Recorder::new(&client, "keel-daemonset-controller", &instance),
        expectations: Expectations::default(),
        ds_kind,
        pod_kind,
    });
    controller.run(reconcile, ctx, shutdown).await;
}

/// The tolerations Kubernetes gives every daemon pod.
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".into()),
        effect: Some(effect.to_string()),
        ..Toleration::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// Whether `node` should run the daemon set's pod.
fn should_run(ds: &DaemonSet, node: &Node, tolerations: &[Toleration]) -> bool {
    let runs_pods = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .and_then(|i| i.container_runtime_version.as_deref())
        .is_some_and(|v| !v.is_empty());
    let mut labels = node.labels();
    labels
        .entry(HOSTNAME_LABEL.to_string())
        .or_insert_with(|| node.name().to_string());
    let selected = ds
        .spec
        .template
        .spec
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let taints = node.spec.as_ref().map_or(&[][..], |s| s.taints.as_slice());
    runs_pods
        && !node.is_deleting()
        && selected
        && crate::scheduler::placement::tolerated(tolerations, taints)
}

/// The node a daemon pod is for: its binding, else its hostname selector.
fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            pod.spec
                .node_selector
                .get(HOSTNAME_LABEL)
                .map(String::as_str)
        })
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if ds.is_deleting() {
        return Ok(Action::await_change());
    }
    let namespace = ds.namespace().unwrap_or("default").to_string();
    let pod_api: Api<Pod> = Api::namespaced(&ctx.client, ctx.pod_kind, &namespace);
    let hash = format!(
        "{:08x}",
        crate::fnv1a(&serde_json::to_string(&ds.spec.template).unwrap_or_default())
    );
    let mut tolerations = ds.spec.template.spec.tolerations.clone();
    tolerations.extend(daemon_tolerations());
    let wanted: BTreeMap<String, ()> = ctx
        .nodes
        .list()
        .iter()
        .filter(|n| should_run(&ds, n, &tolerations))
        .map(|n| (n.name().to_string(), ()))
        .collect();
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .list()
        .into_iter()
        .filter(|p| p.namespace() == Some(namespace.as_str()))
        .filter(|p| p.controller_owner().is_some_and(|o| o.uid == ds.uid()))
        .collect();
    let min_ready =
        Duration::from_secs(u64::try_from(ds.spec.min_ready_seconds.unwrap_or(0)).unwrap_or(0));
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for pod in owned.iter().filter(|p| !p.is_deleting()) {
        if let Some(node) = node_of(pod) {
            by_node
                .entry(node.to_string())
                .or_default()
                .push(pod.clone());
        }
    }
    let revision = |p: &Pod| p.labels().get(REVISION_LABEL).cloned();
    if ctx.expectations.satisfied(ds.uid(), &owned) {
        let mut doomed: Vec<Arc<Pod>> = Vec::new();
        let mut make: Vec<String> = Vec::new();
        for (node, pods) in &by_node {
            if !wanted.contains_key(node) {
                doomed.extend(pods.iter().cloned());
                continue;
            }
            // Failed pods go (and are made again); of the rest, one stays.
            let (failed, mut live): (Vec<_>, Vec<_>) =
                pods.iter().cloned().partition(|p| !active(p));
            doomed.extend(failed);
            live.sort_by_key(|p| (revision(p) != Some(hash.clone()), !ready(p)));
            doomed.extend(live.into_iter().skip(1));
        }
        for node in wanted.keys() {
            let live = by_node
                .get(node)
                .is_some_and(|pods| pods.iter().any(|p| active(p)));
            if !live {
                make.push(node.clone());
            }
        }
        // Rolling update: old pods go while few enough nodes lack an available pod.
        let strategy = ds.spec.update_strategy.as_ref();
        let on_delete = strategy.and_then(|s| s["type"].as_str()) == Some("OnDelete");
        if !on_delete && make.is_empty() {
            let max_unavailable = strategy
                .and_then(|s| s["rollingUpdate"]["maxUnavailable"].as_u64())
                .unwrap_or(1)
                .max(1) as usize;
            let unavailable = wanted
                .keys()
                .filter(|n| {
                    !by_node.get(*n).is_some_and(|pods| {
                        pods.iter().any(|p| active(p) && available(p, min_ready))
                    })
                })
                .count();
            let old: Vec<Arc<Pod>> = wanted
                .keys()
                .filter_map(|n| by_node.get(n))
                .flatten()
                .filter(|p| active(p) && revision(p) != Some(hash.clone()))
                .filter(|p| !doomed.iter().any(|d| d.uid() == p.uid()))
                .cloned()
                .collect();
            // Unavailable old pods first: replacing them costs nothing.
            let mut old = old;
            old.sort_by_key(|p| available(p, min_ready));
            let mut budget = max_unavailable.saturating_sub(unavailable);
            for pod in old {
                if !available(&pod, min_ready) {
                    doomed.push(pod);
                } else if budget > 0 {
                    budget -= 1;
                    doomed.push(pod);
                }
            }
        }
        let mut seen = HashSet::new();
        for pod in doomed
            .into_iter()
            .filter(|p| seen.insert(p.uid().to_string()))
        {
            let params = DeleteParams {
                uid: Some(pod.uid().to_string()),
                propagation_policy: None,
            };
            match pod_api.delete(pod.name(), &params).await {
                Ok(_) => ctx
                    .expectations
                    .expect(ds.uid(), None, Some(pod.uid().to_string())),
                Err(e) if matches!(e.code(), Some(404 | 409)) => {}
                Err(e) => return Err(e),
            }
        }
        for node in make {
            let mut pod = pod_of(&*ds, &ds.spec.template);
            pod.metadata
                .labels
                .insert(REVISION_LABEL.to_string(), hash.clone());
            pod.spec
                .node_selector
                .insert(HOSTNAME_LABEL.to_string(), node.clone());
            for t in daemon_tolerations() {
                if !pod.spec.tolerations.contains(&t) {
                    pod.spec.tolerations.push(t);
                }
            }
            match pod_api.create(&pod).await {
                Ok(made) => {
                    ctx.expectations
                        .expect(ds.uid(), Some(made.name().to_string()), None);
                    ctx.recorder
                        .publish(
                            &*ds,
                            EventType::Normal,
                            "SuccessfulCreate",
                            "Creating",
                            &format!("Created pod: {} for node {node}", made.name()),
                        )
                        .await;
                }
                Err(e) => {
                    let message = format!("Error creating: {e}");
                    ctx.recorder
                        .publish(
                            &*ds,
                            EventType::Warning,
                            "FailedCreate",
                            "Creating",
                            &message,
                        )
                        .await;
                    return Err(e);
                }
            }
        }
    }
    let count = |f: &dyn Fn(&str, &[Arc<Pod>]) -> bool| -> i32 {
        let n = by_node.iter().filter(|(node, pods)| f(node, pods)).count();
        i32::try_from(n).unwrap_or(i32::MAX)
    };
    let live = |pods: &[Arc<Pod>]| pods.iter().any(|p| active(p));
    let desired = i32::try_from(wanted.len()).unwrap_or(i32::MAX);
    let number_available = count(&|n, pods| {
        wanted.contains_key(n) && pods.iter().any(|p| active(p) && available(p, min_ready))
    });
    let status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        desired_number_scheduled: desired,
        current_number_scheduled: count(&|n, pods| wanted.contains_key(n) && live(pods)),
        number_misscheduled: count(&|n, pods| !wanted.contains_key(n) && live(pods)),
        number_ready: count(&|n, pods| {
            wanted.contains_key(n) && pods.iter().any(|p| active(p) && ready(p))
        }),
        updated_number_scheduled: count(&|n, pods| {
            wanted.contains_key(n)
                && pods
                    .iter()
                    .any(|p| active(p) && revision(p).as_deref() == Some(hash.as_str()))
        }),
        number_available,
        number_unavailable: desired - number_available,
    };
    if ds.status.as_ref() != Some(&status) {
        let api: Api<DaemonSet> = Api::namespaced(&ctx.client, ctx.ds_kind, &namespace);
        let mut updated = (*ds).clone();
        updated.status = Some(status.clone());
        match api.update_status(&updated).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some(404 | 409)) => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        }
    }
    if status.number_ready > status.number_available && !min_ready.is_zero() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}
