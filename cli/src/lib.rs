//! Keel's command-line tools.
//!
//! The `keel` binary runs servers (`keel server`); `keelctl` is the kubectl-like client of the
//! API, built from the modules here.
//!
//! Modules:
//! - [`keelctl`]: the `keelctl` commands.

pub mod keelctl;
