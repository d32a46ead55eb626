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

use keel_runtime::{EventType, ObjectExt};
use keel_schemas::kinds::compute::{DiskSnapshot, VirtualMachine, VirtualMachineSpec};
use keel_schemas::wellknown::{LAST_GOOD_ANNOTATION, RESTORE_SNAPSHOT_ANNOTATION};
use serde_json::json;

use super::images::{qemu_img, qemu_img_json};
use super::qemu::{VmDir, VmFiles, changed_fields, restart_fields, write_whole};
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
pub fn restore_asked<'a>(vm: &'a VirtualMachine, dir: &VmDir) -> Option<&'a str> {
    lifecycle::asked(vm, dir, RESTORE_SNAPSHOT_ANNOTATION)
}

/// Whether a healthy generation newer than the rollback point makes it useless. A value
/// beyond the object's own generation was not written for this object (a manifest copied
/// with its annotations) and counts for nothing.
pub fn outlived(vm: &VirtualMachine, snapshot: &DiskSnapshot) -> bool {
    vm.annotation(LAST_GOOD_ANNOTATION)
        .and_then(|g| g.parse::<i64>().ok())
        .is_some_and(|good| good > snapshot.generation && good <= vm.generation())
}

/// Before a start: restores the rollback point a rollback asks for; otherwise deletes an
/// outlived one, and takes one when the guest is about to run a changed spec and there is
/// none. The guest is stopped. Failures are Warning Events: the start goes on (a missing
/// rollback point costs the data of a rollback, not the guest). Whether it took one.
pub async fn before_start(
    ctx: &Context,
    vm: &VirtualMachine,
    spec: &VirtualMachineSpec,
    dir: &VmDir,
) -> bool {
    let record = current(dir);
    if let Some(asked) = restore_asked(vm, dir).map(String::from) {
        let (kind, reason, message) = match record.filter(|s| s.name == asked) {
            Some(snapshot) => match revert(dir, &snapshot).await {
                Ok(()) => {
                    // No guest has run on the disks since the point: a start tried again
                    // has nothing to snapshot. Answered before the point is deleted, so that
                    // an agent stopped in between does not look for it again.
                    let _ = std::fs::remove_file(dir.boot());
                    lifecycle::answered(vm, dir, RESTORE_SNAPSHOT_ANNOTATION);
                    if let Err(e) = discard(dir, &snapshot, false).await {
                        tracing::warn!(vm = %vm.object_ref(), error = e, "cannot delete a restored snapshot");
                    }
                    (
                        EventType::Normal,
                        "SnapshotRestored",
                        format!(
                            "restored disks {} to snapshot {asked}, taken at {} as generation {} left them",
                            snapshot.disks.join(", "),
                            snapshot.taken_at,
                            snapshot.generation
                        ),
                    )
                }
                Err(e) => {
                    // Answered: a restore that cannot be done is not tried in a loop.
                    lifecycle::answered(vm, dir, RESTORE_SNAPSHOT_ANNOTATION);
                    (
                        EventType::Warning,
                        "SnapshotRestoreFailed",
                        format!(
                            "cannot restore snapshot {asked}, the disks are left as they are: {e}"
                        ),
                    )
                }
            },
            None => {
                lifecycle::answered(vm, dir, RESTORE_SNAPSHOT_ANNOTATION);
                (
                    EventType::Warning,
                    "SnapshotNotFound",
                    format!("a rollback asked for snapshot {asked}, which this node does not hold"),
                )
            }
        };
        tell(ctx, vm, kind, reason, "Restore", &message).await;
        return false;
    }
    let mut record = record;
    if let Some(snapshot) = record.as_ref().filter(|s| outlived(vm, s)) {
        if !discard_and_tell(ctx, vm, dir, snapshot, false).await {
            // Still recorded: tried again at the next start, and no second point is taken.
            return false;
        }
        record = None;
    }
    let Some(previous) = dir.read_boot().filter(|b| b.uid == vm.uid()) else {
        return false;
    };
    let changed = changed_fields(&previous.fields, &restart_fields(spec));
    if changed.is_empty() || record.is_some() {
        // A plain restart, or the point of the last good state is kept.
        return false;
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
        return false;
    }
    let generation = previous.generation.max(previous.applied);
    let taken = take(dir, generation, &disks).await;
    let took = taken.is_ok();
    let (kind, reason, message) = match taken {
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
    tell(ctx, vm, kind, reason, "Snapshot", &message).await;
    took
}

/// While the guest runs: deletes an outlived rollback point through QMP.
pub async fn prune_running(ctx: &Context, vm: &VirtualMachine, dir: &VmDir) {
    if let Some(snapshot) = current(dir).filter(|s| outlived(vm, s)) {
        discard_and_tell(ctx, vm, dir, &snapshot, true).await;
    }
}

/// Deletes an outlived point and says so; whether it is gone.
async fn discard_and_tell(
    ctx: &Context,
    vm: &VirtualMachine,
    dir: &VmDir,
    snapshot: &DiskSnapshot,
    running: bool,
) -> bool {
    let good = vm.annotation(LAST_GOOD_ANNOTATION);
    match discard(dir, snapshot, running).await {
        Ok(()) => {
            let message = format!(
                "deleted snapshot {}: generation {} is healthy",
                snapshot.name,
                good.unwrap_or("?")
            );
            tell(
                ctx,
                vm,
                EventType::Normal,
                "SnapshotDeleted",
                "Snapshot",
                &message,
            )
            .await;
            true
        }
        Err(e) => {
            // Kept on record and tried again at the next pass: no Event per pass.
            tracing::warn!(vm = %vm.object_ref(), snapshot = snapshot.name, error = e, "cannot delete the rollback point");
            false
        }
    }
}

async fn tell(
    ctx: &Context,
    vm: &VirtualMachine,
    kind: EventType,
    reason: &str,
    action: &str,
    message: &str,
) {
    tracing::info!(vm = %vm.object_ref(), reason, message, "rollback point");
    ctx.recorder
        .publish(vm, kind, reason, action, message)
        .await;
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
        if has(&path, &snapshot.name).await == Ok(true) {
            let _ = img(&["snapshot", "-d", &snapshot.name, &path]).await;
        }
        if let Err(e) = img(&["snapshot", "-c", &snapshot.name, &path]).await {
            forget(dir, &snapshot.name, &done).await;
            return Err(format!("disk {disk}: {e}"));
        }
        done.push(disk);
    }
    if let Err(e) = write_record(dir, Some(&snapshot)) {
        forget(dir, &snapshot.name, &done).await;
        return Err(format!("{}: {e}", dir.snapshot_record().display()));
    }
    Ok(snapshot)
}

/// Deletes the snapshot `name` of a take that failed from `disks`.
async fn forget(dir: &VmDir, name: &str, disks: &[&String]) {
    for disk in disks {
        let path = dir.disk(disk).display().to_string();
        let _ = img(&["snapshot", "-d", name, &path]).await;
    }
}

/// Reverts the disks to `snapshot` (the guest stopped): the disks it covers come back (from
/// where they were set aside, if they were), and disks made since go. Every disk is checked
/// to hold the snapshot before any is touched.
pub async fn revert(dir: &VmDir, snapshot: &DiskSnapshot) -> Result<(), String> {
    let mut files = Vec::new();
    for disk in &snapshot.disks {
        // The copy set aside for this very point, else the disk in place.
        let retired = dir.retired_disk(disk);
        let candidates = [(retired.clone(), true), (dir.disk(disk), false)];
        let mut found = None;
        for (path, aside) in candidates {
            if path.exists() && has(&path.display().to_string(), &snapshot.name).await? {
                found = Some((path, aside));
                break;
            }
        }
        let Some(found) = found else {
            return Err(format!("disk {disk} no longer holds it"));
        };
        files.push((disk, found));
    }
    for (disk, (path, aside)) in files {
        if aside {
            std::fs::rename(&path, dir.disk(disk))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let _ = std::fs::rename(dir.retired_origin(disk), dir.disk_origin(disk));
            super::images::sync_dir(&dir.root);
        }
        let path = dir.disk(disk).display().to_string();
        img(&["snapshot", "-a", &snapshot.name, &path])
            .await
            .map_err(|e| format!("disk {disk}: {e}"))?;
    }
    for disk in dir.disk_names() {
        if !snapshot.disks.contains(&disk) {
            let _ = std::fs::remove_file(dir.disk(&disk));
            let _ = std::fs::remove_file(dir.disk_origin(&disk));
        }
    }
    Ok(())
}

/// Deletes `snapshot`: the disks set aside for it, then the snapshot in each disk (through
/// QMP when the guest runs), then its record — which stays when a disk's could not be
/// deleted, so that it is tried again.
pub async fn discard(dir: &VmDir, snapshot: &DiskSnapshot, running: bool) -> Result<(), String> {
    for disk in &snapshot.disks {
        let _ = std::fs::remove_file(dir.retired_disk(disk));
        let _ = std::fs::remove_file(dir.retired_origin(disk));
    }
    let mut qmp = if running {
        Some(Qmp::connect(&dir.qmp()).await.map_err(|e| e.to_string())?)
    } else {
        None
    };
    for disk in &snapshot.disks {
        let path = dir.disk(disk).display().to_string();
        // A disk recreated, or added, since does not have it.
        if !dir.disk(disk).exists() || !has(&path, &snapshot.name).await? {
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
    write_record(dir, None).map_err(|e| e.to_string())
}

/// Sets the disk `disk` aside instead of deleting it, when the rollback point covers it (a
/// disk set aside earlier is kept: set-aside disks go with the point they were set aside
/// for, so that one holds it). Whether it did.
pub fn set_aside(dir: &VmDir, disk: &str) -> bool {
    let covered = current(dir).is_some_and(|s| s.disks.iter().any(|d| d == disk));
    if !covered || dir.retired_disk(disk).exists() || !dir.disk(disk).exists() {
        return false;
    }
    if std::fs::rename(dir.disk(disk), dir.retired_disk(disk)).is_err() {
        return false;
    }
    let _ = std::fs::rename(dir.disk_origin(disk), dir.retired_origin(disk));
    super::images::sync_dir(&dir.root);
    tracing::info!(disk, "set a disk aside for the rollback point");
    true
}

/// Whether the qcow2 file at `path` holds a snapshot `name` (read while QEMU may hold it).
async fn has(path: &str, name: &str) -> Result<bool, String> {
    let info = qemu_img_json(std::path::Path::new(path))
        .await
        .map_err(|e| e.to_string())?;
    Ok(info["snapshots"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["name"] == name)))
}

async fn img(args: &[&str]) -> Result<Vec<u8>, String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    qemu_img(&args).await.map_err(|e| e.to_string())
}

fn write_record(dir: &VmDir, snapshot: Option<&DiskSnapshot>) -> std::io::Result<()> {
    let path = dir.snapshot_record();
    match snapshot {
        Some(snapshot) => write_whole(&path, &serde_json::to_vec(snapshot)?),
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests;
