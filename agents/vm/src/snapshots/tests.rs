//! Rollback points on real qcow2 files (`qemu-img`, `qemu-io`), the guest stopped.

use std::process::Command;

use keel_runtime::ObjectRef;
use keel_schemas::datadir::AgentDir;

use crate::qemu;

use super::*;

fn vm_dir(root: &std::path::Path) -> VmDir {
    let dir = qemu::vm_dir(
        &AgentDir::new(root),
        &ObjectRef::new(Some("default"), "app"),
    );
    std::fs::create_dir_all(&dir.root).unwrap();
    dir
}

fn create(dir: &VmDir, disk: &str) {
    let path = dir.disk(disk).display().to_string();
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", &path, "1M"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(dir.disk_origin(disk), "{}").unwrap();
}

/// Runs a `qemu-io` command on the disk; whether it succeeded.
fn io(dir: &VmDir, disk: &str, command: &str) -> bool {
    let path = dir.disk(disk).display().to_string();
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", command, &path])
        .output()
        .unwrap();
    // qemu-io exits 0 even when a pattern does not match; it says so.
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    out.status.success()
        && !said.contains("Pattern verification failed")
        && !said.contains("failed")
}

#[tokio::test]
async fn a_restore_returns_the_disks_to_the_point_and_deletes_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = vm_dir(root.path());
    create(&dir, "root");
    create(&dir, "data");
    assert!(io(&dir, "data", "write -P 0x41 0 4k"));
    assert!(io(&dir, "root", "write -P 0x52 0 4k"));
    let snapshot = take(&dir, 4, &["root".into(), "data".into()])
        .await
        .unwrap();
    assert_eq!(snapshot.name, "keel-g4");
    assert_eq!(current(&dir), Some(snapshot.clone()));

    // The change: data overwritten, root dropped from the spec, a disk added.
    assert!(io(&dir, "data", "write -P 0x42 0 4k"));
    assert!(io(&dir, "data", "read -P 0x42 0 4k"));
    assert!(set_aside(&dir, "root"), "covered by the point");
    assert!(!dir.disk("root").exists() && dir.retired_disk("root").exists());
    create(&dir, "extra");
    assert!(!set_aside(&dir, "extra"), "not covered: deleted as before");

    revert(&dir, &snapshot).await.unwrap();
    discard(&dir, &snapshot, false).await.unwrap();
    assert!(
        io(&dir, "data", "read -P 0x41 0 4k"),
        "the data written before the change"
    );
    assert!(
        io(&dir, "root", "read -P 0x52 0 4k"),
        "the disk set aside is back"
    );
    assert!(!dir.retired_disk("root").exists());
    assert!(
        !dir.disk("extra").exists(),
        "a disk made after the point goes"
    );
    assert_eq!(current(&dir), None);
    for disk in ["root", "data"] {
        assert!(
            !has(&dir.disk(disk).display().to_string(), "keel-g4")
                .await
                .unwrap(),
            "{disk}"
        );
    }
}

#[tokio::test]
async fn a_discarded_point_leaves_the_disks_as_they_are() {
    let root = tempfile::tempdir().unwrap();
    let dir = vm_dir(root.path());
    create(&dir, "data");
    assert!(io(&dir, "data", "write -P 0x41 0 4k"));
    let snapshot = take(&dir, 2, &["data".into()]).await.unwrap();
    assert!(io(&dir, "data", "write -P 0x43 0 4k"));
    assert!(set_aside(&dir, "data"));
    create(&dir, "data");
    discard(&dir, &snapshot, false).await.unwrap();
    assert_eq!(current(&dir), None);
    assert!(
        !dir.retired_disk("data").exists(),
        "the set-aside disk goes with the point"
    );
    assert!(
        !has(&dir.disk("data").display().to_string(), "keel-g2")
            .await
            .unwrap()
    );
    assert!(
        io(&dir, "data", "read -P 0x00 0 4k"),
        "the new disk is untouched"
    );
}

#[tokio::test]
async fn a_failed_take_leaves_no_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let dir = vm_dir(root.path());
    create(&dir, "data");
    let missing = take(&dir, 3, &["data".into(), "gone".into()]).await;
    assert!(missing.unwrap_err().starts_with("disk gone: "));
    assert_eq!(current(&dir), None);
    assert!(
        !has(&dir.disk("data").display().to_string(), "keel-g3")
            .await
            .unwrap()
    );
}

#[test]
fn a_point_is_outlived_by_a_newer_healthy_generation() {
    let snapshot = DiskSnapshot {
        name: name(4),
        generation: 4,
        disks: vec!["data".into()],
        taken_at: String::new(),
    };
    let typed = |metadata: serde_json::Value| {
        let vm = json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": metadata, "spec": {"cpu": 1, "memory": "1Gi"}});
        <VirtualMachine as keel_runtime::Resource>::decode(vm).unwrap()
    };
    let vm =
        |good: &str| typed(json!({"generation": 6, "annotations": {LAST_GOOD_ANNOTATION: good}}));
    assert!(!outlived(&vm("4"), &snapshot));
    assert!(outlived(&vm("5"), &snapshot));
    assert!(outlived(&vm("6"), &snapshot));
    assert!(
        !outlived(&vm("7"), &snapshot),
        "not written for this object"
    );
    assert!(!outlived(&vm("x"), &snapshot));
    assert!(!outlived(&typed(json!({})), &snapshot));
}

#[tokio::test]
async fn a_revert_touches_nothing_unless_every_disk_holds_the_point() {
    let root = tempfile::tempdir().unwrap();
    let dir = vm_dir(root.path());
    create(&dir, "root");
    create(&dir, "data");
    let snapshot = take(&dir, 5, &["root".into(), "data".into()])
        .await
        .unwrap();
    assert!(io(&dir, "root", "write -P 0x52 0 4k"));
    // "data" recreated since (a disposable disk's new image): it does not hold the point.
    std::fs::remove_file(dir.disk("data")).unwrap();
    create(&dir, "data");
    let e = revert(&dir, &snapshot).await.unwrap_err();
    assert_eq!(e, "disk data no longer holds it");
    assert!(io(&dir, "root", "read -P 0x52 0 4k"), "root not reverted");
    assert_eq!(current(&dir), Some(snapshot));
}
