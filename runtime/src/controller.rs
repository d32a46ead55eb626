//! [`Controller`]: wires a primary kind, the kinds it owns and the kinds it watches to a
//! `reconcile(object, ctx) -> Action` function.
//!
//! Every change of a primary object puts its key on the work queue; a change of an owned
//! object puts its controlling owner's key there; a change of a watched object puts the keys
//! a mapper function names. Workers (up to the concurrency limit) take keys off the queue —
//! never one key twice at once — and call `reconcile` with the cached object. Its answer
//! schedules the next pass: after a delay, or at the next change; an error retries with the
//! key's exponential backoff. A resync timer puts every key on the queue now and then, so
//! that the world drifting away from the spec is noticed without a change.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::Api;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::metrics::{self, ControllerMetrics};
use super::object::{ObjectExt, ObjectRef};
use super::queue::{Backoff, WorkQueue};
use super::reflector::Store;
use super::watcher::{self, watcher};

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long (and sooner on a change).
    Requeue(Duration),
    /// Reconcile again on the next change (or resync).
    AwaitChange,
}

/// Names the primary objects a watched object concerns.
pub type Mapper = Arc<dyn Fn(&Value) -> Vec<ObjectRef> + Send + Sync>;

/// How a secondary kind's changes reach the queue.
#[derive(Clone)]
enum Trigger {
    /// Through the controlling owner reference, when it points at the primary kind.
    Owner,
    /// Through a mapper.
    Map(Mapper),
}

/// A kind the controller watches besides its primary kind.
struct Secondary {
    api: Api<Value>,
    config: watcher::Config,
    store: Store,
    trigger: Trigger,
}

/// A controller of one primary kind. Build it, then [`Controller::run`] it.
pub struct Controller {
    name: String,
    api: Api<Value>,
    config: watcher::Config,
    store: Store,
    secondaries: Vec<Secondary>,
    resync: Option<Duration>,
    concurrency: usize,
    queue: WorkQueue<ObjectRef>,
    metrics: Arc<ControllerMetrics>,
}

// === impl Action ===

impl Action {
    /// Reconcile again after `after`.
    pub fn requeue(after: Duration) -> Action {
        Action::Requeue(after)
    }

    /// Reconcile again on the next change.
    pub fn await_change() -> Action {
        Action::AwaitChange
    }
}

// === impl Controller ===

impl Controller {
    /// A controller named `name` (in logs and metrics) of the objects `api` covers, as
    /// `config` selects them.
    pub fn new(name: &str, api: Api<Value>, config: watcher::Config) -> Controller {
        Controller {
            name: name.to_string(),
            api,
            config,
            store: Store::new(),
            secondaries: Vec::new(),
            resync: None,
            concurrency: 4,
            queue: WorkQueue::new(Backoff::default()),
            metrics: metrics::controller(name),
        }
    }

    /// Also watch `api`'s objects, and reconcile their controlling owner on each change.
    pub fn owns(mut self, api: Api<Value>, config: watcher::Config) -> Controller {
        self.secondaries.push(Secondary {
            api,
            config,
            store: Store::new(),
            trigger: Trigger::Owner,
        });
        self
    }

    /// Also watch `api`'s objects, and reconcile what `mapper` names on each change.
    pub fn watches(
        mut self,
        api: Api<Value>,
        config: watcher::Config,
        mapper: impl Fn(&Value) -> Vec<ObjectRef> + Send + Sync + 'static,
    ) -> Controller {
        self.secondaries.push(Secondary {
            api,
            config,
            store: Store::new(),
            trigger: Trigger::Map(Arc::new(mapper)),
        });
        self
    }

    /// Reconcile every object this often even without a change.
    pub fn resync(mut self, every: Duration) -> Controller {
        self.resync = Some(every);
        self
    }

    /// How failed reconciles back off (client-go's 5 ms doubling to 300 s by default). Set
    /// before taking [`Controller::queue`].
    pub fn backoff(mut self, backoff: Backoff) -> Controller {
        self.queue = WorkQueue::new(backoff);
        self
    }

    /// At most `n` reconciles at once (of different keys).
    pub fn concurrency(mut self, n: usize) -> Controller {
        self.concurrency = n.max(1);
        self
    }

    /// The cache of the primary objects.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The cache of a secondary kind (by kind name, `Lease`), once registered.
    pub fn store_of(&self, kind: &str) -> Option<Store> {
        self.secondaries
            .iter()
            .find(|s| s.api.kind().kind == kind)
            .map(|s| s.store.clone())
    }

    /// The work queue, to put keys on from elsewhere.
    pub fn queue(&self) -> WorkQueue<ObjectRef> {
        self.queue.clone()
    }

    /// Runs until `shutdown` turns true: watches, then reconciles keys as they come. A
    /// reconcile under way when shutdown comes is finished; nothing new starts.
    pub async fn run<C, F, Fut, E>(
        self,
        reconcile: F,
        ctx: Arc<C>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        C: Send + Sync + 'static,
        F: Fn(Arc<Value>, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let mut feeds = JoinSet::new();
        let primary_kind = self.api.kind();
        feeds.spawn(feed(
            watcher(self.api.clone(), self.config.clone()),
            self.store.clone(),
            self.queue.clone(),
            None,
        ));
        for s in &self.secondaries {
            let trigger = match &s.trigger {
                Trigger::Owner => {
                    let kind = primary_kind;
                    let namespaced = kind.scope == keel_schemas::Scope::Namespaced;
                    let map: Mapper = Arc::new(move |o: &Value| {
                        o.controller_owner()
                            .filter(|r| {
                                r["kind"].as_str() == Some(kind.kind)
                                    && r["apiVersion"].as_str() == Some(&kind.api_version())
                            })
                            .and_then(|r| r["name"].as_str())
                            .map(|name| {
                                vec![ObjectRef::new(
                                    if namespaced { o.namespace() } else { None },
                                    name,
                                )]
                            })
                            .unwrap_or_default()
                    });
                    map
                }
                Trigger::Map(m) => m.clone(),
            };
            feeds.spawn(feed(
                watcher(s.api.clone(), s.config.clone()),
                s.store.clone(),
                self.queue.clone(),
                Some(trigger),
            ));
        }
        if let Some(every) = self.resync {
            let (store, queue) = (self.store.clone(), self.queue.clone());
            feeds.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    for key in store.keys() {
                        queue.add(key);
                    }
                }
            });
        }
        // Reconcilers read the caches: start them once every cache is filled.
        let stores: Vec<Store> = std::iter::once(self.store.clone())
            .chain(self.secondaries.iter().map(|s| s.store.clone()))
            .collect();
        tokio::select! {
            _ = async { for s in &stores { s.wait_ready().await } } => {}
            _ = shutdown.wait_for(|s| *s) => {
                feeds.abort_all();
                return;
            }
        }
        tracing::info!(controller = %self.name, objects = self.store.len(), "caches synced, reconciling");
        let reconcile = Arc::new(reconcile);
        let mut workers = JoinSet::new();
        for _ in 0..self.concurrency {
            let worker = Worker {
                name: self.name.clone(),
                store: self.store.clone(),
                queue: self.queue.clone(),
                metrics: self.metrics.clone(),
            };
            workers.spawn(worker.run(reconcile.clone(), ctx.clone()));
        }
        let _ = shutdown.wait_for(|s| *s).await;
        self.queue.shutdown();
        feeds.abort_all();
        while workers.join_next().await.is_some() {}
        tracing::info!(controller = %self.name, "stopped");
    }
}

/// Applies a watcher's events to its store and puts the keys they concern on the queue:
/// the objects' own keys for the primary kind, or what `trigger` maps them to.
async fn feed(
    mut watcher: watcher::Watcher,
    store: Store,
    queue: WorkQueue<ObjectRef>,
    trigger: Option<Mapper>,
) {
    loop {
        let changes = store.apply(watcher.next().await);
        for object in changes.applied.iter().chain(&changes.deleted) {
            match &trigger {
                None => queue.add(object.object_ref()),
                Some(map) => {
                    for key in map(object) {
                        queue.add(key);
                    }
                }
            }
        }
    }
}

/// Takes keys off the queue and reconciles them.
struct Worker {
    name: String,
    store: Store,
    queue: WorkQueue<ObjectRef>,
    metrics: Arc<ControllerMetrics>,
}

impl Worker {
    async fn run<C, F, Fut, E>(self, reconcile: Arc<F>, ctx: Arc<C>)
    where
        F: Fn(Arc<Value>, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        while let Some(key) = self.queue.next().await {
            self.metrics.set_depth(self.queue.len());
            // A key whose object is gone needs nothing: cleanup runs through finalizers,
            // while the object still exists.
            let Some(object) = self.store.get(&key) else {
                self.queue.forget(&key);
                self.queue.done(&key);
                continue;
            };
            let started = Instant::now();
            let result = reconcile(object, ctx.clone()).await;
            self.metrics.reconciled(started.elapsed(), result.is_err());
            match result {
                Ok(Action::Requeue(after)) => {
                    self.queue.forget(&key);
                    self.queue.add_after(key.clone(), after);
                }
                Ok(Action::AwaitChange) => self.queue.forget(&key),
                Err(e) => {
                    let delay = self.queue.add_rate_limited(key.clone());
                    tracing::warn!(controller = %self.name, object = %key, error = %e, retry_in = ?delay, "reconcile failed");
                }
            }
            self.queue.done(&key);
        }
    }
}
