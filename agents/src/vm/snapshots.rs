//! The rollback point of a VM's disks: an internal qcow2 snapshot of every disk, taken with
//! the guest stopped before the agent boots a spec that changed what the guest runs (its
//! kernel, command line, disks, image, CPUs ...), so that a rollout that goes wrong can
//! return the disks to what they held before.
//!
//! A VM holds at most one rollback point, and it stands for the last good state:
//! - it is taken only when there is none, so a change that replaces a change still rolling
//!   out keeps the point taken before the first;
//! - the rollout controller restores it by setting `keel.dev/restore-snapshot` to its name in
//!   the same write that restores the spec; the agent reverts the disks before it boots that
//!   spec, then deletes it;
//! - it is deleted once a newer generation is healthy (`keel.dev/last-good-generation`).
//!
//! An internal snapshot costs only the clusters the guest overwrites after it, and with one
//! point per VM the space is bounded by the disks' size. A disk the spec drops (or a
//! disposable disk it recreates from a new image) is set aside as `retired-<name>.qcow2`
//! while the point covers it, and comes back with it. The point is recorded in
//! `<vm-dir>/snapshot.json` and reported as `status.snapshot`.

use keel_controllers::rollout::{LAST_GOOD_ANNOTATION, RESTORE_SNAPSHOT_ANNOTATION};
use keel_controllers::runtime::{EventType, ObjectExt};
use keel_schemas::kinds::compute::{DiskSnapshot, VirtualMachineSpec};
use serde_json::{Value, json};

use super::images::qemu_img;
use super::qemu::{VmDir, changed_fields, restart_fields};
use super::qmp::Qmp;
use super::{Context, lifecycle};

/// The rollback point recorded in `dir`, if any.
pub fn current(dir: &VmDir) -> Option<DiskSnapshot> {
    serde_json::from_slice(&std::fs::read(dir.snapshot_record()).ok()?).ok()
}

/// The name of the snapshot of the disks as generation `generation` left them.
pub fn name(generation: i64) -> String {
    format!("keel-g{generation}")
}

/// The snapshot a rollback asks to restore, while the agent has not restored it yet.
pub fn restore_asked<'a>(vm: &'a Value, dir: &VmDir) -> Option<&'a str> {
    lifecycle::asked(vm, dir, RESTORE_SNAPSHOT_ANNOTATION)
}

/// Whether a healthy generation newer than the rollback point makes it useless.
pub fn outlived(vm: &Value, snapshot: &DiskSnapshot) -> bool {
    vm["metadata"]["annotations"][LAST_GOOD_ANNOTATION]
        .as_str()
        .and_then(|g| g.parse::<i64>().ok())
        .is_some_and(|good| good > snapshot.generation)
}

/// Before a start: restores the rollback point a rollback asks for; otherwise deletes an
/// outlived one, and takes one when the guest is about to run a changed spec and there is
/// none. The guest is stopped. Failures are Warning Events: the start goes on (a missing
/// rollback point costs the data of a rollback, not the guest).
pub async fn before_start(ctx: &Context, vm: &Value, spec: &VirtualMachineSpec, dir: &VmDir) {
    let key = vm.object_ref();
    let record = current(dir);
    if let Some(asked) = restore_asked(vm, dir).map(String::from) {
        let (kind, reason, message) = match record.filter(|s| s.name == asked) {
            Some(snapshot) => match restore(dir, &snapshot).await {
                Ok(()) => (
                    EventType::Normal,
                    "SnapshotRestored",
                    format!(
                        "restored disks {} to snapshot {asked}, taken at {} as generation {} left them",
                        snapshot.disks.join(", "),
                        snapshot.taken_at,
                        snapshot.generation
                    ),
                ),
                Err(e) => (
                    EventType::Warning,
                    "SnapshotRestoreFailed",
                    format!("cannot restore snapshot {asked}: {e}"),
                ),
            },
            None => (
                EventType::Warning,
                "SnapshotNotFound",
                format!("a rollback asked for snapshot {asked}, which this node does not hold"),
            ),
        };
        // Answered whatever the outcome (a restore that fails is not tried in a loop); an
        // agent stopped halfway tries again (reverting to a snapshot can be repeated).
        lifecycle::answered(vm, dir, RESTORE_SNAPSHOT_ANNOTATION);
        tracing::info!(vm = %key, reason, message, "rollback point");
        ctx.recorder
            .publish(vm, kind, reason, "Restore", &message)
            .await;
        return;
    }
    let mut record = record;
    if let Some(snapshot) = record.as_ref().filter(|s| outlived(vm, s)) {
        discard_and_tell(ctx, vm, dir, snapshot, false).await;
        record = None;
    }
    let Some(previous) = dir.read_boot().filter(|b| b.uid == vm.uid()) else {
        return;
    };
    let changed = changed_fields(&previous.fields, &restart_fields(spec));
    if changed.is_empty() || record.is_some() {
        // A plain restart, or the point of the last good state is kept.
        return;
    }
    let disks: Vec<String> = previous.fields["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str())
        .filter(|d| dir.disk(d).exists())
        .map(String::from)
        .collect();
    if disks.is_empty() {
        return;
    }
    let generation = previous.generation.max(previous.applied);
    let (kind, reason, message) = match take(dir, generation, &disks).await {
        Ok(snapshot) => (
            EventType::Normal,
            "SnapshotTaken",
            format!(
                "took snapshot {} of disks {} before applying generation {} ({} changed)",
                snapshot.name,
                disks.join(", "),
                vm.generation(),
                changed.join(", ")
            ),
        ),
        Err(e) => (
            EventType::Warning,
            "SnapshotFailed",
            format!(
                "cannot snapshot the disks before applying generation {}: {e}; a rollback would keep the data as it is",
                vm.generation()
            ),
        ),
    };
    tracing::info!(vm = %key, reason, message, "rollback point");
    ctx.recorder
        .publish(vm, kind, reason, "Snapshot", &message)
        .await;
}

/// While the guest runs: deletes an outlived rollback point through QMP.
pub async fn prune_running(ctx: &Context, vm: &Value, dir: &VmDir) {
    if let Some(snapshot) = current(dir).filter(|s| outlived(vm, s)) {
        discard_and_tell(ctx, vm, dir, &snapshot, true).await;
    }
}

async fn discard_and_tell(
    ctx: &Context,
    vm: &Value,
    dir: &VmDir,
    snapshot: &DiskSnapshot,
    running: bool,
) {
    let good = &vm["metadata"]["annotations"][LAST_GOOD_ANNOTATION];
    match discard(dir, snapshot, running).await {
        Ok(()) => {
            let message = format!(
                "deleted snapshot {}: generation {} is healthy",
                snapshot.name,
                good.as_str().unwrap_or("?")
            );
            ctx.recorder
                .publish(
                    vm,
                    EventType::Normal,
                    "SnapshotDeleted",
                    "Snapshot",
                    &message,
                )
                .await;
        }
        Err(e) => {
            tracing::warn!(vm = %vm.object_ref(), snapshot = snapshot.name, error = e, "cannot delete the rollback point");
        }
    }
}

/// Takes snapshot [`name`]`(generation)` of `disks` (the guest stopped) and records it. A
/// failure leaves no snapshot behind.
pub async fn take(dir: &VmDir, generation: i64, disks: &[String]) -> Result<DiskSnapshot, String> {
    let snapshot = DiskSnapshot {
        name: name(generation),
        generation,
        disks: disks.to_vec(),
        taken_at: keel_schemas::time::now_rfc3339(),
    };
    let mut done: Vec<&String> = Vec::new();
    for disk in disks {
        let path = dir.disk(disk).display().to_string();
        // Left by a take that was interrupted.
        if has(&path, &snapshot.name).await {
            let _ = img(&["snapshot", "-d", &snapshot.name, &path]).await;
        }
        if let Err(e) = img(&["snapshot", "-c", &snapshot.name, &path]).await {
            for d in done {
                let _ = img(&[
                    "snapshot",
                    "-d",
                    &snapshot.name,
                    &dir.disk(d).display().to_string(),
                ])
                .await;
            }
            return Err(format!("disk {disk}: {e}"));
        }
        done.push(disk);
    }
    write_record(dir, Some(&snapshot)).map_err(|e| e.to_string())?;
    Ok(snapshot)
}

/// Reverts the disks to `snapshot` (the guest stopped): the disks it covers come back (from
/// where they were set aside, if they were), disks made since go, then it is deleted.
pub async fn restore(dir: &VmDir, snapshot: &DiskSnapshot) -> Result<(), String> {
    for disk in &snapshot.disks {
        let path = dir.disk(disk);
        let retired = dir.retired_disk(disk);
        if retired.exists() {
            std::fs::rename(&retired, &path).map_err(|e| format!("{}: {e}", retired.display()))?;
            let _ = std::fs::rename(dir.retired_origin(disk), dir.disk_origin(disk));
        }
        let path = path.display().to_string();
        img(&["snapshot", "-a", &snapshot.name, &path])
            .await
            .map_err(|e| format!("disk {disk}: {e}"))?;
    }
    for disk in disks_in(dir) {
        if !snapshot.disks.contains(&disk) {
            let _ = std::fs::remove_file(dir.disk(&disk));
            let _ = std::fs::remove_file(dir.disk_origin(&disk));
        }
    }
    discard(dir, snapshot, false).await
}

/// Deletes `snapshot` from the disks (through QMP when the guest runs), the disks set aside
/// for it, and its record.
pub async fn discard(dir: &VmDir, snapshot: &DiskSnapshot, running: bool) -> Result<(), String> {
    let mut qmp = if running {
        Some(Qmp::connect(&dir.qmp()).await.map_err(|e| e.to_string())?)
    } else {
        None
    };
    for disk in &snapshot.disks {
        let path = dir.disk(disk).display().to_string();
        // A disk recreated, or added, since does not have it.
        if !dir.disk(disk).exists() || !has(&path, &snapshot.name).await {
            continue;
        }
        match qmp.as_mut() {
            Some(qmp) => {
                let arguments = json!({"device": format!("drive-{disk}"), "name": snapshot.name});
                qmp.execute("blockdev-snapshot-delete-internal-sync", Some(arguments))
                    .await
                    .map_err(|e| format!("disk {disk}: {e}"))?;
            }
            None => {
                img(&["snapshot", "-d", &snapshot.name, &path])
                    .await
                    .map_err(|e| format!("disk {disk}: {e}"))?;
            }
        }
    }
    for disk in &snapshot.disks {
        let _ = std::fs::remove_file(dir.retired_disk(disk));
        let _ = std::fs::remove_file(dir.retired_origin(disk));
    }
    write_record(dir, None).map_err(|e| e.to_string())
}

/// Sets the disk `disk` aside instead of deleting it, when the rollback point covers it and
/// none is set aside yet (that one holds the point). Whether it did.
pub fn set_aside(dir: &VmDir, disk: &str) -> bool {
    let covered = current(dir).is_some_and(|s| s.disks.iter().any(|d| d == disk));
    if !covered || dir.retired_disk(disk).exists() || !dir.disk(disk).exists() {
        return false;
    }
    if std::fs::rename(dir.disk(disk), dir.retired_disk(disk)).is_err() {
        return false;
    }
    let _ = std::fs::rename(dir.disk_origin(disk), dir.retired_origin(disk));
    tracing::info!(disk, "set a disk aside for the rollback point");
    true
}

/// The names of the disks in `dir`.
fn disks_in(dir: &VmDir) -> Vec<String> {
    std::fs::read_dir(&dir.root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            Some(
                name.strip_prefix("disk-")?
                    .strip_suffix(".qcow2")?
                    .to_string(),
            )
        })
        .collect()
}

/// Whether the qcow2 file at `path` holds a snapshot `name` (read while QEMU may hold it).
async fn has(path: &str, name: &str) -> bool {
    let Ok(out) = img(&["info", "-U", "--output=json", path]).await else {
        return false;
    };
    serde_json::from_slice::<Value>(&out).is_ok_and(|info| {
        info["snapshots"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == name))
    })
}

async fn img(args: &[&str]) -> Result<Vec<u8>, String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    qemu_img(&args).await.map_err(|e| e.to_string())
}

fn write_record(dir: &VmDir, snapshot: Option<&DiskSnapshot>) -> std::io::Result<()> {
    let path = dir.snapshot_record();
    let Some(snapshot) = snapshot else {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    };
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(snapshot).unwrap_or_default())?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests;
