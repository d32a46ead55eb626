//! Keel's command-line tools.
//!
//! The `keel` binary runs servers (`keel server`) and host agents (`keel agent`); `keelctl`
//! is the kubectl-like client of the API. Both are built from the modules here.
//!
//! Modules:
//! - [`keel`]: the `keel` commands.
//! - [`keelctl`]: the `keelctl` commands.

pub mod keel;
pub mod keelctl;
