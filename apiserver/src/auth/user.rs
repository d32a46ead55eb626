//! [`UserInfo`]: who a request comes from, as every authenticator answers it (Kubernetes'
//! `user.Info`): a name, a uid, groups and extra attributes.

use std::collections::BTreeMap;

use keel_schemas::identity::{ANONYMOUS, AUTHENTICATED, MASTERS, NODES, UNAUTHENTICATED};
use serde_json::{Value, json};

/// An authenticated (or anonymous) requester.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// The user name (`alice`, `system:node:h1`, `system:serviceaccount:shop:default`).
    pub name: String,
    /// A stable id (a service account's uid, a token's), or empty.
    pub uid: String,
    /// The groups, `system:authenticated` (or `system:unauthenticated`) included.
    pub groups: Vec<String>,
    /// Extra attributes (a service account token's pod, say).
    pub extra: BTreeMap<String, Vec<String>>,
}

// === impl UserInfo ===

impl UserInfo {
    /// An authenticated user: `groups` plus `system:authenticated`.
    pub fn authenticated(
        name: impl Into<String>,
        uid: impl Into<String>,
        groups: impl IntoIterator<Item = String>,
    ) -> UserInfo {
        let mut groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        UserInfo {
            name: name.into(),
            uid: uid.into(),
            groups,
            extra: BTreeMap::new(),
        }
    }

    /// The requester without credentials.
    pub fn anonymous() -> UserInfo {
        UserInfo {
            name: ANONYMOUS.to_string(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED.to_string()],
            extra: BTreeMap::new(),
        }
    }

    /// The server itself (its own background tasks): a master.
    pub fn server() -> UserInfo {
        UserInfo::authenticated(keel_schemas::identity::APISERVER, "", [MASTERS.to_string()])
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether the user is a member of `system:masters`, which may do everything.
    pub fn is_master(&self) -> bool {
        self.in_group(MASTERS)
    }

    /// The node this user is, if it is one: `system:node:NAME` in `system:nodes`.
    pub fn node(&self) -> Option<&str> {
        keel_schemas::identity::node_of(&self.name).filter(|_| self.in_group(NODES))
    }

    /// The user as Kubernetes' `UserInfo` JSON (`username`, `uid`, `groups`, `extra`).
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_roles() {
        let u = UserInfo::authenticated("system:node:h1", "", [NODES.to_string()]);
        assert_eq!(u.groups, [NODES, AUTHENTICATED]);
        assert_eq!(u.node(), Some("h1"));
        let impostor = UserInfo::authenticated("system:node:h1", "", Vec::new());
        assert_eq!(impostor.node(), None, "a node is its name and its group");
        assert!(UserInfo::server().is_master());
        assert!(!UserInfo::anonymous().in_group(AUTHENTICATED));
        assert_eq!(
            UserInfo::anonymous().to_json(),
            json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]})
        );
    }
}
