//! The kind registry: every kind Keel serves, its names, scope and place in the store.

/// Whether objects of a kind live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Objects have a namespace (a tenant).
    Namespaced,
    /// Objects are cluster-wide (Node, Namespace).
    Cluster,
}

/// One registered kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// API group; empty for the Kubernetes core group (`v1`).
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// The kind, as in `kind:` (`VirtualMachine`).
    pub kind: &'static str,
    /// The resource name in URLs (`virtualmachines`).
    pub plural: &'static str,
    /// The lowercase singular (`virtualmachine`).
    pub singular: &'static str,
    /// Short names accepted on the command line (`vm`).
    pub short_names: &'static [&'static str],
    /// Namespaced or cluster-wide.
    pub scope: Scope,
}

/// The API group of StorageClass.
pub const STORAGE_GROUP: &str = "storage.k8s.io";

/// The API group of Keel's own kinds.
pub const KEEL_GROUP: &str = "keel.dev";

/// The version of Keel's own kinds.
pub const KEEL_VERSION: &str = "v1alpha1";

/// The API group of Kubernetes' RBAC kinds (Role, ClusterRole and their bindings).
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Kubernetes' group of the workload kinds (Deployment, ReplicaSet).
pub const APPS_GROUP: &str = "apps";
/// The batch workloads' group (Job).
pub const BATCH_GROUP: &str = "batch";

const fn keel(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
) -> Kind {
    Kind {
        group: KEEL_GROUP,
        version: KEEL_VERSION,
        kind,
        plural,
        singular,
        short_names,
        scope: Scope::Namespaced,
    }
}

const fn rbac(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    scope: Scope,
) -> Kind {
    Kind {
        group: RBAC_GROUP,
        version: "v1",
        kind,
        plural,
        singular,
        short_names: &[],
        scope,
    }
}

const fn core(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    scope: Scope,
) -> Kind {
    Kind {
        group: "",
        version: "v1",
        kind,
        plural,
        singular,
        short_names,
        scope,
    }
}

static REGISTRY: &[Kind] = &[
    keel(
        "VirtualMachine",
        "virtualmachines",
        "virtualmachine",
        &["vm", "vms"],
    ),
    keel("VPC", "vpcs", "vpc", &[]),
    keel("Subnet", "subnets", "subnet", &[]),
    keel("SecurityGroup", "securitygroups", "securitygroup", &["sg"]),
    keel("Zone", "zones", "zone", &["dnszone"]),
    keel("Bucket", "buckets", "bucket", &[]),
    keel("LoadBalancer", "loadbalancers", "loadbalancer", &["lb"]),
    keel(
        "GitRepository",
        "gitrepositories",
        "gitrepository",
        &["gitrepo"],
    ),
    keel("Revision", "revisions", "revision", &[]),
    Kind {
        scope: Scope::Cluster,
        ..keel("UserToken", "usertokens", "usertoken", &[])
    },
    Kind {
        scope: Scope::Cluster,
        ..keel("ClusterImage", "clusterimages", "clusterimage", &["cimg"])
    },
    core(
        "Namespace",
        "namespaces",
        "namespace",
        &["ns"],
        Scope::Cluster,
    ),
    core("Node", "nodes", "node", &["no"], Scope::Cluster),
    core("Pod", "pods", "pod", &["po"], Scope::Namespaced),
    core(
        "Service",
        "services",
        "service",
        &["svc"],
        Scope::Namespaced,
    ),
    core("Event", "events", "event", &["ev"], Scope::Namespaced),
    Kind {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        short_names: &[],
        scope: Scope::Namespaced,
    },
    Kind {
        group: APPS_GROUP,
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        short_names: &["deploy"],
        scope: Scope::Namespaced,
    },
    Kind {
        group: APPS_GROUP,
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        short_names: &["rs"],
        scope: Scope::Namespaced,
    },
    Kind {
        group: APPS_GROUP,
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        short_names: &["ds"],
        scope: Scope::Namespaced,
    },
    Kind {
        group: BATCH_GROUP,
        version: "v1",
        kind: "Job",
        plural: "jobs",
        singular: "job",
        short_names: &[],
        scope: Scope::Namespaced,
    },
    Kind {
        group: BATCH_GROUP,
        version: "v1",
        kind: "CronJob",
        plural: "cronjobs",
        singular: "cronjob",
        short_names: &["cj"],
        scope: Scope::Namespaced,
    },
    Kind {
        group: APPS_GROUP,
        version: "v1",
        kind: "StatefulSet",
        plural: "statefulsets",
        singular: "statefulset",
        short_names: &["sts"],
        scope: Scope::Namespaced,
    },
    core(
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        &["pvc"],
        Scope::Namespaced,
    ),
    core(
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        &["pv"],
        Scope::Cluster,
    ),
    Kind {
        group: STORAGE_GROUP,
        version: "v1",
        kind: "StorageClass",
        plural: "storageclasses",
        singular: "storageclass",
        short_names: &["sc"],
        scope: Scope::Cluster,
    },
    core("Secret", "secrets", "secret", &[], Scope::Namespaced),
    core(
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        &["quota"],
        Scope::Namespaced,
    ),
    core(
        "LimitRange",
        "limitranges",
        "limitrange",
        &["limits"],
        Scope::Namespaced,
    ),
    core(
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        &["sa"],
        Scope::Namespaced,
    ),
    core(
        "ConfigMap",
        "configmaps",
        "configmap",
        &["cm"],
        Scope::Namespaced,
    ),
    Kind {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        short_names: &[],
        scope: Scope::Namespaced,
    },
    rbac("Role", "roles", "role", Scope::Namespaced),
    rbac("ClusterRole", "clusterroles", "clusterrole", Scope::Cluster),
    rbac(
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        Scope::Namespaced,
    ),
    rbac(
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        Scope::Cluster,
    ),
];

/// Every registered kind.
pub fn registry() -> &'static [Kind] {
    REGISTRY
}

/// The kinds served under one group and version (`""`, `"v1"` for the core group).
pub fn kinds_in(group: &str, version: &str) -> impl Iterator<Item = &'static Kind> {
    REGISTRY
        .iter()
        .filter(move |k| k.group == group && k.version == version)
}

/// Where `kind` sits in [`registry`], matched by group, version and kind, so that a copy of a
/// registered kind finds its per-kind data (schema, validator).
pub(crate) fn position(kind: &Kind) -> Option<usize> {
    REGISTRY
        .iter()
        .position(|k| k.group == kind.group && k.version == kind.version && k.kind == kind.kind)
}

/// The kind a user means by `name`: its kind, plural, singular or a short name, in any case,
/// optionally qualified by group (`vm`, `VirtualMachine`, `virtualmachines.keel.dev`).
pub fn lookup(name: &str) -> Option<&'static Kind> {
    let (name, group) = match name.split_once('.') {
        Some((n, g)) => (n, Some(g)),
        None => (name, None),
    };
    REGISTRY.iter().find(|k| {
        group.is_none_or(|g| g.eq_ignore_ascii_case(k.group))
            && (k.kind.eq_ignore_ascii_case(name)
                || k.plural.eq_ignore_ascii_case(name)
                || k.singular.eq_ignore_ascii_case(name)
                || k.short_names.iter().any(|s| s.eq_ignore_ascii_case(name)))
    })
}

// === impl Kind ===

impl Kind {
    /// `apiVersion` as objects carry it: `keel.dev/v1alpha1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store prefix of all objects of this kind (every namespace).
    pub fn storage_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }
}

/// Where an object lives in the store: `/registry/{group}/{plural}/{namespace}/{name}`, or
/// without the namespace for a cluster-wide kind. `None` when the namespace does not fit the
/// kind's scope, or a name or namespace is empty or contains a `/`.
pub fn storage_key(kind: &Kind, namespace: Option<&str>, name: &str) -> Option<String> {
    let valid = |s: &str| !s.is_empty() && !s.contains('/');
    if !valid(name) {
        return None;
    }
    match (kind.scope, namespace) {
        (Scope::Namespaced, Some(ns)) if valid(ns) => {
            Some(format!("{}{ns}/{name}", kind.storage_prefix()))
        }
        (Scope::Cluster, None) => Some(format!("{}{name}", kind.storage_prefix())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_the_way_kubectl_users_type_them() {
        for name in [
            "vm",
            "VMs",
            "VirtualMachine",
            "virtualmachines",
            "virtualmachines.keel.dev",
        ] {
            assert_eq!(
                lookup(name).map(|k| k.kind),
                Some("VirtualMachine"),
                "{name}"
            );
        }
        assert_eq!(lookup("ns").map(|k| k.scope), Some(Scope::Cluster));
        assert_eq!(
            lookup("leases").map(|k| k.group),
            Some("coordination.k8s.io")
        );
        assert_eq!(lookup("virtualmachines.example.com"), None);
        assert_eq!(lookup("frobnicator"), None);
    }

    #[test]
    fn every_kind_is_registered_once_under_unique_names() {
        let mut seen = std::collections::BTreeSet::new();
        for k in registry() {
            for n in [
                k.kind.to_ascii_lowercase(),
                k.plural.into(),
                k.singular.into(),
            ]
            .into_iter()
            .chain(k.short_names.iter().map(|s| s.to_string()))
            {
                let owner = lookup(&n).map(|o| o.kind);
                assert_eq!(owner, Some(k.kind), "{n} resolves to another kind");
            }
            assert!(seen.insert((k.group, k.kind)), "{} twice", k.kind);
        }
    }

    #[test]
    fn storage_keys_group_objects_by_kind_and_namespace() {
        let vm = lookup("vm").unwrap();
        let node = lookup("node").unwrap();
        assert_eq!(vm.api_version(), "keel.dev/v1alpha1");
        assert_eq!(node.api_version(), "v1");
        let key = storage_key(vm, Some("shop"), "web-1").unwrap();
        assert_eq!(key, "/registry/keel.dev/virtualmachines/shop/web-1");
        assert!(key.starts_with(&vm.storage_prefix()));
        assert_eq!(
            storage_key(node, None, "host-1").unwrap(),
            "/registry/core/nodes/host-1"
        );
        assert_eq!(storage_key(vm, None, "web-1"), None);
        assert_eq!(storage_key(node, Some("shop"), "host-1"), None);
        assert_eq!(storage_key(vm, Some("a/b"), "x"), None);
        assert_eq!(storage_key(vm, Some("shop"), ""), None);
    }
}
