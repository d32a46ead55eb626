//! Starting, observing and stopping one VM's guest on this host.

use std::time::{Duration, Instant};

use keel_client::Api;
use keel_runtime::{ObjectExt, ObjectRef};
use keel_schemas::kinds::compute::{
    ClusterImage, ImageRef, InterfaceStatus, PortForward, VirtualMachine, VirtualMachineSpec,
};
use keel_schemas::{datadir, wellknown};
use serde_json::Value;

use super::console::Console;
use super::images::{Image, ImageError, Source};
use super::qemu::{AttachedDisk, Boot, Machine, VmDir, VmFiles, probe_port, restart_fields};
use super::qmp::{Qmp, QmpError, Status};
use super::{Context, VmError, cloudinit};
use keel_workload::shim::{ConsoleLog, Exit};
use keel_workload::{Launch, alive};

/// How many rotated console files are kept besides the current one.
pub const CONSOLE_KEEP: u32 = 2;
/// Size at which the console log is rotated.
pub const CONSOLE_MAX_BYTES: u64 = 1 << 20;
/// How long a stopping supervisor gets between SIGTERM and SIGKILL.
pub const KILL_PATIENCE: Duration = Duration::from_secs(5);
/// The address QEMU's user-mode network gives the guest.
pub const USER_NET_GUEST_IP: &str = "10.0.2.15";
/// How long a new QEMU gets to open its QMP socket.
const QMP_WAIT: Duration = Duration::from_secs(10);
/// The reason a start waits for the network controller (not a failure).
pub const WAITING_FOR_ADDRESS: &str = "WaitingForAddress";
/// How long QEMU gets to exit after `quit`.
const QUIT_PATIENCE: Duration = Duration::from_secs(5);

/// What runs for a VM on this host.
#[derive(Debug)]
pub enum Observed {
    /// A supervised QEMU runs (or is paused, or starting).
    Running {
        /// What it was started with.
        boot: Boot,
        /// Its run state (`starting` until QMP answers).
        status: Status,
    },
    /// Nothing runs.
    Stopped,
}

/// What [`prepare`] made ready for a start.
#[derive(Debug)]
pub struct Prepared {
    /// The kernel and initrd of a direct kernel boot, from the image cache or catalogue.
    kernel: Option<std::path::PathBuf>,
    initrd: Option<std::path::PathBuf>,
    disks: Vec<AttachedDisk>,
    seed: Option<std::path::PathBuf>,
    forwards: Vec<PortForward>,
    /// Per NIC, its tap on the integration bridge (`None`: user networking).
    taps: Vec<Option<String>>,
    /// Per NIC, the MAC the network controller gave it.
    macs: Vec<Option<String>>,
}

/// What runs for `vm`: an adopted or started guest of this very object, or nothing. A guest
/// left by an earlier object of the same name is removed.
pub async fn observe(ctx: &Context, vm: &VirtualMachine, dir: &VmDir) -> Observed {
    let key = vm.object_ref();
    let Some(workload) = ctx.host.runtime.get(&key) else {
        return Observed::Stopped;
    };
    let boot = dir.read_boot();
    let Some(boot) = boot.filter(|b| b.uid == vm.uid() && workload.uid == vm.uid()) else {
        tracing::warn!(vm = %key, "a guest of an earlier object of this name runs: removing it");
        let _ = remove(ctx, &key, dir).await;
        return Observed::Stopped;
    };
    let status = match Qmp::connect(&dir.qmp()).await {
        Ok(mut qmp) => qmp.status().await.unwrap_or(Status {
            running: false,
            state: "unknown".into(),
        }),
        Err(_) => Status {
            running: false,
            state: "starting".into(),
        },
    };
    Observed::Running { boot, status }
}

/// How the guest last ended on this host, if it did by itself since the agent last started
/// or stopped it.
pub fn last_exit(dir: &VmDir) -> Option<Exit> {
    serde_json::from_slice(&std::fs::read(dir.exit()).ok()?).ok()
}

/// Makes the disks, the seed and the port forwards of a start. Errors carry a condition
/// reason and a message.
pub async fn prepare(
    ctx: &Context,
    vm: &VirtualMachine,
    spec: &VirtualMachineSpec,
    dir: &VmDir,
) -> Result<Prepared, (&'static str, String)> {
    dir.check_socket_path().map_err(|m| ("DataDirTooLong", m))?;
    std::fs::create_dir_all(&dir.root)
        .map_err(|e| ("DiskCreateFailed", format!("{}: {e}", dir.root.display())))?;
    let mut boot_files = [None, None];
    for (slot, (field, reference)) in boot_files
        .iter_mut()
        .zip([("kernel", &spec.kernel), ("initrd", &spec.initrd)])
    {
        if let Some(reference) = reference {
            let image = image(ctx, reference, None)
                .await
                .map_err(|e| (e.reason(), format!("spec.{field}: {e}")))?;
            *slot = Some(image.path);
        }
    }
    let [kernel, initrd] = boot_files;
    let mut disks = Vec::new();
    for disk in &spec.disks {
        let path = dir.disk(&disk.name);
        let size = disk.size.as_ref().and_then(|q| q.bytes()).map(|b| b as u64);
        let origin =
            serde_json::json!({"image": disk.image, "checksum": disk.checksum}).to_string();
        let recorded = std::fs::read_to_string(dir.disk_origin(&disk.name)).ok();
        let reimage = path.exists() && recorded.as_deref().is_some_and(|r| r != origin);
        if reimage {
            if disk.disposable != Some(true) {
                return Err((
                    "DiskImageChanged",
                    format!(
                        "disk {}: its image changed but the disk is not disposable: add a disk with a new name instead",
                        disk.name
                    ),
                ));
            }
            tracing::info!(vm = %vm.object_ref(), disk = %disk.name, "the image of a disposable disk changed: recreating it");
            if !super::snapshots::set_aside(dir, &disk.name) {
                let _ = std::fs::remove_file(&path);
            }
        }
        if path.exists() {
            if let Some(size) = size {
                super::images::grow_disk(&path, size)
                    .await
                    .map_err(|e| (e.reason(), format!("disk {}: {e}", disk.name)))?;
            }
        } else {
            let image = match &disk.image {
                Some(reference) => Some(
                    image(ctx, reference, disk.checksum.as_deref())
                        .await
                        .map_err(|e| (e.reason(), format!("disk {}: {e}", disk.name)))?,
                ),
                None => None,
            };
            super::images::create_disk(&path, image.as_ref(), size)
                .await
                .map_err(|e| (e.reason(), format!("disk {}: {e}", disk.name)))?;
            super::qemu::write_whole(&dir.disk_origin(&disk.name), origin.as_bytes())
                .map_err(|e| ("DiskCreateFailed", e.to_string()))?;
        }
        disks.push(AttachedDisk {
            name: disk.name.clone(),
            path,
            bus: disk
                .bus
                .unwrap_or(keel_schemas::kinds::compute::DiskBus::Virtio),
        });
    }
    remove_unlisted_disks(dir, spec);
    let seed = match &spec.cloud_init {
        Some(data) => {
            cloudinit::write_seed(&dir.seed(), data, vm.uid(), vm.name())
                .await
                .map_err(|e| (e.reason(), e.to_string()))?;
            Some(dir.seed())
        }
        None => {
            let _ = std::fs::remove_file(dir.seed());
            None
        }
    };
    // On a host with OVN, each NIC is a tap on its subnet's logical port, once the network
    // controller has given it an address; elsewhere QEMU's user network stands in.
    let ovn = ctx.host.ovn;
    let mut taps = Vec::new();
    for (i, nic) in spec.nics.iter().enumerate() {
        if !ovn {
            taps.push(None);
            continue;
        }
        if interface(vm, i).and_then(|x| x.ip.as_deref()).is_none() {
            return Err((
                WAITING_FOR_ADDRESS,
                format!("nic {i} (subnet {}) has no address yet", nic.subnet),
            ));
        }
        taps.push(Some(super::ovs::tap_name(vm.uid(), i)));
    }
    let mut forwards = Vec::new();
    let first_is_user = taps.first().is_none_or(Option::is_none);
    if let Some(port) = probe_port(spec).filter(|_| first_is_user) {
        let host_port = free_port().map_err(|e| ("PortForwardFailed", e.to_string()))?;
        forwards.push(PortForward {
            guest_port: port,
            host_ip: Some("127.0.0.1".into()),
            host_port,
        });
    }
    let macs = (0..spec.nics.len())
        .map(|i| interface(vm, i).and_then(|x| x.mac.clone()))
        .collect();
    Ok(Prepared {
        kernel,
        initrd,
        disks,
        seed,
        forwards,
        taps,
        macs,
    })
}

/// The image a VM's `reference` names (a URL, or a ClusterImage of the admins' catalogue),
/// ready on this host. `checksum` is the one the VM's disk gives, if any.
async fn image(
    ctx: &Context,
    reference: &str,
    checksum: Option<&str>,
) -> Result<Image, ImageError> {
    let invalid = |why: String| ImageError::BadReference {
        image: reference.to_string(),
        why,
    };
    let (source, format) = match ImageRef::parse(reference) {
        ImageRef::Url(url) => (
            Source::Url {
                url: url.to_string(),
                checksum: checksum.map(str::to_string),
                trusted: false,
            },
            None,
        ),
        // Admission refuses host paths; one stored before that rule never reaches the host.
        ImageRef::Catalogue(name) if !keel_schemas::names::is_dns_label(name) => {
            return Err(invalid(
                "not a ClusterImage name nor an http(s) URL (host paths are not allowed)".into(),
            ));
        }
        ImageRef::Catalogue(name) => {
            let Some(kind) = keel_schemas::lookup("clusterimages") else {
                return Err(invalid("this cluster has no ClusterImage kind".into()));
            };
            let entry: ClusterImage = Api::all(&ctx.host.node.client, kind)
                .get_opt(name)
                .await
                .map_err(|e| invalid(format!("reading its ClusterImage: {e}")))?
                .ok_or_else(|| ImageError::NotCatalogued(name.to_string()))?;
            let spec = entry.spec;
            let checksum = match (checksum, spec.checksum) {
                (Some(mine), Some(theirs)) if mine != theirs => {
                    return Err(invalid(format!(
                        "the disk's checksum {mine} is not its ClusterImage's {theirs}"
                    )));
                }
                (mine, theirs) => theirs.or(mine.map(str::to_string)),
            };
            let source = match (spec.path, spec.url) {
                (Some(path), None) => Source::Path {
                    path: path.into(),
                    checksum,
                },
                (None, Some(url)) => Source::Url {
                    url,
                    checksum,
                    trusted: true,
                },
                _ => return Err(invalid("its ClusterImage has no single path or url".into())),
            };
            (source, spec.format)
        }
    };
    ctx.images.get(&source, format.as_deref()).await
}

/// Starts QEMU for `vm` under its supervisor and waits for its QMP socket.
pub async fn launch(
    ctx: &Context,
    vm: &VirtualMachine,
    spec: &VirtualMachineSpec,
    dir: &VmDir,
    prepared: Prepared,
) -> Result<Boot, (&'static str, String)> {
    let key = vm.object_ref();
    kill_orphan(dir);
    for stale in [dir.qmp(), dir.events(), dir.exit(), dir.pid()] {
        let _ = std::fs::remove_file(stale);
    }
    let accelerator = ctx.host.accelerator;
    let memory = spec
        .memory
        .bytes()
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(128 << 20);
    let confined = ctx
        .confinement
        .confine(
            &ctx.data.vms(),
            dir,
            spec.cpu,
            memory,
            accelerator == keel_schemas::kinds::compute::Accelerator::Tcg,
        )
        .map_err(|e| ("ConfinementFailed", e))?;
    let mut command = Machine {
        key: &key,
        uid: vm.uid(),
        spec,
        dir,
        accelerator,
        kernel: prepared.kernel.as_deref(),
        initrd: prepared.initrd.as_deref(),
        disks: &prepared.disks,
        seed: prepared.seed.as_deref(),
        forwards: &prepared.forwards,
        taps: &prepared.taps,
        macs: &prepared.macs,
    }
    .command();
    command.extend(confined.args);
    let boot = Boot {
        uid: vm.uid().to_string(),
        generation: vm.generation(),
        applied: vm.generation(),
        fields: restart_fields(spec),
        accelerator,
        forwards: prepared.forwards,
        taps: prepared.taps.iter().flatten().cloned().collect(),
        started_at: keel_schemas::time::now_rfc3339(),
    };
    let failed = |e: String| ("QEMUFailed", e);
    dir.write_boot(&boot)
        .map_err(|e| failed(format!("{}: {e}", dir.boot().display())))?;
    let console = Console {
        path: dir.console(),
        keep: CONSOLE_KEEP,
    };
    console
        .mark_boot(&format!("generation {}", boot.generation))
        .map_err(|e| failed(format!("{}: {e}", dir.console().display())))?;
    let launch = Launch {
        command,
        console: Some(ConsoleLog {
            path: dir.console(),
            max_bytes: CONSOLE_MAX_BYTES,
            keep: CONSOLE_KEEP,
        }),
        exit_file: Some(dir.exit()),
        cgroups: confined.cgroups,
    };
    let runtime = &ctx.host.runtime;
    let workload = runtime
        .start(&key, vm.uid(), &launch)
        .await
        .map_err(|e| failed(e.to_string()))?;
    tracing::info!(vm = %key, pid = workload.pid, accelerator = ?accelerator, "started QEMU");
    let deadline = Instant::now() + QMP_WAIT;
    loop {
        if dir.qmp().exists() && dir.qemu_pid().is_some() {
            break;
        }
        // The supervisor's own process, not `alive`'s look at its command line: a process
        // just started may not show it yet.
        if !exists(workload.pid) || Instant::now() > deadline {
            let said = runtime.output_tail(&key, 2000);
            let exit = last_exit(dir)
                .map(|e| e.describe())
                .unwrap_or_else(|| "did not open its QMP socket".into());
            let _ = runtime.stop(&key, KILL_PATIENCE).await;
            let _ = std::fs::remove_file(dir.exit());
            return Err(failed(format!("QEMU {exit}: {}", last_lines(&said, 5))));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // QEMU made the taps: put them on their logical ports.
    let ovs = ctx.host.ovs_addr.clone();
    for (i, tap) in prepared_taps(&boot) {
        let port =
            keel_schemas::wellknown::nic_port(key.namespace.as_deref().unwrap_or(""), &key.name, i);
        if let Err(e) = super::ovs::plug(&ovs, &tap, &port, vm.uid()).await {
            let _ = runtime.stop(&key, KILL_PATIENCE).await;
            return Err((
                "NetworkPlugFailed",
                format!("cannot plug {tap} into {}: {e}", super::ovs::BRIDGE),
            ));
        }
        tracing::info!(vm = %key, tap, port, "plugged the NIC into the integration bridge");
    }
    Ok(boot)
}

/// The taps of a boot with the index of their NIC (a tap's name ends in its index).
fn prepared_taps(boot: &Boot) -> Vec<(usize, String)> {
    boot.taps
        .iter()
        .filter_map(|t| Some((t.get(10..)?.parse().ok()?, t.clone())))
        .collect()
}

/// Stops the guest: the ACPI power button, then `quit` after the grace period, then the
/// supervisor's process group. Forgets how it ended: the agent stopped it.
pub async fn shutdown(
    ctx: &Context,
    key: &ObjectRef,
    dir: &VmDir,
    spec: &VirtualMachineSpec,
) -> Result<(), VmError> {
    let runtime = &ctx.host.runtime;
    if let Some(workload) = runtime.get(key) {
        let grace = Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(60).into());
        let gone = |patience: Duration| async move {
            let deadline = Instant::now() + patience;
            while alive(workload.pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            !alive(workload.pid)
        };
        let pressed = match Qmp::connect(&dir.qmp()).await {
            Ok(mut qmp) => qmp.powerdown().await.is_ok(),
            Err(_) => false,
        };
        if pressed && gone(grace).await {
            tracing::info!(vm = %key, "the guest shut down after the power button");
        } else {
            tracing::warn!(vm = %key, ?grace, "the guest did not shut down in its grace period: quitting QEMU");
            if let Ok(mut qmp) = Qmp::connect(&dir.qmp()).await {
                let _ = qmp.quit().await;
            }
            gone(QUIT_PATIENCE).await;
        }
    }
    runtime.stop(key, KILL_PATIENCE).await?;
    kill_orphan(dir);
    unplug(ctx, dir).await;
    let _ = std::fs::remove_file(dir.exit());
    stop_listening(ctx, key);
    Ok(())
}

/// Takes the VM's taps off the integration bridge (its QEMU, which owned them, is gone).
async fn unplug(ctx: &Context, dir: &VmDir) {
    let Some(boot) = dir.read_boot().filter(|b| !b.taps.is_empty()) else {
        return;
    };
    if let Err(e) = super::ovs::unplug(&ctx.host.ovs_addr.clone(), &boot.uid).await {
        tracing::warn!(error = %e, "cannot unplug the VM's ports from the integration bridge");
    }
}

/// Pauses or resumes the guest's CPUs.
pub async fn set_paused(dir: &VmDir, paused: bool) -> Result<(), QmpError> {
    let mut qmp = Qmp::connect(&dir.qmp()).await?;
    if paused {
        qmp.stop().await
    } else {
        qmp.cont().await
    }
}

/// Makes sure a task listens to the guest's QMP events and puts the VM on the queue when
/// one arrives or QEMU exits.
pub fn listen(ctx: &Context, key: &ObjectRef, dir: &VmDir) {
    let Ok(mut listeners) = ctx.listeners.lock() else {
        return;
    };
    if listeners.get(key).is_some_and(|l| !l.is_finished()) {
        return;
    }
    let queue = ctx.queue.clone();
    let socket = dir.events();
    let key_ = key.clone();
    let task = tokio::spawn(async move {
        let deadline = Instant::now() + QMP_WAIT;
        let mut qmp = loop {
            match Qmp::connect(&socket).await {
                Ok(q) => break q,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(_) => {
                    queue.add(key_);
                    return;
                }
            }
        };
        loop {
            match qmp.next_event().await {
                Ok(event) => {
                    tracing::debug!(vm = %key_, event = %event.name, "QMP event");
                    if matches!(
                        event.name.as_str(),
                        "SHUTDOWN" | "STOP" | "RESUME" | "RESET" | "GUEST_PANICKED" | "POWERDOWN"
                    ) {
                        queue.add(key_.clone());
                    }
                }
                Err(_) => {
                    // QEMU exited: look at the VM now.
                    queue.add(key_);
                    return;
                }
            }
        }
    });
    listeners.insert(key.clone(), task);
}

fn stop_listening(ctx: &Context, key: &ObjectRef) {
    if let Ok(mut listeners) = ctx.listeners.lock()
        && let Some(task) = listeners.remove(key)
    {
        task.abort();
    }
}

/// Stops whatever runs for `key` and removes its files.
pub async fn remove(ctx: &Context, key: &ObjectRef, dir: &VmDir) -> Result<(), VmError> {
    stop_listening(ctx, key);
    ctx.host.runtime.stop(key, KILL_PATIENCE).await?;
    kill_orphan(dir);
    unplug(ctx, dir).await;
    ctx.confinement.release(dir);
    match std::fs::remove_dir_all(&dir.root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VmError::Start {
            reason: "CleanupFailed",
            message: format!("{}: {e}", dir.root.display()),
        }),
    }
}

/// The VMs this host has anything of: a supervised guest or a directory.
pub fn local_vms(ctx: &Context) -> Vec<ObjectRef> {
    let mut keys: Vec<ObjectRef> = ctx.host.runtime.list().into_iter().map(|w| w.key).collect();
    if let Ok(entries) = std::fs::read_dir(ctx.data.vms()) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some((ns, name)) = name.to_str().and_then(datadir::parse_object_dir) {
                keys.push(ObjectRef::new((!ns.is_empty()).then_some(ns), name));
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Kills a QEMU whose supervisor is gone (it would hold the disks' locks).
fn kill_orphan(dir: &VmDir) {
    let Some(pid) = dir.qemu_pid() else {
        return;
    };
    // Only the QEMU of this VM: its command line names this VM's QMP socket.
    let socket = dir.qmp().display().to_string();
    let is_qemu = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&socket))
        .unwrap_or(false);
    if is_qemu && pid > 1 {
        tracing::warn!(pid, "killing a QEMU left without its supervisor");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Deletes the disks the spec no longer has, or sets them aside while the rollback point
/// covers them.
fn remove_unlisted_disks(dir: &VmDir, spec: &VirtualMachineSpec) {
    let unlisted = dir
        .disk_names()
        .into_iter()
        .filter(|disk| !spec.disks.iter().any(|d| d.name == *disk));
    for disk in unlisted {
        if super::snapshots::set_aside(dir, &disk) {
            continue;
        }
        tracing::info!(disk, "removing a disk no longer in the spec");
        let _ = std::fs::remove_file(dir.disk(&disk));
        let _ = std::fs::remove_file(dir.disk_origin(&disk));
    }
}

/// The annotations `keelctl start|stop|restart` set (a timestamp each); a request is
/// pending while its value differs from the one last acted on (`<vm-dir>/requests.json`).
pub const REQUESTS: [(&str, Request); 3] = [
    (wellknown::START_REQUESTED_ANNOTATION, Request::Start),
    (wellknown::STOP_REQUESTED_ANNOTATION, Request::Stop),
    (wellknown::RESTART_REQUESTED_ANNOTATION, Request::Restart),
];

/// A user's request for a running state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Start a stopped guest (runStrategy Manual).
    Start,
    /// Stop a running guest (runStrategy Manual).
    Stop,
    /// Stop and start again.
    Restart,
}

/// Whether `request` is pending for `vm`.
pub fn pending(vm: &VirtualMachine, dir: &VmDir, request: Request) -> bool {
    REQUESTS
        .iter()
        .find(|(_, r)| *r == request)
        .is_some_and(|(annotation, _)| asked(vm, dir, annotation).is_some())
}

/// Records that `request` of `vm` has been acted on.
pub fn handled(vm: &VirtualMachine, dir: &VmDir, request: Request) {
    if let Some((annotation, _)) = REQUESTS.iter().find(|(_, r)| *r == request) {
        answered(vm, dir, annotation);
    }
}

/// The value of a request `annotation` of `vm` while it is not acted on yet.
pub fn asked<'a>(vm: &'a VirtualMachine, dir: &VmDir, annotation: &str) -> Option<&'a str> {
    let asked = vm.annotation(annotation)?;
    let handled: serde_json::Map<String, Value> = std::fs::read(dir.requests())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (handled.get(annotation).and_then(Value::as_str) != Some(asked)).then_some(asked)
}

/// Records that the request `annotation` of `vm` has been acted on.
pub fn answered(vm: &VirtualMachine, dir: &VmDir, annotation: &str) {
    let path = dir.requests();
    let mut handled: serde_json::Map<String, Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    handled.insert(
        annotation.to_string(),
        vm.annotation(annotation).map_or(Value::Null, Value::from),
    );
    let _ = std::fs::create_dir_all(&dir.root);
    if let Err(e) = std::fs::write(&path, Value::Object(handled).to_string()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot record a handled request");
    }
}

/// The `i`th interface in the VM's status.
fn interface(vm: &VirtualMachine, i: usize) -> Option<&InterfaceStatus> {
    vm.status.as_ref()?.interfaces.get(i)
}

/// Records that the guest was stopped on request, so that a Manual VM stays stopped.
pub fn stopped_on_request(dir: &VmDir) {
    let exit = Exit {
        code: Some(0),
        signal: None,
        fenced: false,
        at: keel_schemas::time::now_rfc3339(),
    };
    let _ = std::fs::write(dir.exit(), serde_json::to_vec(&exit).unwrap_or_default());
}

/// Whether `pid` is a live (not zombie) process.
fn exists(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
