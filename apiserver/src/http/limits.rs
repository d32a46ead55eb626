//! LimitRange admission: a namespace's LimitRanges fill in what a VirtualMachine or Bucket
//! leaves out (before validation, so the defaults are validated, charged to quotas and shown
//! by a dry run) and refuse with 403 a write that sets a value outside their bounds, worded as
//! Kubernetes words it (`maximum cpu per VirtualMachine is 2, but spec.cpu is 4`), naming the
//! LimitRange. The arithmetic is [`keel_schemas::limits`].
//!
//! The LimitRanges are read linearizably at each write, so every write that starts after a
//! LimitRange is stored obeys it. A write racing with an admin's change of a LimitRange may
//! be judged by either version, as in Kubernetes (whose LimitRanger reads a cache); it is no
//! tenant's way around a bound, since the tenant cannot write LimitRanges.

use serde_json::Value;

use keel_schemas::limits::{self, Limits};
use keel_schemas::{Kind, lookup};

use super::Api;
use super::status::{ApiError, ApiResult};

// === impl Api ===

impl Api {
    /// The LimitRanges of namespace `ns` as they apply to a write of `kind` (none for a kind
    /// they do not bound, or outside a namespace).
    pub(crate) async fn limits(&self, kind: &Kind, ns: Option<&str>) -> ApiResult<Limits> {
        let (Some(ns), Some(ranges)) = (ns, lookup("limitranges")) else {
            return Ok(Limits::default());
        };
        if !limits::applies_to(kind) {
            return Ok(Limits::default());
        }
        Ok(Limits::new(&self.objects_in(ranges, ns).await?))
    }
}

/// The 403 of a write of `object` (of `kind`, replacing `old` on an update) that sets a value
/// outside `limits`, naming every such value.
pub(crate) fn check_limits(
    limits: &Limits,
    kind: &Kind,
    old: Option<&Value>,
    object: &Value,
) -> ApiResult<()> {
    limits.check(kind, old, object).map_err(|violations| {
        let said: Vec<String> = violations.iter().map(ToString::to_string).collect();
        ApiError::forbidden_for(
            kind.group,
            kind.plural,
            object["metadata"]["name"].as_str().unwrap_or_default(),
            &said.join("; "),
        )
    })
}
