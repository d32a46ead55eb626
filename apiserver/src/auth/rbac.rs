//! Role-based access control with Kubernetes' semantics: [`Attributes`] (what a request asks
//! to do), the rule matching of `rbac.authorization.k8s.io/v1`, the [`RbacIndex`] that finds a
//! user's grants by subject, and [`uncovered`], the escalation check (nobody grants what they
//! do not hold).
//!
//! Rules only allow; a request is allowed when any rule of any role bound to the user (or to
//! one of its groups) in the request's namespace, or cluster-wide, matches it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use keel_schemas::kinds::access::{ClusterRole, PolicyRule, Role, RoleBinding};

use super::UserInfo;

/// What a request asks to do (Kubernetes' `authorizer.Attributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`,
    /// `impersonate`, `bind`, `escalate`; for a non-resource path the HTTP method, lowercase.
    pub verb: String,
    /// The resource asked for; `None` for a non-resource path.
    pub resource: Option<ResourceAttributes>,
    /// The request path (what non-resource rules match).
    pub path: String,
}

/// The resource part of [`Attributes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceAttributes {
    /// The API group (`""` for the core group).
    pub group: String,
    /// The API version.
    pub version: String,
    /// The resource (plural).
    pub resource: String,
    /// The subresource (`status`, `log`, `token`), or empty.
    pub subresource: String,
    /// The namespace, or empty (cluster-scoped, or every namespace).
    pub namespace: String,
    /// The object's name, or empty (a collection).
    pub name: String,
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, and by what.
    Allow(String),
    /// Denied outright (no later authorizer is asked), and why.
    Deny(String),
    /// This authorizer does not allow it; the next one is asked. Carries what it found.
    NoOpinion(String),
}

/// A user, group or service account, as bindings name them and users are looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum SubjectKey {
    /// A user name (service accounts are users `system:serviceaccount:NS:NAME`).
    User(String),
    /// A group name.
    Group(String),
}

/// Grants by subject, users and groups apart (so that a lookup borrows the name).
#[derive(Debug, Default)]
struct Grants {
    users: HashMap<String, Vec<Grant>>,
    groups: HashMap<String, Vec<Grant>>,
}

/// What one binding grants: its role's rules, and a description for reasons.
#[derive(Debug, Clone)]
struct Grant {
    rules: Arc<[PolicyRule]>,
    /// `ClusterRoleBinding "x" of ClusterRole "y"` or `RoleBinding "x/ns" of Role "y"`.
    source: Arc<str>,
}

/// The RBAC objects of a cluster.
#[derive(Debug, Clone, Default)]
pub struct RbacObjects {
    /// ClusterRoles by name.
    pub cluster_roles: BTreeMap<String, ClusterRole>,
    /// Roles by namespace and name.
    pub roles: BTreeMap<(String, String), Role>,
    /// ClusterRoleBindings by name.
    pub cluster_role_bindings: BTreeMap<String, RoleBinding>,
    /// RoleBindings by namespace and name.
    pub role_bindings: BTreeMap<(String, String), RoleBinding>,
}

/// Every binding's grants, by subject: what [`RbacIndex::authorize`] looks up.
#[derive(Debug, Default)]
pub struct RbacIndex {
    cluster: Grants,
    namespaced: HashMap<String, Grants>,
    /// Bindings whose role does not exist, by namespace ("" for cluster-wide), with the
    /// message a rules review reports.
    missing: BTreeMap<String, Vec<String>>,
}

// === impl Attributes ===

impl Attributes {
    /// A resource request.
    pub fn resource(verb: &str, resource: ResourceAttributes) -> Attributes {
        Attributes {
            verb: verb.to_string(),
            resource: Some(resource),
            path: String::new(),
        }
    }

    /// A request for a non-resource path.
    pub fn non_resource(verb: &str, path: &str) -> Attributes {
        Attributes {
            verb: verb.to_string(),
            resource: None,
            path: path.to_string(),
        }
    }

    /// The resource and subresource as rules name them (`virtualmachines/status`).
    pub fn combined_resource(&self) -> String {
        match &self.resource {
            Some(r) if r.subresource.is_empty() => r.resource.clone(),
            Some(r) => format!("{}/{}", r.resource, r.subresource),
            None => String::new(),
        }
    }

    /// Kubernetes' wording of a denial: `User "alice" cannot create resource
    /// "virtualmachines" in API group "keel.dev" in the namespace "shop"`.
    pub fn forbidden_message(&self, user: &str) -> String {
        match &self.resource {
            None => format!("User {user:?} cannot {} path {:?}", self.verb, self.path),
            Some(r) => {
                let resource = self.combined_resource();
                let scope = if r.namespace.is_empty() {
                    "at the cluster scope".to_string()
                } else {
                    format!("in the namespace {:?}", r.namespace)
                };
                format!(
                    "User {user:?} cannot {} resource {resource:?} in API group {:?} {scope}",
                    self.verb, r.group
                )
            }
        }
    }
}

/// A resource request for tests: `resource` may be `RESOURCE/SUBRESOURCE`.
#[cfg(test)]
pub(crate) fn request(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    Attributes::resource(
        verb,
        ResourceAttributes {
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: ns.into(),
            name: name.into(),
        },
    )
}

/// Whether `rule` allows the request `a` (Kubernetes' `RuleAllows`).
pub fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !has(&rule.verbs, &a.verb) {
        return false;
    }
    match &a.resource {
        Some(r) => {
            has(&rule.api_groups, &r.group)
                && resource_matches(rule, &a.combined_resource(), &r.subresource)
                && (rule.resource_names.is_empty() || rule.resource_names.contains(&r.name))
        }
        None => rule
            .non_resource_urls
            .iter()
            .any(|u| url_matches(u, &a.path)),
    }
}

fn has(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == "*" || v == value)
}

fn resource_matches(rule: &PolicyRule, combined: &str, subresource: &str) -> bool {
    rule.resources.iter().any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*"
        || rule == path
        || rule
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// The atomic rules of `servant` (one verb, group, resource and name each) that no rule of
/// `owner` covers: empty when whoever holds `owner` may grant `servant` (Kubernetes'
/// `validation.Covers`).
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    servant
        .iter()
        .flat_map(breakdown)
        .filter(|atom| !owner.iter().any(|o| rule_covers(o, atom)))
        .collect()
}

/// Splits a rule into rules of one verb and one group, resource, name or URL each.
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    let one = |v: &String| vec![v.clone()];
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            out.push(PolicyRule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..PolicyRule::default()
            });
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                if rule.resource_names.is_empty() {
                    out.push(PolicyRule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        ..PolicyRule::default()
                    });
                }
                for name in &rule.resource_names {
                    out.push(PolicyRule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        resource_names: one(name),
                        ..PolicyRule::default()
                    });
                }
            }
        }
    }
    out
}

/// Whether `owner` covers the atomic rule `atom`.
fn rule_covers(owner: &PolicyRule, atom: &PolicyRule) -> bool {
    let covers_all = |own: &[String], want: &[String]| {
        own.iter().any(|o| o == "*") || want.iter().all(|w| own.contains(w))
    };
    if !covers_all(&owner.verbs, &atom.verbs) {
        return false;
    }
    if !atom.non_resource_urls.is_empty() {
        return atom.non_resource_urls.iter().all(|want| {
            owner.non_resource_urls.iter().any(|own| {
                own == "*"
                    || own == want
                    || own.strip_suffix('*').is_some_and(|p| {
                        want.starts_with(p)
                            && want.strip_suffix('*').is_none_or(|w| w.starts_with(p))
                    })
            })
        });
    }
    let resources_covered = atom.resources.iter().all(|want| {
        owner.resources.iter().any(|own| {
            own == "*"
                || own == want
                || (own.starts_with("*/")
                    && want
                        .split_once('/')
                        .is_some_and(|(_, sub)| own.strip_prefix("*/") == Some(sub)))
        })
    });
    covers_all(&owner.api_groups, &atom.api_groups)
        && resources_covered
        && (owner.resource_names.is_empty()
            || (!atom.resource_names.is_empty()
                && atom
                    .resource_names
                    .iter()
                    .all(|n| owner.resource_names.contains(n))))
}

// === impl RbacObjects ===

impl RbacObjects {
    /// The effective rules of every ClusterRole: its own, plus those of the ClusterRoles its
    /// aggregation rule selects (and theirs, transitively).
    fn cluster_role_rules(&self) -> BTreeMap<&str, Arc<[PolicyRule]>> {
        let mut out = BTreeMap::new();
        for name in self.cluster_roles.keys() {
            let mut rules = Vec::new();
            let mut seen = BTreeSet::new();
            self.gather(name, &mut seen, &mut rules);
            out.insert(name.as_str(), Arc::from(rules));
        }
        out
    }

    fn gather<'a>(
        &'a self,
        name: &'a str,
        seen: &mut BTreeSet<&'a str>,
        rules: &mut Vec<PolicyRule>,
    ) {
        if !seen.insert(name) {
            return;
        }
        let Some(role) = self.cluster_roles.get(name) else {
            return;
        };
        for rule in &role.rules {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
        let Some(aggregation) = &role.aggregation_rule else {
            return;
        };
        for (other, candidate) in &self.cluster_roles {
            if aggregation
                .cluster_role_selectors
                .iter()
                .any(|s| s.matches(&candidate.metadata.labels))
            {
                self.gather(other, seen, rules);
            }
        }
    }

    /// The effective rules of the role a binding in `namespace` (empty: a
    /// ClusterRoleBinding) refers to as `kind`/`name`; `None` if it does not exist.
    pub fn role_rules(&self, kind: &str, namespace: &str, name: &str) -> Option<Vec<PolicyRule>> {
        match kind {
            "ClusterRole" => {
                self.cluster_roles.get(name)?;
                let mut rules = Vec::new();
                self.gather(name, &mut BTreeSet::new(), &mut rules);
                Some(rules)
            }
            "Role" if !namespace.is_empty() => self
                .roles
                .get(&(namespace.to_string(), name.to_string()))
                .map(|r| r.rules.clone()),
            _ => None,
        }
    }

    /// Builds the index of grants by subject.
    pub fn index(&self) -> RbacIndex {
        let cluster_rules = self.cluster_role_rules();
        let mut index = RbacIndex::default();
        for (name, binding) in &self.cluster_role_bindings {
            let role = &binding.role_ref.name;
            let Some(rules) = (binding.role_ref.kind == "ClusterRole")
                .then(|| cluster_rules.get(role.as_str()))
                .flatten()
            else {
                index.missing.entry(String::new()).or_default().push(format!(
                    "clusterrole.rbac.authorization.k8s.io {role:?} not found (ClusterRoleBinding {name:?})"
                ));
                continue;
            };
            let grant = Grant {
                rules: rules.clone(),
                source: format!("ClusterRoleBinding {name:?} of ClusterRole {role:?}").into(),
            };
            for key in subject_keys(binding, None) {
                index.cluster.add(key, grant.clone());
            }
        }
        for ((ns, name), binding) in &self.role_bindings {
            let role = &binding.role_ref.name;
            let rules = match binding.role_ref.kind.as_str() {
                "ClusterRole" => cluster_rules.get(role.as_str()).cloned(),
                _ => self
                    .roles
                    .get(&(ns.clone(), role.clone()))
                    .map(|r| Arc::from(r.rules.clone())),
            };
            let kind = &binding.role_ref.kind;
            let Some(rules) = rules else {
                index.missing.entry(ns.clone()).or_default().push(format!(
                    "{}.rbac.authorization.k8s.io {role:?} not found (RoleBinding {name:?})",
                    kind.to_ascii_lowercase()
                ));
                continue;
            };
            let grant = Grant {
                rules,
                source: format!("RoleBinding \"{name}/{ns}\" of {kind} {role:?}").into(),
            };
            let grants = index.namespaced.entry(ns.clone()).or_default();
            for key in subject_keys(binding, Some(ns)) {
                grants.add(key, grant.clone());
            }
        }
        index
    }
}

/// The keys a binding's subjects are found by.
fn subject_keys(binding: &RoleBinding, namespace: Option<&str>) -> Vec<SubjectKey> {
    binding
        .subjects
        .iter()
        .filter_map(|s| match s.kind.as_str() {
            "User" => Some(SubjectKey::User(s.name.clone())),
            "Group" => Some(SubjectKey::Group(s.name.clone())),
            "ServiceAccount" => s.service_account_user(namespace).map(SubjectKey::User),
            _ => None,
        })
        .collect()
}

// === impl Grants ===

impl Grants {
    fn add(&mut self, key: SubjectKey, grant: Grant) {
        match key {
            SubjectKey::User(name) => self.users.entry(name).or_default().push(grant),
            SubjectKey::Group(name) => self.groups.entry(name).or_default().push(grant),
        }
    }

    /// The grants of `user` and its groups, with the subject each was found by.
    fn of<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = (Subject<'a>, &'a Grant)> + 'a {
        let own = self
            .users
            .get(&user.name)
            .into_iter()
            .flatten()
            .map(move |g| (Subject::User(&user.name), g));
        let groups = user.groups.iter().flat_map(move |group| {
            self.groups
                .get(group)
                .into_iter()
                .flatten()
                .map(move |g| (Subject::Group(group), g))
        });
        own.chain(groups)
    }
}

/// The subject a grant was found by, for reasons.
#[derive(Debug, Clone, Copy)]
enum Subject<'a> {
    User(&'a str),
    Group(&'a str),
}

// === impl RbacIndex ===

impl RbacIndex {
    /// The grants that apply to `user` in `namespace` (cluster-wide ones, plus the
    /// namespace's when it is not empty), with the subject they were found by.
    fn grants<'a>(
        &'a self,
        user: &'a UserInfo,
        namespace: &str,
    ) -> impl Iterator<Item = (Subject<'a>, &'a Grant)> + 'a {
        let local = (!namespace.is_empty())
            .then(|| self.namespaced.get(namespace))
            .flatten();
        self.cluster
            .of(user)
            .chain(local.into_iter().flat_map(move |g| g.of(user)))
    }

    /// Whether a binding allows `a` to `user`.
    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> Decision {
        let namespace = a.resource.as_ref().map_or("", |r| r.namespace.as_str());
        for (key, grant) in self.grants(user, namespace) {
            if grant.rules.iter().any(|r| rule_allows(r, a)) {
                let subject = match key {
                    Subject::User(n) => format!("User {n:?}"),
                    Subject::Group(n) => format!("Group {n:?}"),
                };
                return Decision::Allow(format!("RBAC: allowed by {} to {subject}", grant.source));
            }
        }
        Decision::NoOpinion(String::new())
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide ones included), and
    /// the bindings that could not be resolved: what `SelfSubjectRulesReview` answers and
    /// what escalation checks compare against.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Vec<String>) {
        let mut rules = Vec::new();
        for (_, grant) in self.grants(user, namespace) {
            for rule in grant.rules.iter() {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
        }
        let mut errors = self.missing.get("").cloned().unwrap_or_default();
        if !namespace.is_empty() {
            errors.extend(self.missing.get(namespace).cloned().unwrap_or_default());
        }
        (rules, errors)
    }

    /// How many grants the index holds (for metrics and tests).
    pub fn len(&self) -> usize {
        let count = |g: &Grants| {
            g.users
                .values()
                .chain(g.groups.values())
                .map(Vec::len)
                .sum::<usize>()
        };
        count(&self.cluster) + self.namespaced.values().map(count).sum::<usize>()
    }

    /// Whether the index holds no grant.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
