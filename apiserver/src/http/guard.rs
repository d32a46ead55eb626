//! Access rules on the content of writes, which authorization (by verb and resource) cannot
//! judge: nobody grants RBAC permissions they do not hold (Kubernetes' escalation
//! prevention), a node writes only what is its own ([`node::restrict`]), and only who may
//! impersonate a user makes a token for them.

use keel_schemas::RBAC_GROUP;
use keel_schemas::kinds::access::PolicyRule;
use serde_json::Value;

use super::Api;
use super::request::Target;
use super::status::{ApiError, ApiResult};
use crate::auth::rbac::{Attributes, Decision, ResourceAttributes, uncovered};
use crate::auth::{UserInfo, node};

// === impl Api ===

impl Api {
    /// Checks a write of `new` (replacing `old`, for an update) by the requester of `t`.
    pub(crate) async fn guard(
        &self,
        t: &Target,
        old: Option<&Value>,
        new: &Value,
    ) -> ApiResult<()> {
        let Some(user) = t.user.as_deref().filter(|u| !u.is_master()) else {
            return Ok(());
        };
        if let Some(node) = user.node() {
            let sub = if t.status() { "status" } else { "" };
            node::restrict(node, t.kind.plural, sub, old, new).map_err(|why| {
                ApiError::forbidden_for(
                    t.kind.group,
                    t.kind.plural,
                    t.name.as_deref().unwrap_or_default(),
                    &why,
                )
            })?;
        }
        if t.kind.group == RBAC_GROUP && !t.status() {
            self.no_escalation(user, t, old, new).await?;
        }
        Ok(())
    }

    /// A role may be written only with rules its writer holds where it applies (or the right
    /// to `escalate`); a binding only for a role whose rules its writer holds (or the right
    /// to `bind` it).
    async fn no_escalation(
        &self,
        user: &UserInfo,
        t: &Target,
        old: Option<&Value>,
        new: &Value,
    ) -> ApiResult<()> {
        let Some(auth) = self.auth.as_deref() else {
            return Ok(());
        };
        let namespace = new["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = new["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let may = |verb: &str, resource: &str, object: &str| {
            Attributes::resource(
                verb,
                ResourceAttributes {
                    group: RBAC_GROUP.into(),
                    version: "v1".into(),
                    resource: resource.into(),
                    namespace: namespace.clone(),
                    name: object.into(),
                    ..ResourceAttributes::default()
                },
            )
        };
        // The rules to be granted, and the right that lets the writer grant them anyway
        // (none: already asked).
        let (servant, exempt) = match t.kind.kind {
            "Role" | "ClusterRole" => {
                // Labels too: they decide which aggregated roles gather this one's rules.
                if old.is_some_and(|o| {
                    o.get("rules") == new.get("rules")
                        && o.get("aggregationRule") == new.get("aggregationRule")
                        && o["metadata"].get("labels") == new["metadata"].get("labels")
                }) {
                    return Ok(());
                }
                // Fail closed: rules that do not read as rules grant nothing here.
                let rules: Vec<PolicyRule> = match new.get("rules") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(v) => serde_json::from_value(v.clone())
                        .map_err(|e| ApiError::bad_request(format!("rules: {e}")))?,
                };
                let aggregated = new["aggregationRule"].is_object();
                let exempt = may("escalate", t.kind.plural, &name);
                if aggregated {
                    // Its rules come from other roles later: only who may escalate makes one.
                    return self
                        .require(
                            auth,
                            user,
                            &exempt,
                            t,
                            "an aggregated ClusterRole can only be made by who may escalate",
                        )
                        .await;
                }
                (rules, Some(exempt))
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let role_kind = new["roleRef"]["kind"].as_str().unwrap_or_default();
                let role_name = new["roleRef"]["name"].as_str().unwrap_or_default();
                let plural = if role_kind == "ClusterRole" {
                    "clusterroles"
                } else {
                    "roles"
                };
                let exempt = may("bind", plural, role_name);
                if matches!(
                    auth.authorize_fresh(user, &exempt).await,
                    Decision::Allow(_)
                ) {
                    return Ok(());
                }
                // The refusal above waited for the cache: the role is as current as it gets.
                let Some(rules) = auth
                    .cache
                    .read(|s| s.rbac.role_rules(role_kind, &namespace, role_name))
                else {
                    return Err(ApiError::forbidden_for(
                        RBAC_GROUP,
                        t.kind.plural,
                        &name,
                        &format!(
                            "{} {role_name:?} not found, and user {:?} may not bind it",
                            role_kind.to_ascii_lowercase(),
                            user.name
                        ),
                    ));
                };
                (rules, None)
            }
            _ => return Ok(()),
        };
        if let Some(exempt) = &exempt
            && matches!(auth.authorize_fresh(user, exempt).await, Decision::Allow(_))
        {
            return Ok(());
        }
        let scope = if t.kind.kind.starts_with("Cluster") {
            ""
        } else {
            namespace.as_str()
        };
        let mut missing = uncovered(&auth.cache.index().rules_for(user, scope).0, &servant);
        if !missing.is_empty() {
            auth.cache.fresh().await;
            missing = uncovered(&auth.cache.index().rules_for(user, scope).0, &servant);
        }
        if missing.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = missing.iter().take(10).map(show_rule).collect();
        let more = if missing.len() > 10 {
            format!(" and {} more", missing.len() - 10)
        } else {
            String::new()
        };
        Err(ApiError::forbidden_for(
            RBAC_GROUP,
            t.kind.plural,
            &name,
            &format!(
                "user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}{more}",
                user.name,
                user.groups,
                shown.join("\n")
            ),
        ))
    }

    async fn require(
        &self,
        auth: &crate::auth::Auth,
        user: &UserInfo,
        a: &Attributes,
        t: &Target,
        why: &str,
    ) -> ApiResult<()> {
        match auth.authorize_fresh(user, a).await {
            Decision::Allow(_) => Ok(()),
            _ => Err(ApiError::forbidden_for(
                t.kind.group,
                t.kind.plural,
                t.name.as_deref().unwrap_or_default(),
                &format!("{}: {why}", a.forbidden_message(&user.name)),
            )),
        }
    }
}

/// A rule as Kubernetes prints it in escalation errors.
fn show_rule(r: &PolicyRule) -> String {
    if r.non_resource_urls.is_empty() {
        let names = if r.resource_names.is_empty() {
            String::new()
        } else {
            format!(", ResourceNames:{:?}", r.resource_names)
        };
        format!(
            "{{APIGroups:{:?}, Resources:{:?}{names}, Verbs:{:?}}}",
            r.api_groups, r.resources, r.verbs
        )
    } else {
        format!(
            "{{NonResourceURLs:{:?}, Verbs:{:?}}}",
            r.non_resource_urls, r.verbs
        )
    }
}
