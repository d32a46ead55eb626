//! Group commit: proposals made while earlier batches are being committed wait together and
//! go out as one Raft entry — one log append, one fsync, one state-machine write. A proposal
//! of several commands is never split: its commands stay together and in order.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::codec;
use super::error::ClusterError;
use super::server_core::{Core, stopped};
use super::types::{Command, CommandResult};

/// Queues proposals for the batching task.
pub(crate) struct Proposer {
    tx: mpsc::Sender<Proposal>,
    max_request_bytes: u64,
}

struct Proposal {
    commands: Vec<Command>,
    bytes: u64,
    reply: oneshot::Sender<Result<Vec<CommandResult>, ClusterError>>,
}

// === impl Proposer ===

impl Proposer {
    /// Starts the batching task; it ends on shutdown.
    pub(crate) fn start(
        core: Arc<Core>,
        shutdown: watch::Receiver<bool>,
    ) -> (Proposer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(core.tuning.max_batch.max(1) * 4);
        let proposer = Proposer {
            tx,
            max_request_bytes: core.tuning.max_request_bytes,
        };
        (proposer, tokio::spawn(run(core, rx, shutdown)))
    }

    /// Commits commands together, in order, in one Raft entry, and returns their results.
    /// Refuses a command larger than the request limit before it reaches the log.
    pub(crate) async fn propose(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<CommandResult>, ClusterError> {
        let mut bytes = 0;
        for command in &commands {
            let size = codec::encoded_size(command).map_err(|e| ClusterError::InvalidRequest {
                reason: format!("cannot encode the request: {e}"),
            })?;
            if size > self.max_request_bytes {
                return Err(ClusterError::InvalidRequest {
                    reason: format!(
                        "a request of {size} bytes is larger than the limit of {} bytes",
                        self.max_request_bytes
                    ),
                });
            }
            bytes += size;
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Proposal {
                commands,
                bytes,
                reply,
            })
            .await
            .map_err(|_| ClusterError::ShuttingDown)?;
        rx.await.map_err(|_| ClusterError::ShuttingDown)?
    }
}

async fn run(
    core: Arc<Core>,
    mut rx: mpsc::Receiver<Proposal>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_batch = core.tuning.max_batch.max(1);
    let max_bytes = core.tuning.max_batch_bytes;
    let permits = Arc::new(Semaphore::new(core.tuning.max_inflight_batches.max(1)));
    // A proposal that did not fit the last batch opens the next one.
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => tokio::select! {
                _ = stopped(&mut shutdown) => return,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            },
        };
        // Wait for a free slot before draining the queue: whatever arrives meanwhile joins
        // this batch.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Clients woken by the last batch's answers are about to propose again: let them.
        tokio::task::yield_now().await;
        let (mut count, mut bytes) = (first.commands.len(), first.bytes);
        let mut batch = vec![first];
        while count < max_batch {
            let Ok(next) = rx.try_recv() else {
                break;
            };
            if count + next.commands.len() > max_batch || bytes + next.bytes > max_bytes {
                carried = Some(next);
                break;
            }
            count += next.commands.len();
            bytes += next.bytes;
            batch.push(next);
        }
        let core = core.clone();
        tokio::spawn(async move {
            let _permit = permit;
            submit(&core, batch).await;
        });
    }
}

/// Commits a batch and hands each proposal its results.
async fn submit(core: &Core, batch: Vec<Proposal>) {
    let mut commands = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        replies.push((p.commands.len(), p.reply));
        commands.extend(p.commands);
    }
    let expected = commands.len();
    match core.submit(commands).await {
        Ok(resp) if resp.results.len() == expected => {
            let mut results = resp.results.into_iter();
            for (n, reply) in replies {
                let _ = reply.send(Ok(results.by_ref().take(n).collect()));
            }
        }
        Ok(resp) => {
            let err = ClusterError::Other {
                reason: format!(
                    "{expected} commands were answered with {} results",
                    resp.results.len()
                ),
            };
            for (_, reply) in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
