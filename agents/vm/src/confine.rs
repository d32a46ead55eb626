//! QEMU's confinement: each guest's QEMU runs as a user id of its own, under a seccomp
//! filter, in a cgroup holding it to its VM's CPUs and memory.
//!
//! QEMU starts as root (it opens the disks, taps and sockets the agent prepared), then drops
//! to the guest's id before the guest runs (`-runas`). The id comes from a range no account
//! uses ([`GUEST_ID_BASE`]), one per VM on this host, kept in the VM's directory; the
//! directory and its files belong to it, so one QEMU cannot read another guest's disks or
//! any file of the host that is not world-readable.
//!
//! The seccomp filter is QEMU's `-sandbox` with `obsolete`, `spawn` and `resourcecontrol`
//! denied. `elevateprivileges` stays allowed: QEMU 7.2 installs the filter before `-runas`
//! drops privileges, so with it denied the drop itself is a forbidden system call. After the
//! drop the process has no capabilities and `no_new_privs`, so the set*id calls left to it
//! only switch among the guest's own ids, and `spawn=deny` keeps it from executing anything.
//!
//! The cgroup is `keel.guests/<namespace>_<name>` under the agent's own cgroup (cgroup v1,
//! per controller) or at the root of the unified hierarchy (v2, where a cgroup with
//! processes cannot delegate controllers). The supervisor joins it before it starts QEMU.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::qemu::VmDir;

/// The first user and group id guests run as.
pub const GUEST_ID_BASE: u32 = 900_000_000;
/// How many ids guests may use.
const GUEST_IDS: u32 = 1 << 20;
/// The directory of the guests' cgroups.
const CGROUP_DIR: &str = "keel.guests";
/// The CFS period the CPU quota is given in.
const CPU_PERIOD_US: u64 = 100_000;

/// How guests are confined on this host.
#[derive(Debug)]
pub struct Confinement {
    /// Whether the agent may switch ids (runs as root).
    privileged: bool,
    /// Where the guests' cgroups go, if this host lets the agent make them.
    cgroups: Option<Cgroups>,
    /// Guards id allocation (reconciles run concurrently).
    allocating: Mutex<()>,
}

/// The cgroup hierarchies guests' cgroups are made in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cgroups {
    /// cgroup v1: the `cpu` and `memory` hierarchies' directories for `keel.guests`.
    V1 { cpu: PathBuf, memory: PathBuf },
    /// cgroup v2: the `keel.guests` directory of the unified hierarchy.
    V2(PathBuf),
}

/// What a guest is confined with: QEMU's extra arguments and the cgroups its supervisor
/// joins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confined {
    /// Arguments for QEMU's command line.
    pub args: Vec<String>,
    /// The cgroup directories the supervisor joins before it starts QEMU.
    pub cgroups: Vec<PathBuf>,
    /// The id the guest runs as (none: the agent's own).
    pub id: Option<u32>,
}

// === impl Confinement ===

impl Confinement {
    /// This host's confinement: ids when the agent runs as root, cgroups when it may make
    /// them.
    pub fn probe() -> Confinement {
        let privileged = nix::unistd::geteuid().is_root();
        let cgroups = privileged.then(Cgroups::probe).flatten();
        if !privileged {
            tracing::warn!("the agent is not root: guests run with its privileges");
        } else if cgroups.is_none() {
            tracing::warn!(
                "no cgroup hierarchy with cpu and memory to use: guests run without CPU and memory limits"
            );
        }
        Confinement {
            privileged,
            cgroups,
            allocating: Mutex::new(()),
        }
    }

    /// Confines the guest of `dir` (its VM has `cpus` and `memory` bytes): gives it an id and
    /// its files, and makes its cgroup with those limits.
    pub fn confine(
        &self,
        vms: &Path,
        dir: &VmDir,
        cpus: u32,
        memory: u64,
        tcg: bool,
    ) -> Result<Confined, String> {
        let sandbox = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";
        let mut confined = Confined {
            args: vec!["-sandbox".into(), sandbox.into()],
            ..Confined::default()
        };
        if !self.privileged {
            return Ok(confined);
        }
        let id = self.id_of(vms, dir)?;
        own(&dir.root, id)
            .map_err(|e| format!("giving {} to the guest's id {id}: {e}", dir.root.display()))?;
        confined
            .args
            .extend(["-runas".into(), format!("{id}:{id}")]);
        confined.id = Some(id);
        if let Some(cgroups) = &self.cgroups {
            let name = dir
                .root
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            confined.cgroups = cgroups
                .make(&name, cpus, memory_limit(memory, tcg))
                .map_err(|e| format!("the guest's cgroup {name}: {e}"))?;
        }
        Ok(confined)
    }

    /// Removes the cgroup of the guest of `dir` (once it has no process left).
    pub fn release(&self, dir: &VmDir) {
        let Some(cgroups) = &self.cgroups else { return };
        if let Some(name) = dir.root.file_name() {
            for path in cgroups.dirs(&name.to_string_lossy()) {
                let _ = std::fs::remove_dir(path);
            }
        }
    }

    /// The guest id of `dir`: the one it has, or the lowest no other VM here has.
    fn id_of(&self, vms: &Path, dir: &VmDir) -> Result<u32, String> {
        let _held = self
            .allocating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let read = |dir: &VmDir| -> Option<u32> {
            std::fs::read_to_string(dir.guest_id())
                .ok()?
                .trim()
                .parse()
                .ok()
                .filter(|id| (GUEST_ID_BASE..GUEST_ID_BASE + GUEST_IDS).contains(id))
        };
        if let Some(id) = read(dir) {
            return Ok(id);
        }
        let mut taken: Vec<u32> = std::fs::read_dir(vms)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path() != dir.root)
            .filter_map(|e| read(&VmDir { root: e.path() }))
            .collect();
        taken.sort_unstable();
        let mut id = GUEST_ID_BASE;
        for t in taken {
            if t == id {
                id += 1;
            } else if t > id {
                break;
            }
        }
        if id >= GUEST_ID_BASE + GUEST_IDS {
            return Err("every guest id of this host is taken".into());
        }
        super::qemu::write_whole(&dir.guest_id(), id.to_string().as_bytes())
            .map_err(|e| format!("{}: {e}", dir.guest_id().display()))?;
        Ok(id)
    }
}

/// The memory a guest's QEMU may use: the guest's, plus room for QEMU itself (and, under
/// TCG, its translation cache).
fn memory_limit(guest: u64, tcg: bool) -> u64 {
    let overhead = (256u64 << 20).max(guest / 4) + if tcg { 512 << 20 } else { 0 };
    guest + overhead
}

/// Gives `dir` and the files in it to `id` (not following links).
fn own(dir: &Path, id: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(id), Some(id))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::os::unix::fs::lchown(entry.path(), Some(id), Some(id))?;
        }
    }
    Ok(())
}

// === impl Cgroups ===

impl Cgroups {
    /// The hierarchies of this host: v2 when its root delegates cpu and memory, else the v1
    /// cpu and memory hierarchies under the agent's own cgroups.
    fn probe() -> Option<Cgroups> {
        let root = Path::new("/sys/fs/cgroup");
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        if let Ok(controllers) = std::fs::read_to_string(root.join("cgroup.controllers")) {
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if !(has("cpu") && has("memory")) {
                return None;
            }
            let dir = root.join(CGROUP_DIR);
            std::fs::write(root.join("cgroup.subtree_control"), "+cpu +memory").ok()?;
            std::fs::create_dir_all(&dir).ok()?;
            std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory").ok()?;
            return Some(Cgroups::V2(dir));
        }
        // v1: `ID:CONTROLLERS:PATH` lines; the agent's path in each hierarchy.
        let path_of = |controller: &str| {
            own.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                list.split(',')
                    .any(|c| c == controller)
                    .then(|| path.trim_start_matches('/').to_string())
            })
        };
        let dir = |controller: &str| {
            let dir = root
                .join(controller)
                .join(path_of(controller)?)
                .join(CGROUP_DIR);
            std::fs::create_dir_all(&dir).ok()?;
            Some(dir)
        };
        Some(Cgroups::V1 {
            cpu: dir("cpu")?,
            memory: dir("memory")?,
        })
    }

    /// The cgroup directories of the guest `name`.
    fn dirs(&self, name: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::V1 { cpu, memory } => vec![cpu.join(name), memory.join(name)],
            Cgroups::V2(dir) => vec![dir.join(name)],
        }
    }

    /// Makes (or updates) the cgroup of the guest `name` with its limits.
    fn make(&self, name: &str, cpus: u32, memory: u64) -> std::io::Result<Vec<PathBuf>> {
        let dirs = self.dirs(name);
        for dir in &dirs {
            std::fs::create_dir_all(dir)?;
        }
        let quota = u64::from(cpus.max(1)) * CPU_PERIOD_US;
        let write = |dir: &Path, file: &str, value: String| {
            std::fs::write(dir.join(file), value).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display()))
            })
        };
        match self {
            Cgroups::V1 { .. } => {
                write(&dirs[0], "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                write(&dirs[0], "cpu.cfs_quota_us", quota.to_string())?;
                write(&dirs[1], "memory.limit_in_bytes", memory.to_string())?;
            }
            Cgroups::V2(_) => {
                write(&dirs[0], "cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
                write(&dirs[0], "memory.max", memory.to_string())?;
            }
        }
        Ok(dirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_get_the_lowest_free_id_and_keep_it() {
        let vms = tempfile::tempdir().unwrap();
        let confinement = Confinement {
            privileged: true,
            cgroups: None,
            allocating: Mutex::new(()),
        };
        let dir = |name: &str| {
            let d = VmDir {
                root: vms.path().join(name),
            };
            std::fs::create_dir_all(&d.root).unwrap();
            d
        };
        let (a, b, c) = (dir("ns_a"), dir("ns_b"), dir("ns_c"));
        assert_eq!(confinement.id_of(vms.path(), &a).unwrap(), GUEST_ID_BASE);
        assert_eq!(
            confinement.id_of(vms.path(), &b).unwrap(),
            GUEST_ID_BASE + 1
        );
        assert_eq!(
            confinement.id_of(vms.path(), &a).unwrap(),
            GUEST_ID_BASE,
            "kept"
        );
        std::fs::remove_dir_all(&a.root).unwrap();
        assert_eq!(
            confinement.id_of(vms.path(), &c).unwrap(),
            GUEST_ID_BASE,
            "freed"
        );
    }

    #[test]
    fn qemu_gets_room_beyond_the_guests_memory() {
        assert_eq!(memory_limit(128 << 20, false), (128 + 256) << 20);
        assert_eq!(memory_limit(4 << 30, false), 5 << 30);
        assert_eq!(memory_limit(128 << 20, true), (128 + 256 + 512) << 20);
    }
}
