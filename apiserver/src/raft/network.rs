//! The client side of the transport: gRPC channels to peers, and openraft's network over them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use super::codec::MAX_MESSAGE;
use super::error::ClusterError;
use super::proto::cluster_client::ClusterClient;
use super::proto::raft_client::RaftClient;
use super::types::{Member, TypeConfig};
use super::wire::PeerCall;

/// The TLS identity servers present to each other (mutual TLS): the cluster CA, and this
/// server's certificate and key, all PEM. Every server certificate names [`PEER_NAME`].
#[derive(Clone)]
pub struct PeerTls {
    /// The cluster CA certificate: the only one peers are trusted by.
    pub ca_pem: String,
    /// This server's certificate, signed by the CA.
    pub cert_pem: String,
    /// This server's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("PeerTls { .. }")
    }
}

/// The name every server certificate carries, which peers check instead of an address (servers
/// are reached by IP as often as by name).
pub const PEER_NAME: &str = "keel-raft";

/// Lazily connected gRPC channels to other servers, one per address, shared by Raft
/// replication and by forwarded requests.
pub(crate) struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    connect_timeout: Duration,
    tls: Option<PeerTls>,
}

/// openraft's network: a [`PeerLink`] per target server.
pub(crate) struct Network {
    pub(crate) peers: Arc<Peers>,
    pub(crate) cluster_id: Uuid,
}

/// Raft RPCs to one server.
pub(crate) struct PeerLink {
    target: u64,
    cluster_id: Uuid,
    client: Option<RaftClient<Channel>>,
    /// Why there is no client (a malformed address).
    error: Option<ClusterError>,
}

// === impl Peers ===

impl Peers {
    pub(crate) fn new(connect_timeout: Duration, tls: Option<PeerTls>) -> Peers {
        Peers {
            channels: Mutex::new(HashMap::new()),
            connect_timeout,
            tls,
        }
    }

    /// The channel to `addr` (`host:port`), created on first use; connecting happens on the
    /// first request and fails after the connect timeout.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, ClusterError> {
        let mut channels = self
            .channels
            .lock()
            .expect("invariant: the peer map lock is never held across a panic");
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = endpoint(addr, self.tls.as_ref())?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A cluster-service client for `addr`.
    pub(crate) fn cluster(&self, addr: &str) -> Result<ClusterClient<Channel>, ClusterError> {
        Ok(ClusterClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE as usize)
            .max_encoding_message_size(MAX_MESSAGE as usize))
    }
}

/// An endpoint for `addr`: `https` with mutual TLS when `tls` is given, plain `http` without.
pub(crate) fn endpoint(addr: &str, tls: Option<&PeerTls>) -> Result<Endpoint, ClusterError> {
    let invalid = |reason: String| ClusterError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| invalid(format!("not a valid host:port address: {e}")))?;
    match tls {
        None => Ok(endpoint),
        Some(tls) => endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem))
                    .identity(tonic::transport::Identity::from_pem(
                        &tls.cert_pem,
                        &tls.key_pem,
                    ))
                    .domain_name(PEER_NAME),
            )
            .map_err(|e| invalid(format!("TLS settings: {e}"))),
    }
}

// === impl Network ===

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerLink {
        let (client, error) = match self.peers.channel(&node.raft_addr) {
            Ok(ch) => (
                Some(
                    RaftClient::new(ch)
                        .max_decoding_message_size(MAX_MESSAGE as usize)
                        .max_encoding_message_size(MAX_MESSAGE as usize),
                ),
                None,
            ),
            Err(e) => (None, Some(e)),
        };
        PeerLink {
            target,
            cluster_id: self.cluster_id,
            client,
            error,
        }
    }
}

// === impl PeerLink ===

impl PeerLink {
    fn call<T>(&self, body: T, option: &RPCOption) -> tonic::Request<PeerCall<T>> {
        let mut req = tonic::Request::new(PeerCall {
            cluster_id: self.cluster_id,
            to: self.target,
            body,
        });
        req.set_timeout(option.hard_ttl());
        req
    }

    // openraft's error type is fixed by its trait, large as it is.
    #[allow(clippy::result_large_err)]
    fn client<E: std::error::Error>(
        &self,
    ) -> Result<RaftClient<Channel>, RPCError<u64, Member, E>> {
        match (&self.client, &self.error) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(e)) => Err(RPCError::Unreachable(Unreachable::new(e))),
            (None, None) => Err(RPCError::Unreachable(Unreachable::new(
                &ClusterError::Other {
                    reason: "no channel".into(),
                },
            ))),
        }
    }
}

/// When entries together exceed `limit` bytes: how many of the first ones fit (at least one).
fn entries_that_fit(entries: &[super::types::Entry], limit: u64) -> Option<u64> {
    if entries.len() < 2 {
        return None;
    }
    let mut total = 0u64;
    for (i, entry) in entries.iter().enumerate() {
        total += super::codec::encoded_size(entry).unwrap_or(u64::MAX / 4);
        if total > limit {
            return Some((i as u64).max(1));
        }
    }
    None
}

/// A transport failure as openraft wants it: unreachable peers are backed off from.
fn rpc_error<E: std::error::Error>(status: tonic::Status) -> RPCError<u64, Member, E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        if let Some(fit) = entries_that_fit(&rpc.entries, MAX_MESSAGE / 2) {
            // openraft sends fewer entries next time: every entry fits a message on its own.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        let req = self.call(rpc, &option);
        let reply = self
            .client()?
            .append_entries(req)
            .await
            .map_err(rpc_error)?;
        reply
            .into_inner()
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        let req = self.call(rpc, &option);
        let reply = self
            .client()?
            .install_snapshot(req)
            .await
            .map_err(rpc_error)?;
        reply
            .into_inner()
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let req = self.call(rpc, &option);
        let reply = self.client()?.vote(req).await.map_err(rpc_error)?;
        reply
            .into_inner()
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::raft::types::{Command, Entry, Request};
    use keel_store::Txn;

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                commands: vec![Command::Txn(Txn::put("k", vec![0u8; bytes]))],
            }),
        }
    }

    #[test]
    fn oversized_appends_are_cut_to_what_fits() {
        let small: Vec<Entry> = (1..=3).map(|i| entry(i, 100)).collect();
        assert_eq!(entries_that_fit(&small, 10_000), None);
        let big: Vec<Entry> = (1..=5).map(|i| entry(i, 4_000)).collect();
        assert_eq!(entries_that_fit(&big, 10_000), Some(2));
        // A single entry always goes, whatever its size.
        assert_eq!(entries_that_fit(&big[..1], 10), None);
        assert_eq!(entries_that_fit(&big, 10), Some(1));
    }
}
