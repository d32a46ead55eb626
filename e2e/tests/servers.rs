//! Whole `keel server` processes on loopback: a three-server cluster that loses its leader to
//! SIGKILL, restarts, and refuses bad data dirs and flags.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keel_apiserver::raft::{Client, Consistency};
use keel_apiserver::store::{KeyRange, RangeRequest, Txn};
use keel_e2e::{KeelServer, eventually, keel};

const WAIT: Duration = Duration::from_secs(30);

/// A Raft-port client with the server's own certificates (servers speak mutual TLS).
async fn client(server: &KeelServer) -> Option<Client> {
    let tls = keel_apiserver::auth::Certificates::load(&server.dir())
        .ok()??
        .peer_tls();
    Client::connect_tls(&server.addr, Duration::from_millis(500), &tls)
        .await
        .ok()
}

/// Waits until the server answers and knows a leader; returns the leader's id.
async fn ready(server: &KeelServer) -> u64 {
    eventually(
        &format!("{} to know a leader", server.addr),
        WAIT,
        || async { client(server).await?.status().await.ok()?.leader },
    )
    .await
}

async fn keys(server: &KeelServer, prefix: &str) -> BTreeSet<String> {
    eventually("a linearizable read", WAIT, || async {
        let resp = client(server)
            .await?
            .range(
                RangeRequest {
                    range: Some(KeyRange::Prefix(prefix.as_bytes().to_vec())),
                    ..RangeRequest::default()
                },
                Consistency::Linearizable,
            )
            .await
            .ok()?;
        Some(
            resp.kvs
                .into_iter()
                .map(|kv| String::from_utf8(kv.key).unwrap())
                .collect(),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_lose_the_leader_to_sigkill_and_lose_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let mut servers: Vec<KeelServer> = (0..3)
        .map(|i| KeelServer::new(root.path(), &format!("s{i}")))
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
    let status = client(&servers[0]).await.unwrap().status().await.unwrap();
    assert_eq!(status.members.len(), 3, "{status:?}");

    // Writers on every server, recording what was acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, s) in servers.iter().enumerate() {
        let addr = s.addr.clone();
        let tls = keel_apiserver::auth::Certificates::load(&s.dir())
            .unwrap()
            .unwrap()
            .peer_tls();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(c) = Client::connect_tls(&addr, Duration::from_millis(300), &tls).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("/acked/{w}/{i:05}");
                    match c.txn(Txn::put(key.clone(), "v")).await {
                        Ok(Ok(_)) => acked.push(key),
                        Ok(Err(e)) => panic!("a plain put was refused: {e}"),
                        Err(_) => break,
                    }
                    i += 1;
                }
            }
            acked
        }));
    }

    eventually("some writes", WAIT, || async {
        let revision = client(&servers[0]).await?.status().await.ok()?.revision;
        (revision > 30).then_some(())
    })
    .await;

    // SIGKILL the leader mid-stream.
    let leader_id = ready(&servers[0]).await;
    let mut leader = None;
    for (i, s) in servers.iter().enumerate() {
        if client(s).await.unwrap().status().await.unwrap().node_id == leader_id {
            leader = Some(i);
        }
    }
    let leader = leader.unwrap();
    servers[leader].kill();
    let survivor = (leader + 1) % 3;
    let new_leader = eventually("a new leader", WAIT, || async {
        let st = client(&servers[survivor]).await?.status().await.ok()?;
        st.leader.filter(|&l| l != leader_id)
    })
    .await;
    assert_ne!(new_leader, leader_id);
    let before = client(&servers[survivor])
        .await
        .unwrap()
        .status()
        .await
        .unwrap()
        .revision;
    eventually("writes to resume", WAIT, || async {
        let st = client(&servers[survivor]).await?.status().await.ok()?;
        (st.revision > before + 30).then_some(())
    })
    .await;

    // The killed server restarts from its disk and rejoins.
    servers[leader].start::<&str>(&[]);
    ready(&servers[leader]).await;
    // Enough writes for the check to mean something, however busy the machine is.
    eventually("writes after the restart", WAIT, || async {
        let st = client(&servers[survivor]).await?.status().await.ok()?;
        (st.revision > before + 90).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 60, "too few writes: {}", acked.len());
    for s in &servers {
        let have = keys(s, "/acked/").await;
        for key in &acked {
            assert!(
                have.contains(key),
                "{} lost acknowledged write {key}",
                s.addr
            );
        }
    }

    // Kill every server at once and start them again: nothing acknowledged is lost.
    for s in &mut servers {
        s.kill();
    }
    for s in &mut servers {
        s.start::<&str>(&[]);
    }
    for s in &servers {
        ready(s).await;
        let have = keys(s, "/acked/").await;
        assert!(
            acked.iter().all(|k| have.contains(k)),
            "{} lost writes after a full restart",
            s.addr
        );
    }
    for s in &servers {
        assert!(!s.log().contains("panicked"), "{}", s.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_dirs_and_flags_are_refused_with_a_message() {
    let root = tempfile::tempdir().unwrap();
    let mut first = KeelServer::new(root.path(), "first");
    first.start::<&str>(&[]);
    ready(&first).await;

    let port = || format!("127.0.0.1:{}", keel_e2e::free_port());
    let expect_refusal = |args: Vec<String>, needle: &str| {
        let started = Instant::now();
        let mut full: Vec<String> = vec![
            "server".into(),
            "--listen".into(),
            port(),
            "--raft-listen".into(),
            port(),
        ];
        full.extend(args);
        let args: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = keel(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "expected a refusal for {args:?}");
        assert!(
            stderr.contains(needle),
            "for {args:?}: expected {needle:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        eprintln!(
            "refused in {:?}: {}",
            started.elapsed(),
            stderr.lines().last().unwrap_or("")
        );
    };
    let dir = |name: &str| root.path().join(name).display().to_string();
    let data = |d: String| vec!["--data-dir".to_string(), d];
    let join = first.join_args();

    // A second process on a data dir in use.
    expect_refusal(
        data(first.data_dir.display().to_string()),
        "another process",
    );
    // A join to an address where nothing listens fails fast.
    let dead = port();
    let mut args = data(dir("j"));
    args.extend([
        "--join".into(),
        format!("https://{dead}"),
        "--token".into(),
        join[3].clone(),
    ]);
    expect_refusal(args, &dead);
    // A join with a token of another cluster (its pinned CA differs).
    let mut args = data(dir("t"));
    args.extend([
        "--join".into(),
        join[1].clone(),
        "--token".into(),
        format!("K10{}::server:nope", "0".repeat(64)),
    ]);
    expect_refusal(args, "the join token pins");
    // A join with the right CA but a wrong secret.
    let mut args = data(dir("s"));
    let wrong = join[3].replace("::server:", "::server:x");
    args.extend(["--join".into(), join[1].clone(), "--token".into(), wrong]);
    expect_refusal(args, "401");
    // A node id that collides.
    let mut args = data(dir("c"));
    args.extend(join.iter().cloned());
    args.extend(["--node-id".into(), "1".into()]);
    expect_refusal(args, "node id 1 is already taken");
    // A data dir of another cluster.
    let mut other = KeelServer::new(root.path(), "other");
    other.start::<&str>(&[]);
    ready(&other).await;
    other.kill();
    let mut args = data(other.data_dir.display().to_string());
    args.extend(join.iter().cloned());
    expect_refusal(args, "belongs to a cluster");
    // The wrong node id for a data dir.
    let mut args = data(other.data_dir.display().to_string());
    args.extend(["--node-id".into(), "9".into()]);
    expect_refusal(args, "not node 9");
    // A truncated Raft log.
    let log = other.dir().raft_log();
    let bytes = std::fs::read(&log).unwrap();
    std::fs::write(&log, &bytes[..bytes.len() / 3]).unwrap();
    expect_refusal(data(other.data_dir.display().to_string()), "raft-log.redb");
    // Bad flags.
    let out = keel(&["server", "--raft-listen", "not-an-address"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--raft-listen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_cli_reads_what_it_wrote() {
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), "cli");
    server.start::<&str>(&[]);
    ready(&server).await;
    let s = server.addr.as_str();
    let d = server.data_dir.display().to_string();
    let d = d.as_str();
    let json = |out: std::process::Output| -> Vec<serde_json::Value> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let put = json(keel(&[
        "kv",
        "put",
        "-s",
        s,
        "--data-dir",
        d,
        "/cli/a",
        "one",
    ]));
    let first = put[0]["revision"].as_u64().expect("a revision").to_string();
    json(keel(&[
        "kv",
        "put",
        "-s",
        s,
        "--data-dir",
        d,
        "/cli/b",
        "two",
    ]));
    let got = json(keel(&[
        "kv",
        "get",
        "-s",
        s,
        "--data-dir",
        d,
        "--prefix",
        "/cli/",
    ]));
    assert_eq!(got.len(), 2);
    assert_eq!(got[1]["value"], "two");
    // A conditional put with a stale revision is a conflict and a non-zero exit.
    let out = keel(&[
        "kv",
        "put",
        "-s",
        s,
        "--data-dir",
        d,
        "/cli/a",
        "x",
        "--if-revision",
        "999999",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflict"));
    let old = json(keel(&[
        "kv",
        "get",
        "-s",
        s,
        "--data-dir",
        d,
        "/cli/a",
        "--rev",
        &first,
    ]));
    assert_eq!(old[0]["value"], "one");
    let del = json(keel(&[
        "kv",
        "del",
        "-s",
        s,
        "--data-dir",
        d,
        "--prefix",
        "/cli/",
    ]));
    assert_eq!(del[0]["deleted"], 2);
    let watch = keel_e2e::keel_lines(
        &[
            "kv",
            "watch",
            "-s",
            s,
            "--data-dir",
            d,
            "--prefix",
            "/cli/",
            "--rev",
            &first,
        ],
        4,
        WAIT,
    );
    let types: Vec<String> = watch
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types, ["PUT", "PUT", "DELETE", "DELETE"]);
    let status: serde_json::Value =
        serde_json::from_slice(&keel(&["cluster", "status", "-s", s, "--data-dir", d]).stdout)
            .unwrap();
    assert_eq!(status["servers"][0]["role"], "Leader");
    // No server at the address: one clear line, non-zero exit.
    let out = keel(&["kv", "get", "-s", "127.0.0.1:1", "/x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach server at 127.0.0.1:1"), "{err}");
}
