//! The default RBAC policy every cluster starts with (Kubernetes' bootstrap policy, over
//! Keel's kinds): the user-facing roles `cluster-admin`, `admin`, `edit` and `view`, the
//! roles everyone has (discovery, health, asking what one may do), and one role per cluster
//! controller with exactly what it reads and writes.
//!
//! `admin`, `edit` and `view` are aggregated, as in Kubernetes: each gathers the rules of
//! the ClusterRoles labelled `rbac.authorization.k8s.io/aggregate-to-{admin,edit,view}`, so
//! an add-on extends them by labelling a role of its own. `view` is aggregated into `edit`,
//! and `edit` into `admin`.
//!
//! Every object carries `rbac.authorization.kubernetes.io/autoupdate: "true"`: a server
//! adds what is missing at start (rules and subjects), and leaves alone an object whose
//! annotation an admin set to `"false"`.

use keel_schemas::identity::{
    AUTHENTICATED, CONTROLLER_MANAGER, MASTERS, SERVICE_ACCOUNTS, UNAUTHENTICATED, controller_user,
};
use keel_schemas::{APPS_GROUP, KEEL_GROUP, RBAC_GROUP, Scope, registry};
use serde_json::{Value, json};

/// The annotation that lets a server reconcile a default policy object.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// The label on the default policy objects.
const BOOTSTRAPPING: &str = "kubernetes.io/bootstrapping";

/// The cluster controllers with roles of their own (`system:controller:NAME`, granted to
/// the user `system:keel-controller:NAME`).
pub const CONTROLLERS: [&str; 21] = [
    "scheduler",
    "kubernetes-service",
    "statefulsets",
    "volumes",
    "services",
    "cluster-dns",
    "jobs",
    "cronjobs",
    "daemonsets",
    "node-ipam",
    "replicasets",
    "deployments",
    "node-lifecycle",
    "garbage-collector",
    "buckets",
    "loadbalancers",
    "zones",
    "network",
    "rollout",
    "serviceaccounts",
    "resourcequotas",
];

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// A rule.
fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

/// A rule over non-resource URLs.
fn urls(verbs: &[&str], paths: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": paths})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>, aggregate: Option<&str>) -> Value {
    let mut labels = labels;
    labels[BOOTSTRAPPING] = json!("rbac-defaults");
    let mut role = json!({
        "apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}},
        "rules": rules,
    });
    if let Some(target) = aggregate {
        role["aggregationRule"] = json!({"clusterRoleSelectors": [
            {"matchLabels": {format!("{RBAC_GROUP}/aggregate-to-{target}"): "true"}}
        ]});
    }
    role
}

fn cluster_binding(name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({
        "apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {BOOTSTRAPPING: "rbac-defaults"},
                     "annotations": {AUTOUPDATE: "true"}},
        "subjects": subjects,
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
    })
}

fn group(name: &str) -> Value {
    json!({"kind": "Group", "apiGroup": RBAC_GROUP, "name": name})
}

fn user(name: &str) -> Value {
    json!({"kind": "User", "apiGroup": RBAC_GROUP, "name": name})
}

/// The namespaced kinds a tenant's roles cover, by group: every one but the RBAC kinds
/// (`admin` only), Secrets (`edit` and up), Leases (the system's) and Events.
fn tenant_resources(with_secrets: bool) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut by_group: Vec<(&str, Vec<&str>)> = Vec::new();
    for kind in registry().iter().filter(|k| k.scope == Scope::Namespaced) {
        let skip = matches!(kind.plural, "events" | "leases")
            || kind.group == RBAC_GROUP
            || (kind.plural == "secrets" && !with_secrets);
        if skip {
            continue;
        }
        match by_group.iter_mut().find(|(g, _)| *g == kind.group) {
            Some((_, list)) => list.push(kind.plural),
            None => by_group.push((kind.group, vec![kind.plural])),
        }
    }
    by_group
}

/// The user-facing aggregated roles and the roles they gather from.
fn tenant_roles() -> Vec<Value> {
    let aggregate_to =
        |target: &str| json!({format!("{RBAC_GROUP}/aggregate-to-{target}"): "true"});
    // view: read every tenant kind and its status, guests' consoles, events; not Secrets.
    let mut view = Vec::new();
    for (g, resources) in tenant_resources(false) {
        let mut with_status: Vec<String> = resources.iter().map(|r| r.to_string()).collect();
        with_status.extend(resources.iter().map(|r| format!("{r}/status")));
        let refs: Vec<&str> = with_status.iter().map(String::as_str).collect();
        view.push(rule(&READ, &[g], &refs));
    }
    view.push(rule(&["get"], &[KEEL_GROUP], &["virtualmachines/log"]));
    view.push(rule(&["get"], &[""], &["pods/log"]));
    view.push(rule(
        &READ,
        &[APPS_GROUP],
        &[
            "deployments/scale",
            "replicasets/scale",
            "statefulsets/scale",
        ],
    ));
    view.push(rule(
        &READ,
        &[""],
        &["events", "namespaces", "namespaces/status"],
    ));
    // edit: write every tenant kind (Secrets included) but Revisions, which the rollout
    // controller keeps, and ResourceQuotas and LimitRanges, which cluster admins set; act as
    // the namespace's service accounts.
    let mut edit = Vec::new();
    for (g, resources) in tenant_resources(true) {
        let writable: Vec<&str> = resources
            .iter()
            .copied()
            .filter(|r| !matches!(*r, "revisions" | "resourcequotas" | "limitranges"))
            .collect();
        edit.push(rule(&WRITE, &[g], &writable));
    }
    edit.push(rule(&READ, &[""], &["secrets"]));
    edit.push(rule(
        &["update", "patch"],
        &[APPS_GROUP],
        &[
            "deployments/scale",
            "replicasets/scale",
            "statefulsets/scale",
        ],
    ));
    edit.push(rule(&["create"], &[""], &["serviceaccounts/token"]));
    edit.push(rule(
        &["create", "get"],
        &[""],
        &["pods/exec", "pods/attach", "pods/portforward"],
    ));
    edit.push(rule(&["impersonate"], &[""], &["serviceaccounts"]));
    // admin: the namespace's roles and bindings too (within what the admin holds).
    let admin = vec![
        rule(
            &[
                "get",
                "list",
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
            ],
            &[RBAC_GROUP],
            &["roles", "rolebindings"],
        ),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
    ];
    vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
            None,
        ),
        cluster_role("admin", json!({}), vec![], Some("admin")),
        cluster_role("edit", aggregate_to("admin"), vec![], Some("edit")),
        cluster_role("view", aggregate_to("edit"), vec![], Some("view")),
        cluster_role(
            "system:aggregate-to-admin",
            aggregate_to("admin"),
            admin,
            None,
        ),
        cluster_role("system:aggregate-to-edit", aggregate_to("edit"), edit, None),
        cluster_role("system:aggregate-to-view", aggregate_to("view"), view, None),
    ]
}

/// The roles everyone has.
fn public_roles() -> Vec<Value> {
    let health = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    let mut discovery: Vec<&str> = vec![
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/openapi",
        "/openapi/*",
    ];
    discovery.extend(health);
    vec![
        cluster_role(
            "system:discovery",
            json!({}),
            vec![urls(&["get"], &discovery)],
            None,
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![urls(&["get"], &health)],
            None,
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
                // The image catalogue is what every tenant's VMs may boot from.
                rule(&["get", "list", "watch"], &["keel.dev"], &["clusterimages"]),
            ],
            None,
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            json!({}),
            vec![urls(
                &["get"],
                &["/.well-known/openid-configuration", "/openid/v1/jwks"],
            )],
            None,
        ),
    ]
}

/// The events every controller records.
fn events() -> Value {
    rule(&["create", "patch", "update"], &[""], &["events"])
}

/// What each cluster controller reads and writes.
fn controller_rules(name: &str) -> Vec<Value> {
    let k = [KEEL_GROUP];
    match name {
        "scheduler" => vec![
            rule(&READ, &k, &["virtualmachines"]),
            rule(&READ, &[""], &["nodes", "pods"]),
            rule(
                &READ,
                &[""],
                &["persistentvolumeclaims", "persistentvolumes"],
            ),
            rule(&READ, &["storage.k8s.io"], &["storageclasses"]),
            // The node a claim's first pod goes to, where its volume is made.
            rule(&["patch"], &[""], &["persistentvolumeclaims"]),
            rule(&["update", "patch"], &k, &["virtualmachines/status"]),
            // A pod's binding is its spec.nodeName, set once.
            rule(&["patch"], &[""], &["pods"]),
            rule(&["update", "patch"], &[""], &["pods/status"]),
            events(),
        ],
        "services" => vec![
            rule(&READ, &[""], &["services", "pods"]),
            // ClusterIPs and NodePorts are written into the Service's spec.
            rule(&["patch"], &[""], &["services"]),
            rule(&["update", "patch"], &[""], &["services/status"]),
            rule(
                &[
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ],
                &["discovery.k8s.io"],
                &["endpointslices"],
            ),
            // A `type: LoadBalancer` Service's LoadBalancer.
            rule(
                &[
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ],
                &k,
                &["loadbalancers"],
            ),
            events(),
        ],
        "replicasets" => vec![
            rule(&READ, &[APPS_GROUP], &["replicasets"]),
            rule(&["update", "patch"], &[APPS_GROUP], &["replicasets/status"]),
            rule(&READ, &[""], &["pods"]),
            rule(&["create", "delete", "patch"], &[""], &["pods"]),
            events(),
        ],
        "daemonsets" => vec![
            rule(&READ, &[APPS_GROUP], &["daemonsets"]),
            rule(&["update", "patch"], &[APPS_GROUP], &["daemonsets/status"]),
            rule(&READ, &[""], &["pods", "nodes"]),
            rule(&["create", "delete", "patch"], &[""], &["pods"]),
            events(),
        ],
        "kubernetes-service" => vec![
            rule(&READ, &[""], &["namespaces", "services"]),
            rule(&READ, &["coordination.k8s.io"], &["leases"]),
            rule(&["create"], &[""], &["services"]),
            rule(
                &[
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ],
                &["discovery.k8s.io"],
                &["endpointslices"],
            ),
        ],
        "statefulsets" => vec![
            rule(&READ, &[APPS_GROUP], &["statefulsets"]),
            rule(
                &["update", "patch"],
                &[APPS_GROUP],
                &["statefulsets/status"],
            ),
            rule(&READ, &[""], &["pods", "persistentvolumeclaims"]),
            rule(&["create", "delete", "patch"], &[""], &["pods"]),
            rule(&["create", "delete"], &[""], &["persistentvolumeclaims"]),
            events(),
        ],
        "volumes" => vec![
            rule(
                &READ,
                &[""],
                &[
                    "persistentvolumeclaims",
                    "persistentvolumes",
                    "nodes",
                    "pods",
                ],
            ),
            rule(&READ, &["storage.k8s.io"], &["storageclasses"]),
            // The default class, and the binding (`spec.volumeName`).
            rule(&["update", "patch"], &[""], &["persistentvolumeclaims"]),
            rule(
                &["update", "patch"],
                &[""],
                &["persistentvolumeclaims/status", "persistentvolumes/status"],
            ),
            rule(&["create", "delete"], &[""], &["persistentvolumes"]),
            events(),
        ],
        "jobs" => vec![
            rule(&READ, &["batch"], &["jobs"]),
            rule(&["update", "patch"], &["batch"], &["jobs/status"]),
            // A finished job's time to live.
            rule(&["delete"], &["batch"], &["jobs"]),
            rule(&READ, &[""], &["pods"]),
            rule(&["create", "delete", "patch"], &[""], &["pods"]),
            events(),
        ],
        "cronjobs" => vec![
            rule(&READ, &["batch"], &["cronjobs", "jobs"]),
            rule(&["update", "patch"], &["batch"], &["cronjobs/status"]),
            rule(&["create", "delete"], &["batch"], &["jobs"]),
            events(),
        ],
        "deployments" => vec![
            rule(&READ, &[APPS_GROUP], &["deployments", "replicasets"]),
            // A rollback puts the last good template back into the spec.
            rule(&["update", "patch"], &[APPS_GROUP], &["deployments"]),
            rule(&["update", "patch"], &[APPS_GROUP], &["deployments/status"]),
            rule(
                &["create", "update", "patch", "delete"],
                &[APPS_GROUP],
                &["replicasets"],
            ),
            rule(&READ, &[""], &["pods"]),
            events(),
        ],
        "node-ipam" => vec![
            rule(&READ, &[""], &["nodes"]),
            rule(&["patch"], &[""], &["nodes"]),
            events(),
        ],
        "node-lifecycle" => vec![
            rule(&READ, &[""], &["nodes"]),
            rule(&READ, &["coordination.k8s.io"], &["leases"]),
            rule(&READ, &k, &["virtualmachines"]),
            rule(&["update", "patch"], &[""], &["nodes/status"]),
            rule(&["update", "patch"], &k, &["virtualmachines/status"]),
            // A lost node's VM finalizers, which the node itself would remove.
            rule(&["patch"], &k, &["virtualmachines"]),
            // A lost node's pods: deleted, and the node's finalizer on them released.
            rule(&READ, &[""], &["pods"]),
            rule(&["delete", "patch"], &[""], &["pods"]),
            events(),
        ],
        "garbage-collector" => vec![rule(&["get", "list", "watch", "delete"], &["*"], &["*"])],
        "buckets" => vec![
            rule(&READ, &k, &["buckets"]),
            rule(&READ, &[""], &["nodes"]),
            rule(&["get", "list", "watch", "create"], &[""], &["secrets"]),
            rule(&["update", "patch"], &k, &["buckets/status"]),
            events(),
        ],
        "loadbalancers" => vec![
            rule(&READ, &k, &["loadbalancers"]),
            rule(&READ, &[""], &["nodes"]),
            rule(&["update", "patch"], &k, &["loadbalancers/status"]),
            events(),
        ],
        "zones" => vec![
            rule(
                &READ,
                &k,
                &["zones", "virtualmachines", "loadbalancers", "subnets"],
            ),
            rule(&READ, &[""], &["nodes", "services", "pods"]),
            rule(&READ, &["discovery.k8s.io"], &["endpointslices"]),
            rule(&["update", "patch"], &k, &["zones/status"]),
            events(),
        ],
        "cluster-dns" => vec![
            rule(&READ, &[""], &["namespaces", "nodes", "services"]),
            rule(&READ, &k, &["zones"]),
            rule(&["create"], &[""], &["services"]),
            rule(&["create"], &k, &["zones"]),
            rule(
                &[
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ],
                &["discovery.k8s.io"],
                &["endpointslices"],
            ),
            events(),
        ],
        "network" => {
            let kinds = [
                "vpcs",
                "subnets",
                "securitygroups",
                "virtualmachines",
                "loadbalancers",
            ];
            let status: Vec<String> = kinds.iter().map(|r| format!("{r}/status")).collect();
            let status: Vec<&str> = status.iter().map(String::as_str).collect();
            vec![
                rule(&READ, &k, &kinds),
                rule(&["update", "patch"], &k, &status),
                events(),
            ]
        }
        "rollout" => vec![
            rule(
                &READ,
                &k,
                &["loadbalancers", "zones", "virtualmachines", "revisions"],
            ),
            rule(
                &["update", "patch"],
                &k,
                &["loadbalancers", "zones", "virtualmachines"],
            ),
            rule(
                &["update", "patch"],
                &k,
                &[
                    "loadbalancers/status",
                    "zones/status",
                    "virtualmachines/status",
                    "revisions/status",
                ],
            ),
            rule(&["create", "update", "patch", "delete"], &k, &["revisions"]),
            events(),
        ],
        "serviceaccounts" => vec![
            rule(
                &READ,
                &[""],
                &["namespaces", "serviceaccounts", "configmaps"],
            ),
            rule(&["create"], &[""], &["serviceaccounts"]),
            // Every namespace's kube-root-ca.crt.
            rule(&["create", "update"], &[""], &["configmaps"]),
        ],
        // It counts (lists) any kind a quota may name.
        "resourcequotas" => vec![
            rule(&READ, &[""], &["resourcequotas"]),
            rule(&["list"], &["*"], &["*"]),
            rule(&["update"], &[""], &["resourcequotas/status"]),
        ],
        _ => Vec::new(),
    }
}

/// Every default ClusterRole.
pub fn cluster_roles() -> Vec<Value> {
    let mut roles = tenant_roles();
    roles.extend(public_roles());
    roles.push(cluster_role(
        CONTROLLER_MANAGER,
        json!({}),
        vec![
            rule(
                &["get", "create", "update"],
                &["coordination.k8s.io"],
                &["leases"],
            ),
            events(),
        ],
        None,
    ));
    for name in CONTROLLERS {
        roles.push(cluster_role(
            &format!("system:controller:{name}"),
            json!({}),
            controller_rules(name),
            None,
        ));
    }
    roles
}

/// Every default ClusterRoleBinding.
pub fn cluster_role_bindings() -> Vec<Value> {
    let everyone = || vec![group(AUTHENTICATED), group(UNAUTHENTICATED)];
    let mut bindings = vec![
        cluster_binding("cluster-admin", "cluster-admin", vec![group(MASTERS)]),
        cluster_binding("system:discovery", "system:discovery", everyone()),
        cluster_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            everyone(),
        ),
        cluster_binding(
            "system:basic-user",
            "system:basic-user",
            vec![group(AUTHENTICATED)],
        ),
        cluster_binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            vec![group(SERVICE_ACCOUNTS)],
        ),
        cluster_binding(
            CONTROLLER_MANAGER,
            CONTROLLER_MANAGER,
            vec![user(CONTROLLER_MANAGER)],
        ),
    ];
    for name in CONTROLLERS {
        let role = format!("system:controller:{name}");
        bindings.push(cluster_binding(
            &role,
            &role,
            vec![user(&controller_user(name))],
        ));
    }
    bindings
}

/// What reconciling a default object leaves: `existing` with the default's missing rules and
/// subjects added (and its aggregation rule), or `None` when nothing is missing or an admin
/// turned autoupdate off.
pub fn reconcile(default: &Value, existing: &Value) -> Option<Value> {
    if existing["metadata"]["annotations"][AUTOUPDATE] == "false" {
        return None;
    }
    let mut next = existing.clone();
    let mut changed = false;
    for field in ["rules", "subjects"] {
        let Some(wanted) = default[field].as_array() else {
            continue;
        };
        let mut have = next[field].as_array().cloned().unwrap_or_default();
        for item in wanted {
            if !have.contains(item) {
                have.push(item.clone());
                changed = true;
            }
        }
        next[field] = Value::Array(have);
    }
    if default.get("aggregationRule").is_some()
        && next["aggregationRule"] != default["aggregationRule"]
    {
        next["aggregationRule"] = default["aggregationRule"].clone();
        changed = true;
    }
    changed.then_some(next)
}

#[cfg(test)]
mod tests {
    use keel_schemas::kinds::access::{ClusterRole, RoleBinding};

    use super::*;
    use crate::auth::UserInfo;
    use crate::auth::rbac::{Attributes, Decision, RbacObjects};

    fn defaults() -> RbacObjects {
        let mut o = RbacObjects::default();
        for r in cluster_roles() {
            let role: ClusterRole = serde_json::from_value(r).unwrap();
            o.cluster_roles
                .insert(role.metadata.name.clone().unwrap(), role);
        }
        for b in cluster_role_bindings() {
            let b: RoleBinding = serde_json::from_value(b).unwrap();
            o.cluster_role_bindings
                .insert(b.metadata.name.clone().unwrap(), b);
        }
        o
    }

    fn allowed(o: &RbacObjects, user: &UserInfo, a: &Attributes) -> bool {
        matches!(o.index().authorize(user, a), Decision::Allow(_))
    }

    fn res(verb: &str, group: &str, resource: &str, ns: &str) -> Attributes {
        crate::auth::rbac::request(verb, group, resource, ns, "")
    }

    #[test]
    fn every_default_object_is_valid() {
        for object in cluster_roles().into_iter().chain(cluster_role_bindings()) {
            let kind = keel_schemas::lookup(object["kind"].as_str().unwrap()).unwrap();
            assert_eq!(keel_schemas::validate(kind, &object), Ok(()), "{object}");
        }
    }

    #[test]
    fn the_default_roles_grant_what_their_names_say() {
        let mut o = defaults();
        let bind = |o: &mut RbacObjects, user: &str, role: &str| {
            let b: RoleBinding = serde_json::from_value(json!({
                "metadata": {"name": format!("{user}-{role}"), "namespace": "shop"},
                "subjects": [{"kind": "User", "apiGroup": RBAC_GROUP, "name": user}],
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            }))
            .unwrap();
            o.role_bindings
                .insert(("shop".into(), format!("{user}-{role}")), b);
        };
        bind(&mut o, "ann", "admin");
        bind(&mut o, "ed", "edit");
        bind(&mut o, "vic", "view");
        let u = |n: &str| UserInfo::authenticated(n, "", Vec::new());
        let (ann, ed, vic) = (u("ann"), u("ed"), u("vic"));
        let create_vm = res("create", KEEL_GROUP, "virtualmachines", "shop");
        assert!(allowed(&o, &ann, &create_vm) && allowed(&o, &ed, &create_vm));
        assert!(!allowed(&o, &vic, &create_vm));
        for user in [&ann, &ed, &vic] {
            assert!(allowed(
                &o,
                user,
                &res("watch", KEEL_GROUP, "loadbalancers", "shop")
            ));
            assert!(allowed(
                &o,
                user,
                &res("get", KEEL_GROUP, "virtualmachines/log", "shop")
            ));
            assert!(!allowed(
                &o,
                user,
                &res("get", KEEL_GROUP, "virtualmachines", "other")
            ));
        }
        assert!(!allowed(&o, &vic, &res("get", "", "secrets", "shop")));
        assert!(allowed(&o, &ed, &res("get", "", "secrets", "shop")));
        assert!(!allowed(
            &o,
            &ed,
            &res("create", RBAC_GROUP, "rolebindings", "shop")
        ));
        assert!(allowed(
            &o,
            &ann,
            &res("create", RBAC_GROUP, "rolebindings", "shop")
        ));
        assert!(!allowed(
            &o,
            &ann,
            &res("create", KEEL_GROUP, "usertokens", "")
        ));
        assert!(!allowed(
            &o,
            &ed,
            &res("update", KEEL_GROUP, "revisions", "shop")
        ));
        // A namespace's quotas and limits are the cluster admins': its own admin reads them.
        for resource in ["resourcequotas", "limitranges"] {
            for verb in ["create", "update", "patch", "delete", "deletecollection"] {
                for user in [&ann, &ed] {
                    let a = res(verb, "", resource, "shop");
                    assert!(!allowed(&o, user, &a), "{verb} {resource}");
                }
            }
            for user in [&ann, &ed, &vic] {
                assert!(allowed(&o, user, &res("list", "", resource, "shop")));
            }
        }
        // Everyone may discover and ask; nobody anonymous may read objects.
        let anon = UserInfo::anonymous();
        assert!(allowed(
            &o,
            &anon,
            &Attributes::non_resource("get", "/apis/keel.dev/v1alpha1")
        ));
        assert!(allowed(
            &o,
            &anon,
            &Attributes::non_resource("get", "/healthz")
        ));
        assert!(!allowed(
            &o,
            &anon,
            &Attributes::non_resource("get", "/metrics")
        ));
        assert!(!allowed(&o, &anon, &res("list", "", "namespaces", "")));
        assert!(allowed(
            &o,
            &vic,
            &res(
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                ""
            )
        ));
        let admin = UserInfo::authenticated("root", "", [MASTERS.to_string()]);
        assert!(allowed(
            &o,
            &admin,
            &Attributes::non_resource("get", "/metrics")
        ));
    }

    #[test]
    fn reconciling_adds_what_is_missing_and_respects_autoupdate_false() {
        let default = cluster_roles()
            .into_iter()
            .find(|r| r["metadata"]["name"] == "view")
            .unwrap();
        assert_eq!(reconcile(&default, &default), None);
        let mut trimmed = default.clone();
        trimmed["aggregationRule"] = json!(null);
        assert_eq!(reconcile(&default, &trimmed), Some(default.clone()));
        let mut extended = default.clone();
        extended["rules"] = json!([rule(&["get"], &[""], &["pods"])]);
        let merged = reconcile(&default, &extended);
        assert_eq!(merged, None, "the default view has no own rules to add");
        let mut frozen = trimmed.clone();
        frozen["metadata"]["annotations"][AUTOUPDATE] = json!("false");
        assert_eq!(reconcile(&default, &frozen), None);
    }
}
