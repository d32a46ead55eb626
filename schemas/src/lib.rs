//! Keel's API types, free of I/O: the kind registry, each kind's JSON Schema and typed
//! structs, validation and defaulting.
//!
//! Every object Keel serves is a Kubernetes-style object of a registered kind. The registry
//! says, for each kind, its group and version, its plural and short names (what `kubectl`
//! and `keelctl` accept), and whether it lives in a namespace; the store keeps an object under
//! [`storage_key`], so that a list is a prefix range and a watch is a prefix watch. Each kind
//! has a JSON Schema file (`schemas/<kind>.schema.json`, embedded at build time) from which
//! [`schema()`] composes the full object schema and [`openapi_schema`] its OpenAPI form. The API
//! server runs [`default_object`] and then [`validate()`] (or [`validate_update`]) on every
//! write and answers 422 with the [`FieldError`]s. Controllers read objects as the typed
//! structs of [`kinds`].
//!
//! Modules:
//! - [`mod@registry`]: the kinds, their names and storage keys.
//! - [`mod@schema`]: the embedded schema files, composed per kind.
//! - [`mod@validate`]: schema and semantic validation, immutable fields.
//! - [`defaults`]: defaulting from the schemas' `default`s plus computed defaults.
//! - [`mod@prune`]: taking out what a kind's schema does not name (what another version
//!   wrote), before an object is read as its typed struct.
//! - [`kinds`]: typed structs per kind group.
//! - [`quota`], [`limits`]: ResourceQuota and LimitRange arithmetic (what admission charges,
//!   defaults and bounds).
//! - [`columns`]: the columns of each kind's table (`kubectl get`, `keelctl get`).
//! - [`datadir`]: the files of a server's and a host agent's data directories.
//! - [`identity`]: the user and group names authentication and RBAC give meaning to.
//! - [`wellknown`]: the names Keel's processes share (annotations, labels, finalizers,
//!   condition types, OVN naming).
//! - [`names`], [`net`], [`quantity`]: syntax of names, addresses, ports and byte sizes.
//! - [`time`]: timestamps and ages as Kubernetes writes them.

pub mod columns;
pub mod cron;
pub mod datadir;
pub mod defaults;
pub mod identity;
pub mod kinds;
pub mod limits;
pub mod names;
pub mod net;
pub mod prune;
pub mod quantity;
pub mod quota;
pub mod registry;
pub mod schema;
pub mod time;
pub mod validate;
pub mod wellknown;

pub use defaults::default_object;
pub use net::{Cidr, cidr_contains, parse_port_ranges};
pub use prune::prune;
pub use quantity::parse_quantity;
pub use registry::{
    APPS_GROUP, KEEL_GROUP, KEEL_VERSION, Kind, RBAC_GROUP, Scope, kinds_in, lookup, registry,
    storage_key,
};
pub use schema::{openapi_schema, schema};
pub use validate::{FieldError, validate, validate_update};
