//! The rollout decision: recording, health, deadlines, pause, supersession and trimming.

use keel_runtime::Resource;
use serde_json::{Value, json};

use super::*;

const T0: u64 = 1_800_000_000;

/// The next step for `object` (JSON, decoded as kind `R`, as the controller's cache decodes
/// it) with the revisions `history`.
fn run<R: Rollable>(object: &Value, history: &[Value], now: u64) -> Step {
    step(&typed::<R>(object), &revisions(history), now)
}

fn typed<R: Resource>(object: &Value) -> R {
    R::decode(object.clone()).unwrap_or_else(|e| panic!("{e}: {object}"))
}

fn revisions(history: &[Value]) -> Vec<Revision> {
    history.iter().map(typed).collect()
}

/// A LoadBalancer at generation `generation` with `path` as its check path, its Ready
/// condition `ready` at generation `observed`.
fn lb(path: &str, generation: i64, observed: i64, ready: &str) -> Value {
    json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": "web", "namespace": "default", "uid": "u1", "generation": generation},
        "spec": spec(path),
        "status": {
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", "status": ready, "reason": "X", "message": format!("ready {ready}")}],
        },
    })
}

fn spec(path: &str) -> Value {
    json!({"progressDeadlineSeconds": 10, "revisionHistoryLimit": 3,
           "listeners": [{"protocol": "TCP", "port": 80}],
           "backends": {"addresses": ["10.0.0.1:8080"]},
           "healthCheck": {"path": path, "intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2}})
}

/// Revision `n` of `name` recording `spec`, in `phase`, made at `created`.
fn recorded(name: &str, kind: &str, n: u64, spec: Value, phase: &str, created: u64) -> Value {
    json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "Revision",
        "metadata": {"name": format!("{name}-{n}"), "creationTimestamp": keel_schemas::time::rfc3339(created)},
        "spec": {
            "target": {"apiVersion": "keel.dev/v1alpha1", "kind": kind, "name": name},
            "revision": n, "spec": spec,
        },
        "status": {"phase": phase, "deadline": keel_schemas::time::rfc3339(created + 10)},
    })
}

fn revision(n: u64, path: &str, phase: &str, created: u64) -> Value {
    recorded("web", "LoadBalancer", n, spec(path), phase, created)
}

#[test]
fn the_first_spec_and_every_change_are_recorded() {
    let obj = lb("/a", 1, 1, "True");
    assert_eq!(
        run::<LoadBalancer>(&obj, &[], T0),
        Step::Record {
            number: 1,
            rollback_of: None,
            supersede: None,
            deadline: T0 + 10
        }
    );
    let history = [
        revision(1, "/a", "Healthy", T0),
        revision(2, "/b", "Healthy", T0 + 20),
    ];
    // Back to /a: a rollback of revision 1.
    assert_eq!(
        run::<LoadBalancer>(&obj, &history, T0 + 40),
        Step::Record {
            number: 3,
            rollback_of: Some(1),
            supersede: None,
            deadline: T0 + 50
        }
    );
}

#[test]
fn a_change_while_progressing_supersedes_it() {
    let obj = lb("/c", 3, 2, "True");
    let history = [
        revision(1, "/a", "Healthy", T0),
        revision(2, "/b", "Progressing", T0 + 20),
    ];
    assert_eq!(
        run::<LoadBalancer>(&obj, &history, T0 + 22),
        Step::Record {
            number: 3,
            rollback_of: None,
            supersede: Some("web-2".into()),
            deadline: T0 + 32
        }
    );
}

#[test]
fn healthy_counts_only_at_the_current_generation_and_after_the_settle_time() {
    let history = [revision(1, "/a", "Progressing", T0)];
    // The agent has not seen generation 2 yet.
    let stale = lb("/a", 2, 1, "True");
    assert_eq!(run::<LoadBalancer>(&stale, &history, T0 + 5), Step::Wait(5));
    // Ready from before the change: the new check has not had time to fail (2 x 1 s + 1 + 1).
    let fresh = lb("/a", 2, 2, "True");
    assert_eq!(run::<LoadBalancer>(&fresh, &history, T0 + 1), Step::Wait(3));
    assert_eq!(
        run::<LoadBalancer>(&fresh, &history, T0 + 4),
        Step::Healthy {
            revision: "web-1".into(),
            number: 1,
            clear_rolled_back: false
        }
    );
    // A zone's Ready is reset by its controller on a new generation: no settle time.
    let zone_spec = json!({"domain": "shop.example"});
    let zone = json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "Zone",
        "metadata": {"name": "shop", "namespace": "default", "uid": "u2", "generation": 2},
        "spec": zone_spec,
        "status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]},
    });
    let history = [recorded("shop", "Zone", 1, zone_spec, "Progressing", T0)];
    assert!(matches!(
        run::<Zone>(&zone, &history, T0),
        Step::Healthy { .. }
    ));
}

#[test]
fn a_deadline_passed_returns_to_the_last_good_revision_not_the_first() {
    let obj = lb("/missing", 3, 3, "False");
    let history = [
        revision(1, "/a", "Healthy", T0),
        revision(2, "/b", "Healthy", T0 + 20),
        revision(3, "/missing", "Progressing", T0 + 40),
    ];
    assert_eq!(run::<LoadBalancer>(&obj, &history, T0 + 45), Step::Wait(5));
    match run::<LoadBalancer>(&obj, &history, T0 + 50) {
        Step::RollBack {
            revision,
            number,
            to,
            spec: restored,
            snapshot,
            message,
        } => {
            assert_eq!((revision.as_str(), number, to), ("web-3", 3, 2));
            assert_eq!(snapshot, None, "a load balancer has no data to restore");
            assert_eq!(Value::Object(restored), spec("/b"));
            assert_eq!(
                message,
                "revision 3 was not healthy within 10s (ready False); restored revision 2"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_a_good_revision_the_rollout_fails_and_a_paused_object_is_left_alone() {
    let obj = lb("/missing", 1, 1, "False");
    let history = [revision(1, "/missing", "Progressing", T0)];
    assert!(matches!(
        run::<LoadBalancer>(&obj, &history, T0 + 11),
        Step::Fail { revision, .. } if revision == "web-1"
    ));
    // A healthy revision with the same spec is no way back either.
    let history = [
        revision(1, "/missing", "Healthy", T0),
        revision(2, "/missing", "Progressing", T0 + 20),
    ];
    assert!(matches!(
        run::<LoadBalancer>(&obj, &history, T0 + 31),
        Step::Fail { .. }
    ));
    let mut paused = lb("/missing", 2, 2, "False");
    paused["metadata"]["annotations"] = json!({PAUSED_ANNOTATION: "true"});
    let history = [
        revision(1, "/a", "Healthy", T0),
        revision(2, "/missing", "Progressing", T0 + 20),
    ];
    assert_eq!(run::<LoadBalancer>(&paused, &history, T0 + 60), Step::Idle);
}

#[test]
fn rolled_back_clears_when_a_new_change_that_is_not_a_rollback_is_healthy() {
    let mut obj = lb("/a", 4, 4, "True");
    obj["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "RolledBack", "status": "True"}));
    let mut restored = revision(3, "/a", "Progressing", T0 + 40);
    restored["spec"]["rollbackOf"] = json!(1);
    let history = [
        revision(1, "/a", "Healthy", T0),
        revision(2, "/bad", "RolledBack", T0 + 20),
        restored,
    ];
    assert!(matches!(
        run::<LoadBalancer>(&obj, &history, T0 + 45),
        Step::Healthy {
            clear_rolled_back: false,
            ..
        }
    ));
    let history = [
        revision(1, "/a", "Healthy", T0),
        revision(2, "/a", "Progressing", T0 + 20),
    ];
    assert!(matches!(
        run::<LoadBalancer>(&obj, &history, T0 + 45),
        Step::Healthy {
            clear_rolled_back: true,
            ..
        }
    ));
    // Nothing to do once the newest is settled.
    let history = [revision(1, "/a", "Healthy", T0)];
    assert_eq!(run::<LoadBalancer>(&obj, &history, T0 + 45), Step::Idle);
}

#[test]
fn trimming_keeps_the_newest_and_the_last_good() {
    let history: Vec<Value> = [
        (1, "Healthy"),
        (2, "Healthy"),
        (3, "RolledBack"),
        (4, "RolledBack"),
        (5, "Progressing"),
    ]
    .iter()
    .map(|(n, p)| revision(*n, "/x", p, T0))
    .collect();
    let history = revisions(&history);
    assert_eq!(to_trim(&history, 3), ["web-1", "web-3"]);
    assert_eq!(to_trim(&history, 1), ["web-1", "web-3", "web-4"]);
    assert!(to_trim(&history, 10).is_empty());
}

#[test]
fn a_vm_restarting_to_apply_a_change_is_not_healthy_yet() {
    let vm = |restart: &str| {
        typed::<VirtualMachine>(&json!({
            "apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "app", "generation": 2},
            "spec": vm_spec("x"),
            "status": {"observedGeneration": 2, "conditions": [
                {"type": "Ready", "status": "True", "reason": "ProbeSucceeded", "message": "ok"},
                {"type": "RestartRequired", "status": restart, "reason": "Restarting", "message": "cmdline changed"}]}}))
    };
    assert!(!vm("True").health().healthy);
    assert_eq!(vm("True").health().message, "cmdline changed");
    assert!(vm("False").health().healthy);
}

/// A VM at generation 7 running a command line that never gets ready, its node's rollback
/// point taken while the guest ran generation `taken` (none: no rollback point).
fn failing_vm(taken: Option<i64>) -> Value {
    let mut vm = json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "app", "namespace": "default", "uid": "u1", "generation": 7},
        "spec": vm_spec("bad"),
        "status": {"observedGeneration": 7, "conditions": [
            {"type": "Ready", "status": "False", "reason": "ProbeFailed", "message": "no answer on 8080"}]},
    });
    if let Some(g) = taken {
        vm["status"]["snapshot"] = json!({"name": format!("keel-g{g}"), "generation": g,
                                          "disks": ["data"], "takenAt": "2026-12-02T10:00:00Z"});
    }
    vm
}

/// A VM's spec with `cmdline`.
fn vm_spec(cmdline: &str) -> Value {
    json!({"cpu": 1, "memory": "1Gi", "cmdline": cmdline, "progressDeadlineSeconds": 10})
}

fn vm_revision(n: u64, cmdline: &str, generation: Option<i64>, phase: &str, created: u64) -> Value {
    let mut r = recorded("app", "VirtualMachine", n, vm_spec(cmdline), phase, created);
    if let Some(g) = generation {
        r["spec"]["generation"] = json!(g);
    }
    r
}

#[test]
fn a_vm_rollback_restores_the_snapshot_that_holds_the_last_good_state() {
    let history = |generations: bool| {
        let g = |n| generations.then_some(n);
        vec![
            vm_revision(1, "first", g(1), "Healthy", T0),
            vm_revision(2, "good", g(4), "Healthy", T0 + 20),
            vm_revision(3, "bad", g(7), "Progressing", T0 + 40),
        ]
    };
    let rollback = |vm: &Value, history: &[Value]| match run::<VirtualMachine>(vm, history, T0 + 50)
    {
        Step::RollBack {
            to,
            snapshot,
            message,
            ..
        } => {
            assert_eq!(to, 2, "back to the last good revision");
            (snapshot, message)
        }
        other => panic!("{other:?}"),
    };
    // Taken while the guest ran revision 2's generation, or a later one before revision 3.
    for taken in [4, 5, 6] {
        let (snapshot, message) = rollback(&failing_vm(Some(taken)), &history(true));
        assert_eq!(snapshot, Some(format!("keel-g{taken}")));
        assert!(
            message.ends_with(&format!(
                "restored revision 2; the disks are restored to snapshot keel-g{taken}"
            )),
            "{message}"
        );
    }
    // Older than revision 2 (it would lose what revision 2 wrote), of the failing revision
    // itself, none, or revisions that do not say their generation: the spec alone.
    for (vm, generations) in [
        (failing_vm(Some(3)), true),
        (failing_vm(Some(7)), true),
        (failing_vm(None), true),
        (failing_vm(Some(5)), false),
    ] {
        let (snapshot, message) = rollback(&vm, &history(generations));
        assert_eq!(snapshot, None, "{vm}");
        assert!(
            message.ends_with("the disks keep their data: no snapshot holds revision 2's state"),
            "{message}"
        );
    }
    let history = revisions(&history(true));
    assert_eq!(
        rollback_point(
            &typed::<VirtualMachine>(&failing_vm(Some(5))),
            &history[2],
            &history[1]
        ),
        Some("keel-g5".into())
    );
}
