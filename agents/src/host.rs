//! The host reconciler framework and its first reconciler.
//!
//! Each host reconciler is a [`Controller`] over the objects bound to this node only (a field
//! selector on `status.nodeName`), so a host never sees — or acts on — another host's
//! objects; when an object is bound elsewhere it leaves the selection and the watch says
//! DELETED. A reconciler writes what it finds back into the object's status.
//!
//! The reconciler here keeps one workload per VirtualMachine bound to this node: a
//! placeholder process (`sleep`) under the fencing supervisor, until the QEMU reconciler
//! (`vm/`) takes its place. What it proves is the framework: binding, status write-back,
//! fencing, adoption across agent restarts, and stopping workloads whose object is no longer
//! bound here (the binding is the truth: no split brain).

use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, ClientError};
use keel_controllers::runtime::{
    Action, Condition, Controller, EventType, ObjectExt, Recorder, Store, condition_status,
    set_condition, watcher,
};
use serde_json::Value;
use tokio::sync::watch;

use crate::agent::{Health, Shared};
use crate::workload::WorkloadError;

/// What the placeholder workload runs.
const PLACEHOLDER: [&str; 2] = ["sleep", "2147483647"];
/// How long a stopping workload gets before SIGKILL.
const STOP_PATIENCE: Duration = Duration::from_secs(5);
/// How often workloads are compared with the bindings.
const SWEEP: Duration = Duration::from_secs(1);

/// Why a host reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The API failed.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// A workload could not be started or stopped.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
}

/// What the reconciles share.
struct Context {
    shared: Arc<Shared>,
    health: watch::Receiver<Health>,
    recorder: Recorder,
}

/// Runs the host reconcilers until `shutdown` turns true.
pub(crate) async fn run(
    shared: Arc<Shared>,
    health: watch::Receiver<Health>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(vm_kind) = keel_schemas::lookup("virtualmachines") else {
        return;
    };
    let node = shared.config.node_name.clone();
    let selector = format!("status.nodeName={node}");
    let controller = Controller::new(
        &format!("agent-vms-{node}"),
        Api::all(&shared.client, vm_kind),
        watcher::Config::default().fields(&selector),
    )
    .resync(Duration::from_secs(30));
    let store = controller.store();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(&shared.client, "keel-agent", &node),
        shared,
        health: health.clone(),
    });
    let sweeper = tokio::spawn(sweep(
        ctx.clone(),
        store,
        controller.queue(),
        shutdown.clone(),
    ));
    controller.run(reconcile, ctx, shutdown).await;
    let _ = sweeper.await;
}

async fn reconcile(vm: Arc<Value>, ctx: Arc<Context>) -> Result<Action, HostError> {
    if *ctx.health.borrow() != Health::Healthy {
        // Fenced or not yet renewed: start nothing; look again soon.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let key = vm.object_ref();
    let runtime = &ctx.shared.runtime;
    let wanted = !vm.is_deleting() && vm["spec"]["runStrategy"].as_str() != Some("Halted");
    let running = runtime.get(&key).filter(|w| w.uid == vm.uid());
    let phase = match (wanted, running) {
        (true, Some(_)) => "Running",
        (true, None) => {
            let command: Vec<String> = PLACEHOLDER.iter().map(|s| s.to_string()).collect();
            runtime.stop(&key, STOP_PATIENCE).await?;
            let w = runtime.start(&key, vm.uid(), &command).await?;
            tracing::info!(vm = %key, pid = w.pid, "started the workload");
            ctx.recorder
                .publish(
                    &vm,
                    EventType::Normal,
                    "Started",
                    "Starting",
                    &format!("started on node {}", ctx.shared.config.node_name),
                )
                .await;
            "Running"
        }
        (false, _) => {
            runtime.stop(&key, STOP_PATIENCE).await?;
            "Stopped"
        }
    };
    write_status(&vm, phase, &ctx).await?;
    Ok(Action::await_change())
}

/// Records the phase, and that the node is back if a `NodeLost` condition said otherwise.
async fn write_status(vm: &Value, phase: &str, ctx: &Context) -> Result<(), ClientError> {
    let mut updated = vm.clone();
    let now = keel_schemas::time::now_rfc3339();
    let mut changed = vm["status"]["phase"].as_str() != Some(phase);
    updated["status"]["phase"] = Value::String(phase.to_string());
    if condition_status(vm, "NodeLost") == Some("True") {
        changed |= set_condition(
            &mut updated["status"],
            &Condition {
                type_: "NodeLost",
                status: "False",
                reason: "NodeBack",
                message: "the node renews its lease again",
            },
            &now,
        );
    }
    if vm["status"]["observedGeneration"].as_i64() != Some(vm.generation()) {
        updated["status"]["observedGeneration"] = Value::from(vm.generation());
        changed = true;
    }
    if !changed {
        return Ok(());
    }
    let api: Api<Value> = Api::namespaced(
        &ctx.shared.client,
        keel_schemas::lookup("virtualmachines")
            .ok_or_else(|| ClientError::Config("VirtualMachine is not registered".into()))?,
        vm.namespace().unwrap_or("default"),
    );
    match api.update_status(&updated).await {
        // Changed meanwhile (or gone): the watch brings the new version.
        Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Stops workloads this host must not run: all of them while fenced, and, once the cache of
/// bindings is filled, any whose object is not bound here (moved while this host was away,
/// or deleted). Then puts bound objects without a workload back on the queue.
async fn sweep(
    ctx: Arc<Context>,
    store: Store,
    queue: keel_controllers::runtime::WorkQueue<keel_controllers::runtime::ObjectRef>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut health = ctx.health.clone();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = health.changed() => {}
            _ = tokio::time::sleep(SWEEP) => {}
        }
        let runtime = &ctx.shared.runtime;
        let state = *health.borrow();
        match state {
            Health::Fenced => {
                for w in runtime.list() {
                    tracing::warn!(vm = %w.key, "fenced: stopping the workload");
                    if let Err(e) = runtime.stop(&w.key, STOP_PATIENCE).await {
                        tracing::error!(vm = %w.key, error = %e, "cannot stop the workload");
                    }
                }
            }
            Health::Healthy if store.is_ready() => {
                for w in runtime.list() {
                    let bound_here = store.get(&w.key).is_some_and(|vm| vm.uid() == w.uid);
                    if !bound_here {
                        tracing::warn!(vm = %w.key, "the VM is not bound to this node: stopping its workload");
                        if let Err(e) = runtime.stop(&w.key, STOP_PATIENCE).await {
                            tracing::error!(vm = %w.key, error = %e, "cannot stop the workload");
                        }
                    }
                }
                for vm in store.list() {
                    let wanted =
                        !vm.is_deleting() && vm["spec"]["runStrategy"].as_str() != Some("Halted");
                    if wanted && runtime.get(&vm.object_ref()).is_none() {
                        queue.add(vm.object_ref());
                    }
                }
            }
            _ => {}
        }
    }
}
