//! What this host has and can do, probed when the agent starts: capacity (CPU, memory, disk),
//! addresses, and capability conditions — KVM usable or TCG only, QEMU present, the storage
//! dir writable (OVS/OVN: [`keel_vm::ovs::probe`]; DNS: the DNS server's own bind). A host that lacks something
//! says so in its Node's conditions instead of failing later.
//!
//! KVM counts as usable only when a real guest boots under it: on some hosts `/dev/kvm`
//! opens and even runs a boot sector, but a Linux kernel hangs early. So the probe boots a
//! kernel (`--kvm-probe-kernel`, else the host's own) under KVM with no root file system and
//! waits for it to get as far as panicking about that; until one does, guests run under TCG.
//! The verdict is cached in the data dir, keyed by what it depends on.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_schemas::datadir::AgentDir;
use keel_schemas::kinds::compute::Accelerator;
use serde_json::{Value, json};

/// How long the KVM probe's guest gets to boot its kernel.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(8);

pub use keel_host::Capability;

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
    /// How guests are virtualized here.
    pub accelerator: Accelerator,
}

/// Where the probes look.
#[derive(Debug, Clone)]
pub struct ProbeConfig<'a> {
    /// The agent's data dir (storage probe, disk size, the KVM probe's cached result).
    pub data_dir: &'a AgentDir,
    /// A server address, to find the local address used to reach it.
    pub server: Option<SocketAddr>,
    /// The kernel the KVM probe boots (else the host's own, if found).
    pub kvm_probe_kernel: Option<&'a Path>,
}

/// Probes the host.
pub fn probe(config: &ProbeConfig<'_>) -> HostFacts {
    let kvm = kvm(config);
    let accelerator = if kvm.available {
        Accelerator::Kvm
    } else {
        Accelerator::Tcg
    };
    HostFacts {
        accelerator,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: mem_total().unwrap_or(0),
        disk_bytes: nix::sys::statvfs::statvfs(config.data_dir.root())
            .map(|s| s.blocks().saturating_mul(s.fragment_size()))
            .unwrap_or(0),
        internal_ip: config.server.and_then(local_ip_towards),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        capabilities: vec![kvm, qemu(), storage(config.data_dir.root())],
    }
}

// === impl HostFacts ===

impl HostFacts {
    /// Node `status.allocatable`: the capacity, with `cpu_ratio` virtual CPUs per core (the
    /// overcommit OpenStack's `cpu_allocation_ratio` sets; memory is never overcommitted).
    pub fn allocatable(&self, cpu_ratio: f64) -> Value {
        let mut out = self.capacity();
        let milli = (self.cpus as f64 * cpu_ratio.max(0.0) * 1000.0).floor() as u64;
        out["cpu"] = Value::String(if milli.is_multiple_of(1000) {
            (milli / 1000).to_string()
        } else {
            format!("{milli}m")
        });
        out
    }

    /// Node `status.capacity`.
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

fn kvm(config: &ProbeConfig<'_>) -> Capability {
    let unusable = |reason, message: String| Capability {
        type_: "KVMAvailable",
        available: false,
        reason,
        message: format!("{message}: guests run under TCG (software emulation, slower)"),
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return unusable("TCGOnly", format!("/dev/kvm: {e}"));
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = config.kvm_probe_kernel.map(Path::to_path_buf).or_else(|| {
        [
            PathBuf::from(format!("/boot/vmlinuz-{}", release.trim())),
            PathBuf::from("/boot/vmlinuz"),
        ]
        .into_iter()
        .find(|p| p.exists())
    });
    let Some(kernel) = kernel else {
        return unusable(
            "KVMUnproven",
            "/dev/kvm opens, but there is no kernel to boot a test guest with (--kvm-probe-kernel)"
                .into(),
        );
    };
    let Ok(meta) = std::fs::metadata(&kernel) else {
        return unusable(
            "KVMUnproven",
            format!("the probe kernel {} cannot be read", kernel.display()),
        );
    };
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let key = format!(
        "{qemu}|{}|{}|{}|{}",
        kernel.display(),
        meta.len(),
        meta.mtime(),
        release.trim()
    );
    let cache = config.data_dir.kvm_probe();
    if let Ok(text) = std::fs::read(&cache)
        && let Ok(cached) = serde_json::from_slice::<Value>(&text)
        && cached["key"] == key.as_str()
    {
        let message = cached["message"].as_str().unwrap_or("").to_string();
        return if cached["works"] == true {
            Capability {
                type_: "KVMAvailable",
                available: true,
                reason: "KVMUsable",
                message,
            }
        } else {
            unusable("KVMBroken", message)
        };
    }
    let (works, message) = boot_under_kvm(&kernel);
    let _ = std::fs::write(
        &cache,
        json!({"key": key, "works": works, "message": message}).to_string(),
    );
    if works {
        Capability {
            type_: "KVMAvailable",
            available: true,
            reason: "KVMUsable",
            message,
        }
    } else {
        unusable("KVMBroken", message)
    }
}

/// Boots `kernel` under KVM without a root file system; it works when the kernel gets far
/// enough to panic about that (and QEMU, told not to reboot, exits).
fn boot_under_kvm(kernel: &Path) -> (bool, String) {
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
        ])
        .args([
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 root=/dev/keel-kvm-probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return (
                false,
                format!("cannot run qemu-system-x86_64 for the KVM probe: {e}"),
            );
        }
    };
    let started = Instant::now();
    let exited = loop {
        match child.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) if started.elapsed() < KVM_PROBE_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => break false,
        }
    };
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let booted = out.contains("Kernel panic") || out.contains("VFS:");
    let took = started.elapsed().as_secs_f64();
    match (exited, booted) {
        (true, true) => (
            true,
            format!(
                "a test kernel ({}) booted under KVM in {took:.1}s",
                kernel.display()
            ),
        ),
        (true, false) => (
            false,
            format!(
                "/dev/kvm opens, but QEMU failed to boot a test kernel under KVM: {}",
                err.lines().last().unwrap_or("no message")
            ),
        ),
        (false, _) => (
            false,
            format!(
                "/dev/kvm opens, but a test kernel ({}) did not boot under KVM within {KVM_PROBE_TIMEOUT:?}",
                kernel.display()
            ),
        ),
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
            data_dir: &AgentDir::new(dir.path()),
            server: Some("127.0.0.1:6443".parse().unwrap()),
            kvm_probe_kernel: None,
        });
        assert!(facts.cpus >= 1 && facts.memory_bytes > 0 && facts.disk_bytes > 0);
        assert_eq!(facts.internal_ip, Some("127.0.0.1".parse().unwrap()));
        assert!(facts.has("StorageAvailable"));
        assert_eq!(
            facts.capabilities.len(),
            3,
            "NetworkAvailable is vm::ovs::probe's, DNSAvailable the DNS server's"
        );
        assert_eq!(
            facts.accelerator == Accelerator::Kvm,
            facts.has("KVMAvailable"),
            "the accelerator follows the KVM condition"
        );
        assert!(facts.capacity()["memory"].as_str().unwrap().ends_with("Ki"));
        let cores = facts.cpus;
        assert_eq!(facts.allocatable(4.0)["cpu"], (cores * 4).to_string());
        assert_eq!(
            facts.allocatable(1.5)["cpu"],
            format!("{}m", cores * 1500).replace("000m", "")
        );
        assert_eq!(facts.allocatable(1.0)["memory"], facts.capacity()["memory"]);
    }
}
