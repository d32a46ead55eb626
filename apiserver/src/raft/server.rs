//! [`Server`]: one running server of a Keel cluster — its data dir, its Raft node, its gRPC
//! services, and the ways in for writes, reads, watches and membership changes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_schemas::datadir::ServerDir;
use openraft::ServerState;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use uuid::Uuid;

use super::codec::MAX_MESSAGE;
use super::error::ClusterError;
use super::log_store::{Identity, LogStore};
use super::network::{Network, PeerTls, Peers};
use super::proposer::Proposer;
use super::proto::cluster_server::ClusterServer;
use super::proto::raft_server::RaftServer;
use super::read_index::ReadIndex;
use super::server_core::{Core, stopped};
use super::service::{ClusterService, RaftService};
use super::state_machine::{SnapshotDir, StateMachine};
use super::tuning::Tuning;
use super::types::{Command, CommandResult, Consistency, Member, Raft};
use super::wire::{JoinCall, MemberStatus, StatusReply};
use keel_store::{
    CompactError, RangeRequest, RangeResponse, Store, StoreError, StoreOptions, Txn, TxnError,
    TxnResponse, Watch, WatchRequest,
};

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the server keeps its data (created if missing).
    pub data_dir: PathBuf,
    /// The node id to use; on an existing data dir it must match the stored one. A new
    /// cluster's first server defaults to 1; a joining server without one gets the next free id.
    pub node_id: Option<u64>,
    /// Where the Raft and cluster gRPC services listen (port 0 picks a free port).
    pub raft_listen: SocketAddr,
    /// The address other servers reach this one at; defaults to the bound address (with
    /// 127.0.0.1 for an unspecified IP, which only suits a single machine).
    pub advertise: Option<String>,
    /// The Raft address of a server of the cluster to join. Ignored once this data dir has
    /// joined.
    pub join: Option<String>,
    /// Mutual TLS between servers; `None` for plain gRPC (tests, benchmarks on one machine).
    pub tls: Option<PeerTls>,
    /// Timings and limits.
    pub tuning: Tuning,
}

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data dir could not be created or read.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A store file could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--node-id` differs from the id this data dir was created with.
    #[error(
        "data dir {data_dir} belongs to node {stored} of cluster {cluster_id}, not node {configured}: \
         drop --node-id, or use another data dir"
    )]
    NodeIdMismatch {
        /// The data dir.
        data_dir: PathBuf,
        /// The id it holds.
        stored: u64,
        /// The id asked for.
        configured: u64,
        /// Its cluster.
        cluster_id: Uuid,
    },
    /// A join was started in this data dir and never finished.
    #[error(
        "data dir {data_dir} holds an unfinished join to cluster {cluster_id}: start again with \
         --join SERVER to finish it, or remove the data dir"
    )]
    UnfinishedJoin {
        /// The data dir.
        data_dir: PathBuf,
        /// The cluster it was joining.
        cluster_id: Uuid,
    },
    /// The cluster refused the join or could not be reached.
    #[error("cannot join the cluster through {addr}: {source}")]
    Join {
        /// The server contacted.
        addr: String,
        /// Why.
        #[source]
        source: ClusterError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// openraft refused to start.
    #[error("raft: {reason}")]
    Raft {
        /// Why.
        reason: String,
    },
}

/// The term of the vote on disk and the last index of the log, read before Raft starts.
async fn restart_fence(log: &LogStore) -> Option<(u64, u64)> {
    use openraft::storage::RaftLogStorage;
    let mut log = log.clone();
    let vote = log.read_vote().await.ok().flatten()?;
    let last = log.get_log_state().await.ok()?.last_log_id?;
    Some((vote.leader_id().term, last.index))
}

/// One running server. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    core: Arc<Core>,
    proposer: Proposer,
    reads: ReadIndex,
    shutdown: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    grpc: std::sync::Mutex<Option<JoinHandle<()>>>,
}

// === impl Server ===

impl Server {
    /// Starts a server: opens (or creates) its data dir, starts Raft and the gRPC services,
    /// and then starts a new cluster, rejoins its cluster, or joins the one at `join`.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let (log, store, snapshots) = open_data_dir(&config.data_dir).await?;
        let (listener, raft_addr) = bind(&config).await?;
        let peers = Arc::new(Peers::new(
            config.tuning.connect_timeout,
            config.tls.clone(),
        ));
        let identity = resolve_identity(&config, &log, &peers, &raft_addr).await?;
        let network = Network {
            peers: peers.clone(),
            cluster_id: identity.cluster_id,
        };
        let restart_fence = restart_fence(&log).await;
        let sm = StateMachine::new(
            store.clone(),
            snapshots.clone(),
            config.tuning.sync_interval,
        );
        let raft = Raft::new(
            identity.node_id,
            Arc::new(config.tuning.raft_config().map_err(|e| ServerError::Raft {
                reason: format!("invalid raft settings: {e}"),
            })?),
            network,
            log.clone(),
            sm,
        )
        .await
        .map_err(|e| ServerError::Raft {
            reason: e.to_string(),
        })?;
        let core = Arc::new(Core {
            node_id: identity.node_id,
            cluster_id: identity.cluster_id,
            raft_addr,
            raft,
            store,
            peers,
            tuning: config.tuning.clone(),
            snapshots,
            log,
            membership_lock: tokio::sync::Mutex::new(()),
            pending_joins: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            restart_fence,
        });
        let server = Server::run(core, listener, config.tls.clone())?;
        if let Err(e) = server.become_member(&config, &identity).await {
            server.shutdown().await;
            return Err(e);
        }
        tracing::info!(node = identity.node_id, addr = %server.raft_addr(), "server running");
        Ok(server)
    }

    /// Starts the background tasks and the gRPC services around a started Raft node.
    fn run(
        core: Arc<Core>,
        listener: tokio::net::TcpListener,
        tls: Option<PeerTls>,
    ) -> Result<Server, ServerError> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (proposer, proposer_task) = Proposer::start(core.clone(), shutdown_rx.clone());
        let (reads, reads_task) = ReadIndex::start(core.clone(), shutdown_rx.clone());
        let server = Server {
            shared: Arc::new(Shared {
                core,
                proposer,
                reads,
                shutdown,
                tasks: std::sync::Mutex::new(vec![proposer_task, reads_task]),
                grpc: std::sync::Mutex::new(None),
            }),
        };
        server.serve(listener, shutdown_rx.clone(), tls)?;
        server.spawn(compaction_loop(server.clone(), shutdown_rx));
        Ok(server)
    }

    /// Starts the cluster (the first server, once) or finishes joining it.
    async fn become_member(
        &self,
        config: &ServerConfig,
        identity: &Identity,
    ) -> Result<(), ServerError> {
        let core = &self.shared.core;
        if identity.bootstrap && !core.raft.is_initialized().await.unwrap_or(true) {
            let member = Member {
                raft_addr: core.raft_addr.clone(),
            };
            core.raft
                .initialize(std::collections::BTreeMap::from([(
                    identity.node_id,
                    member,
                )]))
                .await
                .map_err(|e| ServerError::Raft {
                    reason: format!("cannot initialize the cluster: {e}"),
                })?;
            tracing::info!(node = identity.node_id, cluster = %identity.cluster_id, "started a new cluster");
        }
        if !identity.joined {
            let join_addr = config.join.clone().unwrap_or_default();
            self.finish_join(&join_addr, identity).await?;
        }
        Ok(())
    }

    /// Asks the cluster to add this (running) server as a voter, and records that it did.
    async fn finish_join(&self, addr: &str, identity: &Identity) -> Result<(), ServerError> {
        let core = &self.shared.core;
        let call = super::wire::AddServerCall {
            cluster_id: identity.cluster_id,
            node_id: identity.node_id,
            raft_addr: core.raft_addr.clone(),
            forwarded: false,
        };
        let patience = core.tuning.join_timeout + core.tuning.request_timeout;
        retry_join(addr, core.tuning.request_timeout, || async {
            let mut client = core.peers.cluster(addr)?;
            let mut req = tonic::Request::new(call.clone());
            req.set_timeout(patience);
            client
                .add_server(req)
                .await
                .map(drop)
                .map_err(|status| ClusterError::from_status(&status, addr))
        })
        .await?;
        let joined = Identity {
            joined: true,
            ..identity.clone()
        };
        core.log.save_identity(&joined)?;
        tracing::info!(node = identity.node_id, cluster = %identity.cluster_id, via = addr, "joined the cluster");
        Ok(())
    }

    fn serve(
        &self,
        listener: tokio::net::TcpListener,
        mut shutdown: watch::Receiver<bool>,
        tls: Option<PeerTls>,
    ) -> Result<(), ServerError> {
        let mut builder = tonic::transport::Server::builder();
        let peers_only = tls.is_some();
        if let Some(tls) = tls {
            // Mutual TLS: only servers with a certificate of this cluster's CA get in.
            let config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(
                    &tls.cert_pem,
                    &tls.key_pem,
                ))
                .client_ca_root(tonic::transport::Certificate::from_pem(&tls.ca_pem));
            builder = builder.tls_config(config).map_err(|e| ServerError::Raft {
                reason: format!("TLS settings of the Raft transport: {e}"),
            })?;
        }
        let core = self.shared.core.clone();
        let raft = RaftServer::new(RaftService { core: core.clone() })
            .max_decoding_message_size(MAX_MESSAGE as usize)
            .max_encoding_message_size(MAX_MESSAGE as usize);
        let cluster = ClusterServer::new(ClusterService {
            server: self.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE as usize)
        .max_encoding_message_size(MAX_MESSAGE as usize);
        // The CA also signs the certificates of users, nodes and controllers: only a server's
        // own (the one naming PEER_NAME) may speak Raft or the cluster service.
        let check = move |req: tonic::Request<()>| {
            if !peers_only || req.peer_certs().is_some_and(|c| names_peer(&c)) {
                Ok(req)
            } else {
                Err(tonic::Status::permission_denied(
                    "only the cluster's servers may use the Raft port",
                ))
            }
        };
        let raft = tonic::service::interceptor::InterceptedService::new(raft, check);
        let cluster = tonic::service::interceptor::InterceptedService::new(cluster, check);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            let signal = async move { stopped(&mut shutdown).await };
            let result = builder
                .add_service(raft)
                .add_service(cluster)
                .serve_with_incoming_shutdown(incoming, signal)
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
        *self
            .shared
            .grpc
            .lock()
            .expect("invariant: lock never poisoned") = Some(task);
        Ok(())
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut);
        self.shared
            .tasks
            .lock()
            .expect("invariant: lock never poisoned")
            .push(handle);
    }

    /// This server's node id.
    pub fn node_id(&self) -> u64 {
        self.shared.core.node_id
    }

    /// The id of this server's cluster.
    pub fn cluster_id(&self) -> Uuid {
        self.shared.core.cluster_id
    }

    /// The address other servers reach this one at.
    pub fn raft_addr(&self) -> &str {
        &self.shared.core.raft_addr
    }

    /// The local store (reads from it are serializable; use [`Server::range`] for
    /// linearizable ones).
    pub fn store(&self) -> &Store {
        &self.shared.core.store
    }

    /// Commits a transaction through Raft and returns its outcome. A refused transaction (a
    /// duplicate key) is an `Ok(Err(..))`, like a failed compare is an unsucceeded response.
    pub async fn txn(&self, txn: Txn) -> Result<Result<TxnResponse, TxnError>, ClusterError> {
        match self.propose(vec![Command::Txn(txn)]).await?.pop() {
            Some(CommandResult::Txn(result)) => Ok(result),
            other => Err(ClusterError::Other {
                reason: format!("a transaction was answered with {other:?}"),
            }),
        }
    }

    /// Compacts history before `revision` on every server.
    pub async fn compact(&self, revision: u64) -> Result<Result<(), CompactError>, ClusterError> {
        match self
            .propose(vec![Command::Compact { revision }])
            .await?
            .pop()
        {
            Some(CommandResult::Compact(result)) => Ok(result),
            other => Err(ClusterError::Other {
                reason: format!("a compaction was answered with {other:?}"),
            }),
        }
    }

    /// Commits commands together and in order (in one Raft entry, batched with other
    /// proposals), one result per command.
    pub async fn propose(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<CommandResult>, ClusterError> {
        self.shared.proposer.propose(commands).await
    }

    /// Reads keys. Linearizable reads see every write acknowledged before they started.
    pub async fn range(
        &self,
        req: RangeRequest,
        consistency: Consistency,
    ) -> Result<RangeResponse, ClusterError> {
        if consistency == Consistency::Linearizable {
            let index = self.shared.reads.index().await?;
            self.shared.core.wait_applied(index).await?;
        }
        let store = self.shared.core.store.clone();
        tokio::task::spawn_blocking(move || store.range(&req))
            .await
            .map_err(|e| ClusterError::Other {
                reason: format!("read task failed: {e}"),
            })?
            .map_err(ClusterError::from)
    }

    /// Watches keys on this server's store.
    pub fn watch(&self, req: WatchRequest) -> Result<Watch, ClusterError> {
        Ok(self.shared.core.store.watch(req)?)
    }

    /// Adds a running server to the cluster (as a learner, then as a voter once it caught up).
    pub async fn add_server(&self, node_id: u64, raft_addr: String) -> Result<(), ClusterError> {
        self.shared
            .core
            .add_server(super::wire::AddServerCall {
                cluster_id: self.cluster_id(),
                node_id,
                raft_addr,
                forwarded: false,
            })
            .await
            .map(drop)
    }

    /// Removes a server from the cluster.
    pub async fn remove_server(&self, node_id: u64) -> Result<(), ClusterError> {
        self.shared
            .core
            .remove_server(super::wire::RemoveServerCall {
                node_id,
                forwarded: false,
            })
            .await
            .map(drop)
    }

    /// This server's view of itself and the cluster.
    pub fn status(&self) -> StatusReply {
        self.shared.core.status()
    }

    /// Every member's own view, asked over gRPC (this server answers for itself); a member
    /// that does not answer within `timeout` comes back as its error.
    pub async fn cluster_status(
        &self,
        timeout: Duration,
    ) -> Vec<(u64, MemberStatus, Result<StatusReply, ClusterError>)> {
        let own = self.status();
        let asks = own.members.iter().map(|(id, member)| {
            let (id, member, own) = (*id, member.clone(), own.clone());
            let core = self.shared.core.clone();
            async move {
                if id == own.node_id {
                    return (id, member, Ok(own));
                }
                let ask = async {
                    let mut client = core.peers.cluster(&member.raft_addr)?;
                    client
                        .status(super::wire::StatusCall {})
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| ClusterError::from_status(&s, &member.raft_addr))
                };
                let result = tokio::time::timeout(timeout, ask)
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClusterError::Timeout {
                            what: format!("status of server {id}"),
                            millis: timeout.as_millis() as u64,
                        })
                    });
                (id, member, result)
            }
        });
        futures::future::join_all(asks).await
    }

    /// Waits until some server is leader, for at most `timeout`; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ClusterError> {
        let m = self
            .shared
            .core
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| ClusterError::NoLeader {
                reason: e.to_string(),
            })?;
        m.current_leader.ok_or_else(|| ClusterError::NoLeader {
            reason: "no leader".into(),
        })
    }

    /// Waits until this server has applied at least `index`, for at most `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ClusterError> {
        self.shared
            .core
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(drop)
            .map_err(|e| ClusterError::Timeout {
                what: format!("applying up to {index}: {e}"),
                millis: timeout.as_millis() as u64,
            })
    }

    /// Builds a snapshot now (normally it happens every `snapshot_after_logs` entries).
    pub async fn trigger_snapshot(&self) -> Result<(), ClusterError> {
        self.shared
            .core
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|_| ClusterError::ShuttingDown)
    }

    /// Resolves if Raft stops by itself (a storage failure, say), with the reason; the server
    /// cannot serve after that and should be restarted once the cause is fixed.
    pub async fn failed(&self) -> String {
        let result = self
            .shared
            .core
            .raft
            .wait(None)
            .metrics(|m| m.running_state.is_err(), "raft failure")
            .await;
        match result {
            Ok(m) => match &m.running_state {
                Err(fatal) => fatal.to_string(),
                Ok(()) => "raft stopped".into(),
            },
            Err(e) => format!("raft stopped: {e}"),
        }
    }

    /// Stops the server: Raft, the gRPC services and the background tasks. The data dir can
    /// be opened again once this returns.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        let _ = shared.shutdown.send(true);
        if let Err(e) = shared.core.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        if let Err(e) = shared.core.log.flush().await {
            tracing::warn!(error = %e, "the raft log did not flush");
        }
        // openraft does not wait for its state-machine worker, nor for a snapshot being built;
        // both hold the store (and the snapshot dir) until they end.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (Arc::strong_count(&shared.core.snapshots) > 1 || shared.core.log.handles() > 1)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Not needed for safety (the log has everything), but a clean stop restarts faster.
        let store = shared.core.store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.sync()).await {
            tracing::warn!(error = %e, "the state did not sync");
        }
        let grpc = shared
            .grpc
            .lock()
            .expect("invariant: lock never poisoned")
            .take();
        if let Some(grpc) = grpc {
            // Streams (watches) end on the shutdown signal; do not wait forever for clients.
            let abort = grpc.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), grpc)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let tasks: Vec<_> = shared
            .tasks
            .lock()
            .expect("invariant: lock never poisoned")
            .drain(..)
            .collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        tracing::info!(node = shared.core.node_id, "server stopped");
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.shared.core
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.subscribe()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("node_id", &self.node_id())
            .field("raft_addr", &self.raft_addr())
            .finish()
    }
}

/// Opens (or creates) the data dir: the Raft log, the state, and the snapshots — refilling a
/// removed state file from the current snapshot.
async fn open_data_dir(
    data_dir: &Path,
) -> Result<(LogStore, Store, Arc<SnapshotDir>), ServerError> {
    std::fs::create_dir_all(data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let dir = ServerDir::new(data_dir);
    let log = LogStore::open(&dir.raft_log())?;
    let store = Store::open(dir.state(), StoreOptions::default())?;
    let snapshot_dir = dir.snapshots();
    let snapshots =
        Arc::new(
            SnapshotDir::open(&snapshot_dir).map_err(|source| ServerError::DataDir {
                path: snapshot_dir,
                source,
            })?,
        );
    super::state_machine::recover(&store, &snapshots)
        .await
        .map_err(|e| ServerError::Raft {
            reason: format!("cannot rebuild the state from the snapshot: {e}"),
        })?;
    Ok((log, store, snapshots))
}

/// Binds the listen address and works out the address other servers are to use.
async fn bind(config: &ServerConfig) -> Result<(tokio::net::TcpListener, String), ServerError> {
    let listen_err = |source| ServerError::Listen {
        addr: config.raft_listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.raft_listen)
        .await
        .map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    let raft_addr = config.advertise.clone().unwrap_or_else(|| {
        let ip = if bound.ip().is_unspecified() {
            tracing::warn!(
                listen = %bound,
                "no --advertise address: other servers are told 127.0.0.1, which only works \
                 when every server runs on this machine"
            );
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            bound.ip()
        };
        SocketAddr::new(ip, bound.port()).to_string()
    });
    Ok((listener, raft_addr))
}

/// Decides who this server is: the identity in its data dir, a new cluster's first server, or
/// a new member of the cluster at `config.join`.
async fn resolve_identity(
    config: &ServerConfig,
    log: &LogStore,
    peers: &Peers,
    raft_addr: &str,
) -> Result<Identity, ServerError> {
    let data_dir = &config.data_dir;
    if let Some(identity) = log.identity()? {
        if let Some(configured) = config.node_id.filter(|&id| id != identity.node_id) {
            return Err(ServerError::NodeIdMismatch {
                data_dir: data_dir.clone(),
                stored: identity.node_id,
                configured,
                cluster_id: identity.cluster_id,
            });
        }
        if !identity.joined && config.join.is_none() {
            return Err(ServerError::UnfinishedJoin {
                data_dir: data_dir.clone(),
                cluster_id: identity.cluster_id,
            });
        }
        if let (true, Some(addr)) = (identity.joined, &config.join) {
            verify_cluster(addr, peers, config, raft_addr, &identity).await?;
        }
        return Ok(identity);
    }
    let identity = match &config.join {
        None => Identity {
            cluster_id: Uuid::new_v4(),
            node_id: config.node_id.unwrap_or(1),
            bootstrap: true,
            joined: true,
        },
        Some(addr) => {
            let reply = ask_to_join(addr, peers, config, raft_addr).await?;
            Identity {
                cluster_id: reply.cluster_id,
                node_id: reply.node_id,
                bootstrap: false,
                joined: false,
            }
        }
    };
    log.save_identity(&identity)?;
    Ok(identity)
}

/// Checks that a member restarted with `--join` points at its own cluster. A server that
/// cannot be reached is no reason to stay down (it may be the one that is down); a server of
/// another cluster is.
async fn verify_cluster(
    addr: &str,
    peers: &Peers,
    config: &ServerConfig,
    raft_addr: &str,
    identity: &Identity,
) -> Result<(), ServerError> {
    let call = JoinCall {
        cluster_id: Some(identity.cluster_id),
        node_id: Some(identity.node_id),
        raft_addr: raft_addr.to_string(),
        forwarded: false,
    };
    let result = async {
        let mut client = peers.cluster(addr)?;
        let mut req = tonic::Request::new(call);
        req.set_timeout(config.tuning.connect_timeout * 2);
        client
            .join(req)
            .await
            .map(drop)
            .map_err(|s| ClusterError::from_status(&s, addr))
    }
    .await;
    match result {
        Err(source @ ClusterError::JoinRefused { .. }) => Err(ServerError::Join {
            addr: addr.to_string(),
            source,
        }),
        Err(e) => {
            tracing::info!(error = %e, "already a member; could not check --join, starting anyway");
            Ok(())
        }
        Ok(()) => {
            tracing::info!(data_dir = %config.data_dir.display(), "already a member of this cluster: --join is not needed");
            Ok(())
        }
    }
}

async fn ask_to_join(
    addr: &str,
    peers: &Peers,
    config: &ServerConfig,
    raft_addr: &str,
) -> Result<super::wire::JoinReply, ServerError> {
    let call = JoinCall {
        cluster_id: None,
        node_id: config.node_id,
        raft_addr: raft_addr.to_string(),
        forwarded: false,
    };
    retry_join(addr, config.tuning.request_timeout, || async {
        let mut client = peers.cluster(addr)?;
        let mut req = tonic::Request::new(call.clone());
        req.set_timeout(config.tuning.request_timeout);
        client
            .join(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| ClusterError::from_status(&status, addr))
    })
    .await
}

/// Runs a join step against the server at `addr`, again while the cluster has no leader to
/// answer it (an election in progress), until `patience` runs out. A join server that cannot
/// be reached fails at once.
async fn retry_join<T, F, Fut>(
    addr: &str,
    patience: Duration,
    mut step: F,
) -> Result<T, ServerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let deadline = Instant::now() + patience;
    loop {
        let err = match step().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let leaderless = match &err {
            ClusterError::NoLeader { .. } | ClusterError::NotLeader { .. } => true,
            ClusterError::Unreachable { addr: other, .. } => other != addr,
            _ => false,
        };
        if !leaderless || Instant::now() >= deadline {
            return Err(ServerError::Join {
                addr: addr.to_string(),
                source: err,
            });
        }
        tracing::info!(error = %err, "the cluster cannot take the join yet; retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Compacts history older than `history_revisions` from time to time, on the leader.
async fn compaction_loop(server: Server, mut shutdown: watch::Receiver<bool>) {
    let core = server.core().clone();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(core.tuning.compaction_interval) => {}
        }
        if core.raft.metrics().borrow().state != ServerState::Leader {
            continue;
        }
        let revs = core.store.revisions();
        let target = revs.current.saturating_sub(core.tuning.history_revisions);
        if target <= revs.compacted {
            continue;
        }
        match server.compact(target).await {
            Ok(Ok(())) => tracing::info!(revision = target, "compacted history"),
            Ok(Err(e)) => tracing::debug!(error = %e, "compaction skipped"),
            Err(e) => tracing::warn!(error = %e, "compaction failed"),
        }
    }
}

/// Whether a peer's certificate (the first of its chain) is a server's: it names
/// [`super::PEER_NAME`] among its DNS names, which no client certificate the CA signs does.
fn names_peer(chain: &[rustls_pki_types::CertificateDer<'static>]) -> bool {
    let Some(first) = chain.first() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(first) else {
        return false;
    };
    let Ok(Some(names)) = cert.subject_alternative_name() else {
        return false;
    };
    names.value.general_names.iter().any(
        |n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == super::PEER_NAME),
    )
}
