//! Requests turned into types early: which kind and object a path names, and the options a
//! query carries.

use std::collections::HashMap;
use std::sync::Arc;

use keel_schemas::{Kind, Scope};

use crate::auth::UserInfo;

use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult};

/// What a path names.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The kind.
    pub kind: &'static Kind,
    /// The namespace from the path (`None` for cluster-wide kinds, or for a list across all
    /// namespaces).
    pub namespace: Option<String>,
    /// The object's name (`None` for a collection).
    pub name: Option<String>,
    /// The subresource the path ends in, if any.
    pub sub: Subresource,
    /// A dry run (`dryRun=All`): the write is admitted and answered, not stored.
    pub dry_run: bool,
    /// Who asks (after impersonation); `None` for the server itself.
    pub user: Option<Arc<UserInfo>>,
}

// === impl Target ===

impl Target {
    /// The server's own request for object `name` (or the collection) of `kind`.
    pub(crate) fn internal(
        kind: &'static Kind,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Target {
        Target {
            kind,
            namespace: namespace.map(String::from),
            name: name.map(String::from),
            sub: Subresource::None,
            dry_run: false,
            user: None,
        }
    }

    /// Whether the path ends in `/status`.
    pub(crate) fn status(&self) -> bool {
        self.sub == Subresource::Status
    }
}

/// The part of an object a path names after the object's own name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subresource {
    /// The object itself (or a collection).
    None,
    /// `/status`.
    Status,
    /// `/scale`: a workload's replica count.
    Scale,
    /// `/log`: a guest's console or a container's output, read from its node.
    Log,
    /// `/exec`: a command run in a container, its streams through the node.
    Exec,
    /// `/attach`: a running container's streams, through the node.
    Attach,
    /// `/portforward`: connections to a pod's ports, through the node.
    PortForward,
}

// === impl Subresource ===

impl Subresource {
    fn parse(segment: &str) -> Option<Subresource> {
        Some(match segment {
            "status" => Subresource::Status,
            "scale" => Subresource::Scale,
            "log" => Subresource::Log,
            "exec" => Subresource::Exec,
            "attach" => Subresource::Attach,
            "portforward" => Subresource::PortForward,
            _ => return None,
        })
    }

    /// A stream to a container, not a document: exec, attach or port-forward.
    pub(crate) fn is_stream(self) -> bool {
        matches!(
            self,
            Subresource::Exec | Subresource::Attach | Subresource::PortForward
        )
    }
}

/// Options of a list or watch.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub continue_token: Option<String>,
    pub resource_version: Option<u64>,
    /// `resourceVersion=0`: any state this server has (no read index).
    pub any_version: bool,
    /// `resourceVersionMatch=Exact`.
    pub exact: bool,
    pub watch: bool,
    pub bookmarks: bool,
    pub timeout_seconds: Option<u64>,
    /// `sendInitialEvents=true`: a watch starts with the current state.
    pub send_initial_events: Option<bool>,
}

/// Finds the kind and object a path under `/api/v1` or `/apis/{group}/{version}` names.
pub(crate) fn target(group: &str, version: &str, rest: &str) -> ApiResult<Target> {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let find = |plural: &str| -> ApiResult<&'static Kind> {
        keel_schemas::kinds_in(group, version)
            .find(|k| k.plural == plural)
            .ok_or_else(|| {
                let gv = if group.is_empty() {
                    version.to_string()
                } else {
                    format!("{group}/{version}")
                };
                ApiError::no_route(&format!("no resource \"{plural}\" in {gv}"))
            })
    };
    let owned = |s: &str| Some(s.to_string());
    let sub = |segment: &str| Subresource::parse(segment).ok_or_else(|| ApiError::no_route(rest));
    let (plural, namespace, name, sub) = match segments.as_slice() {
        // A namespace's own status, not a collection called "status" in it.
        ["namespaces", name, "status"] if group.is_empty() => {
            ("namespaces", None, owned(name), Subresource::Status)
        }
        ["namespaces", ns, plural] => (*plural, owned(ns), None, Subresource::None),
        ["namespaces", ns, plural, name] => (*plural, owned(ns), owned(name), Subresource::None),
        ["namespaces", ns, plural, name, segment] => {
            (*plural, owned(ns), owned(name), sub(segment)?)
        }
        [plural] => (*plural, None, None, Subresource::None),
        [plural, name] => (*plural, None, owned(name), Subresource::None),
        [plural, name, "status"] => (*plural, None, owned(name), Subresource::Status),
        _ => return Err(ApiError::no_route(rest)),
    };
    let t = Target {
        kind: find(plural)?,
        namespace,
        name,
        sub,
        dry_run: false,
        user: None,
    };
    match (t.kind.scope, &t.namespace, &t.name) {
        (Scope::Cluster, Some(_), _) => Err(ApiError::no_route(&format!(
            "{} are not namespaced",
            t.kind.plural
        ))),
        (Scope::Namespaced, None, Some(_)) => Err(ApiError::no_route(&format!(
            "{} are namespaced: use /namespaces/NAMESPACE/{}/NAME",
            t.kind.plural, t.kind.plural
        ))),
        _ => Ok(t),
    }
}

/// Parses the query of a list or watch.
pub(crate) fn list_options(query: &HashMap<String, String>) -> ApiResult<ListOptions> {
    let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
    let number = |name: &str| -> ApiResult<Option<u64>> {
        match query.get(name).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("{name}: {v:?} is not a non-negative integer"))
            }),
        }
    };
    let rv = number("resourceVersion")?;
    Ok(ListOptions {
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?,
        limit: number("limit")?.unwrap_or(0) as usize,
        continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
        any_version: rv == Some(0),
        resource_version: rv.filter(|&v| v > 0),
        exact: query
            .get("resourceVersionMatch")
            .is_some_and(|m| m == "Exact"),
        watch: flag("watch"),
        bookmarks: flag("allowWatchBookmarks"),
        timeout_seconds: number("timeoutSeconds")?,
        send_initial_events: query.get("sendInitialEvents").map(|v| v == "true"),
    })
}

/// A `metadata.resourceVersion` as a revision: empty or missing is `None`.
pub(crate) fn parse_rv(value: Option<&str>) -> ApiResult<Option<u64>> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "metadata.resourceVersion: {v:?} is not a resource version"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_kinds_and_objects() {
        let t = target("", "v1", "namespaces/shop/configmaps/x").unwrap();
        assert_eq!(
            (
                t.kind.kind,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.status()
            ),
            ("ConfigMap", Some("shop"), Some("x"), false)
        );
        let t = target("", "v1", "namespaces/shop").unwrap();
        assert_eq!(
            (t.kind.kind, t.name.as_deref()),
            ("Namespace", Some("shop"))
        );
        let t = target("", "v1", "namespaces/shop/status").unwrap();
        assert_eq!(
            (t.kind.kind, t.name.as_deref(), t.status()),
            ("Namespace", Some("shop"), true)
        );
        let t = target(
            "keel.dev",
            "v1alpha1",
            "namespaces/a/virtualmachines/web/status",
        )
        .unwrap();
        assert_eq!((t.kind.kind, t.status()), ("VirtualMachine", true));
        let t = target("keel.dev", "v1alpha1", "virtualmachines").unwrap();
        assert_eq!((t.kind.kind, t.namespace), ("VirtualMachine", None));
        assert!(target("keel.dev", "v1alpha1", "virtualmachines/web").is_err());
        assert!(target("", "v1", "namespaces/a/nodes/n").is_err());
        assert!(target("", "v1", "frobs").is_err());
        assert!(target("keel.dev", "v1", "virtualmachines").is_err());
    }

    #[test]
    fn queries_parse_or_say_what_is_wrong() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let o = list_options(&q(&[
            ("watch", "true"),
            ("resourceVersion", "12"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert!(o.watch && o.resource_version == Some(12) && o.limit == 5);
        let o = list_options(&q(&[("resourceVersion", "0")])).unwrap();
        assert!(o.any_version && o.resource_version.is_none());
        let err = list_options(&q(&[("limit", "-1")])).unwrap_err();
        assert!(err.message.contains("limit"), "{}", err.message);
    }
}
