//! What this host has and can do, probed when the agent starts: capacity (CPU, memory, disk),
//! addresses, and capability conditions — KVM usable or TCG only, QEMU present, OVS/OVN
//! reachable, the DNS port bindable, the storage dir writable. A host that lacks something
//! says so in its Node's conditions instead of failing later.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

/// One probed capability, as a Node condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// The condition type (`KVMAvailable`).
    pub type_: &'static str,
    /// Whether the host has it.
    pub available: bool,
    /// A CamelCase reason.
    pub reason: &'static str,
    /// What was found.
    pub message: String,
}

/// What the agent learned about its host.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// CPUs.
    pub cpus: usize,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Size of the file system holding the data dir, in bytes.
    pub disk_bytes: u64,
    /// The address other hosts reach this one at.
    pub internal_ip: Option<IpAddr>,
    /// The host name.
    pub hostname: String,
    /// The capabilities.
    pub capabilities: Vec<Capability>,
}

/// Where the probes look.
#[derive(Debug, Clone)]
pub struct ProbeConfig<'a> {
    /// The agent's data dir (storage probe, disk size).
    pub data_dir: &'a Path,
    /// A server address, to find the local address used to reach it.
    pub server: Option<SocketAddr>,
    /// The address the DNS server will bind.
    pub dns_listen: SocketAddr,
    /// The OVS database socket.
    pub ovs_socket: &'a Path,
}

/// Probes the host.
pub fn probe(config: &ProbeConfig<'_>) -> HostFacts {
    HostFacts {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: mem_total().unwrap_or(0),
        disk_bytes: nix::sys::statvfs::statvfs(config.data_dir)
            .map(|s| s.blocks().saturating_mul(s.fragment_size()))
            .unwrap_or(0),
        internal_ip: config.server.and_then(local_ip_towards),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        capabilities: vec![
            kvm(),
            qemu(),
            network(config.ovs_socket),
            dns(config.dns_listen),
            storage(config.data_dir),
        ],
    }
}

// === impl HostFacts ===

impl HostFacts {
    /// Node `status.capacity` (and `allocatable`, the same until reservations exist).
    pub fn capacity(&self) -> Value {
        json!({
            "cpu": self.cpus.to_string(),
            "memory": format!("{}Ki", self.memory_bytes / 1024),
            "ephemeral-storage": format!("{}Ki", self.disk_bytes / 1024),
            "pods": "110",
        })
    }

    /// Node `status.addresses`.
    pub fn addresses(&self, node_name: &str) -> Value {
        let mut out = Vec::new();
        if let Some(ip) = self.internal_ip {
            out.push(json!({"type": "InternalIP", "address": ip.to_string()}));
        }
        out.push(json!({"type": "Hostname", "address": node_name}));
        Value::Array(out)
    }

    /// Whether a capability is available.
    pub fn has(&self, type_: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.type_ == type_ && c.available)
    }
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The local address the kernel picks to reach `server` (no packet is sent).
fn local_ip_towards(server: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(server).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

fn kvm() -> Capability {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Capability {
            type_: "KVMAvailable",
            available: true,
            reason: "KVMUsable",
            message: "/dev/kvm opens read-write: guests run with hardware virtualization".into(),
        },
        Err(e) => Capability {
            type_: "KVMAvailable",
            available: false,
            reason: "TCGOnly",
            message: format!("/dev/kvm: {e}: guests run under TCG (software emulation, slower)"),
        },
    }
}

fn qemu() -> Capability {
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(out) if out.status.success() => Capability {
            type_: "QEMUAvailable",
            available: true,
            reason: "QEMUFound",
            message: String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("qemu-system-x86_64")
                .to_string(),
        },
        Ok(out) => Capability {
            type_: "QEMUAvailable",
            available: false,
            reason: "QEMUBroken",
            message: format!("qemu-system-x86_64 --version failed: {}", out.status),
        },
        Err(e) => Capability {
            type_: "QEMUAvailable",
            available: false,
            reason: "QEMUMissing",
            message: format!("qemu-system-x86_64: {e}"),
        },
    }
}

fn network(ovs_socket: &Path) -> Capability {
    match std::os::unix::net::UnixStream::connect(ovs_socket) {
        Ok(_) => Capability {
            type_: "NetworkAvailable",
            available: true,
            reason: "OVSReachable",
            message: format!(
                "the Open vSwitch database answers at {}",
                ovs_socket.display()
            ),
        },
        Err(e) => Capability {
            type_: "NetworkAvailable",
            available: false,
            reason: "OVSUnreachable",
            message: format!(
                "cannot reach the Open vSwitch database at {}: {e}; VMs get no VPC networking here",
                ovs_socket.display()
            ),
        },
    }
}

fn dns(listen: SocketAddr) -> Capability {
    let udp = UdpSocket::bind(listen);
    let tcp = std::net::TcpListener::bind(listen);
    match (udp, tcp) {
        (Ok(_), Ok(_)) => Capability {
            type_: "DNSAvailable",
            available: true,
            reason: "PortFree",
            message: format!("{listen} can be bound (UDP and TCP) for the DNS server"),
        },
        (Err(e), _) | (_, Err(e)) => Capability {
            type_: "DNSAvailable",
            available: false,
            reason: "PortUnavailable",
            message: format!("cannot bind {listen} for the DNS server: {e}"),
        },
    }
}

fn storage(dir: &Path) -> Capability {
    let probe = dir.join(".write-probe");
    let result = std::fs::write(&probe, b"keel").and_then(|()| std::fs::remove_file(&probe));
    match result {
        Ok(()) => Capability {
            type_: "StorageAvailable",
            available: true,
            reason: "Writable",
            message: format!("{} is writable", dir.display()),
        },
        Err(e) => Capability {
            type_: "StorageAvailable",
            available: false,
            reason: "NotWritable",
            message: format!("cannot write in {}: {e}", dir.display()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_report_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let facts = probe(&ProbeConfig {
            data_dir: dir.path(),
            server: Some("127.0.0.1:6443".parse().unwrap()),
            dns_listen: "127.0.0.1:0".parse().unwrap(),
            ovs_socket: Path::new("/nonexistent/db.sock"),
        });
        assert!(facts.cpus >= 1 && facts.memory_bytes > 0 && facts.disk_bytes > 0);
        assert_eq!(facts.internal_ip, Some("127.0.0.1".parse().unwrap()));
        assert!(facts.has("StorageAvailable"));
        assert!(facts.has("DNSAvailable"));
        assert!(!facts.has("NetworkAvailable"));
        assert_eq!(facts.capabilities.len(), 5);
        assert!(facts.capacity()["memory"].as_str().unwrap().ends_with("Ki"));
    }
}
