use keel_schemas::kinds::access::{AggregationRule, RoleRef, Subject};
use keel_schemas::kinds::{LabelSelector, ObjectMeta};

use super::*;

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
    PolicyRule {
        verbs: s(verbs),
        api_groups: s(groups),
        resources: s(resources),
        ..PolicyRule::default()
    }
}

fn res(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
    super::super::rbac::request(verb, group, resource, ns, name)
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo::authenticated(name, "", groups.iter().map(|g| g.to_string()))
}

fn binding(kind: &str, role: &str, subjects: Vec<Subject>) -> RoleBinding {
    RoleBinding {
        subjects,
        role_ref: RoleRef {
            api_group: keel_schemas::RBAC_GROUP.into(),
            kind: kind.into(),
            name: role.into(),
        },
        ..RoleBinding::default()
    }
}

fn subject(kind: &str, name: &str, ns: Option<&str>) -> Subject {
    Subject {
        kind: kind.into(),
        api_group: None,
        name: name.into(),
        namespace: ns.map(String::from),
    }
}

#[test]
fn rules_match_verbs_groups_resources_subresources_and_names() {
    let r = rule(&["get", "list"], &["keel.dev"], &["virtualmachines"]);
    assert!(rule_allows(
        &r,
        &res("get", "keel.dev", "virtualmachines", "shop", "web")
    ));
    assert!(!rule_allows(
        &r,
        &res("delete", "keel.dev", "virtualmachines", "shop", "web")
    ));
    assert!(!rule_allows(
        &r,
        &res("get", "", "virtualmachines", "shop", "web")
    ));
    // A subresource is its own resource...
    assert!(!rule_allows(
        &r,
        &res("get", "keel.dev", "virtualmachines/log", "shop", "web")
    ));
    let log = rule(&["get"], &["keel.dev"], &["virtualmachines/log"]);
    assert!(rule_allows(
        &log,
        &res("get", "keel.dev", "virtualmachines/log", "s", "w")
    ));
    // ... and */status names it for every resource.
    let status = rule(&["update"], &["*"], &["*/status"]);
    assert!(rule_allows(
        &status,
        &res("update", "keel.dev", "buckets/status", "s", "b")
    ));
    assert!(!rule_allows(
        &status,
        &res("update", "keel.dev", "buckets", "s", "b")
    ));
    let all = rule(&["*"], &["*"], &["*"]);
    assert!(rule_allows(
        &all,
        &res("escalate", "rbac.authorization.k8s.io", "roles", "", "")
    ));
    // A rule with names never allows a create or a list (they name no object).
    let named = PolicyRule {
        resource_names: vec!["web".into()],
        ..rule(
            &["get", "create", "list"],
            &["keel.dev"],
            &["virtualmachines"],
        )
    };
    assert!(rule_allows(
        &named,
        &res("get", "keel.dev", "virtualmachines", "s", "web")
    ));
    assert!(!rule_allows(
        &named,
        &res("get", "keel.dev", "virtualmachines", "s", "db")
    ));
    assert!(!rule_allows(
        &named,
        &res("create", "keel.dev", "virtualmachines", "s", "")
    ));
    assert!(!rule_allows(
        &named,
        &res("list", "keel.dev", "virtualmachines", "s", "")
    ));
}

#[test]
fn non_resource_urls_match_exactly_or_by_prefix() {
    let r = PolicyRule {
        verbs: vec!["get".into()],
        non_resource_urls: vec!["/healthz".into(), "/apis/*".into()],
        ..PolicyRule::default()
    };
    assert!(rule_allows(
        &r,
        &Attributes::non_resource("get", "/healthz")
    ));
    assert!(!rule_allows(
        &r,
        &Attributes::non_resource("get", "/healthz/etcd")
    ));
    assert!(rule_allows(
        &r,
        &Attributes::non_resource("get", "/apis/keel.dev")
    ));
    assert!(!rule_allows(&r, &Attributes::non_resource("get", "/apis")));
    assert!(!rule_allows(
        &r,
        &Attributes::non_resource("post", "/healthz")
    ));
    // Resource rules never match paths, and URL rules never match resources.
    assert!(!rule_allows(
        &rule(&["*"], &["*"], &["*"]),
        &Attributes::non_resource("get", "/x")
    ));
    assert!(!rule_allows(&r, &res("get", "", "pods", "", "")));
}

#[test]
fn denials_are_worded_as_kubernetes_words_them() {
    assert_eq!(
        res("create", "keel.dev", "virtualmachines", "shop", "").forbidden_message("alice"),
        "User \"alice\" cannot create resource \"virtualmachines\" in API group \"keel.dev\" in the namespace \"shop\""
    );
    assert_eq!(
        res("get", "", "nodes/status", "", "h1").forbidden_message("bob"),
        "User \"bob\" cannot get resource \"nodes/status\" in API group \"\" at the cluster scope"
    );
    assert_eq!(
        Attributes::non_resource("get", "/metrics").forbidden_message("system:anonymous"),
        "User \"system:anonymous\" cannot get path \"/metrics\""
    );
}

fn objects() -> RbacObjects {
    let mut o = RbacObjects::default();
    let aggregate = |label: &str| LabelSelector {
        match_labels: [(label.to_string(), "true".to_string())].into(),
        ..LabelSelector::default()
    };
    o.cluster_roles.insert(
        "view".into(),
        ClusterRole {
            rules: vec![rule(
                &["get", "list", "watch"],
                &["keel.dev"],
                &["virtualmachines"],
            )],
            aggregation_rule: Some(AggregationRule {
                cluster_role_selectors: vec![aggregate("aggregate-to-view")],
            }),
            ..ClusterRole::default()
        },
    );
    o.cluster_roles.insert(
        "edit".into(),
        ClusterRole {
            rules: vec![rule(
                &["create", "update", "delete"],
                &["keel.dev"],
                &["virtualmachines"],
            )],
            aggregation_rule: Some(AggregationRule {
                cluster_role_selectors: vec![aggregate("aggregate-to-edit")],
            }),
            metadata: ObjectMeta {
                labels: [("aggregate-to-admin".to_string(), "true".to_string())].into(),
                ..ObjectMeta::default()
            },
            ..ClusterRole::default()
        },
    );
    // An add-on's role aggregated into view, and view aggregated into edit (transitively).
    o.cluster_roles.insert(
        "zones-view".into(),
        ClusterRole {
            rules: vec![rule(&["get"], &["keel.dev"], &["zones"])],
            metadata: ObjectMeta {
                labels: [
                    ("aggregate-to-view".to_string(), "true".to_string()),
                    ("aggregate-to-edit".to_string(), "true".to_string()),
                ]
                .into(),
                ..ObjectMeta::default()
            },
            ..ClusterRole::default()
        },
    );
    o.roles.insert(
        ("shop".into(), "secrets-reader".into()),
        Role {
            rules: vec![rule(&["get"], &[""], &["secrets"])],
            ..Role::default()
        },
    );
    o.cluster_role_bindings.insert(
        "auditors".into(),
        binding(
            "ClusterRole",
            "view",
            vec![subject("Group", "auditors", None)],
        ),
    );
    o.role_bindings.insert(
        ("shop".into(), "editors".into()),
        binding(
            "ClusterRole",
            "edit",
            vec![
                subject("User", "alice", None),
                subject("ServiceAccount", "deployer", None),
            ],
        ),
    );
    o.role_bindings.insert(
        ("shop".into(), "reader".into()),
        binding("Role", "secrets-reader", vec![subject("User", "bob", None)]),
    );
    o.role_bindings.insert(
        ("shop".into(), "dangling".into()),
        binding("Role", "nope", vec![subject("User", "bob", None)]),
    );
    o
}

#[test]
fn bindings_grant_in_their_namespace_and_cluster_bindings_everywhere() {
    let index = objects().index();
    let alice = user("alice", &[]);
    let create = |ns: &str| res("create", "keel.dev", "virtualmachines", ns, "");
    assert!(matches!(
        index.authorize(&alice, &create("shop")),
        Decision::Allow(_)
    ));
    assert!(matches!(
        index.authorize(&alice, &create("other")),
        Decision::NoOpinion(_)
    ));
    assert!(matches!(
        index.authorize(&alice, &create("")),
        Decision::NoOpinion(_)
    ));
    // A service account named in a RoleBinding without a namespace is the binding's.
    let sa = user(
        "system:serviceaccount:shop:deployer",
        &["system:serviceaccounts"],
    );
    assert!(matches!(
        index.authorize(&sa, &create("shop")),
        Decision::Allow(_)
    ));
    let other_sa = user("system:serviceaccount:other:deployer", &[]);
    assert!(matches!(
        index.authorize(&other_sa, &create("shop")),
        Decision::NoOpinion(_)
    ));
    // Groups: auditors view everywhere, including across namespaces (a list at "").
    let carol = user("carol", &["auditors"]);
    let list = |ns: &str| res("list", "keel.dev", "virtualmachines", ns, "");
    assert!(matches!(
        index.authorize(&carol, &list("")),
        Decision::Allow(_)
    ));
    assert!(matches!(
        index.authorize(&carol, &list("any")),
        Decision::Allow(_)
    ));
    assert!(matches!(
        index.authorize(&carol, &create("any")),
        Decision::NoOpinion(_)
    ));
    match index.authorize(&carol, &list("x")) {
        Decision::Allow(reason) => assert_eq!(
            reason,
            "RBAC: allowed by ClusterRoleBinding \"auditors\" of ClusterRole \"view\" to Group \"auditors\""
        ),
        other => panic!("{other:?}"),
    }
    // A namespaced Role.
    let bob = user("bob", &[]);
    assert!(matches!(
        index.authorize(&bob, &res("get", "", "secrets", "shop", "x")),
        Decision::Allow(_)
    ));
    let (_, errors) = index.rules_for(&bob, "shop");
    assert_eq!(
        errors,
        ["role.rbac.authorization.k8s.io \"nope\" not found (RoleBinding \"dangling\")"]
    );
}

#[test]
fn aggregated_roles_gather_the_rules_of_the_roles_they_select() {
    let index = objects().index();
    let carol = user("carol", &["auditors"]);
    // zones-view is aggregated into view.
    assert!(matches!(
        index.authorize(&carol, &res("get", "keel.dev", "zones", "x", "z")),
        Decision::Allow(_)
    ));
    let (rules, _) = index.rules_for(&user("alice", &[]), "shop");
    assert!(
        rules.contains(&rule(&["get"], &["keel.dev"], &["zones"])),
        "{rules:?}"
    );
    assert!(!rules.contains(&rule(&["get"], &[""], &["secrets"])));
}

#[test]
fn nobody_grants_what_they_do_not_hold() {
    let edit = vec![
        rule(
            &["get", "list", "create", "update"],
            &["keel.dev"],
            &["virtualmachines"],
        ),
        rule(&["*"], &[""], &["configmaps"]),
    ];
    // A subset is covered.
    assert!(
        uncovered(
            &edit,
            &[rule(&["get"], &["keel.dev"], &["virtualmachines"])]
        )
        .is_empty()
    );
    assert!(uncovered(&edit, &[rule(&["delete", "get"], &[""], &["configmaps"])]).is_empty());
    // More verbs, another resource, a wildcard: not covered, and each piece is named.
    let missing = uncovered(
        &edit,
        &[rule(
            &["get", "delete"],
            &["keel.dev"],
            &["virtualmachines", "vpcs"],
        )],
    );
    assert_eq!(missing.len(), 3, "{missing:?}");
    assert!(!uncovered(&edit, &[rule(&["*"], &["*"], &["*"])]).is_empty());
    assert!(uncovered(&[rule(&["*"], &["*"], &["*"])], &edit).is_empty());
    // Names: an owner limited to names covers only those names.
    let named = PolicyRule {
        resource_names: vec!["web".into()],
        ..rule(&["get"], &["keel.dev"], &["virtualmachines"])
    };
    assert!(uncovered(std::slice::from_ref(&named), std::slice::from_ref(&named)).is_empty());
    assert!(
        !uncovered(
            &[named],
            &[rule(&["get"], &["keel.dev"], &["virtualmachines"])]
        )
        .is_empty()
    );
    // Subresources through */status.
    let status = rule(&["update"], &["keel.dev"], &["*/status"]);
    assert!(
        uncovered(
            std::slice::from_ref(&status),
            &[rule(&["update"], &["keel.dev"], &["buckets/status"])]
        )
        .is_empty()
    );
    assert!(!uncovered(&[status], &[rule(&["update"], &["keel.dev"], &["buckets"])]).is_empty());
    // Non-resource URLs by prefix.
    let urls = |u: &[&str]| PolicyRule {
        verbs: vec!["get".into()],
        non_resource_urls: u.iter().map(|x| x.to_string()).collect(),
        ..PolicyRule::default()
    };
    assert!(
        uncovered(
            &[urls(&["/apis/*"])],
            &[urls(&["/apis/keel.dev", "/apis/x/*"])]
        )
        .is_empty()
    );
    assert!(!uncovered(&[urls(&["/apis/*"])], &[urls(&["/metrics"])]).is_empty());
    assert!(!uncovered(&[urls(&["/apis/keel.dev"])], &[urls(&["/apis/*"])]).is_empty());
}
