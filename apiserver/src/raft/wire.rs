//! The messages of Keel's gRPC services, as serde types (see `codec`).

use std::collections::BTreeMap;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::types::{Command, Consistency, Member, Response, TypeConfig};
use keel_store::{Event, RangeRequest, RangeResponse, WatchRequest};

/// A Raft message from one server to another of the same cluster. The receiver checks both
/// ids, so a server from another cluster, or one that reached the wrong address, is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerCall<T> {
    /// The cluster the sender belongs to.
    pub cluster_id: Uuid,
    /// The server the sender means to reach.
    pub to: u64,
    /// The Raft message.
    pub body: T,
}

/// AppendEntries request.
pub type AppendCall = PeerCall<AppendEntriesRequest<TypeConfig>>;
/// AppendEntries answer.
pub type AppendReply = Result<AppendEntriesResponse<u64>, RaftError<u64>>;
/// RequestVote request.
pub type VoteCall = PeerCall<VoteRequest<u64>>;
/// RequestVote answer.
pub type VoteReply = Result<VoteResponse<u64>, RaftError<u64>>;
/// One chunk of a snapshot.
pub type SnapshotCall = PeerCall<InstallSnapshotRequest<TypeConfig>>;
/// The answer to a snapshot chunk.
pub type SnapshotReply = Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;

/// Commands to commit. From a client, or forwarded by a follower to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProposeCall {
    /// The commands, applied in order in one Raft entry.
    pub commands: Vec<Command>,
    /// Set by a server forwarding to the leader: the receiver must be the leader and does not
    /// forward again.
    pub forwarded: bool,
}

/// The results of a [`ProposeCall`].
pub type ProposeReply = Response;

/// A read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RangeCall {
    /// What to read.
    pub request: RangeRequest,
    /// How fresh.
    pub consistency: Consistency,
}

/// The answer to a [`RangeCall`].
pub type RangeReply = RangeResponse;

/// A follower asks the leader for a read index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadIndexCall {}

/// The log index a linearizable read must wait for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadIndexReply {
    /// Wait until this index is applied, then read.
    pub index: u64,
}

/// Starts a watch.
pub type WatchCall = WatchRequest;

/// Events of a watch, in revision order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchReply {
    /// The events.
    pub events: Vec<Event>,
}

/// A new server asks to join: it learns the cluster id and its node id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinCall {
    /// The cluster the joiner's data dir already belongs to, if any.
    pub cluster_id: Option<Uuid>,
    /// The node id the joiner wants; `None` to be given one.
    pub node_id: Option<u64>,
    /// Where the joiner can be reached.
    pub raft_addr: String,
    /// Set by a server passing the call on to the leader.
    pub forwarded: bool,
}

/// The identity a joiner takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinReply {
    /// The cluster's id.
    pub cluster_id: Uuid,
    /// The joiner's node id.
    pub node_id: u64,
}

/// Adds a running server: as a learner, then, once it caught up, as a voter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddServerCall {
    /// The joiner's cluster id (from [`JoinReply`]).
    pub cluster_id: Uuid,
    /// The joiner's node id.
    pub node_id: u64,
    /// Where the joiner can be reached.
    pub raft_addr: String,
    /// Set by a server passing the call on to the leader.
    pub forwarded: bool,
}

/// The membership after a change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddServerReply {
    /// Every server, voters and learners.
    pub members: BTreeMap<u64, Member>,
}

/// Removes a server from the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveServerCall {
    /// The server to remove.
    pub node_id: u64,
    /// Set by a server passing the call on to the leader.
    pub forwarded: bool,
}

/// The membership after a removal.
pub type RemoveServerReply = AddServerReply;

/// Asks a server how it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusCall {}

/// A server's Raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRole {
    /// Leads the cluster.
    Leader,
    /// Follows a leader, votes.
    Follower,
    /// Asks for votes.
    Candidate,
    /// Receives the log but does not vote.
    Learner,
    /// Stopped.
    Shutdown,
}

/// One member as a server sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its address.
    pub raft_addr: String,
    /// Whether it votes.
    pub voter: bool,
    /// The last log index the leader knows it has (only on the leader).
    pub matched_index: Option<u64>,
}

/// A server's view of itself and the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    /// The cluster's id.
    pub cluster_id: Uuid,
    /// This server's id.
    pub node_id: u64,
    /// Its role.
    pub role: RaftRole,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Its last log index.
    pub last_log_index: Option<u64>,
    /// The last index it applied.
    pub applied_index: Option<u64>,
    /// The last index of its current snapshot.
    pub snapshot_index: Option<u64>,
    /// The last index purged from its log.
    pub purged_index: Option<u64>,
    /// How many snapshots it has installed from a leader since it started.
    pub snapshots_installed: u64,
    /// The store's current revision on this server.
    pub revision: u64,
    /// The store's compaction revision on this server.
    pub compacted: u64,
    /// The membership as this server knows it.
    pub members: BTreeMap<u64, MemberStatus>,
}
