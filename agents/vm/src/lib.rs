//! The VM reconciler: one `qemu-system-x86_64` per VirtualMachine bound to this node.
//!
//! It is a [`Controller`] over the VMs bound here only (a field selector on
//! `status.nodeName`): a host never sees, or acts on, another host's VMs, and a VM bound
//! elsewhere leaves the selection. Each pass compares the VM's spec with what runs — found
//! through the supervisor's pid file, QEMU's pid file and QMP socket, and `boot.json` — and
//! takes one step: prepare the disks and start QEMU, restart it to apply a change, stop it
//! gracefully, pause or resume it, probe it, and write the status.
//!
//! QEMU runs under the fencing supervisor ([`keel_workload`]), in its own process group, so
//! it survives an agent restart and is re-adopted from its files; it is never started twice
//! for one VM (QEMU's own image locks would refuse a second one too). A task per running
//! guest listens to its QMP events, so that a guest that powers off, crashes or is killed is
//! seen at once rather than at the next resync.
//!
//! Modules: [`qmp`] (the QMP client), [`qemu`] (the command line and the VM's files),
//! [`images`] (image cache and disks), [`cloudinit`] (the NoCloud seed), [`readiness`]
//! (probes), [`console`] (the serial log), [`lifecycle`] (starting and stopping),
//! [`snapshots`] (the disks' rollback point).

pub mod cloudinit;
pub mod confine;
pub mod console;
pub mod images;
mod lifecycle;
pub mod ovs;
pub mod qemu;
pub mod qmp;
pub mod readiness;
mod snapshots;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_client::{Api, ClientError};
use keel_runtime::{
    Action, Backoff, Condition, Controller, EventType, FinalizerError, FinalizerEvent, ObjectExt,
    ObjectRef, Recorder, Store, WorkQueue, finalizer, set_typed_condition, typed_condition_status,
    watcher,
};
use keel_schemas::datadir::AgentDir;
use keel_schemas::kinds::compute::{
    InterfaceStatus, RunStrategy, VirtualMachine, VirtualMachinePhase, VirtualMachineSpec,
    VirtualMachineStatus,
};
use tokio::sync::watch;

use keel_host::Health;
use keel_workload::WorkloadError;
use keel_workload::shim::Exit;

pub use self::lifecycle::CONSOLE_KEEP;

use self::console::Console;
use self::lifecycle::{Observed, Prepared, Request};
use self::qemu::{Boot, VmDir, VmFiles, changed_fields, restart_fields, vm_dir};

/// The finalizer the host of a VM holds until it has removed the VM's guest and files.
pub const FINALIZER: &str = keel_schemas::wellknown::VM_HOST_FINALIZER;
/// How often the sweep compares the host's guests with the bindings.
const SWEEP: Duration = Duration::from_secs(1);
/// How often a ready guest is probed again.
const PROBE_READY: Duration = Duration::from_secs(10);
/// How often a guest that is not ready yet is probed.
const PROBE_WAITING: Duration = Duration::from_millis(250);
/// How many VMs are reconciled at once (a graceful stop can take its grace period).
const CONCURRENCY: usize = 8;

/// Why a VM reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The API failed.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// The supervisor could not be started or stopped.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The VM's spec could not be read.
    #[error("spec: {0}")]
    Spec(String),
    /// The guest could not be prepared or started; the status and an Event say why.
    #[error("{reason}: {message}")]
    Start {
        /// A CamelCase reason.
        reason: &'static str,
        /// What failed.
        message: String,
    },
}

/// The host a VM reconciler serves: what it needs of the agent that runs it.
pub struct VmHost {
    /// The node, and its client.
    pub node: keel_host::Node,
    /// The agent's data dir (VM directories, the image cache).
    pub data: AgentDir,
    /// The host's workloads (each guest runs under its supervisor).
    pub runtime: keel_workload::Runtime,
    /// The Open vSwitch database's OVSDB address.
    pub ovs_addr: String,
    /// Whether OVN networking is available on this host (`NetworkAvailable`).
    pub ovn: bool,
    /// How guests run: KVM when the probe proved it, TCG otherwise.
    pub accelerator: keel_schemas::kinds::compute::Accelerator,
    /// What image downloads may do.
    pub images: images::FetchPolicy,
}

/// What the reconciles share.
pub(crate) struct Context {
    pub(crate) host: VmHost,
    health: watch::Receiver<Health>,
    recorder: Recorder,
    images: images::Images,
    confinement: confine::Confinement,
    /// The agent's data dir (VM directories, the image cache).
    data: AgentDir,
    queue: WorkQueue<ObjectRef>,
    /// The QMP event listener of each running guest.
    listeners: Mutex<HashMap<ObjectRef, tokio::task::JoinHandle<()>>>,
}

/// Runs the VM reconciler of `host` until `shutdown` turns true; `health` says when the agent
/// may start guests.
pub async fn run(host: VmHost, health: watch::Receiver<Health>, shutdown: watch::Receiver<bool>) {
    let Some(vm_kind) = keel_schemas::lookup("virtualmachines") else {
        return;
    };
    let node = host.node.name.clone();
    let selector = format!("status.nodeName={node}");
    let controller = Controller::new(
        &format!("agent-vms-{node}"),
        Api::all(&host.node.client, vm_kind),
        watcher::Config::default().fields(&selector),
    )
    .resync(Duration::from_secs(30))
    .concurrency(CONCURRENCY)
    // A VM that cannot start (a missing image, a bad seed) is retried, but not in a loop:
    // 1 s, 2 s, 4 s ... up to 5 minutes.
    .backoff(Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(300),
    });
    let store = controller.store();
    let data = host.data.clone();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(&host.node.client, "keel-agent", &node),
        images: images::Images::new(data.images(), host.images.clone()),
        confinement: confine::Confinement::probe(),
        data,
        queue: controller.queue(),
        listeners: Mutex::new(HashMap::new()),
        host,
        health: health.clone(),
    });
    let sweeper = tokio::spawn(sweep(ctx.clone(), store, shutdown.clone()));
    controller.run(reconcile, ctx.clone(), shutdown).await;
    let _ = sweeper.await;
    for (_, listener) in ctx
        .listeners
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default()
    {
        listener.abort();
    }
}

async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, VmError> {
    if *ctx.health.borrow() != Health::Healthy {
        // Fenced or not yet renewed: touch nothing; look again soon.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let api = vm_api(&ctx, &vm)?;
    let outcome = finalizer(&api, FINALIZER, &vm, |event| async {
        match event {
            FinalizerEvent::Apply(vm) => apply(&vm, &ctx).await,
            FinalizerEvent::Cleanup(vm) => cleanup(&vm, &ctx).await,
        }
    })
    .await;
    match outcome {
        Ok(action) => Ok(action),
        Err(FinalizerError::Reconcile(e)) => Err(e),
        Err(FinalizerError::Patch { source, .. }) if source.code() == Some(409) => {
            Ok(Action::await_change())
        }
        Err(FinalizerError::Patch { source, .. }) => Err(VmError::Api(source)),
    }
}

/// Brings the guest to what the spec asks, then writes the status.
async fn apply(vm: &VirtualMachine, ctx: &Context) -> Result<Action, VmError> {
    let spec = &vm.spec;
    let key = vm.object_ref();
    let dir = vm_dir(&ctx.data, &key);
    let observed = lifecycle::observe(ctx, vm, &dir).await;
    let strategy = spec.run_strategy.unwrap_or(RunStrategy::Always);
    let mut report = Report::new(vm, &dir);

    let Observed::Running { boot, status } = observed else {
        let exit = lifecycle::last_exit(&dir);
        // A start (or restart) request starts a Manual guest that stopped.
        let requested = [Request::Start, Request::Restart]
            .into_iter()
            .filter(|r| lifecycle::pending(vm, &dir, *r))
            .collect::<Vec<_>>();
        if !requested.is_empty() && strategy != RunStrategy::Halted {
            let _ = std::fs::remove_file(dir.exit());
            for r in requested {
                lifecycle::handled(vm, &dir, r);
            }
            ctx.recorder
                .publish(
                    vm,
                    EventType::Normal,
                    "StartRequested",
                    "Starting",
                    "started on request",
                )
                .await;
            return start(vm, spec, &dir, ctx, report).await;
        }
        if !should_start(strategy, exit.as_ref()) {
            report.stopped(strategy, exit.as_ref());
            report.write(vm, ctx).await?;
            return Ok(Action::await_change());
        }
        if let Some(exit) = &exit
            && vm.status.as_ref().and_then(|s| s.phase) == Some(VirtualMachinePhase::Running)
        {
            // It was running and stopped by itself: say so before bringing it back.
            ctx.recorder
                .publish(
                    vm,
                    EventType::Warning,
                    "GuestStopped",
                    "Restarting",
                    &format!(
                        "QEMU {}; restarting it (runStrategy {strategy:?})",
                        exit.describe()
                    ),
                )
                .await;
        }
        return start(vm, spec, &dir, ctx, report).await;
    };

    running(vm, spec, &dir, ctx, report, boot, status).await
}

/// A pass over a guest that runs (or is paused, or starting): a stop asked for, Halted, or a
/// change that needs a restart, stops it; otherwise pause or resume it as asked, probe it,
/// report.
async fn running(
    vm: &VirtualMachine,
    spec: &VirtualMachineSpec,
    dir: &VmDir,
    ctx: &Context,
    mut report: Report,
    boot: Boot,
    status: qmp::Status,
) -> Result<Action, VmError> {
    let guest = Guest {
        vm,
        spec,
        dir,
        ctx,
        key: vm.object_ref(),
    };
    let changed = changed_fields(&boot.fields, &restart_fields(spec));
    // A rollback that restores the disks restarts the guest even when the spec it restores
    // needs no restart.
    let restore = snapshots::restore_asked(vm, dir)
        .filter(|asked| snapshots::current(dir).is_some_and(|s| s.name == *asked));
    if let Some(action) = stop_when_due(&guest, &mut report, &changed, restore).await? {
        return Ok(action);
    }
    if changed.is_empty() && restore.is_none() {
        report.condition(
            "RestartRequired",
            "False",
            "UpToDate",
            "the guest runs the current spec",
        );
        if boot.applied < vm.generation() {
            // A change that needs no restart: the guest runs this generation now (what its
            // disks hold when a later change snapshots them).
            let mut boot = boot.clone();
            boot.applied = vm.generation();
            if let Err(e) = dir.write_boot(&boot) {
                tracing::warn!(vm = %guest.key, error = %e, "cannot write the boot record");
            }
        }
        if matches!(status.state.as_str(), "running" | "paused") {
            snapshots::prune_running(ctx, vm, dir).await;
        }
    } else {
        let what = match restore {
            Some(snapshot) if changed.is_empty() => {
                format!("the disks are to be restored to snapshot {snapshot}")
            }
            _ => format!("{} changed", changed.join(", ")),
        };
        report.condition(
            "RestartRequired",
            "True",
            "ManualRestart",
            &format!("{what}; runStrategy Manual: the change applies when the guest next starts"),
        );
    }
    let state = pause_as_asked(&guest, &status.state).await?;
    lifecycle::listen(ctx, &guest.key, dir);
    report.running(&boot, dir, &state);
    let ready = probe_readiness(&guest, &boot, &state, &mut report).await;
    report.write(vm, ctx).await?;
    Ok(Action::requeue(if ready {
        PROBE_READY
    } else {
        PROBE_WAITING
    }))
}

/// A guest a pass looks at.
struct Guest<'a> {
    vm: &'a VirtualMachine,
    spec: &'a VirtualMachineSpec,
    dir: &'a VmDir,
    ctx: &'a Context,
    key: ObjectRef,
}

/// Shuts the guest down when that is due — a stop or restart asked for, runStrategy Halted,
/// or a change (`changed` fields, a snapshot to `restore`) that needs a restart under any
/// strategy but Manual — and says when to look again.
async fn stop_when_due(
    guest: &Guest<'_>,
    report: &mut Report,
    changed: &[String],
    restore: Option<&str>,
) -> Result<Option<Action>, VmError> {
    let Guest {
        vm,
        spec,
        dir,
        ctx,
        key,
    } = guest;
    let vm: &VirtualMachine = vm;
    let strategy = spec.run_strategy.unwrap_or(RunStrategy::Always);
    for request in [Request::Stop, Request::Restart] {
        if !lifecycle::pending(vm, dir, request) {
            continue;
        }
        report.phase(VirtualMachinePhase::Stopping);
        report.write(vm, ctx).await?;
        lifecycle::shutdown(ctx, key, dir, spec).await?;
        lifecycle::handled(vm, dir, request);
        let message = match request {
            Request::Stop => {
                // Under Manual it stays stopped; other strategies start it again.
                lifecycle::stopped_on_request(dir);
                "the guest was shut down on request"
            }
            _ => "the guest was shut down on request, to start again",
        };
        ctx.recorder
            .publish(vm, EventType::Normal, "StopRequested", "Stopping", message)
            .await;
        return Ok(Some(Action::requeue(Duration::ZERO)));
    }
    if strategy == RunStrategy::Halted {
        report.phase(VirtualMachinePhase::Stopping);
        report.write(vm, ctx).await?;
        lifecycle::shutdown(ctx, key, dir, spec).await?;
        ctx.recorder
            .publish(
                vm,
                EventType::Normal,
                "Stopped",
                "Stopping",
                "runStrategy is Halted: the guest was shut down",
            )
            .await;
        return Ok(Some(Action::requeue(Duration::ZERO)));
    }
    if (!changed.is_empty() || restore.is_some()) && strategy != RunStrategy::Manual {
        let message = match restore {
            Some(snapshot) if changed.is_empty() => format!(
                "restarting the guest to restore its disks to snapshot {snapshot} (generation {})",
                vm.generation()
            ),
            _ => format!(
                "{} changed: restarting the guest to apply generation {}",
                changed.join(", "),
                vm.generation()
            ),
        };
        report.condition("RestartRequired", "True", "Restarting", &message);
        report.phase(VirtualMachinePhase::Stopping);
        report.write(vm, ctx).await?;
        ctx.recorder
            .publish(vm, EventType::Normal, "Restarting", "Restarting", &message)
            .await;
        lifecycle::shutdown(ctx, key, dir, spec).await?;
        return Ok(Some(Action::requeue(Duration::ZERO)));
    }
    Ok(None)
}

/// Pauses or resumes the guest's CPUs as the spec says; returns QEMU's run state after.
async fn pause_as_asked(guest: &Guest<'_>, state: &str) -> Result<String, VmError> {
    let want_paused = guest.spec.paused.unwrap_or(false);
    if want_paused == (state == "paused") || !matches!(state, "running" | "paused") {
        return Ok(state.to_string());
    }
    lifecycle::set_paused(guest.dir, want_paused)
        .await
        .map_err(|e| VmError::Start {
            reason: "QMPFailed",
            message: e.to_string(),
        })?;
    let (reason, message) = if want_paused {
        ("Paused", "the guest's CPUs are paused")
    } else {
        ("Resumed", "the guest's CPUs run again")
    };
    guest
        .ctx
        .recorder
        .publish(guest.vm, EventType::Normal, reason, "Pausing", message)
        .await;
    Ok(if want_paused { "paused" } else { "running" }.into())
}

/// Reports `Ready` from the readiness probe (a running guest without one is ready); returns
/// whether it is.
async fn probe_readiness(guest: &Guest<'_>, boot: &Boot, state: &str, report: &mut Report) -> bool {
    if state != "running" {
        report.condition(
            "Ready",
            "False",
            "GuestNotRunning",
            &format!("QEMU's run state is {state}"),
        );
        return false;
    }
    let outcome = match &guest.spec.readiness_probe {
        Some(probe) => {
            let qmp = guest.dir.qmp();
            readiness::check(probe, &boot.forwards, Some(&qmp), &console_of(guest.dir)).await
        }
        None => readiness::Outcome {
            ready: true,
            message: "the guest runs (no readiness probe)".into(),
        },
    };
    let (status, reason) = if outcome.ready {
        ("True", "ProbeSucceeded")
    } else {
        ("False", "ProbeFailed")
    };
    report.condition("Ready", status, reason, &outcome.message);
    outcome.ready
}

/// Reports a start that failed for `reason` (`Failed`, `Ready=False`, a Warning Event); the
/// error to retry it with.
async fn failed(
    vm: &VirtualMachine,
    ctx: &Context,
    mut report: Report,
    reason: &'static str,
    message: String,
) -> VmError {
    report.phase(VirtualMachinePhase::Failed);
    report.condition("Ready", "False", reason, &message);
    if let Err(e) = report.write(vm, ctx).await {
        return VmError::Api(e);
    }
    ctx.recorder
        .publish(vm, EventType::Warning, reason, "Starting", &message)
        .await;
    VmError::Start { reason, message }
}

/// Prepares the disks and seed, and starts QEMU.
async fn start(
    vm: &VirtualMachine,
    spec: &VirtualMachineSpec,
    dir: &VmDir,
    ctx: &Context,
    mut report: Report,
) -> Result<Action, VmError> {
    report.phase(VirtualMachinePhase::Starting);
    if snapshots::before_start(ctx, vm, spec, dir).await {
        // The new rollback point is in the status before the start goes on (an image
        // download may take long): a rollback meanwhile can restore it.
        report.write(vm, ctx).await?;
    }
    let prepared: Result<Prepared, (&'static str, String)> =
        lifecycle::prepare(ctx, vm, spec, dir).await;
    let prepared = match prepared {
        Ok(p) => p,
        Err((lifecycle::WAITING_FOR_ADDRESS, message)) => {
            // Not a failure: the network controller's write of the address brings it back.
            report.phase(VirtualMachinePhase::Scheduled);
            report.condition("Ready", "False", lifecycle::WAITING_FOR_ADDRESS, &message);
            report.write(vm, ctx).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        Err((reason, message)) => return Err(failed(vm, ctx, report, reason, message).await),
    };
    let boot = match lifecycle::launch(ctx, vm, spec, dir, prepared).await {
        Ok(boot) => boot,
        Err((reason, message)) => return Err(failed(vm, ctx, report, reason, message).await),
    };
    lifecycle::listen(ctx, &vm.object_ref(), dir);
    let accelerator = format!("{:?}", boot.accelerator).to_lowercase();
    ctx.recorder
        .publish(
            vm,
            EventType::Normal,
            "Started",
            "Starting",
            &format!(
                "QEMU started on node {} ({accelerator}), generation {}",
                ctx.host.node.name, boot.generation
            ),
        )
        .await;
    report.running(&boot, dir, "starting");
    report.phase(VirtualMachinePhase::Starting);
    report.condition(
        "Ready",
        "False",
        "Starting",
        "QEMU started; waiting for the guest to be ready",
    );
    report.condition(
        "RestartRequired",
        "False",
        "UpToDate",
        "the guest runs the current spec",
    );
    report.write(vm, ctx).await?;
    Ok(Action::requeue(PROBE_WAITING))
}

/// Whether a stopped guest is started, by run strategy and how it last ended on this host.
fn should_start(strategy: RunStrategy, exit: Option<&Exit>) -> bool {
    match strategy {
        RunStrategy::Always => true,
        RunStrategy::Halted => false,
        // A clean power-off is the guest's own decision; a failure is restarted.
        RunStrategy::RerunOnFailure => !exit.is_some_and(Exit::clean),
        // Started once; a guest that stopped by itself stays stopped (one its supervisor
        // fenced did not stop by itself: it runs again once the host is back).
        RunStrategy::Manual => exit.is_none_or(|e| e.fenced),
    }
}

/// Stops the guest gracefully and removes everything made for the VM on this host.
async fn cleanup(vm: &VirtualMachine, ctx: &Context) -> Result<Action, VmError> {
    let key = vm.object_ref();
    let dir = vm_dir(&ctx.data, &key);
    lifecycle::shutdown(ctx, &key, &dir, &vm.spec).await?;
    lifecycle::remove(ctx, &key, &dir).await?;
    tracing::info!(vm = %key, "deleted: the guest is stopped and its files removed");
    Ok(Action::await_change())
}

fn console_of(dir: &VmDir) -> Console {
    Console {
        path: dir.console(),
        keep: lifecycle::CONSOLE_KEEP,
    }
}

fn vm_api(ctx: &Context, vm: &VirtualMachine) -> Result<Api<VirtualMachine>, VmError> {
    let kind = keel_schemas::lookup("virtualmachines")
        .ok_or_else(|| VmError::Spec("VirtualMachine is not registered".into()))?;
    Ok(Api::namespaced(
        &ctx.host.node.client,
        kind,
        vm.namespace().unwrap_or("default"),
    ))
}

/// The status a pass writes, built on the VM's current status (the scheduler's fields stay).
struct Report {
    status: VirtualMachineStatus,
    now: String,
    /// Where the disks' rollback point is recorded (read when the status is written).
    dir: VmDir,
}

// === impl Report ===

impl Report {
    fn new(vm: &VirtualMachine, dir: &VmDir) -> Report {
        let mut status = vm.status.clone().unwrap_or_default();
        let now = keel_schemas::time::now_rfc3339();
        status.observed_generation = Some(vm.generation());
        if typed_condition_status(&status.conditions, "NodeLost") == Some("True") {
            set_typed_condition(
                &mut status.conditions,
                &Condition {
                    type_: "NodeLost",
                    status: "False",
                    reason: "NodeBack",
                    message: "the node renews its lease again",
                },
                &now,
            );
        }
        Report {
            status,
            now,
            dir: dir.clone(),
        }
    }

    fn phase(&mut self, phase: VirtualMachinePhase) {
        self.status.phase = Some(phase);
    }

    fn condition(&mut self, type_: &str, status: &str, reason: &str, message: &str) {
        set_typed_condition(
            &mut self.status.conditions,
            &Condition {
                type_,
                status,
                reason,
                message,
            },
            &self.now,
        );
    }

    /// A guest that runs (or is paused, or starting) from `boot`.
    fn running(&mut self, boot: &Boot, dir: &VmDir, state: &str) {
        self.phase(VirtualMachinePhase::Running);
        self.status.accelerator = Some(boot.accelerator);
        self.status.booted_generation = Some(boot.generation);
        self.status.qemu_pid = dir.qemu_pid();
        self.status.port_forwards = boot.forwards.clone();
        // A VM without NICs gets one user-mode NIC, reported here; NICs on subnets are the
        // network controller's to report (their addresses come from IPAM).
        let nics = boot.fields["nics"].as_array().cloned().unwrap_or_default();
        if nics.is_empty() {
            self.status.interfaces = vec![InterfaceStatus {
                subnet: None,
                ip: Some(lifecycle::USER_NET_GUEST_IP.to_string()),
                mac: Some(qemu::mac(&boot.uid, 0)),
            }];
        }
        let paused = state == "paused";
        self.condition(
            "Paused",
            if paused { "True" } else { "False" },
            if paused { "PausedByUser" } else { "NotPaused" },
            if paused {
                "the guest's CPUs are paused"
            } else {
                "the guest's CPUs run"
            },
        );
    }

    /// A guest that does not run.
    fn stopped(&mut self, strategy: RunStrategy, exit: Option<&Exit>) {
        use VirtualMachinePhase::{Failed, Stopped};
        let (phase, reason, message) = match (strategy, exit) {
            (RunStrategy::Halted, _) => (Stopped, "Halted", "runStrategy is Halted".to_string()),
            (_, Some(exit)) if exit.clean() => (
                Stopped,
                "GuestShutdown",
                format!("the guest powered off; runStrategy {strategy:?} leaves it stopped"),
            ),
            (_, Some(exit)) => (
                if strategy == RunStrategy::Manual {
                    Stopped
                } else {
                    Failed
                },
                "GuestFailed",
                format!(
                    "QEMU {} at {}; runStrategy {strategy:?} leaves it stopped",
                    exit.describe(),
                    exit.at
                ),
            ),
            (_, None) => (Stopped, "NotStarted", format!("runStrategy {strategy:?}")),
        };
        self.phase(phase);
        self.status.qemu_pid = None;
        self.status.port_forwards.clear();
        self.condition("Ready", "False", reason, &message);
        self.condition("Paused", "False", "NotRunning", "the guest does not run");
    }

    /// Writes the status when it changed.
    async fn write(&self, vm: &VirtualMachine, ctx: &Context) -> Result<(), ClientError> {
        let mut status = self.status.clone();
        status.snapshot = snapshots::current(&self.dir);
        if vm.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = vm.clone();
        updated.status = Some(status);
        let api = vm_api(ctx, vm).map_err(|e| ClientError::Config(e.to_string()))?;
        match api.update_status(&updated).await {
            // Changed meanwhile (or gone): the watch brings the new version.
            Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// Stops guests this host must not run: all of them while fenced, and, once the cache of
/// bindings is filled, any whose VM is not bound here (moved while this host was away, or
/// deleted), removing their files. When the host becomes healthy again, puts every bound VM
/// back on the queue (a failing one keeps its backoff otherwise).
async fn sweep(
    ctx: Arc<Context>,
    store: Store<VirtualMachine>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut health = ctx.health.clone();
    let mut previous = Health::Starting;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = health.changed() => {}
            _ = tokio::time::sleep(SWEEP) => {}
        }
        let runtime = &ctx.host.runtime;
        let state = *health.borrow();
        let recovered = state == Health::Healthy && previous != Health::Healthy;
        match state {
            Health::Fenced => {
                previous = Health::Fenced;
                for w in runtime.list() {
                    tracing::warn!(vm = %w.key, "fenced: stopping the guest");
                    if let Err(e) = runtime.stop(&w.key, lifecycle::KILL_PATIENCE).await {
                        tracing::error!(vm = %w.key, error = %e, "cannot stop the guest");
                    }
                }
            }
            Health::Healthy if store.is_ready() => {
                previous = Health::Healthy;
                for key in lifecycle::local_vms(&ctx) {
                    // A VM this build cannot read is still bound here: never swept.
                    let bound = store.uid_of(&key);
                    let local_uid = runtime
                        .get(&key)
                        .map(|w| w.uid)
                        .or_else(|| vm_dir(&ctx.data, &key).read_boot().map(|b| b.uid));
                    let bound_here = match (&bound, &local_uid) {
                        (Some(b), Some(l)) => b == l,
                        (Some(_), None) => true,
                        (None, _) => false,
                    };
                    if !bound_here {
                        tracing::warn!(vm = %key, "the VM is not bound to this node: removing its guest and files");
                        let dir = vm_dir(&ctx.data, &key);
                        if let Err(e) = lifecycle::remove(&ctx, &key, &dir).await {
                            tracing::error!(vm = %key, error = %e, "cannot remove the guest");
                        }
                    }
                }
                if recovered {
                    // Back from a fence (or just up): start what should run.
                    for vm in store.list() {
                        ctx.queue.add(vm.object_ref());
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, signal: Option<i32>) -> Exit {
        Exit {
            code,
            signal,
            fenced: false,
            at: String::new(),
        }
    }

    #[test]
    fn run_strategies_decide_what_a_stopped_guest_does() {
        let clean = exit(Some(0), None);
        let killed = exit(None, Some(9));
        use RunStrategy::*;
        assert!(
            should_start(Always, None)
                && should_start(Always, Some(&clean))
                && should_start(Always, Some(&killed))
        );
        assert!(!should_start(Halted, None));
        assert!(should_start(RerunOnFailure, None) && should_start(RerunOnFailure, Some(&killed)));
        assert!(!should_start(RerunOnFailure, Some(&clean)));
        assert!(should_start(Manual, None));
        assert!(!should_start(Manual, Some(&killed)) && !should_start(Manual, Some(&clean)));
        let fenced = Exit {
            fenced: true,
            ..clean
        };
        assert!(should_start(Manual, Some(&fenced)) && should_start(RerunOnFailure, Some(&fenced)));
    }
}
