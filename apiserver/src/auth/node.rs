//! The Node authorizer and the node restriction (Kubernetes' Node authorizer and
//! NodeRestriction admission, over Keel's kinds): what a host agent, authenticated as
//! `system:node:NAME` in `system:nodes`, may do.
//!
//! A node may:
//! - read the cluster's nodes, and the workload and network kinds (as a kubelet reads
//!   pods and services);
//! - create and update its own Node (never its spec) and the status of it, and its own
//!   heartbeat Lease in `kube-node-lease`;
//! - write the status of the VMs, LoadBalancers, Buckets and Pods bound to it — but not the
//!   fields the cluster's controllers own there (the binding itself, addresses, the VIP) —
//!   and add or remove its own finalizer on them;
//! - read a Secret, ConfigMap or PersistentVolumeClaim only while a workload bound to it
//!   references it (by `get`, or a list or watch of that one name), and read
//!   PersistentVolumes and StorageClasses;
//! - ask for a token of a service account a pod bound to it uses, bound to such a pod;
//! - record Events.
//!
//! Anything else is left to RBAC, which grants nodes nothing by default.

use serde_json::Value;

use keel_schemas::wellknown::{
    BUCKET_STORAGE_FINALIZER, NODE_LEASE_NAMESPACE, POD_HOST_FINALIZER, VM_HOST_FINALIZER,
};

use super::cache::Graph;
use super::rbac::{Attributes, Decision};

/// The kinds every node may read, by (group, resource).
const READABLE: [(&str, &str); 15] = [
    ("", "nodes"),
    // Volumes are the cluster's, made by its provisioner; they hold no secret, and a node
    // finds its pods' directories through them.
    ("", "persistentvolumes"),
    ("storage.k8s.io", "storageclasses"),
    ("discovery.k8s.io", "endpointslices"),
    ("", "namespaces"),
    ("", "pods"),
    ("", "services"),
    ("keel.dev", "virtualmachines"),
    ("keel.dev", "loadbalancers"),
    ("keel.dev", "buckets"),
    ("keel.dev", "zones"),
    ("keel.dev", "vpcs"),
    ("keel.dev", "subnets"),
    ("keel.dev", "securitygroups"),
    ("keel.dev", "clusterimages"),
];

/// Status fields of bound objects that their controllers own, by resource: a node's status
/// write must leave them as they are. Condition types listed likewise.
fn pinned(resource: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match resource {
        "virtualmachines" => (&["nodeName"], &["Scheduled", "NetworkReady"]),
        "loadbalancers" => (&["nodeName", "vip"], &["Accepted"]),
        "buckets" => (&["nodeName", "bucketName", "secretName", "keySecrets"], &[]),
        _ => (&[], &[]),
    }
}

/// The finalizer a node may add to or remove from the objects of `resource` bound to it.
fn own_finalizer(resource: &str) -> Option<&'static str> {
    match resource {
        "virtualmachines" => Some(VM_HOST_FINALIZER),
        "buckets" => Some(BUCKET_STORAGE_FINALIZER),
        "pods" => Some(POD_HOST_FINALIZER),
        _ => None,
    }
}

const READ: [&str; 3] = ["get", "list", "watch"];

/// Whether node `node` may do `a`; `NoOpinion` with the reason otherwise.
pub fn authorize(graph: &Graph, node: &str, a: &Attributes) -> Decision {
    let Some(r) = &a.resource else {
        return Decision::NoOpinion(String::new());
    };
    let verb = a.verb.as_str();
    let allow = |why: &str| Decision::Allow(format!("Node: {why}"));
    let no = |why: String| Decision::NoOpinion(format!("node {node:?} {why}"));
    let read = READ.contains(&verb);
    let resource = (r.group.as_str(), r.resource.as_str());
    match (resource, r.subresource.as_str()) {
        (("", "events"), "") if matches!(verb, "create" | "patch" | "update") => allow("events"),
        (("", "nodes"), "") if read => allow("reads nodes"),
        (("", "nodes"), "") if verb == "create" => allow("registers itself"),
        // Not delete: a node that deleted itself would come back without the spec (cordon,
        // taints) its admin gave it.
        (("", "nodes"), "" | "status") if r.name == node && verb != "delete" => {
            allow("its own Node")
        }
        (("", "nodes"), _) => no("may only change its own Node".into()),
        (("coordination.k8s.io", "leases"), "") => {
            if r.namespace == NODE_LEASE_NAMESPACE && (verb == "create" || r.name == node) {
                allow("its own Lease")
            } else if r.namespace == "kube-system" && read {
                allow("reads the servers' Leases")
            } else {
                no(format!(
                    "may only use its own Lease in {NODE_LEASE_NAMESPACE}"
                ))
            }
        }
        ((_, "secrets" | "configmaps" | "persistentvolumeclaims"), "") if read => {
            if !r.name.is_empty() && graph.references(node, &r.resource, &r.namespace, &r.name) {
                allow("referenced by a workload bound to it")
            } else {
                no(format!(
                    "may only read {} referenced by its own workloads, one name at a time",
                    r.resource
                ))
            }
        }
        (res, "") if read && READABLE.contains(&res) => allow("reads workloads"),
        // Tokens of its pods' accounts (the API checks they are bound to such a pod).
        (("", "serviceaccounts"), "token") if verb == "create" => {
            if graph.references(node, "serviceaccounts", &r.namespace, &r.name) {
                allow("a token of the account of a pod bound to it")
            } else {
                no(format!(
                    "may only ask for tokens of its own pods' service accounts, not {}/{}",
                    r.namespace, r.name
                ))
            }
        }
        ((_, kind), sub)
            if !r.name.is_empty() && graph.node_of(kind, &r.namespace, &r.name).is_some() =>
        {
            let bound_here = graph.node_of(kind, &r.namespace, &r.name) == Some(node);
            let status = sub == "status" && matches!(verb, "get" | "update" | "patch");
            let finalizer = sub.is_empty()
                && matches!(verb, "update" | "patch")
                && own_finalizer(kind).is_some();
            if bound_here && (status || finalizer) {
                allow("a workload bound to it")
            } else {
                no(format!(
                    "may not {verb} {kind} {}/{} (bound to another node, or not its to write)",
                    r.namespace, r.name
                ))
            }
        }
        _ => no(String::new()),
    }
}

/// Why a node's write must be refused (NodeRestriction): the object it would store (`new`),
/// and the stored one for an update (`old`).
pub fn restrict(
    node: &str,
    resource: &str,
    subresource: &str,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), String> {
    let name = new["metadata"]["name"].as_str().unwrap_or_default();
    match (resource, subresource) {
        ("nodes", _) => {
            if name != node {
                return Err(format!("node {node:?} may not write node {name:?}"));
            }
            if let Some(old) = old
                && old.get("spec") != new.get("spec")
            {
                return Err(format!("node {node:?} may not change its own spec"));
            }
            let forbidden = |v: &Value| {
                v["metadata"]["labels"]
                    .as_object()
                    .map(|labels| {
                        labels
                            .iter()
                            .filter(|(k, _)| k.starts_with("node-restriction.kubernetes.io/"))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            };
            if old.map(forbidden).unwrap_or_default() != forbidden(new) {
                return Err(format!(
                    "node {node:?} may not set labels under node-restriction.kubernetes.io/: they are for admins to place workloads with"
                ));
            }
            Ok(())
        }
        ("leases", _) => {
            let ns = new["metadata"]["namespace"].as_str().unwrap_or_default();
            if ns != NODE_LEASE_NAMESPACE || name != node {
                return Err(format!(
                    "node {node:?} may only write its own Lease {NODE_LEASE_NAMESPACE}/{node}"
                ));
            }
            Ok(())
        }
        ("events", _) => Ok(()),
        (kind, "status") => {
            let Some(old) = old else { return Ok(()) };
            bound_here(node, kind, old, name)?;
            let (fields, conditions) = pinned(kind);
            for field in fields {
                if old["status"].get(*field) != new["status"].get(*field) {
                    return Err(format!(
                        "node {node:?} may not change status.{field} of {kind} {name:?}: the cluster's controllers own it"
                    ));
                }
            }
            if kind == "virtualmachines"
                && old["spec"]["nics"]
                    .as_array()
                    .is_some_and(|n| !n.is_empty())
                && old["status"].get("interfaces") != new["status"].get("interfaces")
            {
                return Err(format!(
                    "node {node:?} may not change status.interfaces of VM {name:?}: its addresses are the network controller's"
                ));
            }
            for type_ in conditions.iter() {
                if condition(old, type_) != condition(new, type_) {
                    return Err(format!(
                        "node {node:?} may not change the {type_} condition of {kind} {name:?}: the cluster's controllers own it"
                    ));
                }
            }
            Ok(())
        }
        (kind, "") => {
            let Some(old) = old else {
                return Err(format!("node {node:?} may not create {kind}"));
            };
            bound_here(node, kind, old, name)?;
            let own = own_finalizer(kind).unwrap_or_default();
            let mut a = old.clone();
            let mut b = new.clone();
            for v in [&mut a, &mut b] {
                if let Some(meta) = v["metadata"].as_object_mut() {
                    let kept: Vec<Value> = meta
                        .get("finalizers")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|f| f.as_str() != Some(own))
                        .cloned()
                        .collect();
                    meta.insert("finalizers".into(), Value::Array(kept));
                    meta.remove("resourceVersion");
                }
            }
            if a != b {
                return Err(format!(
                    "node {node:?} may only add or remove its finalizer {own} on {kind} {name:?}"
                ));
            }
            Ok(())
        }
        (kind, sub) => Err(format!("node {node:?} may not write {kind}/{sub}")),
    }
}

/// The stored object (read as the write commits, not the cache authorization used) must
/// still be bound to `node`.
fn bound_here(node: &str, kind: &str, old: &Value, name: &str) -> Result<(), String> {
    let binding = match kind {
        "pods" => &old["spec"]["nodeName"],
        _ => &old["status"]["nodeName"],
    };
    if binding.as_str() == Some(node) {
        Ok(())
    } else {
        Err(format!("{kind} {name:?} is not bound to node {node:?}"))
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[cfg(test)]
mod tests;
