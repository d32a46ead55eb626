//! ResourceQuota admission: a create or spec change that would take a namespace over one of
//! its quotas is refused with 403, worded as Kubernetes words it (`exceeded quota: NAME,
//! requested: ..., used: ..., limited: ...`).
//!
//! The namespace's use is counted from the store at each charge, and the charged quota's
//! status (`hard`, `used`) is written in the same transaction as the object, compared on the
//! quota's revision: two writes racing for the last place conflict, and the loser counts
//! again. Deletions need no charge; the next count sees them, and the quota controller
//! refreshes `status.used` meanwhile.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use keel_schemas::quota;
use keel_schemas::{Kind, lookup};

use super::Api;
use super::status::{ApiError, ApiResult};
use keel_store::{Compare, Op};

/// What a write adds to its transaction for the quotas it is charged to.
#[derive(Default)]
pub(crate) struct Charges {
    /// Each charged quota's revision, unchanged.
    pub compares: Vec<Compare>,
    /// Each charged quota with its new status.
    pub puts: Vec<Op>,
}

// === impl Api ===

impl Api {
    /// The charges of writing `object` (of `kind`, called `name`, replacing `old` if any) in
    /// namespace `ns`, or the 403 of the quota it would exceed.
    pub(crate) async fn quota_charges(
        &self,
        kind: &Kind,
        ns: &str,
        name: &str,
        old: Option<&Value>,
        object: &Value,
    ) -> ApiResult<Charges> {
        let mut charges = Charges::default();
        let Some(quotas_kind) = lookup("resourcequotas") else {
            return Ok(charges);
        };
        if kind.kind == "ResourceQuota" {
            return Ok(charges);
        }
        let quotas = self
            .keys_under(&format!("{}{ns}/", quotas_kind.storage_prefix()))
            .await?;
        let mut objects: HashMap<&'static str, Vec<Value>> = HashMap::new();
        for kv in quotas {
            let stored = self.decode(kv)?;
            let quota_name = stored.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let hard = hard_of(&stored.object);
            let unspecified = quota::unspecified(kind, object, &hard);
            if old.is_none() && !unspecified.is_empty() {
                return Err(ApiError::forbidden_for(
                    kind.group,
                    kind.plural,
                    name,
                    &format!(
                        "failed quota: {quota_name}: must specify {}",
                        unspecified.join("; ")
                    ),
                ));
            }
            let mut requested = quota::usage(kind, object, &hard);
            if let Some(old) = old {
                let before = quota::usage(kind, old, &hard);
                requested.retain(|resource, amount| {
                    *amount > before.get(resource).copied().unwrap_or(0)
                });
                for (resource, amount) in requested.iter_mut() {
                    *amount -= before.get(resource).copied().unwrap_or(0);
                }
            }
            if requested.is_empty() {
                continue;
            }
            let mut used = BTreeMap::new();
            for resource in hard.keys() {
                let mut total = 0u128;
                for counted in quota::kinds_using(resource) {
                    let list = match objects.get(counted.plural) {
                        Some(list) => list,
                        None => {
                            let listed = self.objects_in(counted, ns).await?;
                            objects.entry(counted.plural).or_insert(listed)
                        }
                    };
                    // An object changed counts as it is stored (`old`); the change adds
                    // what `requested` says.
                    total = total.saturating_add(quota::total(counted, list, resource));
                }
                used.insert(resource.clone(), total);
            }
            if let Err(over) = quota::check(&hard, &used, &requested) {
                return Err(ApiError::forbidden_for(
                    kind.group,
                    kind.plural,
                    name,
                    &format!(
                        "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
                        over.requested.join(","),
                        over.used.join(","),
                        over.limited.join(",")
                    ),
                ));
            }
            for (resource, amount) in &requested {
                if let Some(u) = used.get_mut(resource) {
                    *u = u.saturating_add(*amount);
                }
            }
            let mut next = stored.object.clone();
            next["status"] = json!({
                "hard": hard,
                "used": used.iter().map(|(r, a)| (r.clone(), json!(quota::format_amount(r, *a)))).collect::<serde_json::Map<_, _>>(),
            });
            let key = self.key(quotas_kind, Some(ns), &quota_name)?;
            charges
                .compares
                .push(Compare::mod_revision(key.clone(), stored.mod_revision));
            charges.puts.push(Op::Put {
                key: key.clone().into_bytes(),
                value: self.encode(&key, &next),
            });
        }
        Ok(charges)
    }

    /// Every object of `kind` in `ns`.
    pub(crate) async fn objects_in(&self, kind: &Kind, ns: &str) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        for kv in self
            .keys_under(&format!("{}{ns}/", kind.storage_prefix()))
            .await?
        {
            out.push(self.decode(kv)?.object);
        }
        Ok(out)
    }
}

/// A quota's `spec.hard`, its amounts as text.
fn hard_of(quota: &Value) -> BTreeMap<String, String> {
    quota["spec"]["hard"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect()
}
