//! Model test through Raft: random interleavings of puts, deletes and compactions, proposed
//! to a real one-server cluster, leave the same state as a plain in-memory model — before
//! and after the server restarts from its disk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use keel_apiserver::raft::{Consistency, Server, ServerConfig, Tuning};
use keel_apiserver::store::{KeyRange, RangeRequest, Txn};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    DeletePrefix(u8),
    Compact(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..10, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..10).prop_map(Step::Delete),
        1 => (0u8..3).prop_map(Step::DeletePrefix),
        1 => any::<u8>().prop_map(Step::Compact),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("/{}/{k}", k % 3).into_bytes()
}

/// Key to (value, create_revision, mod_revision, version), at every revision.
type State = BTreeMap<Vec<u8>, (Vec<u8>, u64, u64, u64)>;

fn config(dir: &std::path::Path, addr: SocketAddr) -> ServerConfig {
    ServerConfig {
        data_dir: dir.to_path_buf(),
        node_id: None,
        raft_listen: addr,
        advertise: None,
        join: None,
        tls: None,
        tuning: Tuning {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(200), Duration::from_millis(400)),
            // Snapshots and log purges happen within a case, so restarts exercise them too.
            snapshot_after_logs: 25,
            logs_kept_after_snapshot: 3,
            ..Tuning::default()
        },
    }
}

async fn read_all(server: &Server, revision: Option<u64>) -> State {
    let resp = server
        .range(
            RangeRequest {
                range: Some(KeyRange::Prefix(vec![])),
                revision,
                ..RangeRequest::default()
            },
            Consistency::Linearizable,
        )
        .await
        .unwrap();
    resp.kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                (kv.value, kv.create_revision, kv.mod_revision, kv.version),
            )
        })
        .collect()
}

async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = Server::start(config(dir.path(), addr)).await.unwrap();
    server
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();

    let mut states: Vec<State> = vec![State::new()];
    let mut compacted = 0u64;
    for st in &steps {
        let mut next = states.last().unwrap().clone();
        let rev = states.len() as u64;
        let changed = match st {
            Step::Put(k, v) => {
                server
                    .txn(Txn::put(key(*k), vec![*v]))
                    .await
                    .unwrap()
                    .unwrap();
                let (create, version) = next.get(&key(*k)).map_or((rev, 1), |p| (p.1, p.3 + 1));
                next.insert(key(*k), (vec![*v], create, rev, version));
                true
            }
            Step::Delete(k) => {
                server
                    .txn(Txn::delete(KeyRange::Key(key(*k))))
                    .await
                    .unwrap()
                    .unwrap();
                next.remove(&key(*k)).is_some()
            }
            Step::DeletePrefix(p) => {
                let prefix = format!("/{p}/").into_bytes();
                server
                    .txn(Txn::delete(KeyRange::Prefix(prefix.clone())))
                    .await
                    .unwrap()
                    .unwrap();
                let before = next.len();
                next.retain(|k, _| !k.starts_with(&prefix));
                next.len() != before
            }
            Step::Compact(x) => {
                let target = u64::from(*x) % states.len() as u64;
                let result = server.compact(target).await.unwrap();
                prop_assert_eq!(result.is_ok(), target > compacted, "compact to {}", target);
                compacted = compacted.max(target);
                false
            }
        };
        if changed {
            states.push(next);
        }
    }
    let current = states.len() as u64 - 1;
    let check = |server: Server, states: Vec<State>| async move {
        prop_assert_eq!(server.store().revisions().current, current);
        for rev in compacted.max(1)..=current {
            let got = read_all(&server, Some(rev)).await;
            prop_assert_eq!(&got, &states[rev as usize], "at revision {}", rev);
        }
        prop_assert_eq!(&read_all(&server, None).await, states.last().unwrap());
        Ok(())
    };
    check(server.clone(), states.clone()).await?;

    // Restart from disk: the state machine's unsynced commits come back from the Raft log.
    server.shutdown().await;
    drop(server);
    let server = Server::start(config(dir.path(), addr)).await.unwrap();
    server
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let applied = server.status().last_log_index.unwrap_or(0);
    server
        .wait_applied(applied, Duration::from_secs(10))
        .await
        .unwrap();
    check(server.clone(), states).await?;
    server.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_through_raft_match_the_model(steps in prop::collection::vec(step(), 1..80)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(steps))?;
    }
}
