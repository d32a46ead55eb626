//! The HTTPS API on three `keel server` processes joined with a join token: a write through
//! one server is read through the others; the leader dies under a stream of writes, every
//! acknowledged write survives, and a watch resumes from its last revision without a gap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_client::Client;
use keel_e2e::{KeelServer, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const CM: &str = "/api/v1/namespaces/default/configmaps";

fn api(server: &KeelServer) -> Client {
    let (token, ca) = server.admin();
    Client::new(&format!("https://{}", server.api_addr), &ca, &token).unwrap()
}

async fn ready(server: &KeelServer) {
    eventually(&format!("{} to serve", server.api_addr), WAIT, || async {
        server.try_admin()?;
        api(server)
            .get("/api/v1/namespaces/kube-node-lease")
            .await
            .ok()
    })
    .await;
}

fn configmap(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": name}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_serve_the_api_and_survive_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let mut servers: Vec<KeelServer> = (0..3)
        .map(|i| KeelServer::new(root.path(), &format!("a{i}")))
        .collect();
    servers[0].start::<&str>(&[]);
    ready(&servers[0]).await;
    let join = servers[0].join_args();
    for s in &mut servers[1..] {
        s.start(&join);
    }
    for s in &servers {
        ready(s).await;
    }
    // Every server holds the same CA and tokens: one kubeconfig works against any of them.
    assert_eq!(servers[1].admin(), servers[0].admin());

    // Written through one, read through the others.
    api(&servers[1])
        .post(CM, &configmap("first"))
        .await
        .unwrap();
    for s in &servers {
        let got = api(s).get(&format!("{CM}/first")).await.unwrap();
        assert_eq!(got["data"]["n"], "first");
    }

    // Which process leads?
    let cluster = api(&servers[0]).get("/keel/v1/cluster").await.unwrap();
    let leader_addr = cluster["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "Leader")
        .map(|m| m["raftAddress"].as_str().unwrap().to_string())
        .expect("a leader");
    let leader = servers.iter().position(|s| s.addr == leader_addr).unwrap();
    let writer_idx = (leader + 1) % 3;
    let watcher_idx = (leader + 2) % 3;

    // A watch on a follower (renewed every few seconds from its last revision), and a writer
    // through the other follower.
    let start_rv = api(&servers[watcher_idx]).get(CM).await.unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let writer = {
        let client = api(&servers[writer_idx]);
        let (stop, acked_count) = (stop.clone(), acked_count.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w-{i:05}");
                if client.post(CM, &configmap(&name)).await.is_ok() {
                    acked.push(name);
                    acked_count.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            acked
        })
    };
    let watcher = {
        let client = api(&servers[watcher_idx]);
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut rv = start_rv;
            loop {
                let path = format!("{CM}?watch=true&resourceVersion={rv}&timeoutSeconds=2");
                let Ok(mut w) = client.watch(&path).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while let Some(Ok(event)) = w.next().await {
                    assert_ne!(event["type"], "ERROR", "{event}");
                    rv = event["object"]["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    let name = event["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    seen.lock().unwrap().insert(name);
                }
            }
        })
    };
    let writer_api = api(&servers[writer_idx]);
    let count = || {
        let client = writer_api.clone();
        async move { client.get(CM).await.ok()?["items"].as_array().map(Vec::len) }
    };
    eventually("writes before the kill", WAIT, || async {
        count().await.filter(|&n| n > 20)
    })
    .await;
    servers[leader].kill();
    let before = count().await.unwrap_or(0);
    eventually("writes after the kill", WAIT, || async {
        count().await.filter(|&n| n > before + 10)
    })
    .await;
    // Enough acknowledged writes for the checks to mean something, however busy the machine.
    eventually("30 acknowledged writes", WAIT, || async {
        (acked_count.load(Ordering::Relaxed) > 30).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 30, "{} writes", acked.len());

    // Every acknowledged write is stored, and the watch saw each one.
    let list = api(&servers[watcher_idx]).get(CM).await.unwrap();
    let stored: BTreeSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    for name in &acked {
        assert!(stored.contains(name), "lost acknowledged write {name}");
    }
    eventually("the watch to see every write", WAIT, || async {
        let seen = seen.lock().unwrap();
        acked.iter().all(|n| seen.contains(n)).then_some(())
    })
    .await;
    watcher.abort();
}
