//! The pod tests' fixtures: images built offline (`e2e/images/build.sh`: busybox-static
//! through umoci), Debian's `docker-registry` on a loopback address with them pushed by
//! `skopeo`, and the removal of what an agent's containerd leaves running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Netns;

/// A `docker-registry` (distribution 2.8) on `127.0.0.1` — in a network namespace when the
/// agents pulling from it run in one — holding `busybox:test` and `pause:test`. Killed when
/// dropped.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
}

/// Builds the test images into `dir` (an OCI layout with tags `busybox` and `pause`).
pub fn build_images(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("run e2e/images/build.sh");
    assert!(
        out.status.success(),
        "building the test images failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `command` run inside `netns`, if any.
fn within(netns: Option<&Netns>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, program]);
            c
        }
        None => Command::new(program),
    }
}

impl Registry {
    /// Starts a registry under `root` on loopback (of `netns`, if given) and pushes the test
    /// images to it.
    pub fn start(root: &Path, netns: Option<&Netns>) -> Registry {
        Registry::start_at(root, netns, crate::free_port())
    }

    /// The same on `port`: registries of several hosts' namespaces on one port give their
    /// images one name.
    pub fn start_at(root: &Path, netns: Option<&Netns>, port: u16) -> Registry {
        Registry::start_with(root, netns, port, None)
    }

    /// A registry that asks for `user` and `password` (htpasswd, basic auth over plain
    /// HTTP on loopback), with the test images pushed with them.
    pub fn start_private(
        root: &Path,
        netns: Option<&Netns>,
        user: &str,
        password: &str,
    ) -> Registry {
        Registry::start_with(root, netns, crate::free_port(), Some((user, password)))
    }

    /// The same on `port`.
    pub fn start_private_at(
        root: &Path,
        netns: Option<&Netns>,
        port: u16,
        user: &str,
        password: &str,
    ) -> Registry {
        Registry::start_with(root, netns, port, Some((user, password)))
    }

    fn start_with(
        root: &Path,
        netns: Option<&Netns>,
        port: u16,
        auth: Option<(&str, &str)>,
    ) -> Registry {
        let addr = format!("127.0.0.1:{port}");
        let dir = root.join(format!("registry-{port}"));
        std::fs::create_dir_all(&dir).expect("the registry's directory");
        let config = dir.join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\n\
             storage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {addr}}}\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(dir.join("htpasswd"), &out.stdout).expect("the htpasswd file");
            text.push_str(&format!(
                "auth: {{htpasswd: {{realm: keel-test, path: {}}}}}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(&config, text).expect("the registry's config");
        let creds = auth.map(|(u, p)| format!("{u}:{p}"));
        let log = std::fs::File::create(dir.join("registry.log")).expect("the registry's log");
        let child = within(netns, "docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry { addr, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut curl = within(netns, "curl");
            curl.args(["-sf", "-o", "/dev/null"]);
            if let Some(creds) = &creds {
                curl.args(["-u", creds]);
            }
            let up = curl
                .arg(format!("http://{}/v2/", registry.addr))
                .status()
                .is_ok_and(|s| s.success());
            if up {
                break;
            }
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let layout = dir.join("oci");
        build_images(&layout);
        for (tag, name) in [("busybox", "busybox:test"), ("pause", "pause:test")] {
            let mut skopeo = within(netns, "skopeo");
            skopeo.args(["copy", "--dest-tls-verify=false"]);
            if let Some(creds) = &creds {
                skopeo.args(["--dest-creds", creds]);
            }
            let out = skopeo
                .arg(format!("oci:{}:{tag}", layout.display()))
                .arg(format!("docker://{}/{name}", registry.addr))
                .output()
                .expect("run skopeo");
            assert!(
                out.status.success(),
                "skopeo copy {tag}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        registry
    }

    /// The reference of image `name` (`busybox:test`) in this registry.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// The agent flags that make pods' sandboxes run this registry's pause image.
    pub fn agent_flags(&self) -> Vec<String> {
        vec!["--pause-image".into(), self.image("pause:test")]
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops everything the containerd of the agent with data dir `data` left: containerd, the
/// containers (through runc, so that no process is orphaned), their shims. Containers
/// outlive their agent by design; tests must not leave them behind.
pub fn remove_containers(data: &Path) {
    let dir = data.join("pods/containerd");
    if !dir.exists() {
        return;
    }
    if let Some(pid) = std::fs::read_to_string(dir.join("containerd.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let runc_root = dir.join("runc/k8s.io");
    let runc = |args: &[&str]| {
        Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(args)
            .output()
    };
    let ids: Vec<String> = runc(&["list", "-q"])
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    for id in &ids {
        let _ = runc(&["kill", "--all", id, "KILL"]);
    }
    for id in &ids {
        let _ = runc(&["delete", "--force", id]);
    }
    let socket = dir.join("containerd.sock").display().to_string();
    for pid in pids_with(&socket) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Root file systems, sandbox shm and network namespaces mounted under the data dir,
    // deepest first.
    let prefix = format!("{}/", data.display());
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").arg("-l").arg(&m).output();
    }
}

/// The pids of the processes with `needle` as one argument.
fn pids_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// The running containers of the agent with data dir `data`, as runc lists them.
pub fn containers(data: &Path) -> Vec<String> {
    let root: PathBuf = data.join("pods/containerd/runc/k8s.io");
    let out = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// A BIND (`named`) resolver that answers for one zone, on loopback in a host's namespace:
/// the upstream a DNS server forwards names outside Keel's zones to.
pub struct Upstream {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Upstream {
    /// Starts `named` under `root` in `net` on 127.0.0.1:`port`, answering for `zone`
    /// (`outside.test.`) with the zone-file `records`.
    pub fn start(root: &Path, net: &Netns, port: u16, zone: &str, records: &str) -> Upstream {
        let dir = root.join("named");
        std::fs::create_dir_all(&dir).expect("named's directory");
        let d = dir.display();
        std::fs::write(
            dir.join("zone"),
            format!(
                "$ORIGIN {zone}\n$TTL 60\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\n{records}\n"
            ),
        )
        .expect("the zone file");
        std::fs::write(
            dir.join("named.conf"),
            format!(
                r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "{zone}" {{ type primary; file "{d}/zone"; }};
"#
            ),
        )
        .expect("named.conf");
        let log = std::fs::File::create(dir.join("named.log")).expect("named's log");
        let child = Command::new("ip")
            .args(["netns", "exec", &net.name, "named", "-g", "-c"])
            .arg(dir.join("named.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start named (bind9)");
        Upstream { child, port }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
