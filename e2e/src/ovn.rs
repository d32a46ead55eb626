//! OVN for the tests (the controllers' component tests and the e2e tests): `ovsdb-server`s for the northbound and southbound databases on unix
//! sockets and `ovn-northd` between them (Debian's packages), and the real clients to check
//! what Keel wrote (`ovn-nbctl`, `ovn-trace`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running OVN control plane, stopped when dropped.
pub struct Ovn {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Ovn {
    /// The northbound database alone.
    pub fn nb_only() -> Ovn {
        let dir = tempfile::Builder::new()
            .prefix("ovn")
            .tempdir_in("/tmp")
            .expect("a temporary dir in /tmp");
        let mut ovn = Ovn {
            children: Vec::new(),
            dir,
        };
        ovn.database("nb", "/usr/share/ovn/ovn-nb.ovsschema");
        ovn
    }

    /// Northbound and southbound databases and `ovn-northd`.
    pub fn start() -> Ovn {
        let mut ovn = Ovn::nb_only();
        ovn.database("sb", "/usr/share/ovn/ovn-sb.ovsschema");
        let d = ovn.dir.path().to_path_buf();
        let northd = Command::new("ovn-northd")
            .arg(format!("--ovnnb-db=unix:{}", d.join("nb.sock").display()))
            .arg(format!("--ovnsb-db=unix:{}", d.join("sb.sock").display()))
            .arg(format!("--unixctl={}", d.join("northd.ctl").display()))
            .arg(format!("--log-file={}", d.join("northd.log").display()))
            .arg("--no-chdir")
            .stderr(Stdio::null())
            .spawn()
            .expect("ovn-northd (Debian's ovn-central)");
        ovn.children.push(northd);
        ovn
    }

    fn database(&mut self, name: &str, schema: &str) {
        let d = self.dir.path();
        let db = d.join(format!("{name}.db"));
        let out = Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(schema)
            .output()
            .expect("ovsdb-tool (Debian's openvswitch-common)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = d.join(format!("{name}.sock"));
        let child = Command::new("ovsdb-server")
            .arg(&db)
            .arg(format!("--remote=punix:{}", socket.display()))
            .arg(format!(
                "--unixctl={}",
                d.join(format!("{name}.ctl")).display()
            ))
            .arg(format!(
                "--log-file={}",
                d.join(format!("{name}.log")).display()
            ))
            .arg("--no-chdir")
            .stderr(Stdio::null())
            .spawn()
            .expect("ovsdb-server");
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "ovsdb-server for {name} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The northbound database's socket.
    pub fn nb_socket(&self) -> PathBuf {
        self.dir.path().join("nb.sock")
    }

    /// The northbound database's address for Keel.
    pub fn nb(&self) -> String {
        format!("unix:{}", self.nb_socket().display())
    }

    /// Runs `ovn-nbctl`: its output, or empty when it fails (a row not there yet).
    pub fn try_nbctl(&self, args: &[&str]) -> String {
        Command::new("ovn-nbctl")
            .arg(format!("--db=unix:{}", self.nb_socket().display()))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    /// Runs `ovn-nbctl` and returns its output (panics when it fails).
    pub fn nbctl(&self, args: &[&str]) -> String {
        let out = Command::new("ovn-nbctl")
            .arg(format!("--db=unix:{}", self.nb_socket().display()))
            .args(args)
            .output()
            .expect("ovn-nbctl");
        assert!(
            out.status.success(),
            "ovn-nbctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs `ovn-sbctl` against the southbound database (panics when it fails).
    pub fn sbctl(&self, args: &[&str]) -> String {
        let out = Command::new("ovn-sbctl")
            .arg(format!(
                "--db=unix:{}",
                self.dir.path().join("sb.sock").display()
            ))
            .args(args)
            .output()
            .expect("ovn-sbctl");
        assert!(
            out.status.success(),
            "ovn-sbctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits until `ovn-northd` has turned the northbound state into logical flows.
    pub fn sync(&self) {
        self.nbctl(&["--wait=sb", "--timeout=30", "sync"]);
    }

    /// `ovn-trace` of `flow` entering `datapath`; the final actions (`--minimal`).
    pub fn trace(&self, datapath: &str, flow: &str) -> String {
        self.trace_with(&[], datapath, flow)
    }

    /// [`Ovn::trace`] with more options, e.g. `--lb-dst=IP:PORT` (the backend a load
    /// balancer's `ct_lb` picks: without it, the trace goes on to the VIP unchanged).
    pub fn trace_with(&self, options: &[&str], datapath: &str, flow: &str) -> String {
        let out = Command::new("ovn-trace")
            .arg(format!(
                "--db=unix:{}",
                self.dir.path().join("sb.sock").display()
            ))
            .arg("--minimal")
            .args(options)
            .arg(datapath)
            .arg(flow)
            .output()
            .expect("ovn-trace");
        assert!(
            out.status.success(),
            "ovn-trace {datapath} {flow}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Ovn {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A hypervisor of the OVN deployment: its own Open vSwitch database, `ovs-vswitchd` with the
/// userspace datapath (no kernel module needed) and `ovn-controller` bound to the southbound
/// database; guests stand in as network namespaces plugged into `br-int`.
///
/// One chassis runs on a host at a time (a lock on [`CHASSIS_LOCK`], held until it is
/// dropped): the userspace datapath's own devices are tap devices with fixed names
/// (`ovs-netdev`, `br-int`) in the host's namespace, which a second `ovs-vswitchd` cannot
/// open while the first holds them.
pub struct Chassis {
    children: Vec<Child>,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    tag: String,
    /// The host-wide turn; released (closed) after the processes are gone.
    _turn: std::fs::File,
}

/// The file whose lock a [`Chassis`] holds while it runs.
pub const CHASSIS_LOCK: &str = "/tmp/keel-ovn-chassis.lock";

impl Chassis {
    /// Starts a chassis of `ovn` named `name`, once no other chassis runs on this host.
    pub fn start(ovn: &Ovn, name: &str) -> Chassis {
        let turn = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(CHASSIS_LOCK)
            .expect("the chassis lock file");
        turn.lock().expect("the chassis lock");
        let dir = tempfile::Builder::new()
            .prefix("hv")
            .tempdir_in("/tmp")
            .expect("a temporary dir in /tmp");
        let d = dir.path().to_path_buf();
        let out = Command::new("ovsdb-tool")
            .arg("create")
            .arg(d.join("conf.db"))
            .arg("/usr/share/openvswitch/vswitch.ovsschema")
            .output()
            .expect("ovsdb-tool");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rundir = |c: &mut Command| {
            // Each chassis keeps its sockets (br-int.mgmt ...) in its own directory.
            c.env("OVS_RUNDIR", &d)
                .env("OVN_RUNDIR", &d)
                .stderr(Stdio::null());
        };
        let mut children = Vec::new();
        let mut db = Command::new("ovsdb-server");
        db.arg(d.join("conf.db"))
            .arg(format!("--remote=punix:{}", d.join("db.sock").display()))
            .arg(format!("--unixctl={}", d.join("db.ctl").display()))
            .arg(format!("--log-file={}", d.join("db.log").display()))
            .arg("--no-chdir");
        rundir(&mut db);
        children.push(db.spawn().expect("ovsdb-server"));
        let socket = d.join("db.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the chassis database did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut chassis = Chassis {
            children,
            dir,
            namespaces: Vec::new(),
            tag: {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{:x}{n}", std::process::id() % 0xffff)
            },
            _turn: turn,
        };
        chassis.vsctl(&["--no-wait", "init"]);
        let mut vswitchd = Command::new("ovs-vswitchd");
        vswitchd
            .arg(format!("unix:{}", socket.display()))
            .arg(format!("--unixctl={}", d.join("vswitchd.ctl").display()))
            .arg(format!("--log-file={}", d.join("vswitchd.log").display()))
            .arg("--no-chdir");
        rundir(&mut vswitchd);
        chassis.children.push(
            vswitchd
                .spawn()
                .expect("ovs-vswitchd (Debian's openvswitch-switch)"),
        );
        chassis.vsctl(&[
            "set",
            "open_vswitch",
            ".",
            &format!("external_ids:system-id={name}"),
            &format!(
                "external_ids:ovn-remote=unix:{}",
                ovn.dir.path().join("sb.sock").display()
            ),
            "external_ids:ovn-encap-type=geneve",
            "external_ids:ovn-encap-ip=127.0.0.1",
            "external_ids:ovn-bridge-datapath-type=netdev",
        ]);
        let mut controller = Command::new("ovn-controller");
        controller
            .arg(format!("unix:{}", socket.display()))
            .arg(format!(
                "--log-file={}",
                d.join("ovn-controller.log").display()
            ))
            .arg("--no-chdir");
        rundir(&mut controller);
        chassis.children.push(
            controller
                .spawn()
                .expect("ovn-controller (Debian's ovn-host)"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !chassis.vsctl(&["list-br"]).contains("br-int") {
            assert!(
                Instant::now() < deadline,
                "ovn-controller did not make br-int"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        chassis
    }

    /// This chassis's Open vSwitch database socket (what an agent's `--ovs-socket` names).
    pub fn db_socket(&self) -> PathBuf {
        self.dir.path().join("db.sock")
    }

    /// Runs `ovs-vsctl` against this chassis's database.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let out = Command::new("ovs-vsctl")
            .arg(format!(
                "--db=unix:{}",
                self.dir.path().join("db.sock").display()
            ))
            .args(args)
            .env("OVS_RUNDIR", self.dir.path())
            .output()
            .expect("ovs-vsctl");
        assert!(
            out.status.success(),
            "ovs-vsctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A guest: a network namespace with `mac` and `ip/prefix`, default route via `gateway`,
    /// whose veth peer is plugged into `br-int` as the logical port `port`. Returns the
    /// namespace's name.
    pub fn guest(&mut self, port: &str, mac: &str, ip: &str, prefix: u8, gateway: &str) -> String {
        let n = self.namespaces.len();
        let ns = format!("kg{}{n}", self.tag);
        let (host, inner) = (format!("kh{}{n}", self.tag), format!("ki{}{n}", self.tag));
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run(&["link", "add", &host, "type", "veth", "peer", "name", &inner]);
        run(&["link", "set", &inner, "netns", &ns]);
        configure(&run, &ns, &inner, mac, &format!("{ip}/{prefix}"), gateway);
        run(&["link", "set", &host, "up"]);
        self.vsctl(&[
            "add-port",
            "br-int",
            &host,
            "--",
            "set",
            "Interface",
            &host,
            &format!("external_ids:iface-id={port}"),
        ]);
        ns
    }

    /// A guest like [`Chassis::guest`] that carries TCP and UDP too: its interface is an Open
    /// vSwitch internal port (a tap device, whose checksums the kernel completes before OVS
    /// reads them) moved into the namespace. A veth's checksum offload is never completed by
    /// the userspace datapath, so through a veth only ICMP arrives intact. Returns the
    /// namespace's name.
    pub fn tcp_guest(
        &mut self,
        port: &str,
        mac: &str,
        ip: &str,
        prefix: u8,
        gateway: &str,
    ) -> String {
        let n = self.namespaces.len();
        let ns = format!("kg{}{n}", self.tag);
        let tap = format!("kt{}{n}", self.tag);
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.vsctl(&[
            "add-port",
            "br-int",
            &tap,
            "--",
            "set",
            "Interface",
            &tap,
            "type=internal",
            &format!("external_ids:iface-id={port}"),
        ]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("ip")
            .args(["link", "show", &tap])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "ovs-vswitchd made no {tap}");
            std::thread::sleep(Duration::from_millis(20));
        }
        run(&["link", "set", &tap, "netns", &ns]);
        configure(&run, &ns, &tap, mac, &format!("{ip}/{prefix}"), gateway);
        ns
    }

    /// Whether `ip` answers a ping from namespace `ns`.
    pub fn ping(ns: &str, ip: &str) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "1", ip,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Chassis {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for n in 0..self.namespaces.len() {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("kh{}{n}", self.tag)])
                .stderr(Stdio::null())
                .status();
        }
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Gives `dev` inside namespace `ns` its MAC, `address` (ip/prefix) and a default route via
/// `gateway`, and brings it and `lo` up; `run` runs `ip` with its arguments.
fn configure(run: &dyn Fn(&[&str]), ns: &str, dev: &str, mac: &str, address: &str, gateway: &str) {
    let inside = |args: &[&str]| {
        let mut all = vec!["netns", "exec", ns, "ip"];
        all.extend_from_slice(args);
        run(&all);
    };
    inside(&["link", "set", dev, "address", mac]);
    inside(&["addr", "add", address, "dev", dev]);
    inside(&["link", "set", dev, "up"]);
    inside(&["link", "set", "lo", "up"]);
    inside(&["route", "add", "default", "via", gateway]);
}
