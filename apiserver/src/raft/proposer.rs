//! Group commit: commands proposed while earlier batches are being committed wait together
//! and go out as one Raft entry — one log append, one fsync, one state-machine write.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::error::ClusterError;
use super::server::Core;
use super::types::{Command, CommandResult};

/// Queues commands for the batching task.
pub(crate) struct Proposer {
    tx: mpsc::Sender<Proposal>,
}

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<CommandResult, ClusterError>>,
}

// === impl Proposer ===

impl Proposer {
    /// Starts the batching task; it ends on shutdown.
    pub(crate) fn start(
        core: Arc<Core>,
        shutdown: watch::Receiver<bool>,
    ) -> (Proposer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(core.tuning.max_batch.max(1) * 4);
        let task = tokio::spawn(run(core, rx, shutdown));
        (Proposer { tx }, task)
    }

    /// Commits one command and returns its result.
    pub(crate) async fn propose(&self, command: Command) -> Result<CommandResult, ClusterError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Proposal { command, reply })
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
    let permits = Arc::new(Semaphore::new(core.tuning.max_inflight_batches.max(1)));
    loop {
        let first = tokio::select! {
            _ = super::server::stopped(&mut shutdown) => return,
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
        };
        // Wait for a free slot before draining the queue: whatever arrives meanwhile joins
        // this batch.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Clients woken by the last batch's answers are about to propose again: let them.
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let core = core.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (commands, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            match core.submit(commands).await {
                Ok(resp) if resp.results.len() == replies.len() => {
                    for (result, reply) in resp.results.into_iter().zip(replies) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Ok(resp) => {
                    let err = ClusterError::Other {
                        reason: format!(
                            "{} commands were answered with {} results",
                            replies.len(),
                            resp.results.len()
                        ),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
