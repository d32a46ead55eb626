//! Discovery: `/api`, `/apis`, and the resource lists of each group version, from the kind
//! registry, so that `kubectl` finds every kind by name and short name.

use serde_json::{Value, json};

use keel_schemas::{Kind, Scope, registry};

/// `/api`: the core group's versions.
pub(crate) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/apis`: every named group and its versions.
pub(crate) fn api_groups() -> Value {
    let mut groups: Vec<(&str, &str)> = registry()
        .iter()
        .filter(|k| !k.group.is_empty())
        .map(|k| (k.group, k.version))
        .chain(super::reviews::REVIEWS.iter().map(|r| (r.0, "v1")))
        .collect();
    groups.sort();
    groups.dedup();
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups.iter().map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        }).collect::<Vec<_>>(),
    })
}

/// `/api/v1` or `/apis/{group}/{version}`: the resources served there; `None` if none.
pub(crate) fn resources(group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&Kind> = keel_schemas::kinds_in(group, version).collect();
    let reviews: Vec<_> = super::reviews::REVIEWS
        .iter()
        .filter(|r| r.0 == group && version == "v1")
        .collect();
    if kinds.is_empty() && reviews.is_empty() {
        return None;
    }
    let verbs = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    let mut resources = Vec::new();
    for k in kinds {
        resources.push(json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.scope == Scope::Namespaced,
            "kind": k.kind,
            "verbs": verbs,
            "shortNames": k.short_names,
            "categories": if k.group.is_empty() { json!([]) } else { json!(["all", "keel"]) },
        }));
        resources.push(json!({
            "name": format!("{}/status", k.plural),
            "singularName": "",
            "namespaced": k.scope == Scope::Namespaced,
            "kind": k.kind,
            "verbs": ["get", "patch", "update"],
        }));
        if k.plural == "serviceaccounts" {
            // TokenRequest: `kubectl create token NAME`.
            resources.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
        if k.plural == "virtualmachines" {
            // The guest's serial console, read from its node (see `logs`).
            resources.push(json!({
                "name": format!("{}/log", k.plural),
                "singularName": "",
                "namespaced": true,
                "kind": k.kind,
                "verbs": ["get"],
            }));
        }
    }
    for (_, plural, kind, namespaced) in reviews {
        resources.push(json!({
            "name": plural,
            "singularName": "",
            "namespaced": namespaced,
            "kind": kind,
            "verbs": ["create"],
        }));
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// `/version`.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": format!("v1.32.0-keel.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}
