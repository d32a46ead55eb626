//! The layout of the data directories of a server and of a host agent: one name for each
//! file and folder Keel keeps there, for the crates that write them and for the tools, tests
//! and benchmarks that read them. Paths only: nothing here touches the disk.
//!
//! A server's data dir (`keel server --data-dir`) holds the replicated store, the cluster's
//! certificates and tokens, and (unless `--disable-agent`) its local agent's data dir in
//! `agent/`. A host agent's data dir (`keel agent --data-dir`) holds its node certificate,
//! its VMs, workloads, image cache and object store.

use std::path::{Path, PathBuf};

/// A server's data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDir {
    root: PathBuf,
}

/// A host agent's data directory (on a server, its local agent's: `<data-dir>/agent/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDir {
    root: PathBuf,
}

/// The directory of one VM on a host, `vms/<namespace>_<name>/`: its disks, cloud-init
/// seed, QMP sockets, pid file, console log and records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir {
    /// The directory.
    pub root: PathBuf,
}

/// The directory of one supervised workload on a host, `workloads/<namespace>_<name>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadDir {
    /// The directory.
    pub root: PathBuf,
}

/// `<namespace>_<name>`: an object's directory name. Namespaces and names are DNS labels,
/// so `_` cannot occur in either.
fn object_dir(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}")
}

/// The namespace and name of an object's directory name (`None`: not one).
pub fn parse_object_dir(file_name: &str) -> Option<(&str, &str)> {
    file_name.split_once('_')
}

// === impl ServerDir ===

impl ServerDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> ServerDir {
        ServerDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `tls/`: the cluster CA, this server's serving certificate and the service-account
    /// signing key.
    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// `tls/ca.crt`: the cluster CA's certificate, which every client and node trusts.
    pub fn ca_cert(&self) -> PathBuf {
        self.tls().join("ca.crt")
    }

    /// `tls/ca.key`: the cluster CA's private key (every server of the cluster has it).
    pub fn ca_key(&self) -> PathBuf {
        self.tls().join("ca.key")
    }

    /// `tls/server.crt`: this server's certificate, for HTTPS and between servers.
    pub fn server_cert(&self) -> PathBuf {
        self.tls().join("server.crt")
    }

    /// `tls/server.key`: the private key of [`ServerDir::server_cert`].
    pub fn server_key(&self) -> PathBuf {
        self.tls().join("server.key")
    }

    /// `tls/server.names`: the names and addresses the serving certificate was issued for
    /// (a change re-issues it).
    pub fn server_names(&self) -> PathBuf {
        self.tls().join("server.names")
    }

    /// `tls/service-account.key`: the key service-account tokens are signed with.
    pub fn service_account_key(&self) -> PathBuf {
        self.tls().join("service-account.key")
    }

    /// `admin-token`: the cluster admin's bearer token.
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin-token")
    }

    /// `join-token`: the token another server joins the cluster with (`--token`).
    pub fn join_token(&self) -> PathBuf {
        self.root.join("join-token")
    }

    /// `agent-token`: the token a host agent registers with (`keel agent --token`).
    pub fn agent_token(&self) -> PathBuf {
        self.root.join("agent-token")
    }

    /// `admin.kubeconfig`: a kubeconfig for the cluster admin, with a client certificate.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("admin.kubeconfig")
    }

    /// `encryption-config.json`: the keys Secrets are encrypted with at rest
    /// (`keel secrets-encrypt`).
    pub fn encryption_config(&self) -> PathBuf {
        self.root.join("encryption-config.json")
    }

    /// `audit/audit.log`: the audit log, unless `--audit-log-path` puts it elsewhere.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit").join("audit.log")
    }

    /// `raft-log.redb`: the Raft log.
    pub fn raft_log(&self) -> PathBuf {
        self.root.join("raft-log.redb")
    }

    /// `state.redb`: the store's state (keys, revisions, membership), rebuilt from the
    /// current snapshot when removed.
    pub fn state(&self) -> PathBuf {
        self.root.join("state.redb")
    }

    /// `snapshots/`: the store's snapshots.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `agent/`: the data directory of the server's local agent.
    pub fn agent(&self) -> AgentDir {
        AgentDir::new(self.root.join("agent"))
    }
}

// === impl AgentDir ===

impl AgentDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> AgentDir {
        AgentDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `pki/`: the node's identity.
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// `pki/ca.crt`: the cluster CA, fetched and checked against the agent token's pin when
    /// the host registered (a host agent's; a server's local agent has the server's).
    pub fn ca_cert(&self) -> PathBuf {
        self.pki().join("ca.crt")
    }

    /// `pki/node.crt`: the node's client certificate (`system:node:NAME`).
    pub fn node_cert(&self) -> PathBuf {
        self.pki().join("node.crt")
    }

    /// `pki/node.key`: the private key of [`AgentDir::node_cert`].
    pub fn node_key(&self) -> PathBuf {
        self.pki().join("node.key")
    }

    /// `pki/node-password`: the secret that proves this host is the node it registered as.
    pub fn node_password(&self) -> PathBuf {
        self.pki().join("node-password")
    }

    /// `vms/`: one directory per VM on this host.
    pub fn vms(&self) -> PathBuf {
        self.root.join("vms")
    }

    /// `vms/<namespace>_<name>/`: the directory of a VM.
    pub fn vm(&self, namespace: &str, name: &str) -> VmDir {
        VmDir {
            root: self.vms().join(object_dir(namespace, name)),
        }
    }

    /// `images/`: the cache of downloaded VM images.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// `workloads/`: one directory per supervised workload on this host.
    pub fn workloads(&self) -> PathBuf {
        self.root.join("workloads")
    }

    /// `workloads/<namespace>_<name>/`: the directory of a workload.
    pub fn workload(&self, namespace: &str, name: &str) -> WorkloadDir {
        WorkloadDir {
            root: self.workloads().join(object_dir(namespace, name)),
        }
    }

    /// `heartbeat`: touched at each renewal of the node's Lease; the supervisors stop their
    /// workloads when it goes stale.
    pub fn heartbeat(&self) -> PathBuf {
        self.root.join("heartbeat")
    }

    /// `storage/`: the object store of the Buckets this host serves.
    pub fn storage(&self) -> PathBuf {
        self.root.join("storage")
    }

    /// `pods/`: the pod role's files: its containerd's config, root, state and socket, the
    /// pods' CNI configuration and address leases, and the containers' logs.
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// `kvm-probe.json`: whether a guest booted under KVM here, cached across restarts.
    pub fn kvm_probe(&self) -> PathBuf {
        self.root.join("kvm-probe.json")
    }
}

// === impl VmDir ===

impl VmDir {
    /// The QMP socket.
    pub fn qmp(&self) -> PathBuf {
        self.root.join("qmp.sock")
    }

    /// The second QMP socket, where the agent listens for events.
    pub fn events(&self) -> PathBuf {
        self.root.join("events.sock")
    }

    /// The serial console log (the newest of its rotated files).
    pub fn console(&self) -> PathBuf {
        self.root.join("console.log")
    }

    /// Where the supervisor records how QEMU ended.
    pub fn exit(&self) -> PathBuf {
        self.root.join("exit.json")
    }

    /// QEMU's pid file.
    pub fn pid(&self) -> PathBuf {
        self.root.join("qemu.pid")
    }

    /// What the running guest was started with.
    pub fn boot(&self) -> PathBuf {
        self.root.join("boot.json")
    }

    /// The file of the disk `name`.
    pub fn disk(&self, name: &str) -> PathBuf {
        self.root.join(format!("disk-{name}.qcow2"))
    }

    /// The record of the image a disk was made from.
    pub fn disk_origin(&self, name: &str) -> PathBuf {
        self.root.join(format!("disk-{name}.origin"))
    }

    /// The name of the disk whose file or origin record is `file_name` (`None`: neither).
    pub fn disk_name(file_name: &str) -> Option<&str> {
        let name = file_name.strip_prefix("disk-")?;
        name.strip_suffix(".qcow2").or(name.strip_suffix(".origin"))
    }

    /// Where the disk `name` is set aside while a rollback point covers it and the spec
    /// no longer has it (or recreated it).
    pub fn retired_disk(&self, name: &str) -> PathBuf {
        self.root.join(format!("retired-{name}.qcow2"))
    }

    /// The origin record of a disk set aside.
    pub fn retired_origin(&self, name: &str) -> PathBuf {
        self.root.join(format!("retired-{name}.origin"))
    }

    /// The record of the disks' rollback point.
    pub fn snapshot_record(&self) -> PathBuf {
        self.root.join("snapshot.json")
    }

    /// The cloud-init seed image.
    pub fn seed(&self) -> PathBuf {
        self.root.join("cidata.iso")
    }

    /// The requests (restart, ...) already acted on, by annotation.
    pub fn requests(&self) -> PathBuf {
        self.root.join("requests.json")
    }

    /// The user and group id the guest runs as.
    pub fn guest_id(&self) -> PathBuf {
        self.root.join("guest.id")
    }
}

// === impl WorkloadDir ===

impl WorkloadDir {
    /// The supervisor's pid (the leader of the workload's process group).
    pub fn pid(&self) -> PathBuf {
        self.root.join("pid")
    }

    /// The uid of the object the workload runs for.
    pub fn uid(&self) -> PathBuf {
        self.root.join("uid")
    }

    /// What the supervisor and its command wrote to standard error (and to standard output
    /// when no console file takes it).
    pub fn output_log(&self) -> PathBuf {
        self.root.join("output.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is on disk in every existing cluster: a renamed file would be lost.
    #[test]
    fn paths_are_those_existing_data_dirs_have() {
        let server = ServerDir::new("/d");
        for (path, want) in [
            (server.ca_cert(), "/d/tls/ca.crt"),
            (server.ca_key(), "/d/tls/ca.key"),
            (server.server_cert(), "/d/tls/server.crt"),
            (server.server_key(), "/d/tls/server.key"),
            (server.server_names(), "/d/tls/server.names"),
            (server.service_account_key(), "/d/tls/service-account.key"),
            (server.admin_token(), "/d/admin-token"),
            (server.join_token(), "/d/join-token"),
            (server.agent_token(), "/d/agent-token"),
            (server.admin_kubeconfig(), "/d/admin.kubeconfig"),
            (server.encryption_config(), "/d/encryption-config.json"),
            (server.audit_log(), "/d/audit/audit.log"),
            (server.raft_log(), "/d/raft-log.redb"),
            (server.state(), "/d/state.redb"),
            (server.snapshots(), "/d/snapshots"),
        ] {
            assert_eq!(path, Path::new(want));
        }
        let agent = server.agent();
        let vm = agent.vm("shop", "web-1");
        let workload = agent.workload("shop", "job");
        for (path, want) in [
            (agent.root().to_path_buf(), "/d/agent"),
            (agent.ca_cert(), "/d/agent/pki/ca.crt"),
            (agent.node_cert(), "/d/agent/pki/node.crt"),
            (agent.node_key(), "/d/agent/pki/node.key"),
            (agent.node_password(), "/d/agent/pki/node-password"),
            (agent.images(), "/d/agent/images"),
            (agent.storage(), "/d/agent/storage"),
            (agent.heartbeat(), "/d/agent/heartbeat"),
            (agent.kvm_probe(), "/d/agent/kvm-probe.json"),
            (vm.qmp(), "/d/agent/vms/shop_web-1/qmp.sock"),
            (vm.disk("root"), "/d/agent/vms/shop_web-1/disk-root.qcow2"),
            (vm.guest_id(), "/d/agent/vms/shop_web-1/guest.id"),
            (workload.pid(), "/d/agent/workloads/shop_job/pid"),
        ] {
            assert_eq!(path, Path::new(want));
        }
    }

    #[test]
    fn directory_names_read_back() {
        assert_eq!(parse_object_dir("shop_web-1"), Some(("shop", "web-1")));
        assert_eq!(parse_object_dir("_node-x"), Some(("", "node-x")));
        assert_eq!(parse_object_dir("junk"), None);
        assert_eq!(VmDir::disk_name("disk-root.qcow2"), Some("root"));
        assert_eq!(VmDir::disk_name("disk-data.origin"), Some("data"));
        assert_eq!(VmDir::disk_name("retired-data.qcow2"), None);
    }
}
