//! The `qemu-system-x86_64` command line of a VM, and the files it uses.
//!
//! Each VM has a directory, `<data-dir>/vms/<namespace>_<name>/` ([`VmDir`], whose files
//! [`keel_schemas::datadir`] names), holding its disks, its
//! cloud-init seed, its QMP socket, the pid file QEMU writes, its console log (rotated by the
//! supervisor) and `boot.json`: what the running guest was started with, so that a restarted
//! agent re-adopts it and knows whether a spec change needs a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_runtime::ObjectRef;
use keel_schemas::datadir::AgentDir;
pub use keel_schemas::datadir::VmDir;
use keel_schemas::kinds::compute::{Accelerator, DiskBus, PortForward, VirtualMachineSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest path a unix socket can have (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What a running guest was started with (`boot.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Boot {
    /// The object's uid.
    pub uid: String,
    /// The generation whose spec it was started with.
    pub generation: i64,
    /// The newest generation whose spec it runs: a change that needs no restart applies
    /// while it runs (0: as `generation`).
    #[serde(default)]
    pub applied: i64,
    /// The fields of that spec that need a restart to change ([`restart_fields`]).
    pub fields: Value,
    /// kvm or tcg.
    pub accelerator: Accelerator,
    /// The guest ports forwarded from the host.
    pub forwards: Vec<PortForward>,
    /// The tap devices plugged into the host's integration bridge.
    #[serde(default)]
    pub taps: Vec<String>,
    /// When (RFC 3339).
    pub started_at: String,
}

/// Where a VM's disks are, in the order of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedDisk {
    /// The disk's name in the spec.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// Its bus.
    pub bus: DiskBus,
}

/// Everything the command line is made of.
#[derive(Debug, Clone)]
pub struct Machine<'a> {
    /// The VM.
    pub key: &'a ObjectRef,
    /// Its uid (MAC addresses derive from it).
    pub uid: &'a str,
    /// Its spec.
    pub spec: &'a VirtualMachineSpec,
    /// Its files.
    pub dir: &'a VmDir,
    /// How to virtualize.
    pub accelerator: Accelerator,
    /// The kernel of a direct kernel boot, resolved to a file on this host.
    pub kernel: Option<&'a Path>,
    /// Its initrd.
    pub initrd: Option<&'a Path>,
    /// Its disks, ready.
    pub disks: &'a [AttachedDisk],
    /// The cloud-init seed image, if any.
    pub seed: Option<&'a Path>,
    /// Guest ports to forward from the host (on the first NIC, when it is user-mode).
    pub forwards: &'a [PortForward],
    /// Per NIC, the tap device plugged into the host's OVN integration bridge (`None`: QEMU
    /// user networking).
    pub taps: &'a [Option<String>],
    /// Per NIC, the MAC the network controller gave it (`None`: the spec's or the derived one).
    pub macs: &'a [Option<String>],
}

/// What the agent reads and writes in a VM's directory.
pub trait VmFiles {
    /// QEMU's pid, from its pid file.
    fn qemu_pid(&self) -> Option<u32>;
    /// Writes the boot record.
    fn write_boot(&self, boot: &Boot) -> std::io::Result<()>;
    /// The names of the disks in the directory (a disk file or its origin record).
    fn disk_names(&self) -> Vec<String>;
    /// The running guest's boot record.
    fn read_boot(&self) -> Option<Boot>;
    /// Whether the QMP socket's path fits a unix socket address.
    fn check_socket_path(&self) -> Result<(), String>;
}

/// The directory of the VM `key` in the agent's data dir.
pub fn vm_dir(data: &AgentDir, key: &ObjectRef) -> VmDir {
    data.vm(key.namespace.as_deref().unwrap_or(""), &key.name)
}

// === impl VmDir ===

impl VmFiles for VmDir {
    fn qemu_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn write_boot(&self, boot: &Boot) -> std::io::Result<()> {
        write_whole(&self.boot(), &serde_json::to_vec(boot)?)
    }

    fn disk_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| Some(VmDir::disk_name(entry.file_name().to_str()?)?.to_string()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn read_boot(&self) -> Option<Boot> {
        serde_json::from_slice(&std::fs::read(self.boot()).ok()?).ok()
    }

    fn check_socket_path(&self) -> Result<(), String> {
        let len = self
            .qmp()
            .as_os_str()
            .len()
            .max(self.events().as_os_str().len());
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "the QMP socket path {} is {len} bytes, longer than a unix socket allows ({MAX_SOCKET_PATH}): use a shorter --data-dir",
                self.qmp().display()
            ));
        }
        Ok(())
    }
}

/// The fields of a spec whose change needs the guest restarted.
pub fn restart_fields(spec: &VirtualMachineSpec) -> Value {
    let mut fields = BTreeMap::new();
    let value = serde_json::to_value(spec).unwrap_or_default();
    for key in [
        "cpu",
        "memory",
        "disks",
        "kernel",
        "initrd",
        "cmdline",
        "nics",
        "cloudInit",
    ] {
        if let Some(v) = value.get(key) {
            fields.insert(key.to_string(), v.clone());
        }
    }
    // The forwarded port follows the probe's port.
    if let Some(port) = probe_port(spec) {
        fields.insert("probePort".into(), Value::from(port));
    }
    serde_json::to_value(fields).unwrap_or_default()
}

/// The guest port a TCP or HTTP readiness probe reaches.
pub fn probe_port(spec: &VirtualMachineSpec) -> Option<u16> {
    let probe = spec.readiness_probe.as_ref()?;
    probe
        .tcp
        .as_ref()
        .map(|t| t.port)
        .or(probe.http.as_ref().map(|h| h.port))
}

/// Writes `bytes` to `path` whole: through a temporary file, synced, renamed over it, and
/// the directory synced, so that a reader (or an agent restarted halfway, or a host that
/// lost power) never sees half of it.
pub fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The names of the fields that differ between two [`restart_fields`].
pub fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return vec!["spec".into()];
    };
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// The MAC address of NIC `index` of the VM with `uid`, unless the spec fixes one: the same
/// one the network controller puts on the NIC's OVN port (QEMU's locally administered prefix
/// and three bytes of a hash of the uid and index), stable across restarts and hosts.
pub fn mac(uid: &str, index: usize) -> String {
    keel_schemas::wellknown::nic_mac(uid, index)
}

// === impl Machine ===

impl Machine<'_> {
    /// The command line.
    pub fn command(&self) -> Vec<String> {
        let spec = self.spec;
        let dir = self.dir;
        let mut args: Vec<String> = vec!["qemu-system-x86_64".into()];
        let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
        let name = format!(
            "{}_{},debug-threads=on",
            self.key.namespace.as_deref().unwrap_or(""),
            self.key.name
        );
        push(&["-name", &name, "-machine", "q35"]);
        match self.accelerator {
            Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accelerator::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        }
        let memory_mib = spec
            .memory
            .bytes()
            .map(|b| b.div_ceil(1 << 20))
            .unwrap_or(128);
        push(&[
            "-smp",
            &spec.cpu.max(1).to_string(),
            "-m",
            &memory_mib.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-msg",
            "timestamp=on",
        ]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", dir.qmp().display()),
            "-qmp",
            &format!("unix:{},server=on,wait=off", dir.events().display()),
            "-pidfile",
            &dir.pid().display().to_string(),
        ]);
        // The serial console goes to QEMU's standard output, which the supervisor logs.
        push(&[
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
        ]);
        if let Some(kernel) = self.kernel {
            push(&["-kernel", &kernel.display().to_string()]);
            if let Some(initrd) = self.initrd {
                push(&["-initrd", &initrd.display().to_string()]);
            }
            if let Some(cmdline) = &spec.cmdline {
                push(&["-append", cmdline]);
            }
        }
        let mut scsi = false;
        for (i, disk) in self.disks.iter().enumerate() {
            let id = format!("drive-{}", disk.name);
            push(&[
                "-drive",
                &format!(
                    "if=none,id={id},file={},format=qcow2,cache=writeback,discard=unmap",
                    disk.path.display()
                ),
            ]);
            let boot = if i == 0 && spec.kernel.is_none() {
                ",bootindex=1"
            } else {
                ""
            };
            let device = match disk.bus {
                DiskBus::Virtio => {
                    format!("virtio-blk-pci,drive={id},serial={}{boot}", disk.name)
                }
                DiskBus::Scsi => {
                    if !scsi {
                        push(&["-device", "virtio-scsi-pci,id=scsi0"]);
                        scsi = true;
                    }
                    format!("scsi-hd,drive={id},bus=scsi0.0,serial={}{boot}", disk.name)
                }
                DiskBus::Sata => {
                    format!("ide-hd,drive={id},bus=ide.{i},serial={}{boot}", disk.name)
                }
            };
            push(&["-device", &device]);
        }
        if let Some(seed) = self.seed {
            push(&[
                "-drive",
                &format!(
                    "if=none,id=drive-cidata,file={},format=raw,readonly=on",
                    seed.display()
                ),
                "-device",
                "virtio-blk-pci,drive=drive-cidata,serial=cidata",
            ]);
        }
        // A NIC on a VPC network is a tap device that the agent plugs into br-int; the others
        // (and a VM without NICs) get QEMU's user network, the forwarded ports on the first.
        let nics = spec.nics.len().max(1);
        for i in 0..nics {
            let netdev = match self.taps.get(i).cloned().flatten() {
                Some(tap) => format!("tap,id=net{i},ifname={tap},script=no,downscript=no"),
                None => {
                    let mut user = format!("user,id=net{i}");
                    if i == 0 {
                        for f in self.forwards {
                            user.push_str(&format!(
                                ",hostfwd=tcp:{}:{}-:{}",
                                f.host_ip.as_deref().unwrap_or("127.0.0.1"),
                                f.host_port,
                                f.guest_port
                            ));
                        }
                    }
                    user
                }
            };
            let mac = spec
                .nics
                .get(i)
                .and_then(|n| n.mac.clone())
                .or_else(|| self.macs.get(i).cloned().flatten())
                .unwrap_or_else(|| mac(self.uid, i));
            push(&[
                "-netdev",
                &netdev,
                "-device",
                &format!("virtio-net-pci,netdev=net{i},mac={mac}"),
            ]);
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> VirtualMachineSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_command_line_follows_the_spec() {
        let key = ObjectRef::new(Some("shop"), "web-1");
        let dir = vm_dir(&AgentDir::new("/d"), &key);
        let spec = spec(json!({
            "cpu": 2, "memory": "1Gi", "kernel": "/k", "initrd": "/i", "cmdline": "console=ttyS0",
            "disks": [{"name": "root", "image": "/x.qcow2"}, {"name": "data", "size": "1Gi", "bus": "scsi"}],
            "nics": [{"subnet": "a", "mac": "52:54:00:00:00:01"}, {"subnet": "b"}],
        }));
        let disks = vec![
            AttachedDisk {
                name: "root".into(),
                path: dir.disk("root"),
                bus: DiskBus::Virtio,
            },
            AttachedDisk {
                name: "data".into(),
                path: dir.disk("data"),
                bus: DiskBus::Scsi,
            },
        ];
        let forwards = [PortForward {
            guest_port: 80,
            host_ip: Some("127.0.0.1".into()),
            host_port: 40000,
        }];
        let cmd = Machine {
            key: &key,
            uid: "u-1",
            spec: &spec,
            dir: &dir,
            accelerator: Accelerator::Tcg,
            kernel: Some(Path::new("/k")),
            initrd: Some(Path::new("/i")),
            disks: &disks,
            seed: Some(&dir.seed()),
            forwards: &forwards,
            taps: &[None, Some("kt0000000a1".into())],
            macs: &[],
        }
        .command()
        .join(" ");
        for part in [
            "-accel tcg -cpu max",
            "-smp 2 -m 1024",
            "-qmp unix:/d/vms/shop_web-1/qmp.sock,server=on,wait=off",
            "-pidfile /d/vms/shop_web-1/qemu.pid",
            "-kernel /k -initrd /i -append console=ttyS0",
            "file=/d/vms/shop_web-1/disk-root.qcow2,format=qcow2",
            "virtio-blk-pci,drive=drive-root,serial=root ",
            "virtio-scsi-pci,id=scsi0",
            "scsi-hd,drive=drive-data,bus=scsi0.0,serial=data",
            "file=/d/vms/shop_web-1/cidata.iso,format=raw,readonly=on",
            "user,id=net0,hostfwd=tcp:127.0.0.1:40000-:80 ",
            "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01",
            &format!("virtio-net-pci,netdev=net1,mac={}", mac("u-1", 1)),
            "tap,id=net1,ifname=kt0000000a1,script=no,downscript=no",
        ] {
            assert!(cmd.contains(part), "{part:?} in {cmd}");
        }
        assert!(
            !cmd.contains("bootindex"),
            "a kernel boots, not a disk: {cmd}"
        );
    }

    #[test]
    fn restart_fields_see_what_needs_a_restart_and_nothing_else() {
        let a = spec(json!({"cpu": 1, "memory": "128Mi", "kernel": "/k", "runStrategy": "Always"}));
        let mut b = a.clone();
        b.run_strategy = Some(keel_schemas::kinds::compute::RunStrategy::Manual);
        b.paused = Some(true);
        assert_eq!(restart_fields(&a), restart_fields(&b));
        b.cpu = 2;
        b.cmdline = Some("quiet".into());
        assert_eq!(
            changed_fields(&restart_fields(&a), &restart_fields(&b)),
            vec!["cmdline".to_string(), "cpu".to_string()]
        );
    }

    #[test]
    fn macs_are_stable_and_locally_administered() {
        assert_eq!(mac("u", 0), mac("u", 0));
        assert_ne!(mac("u", 0), mac("u", 1));
        assert!(mac("u", 0).starts_with("52:54:00:"));
        assert_eq!(mac("u", 0).len(), 17);
    }

    #[test]
    fn long_data_dirs_are_refused_before_qemu_fails() {
        let key = ObjectRef::new(Some("ns"), "vm");
        assert!(
            vm_dir(&AgentDir::new("/d"), &key)
                .check_socket_path()
                .is_ok()
        );
        let long = "/x".repeat(60);
        let err = vm_dir(&AgentDir::new(long), &key)
            .check_socket_path()
            .unwrap_err();
        assert!(err.contains("longer than a unix socket allows"), "{err}");
    }
}
