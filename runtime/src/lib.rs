//! The controller runtime: what every reconciler of Keel is built on (kube-runtime's pattern,
//! written here).
//!
//! - [`watcher()`]: list then watch one kind, resume, relist on 410, back off on errors.
//! - [`reflector`]: the in-memory [`Store`] a watcher fills, indexed by owner and by node.
//! - [`queue`]: the de-duplicating [`WorkQueue`] with per-key backoff.
//! - [`controller`]: [`Controller`], which wires watches to `reconcile(obj, ctx) -> Action`.
//! - [`finalizer`], [`conditions`], [`events`]: helpers reconcilers use.
//! - [`metrics`]: per-controller counters and histograms for `/metrics`.
//! - [`leader`]: leader election through a Lease.
//! - [`object`]: [`ObjectExt`], metadata of typed and dynamic objects; [`Resource`], what
//!   controllers and caches are typed over; [`ObjectRef`].

pub mod conditions;
pub mod controller;
pub mod events;
pub mod finalizer;
pub mod leader;
pub mod metrics;
pub mod object;
pub mod queue;
pub mod reflector;
pub mod watcher;

pub use conditions::{
    Condition, ConditionEntry, condition, condition_status, set_condition, set_typed_condition,
    typed_condition_status,
};
pub use controller::{Action, Controller, Mapper};
pub use events::{EventType, Recorder};
pub use finalizer::{FinalizerError, FinalizerEvent, finalizer};
pub use leader::{LeaderConfig, elect};
pub use object::{ObjectExt, ObjectRef, Owner, Resource, Typed};
pub use queue::{Backoff, WorkQueue};
pub use reflector::{Store, node_of};
pub use watcher::{Event, Watcher, watcher};
