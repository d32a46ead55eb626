//! The replica set controller: keeps `spec.replicas` pods of each ReplicaSet's template, as
//! Kubernetes' does. It makes pods (`generateName: <replicaset>-`, owned by the ReplicaSet
//! as their controller) when it has too few, deletes the least useful when it has too many
//! (not yet scheduled before pending before not ready before ready; the youngest first), and
//! reports how many it has, how many are ready and how many available.
//!
//! Pods it made or deleted take a moment to reach its cache: until they do, it remembers
//! them ("expectations", as Kubernetes calls them) and makes or deletes no more for that
//! ReplicaSet, so that it never makes one pod too many.

use crate::{Owning, owning};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::{Api, Client, ClientError, DeleteParams};
use keel_runtime::{Action, EventType, ObjectExt, Recorder, Store};
use keel_schemas::kinds::apps::{ReplicaSet, ReplicaSetSpec, ReplicaSetStatus};
use keel_schemas::kinds::core::{Pod, PodSpec};
use keel_schemas::kinds::{KindSpec, ObjectMeta};
use tokio::sync::watch;

/// How long made or deleted pods are waited for in the cache before counting again anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Most pods made in one pass (Kubernetes' slow start begins with 1 and doubles; Keel makes
/// them all, a burst at most this large).
const BURST: usize = 64;

/// Pods an owner is waiting to see made (by name) or gone (by uid).
#[derive(Debug, Default)]
struct Pending {
    adds: HashSet<String>,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

/// What the owners of pods (ReplicaSets, Jobs) made or deleted and have not seen in their
/// cache yet, by owner uid.
#[derive(Debug, Default)]
pub(crate) struct Expectations(Mutex<HashMap<String, Pending>>);

struct Context {
    client: Client,
    pods: Store<Pod>,
    recorder: Recorder,
    expectations: Expectations,
}

/// Runs the replica set controller until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let Some(Owning {
        controller,
        owned: pods,
        ..
    }) = owning::<ReplicaSet, Pod>(&client, "replicasets", "pods", Duration::from_secs(60))
    else {
        return;
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods,
        recorder: Recorder::new(&client, "keel-replicaset-controller", &instance),
        expectations: Expectations::default(),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

/// Whether a pod still counts: not ended, not being deleted.
pub fn active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !pod.is_deleting() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether a pod's Ready condition is True.
pub fn ready(pod: &Pod) -> bool {
    condition_since(pod, "Ready").is_some()
}

/// Whether a pod has been ready for `min_ready` (available, in Kubernetes' words).
pub fn available(pod: &Pod, min_ready: Duration) -> bool {
    let Some(since) = condition_since(pod, "Ready") else {
        return false;
    };
    if min_ready.is_zero() {
        return true;
    }
    let since = since
        .as_deref()
        .and_then(keel_schemas::time::parse_rfc3339)
        .unwrap_or(0);
    keel_schemas::time::now_secs().saturating_sub(since) >= min_ready.as_secs()
}

/// When the pod's condition `type_` turned True (`Some(None)` when it is True with no time).
fn condition_since(pod: &Pod, type_: &str) -> Option<Option<String>> {
    let status = pod.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    (c.status == "True").then(|| c.last_transition_time.clone())
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if rs.is_deleting() {
        return Ok(Action::await_change());
    }
    let namespace = rs.namespace().unwrap_or("default").to_string();
    let pod_api: Api<Pod> = Api::namespaced(&ctx.client, ctx.pod_kind(), &namespace);
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .list()
        .into_iter()
        .filter(|p| p.namespace() == Some(namespace.as_str()))
        .filter(|p| p.controller_owner().is_some_and(|o| o.uid == rs.uid()))
        .collect();
    let live: Vec<&Arc<Pod>> = owned.iter().filter(|p| active(p)).collect();
    let wanted = usize::try_from(rs.spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    if ctx.expectations.satisfied(rs.uid(), &owned) {
        if live.len() < wanted {
            ctx.make(&rs, &pod_api, (wanted - live.len()).min(BURST))
                .await?;
        } else if live.len() > wanted {
            ctx.remove(&rs, &pod_api, &live, live.len() - wanted)
                .await?;
        }
    }
    let min_ready =
        Duration::from_secs(u64::try_from(rs.spec.min_ready_seconds.unwrap_or(0)).unwrap_or(0));
    let labels = &rs.spec.template.metadata.labels;
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let status = ReplicaSetStatus {
        observed_generation: rs.metadata.generation,
        replicas: count(&|_| true),
        fully_labeled_replicas: count(&|p| {
            let have = p.labels();
            labels.iter().all(|(k, v)| have.get(k) == Some(v))
        }),
        ready_replicas: count(&|p| ready(p)),
        available_replicas: count(&|p| available(p, min_ready)),
        conditions: rs.status.clone().unwrap_or_default().conditions,
    };
    if rs.status.as_ref() != Some(&status) {
        let api: Api<ReplicaSet> = Api::namespaced(&ctx.client, rs_kind(), &namespace);
        let mut updated = (*rs).clone();
        updated.status = Some(status.clone());
        match api.update_status(&updated).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(409) || e.code() == Some(404) => {
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e),
        }
    }
    // A pod turning available after minReadySeconds announces itself with no event.
    if status.ready_replicas > status.available_replicas && !min_ready.is_zero() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

fn rs_kind() -> &'static keel_schemas::Kind {
    <ReplicaSetSpec as KindSpec>::kind()
}

// === impl Expectations ===

impl Expectations {
    /// Whether the owner's last creations and deletions are all in the cache (or were
    /// waited for long enough).
    pub(crate) fn satisfied(&self, uid: &str, owned: &[Arc<Pod>]) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = all.get_mut(uid) else {
            return true;
        };
        let names: HashSet<&str> = owned.iter().map(|p| p.name()).collect();
        let uids: HashSet<&str> = owned
            .iter()
            .filter(|p| !p.is_deleting())
            .map(|p| p.uid())
            .collect();
        e.adds.retain(|n| !names.contains(n.as_str()));
        e.deletes.retain(|u| uids.contains(u.as_str()));
        let done = e.adds.is_empty() && e.deletes.is_empty();
        let expired = e.since.is_some_and(|s| s.elapsed() >= EXPECTATION_TIMEOUT);
        if done || expired {
            all.remove(uid);
            return true;
        }
        false
    }

    /// Records a pod the owner made (`add`, by name) or deleted (`delete`, by uid).
    pub(crate) fn expect(&self, uid: &str, add: Option<String>, delete: Option<String>) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = all.entry(uid.to_string()).or_default();
        e.adds.extend(add);
        e.deletes.extend(delete);
        e.since = Some(Instant::now());
    }
}

/// A pod of `template` (named `<owner>-<random>`) whose controller is `owner`.
pub(crate) fn pod_of<S, T>(
    owner: &keel_schemas::kinds::Object<S, T>,
    template: &keel_schemas::kinds::apps::PodTemplateSpec,
) -> Pod
where
    keel_schemas::kinds::Object<S, T>: ObjectExt,
{
    let mut pod = Pod::new("", owner.namespace(), template.spec.clone());
    pod.metadata = ObjectMeta {
        generate_name: Some(format!("{}-", owner.name())),
        namespace: owner.namespace().map(str::to_string),
        labels: template.metadata.labels.clone(),
        annotations: template.metadata.annotations.clone(),
        owner_references: vec![owner.controller_reference()],
        ..ObjectMeta::default()
    };
    pod
}

// === impl Context ===

impl Context {
    fn pod_kind(&self) -> &'static keel_schemas::Kind {
        <PodSpec as KindSpec>::kind()
    }

    fn expect(&self, uid: &str, add: Option<String>, delete: Option<String>) {
        self.expectations.expect(uid, add, delete);
    }

    /// Makes `n` pods of the replica set's template.
    async fn make(&self, rs: &ReplicaSet, api: &Api<Pod>, n: usize) -> Result<(), ClientError> {
        for _ in 0..n {
            let pod = pod_of(rs, &rs.spec.template);
            match api.create(&pod).await {
                Ok(made) => self.expect(rs.uid(), Some(made.name().to_string()), None),
                Err(e) => {
                    let message = format!("Error creating: {}", e);
                    self.recorder
                        .publish(rs, EventType::Warning, "FailedCreate", "Creating", &message)
                        .await;
                    return Err(e);
                }
            }
        }
        if n > 0 {
            self.recorder
                .publish(
                    rs,
                    EventType::Normal,
                    "SuccessfulCreate",
                    "Creating",
                    &format!("Created {n} pod(s)"),
                )
                .await;
        }
        Ok(())
    }

    /// Deletes the `n` least useful of `live`.
    async fn remove(
        &self,
        rs: &ReplicaSet,
        api: &Api<Pod>,
        live: &[&Arc<Pod>],
        n: usize,
    ) -> Result<(), ClientError> {
        let mut victims: Vec<&Arc<Pod>> = live.to_vec();
        // Least useful first: unscheduled, then pending, then not ready, then the youngest.
        victims.sort_by_key(|p| {
            let scheduled = p.spec.node_name.as_deref().is_some_and(|n| !n.is_empty());
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            (
                scheduled,
                running,
                ready(p),
                std::cmp::Reverse(p.creation_timestamp().to_string()),
            )
        });
        for pod in victims.into_iter().take(n) {
            match api
                .delete(
                    pod.name(),
                    &DeleteParams {
                        uid: Some(pod.uid().to_string()),
                        propagation_policy: None,
                    },
                )
                .await
            {
                Ok(_) => self.expect(rs.uid(), None, Some(pod.uid().to_string())),
                Err(e) if e.code() == Some(404) => {}
                Err(e) => return Err(e),
            }
            self.recorder
                .publish(
                    rs,
                    EventType::Normal,
                    "SuccessfulDelete",
                    "Deleting",
                    &format!("Deleted pod: {}", pod.name()),
                )
                .await;
        }
        Ok(())
    }
}
