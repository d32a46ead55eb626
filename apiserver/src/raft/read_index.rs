//! Read-index rounds shared by concurrent linearizable reads: every read that arrives while a
//! round is in flight waits for the next one, which starts after it arrived and so covers
//! every write acknowledged before it.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::error::ClusterError;
use super::server_core::Core;

type Waiter = oneshot::Sender<Result<u64, ClusterError>>;

/// Hands out read indexes, one round at a time.
pub(crate) struct ReadIndex {
    tx: mpsc::Sender<Waiter>,
}

// === impl ReadIndex ===

impl ReadIndex {
    /// Starts the round task; it ends on shutdown.
    pub(crate) fn start(
        core: Arc<Core>,
        shutdown: watch::Receiver<bool>,
    ) -> (ReadIndex, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        (ReadIndex { tx }, tokio::spawn(run(core, rx, shutdown)))
    }

    /// A log index that a linearizable read must wait to be applied before reading.
    pub(crate) async fn index(&self) -> Result<u64, ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .await
            .map_err(|_| ClusterError::ShuttingDown)?;
        rx.await.map_err(|_| ClusterError::ShuttingDown)?
    }
}

async fn run(core: Arc<Core>, mut rx: mpsc::Receiver<Waiter>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let first = tokio::select! {
            _ = super::server_core::stopped(&mut shutdown) => return,
            w = rx.recv() => match w {
                Some(w) => w,
                None => return,
            },
        };
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = core.read_index().await;
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}
