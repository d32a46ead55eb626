//! The server side of the transport: the Raft service (peer to peer) and the Cluster service
//! (clients, and servers forwarding to the leader).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::error::ClusterError;
use super::proto::cluster_server::Cluster;
use super::proto::raft_server::Raft;
use super::server::Server;
use super::server_core::Core;
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

/// The most event bytes (keys and values) in one watch message.
const WATCH_REPLY_BYTES: usize = 4 << 20;

/// Splits events into messages of at most [`WATCH_REPLY_BYTES`] (at least one event each),
/// keeping their order.
fn chunks(events: Vec<keel_store::Event>) -> Vec<Vec<keel_store::Event>> {
    let size = |e: &keel_store::Event| {
        e.kv.key.len()
            + e.kv.value.len()
            + e.prev_kv
                .as_ref()
                .map_or(0, |p| p.key.len() + p.value.len())
    };
    let mut out: Vec<Vec<keel_store::Event>> = Vec::new();
    let mut bytes = 0;
    for event in events {
        let n = size(&event);
        match out.last_mut() {
            Some(chunk) if bytes + n <= WATCH_REPLY_BYTES => {
                bytes += n;
                chunk.push(event);
            }
            _ => {
                bytes = n;
                out.push(vec![event]);
            }
        }
    }
    out
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
            // From a follower: commit here, or tell it this server no longer leads. Its batch
            // was cut to size by its proposer; anything bigger did not come from one.
            let limit = core.tuning.max_batch_bytes + core.tuning.max_request_bytes;
            let size = super::codec::encoded_size(&call.commands).unwrap_or(u64::MAX);
            if size > limit {
                return Err(ClusterError::InvalidRequest {
                    reason: format!("a forwarded batch of {size} bytes exceeds {limit} bytes"),
                }
                .into_status());
            }
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
            self.server
                .propose(call.commands)
                .await
                .map(|results| super::types::Response { results })
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
                    _ = super::server_core::stopped(&mut shutdown) => return,
                    next = watch.next() => match next {
                        Ok(events) => {
                            for events in chunks(events) {
                                // A client that stops reading must not hold the store open
                                // past shutdown.
                                tokio::select! {
                                    sent = tx.send(Ok(WatchReply { events })) => {
                                        if sent.is_err() {
                                            return;
                                        }
                                    }
                                    _ = super::server_core::stopped(&mut shutdown) => return,
                                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use keel_store::{Event, EventKind, KeyValue};

    fn event(n: u8, bytes: usize) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: vec![n],
                value: vec![0; bytes],
                create_revision: 1,
                mod_revision: u64::from(n),
                version: 1,
            },
            prev_kv: None,
        }
    }

    #[test]
    fn watch_messages_are_cut_by_size_in_order() {
        let events: Vec<Event> = (1..=10).map(|n| event(n, WATCH_REPLY_BYTES / 4)).collect();
        let out = chunks(events.clone());
        assert!(out.len() >= 3, "{}", out.len());
        assert_eq!(out.concat(), events);
        // One event bigger than a message still goes, alone.
        let huge = vec![event(1, WATCH_REPLY_BYTES * 2), event(2, 1)];
        assert_eq!(chunks(huge).len(), 2);
        assert!(chunks(vec![]).is_empty());
    }
}
