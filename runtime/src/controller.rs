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
//!
//! The controller and each kind it watches are typed: `Controller<VirtualMachine>` hands its
//! reconciler `Arc<VirtualMachine>`, decoded once as the watch delivered it (see
//! [`Store`]); `Value` is the form for a reconciler that handles any kind.

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::Api;
use keel_schemas::Kind;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::metrics::{self, ControllerMetrics};
use super::object::{ObjectRef, Resource};
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

/// Names the primary objects a watched object of type `S` concerns.
pub type Mapper<S = Value> = Arc<dyn Fn(&S) -> Vec<ObjectRef> + Send + Sync>;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A kind the controller watches besides its primary kind, of any object type: its cache
/// (a `Store<S>`, for [`Controller::store_of`]), and what feeds it and the queue.
struct Secondary {
    kind: &'static Kind,
    store: Box<dyn Any + Send + Sync>,
    ready: Box<dyn Fn() -> Task + Send + Sync>,
    feed: Box<dyn FnOnce(WorkQueue<ObjectRef>) -> Task + Send>,
}

/// A controller of one primary kind, typed over its object type `K` (one of
/// `keel_schemas::kinds`, or `Value` for any kind). Build it, then [`Controller::run`] it.
pub struct Controller<K = Value> {
    name: String,
    api: Api<K>,
    config: watcher::Config,
    store: Store<K>,
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

impl<K: Resource> Controller<K> {
    /// A controller named `name` (in logs and metrics) of the objects `api` covers, as
    /// `config` selects them.
    pub fn new(name: &str, api: Api<K>, config: watcher::Config) -> Controller<K> {
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
    pub fn owns<S: Resource>(self, api: Api<S>, config: watcher::Config) -> Controller<K> {
        let kind = self.api.kind();
        let namespaced = kind.scope == keel_schemas::Scope::Namespaced;
        let api_version = kind.api_version();
        let owner: Mapper<S> = Arc::new(move |o: &S| {
            o.controller_owner()
                .filter(|r| r.kind == kind.kind && r.api_version == api_version)
                .map(|r| {
                    vec![ObjectRef::new(
                        if namespaced { o.namespace() } else { None },
                        r.name,
                    )]
                })
                .unwrap_or_default()
        });
        self.secondary(api, config, owner)
    }

    /// Also watch `api`'s objects, and reconcile what `mapper` names on each change.
    pub fn watches<S: Resource>(
        self,
        api: Api<S>,
        config: watcher::Config,
        mapper: impl Fn(&S) -> Vec<ObjectRef> + Send + Sync + 'static,
    ) -> Controller<K> {
        self.secondary(api, config, Arc::new(mapper))
    }

    fn secondary<S: Resource>(
        mut self,
        api: Api<S>,
        config: watcher::Config,
        trigger: Mapper<S>,
    ) -> Controller<K> {
        let store = Store::<S>::new();
        let (ready, fed) = (store.clone(), store.clone());
        self.secondaries.push(Secondary {
            kind: api.kind(),
            store: Box::new(store),
            ready: Box::new(move || {
                let store = ready.clone();
                Box::pin(async move { store.wait_ready().await })
            }),
            feed: Box::new(move |queue| {
                Box::pin(feed(watcher(api.cast(), config), fed, queue, Some(trigger)))
            }),
        });
        self
    }

    /// Reconcile every object this often even without a change.
    pub fn resync(mut self, every: Duration) -> Controller<K> {
        self.resync = Some(every);
        self
    }

    /// How failed reconciles back off (client-go's 5 ms doubling to 300 s by default). Set
    /// before taking [`Controller::queue`].
    pub fn backoff(mut self, backoff: Backoff) -> Controller<K> {
        self.queue = WorkQueue::new(backoff);
        self
    }

    /// At most `n` reconciles at once (of different keys).
    pub fn concurrency(mut self, n: usize) -> Controller<K> {
        self.concurrency = n.max(1);
        self
    }

    /// The cache of the primary objects.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The cache of a secondary kind (by kind name, `Lease`), once registered with the
    /// object type `S` it was registered with.
    pub fn store_of<S: Resource>(&self, kind: &str) -> Option<Store<S>> {
        self.secondaries
            .iter()
            .filter(|s| s.kind.kind == kind)
            .find_map(|s| s.store.downcast_ref::<Store<S>>())
            .cloned()
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
        F: Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let mut feeds = JoinSet::new();
        feeds.spawn(feed(
            watcher(self.api.cast(), self.config.clone()),
            self.store.clone(),
            self.queue.clone(),
            None,
        ));
        let mut waits = Vec::new();
        for s in self.secondaries {
            waits.push((s.ready)());
            feeds.spawn((s.feed)(self.queue.clone()));
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
        let primary = self.store.clone();
        tokio::select! {
            _ = async { primary.wait_ready().await; for w in waits { w.await } } => {}
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
async fn feed<S: Resource>(
    mut watcher: watcher::Watcher,
    store: Store<S>,
    queue: WorkQueue<ObjectRef>,
    trigger: Option<Mapper<S>>,
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
struct Worker<K> {
    name: String,
    store: Store<K>,
    queue: WorkQueue<ObjectRef>,
    metrics: Arc<ControllerMetrics>,
}

impl<K: Resource> Worker<K> {
    async fn run<C, F, Fut, E>(self, reconcile: Arc<F>, ctx: Arc<C>)
    where
        F: Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + 'static,
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
