//! The controller runtime against a real in-process Keel server: the watcher resumes where
//! it stopped and relists after compaction (410); a controller reconciles every object to
//! `observedGeneration == generation`, never one key twice at once; finalizers; events;
//! garbage collection of dependents; leader election hands over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_client::{Api, Client, DeleteParams, Patch};
use keel_runtime::{
    Action, Controller, Event, EventType, FinalizerEvent, LeaderConfig, ObjectExt, Recorder, elect,
    finalizer, watcher,
};
use serde_json::{Value, json};
use tokio::sync::watch;

mod common;

use common::{WAIT, client, start, until};

fn configmaps(c: &Client) -> Api<Value> {
    Api::namespaced(c, keel_schemas::lookup("configmaps").unwrap(), "default")
}

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_resumes_and_relists_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let api = configmaps(&c);
    api.create(&cm("a")).await.unwrap();
    // Short server-side watches, so that the watcher resumes often.
    let config = watcher::Config {
        timeout_seconds: 1,
        ..watcher::Config::default()
    };
    let mut w = watcher(api.clone(), config);
    match w.next().await {
        Event::Restarted(items) => assert_eq!(items.len(), 1),
        other => panic!("first event {other:?}"),
    }
    // Across several server-side watch timeouts, every change arrives, without a relist.
    for i in 0..3 {
        api.create(&cm(&format!("b{i}"))).await.unwrap();
        match w.next().await {
            Event::Applied(o) => assert_eq!(o.name(), format!("b{i}")),
            other => panic!("expected b{i}, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert_eq!(w.relists(), 1, "resumed from the last revision, no relist");
    // While the watcher is not looking, history moves on and is compacted past its revision.
    for i in 0..5 {
        api.create(&cm(&format!("c{i}"))).await.unwrap();
    }
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let revision = server.raft().status().revision;
    server.raft().compact(revision).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The watcher drains what its open watch had, then its resume gets 410 and it relists.
    let mut seen = HashSet::new();
    let items = loop {
        match w.next().await {
            Event::Restarted(items) => break items,
            Event::Applied(o) | Event::Deleted(o) => {
                seen.insert(o.name().to_string());
            }
        }
    };
    assert_eq!(w.relists(), 2, "relisted after 410");
    let mut names: Vec<String> = items.iter().map(|o| o.name().to_string()).collect();
    names.sort();
    assert_eq!(names, ["b0", "b1", "b2", "c0", "c1", "c2", "c3", "c4"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_reconciles_every_object_one_key_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let vpcs: Api<Value> = Api::namespaced(&c, keel_schemas::lookup("sg").unwrap(), "default");
    for i in 0..20 {
        let vpc = json!({"apiVersion": "keel.dev/v1alpha1", "kind": "SecurityGroup",
                         "metadata": {"name": format!("v{i}")}, "spec": {"ingress": []}});
        vpcs.create(&vpc).await.unwrap();
    }
    struct Ctx {
        api: Api<Value>,
        busy: Mutex<HashSet<String>>,
        overlaps: Mutex<u32>,
        recorder: Recorder,
    }
    let ctx = Arc::new(Ctx {
        api: vpcs.clone(),
        busy: Mutex::default(),
        overlaps: Mutex::new(0),
        recorder: Recorder::new(&c, "test-controller", "here"),
    });
    async fn reconcile(
        vpc: Arc<Value>,
        ctx: Arc<Ctx>,
    ) -> Result<Action, keel_runtime::finalizer::FinalizerError<keel_client::ClientError>> {
        let key = vpc.name().to_string();
        if !ctx.busy.lock().unwrap().insert(key.clone()) {
            *ctx.overlaps.lock().unwrap() += 1;
        }
        // Hold the key a while so that concurrent changes would overlap if they could.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let api = ctx.api.clone();
        let inner = ctx.clone();
        let result = finalizer(&api, "test.keel.dev/cleanup", &vpc, |event| async move {
            let ctx = inner;
            match event {
                FinalizerEvent::Apply(vpc) => {
                    if vpc["status"]["observedGeneration"].as_i64() != Some(vpc.generation()) {
                        let patch = json!({"status": {"observedGeneration": vpc.generation()}});
                        ctx.api
                            .patch_status(vpc.name(), &Patch::Merge(patch))
                            .await?;
                        if vpc.name() == "v0" {
                            ctx.recorder
                                .publish(
                                    &vpc,
                                    EventType::Normal,
                                    "Observed",
                                    "Reconciling",
                                    "saw it",
                                )
                                .await;
                        }
                    }
                    Ok(Action::await_change())
                }
                FinalizerEvent::Cleanup(_) => Ok(Action::await_change()),
            }
        })
        .await;
        ctx.busy.lock().unwrap().remove(&key);
        result
    }
    let (stop, stopped) = watch::channel(false);
    let controller =
        Controller::new("test-vpcs", vpcs.clone(), watcher::Config::default()).concurrency(4);
    let task = tokio::spawn(controller.run(reconcile, ctx.clone(), stopped));
    // Change specs while the controller works: each must end observed.
    for i in 0..20 {
        let patch = json!({"spec": {"ingress": [{"protocol": "TCP", "ports": "80", "from": {"cidr": "0.0.0.0/0"}}]}});
        vpcs.patch(&format!("v{i}"), &Patch::Merge(patch))
            .await
            .unwrap();
    }
    until("every VPC observed", || async {
        let list = vpcs.list(&Default::default()).await.unwrap();
        list.items.len() == 20
            && list.items.iter().all(|v| {
                v["status"]["observedGeneration"].as_i64() == Some(v.generation())
                    && v.has_finalizer("test.keel.dev/cleanup")
            })
    })
    .await;
    assert_eq!(
        *ctx.overlaps.lock().unwrap(),
        0,
        "a key was reconciled twice at once"
    );
    // The finalizer holds a deleted object until the cleanup ran, then lets it go.
    vpcs.delete("v1", &DeleteParams::default()).await.unwrap();
    until("v1 finalized and gone", || async {
        vpcs.get_opt("v1").await.unwrap().is_none()
    })
    .await;
    // The event is there for describe.
    let events: Api<Value> =
        Api::namespaced(&c, keel_schemas::lookup("events").unwrap(), "default");
    let list = events.list(&Default::default()).await.unwrap();
    assert!(
        list.items
            .iter()
            .any(|e| e["reason"] == "Observed" && e["involvedObject"]["name"] == "v0"),
        "{:?}",
        list.items
    );
    let text = keel_runtime::metrics::render();
    assert!(text.contains("keel_controller_reconciles_total{controller=\"test-vpcs\"}"));
    stop.send_replace(true);
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_deletes_its_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let api = configmaps(&c);
    let owner = api.create(&cm("owner")).await.unwrap();
    let mut dependent = cm("dependent");
    dependent["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
        "name": "owner", "uid": owner.uid(), "controller": true}]);
    api.create(&dependent).await.unwrap();
    let mut orphan_to_be = cm("two-owners");
    let other = api.create(&cm("other-owner")).await.unwrap();
    orphan_to_be["metadata"]["ownerReferences"] = json!([
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid()},
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "other-owner", "uid": other.uid()}]);
    api.create(&orphan_to_be).await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let gc = tokio::spawn(keel_controllers::gc::run(c.clone(), stopped));
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    until("the dependent deleted", || async {
        api.get_opt("dependent").await.unwrap().is_none()
    })
    .await;
    // An object with a living owner left stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(api.get_opt("two-owners").await.unwrap().is_some());
    api.delete("other-owner", &DeleteParams::default())
        .await
        .unwrap();
    until("the last dependent deleted", || async {
        api.get_opt("two-owners").await.unwrap().is_none()
    })
    .await;
    stop.send_replace(true);
    gc.await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_candidate_leads_and_another_takes_over_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let config = |id: &str| LeaderConfig {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(200),
        ..LeaderConfig::new("kube-system", "test-election", id)
    };
    let (lead_a, mut a) = watch::channel(false);
    let (lead_b, mut b) = watch::channel(false);
    let (stop_a, stopped_a) = watch::channel(false);
    let (stop_b, stopped_b) = watch::channel(false);
    let task_a = tokio::spawn(elect(c.clone(), config("a"), lead_a, stopped_a));
    let task_b = tokio::spawn(elect(c.clone(), config("b"), lead_b, stopped_b));
    until("a leader", || async { *a.borrow() || *b.borrow() }).await;
    // Over a few renewals, exactly one leads.
    for _ in 0..10 {
        assert!(*a.borrow() ^ *b.borrow(), "exactly one leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a_leads = *a.borrow();
    let (leader_stop, leader_task, other_stop, other_task, follower) = if a_leads {
        (stop_a, task_a, stop_b, task_b, &mut b)
    } else {
        (stop_b, task_b, stop_a, task_a, &mut a)
    };
    // The leader stops (and releases the lease): the other takes over.
    leader_stop.send_replace(true);
    leader_task.await.unwrap();
    tokio::time::timeout(WAIT, follower.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    other_stop.send_replace(true);
    other_task.await.unwrap();
    server.shutdown().await;
}
