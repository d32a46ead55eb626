//! [`Client`]: the gRPC client of a server's cluster service, for tools and benchmarks.

use std::time::Duration;

use tonic::transport::Channel;

use super::codec::MAX_MESSAGE;
use super::error::ClusterError;
use super::network::PeerTls;
use super::proto::cluster_client::ClusterClient;
use super::types::{Command, CommandResult, Consistency};
use super::wire::{ProposeCall, RangeCall, RemoveServerCall, StatusCall, StatusReply, WatchReply};
use keel_store::{
    CompactError, Event, RangeRequest, RangeResponse, Txn, TxnError, TxnResponse, WatchRequest,
};

/// A connection to one server; any server accepts any request (followers forward writes).
#[derive(Clone, Debug)]
pub struct Client {
    inner: ClusterClient<Channel>,
    addr: String,
}

/// The events of a watch, as the server sends them.
#[derive(Debug)]
pub struct WatchStream {
    inner: tonic::Streaming<WatchReply>,
    addr: String,
}

// === impl Client ===

impl Client {
    /// Connects to the server at `addr` (`host:port`) without TLS, failing after `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client, ClusterError> {
        Client::connect_with(addr, timeout, None).await
    }

    /// Connects to the server at `addr` with mutual TLS (a server's own identity).
    pub async fn connect_tls(
        addr: &str,
        timeout: Duration,
        tls: &PeerTls,
    ) -> Result<Client, ClusterError> {
        Client::connect_with(addr, timeout, Some(tls)).await
    }

    async fn connect_with(
        addr: &str,
        timeout: Duration,
        tls: Option<&PeerTls>,
    ) -> Result<Client, ClusterError> {
        let unreachable = |reason: String| ClusterError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let endpoint = super::network::endpoint(addr, tls)?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        let channel = tokio::time::timeout(timeout, endpoint.connect())
            .await
            .map_err(|_| unreachable(format!("no connection within {} ms", timeout.as_millis())))?
            .map_err(|e| {
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    reason = s.to_string();
                    source = s.source();
                }
                unreachable(reason)
            })?;
        Ok(Client {
            inner: ClusterClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE as usize)
                .max_encoding_message_size(MAX_MESSAGE as usize),
            addr: addr.to_string(),
        })
    }

    fn err(&self, status: tonic::Status) -> ClusterError {
        ClusterError::from_status(&status, &self.addr)
    }

    /// Commits commands (batched with other clients' by the server).
    pub async fn propose(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<CommandResult>, ClusterError> {
        let reply = self
            .inner
            .clone()
            .propose(ProposeCall {
                commands,
                forwarded: false,
            })
            .await
            .map_err(|s| self.err(s))?;
        Ok(reply.into_inner().results)
    }

    /// Commits one transaction.
    pub async fn txn(&self, txn: Txn) -> Result<Result<TxnResponse, TxnError>, ClusterError> {
        match self.propose(vec![Command::Txn(txn)]).await?.pop() {
            Some(CommandResult::Txn(result)) => Ok(result),
            other => Err(ClusterError::Other {
                reason: format!("a transaction was answered with {other:?}"),
            }),
        }
    }

    /// Compacts history before `revision`.
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

    /// Reads keys.
    pub async fn range(
        &self,
        request: RangeRequest,
        consistency: Consistency,
    ) -> Result<RangeResponse, ClusterError> {
        self.inner
            .clone()
            .range(RangeCall {
                request,
                consistency,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.err(s))
    }

    /// Starts a watch on the server's store.
    pub async fn watch(&self, request: WatchRequest) -> Result<WatchStream, ClusterError> {
        let stream = self
            .inner
            .clone()
            .watch(request)
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok(WatchStream {
            inner: stream,
            addr: self.addr.clone(),
        })
    }

    /// The server's view of itself and the cluster.
    pub async fn status(&self) -> Result<StatusReply, ClusterError> {
        self.inner
            .clone()
            .status(StatusCall {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.err(s))
    }

    /// Removes a server from the cluster.
    pub async fn remove_server(&self, node_id: u64) -> Result<(), ClusterError> {
        self.inner
            .clone()
            .remove_server(RemoveServerCall {
                node_id,
                forwarded: false,
            })
            .await
            .map(drop)
            .map_err(|s| self.err(s))
    }
}

// === impl WatchStream ===

impl WatchStream {
    /// The next events; `None` when the server ended the watch.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, ClusterError>> {
        match self.inner.message().await {
            Ok(Some(reply)) => Some(Ok(reply.events)),
            Ok(None) => None,
            Err(status) => Some(Err(ClusterError::from_status(&status, &self.addr))),
        }
    }
}
