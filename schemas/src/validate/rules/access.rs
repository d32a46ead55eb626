//! Rules for the access kinds: RBAC roles and bindings (Kubernetes' rules), UserTokens.

use super::Field;
use crate::validate::FieldError;

/// A Role's or ClusterRole's rules: each names resources (with API groups) or non-resource
/// URLs, not both; a Role's never name non-resource URLs.
pub(super) fn role(root: &Field<'_>, namespaced: bool, errors: &mut Vec<FieldError>) {
    for rule in root.items_of("rules") {
        let has = |name| rule.get(name).is_some_and(|f| !f.items().is_empty());
        let urls = rule
            .get("nonResourceURLs")
            .filter(|f| !f.items().is_empty());
        if let Some(urls) = &urls {
            if namespaced {
                errors.push(FieldError::invalid(
                    urls.path.clone(),
                    urls.value,
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            } else if has("resources") || has("apiGroups") {
                errors.push(FieldError::invalid(
                    urls.path.clone(),
                    urls.value,
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            for url in urls.items() {
                if url.str().is_some_and(|u| !u.starts_with('/') && u != "*") {
                    errors.push(url.invalid("must start with / (or be *)"));
                }
            }
            continue;
        }
        if !has("resources") {
            errors.push(FieldError::required(
                format!("{}.resources", rule.path),
                "resource rules must supply at least one resource",
            ));
        }
        if !has("apiGroups") && rule.get("apiGroups").is_none() {
            errors.push(FieldError::required(
                format!("{}.apiGroups", rule.path),
                "resource rules must supply at least one api group",
            ));
        }
    }
}

/// A binding's subjects and role: users and groups in the RBAC group, service accounts in
/// the core group (with a namespace in a ClusterRoleBinding); a ClusterRoleBinding grants
/// only ClusterRoles.
pub(super) fn binding(root: &Field<'_>, namespaced: bool, errors: &mut Vec<FieldError>) {
    for subject in root.items_of("subjects") {
        let group = subject.str_at("apiGroup").unwrap_or_default();
        match subject.str_at("kind") {
            Some("User" | "Group") if group != crate::RBAC_GROUP => {
                errors.push(FieldError::invalid(
                    format!("{}.apiGroup", subject.path),
                    &serde_json::Value::String(group.into()),
                    "users and groups are in API group rbac.authorization.k8s.io",
                ));
            }
            Some("ServiceAccount") => {
                if !group.is_empty() {
                    errors.push(FieldError::invalid(
                        format!("{}.apiGroup", subject.path),
                        &serde_json::Value::String(group.into()),
                        "service accounts are in the core API group (\"\")",
                    ));
                }
                let ns = subject.str_at("namespace").unwrap_or_default();
                if !namespaced && ns.is_empty() {
                    errors.push(FieldError::required(
                        format!("{}.namespace", subject.path),
                        "a service account subject of a ClusterRoleBinding needs its namespace",
                    ));
                }
            }
            _ => {}
        }
    }
    if !namespaced
        && let Some(kind) = root
            .get("roleRef")
            .and_then(|r| r.get("kind"))
            .filter(|k| k.str() == Some("Role"))
    {
        errors.push(kind.invalid("a ClusterRoleBinding can only grant a ClusterRole"));
    }
}
