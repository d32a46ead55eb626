//! One pass over one pod (the kubelet's `SyncPod`): its sandbox, then its init containers in
//! order, then its containers, each started, restarted after a back-off, or left as its
//! restart policy says; then its status.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use keel_client::Api;
use keel_runtime::{Action, Condition, EventType, ObjectExt, set_typed_condition};
use keel_schemas::kinds::core::{
    Container, ContainerRunning, ContainerState, ContainerStatus, ContainerTerminated,
    ContainerWaiting, Pod, PodIp, PodStatus,
};

use crate::cri::{Cri, CriError, PULL_TIMEOUT, v1};
use crate::{Context, PodError, labels, volumes};

/// The first wait before a failed container (or pull) is tried again; it doubles.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest wait (the kubelet's).
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How soon a container that waits for a ConfigMap, Secret or key is tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(5);
/// A container that ran this long without failing has its back-off reset.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// A container's (or an image's) back-off after failures.
#[derive(Debug, Clone)]
pub(crate) struct BackOff {
    /// Not before then.
    until: Instant,
    /// The wait after the next failure.
    next: Duration,
}

/// What the runtime has of one pod.
struct Observed {
    sandbox: Option<v1::PodSandbox>,
    status: Option<v1::PodSandboxStatus>,
    /// Every container of the current sandbox, newest attempt first per name.
    containers: HashMap<String, Vec<v1::ContainerStatus>>,
}

/// What a container wants next.
enum Step {
    /// Nothing: it runs, or it ended as it should.
    Nothing,
    /// Start (another) instance.
    Start,
    /// Not yet: in back-off until then.
    Wait(Duration),
}

// === impl BackOff ===

impl BackOff {
    fn first() -> BackOff {
        BackOff {
            until: Instant::now() + BACKOFF_BASE,
            next: (BACKOFF_BASE * 2).min(BACKOFF_MAX),
        }
    }

    fn after(&self) -> BackOff {
        BackOff {
            until: Instant::now() + self.next,
            next: (self.next * 2).min(BACKOFF_MAX),
        }
    }

    fn left(&self) -> Option<Duration> {
        self.until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

/// Lists every sandbox and container of the runtime.
pub(crate) async fn list_all(
    cri: &Cri,
) -> Result<(Vec<v1::PodSandbox>, Vec<v1::Container>), CriError> {
    let sandboxes = cri
        .runtime
        .clone()
        .list_pod_sandbox(v1::ListPodSandboxRequest::default())
        .await
        .map_err(CriError::call("ListPodSandbox"))?
        .into_inner()
        .items;
    let containers = cri
        .runtime
        .clone()
        .list_containers(v1::ListContainersRequest::default())
        .await
        .map_err(CriError::call("ListContainers"))?
        .into_inner()
        .containers;
    Ok((sandboxes, containers))
}

/// The sandboxes of the pod with `uid`, newest first.
async fn sandboxes(cri: &Cri, uid: &str) -> Result<Vec<v1::PodSandbox>, CriError> {
    let filter = v1::PodSandboxFilter {
        label_selector: [(labels::POD_UID.to_string(), uid.to_string())].into(),
        ..Default::default()
    };
    let mut items = cri
        .runtime
        .clone()
        .list_pod_sandbox(v1::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .map_err(CriError::call("ListPodSandbox"))?
        .into_inner()
        .items;
    items.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    Ok(items)
}

/// The containers of sandbox `id`, with their full status, by name, newest first.
async fn containers(
    cri: &Cri,
    sandbox: &str,
) -> Result<HashMap<String, Vec<v1::ContainerStatus>>, CriError> {
    let filter = v1::ContainerFilter {
        pod_sandbox_id: sandbox.to_string(),
        ..Default::default()
    };
    let list = cri
        .runtime
        .clone()
        .list_containers(v1::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .map_err(CriError::call("ListContainers"))?
        .into_inner()
        .containers;
    let mut by_name: HashMap<String, Vec<v1::ContainerStatus>> = HashMap::new();
    for c in list {
        let request = v1::ContainerStatusRequest {
            container_id: c.id.clone(),
            verbose: false,
        };
        let status = match cri.runtime.clone().container_status(request).await {
            Ok(s) => s.into_inner().status,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(CriError::call("ContainerStatus")(s)),
        };
        if let Some(status) = status {
            let name = c
                .labels
                .get(labels::CONTAINER_NAME)
                .cloned()
                .unwrap_or_default();
            by_name.entry(name).or_default().push(status);
        }
    }
    for list in by_name.values_mut() {
        list.sort_by_key(|c| std::cmp::Reverse(c.metadata.as_ref().map_or(0, |m| m.attempt)));
    }
    Ok(by_name)
}

/// Stops every container of the pod with `uid` (SIGTERM, then SIGKILL after `grace`) and
/// removes its sandboxes.
pub(crate) async fn kill(ctx: &Context, uid: &str, grace: Duration) -> Result<(), PodError> {
    let cri = &ctx.cri;
    for sandbox in sandboxes(cri, uid).await? {
        let running = containers(cri, &sandbox.id).await?;
        let stops = running
            .values()
            .flatten()
            .filter(|c| c.state == v1::ContainerState::ContainerRunning as i32)
            .map(|c| {
                let mut runtime = cri.runtime.clone();
                let request = v1::StopContainerRequest {
                    container_id: c.id.clone(),
                    timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
                };
                async move { runtime.stop_container(request).await }
            });
        for result in futures_join(stops).await {
            if let Err(s) = result
                && s.code() != tonic::Code::NotFound
            {
                return Err(CriError::call("StopContainer")(s).into());
            }
        }
        let id = sandbox.id.clone();
        cri.runtime
            .clone()
            .stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .map_err(CriError::call("StopPodSandbox"))?;
        cri.runtime
            .clone()
            .remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .map_err(CriError::call("RemovePodSandbox"))?;
    }
    crate::fence::remove_pod_cgroup(&ctx.host.cgroup_parent, uid);
    Ok(())
}

/// Runs futures at once and collects their outputs.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// The pod's log directory: `<pods>/logs/<namespace>_<name>_<uid>/`.
pub(crate) fn log_dir(ctx: &Context, pod: &Pod) -> std::path::PathBuf {
    crate::logs::pod_dir(
        &ctx.host.dir,
        pod.namespace().unwrap_or_default(),
        pod.name(),
        pod.uid(),
    )
}

/// Removes a deleted pod's logs.
pub(crate) fn remove_logs(ctx: &Context, pod: &Pod) {
    let dir = log_dir(ctx, pod);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the pod's logs");
    }
}

/// Brings the pod's sandbox and containers to what it asks, and reports.
pub(crate) async fn sync(pod: &Pod, api: &Api<Pod>, ctx: &Context) -> Result<Action, PodError> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        // It has ended: its sandbox has no more use (its containers stay for their logs).
        for sandbox in sandboxes(&ctx.cri, pod.uid()).await? {
            if sandbox.state == v1::PodSandboxState::SandboxReady as i32 {
                ctx.cri
                    .runtime
                    .clone()
                    .stop_pod_sandbox(v1::StopPodSandboxRequest {
                        pod_sandbox_id: sandbox.id,
                    })
                    .await
                    .map_err(CriError::call("StopPodSandbox"))?;
            }
        }
        return Ok(Action::await_change());
    }
    let host_network = pod.spec.host_network == Some(true);
    if !host_network && ctx.pod_cidr.borrow().is_none() {
        let mut report = Report::new(pod, ctx);
        report.waiting_all(
            "ContainerCreating",
            "waiting for the node's pod network (node IPAM has not given the node its pod range yet)",
        );
        report.write(api).await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut observed = observe(ctx, pod).await?;
    let ready = observed
        .sandbox
        .as_ref()
        .is_some_and(|s| s.state == v1::PodSandboxState::SandboxReady as i32);
    if !ready {
        let attempt = observed
            .sandbox
            .as_ref()
            .and_then(|s| s.metadata.as_ref())
            .map_or(0, |m| m.attempt + 1);
        if observed.sandbox.is_some() {
            // Its sandbox died (a reboot, a fence): start over with a new one, as the
            // kubelet does.
            kill(ctx, pod.uid(), Duration::from_secs(0)).await?;
            ctx.recorder
                .publish(
                    pod,
                    EventType::Normal,
                    "SandboxChanged",
                    "Syncing",
                    "Pod sandbox changed, it will be killed and re-created.",
                )
                .await;
        }
        let config = sandbox_config(ctx, pod, attempt);
        let dir = std::path::PathBuf::from(&config.log_directory);
        std::fs::create_dir_all(&dir).map_err(|source| PodError::Io { path: dir, source })?;
        let request = v1::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        if let Err(s) = ctx.cri.runtime.clone().run_pod_sandbox(request).await {
            let message = format!("Failed to create pod sandbox: {}", s.message());
            ctx.recorder
                .publish(
                    pod,
                    EventType::Warning,
                    "FailedCreatePodSandBox",
                    "Creating",
                    &message,
                )
                .await;
            let mut report = Report::new(pod, ctx);
            report.waiting_all("ContainerCreating", &message);
            report.write(api).await?;
            return Err(CriError::call("RunPodSandbox")(s).into());
        }
        observed = observe(ctx, pod).await?;
    }
    let Some(sandbox) = observed.sandbox.clone() else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    let config = sandbox_config(ctx, pod, sandbox.metadata.as_ref().map_or(0, |m| m.attempt));
    let policy = pod.spec.restart_policy.as_deref().unwrap_or("Always");
    let mut report = Report::new(pod, ctx);
    report.sandbox(observed.status.as_ref());
    let mut wake: Option<Duration> = None;
    let mut soonest = |d: Duration| {
        wake = Some(wake.map_or(d, |w: Duration| w.min(d)));
    };
    // Init containers, one after the other, each to success.
    let mut initialized = true;
    for c in &pod.spec.init_containers {
        let history = observed
            .containers
            .get(&c.name)
            .map_or(&[][..], Vec::as_slice);
        let latest = history.first();
        if latest.is_some_and(|s| exited(s) && s.exit_code == 0) {
            report.container(c, history, true, None, None);
            continue;
        }
        initialized = false;
        // An init container is restarted on failure unless the pod's policy is Never.
        let init_policy = if policy == "Never" {
            "Never"
        } else {
            "OnFailure"
        };
        let waiting = match step(ctx, pod, c, latest, init_policy) {
            Step::Nothing if latest.is_some_and(exited) => {
                report.container(c, history, true, None, None);
                report.failed_init(c);
                break;
            }
            Step::Nothing => None,
            Step::Wait(left) => {
                soonest(left);
                Some(crash_loop(c, left))
            }
            Step::Start => {
                let addresses = report.addresses();
                start(ctx, pod, c, &sandbox.id, &config, history, &addresses).await
            }
        };
        if let Some((_, left)) = &waiting {
            soonest(*left);
        }
        report.container(c, history, true, waiting.map(|(w, _)| w), None);
        break;
    }
    for c in &pod.spec.containers {
        let history = observed
            .containers
            .get(&c.name)
            .map_or(&[][..], Vec::as_slice);
        if !initialized {
            report.container(
                c,
                history,
                false,
                Some(ContainerWaiting {
                    reason: Some("PodInitializing".into()),
                    message: None,
                }),
                None,
            );
            continue;
        }
        let waiting = match step(ctx, pod, c, history.first(), policy) {
            Step::Nothing => None,
            Step::Wait(left) => Some(crash_loop(c, left)),
            Step::Start => {
                let addresses = report.addresses();
                start(ctx, pod, c, &sandbox.id, &config, history, &addresses).await
            }
        };
        if let Some((_, left)) = &waiting {
            soonest(*left);
        }
        let verdict = match history.first() {
            Some(latest) if waiting.is_none() && running(latest) => {
                Some(probe(ctx, pod, c, latest, report.pod_ip()).await?)
            }
            _ => None,
        };
        report.container(c, history, false, waiting.map(|(w, _)| w), verdict.as_ref());
    }
    // Probes of containers that no longer run stop.
    let running_ids: Vec<&str> = observed
        .containers
        .values()
        .flatten()
        .filter(|s| running(s))
        .map(|s| s.id.as_str())
        .collect();
    ctx.probes
        .retain(pod.uid(), &|id| running_ids.contains(&id));
    report.finish(initialized, policy);
    report.write(api).await?;
    Ok(match wake {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// The pod's newest sandbox, its status and its containers.
async fn observe(ctx: &Context, pod: &Pod) -> Result<Observed, PodError> {
    let sandbox = sandboxes(&ctx.cri, pod.uid()).await?.into_iter().next();
    let Some(sandbox) = sandbox else {
        return Ok(Observed {
            sandbox: None,
            status: None,
            containers: HashMap::new(),
        });
    };
    let status = ctx
        .cri
        .runtime
        .clone()
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.id.clone(),
            verbose: false,
        })
        .await
        .map_err(CriError::call("PodSandboxStatus"))?
        .into_inner()
        .status;
    let containers = containers(&ctx.cri, &sandbox.id).await?;
    Ok(Observed {
        sandbox: Some(sandbox),
        status,
        containers,
    })
}

fn running(c: &v1::ContainerStatus) -> bool {
    c.state == v1::ContainerState::ContainerRunning as i32
}

/// What the probes of running container `latest` (of `c`) say; one whose liveness or
/// startup probe failed is stopped (its restart policy then applies, as for any exit).
async fn probe(
    ctx: &Context,
    pod: &Pod,
    c: &Container,
    latest: &v1::ContainerStatus,
    pod_ip: Option<String>,
) -> Result<crate::probes::Verdict, PodError> {
    let target = crate::probes::Target {
        cri: &ctx.cri,
        pod_uid: pod.uid(),
        container_id: &latest.id,
        pod_ip: pod_ip.as_deref(),
        container: c,
    };
    let verdict = ctx.probes.observe(&target, &pod.object_ref(), &ctx.queue);
    if let Some(why) = &verdict.kill {
        ctx.recorder
            .publish(pod, EventType::Warning, "Unhealthy", "Probing", why)
            .await;
        ctx.recorder
            .publish(
                pod,
                EventType::Normal,
                "Killing",
                "Killing",
                &format!("Container {} failed its probe, will be restarted", c.name),
            )
            .await;
        let request = v1::StopContainerRequest {
            container_id: latest.id.clone(),
            timeout: i64::try_from(crate::grace(pod).as_secs()).unwrap_or(30),
        };
        ctx.cri
            .runtime
            .clone()
            .stop_container(request)
            .await
            .map_err(CriError::call("StopContainer"))?;
    }
    Ok(verdict)
}

fn exited(c: &v1::ContainerStatus) -> bool {
    c.state == v1::ContainerState::ContainerExited as i32
}

/// What container `c` needs next, its newest instance being `latest`.
fn step(
    ctx: &Context,
    pod: &Pod,
    c: &Container,
    latest: Option<&v1::ContainerStatus>,
    policy: &str,
) -> Step {
    let Some(latest) = latest else {
        return Step::Start;
    };
    if latest.state == v1::ContainerState::ContainerCreated as i32 {
        return Step::Start;
    }
    if !exited(latest) {
        return Step::Nothing;
    }
    let restart = match policy {
        "Never" => false,
        "OnFailure" => latest.exit_code != 0,
        _ => true,
    };
    if !restart {
        return Step::Nothing;
    }
    let key = (pod.uid().to_string(), c.name.clone());
    let mut restarts = ctx.restarts.lock().unwrap_or_else(|e| e.into_inner());
    let ran = Duration::from_nanos(
        u64::try_from(latest.finished_at.saturating_sub(latest.started_at)).unwrap_or(0),
    );
    if ran >= BACKOFF_RESET {
        restarts.remove(&key);
    }
    match restarts.get(&key).and_then(BackOff::left) {
        Some(left) => Step::Wait(left),
        None => Step::Start,
    }
}

/// The waiting state of a container in back-off.
fn crash_loop(c: &Container, left: Duration) -> (ContainerWaiting, Duration) {
    let waiting = ContainerWaiting {
        reason: Some("CrashLoopBackOff".into()),
        message: Some(format!(
            "back-off {}s restarting failed container={}",
            left.as_secs().max(1),
            c.name
        )),
    };
    (waiting, left)
}

/// Pulls (if needed), creates and starts a new instance of `c`. On failure, the waiting
/// state to report and when to try again.
async fn start(
    ctx: &Context,
    pod: &Pod,
    c: &Container,
    sandbox: &str,
    config: &v1::PodSandboxConfig,
    history: &[v1::ContainerStatus],
    addresses: &volumes::Addresses,
) -> Option<(ContainerWaiting, Duration)> {
    let latest = history.first();
    let prepared = match volumes::prepare(ctx, pod, c, addresses).await {
        Ok(p) => p,
        Err(why) => {
            // Never started without what it asks for: the container waits, saying why, and
            // is tried again soon (the object may be made meanwhile).
            ctx.recorder
                .publish(
                    pod,
                    EventType::Warning,
                    "Failed",
                    "Starting",
                    &format!("Error: {why}"),
                )
                .await;
            let waiting = ContainerWaiting {
                reason: Some("CreateContainerConfigError".into()),
                message: Some(why),
            };
            return Some((waiting, CONFIG_RETRY));
        }
    };
    // A created but never started instance is started as it is.
    let id = match latest.filter(|s| s.state == v1::ContainerState::ContainerCreated as i32) {
        Some(created) => created.id.clone(),
        None => {
            if let Err(waiting) = pull(ctx, pod, c, config).await {
                return Some(waiting);
            }
            let attempt = latest
                .and_then(|s| s.metadata.as_ref())
                .map_or(0, |m| m.attempt + 1);
            let request = v1::CreateContainerRequest {
                pod_sandbox_id: sandbox.to_string(),
                config: Some(container_config(pod, c, attempt, prepared)),
                sandbox_config: Some(config.clone()),
            };
            match ctx.cri.runtime.clone().create_container(request).await {
                Ok(r) => r.into_inner().container_id,
                Err(s) => return Some(failed(ctx, pod, c, "CreateContainerError", &s).await),
            }
        }
    };
    // Keep only the previous instance (for `kubectl logs --previous`).
    for old in history.iter().skip(1) {
        let request = v1::RemoveContainerRequest {
            container_id: old.id.clone(),
        };
        let _ = ctx.cri.runtime.clone().remove_container(request).await;
    }
    let request = v1::StartContainerRequest {
        container_id: id.clone(),
    };
    if let Err(s) = ctx.cri.runtime.clone().start_container(request).await {
        return Some(failed(ctx, pod, c, "RunContainerError", &s).await);
    }
    let verb = if latest.is_some() {
        "Restarted"
    } else {
        "Started"
    };
    ctx.recorder
        .publish(
            pod,
            EventType::Normal,
            "Started",
            "Starting",
            &format!("{verb} container {}", c.name),
        )
        .await;
    // The back-off grows with each restart; a long run resets it ([`step`]).
    if latest.is_some() {
        let key = (pod.uid().to_string(), c.name.clone());
        let mut restarts = ctx.restarts.lock().unwrap_or_else(|e| e.into_inner());
        let next = restarts
            .get(&key)
            .map_or_else(BackOff::first, BackOff::after);
        restarts.insert(key, next);
    }
    None
}

/// Records a failure to create or start a container, and backs off.
async fn failed(
    ctx: &Context,
    pod: &Pod,
    c: &Container,
    reason: &str,
    status: &tonic::Status,
) -> (ContainerWaiting, Duration) {
    let message = status.message().to_string();
    ctx.recorder
        .publish(
            pod,
            EventType::Warning,
            "Failed",
            "Starting",
            &format!("Error: {message}"),
        )
        .await;
    let key = (pod.uid().to_string(), c.name.clone());
    let mut restarts = ctx.restarts.lock().unwrap_or_else(|e| e.into_inner());
    let next = restarts
        .get(&key)
        .map_or_else(BackOff::first, BackOff::after);
    let left = next.left().unwrap_or(BACKOFF_BASE);
    restarts.insert(key, next);
    let waiting = ContainerWaiting {
        reason: Some(reason.to_string()),
        message: Some(message),
    };
    (waiting, left)
}

/// Makes sure `c`'s image is here, pulling it as its pull policy says with the pod's
/// `imagePullSecrets` ([`crate::registries`]); an image on the node that credentials the pod
/// lacks pulled counts as absent for it. A failed pull backs off per image and namespace:
/// `ErrImagePull` when it fails, `ImagePullBackOff` while waiting.
async fn pull(
    ctx: &Context,
    pod: &Pod,
    c: &Container,
    sandbox: &v1::PodSandboxConfig,
) -> Result<(), (ContainerWaiting, Duration)> {
    let image = c.image.clone();
    let spec = v1::ImageSpec {
        image: image.clone(),
        ..Default::default()
    };
    let policy = c.image_pull_policy.as_deref().unwrap_or_else(|| {
        // Kubernetes' default: Always for `:latest` or no tag, IfNotPresent otherwise.
        let last = image.rsplit('/').next().unwrap_or_default();
        if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
            "IfNotPresent"
        } else {
            "Always"
        }
    });
    // The pod's own credentials for the image's registry (a Secret it names but cannot
    // have is said, and the pull goes on without it, as the kubelet does).
    let registry = crate::registries::image_registry(&image);
    let (auths, missing) = crate::volumes::pull_credentials(ctx, pod, &registry).await;
    for why in missing {
        let message = format!(
            "Unable to retrieve some image pull secrets; attempting to pull the image may not succeed: {why}"
        );
        ctx.recorder
            .publish(
                pod,
                EventType::Warning,
                "FailedToRetrieveImagePullSecret",
                "Pulling",
                &message,
            )
            .await;
    }
    let present = ctx
        .cri
        .images
        .clone()
        .image_status(v1::ImageStatusRequest {
            image: Some(spec.clone()),
            verbose: false,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().image);
    // An image some credentials pulled is only for pods with those credentials: any other
    // pod pulls it again with its own (and fails without access).
    let usable = present.as_ref().is_some_and(|i| {
        ctx.pulled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .may_use(&i.id, &auths)
    });
    if usable && policy != "Always" {
        return Ok(());
    }
    if policy == "Never" {
        let message = if present.is_none() {
            format!("Container image {image:?} is not present with pull policy of Never")
        } else {
            format!(
                "Container image {image:?} is present, pulled with credentials this pod does not have, and pull policy Never forbids pulling it with its own"
            )
        };
        let waiting = ContainerWaiting {
            reason: Some("ErrImageNeverPull".into()),
            message: Some(message),
        };
        return Err((waiting, BACKOFF_BASE));
    }
    // Back-off per image and namespace: one tenant's failing pulls hold no one else's.
    let key = format!("{image} {}", pod.namespace().unwrap_or_default());
    let backoff = ctx
        .pulls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .and_then(BackOff::left);
    if let Some(left) = backoff {
        let waiting = ContainerWaiting {
            reason: Some("ImagePullBackOff".into()),
            message: Some(format!("Back-off pulling image {image:?}")),
        };
        return Err((waiting, left));
    }
    ctx.recorder
        .publish(
            pod,
            EventType::Normal,
            "Pulling",
            "Pulling",
            &format!("Pulling image {image:?}"),
        )
        .await;
    let started = Instant::now();
    // Each of the pod's credentials in turn (none: without), until one pulls it.
    let attempts: Vec<Option<v1::AuthConfig>> = if auths.is_empty() {
        vec![None]
    } else {
        auths.into_iter().map(Some).collect()
    };
    let mut result = None;
    for auth in attempts {
        let request = v1::PullImageRequest {
            image: Some(spec.clone()),
            auth: auth.clone(),
            sandbox_config: Some(sandbox.clone()),
        };
        let mut images = ctx.cri.images.clone();
        let pulled = tokio::time::timeout(PULL_TIMEOUT, images.pull_image(request)).await;
        let done = matches!(pulled, Ok(Ok(_)));
        if let Ok(Ok(response)) = &pulled {
            let id = ctx
                .cri
                .images
                .clone()
                .image_status(v1::ImageStatusRequest {
                    image: Some(v1::ImageSpec {
                        image: response.get_ref().image_ref.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().image)
                .map_or_else(|| response.get_ref().image_ref.clone(), |i| i.id);
            ctx.pulled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(&id, auth.as_ref());
        }
        result = Some(pulled);
        if done {
            break;
        }
    }
    let error = match result {
        Some(Ok(Ok(_))) => {
            ctx.pulls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            ctx.recorder
                .publish(
                    pod,
                    EventType::Normal,
                    "Pulled",
                    "Pulling",
                    &format!(
                        "Successfully pulled image {image:?} in {:.3}s",
                        started.elapsed().as_secs_f64()
                    ),
                )
                .await;
            return Ok(());
        }
        Some(Ok(Err(s))) => s.message().to_string(),
        Some(Err(_)) | None => format!("the pull took longer than {PULL_TIMEOUT:?}"),
    };
    let message = format!("Failed to pull image {image:?}: {error}");
    ctx.recorder
        .publish(pod, EventType::Warning, "Failed", "Pulling", &message)
        .await;
    let mut pulls = ctx.pulls.lock().unwrap_or_else(|e| e.into_inner());
    let next = pulls.get(&key).map_or_else(BackOff::first, BackOff::after);
    let left = next.left().unwrap_or(BACKOFF_BASE);
    pulls.insert(key, next);
    let waiting = ContainerWaiting {
        reason: Some("ErrImagePull".into()),
        message: Some(message),
    };
    Err((waiting, left))
}

/// The labels every sandbox and container of `pod` carries.
fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    [
        (labels::POD_NAME, pod.name()),
        (labels::POD_NAMESPACE, pod.namespace().unwrap_or_default()),
        (labels::POD_UID, pod.uid()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The sandbox of `pod`, attempt `attempt`.
fn sandbox_config(ctx: &Context, pod: &Pod, attempt: u32) -> v1::PodSandboxConfig {
    let host_network = pod.spec.host_network == Some(true);
    let network = if host_network {
        v1::NamespaceMode::Node
    } else {
        v1::NamespaceMode::Pod
    };
    let ports = pod
        .spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter_map(|p| {
            let host_port = p.host_port?;
            let protocol = match p.protocol.as_deref() {
                Some("UDP") => v1::Protocol::Udp,
                Some("SCTP") => v1::Protocol::Sctp,
                _ => v1::Protocol::Tcp,
            };
            Some(v1::PortMapping {
                protocol: protocol as i32,
                container_port: i32::from(p.container_port),
                host_port: i32::from(host_port),
                host_ip: String::new(),
            })
        })
        .collect();
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: pod.name().to_string(),
            uid: pod.uid().to_string(),
            namespace: pod.namespace().unwrap_or_default().to_string(),
            attempt,
        }),
        hostname: if host_network {
            String::new()
        } else {
            pod.spec
                .hostname
                .clone()
                .unwrap_or_else(|| pod.name().to_string())
        },
        log_directory: log_dir(ctx, pod).display().to_string(),
        dns_config: crate::dns::sandbox_dns(
            pod,
            &ctx.host.dns,
            &keel_host::resolv::Resolver::host(),
        ),
        port_mappings: ports,
        labels: pod_labels(pod),
        annotations: HashMap::new(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: crate::fence::pod_cgroup(&ctx.host.cgroup_parent, pod.uid()),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    network: network as i32,
                    pid: v1::NamespaceMode::Container as i32,
                    ipc: v1::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        windows: None,
    }
}

/// Instance `attempt` of container `c`.
fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    prepared: volumes::Prepared,
) -> v1::ContainerConfig {
    let mut labels = pod_labels(pod);
    labels.insert(labels::CONTAINER_NAME.to_string(), c.name.clone());
    let envs = prepared.envs;
    // `$(NAME)` in the command and arguments: the container's variables.
    let expand = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|s| {
                volumes::expand(s, |name| {
                    envs.iter()
                        .rev()
                        .find(|kv| kv.key == name)
                        .map(|kv| kv.value.as_str())
                })
            })
            .collect()
    };
    let (command, args) = (expand(&c.command), expand(&c.args));
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(v1::ImageSpec {
            image: c.image.clone(),
            ..Default::default()
        }),
        command,
        args,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs,
        mounts: prepared.mounts,
        labels,
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin == Some(true),
        stdin_once: c.stdin_once == Some(true),
        tty: c.tty == Some(true),
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(resources(c)),
            security_context: Some(v1::LinuxContainerSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    network: if pod.spec.host_network == Some(true) {
                        v1::NamespaceMode::Node as i32
                    } else {
                        v1::NamespaceMode::Pod as i32
                    },
                    pid: v1::NamespaceMode::Container as i32,
                    ipc: v1::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// A container's cgroup limits: cpu shares from its request, a CFS quota from its cpu
/// limit, and its memory limit, as the kubelet sets them.
fn resources(c: &Container) -> v1::LinuxContainerResources {
    let quantity = |map: &BTreeMap<String, serde_json::Value>, name: &str| {
        map.get(name).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let mut out = v1::LinuxContainerResources {
        cpu_shares: 2,
        ..Default::default()
    };
    let Some(r) = &c.resources else {
        return out;
    };
    let cpu_request = quantity(&r.requests, "cpu").or_else(|| quantity(&r.limits, "cpu"));
    if let Some(milli) = cpu_request.as_deref().and_then(millicores) {
        out.cpu_shares = (milli * 1024 / 1000).max(2);
    }
    if let Some(milli) = quantity(&r.limits, "cpu").as_deref().and_then(millicores) {
        out.cpu_period = 100_000;
        out.cpu_quota = (milli * 100).max(1000);
    }
    if let Some(bytes) = quantity(&r.limits, "memory")
        .as_deref()
        .and_then(keel_schemas::parse_quantity)
    {
        out.memory_limit_in_bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    }
    out
}

/// Millicores of a cpu quantity (`250m`, `1`, `0.5`).
pub(crate) fn millicores(q: &str) -> Option<i64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    let v: f64 = q.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * 1000.0).round() as i64)
}

/// The status a pass writes, built from what the runtime has.
struct Report<'a> {
    pod: &'a Pod,
    status: PodStatus,
    now: String,
    failed_init: bool,
}

// === impl Report ===

impl<'a> Report<'a> {
    fn new(pod: &'a Pod, ctx: &Context) -> Report<'a> {
        let old = pod.status.clone().unwrap_or_default();
        let now = keel_schemas::time::now_rfc3339();
        let status = PodStatus {
            phase: Some("Pending".into()),
            conditions: old.conditions,
            host_ip: ctx.host.host_ip.map(|ip| ip.to_string()),
            pod_ip: None,
            start_time: old.start_time.or_else(|| Some(now.clone())),
            pod_ips: Vec::new(),
            reason: None,
            message: None,
            init_container_statuses: Vec::new(),
            container_statuses: Vec::new(),
        };
        Report {
            pod,
            status,
            now,
            failed_init: false,
        }
    }

    /// Every container waiting for the same reason (the sandbox is not there yet).
    fn waiting_all(&mut self, reason: &str, message: &str) {
        let waiting = |c: &Container, init: bool| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            state: Some(ContainerState {
                waiting: Some(ContainerWaiting {
                    reason: Some(if init { "PodInitializing" } else { reason }.to_string()),
                    message: (!init).then(|| message.to_string()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = self.pod;
        self.status.init_container_statuses = pod
            .spec
            .init_containers
            .iter()
            .map(|c| waiting(c, false))
            .collect();
        self.status.container_statuses = pod
            .spec
            .containers
            .iter()
            .map(|c| waiting(c, !pod.spec.init_containers.is_empty()))
            .collect();
        self.finish(false, "Always");
    }

    /// The pod's and the node's addresses, as far as known.
    fn addresses(&self) -> volumes::Addresses {
        volumes::Addresses {
            pod_ip: self.status.pod_ip.clone(),
            host_ip: self.status.host_ip.clone(),
        }
    }

    /// The pod's address, once the sandbox has one.
    fn pod_ip(&self) -> Option<String> {
        self.status.pod_ip.clone()
    }

    /// The sandbox's addresses.
    fn sandbox(&mut self, status: Option<&v1::PodSandboxStatus>) {
        let network = status.and_then(|s| s.network.as_ref());
        if self.pod.spec.host_network == Some(true) {
            self.status.pod_ip = self.status.host_ip.clone();
        } else if let Some(n) = network.filter(|n| !n.ip.is_empty()) {
            self.status.pod_ip = Some(n.ip.clone());
        }
        self.status.pod_ips = self
            .status
            .pod_ip
            .iter()
            .cloned()
            .chain(
                network
                    .into_iter()
                    .flat_map(|n| n.additional_ips.iter().map(|i| i.ip.clone())),
            )
            .map(|ip| PodIp { ip })
            .collect();
    }

    fn failed_init(&mut self, _c: &Container) {
        self.failed_init = true;
    }

    /// The status of container `c` from its instances (newest first).
    fn container(
        &mut self,
        c: &Container,
        history: &[v1::ContainerStatus],
        init: bool,
        waiting: Option<ContainerWaiting>,
        verdict: Option<&crate::probes::Verdict>,
    ) {
        let latest = history.first();
        let restarts = latest
            .and_then(|s| s.metadata.as_ref())
            .map_or(0, |m| i64::from(m.attempt));
        let mut status = ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            restart_count: restarts,
            ..Default::default()
        };
        if let Some(latest) = latest {
            status.image_id = latest.image_ref.clone();
            status.container_id = Some(format!("containerd://{}", latest.id));
            let state = state_of(latest);
            let running = state.running.is_some();
            status.ready = !init && running && verdict.is_none_or(|v| v.ready);
            status.started = (!init).then_some(running && verdict.is_none_or(|v| v.started));
            status.state = Some(state);
            status.last_state = history.get(1).map(state_of);
        }
        if let Some(waiting) = waiting {
            // Waiting to start (again): the instance that ended is the last state.
            if let Some(state) = status.state.take()
                && state.terminated.is_some()
            {
                status.last_state = Some(state);
            }
            status.ready = false;
            status.state = Some(ContainerState {
                waiting: Some(waiting),
                ..Default::default()
            });
        }
        if status.state.is_none() {
            status.state = Some(ContainerState {
                waiting: Some(ContainerWaiting {
                    reason: Some("ContainerCreating".into()),
                    message: None,
                }),
                ..Default::default()
            });
        }
        if init {
            self.status.init_container_statuses.push(status);
        } else {
            self.status.container_statuses.push(status);
        }
    }

    /// The phase and conditions, from the container states.
    fn finish(&mut self, initialized: bool, policy: &str) {
        let containers = &self.status.container_statuses;
        let running = containers
            .iter()
            .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            .count();
        let terminated: Vec<&ContainerTerminated> = containers
            .iter()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
            .collect();
        let all_ended = !containers.is_empty() && terminated.len() == containers.len();
        let phase = if self.failed_init {
            "Failed"
        } else if all_ended && policy != "Always" {
            let failed = terminated.iter().any(|t| t.exit_code != 0);
            match (policy, failed) {
                (_, false) => "Succeeded",
                ("Never", true) => "Failed",
                _ => "Running",
            }
        } else if running > 0 || (initialized && all_ended) {
            "Running"
        } else {
            "Pending"
        };
        self.status.phase = Some(phase.to_string());
        let ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
        let now = self.now.clone();
        let mut set = |type_: &str, ok: bool, reason: &str, message: &str| {
            set_typed_condition(
                &mut self.status.conditions,
                &Condition {
                    type_,
                    status: if ok { "True" } else { "False" },
                    reason: if ok { "" } else { reason },
                    message: if ok { "" } else { message },
                },
                &now,
            );
        };
        set("PodScheduled", true, "", "");
        set(
            "Initialized",
            initialized,
            "ContainersNotInitialized",
            "containers with incomplete status: init containers",
        );
        let not_ready: Vec<&str> = containers
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
        let message = format!("containers with unready status: [{}]", not_ready.join(" "));
        set("ContainersReady", ready, "ContainersNotReady", &message);
        set("Ready", ready, "ContainersNotReady", &message);
    }

    /// Writes the status if it changed.
    async fn write(mut self, api: &Api<Pod>) -> Result<(), PodError> {
        if self.status.container_statuses.is_empty() {
            self.finish(false, "Always");
        }
        let old = self.pod.status.clone().unwrap_or_default();
        if old == self.status {
            return Ok(());
        }
        let mut pod = self.pod.clone();
        pod.status = Some(self.status);
        match api.update_status(&pod).await {
            Ok(_) => Ok(()),
            // A newer pod is on its way: the next pass reports again.
            Err(e) if e.code() == Some(409) || e.code() == Some(404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A CRI container status in Kubernetes' shape.
fn state_of(c: &v1::ContainerStatus) -> ContainerState {
    let time = |nanos: i64| (nanos > 0).then(|| rfc3339(nanos));
    match v1::ContainerState::try_from(c.state) {
        Ok(v1::ContainerState::ContainerRunning) => ContainerState {
            running: Some(ContainerRunning {
                started_at: time(c.started_at),
            }),
            ..Default::default()
        },
        Ok(v1::ContainerState::ContainerExited) => ContainerState {
            terminated: Some(ContainerTerminated {
                exit_code: c.exit_code,
                signal: None,
                reason: Some(if c.reason.is_empty() {
                    if c.exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .to_string()
                } else {
                    c.reason.clone()
                }),
                message: (!c.message.is_empty()).then(|| c.message.clone()),
                started_at: time(c.started_at),
                finished_at: time(c.finished_at),
                container_id: Some(format!("containerd://{}", c.id)),
            }),
            ..Default::default()
        },
        _ => ContainerState {
            waiting: Some(ContainerWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..Default::default()
        },
    }
}

/// Nanoseconds since the epoch as RFC 3339, to the second (as Kubernetes writes them).
fn rfc3339(nanos: i64) -> String {
    keel_schemas::time::rfc3339(u64::try_from(nanos / 1_000_000_000).unwrap_or(0))
}
