//! Who makes a request: the user and group names Kubernetes gives special meaning, and the
//! names of Keel's own components, as authentication reports them and RBAC subjects name
//! them. Shared by the API server (which grants them) and the components that use them.

/// Members of this group may do everything; authorization is not consulted (Kubernetes'
/// `system:masters`).
pub const MASTERS: &str = "system:masters";
/// Every authenticated request's group.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of requests without credentials.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The user of requests without credentials.
pub const ANONYMOUS: &str = "system:anonymous";
/// The group of every node (host agent).
pub const NODES: &str = "system:nodes";
/// The group of every service account.
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// The admin user of `admin.kubeconfig` (in [`MASTERS`]).
pub const ADMIN: &str = "system:admin";
/// The identity an API server presents to the agents it calls (logs, later exec).
pub const APISERVER: &str = "system:keel-apiserver";
/// The controller manager's identity (its leader election).
pub const CONTROLLER_MANAGER: &str = "system:keel-controller-manager";
/// The prefix of each cluster controller's own identity (`system:keel-controller:scheduler`).
pub const CONTROLLER_PREFIX: &str = "system:keel-controller:";
/// The prefix of node user names.
pub const NODE_PREFIX: &str = "system:node:";
/// The prefix of service account user names.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The user name of node `name`: `system:node:NAME`.
pub fn node_user(name: &str) -> String {
    format!("{NODE_PREFIX}{name}")
}

/// The node a user name belongs to, if it is a node's.
pub fn node_of(user: &str) -> Option<&str> {
    user.strip_prefix(NODE_PREFIX).filter(|n| !n.is_empty())
}

/// The user name of controller `name`: `system:keel-controller:NAME`.
pub fn controller_user(name: &str) -> String {
    format!("{CONTROLLER_PREFIX}{name}")
}

/// The user name of service account `name` in `namespace`:
/// `system:serviceaccount:NAMESPACE:NAME`.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}")
}

/// The namespace and name of the service account a user name belongs to, if any.
pub fn service_account_of(user: &str) -> Option<(&str, &str)> {
    let (ns, name) = user.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// The groups of a service account: all service accounts', and its namespace's.
pub fn service_account_groups(namespace: &str) -> [String; 2] {
    [
        SERVICE_ACCOUNTS.to_string(),
        format!("{SERVICE_ACCOUNTS}:{namespace}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(node_of(&node_user("h1")), Some("h1"));
        assert_eq!(node_of("system:node:"), None);
        assert_eq!(node_of("alice"), None);
        let sa = service_account_user("shop", "deployer");
        assert_eq!(sa, "system:serviceaccount:shop:deployer");
        assert_eq!(service_account_of(&sa), Some(("shop", "deployer")));
        assert_eq!(service_account_of("system:serviceaccount:shop"), None);
        assert_eq!(service_account_of("system:serviceaccount:a:b:c"), None);
        assert_eq!(
            service_account_groups("shop"),
            ["system:serviceaccounts", "system:serviceaccounts:shop"]
        );
    }
}
