//! What every role of a host (its VMs, DNS server, S3 endpoint, L4 proxy) shares below the
//! agent that wires them: the limits of their listeners, and the process's file limit.
//!
//! - [`listen`]: connection caps (in all, per source), handshake and header timeouts, and
//!   raising `RLIMIT_NOFILE`.

pub mod listen;
