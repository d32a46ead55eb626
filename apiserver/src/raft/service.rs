//! The server side of the transport: the Raft service (peer to peer) and the Cluster service
//! (clients, and servers forwarding to the leader).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::error::ClusterError;
use super::proto::cluster_server::Cluster;
use super::proto::raft_server::Raft;
use super::server::{Core, Server};
use super::wire::{
    AddServerCall, AddServerReply, AppendCall, AppendReply, JoinCall, JoinReply, PeerCall,
    ProposeCall, ProposeReply, RangeCall, RangeReply, ReadIndexCall, ReadIndexReply,
    RemoveServerCall, RemoveServerReply, SnapshotCall, SnapshotReply, StatusCall, StatusReply,
    VoteCall, VoteReply, WatchCall, WatchReply,
};

/// Raft messages from peers, checked to be meant for this server of this cluster.
pub(crate) struct RaftService {
    pub(crate) core: Arc<Core>,
}

/// The replicated store as a service.
pub(crate) struct ClusterService {
    pub(crate) server: Server,
}

// === impl RaftService ===

impl RaftService {
    fn check<T>(&self, call: &PeerCall<T>) -> Result<(), Status> {
        if call.cluster_id != self.core.cluster_id {
            return Err(Status::failed_precondition(format!(
                "this server belongs to cluster {}, the sender to cluster {}",
                self.core.cluster_id, call.cluster_id
            )));
        }
        if call.to != self.core.node_id {
            return Err(Status::failed_precondition(format!(
                "this is server {}, the sender wanted server {} (two servers share an address?)",
                self.core.node_id, call.to
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<AppendCall>,
    ) -> Result<Response<AppendReply>, Status> {
        let call = request.into_inner();
        self.check(&call)?;
        Ok(Response::new(
            self.core.raft.append_entries(call.body).await,
        ))
    }

    async fn vote(&self, request: Request<VoteCall>) -> Result<Response<VoteReply>, Status> {
        let call = request.into_inner();
        self.check(&call)?;
        Ok(Response::new(self.core.raft.vote(call.body).await))
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotCall>,
    ) -> Result<Response<SnapshotReply>, Status> {
        let call = request.into_inner();
        self.check(&call)?;
        Ok(Response::new(
            self.core.raft.install_snapshot(call.body).await,
        ))
    }
}

// === impl ClusterService ===

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn propose(
        &self,
        request: Request<ProposeCall>,
    ) -> Result<Response<ProposeReply>, Status> {
        let call = request.into_inner();
        let core = self.server.core();
        let result = if call.forwarded {
            // From a follower: commit here, or tell it this server no longer leads.
            match core.leader() {
                Some((id, _)) if id == core.node_id => {
                    core.write_local(call.commands, core.tuning.request_timeout)
                        .await
                }
                leader => Err(ClusterError::NotLeader {
                    node_id: core.node_id,
                    leader: leader.map(|(id, _)| id),
                }),
            }
        } else {
            self.server.propose_all(call.commands).await
        };
        result.map(Response::new).map_err(ClusterError::into_status)
    }

    async fn range(&self, request: Request<RangeCall>) -> Result<Response<RangeReply>, Status> {
        let call = request.into_inner();
        self.server
            .range(call.request, call.consistency)
            .await
            .map(Response::new)
            .map_err(ClusterError::into_status)
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexCall>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        let core = self.server.core();
        core.read_index_local(core.tuning.request_timeout)
            .await
            .map(|index| Response::new(ReadIndexReply { index }))
            .map_err(ClusterError::into_status)
    }

    type WatchStream = ReceiverStream<Result<WatchReply, Status>>;

    async fn watch(
        &self,
        request: Request<WatchCall>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut watch = self
            .server
            .watch(request.into_inner())
            .map_err(ClusterError::into_status)?;
        let (tx, rx) = mpsc::channel(16);
        let mut shutdown = self.server.shutdown_signal();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = super::server::stopped(&mut shutdown) => return,
                    next = watch.next() => match next {
                        Ok(events) => {
                            if tx.send(Ok(WatchReply { events })).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(ClusterError::from(e).into_status())).await;
                            return;
                        }
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn join(&self, request: Request<JoinCall>) -> Result<Response<JoinReply>, Status> {
        self.server
            .core()
            .join(request.into_inner())
            .await
            .map(Response::new)
            .map_err(ClusterError::into_status)
    }

    async fn add_server(
        &self,
        request: Request<AddServerCall>,
    ) -> Result<Response<AddServerReply>, Status> {
        self.server
            .core()
            .add_server(request.into_inner())
            .await
            .map(Response::new)
            .map_err(ClusterError::into_status)
    }

    async fn remove_server(
        &self,
        request: Request<RemoveServerCall>,
    ) -> Result<Response<RemoveServerReply>, Status> {
        self.server
            .core()
            .remove_server(request.into_inner())
            .await
            .map(Response::new)
            .map_err(ClusterError::into_status)
    }

    async fn status(&self, _request: Request<StatusCall>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(self.server.status()))
    }
}
