//! Cluster tests: several servers in this process, talking real gRPC over loopback, each with
//! its own data dir on disk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_apiserver::raft::{
    Client, ClusterError, Consistency, RaftRole, Server, ServerConfig, ServerError, Tuning,
};
use keel_apiserver::store::{EventKind, KeyRange, RangeRequest, Txn, WatchRequest};
use keel_schemas::datadir::ServerDir;

const WAIT: Duration = Duration::from_secs(20);

fn tuning() -> Tuning {
    Tuning {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        join_timeout: Duration::from_secs(5),
        ..Tuning::default()
    }
}

/// One server's fixed place: data dir and address survive restarts.
struct Slot {
    dir: PathBuf,
    addr: SocketAddr,
}

impl Slot {
    fn new(root: &Path, name: &str) -> Slot {
        Slot {
            dir: root.join(name),
            addr: SocketAddr::from(([127, 0, 0, 1], keel_e2e::free_port())),
        }
    }

    fn config(&self, join: Option<&Slot>, tuning: Tuning) -> ServerConfig {
        ServerConfig {
            data_dir: self.dir.clone(),
            node_id: None,
            raft_listen: self.addr,
            advertise: None,
            join: join.map(|s| s.addr.to_string()),
            tls: None,
            tuning,
        }
    }

    async fn start(&self, join: Option<&Slot>, tuning: Tuning) -> Server {
        Server::start(self.config(join, tuning)).await.unwrap()
    }
}

/// Starts a cluster of `n` servers: the first starts it, the others join through it.
async fn cluster(root: &Path, n: usize, tuning: Tuning) -> (Vec<Slot>, Vec<Server>) {
    let slots: Vec<Slot> = (0..n).map(|i| Slot::new(root, &format!("s{i}"))).collect();
    let mut servers = vec![slots[0].start(None, tuning.clone()).await];
    for slot in &slots[1..] {
        servers.push(slot.start(Some(&slots[0]), tuning.clone()).await);
    }
    (slots, servers)
}

async fn put(server: &Server, key: &str, value: &str) -> u64 {
    server
        .txn(Txn::put(key, value))
        .await
        .unwrap()
        .unwrap()
        .revision
}

async fn get(server: &Server, key: &str, consistency: Consistency) -> Option<String> {
    let resp = server
        .range(
            RangeRequest {
                range: Some(KeyRange::Key(key.into())),
                ..RangeRequest::default()
            },
            consistency,
        )
        .await
        .unwrap();
    resp.kvs
        .into_iter()
        .next()
        .map(|kv| String::from_utf8(kv.value).unwrap())
}

async fn all_keys(server: &Server) -> BTreeMap<String, String> {
    let resp = server
        .range(
            RangeRequest {
                range: Some(KeyRange::Prefix(vec![])),
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
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
            )
        })
        .collect()
}

async fn leader_of(servers: &[Server]) -> usize {
    let id = servers[0].wait_for_leader(WAIT).await.unwrap();
    servers.iter().position(|s| s.node_id() == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_replicate_forward_and_survive_the_leader() {
    let root = tempfile::tempdir().unwrap();
    let (slots, mut servers) = cluster(root.path(), 3, tuning()).await;
    let status = servers[0].status();
    assert_eq!(status.members.len(), 3);
    assert!(status.members.values().all(|m| m.voter), "{status:?}");

    // A write on any server, followers included, is readable on every server.
    for (i, server) in servers.iter().enumerate() {
        put(server, &format!("/k/{i}"), &format!("from-{i}")).await;
    }
    for server in &servers {
        for i in 0..3 {
            assert_eq!(
                get(server, &format!("/k/{i}"), Consistency::Linearizable).await,
                Some(format!("from-{i}"))
            );
        }
    }

    // A watch on a follower sees writes made through the leader.
    let leader = leader_of(&servers).await;
    let follower = (leader + 1) % 3;
    let mut watch = servers[follower]
        .watch(WatchRequest {
            range: KeyRange::Prefix(b"/w/".to_vec()),
            start_revision: 0,
            prev_kv: false,
        })
        .unwrap();
    put(&servers[leader], "/w/1", "seen").await;
    let events = tokio::time::timeout(WAIT, watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(events[0].kv.value, b"seen");

    // Stop the leader: the others elect a new one and take writes again.
    let old = servers.remove(leader);
    let old_id = old.node_id();
    old.shutdown().await;
    drop(old);
    let new_leader = servers[0].wait_for_leader(WAIT).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while servers[0].status().leader == Some(old_id) {
        assert!(tokio::time::Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(new_leader, 0);
    for server in &servers {
        put(server, &format!("/after/{}", server.node_id()), "ok").await;
    }
    for server in &servers {
        let keys = all_keys(server).await;
        assert_eq!(keys.len(), 6, "{keys:?}");
    }

    // The old leader comes back from its disk and catches up.
    let back = slots[leader].start(None, tuning()).await;
    let target = servers[0].status().applied_index.unwrap();
    back.wait_applied(target, WAIT).await.unwrap();
    assert_eq!(all_keys(&back).await.len(), 6);
    assert!(
        get(&back, "/after/2", Consistency::Serializable)
            .await
            .is_some()
            || get(&back, "/after/1", Consistency::Serializable)
                .await
                .is_some()
    );
    for s in servers.iter().chain([&back]) {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_a_restart_of_every_server() {
    let root = tempfile::tempdir().unwrap();
    let (slots, servers) = cluster(root.path(), 3, tuning()).await;
    // Concurrent writers through every server.
    let mut tasks = Vec::new();
    for (w, server) in servers.iter().enumerate() {
        for t in 0..4 {
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..40 {
                    let key = format!("/acked/{w}/{t}/{i}");
                    let resp = server
                        .txn(Txn::put(key.clone(), "v"))
                        .await
                        .unwrap()
                        .unwrap();
                    acked.push((key, resp.revision));
                }
                acked
            }));
        }
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let revision = servers[0].store().revisions().current.max(1);
    for s in &servers {
        s.shutdown().await;
    }
    drop(servers);

    let mut restarted = Vec::new();
    for slot in &slots {
        restarted.push(slot.start(None, tuning()).await);
    }
    leader_of(&restarted).await;
    for server in &restarted {
        let keys = all_keys(server).await;
        for (key, _) in &acked {
            assert!(keys.contains_key(key), "lost acknowledged write {key}");
        }
        assert!(server.store().revisions().current >= revision);
    }
    // Revisions were handed out once each.
    let mut revs: Vec<u64> = acked.iter().map(|(_, r)| *r).collect();
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), acked.len());
    for s in &restarted {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_server_catches_up_by_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let small_log = Tuning {
        snapshot_after_logs: 40,
        logs_kept_after_snapshot: 5,
        ..tuning()
    };
    let (slots, mut servers) = cluster(root.path(), 3, small_log.clone()).await;
    let leader = leader_of(&servers).await;
    let lagging = (leader + 1) % 3;
    let gone = servers.remove(lagging);
    gone.shutdown().await;
    drop(gone);
    let live = servers
        .iter()
        .find(|s| s.status().role == RaftRole::Leader)
        .unwrap()
        .clone();
    for i in 0..300 {
        put(&live, &format!("/snap/{i:03}"), &i.to_string()).await;
    }
    // The leader has compacted its log past what the lagging server has.
    let deadline = tokio::time::Instant::now() + WAIT;
    while live.status().purged_index.unwrap_or(0) < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader never purged its log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = slots[lagging].start(None, small_log).await;
    let target = live.status().applied_index.unwrap();
    back.wait_applied(target, WAIT).await.unwrap();
    let status = back.status();
    assert!(
        status.snapshots_installed >= 1,
        "caught up without a snapshot: {status:?}"
    );
    assert_eq!(all_keys(&back).await, all_keys(&live).await);
    // Past revisions and watches work on the server that got a snapshot.
    let revs = back.store().revisions();
    assert_eq!(revs, live.store().revisions());
    let mut watch = back
        .watch(WatchRequest {
            range: KeyRange::Prefix(b"/snap/".to_vec()),
            start_revision: revs.current - 2,
            prev_kv: true,
        })
        .unwrap();
    let events = tokio::time::timeout(WAIT, watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(events.len(), 3);
    for s in servers.iter().chain([&back]) {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_are_added_and_removed_while_the_cluster_runs() {
    let root = tempfile::tempdir().unwrap();
    let (slots, servers) = cluster(root.path(), 2, tuning()).await;
    for i in 0..50 {
        put(&servers[i % 2], &format!("/m/{i}"), "x").await;
    }
    // A third server joins through a follower, catches up and votes.
    let leader = leader_of(&servers).await;
    let via = &slots[(leader + 1) % 2];
    let third = Slot::new(root.path(), "s2");
    let s3 = third.start(Some(via), tuning()).await;
    assert_eq!(s3.node_id(), 3);
    let status = servers[leader].status();
    assert!(status.members[&3].voter, "{status:?}");
    assert_eq!(all_keys(&s3).await.len(), 50);

    // Remove it again; the other two keep working.
    let client = Client::connect(&slots[0].addr.to_string(), WAIT)
        .await
        .unwrap();
    client.remove_server(3).await.unwrap();
    assert!(!servers[0].status().members.contains_key(&3));
    put(&servers[0], "/m/after", "x").await;
    assert_eq!(all_keys(&servers[1]).await.len(), 51);
    // The last voter cannot be removed; an unknown server neither.
    let err = client.remove_server(42).await.unwrap_err();
    assert!(err.to_string().contains("no server 42"), "{err}");
    s3.shutdown().await;
    for s in &servers {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_through_a_dead_address_fails_fast_with_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let dead = Slot::new(root.path(), "dead");
    let joiner = Slot::new(root.path(), "joiner");
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(WAIT, Server::start(joiner.config(Some(&dead), tuning())))
        .await
        .expect("a join to a dead address must not hang");
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&dead.addr.to_string()), "{msg}");
    assert!(matches!(err, ServerError::Join { .. }), "{err:?}");
    eprintln!(
        "join to a dead address failed after {:?}: {msg}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_the_leader_cannot_reach_is_not_added() {
    let root = tempfile::tempdir().unwrap();
    let quick = Tuning {
        join_timeout: Duration::from_secs(2),
        ..tuning()
    };
    let (slots, servers) = cluster(root.path(), 1, quick.clone()).await;
    for i in 0..20 {
        put(&servers[0], &format!("/x/{i}"), "x").await;
    }
    // The joiner advertises an address where nothing listens: the leader cannot replicate.
    let joiner = Slot::new(root.path(), "joiner");
    let mut config = joiner.config(Some(&slots[0]), quick);
    config.advertise = Some(format!("127.0.0.1:{}", keel_e2e::free_port()));
    let result = tokio::time::timeout(WAIT, Server::start(config))
        .await
        .expect("an unreachable joiner must not hang the join");
    let msg = result.unwrap_err().to_string();
    assert!(msg.contains("did not catch up"), "{msg}");
    let members = servers[0].status().members;
    assert_eq!(members.len(), 1, "the learner was left behind: {members:?}");
    // The cluster still takes writes.
    put(&servers[0], "/x/after", "x").await;
    servers[0].shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_identities_and_data_dirs_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let (slots, servers) = cluster(root.path(), 1, tuning()).await;
    let marker = "damage-me!".repeat(20);
    put(&servers[0], "/marked", &marker).await;

    // A node id that is already taken.
    let taken = Slot::new(root.path(), "taken");
    let mut config = taken.config(Some(&slots[0]), tuning());
    config.node_id = Some(1);
    let msg = Server::start(config).await.unwrap_err().to_string();
    assert!(msg.contains("node id 1 is already taken"), "{msg}");

    // A data dir of another cluster pointed at this one.
    let other = Slot::new(root.path(), "other");
    let foreign = other.start(None, tuning()).await;
    foreign.shutdown().await;
    drop(foreign);
    let msg = Server::start(other.config(Some(&slots[0]), tuning()))
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("belongs to cluster"), "{msg}");

    // A restart with a different --node-id.
    let mut config = other.config(None, tuning());
    config.node_id = Some(7);
    let err = Server::start(config).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServerError::NodeIdMismatch {
                stored: 1,
                configured: 7,
                ..
            }
        ),
        "{err}"
    );

    // A data dir that another running server has open.
    let mut config = slots[0].config(None, tuning());
    config.raft_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let msg = Server::start(config).await.unwrap_err().to_string();
    assert!(msg.contains("another process"), "{msg}");
    servers[0].shutdown().await;
    drop(servers);

    // A damaged Raft log and a damaged state file.
    let data_dir = ServerDir::new(&slots[0].dir);
    for path in [data_dir.raft_log(), data_dir.state()] {
        let file = path.file_name().unwrap().to_str().unwrap();
        let original = std::fs::read(&path).unwrap();
        let mut bytes = original.clone();
        // Damage a page that holds data: where the marked value is.
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
            .unwrap_or_else(|| panic!("the marked value is not in {file}"));
        for b in &mut bytes[at..at + 32] {
            *b ^= 0xa5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let result = Server::start(slots[0].config(None, tuning())).await;
        std::fs::write(&path, &original).unwrap();
        let msg = result.unwrap_err().to_string();
        eprintln!("damaged {file}: {msg}");
        assert!(msg.contains(file) && msg.contains("damaged"), "{msg}");
        std::fs::write(&path, &original[..original.len().min(8192) / 2]).unwrap();
        let msg = Server::start(slots[0].config(None, tuning()))
            .await
            .unwrap_err()
            .to_string();
        eprintln!("truncated {file}: {msg}");
        assert!(msg.contains(file), "{msg}");
        std::fs::write(&path, &original).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_read_linearizably_from_followers_and_follow_watches() {
    let root = tempfile::tempdir().unwrap();
    let (slots, servers) = cluster(root.path(), 3, tuning()).await;
    let leader = leader_of(&servers).await;
    let follower = (leader + 1) % 3;
    let writer = Client::connect(&slots[leader].addr.to_string(), WAIT)
        .await
        .unwrap();
    let reader = Client::connect(&slots[follower].addr.to_string(), WAIT)
        .await
        .unwrap();
    let mut watch = reader
        .watch(WatchRequest {
            range: KeyRange::Prefix(b"/lin/".to_vec()),
            start_revision: 0,
            prev_kv: true,
        })
        .await
        .unwrap();
    // Every write acknowledged by the leader is visible to the next linearizable read on a
    // follower.
    for i in 0..50 {
        let rev = writer
            .txn(Txn::put(format!("/lin/{}", i % 5), i.to_string()))
            .await
            .unwrap()
            .unwrap()
            .revision;
        let resp = reader
            .range(
                RangeRequest {
                    range: Some(KeyRange::Key(format!("/lin/{}", i % 5).into_bytes())),
                    ..RangeRequest::default()
                },
                Consistency::Linearizable,
            )
            .await
            .unwrap();
        assert!(resp.revision >= rev);
        assert_eq!(resp.kvs[0].value, i.to_string().into_bytes());
    }
    let mut seen = 0;
    while seen < 50 {
        let events = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for e in events {
            assert_eq!(e.kv.value, seen.to_string().into_bytes());
            if seen >= 5 {
                assert_eq!(
                    e.prev_kv.unwrap().value,
                    (seen - 5).to_string().into_bytes()
                );
            }
            seen += 1;
        }
    }
    // Compaction is replicated and reported as such to old reads and watches.
    let current = servers[follower].store().revisions().current;
    writer.compact(current - 10).await.unwrap().unwrap();
    let err = reader
        .range(
            RangeRequest {
                range: Some(KeyRange::Prefix(b"/lin/".to_vec())),
                revision: Some(current - 20),
                ..RangeRequest::default()
            },
            Consistency::Linearizable,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Compacted { .. }), "{err:?}");
    let err = match reader
        .watch(WatchRequest {
            range: KeyRange::Prefix(vec![]),
            start_revision: 2,
            prev_kv: false,
        })
        .await
    {
        Ok(mut stream) => stream.next().await.unwrap().unwrap_err(),
        Err(e) => e,
    };
    assert!(matches!(err, ClusterError::Compacted { .. }), "{err:?}");
    for s in &servers {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_state_file_is_rebuilt_from_the_snapshot_and_the_log() {
    let root = tempfile::tempdir().unwrap();
    let small_log = Tuning {
        snapshot_after_logs: 40,
        logs_kept_after_snapshot: 5,
        ..tuning()
    };
    let (slots, servers) = cluster(root.path(), 1, small_log.clone()).await;
    for i in 0..150 {
        put(&servers[0], &format!("/r/{i:03}"), &i.to_string()).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while servers[0].status().purged_index.unwrap_or(0) < 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log was never purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = all_keys(&servers[0]).await;
    let revs = servers[0].store().revisions();
    servers[0].shutdown().await;
    drop(servers);
    std::fs::remove_file(ServerDir::new(&slots[0].dir).state()).unwrap();
    let back = slots[0].start(None, small_log).await;
    back.wait_for_leader(WAIT).await.unwrap();
    assert_eq!(all_keys(&back).await, before);
    assert_eq!(back.store().revisions().current, revs.current);
    back.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_older_than_the_window_is_compacted_on_every_server() {
    let root = tempfile::tempdir().unwrap();
    let short_history = Tuning {
        history_revisions: 20,
        compaction_interval: Duration::from_millis(100),
        ..tuning()
    };
    let (_slots, servers) = cluster(root.path(), 3, short_history).await;
    for i in 0..100 {
        put(&servers[i % 3], &format!("/h/{}", i % 10), &i.to_string()).await;
    }
    for server in &servers {
        let deadline = tokio::time::Instant::now() + WAIT;
        while server.store().revisions().compacted < 80 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no compaction on {server:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let revs = server.store().revisions();
        let old = server
            .range(
                RangeRequest {
                    range: Some(KeyRange::Prefix(b"/h/".to_vec())),
                    revision: Some(revs.compacted - 1),
                    ..RangeRequest::default()
                },
                Consistency::Serializable,
            )
            .await;
        assert!(
            matches!(old, Err(ClusterError::Compacted { .. })),
            "{old:?}"
        );
        // The window itself still reads, and the latest state is whole.
        assert_eq!(all_keys(server).await.len(), 10);
    }
    for s in &servers {
        s.shutdown().await;
    }
}

/// Sends raw bytes as a gRPC message, for malformed-input tests.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_get_a_clear_error_and_change_nothing() {
    use tokio::io::AsyncWriteExt;
    let root = tempfile::tempdir().unwrap();
    let (slots, servers) = cluster(root.path(), 1, tuning()).await;
    put(&servers[0], "/before", "x").await;
    let revision = servers[0].store().revisions().current;

    // Garbage on the TCP port is dropped with the connection.
    let mut tcp = tokio::net::TcpStream::connect(slots[0].addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff garbage")
        .await
        .unwrap();
    drop(tcp);

    // Malformed gRPC messages get InvalidArgument, on the client and on the Raft service.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", slots[0].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for path in [
        "/keel.raft.Cluster/Propose",
        "/keel.raft.Cluster/Range",
        "/keel.raft.Raft/AppendEntries",
        "/keel.raft.Raft/Vote",
    ] {
        for body in [
            vec![],
            vec![0xff; 7],
            vec![0xff; 64],
            b"not bincode at all".to_vec(),
        ] {
            grpc.ready().await.unwrap();
            let status = grpc
                .unary(
                    tonic::Request::new(body.clone()),
                    tonic::codegen::http::uri::PathAndQuery::from_static(path),
                    RawCodec,
                )
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{path} {body:?}: {status:?}"
            );
            assert!(status.message().contains("cannot decode"), "{status:?}");
        }
    }
    // Nothing changed, and the server still serves.
    assert_eq!(servers[0].store().revisions().current, revision);
    put(&servers[0], "/after", "x").await;
    assert_eq!(all_keys(&servers[0]).await.len(), 2);
    servers[0].shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_over_the_size_limit_are_refused_and_proposals_stay_whole() {
    let root = tempfile::tempdir().unwrap();
    let (slots, servers) = cluster(root.path(), 3, tuning()).await;
    let leader = leader_of(&servers).await;
    let follower = Client::connect(&slots[(leader + 1) % 3].addr.to_string(), WAIT)
        .await
        .unwrap();
    // One request over the limit: refused before it reaches the log.
    let limit = tuning().max_request_bytes as usize;
    let err = follower
        .txn(Txn::put("/big", vec![b'x'; limit + 1]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::InvalidRequest { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("larger than the limit"), "{err}");
    assert_eq!(
        get(&servers[leader], "/big", Consistency::Linearizable).await,
        None
    );
    // Just under it: fine, and replicated.
    follower
        .txn(Txn::put("/big", vec![b'x'; limit - 1024]))
        .await
        .unwrap()
        .unwrap();

    // A proposal of several commands is applied together and in order, even while many
    // proposals are batched: its revisions are consecutive.
    let entries_before = servers[leader].status().last_log_index.unwrap();
    let mut tasks = Vec::new();
    for c in 0..16 {
        let client = follower.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let key = format!("/pair/{c}/{i}");
                let results = client
                    .propose(vec![
                        keel_apiserver::raft::Command::Txn(Txn::put(key.clone(), "1")),
                        keel_apiserver::raft::Command::Txn(Txn::put(key, "2")),
                    ])
                    .await
                    .unwrap();
                let revs: Vec<u64> = results
                    .iter()
                    .map(|r| match r {
                        keel_apiserver::raft::CommandResult::Txn(Ok(t)) => t.revision,
                        other => panic!("{other:?}"),
                    })
                    .collect();
                assert_eq!(revs[1], revs[0] + 1, "a proposal was split: {revs:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Group commit: 160 concurrent proposals took fewer Raft entries than proposals.
    let entries = servers[leader].status().last_log_index.unwrap() - entries_before;
    assert!(entries < 160, "{entries} entries for 160 proposals");
    eprintln!("160 proposals from 16 clients took {entries} raft entries");
    let values = all_keys(&servers[leader]).await;
    assert!(
        values
            .iter()
            .filter(|(k, _)| k.starts_with("/pair/"))
            .all(|(_, v)| v == "2")
    );
    for s in &servers {
        s.shutdown().await;
    }
}
