//! Helpers for Keel's end-to-end tests: start real `keel` processes, find free ports, wait
//! for conditions with deadlines.

pub mod httpd;
pub mod ovn;
pub mod pods;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use keel_schemas::datadir::{self, AgentDir, ServerDir};

/// The `keel` binary next to this test binary (`target/<profile>/keel`); `KEEL_BIN` overrides.
pub fn keel_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KEEL_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test> -> target/<profile>/keel; a benchmark's binary is next to
    // it already.
    let beside = exe.with_file_name("keel");
    let bin = if beside.exists() {
        beside
    } else {
        exe.parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("keel"))
            .expect("the test binary lives in target/<profile>/deps")
    };
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --bins), or set KEEL_BIN",
        bin.display()
    );
    bin
}

/// The `keelctl` binary next to `keel`.
pub fn keelctl_bin() -> PathBuf {
    keel_bin().with_file_name("keelctl")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768 and up on Linux), which outgoing
    // connections take their ports from: a port picked there and bound later can be taken
    // meanwhile by any client socket. Here only another test's pick can collide, and the
    // starting point is random per process and the picks distinct within one.
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    let _ = NEXT.compare_exchange(0, seed % 12_000 + 1, Ordering::Relaxed, Ordering::Relaxed);
    loop {
        let port = 20_000 + (NEXT.fetch_add(1, Ordering::Relaxed) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `dig @127.0.0.1 -p PORT ARGS` (no recursion asked, one try of 2 s), inside network
/// namespace `netns` when given: its whole output.
pub fn dig(netns: Option<&str>, port: u16, args: &[&str]) -> String {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "dig"]);
            c
        }
        None => Command::new("dig"),
    };
    let out = command
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+norec",
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .expect("run dig (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs `keelctl ARGS` with `kubeconfig`.
pub fn keelctl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(keelctl_bin())
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("run keelctl")
}

/// The standard output of a command that must have succeeded (its output otherwise).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "keelctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A registered kind by any of its names.
pub fn kind(name: &str) -> &'static keel_schemas::Kind {
    keel_schemas::lookup(name).expect("registered kind")
}

/// The status (`True`, `False`, `Unknown`) of condition `type_` of object `name`.
pub async fn condition(
    api: &keel_client::Api<serde_json::Value>,
    name: &str,
    type_: &str,
) -> Option<String> {
    let c = condition_of(&api.get(name).await.ok()?, type_)?;
    c["status"].as_str().map(str::to_string)
}

/// Checks that `holds` stays true for all of `window` (polled every 100 ms): for what must
/// *not* happen (a guest restarted, a second QEMU), which needs a time to watch in.
pub async fn stays<F, Fut>(what: &str, window: Duration, mut holds: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + window;
    loop {
        assert!(holds().await, "{what}: broken within {window:?}");
        if Instant::now() >= end {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole condition `type_` of an object (`reason`, `message` ...), if it has one.
pub fn condition_of(object: &serde_json::Value, type_: &str) -> Option<serde_json::Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// One `keel server` process with a fixed data dir and address, killed when dropped.
pub struct KeelServer {
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its Raft address.
    pub addr: String,
    /// Its HTTPS API address.
    pub api_addr: String,
    /// Its node name (its local agent's, when it runs one).
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl KeelServer {
    /// Its data dir's files.
    pub fn dir(&self) -> ServerDir {
        ServerDir::new(&self.data_dir)
    }

    /// A server slot under `root`; not started yet.
    pub fn new(root: &Path, name: &str) -> KeelServer {
        KeelServer {
            data_dir: root.join(name),
            addr: format!("127.0.0.1:{}", free_port()),
            api_addr: format!("127.0.0.1:{}", free_port()),
            name: name.to_string(),
            child: None,
            log: root.join(format!("{name}.log")),
        }
    }

    /// Starts the process with `extra` flags (`--join URL --token T`, say).
    pub fn start<S: AsRef<std::ffi::OsStr>>(&mut self, extra: &[S]) {
        assert!(self.child.is_none(), "{} is already running", self.addr);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let mut command = Command::new(keel_bin());
        command
            .args(["server", "--heartbeat-ms", "50", "--join-timeout", "10"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--raft-listen", &self.addr])
            .args(["--listen", &self.api_addr])
            .args(["--node-name", &self.name]);
        // The local agent's DNS server on a free port unless the test says (several servers
        // share the host; the port is in the Node's keel.dev/dns-endpoint).
        if !extra.iter().any(|a| a.as_ref() == "--dns-listen") {
            command.args(["--dns-listen", "127.0.0.1:0"]);
        }
        // Its S3 endpoint likewise (keel.dev/s3-endpoint).
        if !extra.iter().any(|a| a.as_ref() == "--s3-listen") {
            command.args(["--s3-listen", "127.0.0.1:0"]);
        }
        // Pods only in the tests that run them (they give the pause image they built).
        if !extra.iter().any(|a| a.as_ref() == "--pause-image") {
            command.arg("--disable-pods");
        }
        let child = command
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keel server");
        self.child = Some(child);
    }

    /// Its API URL (when it listens on one address).
    pub fn url(&self) -> String {
        format!("https://{}", self.api_addr)
    }

    /// Kills the process with SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The flags that make another server join this one's cluster (its API URL and join
    /// token, read from its data dir).
    pub fn join_args(&self) -> Vec<String> {
        let token = std::fs::read_to_string(self.dir().join_token())
            .expect("the server wrote its join token");
        vec![
            "--join".into(),
            format!("https://{}", self.api_addr),
            "--token".into(),
            token.trim().to_string(),
        ]
    }

    /// The admin token and CA of this server's cluster, from its data dir.
    pub fn admin(&self) -> (String, String) {
        self.try_admin()
            .expect("the server wrote its admin token and CA")
    }

    /// The admin token and CA, once the server has written them.
    pub fn try_admin(&self) -> Option<(String, String)> {
        let token = std::fs::read_to_string(self.dir().admin_token()).ok()?;
        let ca = std::fs::read_to_string(self.dir().ca_cert()).ok()?;
        Some((token.trim().to_string(), ca))
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An admin client, once the server has written its credentials and serves namespace
    /// `default` (a started cluster); fails with the server's log after `timeout`.
    pub async fn ready_client(&self, timeout: Duration) -> keel_client::Client {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some((admin, ca)) = self.try_admin() {
                let client = keel_client::Client::new(&self.url(), &ca, &admin)
                    .expect("the server's CA and token make a client");
                if client.get("/api/v1/namespaces/default").await.is_ok() {
                    return client;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server serves no namespace default after {timeout:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for KeelServer {
    fn drop(&mut self) {
        self.kill();
        pods::remove_containers(self.dir().agent().root());
    }
}

/// Runs `keel` with these arguments to completion.
pub fn keel(args: &[&str]) -> Output {
    Command::new(keel_bin())
        .args(args)
        .output()
        .expect("run keel")
}

/// Runs `keel` with these arguments and returns its first `n` lines of output, then kills it
/// (for commands that stream forever, such as a watch). Fails after `timeout`.
pub fn keel_lines(args: &[&str], n: usize, timeout: Duration) -> Vec<String> {
    use std::io::BufRead;
    let mut child = Command::new(keel_bin())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run keel");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), n, "keel {args:?} printed only {lines:?}");
    lines
}

/// A network namespace bridged to the host: `ip netns` plus a veth pair whose host end is
/// on a bridge that carries `<prefix>.1/24`; the namespace end gets `<prefix>.<host>/24`.
/// Removed when dropped.
pub struct Netns {
    /// The namespace's name.
    pub name: String,
    /// The host end of its link (set it down to cut the namespace off).
    pub host_link: String,
    /// The namespace's address.
    pub address: String,
}

/// A bridge in the host namespace that [`Netns`] attach to. Removed when dropped.
pub struct Bridge {
    /// The bridge's name.
    pub name: String,
    /// The first three octets of its /24.
    pub prefix: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Bridge {
    /// A bridge named after `tag` (a few characters unique to the test) on a
    /// `10.251.<n>.0/24` of its own ([`claim_subnet`]).
    pub fn new(tag: &str) -> Bridge {
        let n = claim_subnet();
        let prefix = format!("10.251.{n}");
        let name = format!("kb{tag}{n}");
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        ip(&["link", "add", &name, "type", "bridge"]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &name]);
        ip(&["link", "set", &name, "up"]);
        Bridge { name, prefix }
    }

    /// The host's address on the bridge.
    pub fn address(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A namespace attached to the bridge as host number `host` (2..254).
    pub fn netns(&self, host: u8) -> Netns {
        let name = format!("{}-{host}", self.name);
        let host_link = format!("{}h{host}", self.name);
        let inner = format!("{}n{host}", self.name);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &host_link])
            .output();
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &name]);
        ip(&["link", "set", &host_link, "master", &self.name]);
        ip(&["link", "set", &host_link, "up"]);
        let address = format!("{}.{host}", self.prefix);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            &inner,
        ]);
        ip(&["-n", &name, "link", "set", &inner, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns {
            name,
            host_link,
            address,
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
        if let Some(n) = self.prefix.rsplit('.').next() {
            let _ = std::fs::remove_file(subnet_claims().join(n));
        }
    }
}

/// Where the tests' claims on bridge subnets are kept.
fn subnet_claims() -> PathBuf {
    std::env::temp_dir().join("keel-e2e-subnets")
}

/// A `10.251.<n>.0/24` no other test's bridge has: claimed by creating the file `<n>` (which
/// only one process can), holding this process's pid. A claim whose process is gone, or
/// taken by a bridge a killed test left behind, is passed over or taken back; the search
/// starts at a place that depends on the pid, so concurrent tests rarely meet.
fn claim_subnet() -> u32 {
    let dir = subnet_claims();
    let _ = std::fs::create_dir_all(&dir);
    let in_use = Command::new("ip")
        .args(["-br", "-4", "addr"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let start = std::process::id() % 200;
    for i in 0..200 {
        let n = (start + i) % 200 + 20;
        if in_use.contains(&format!(" 10.251.{n}.")) {
            continue;
        }
        let path = dir.join(n.to_string());
        if let Ok(pid) = std::fs::read_to_string(&path) {
            let alive = Path::new(&format!("/proc/{}", pid.trim())).exists();
            if alive {
                continue;
            }
            let _ = std::fs::remove_file(&path);
        }
        let claimed = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path);
        if let Ok(mut f) = claimed {
            use std::io::Write as _;
            let _ = write!(f, "{}", std::process::id());
            return n;
        }
    }
    panic!("no free 10.251.x.0/24 for a test bridge: remove the kb* bridges left behind");
}

impl Netns {
    /// Cuts (`false`) or restores (`true`) the namespace's link to the host.
    pub fn set_link(&self, up: bool) {
        ip(&[
            "link",
            "set",
            &self.host_link,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}

/// A server without a local agent whose API listens on all addresses and is advertised on a
/// bridge's, for agents in network namespaces on that bridge (hosts with their own
/// addresses): what the tests of separate hosts start from.
pub struct BridgedServer {
    /// The bridge (make the hosts' namespaces with [`Bridge::netns`]).
    pub bridge: Bridge,
    /// The server.
    pub server: KeelServer,
    /// Its API port.
    pub port: u16,
    /// Its API URL on the bridge.
    pub url: String,
    /// The cluster CA (PEM).
    pub ca: String,
    /// An admin client.
    pub client: keel_client::Client,
    /// The agent join token.
    pub agent_token: String,
}

impl BridgedServer {
    /// Starts it under `root` on a bridge tagged `tag`, with `extra` flags, and waits for its
    /// credentials.
    pub async fn start(root: &Path, tag: &str, extra: &[&str]) -> BridgedServer {
        const WAIT: Duration = Duration::from_secs(60);
        let bridge = Bridge::new(tag);
        let mut server = KeelServer::new(root, "server");
        let port = free_port();
        server.api_addr = format!("0.0.0.0:{port}");
        let address = bridge.address();
        let mut args = vec!["--advertise", address.as_str(), "--disable-agent"];
        args.extend_from_slice(extra);
        server.start(&args);
        let url = format!("https://{address}:{port}");
        let (admin, ca) = eventually("the server's credentials", WAIT, || async {
            server.try_admin()
        })
        .await;
        let client = keel_client::Client::new(&url, &ca, &admin).expect("an admin client");
        let agent_token = eventually("the agent token", WAIT, || async {
            std::fs::read_to_string(server.dir().agent_token()).ok()
        })
        .await
        .trim()
        .to_string();
        BridgedServer {
            bridge,
            server,
            port,
            url,
            ca,
            client,
            agent_token,
        }
    }
}

/// One `keel agent` process, in a network namespace or not, killed when dropped (its
/// workloads are not: they outlive the agent by design, and fence themselves).
pub struct KeelAgent {
    /// Its node name.
    pub name: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    netns: Option<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl KeelAgent {
    /// Its data dir's files.
    pub fn dir(&self) -> AgentDir {
        AgentDir::new(&self.data_dir)
    }

    /// An agent slot named `name` under `root`, run inside `netns` if given; not started.
    pub fn new(root: &Path, name: &str, netns: Option<&Netns>) -> KeelAgent {
        KeelAgent {
            name: name.to_string(),
            data_dir: root.join(name),
            netns: netns.map(|n| n.name.clone()),
            child: None,
            log: root.join(format!("{name}.log")),
        }
    }

    /// Starts `keel agent --server URL --token T` with `extra` flags.
    pub fn start(&mut self, server_url: &str, token: &str, extra: &[&str]) {
        assert!(
            self.child.is_none(),
            "agent {} is already running",
            self.name
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the agent log");
        let pods = extra.contains(&"--pause-image");
        let mut cmd = match &self.netns {
            // A host with pods enters the namespace's network only: `ip netns exec` would
            // also mount a sysfs of its own over /sys, hiding the cgroup mounts runc needs.
            Some(ns) if pods => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(keel_bin());
                c
            }
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(keel_bin());
                c
            }
            None => Command::new(keel_bin()),
        };
        let child = cmd
            .args(["agent", "--server", server_url, "--token", token])
            .args(["--node-name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", "0.0.0.0:0"])
            // A DNS server on loopback unless the test gives it an address.
            .args(
                (!extra.contains(&"--dns-listen"))
                    .then_some(["--dns-listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            // Pods only in the tests that run them (they give the pause image they built).
            .args((!pods).then_some("--disable-pods"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keel agent");
        self.child = Some(child);
    }

    /// The agent process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent with SIGKILL (its workloads keep running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The pid of the live supervisor of workload `namespace/name`, if any.
    pub fn workload_pid(&self, namespace: &str, name: &str) -> Option<i32> {
        let dir = self.dir().workload(namespace, name);
        let pid: i32 = std::fs::read_to_string(dir.pid())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if pid <= 1 {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (state != 'Z' && cmdline.split(|b| *b == 0).any(|a| a == b"shim")).then_some(pid)
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pids of the QEMU processes running the VM `namespace/name` of this agent (found by
    /// the VM's QMP socket on their command lines): one while it runs, never two.
    pub fn qemu_pids(&self, namespace: &str, name: &str) -> Vec<i32> {
        let socket = self.dir().vm(namespace, name).qmp();
        qemu_pids_with(&socket.display().to_string())
    }
}

/// The pids of the `qemu-system-x86_64` processes whose command line contains `needle`.
pub fn qemu_pids_with(needle: &str) -> Vec<i32> {
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
        let text = String::from_utf8_lossy(&cmdline);
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if text.starts_with("qemu-system-x86_64") && text.contains(needle) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// As an admin (`client`), lets namespace `ns` put LoadBalancer VIPs and backends on the
/// host's loopback, where the tests' servers listen (no tenant may without such a grant).
pub async fn grant_loopback(client: &keel_client::Client, ns: &str) {
    let namespaces: keel_client::Api<serde_json::Value> =
        keel_client::Api::all(client, kind("namespaces"));
    let grant = serde_json::json!({"metadata": {"annotations": {
        keel_schemas::wellknown::LB_VIP_RANGES_ANNOTATION: "127.0.0.0/8",
        keel_schemas::wellknown::LB_BACKEND_RANGES_ANNOTATION: "127.0.0.0/8"}}});
    eventually(
        &format!("loopback granted to {ns}"),
        Duration::from_secs(60),
        || async {
            namespaces
                .patch(ns, &keel_client::Patch::Merge(grant.clone()))
                .await
                .ok()
        },
    )
    .await;
}

/// The test guest: Debian's kernel and a busybox initramfs (see `e2e/guest/build.sh`), built
/// once per machine into `~/.cache/keel/guest` (or `$KEEL_GUEST_DIR`). VMs name them by the
/// ClusterImages [`Guest::publish`] makes, as tenants do: a VM never names a host path.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The kernel's ClusterImage.
    pub kernel: String,
    /// The initramfs' ClusterImage.
    pub initrd: String,
    /// The kernel's file.
    pub kernel_file: PathBuf,
    /// The initramfs' file.
    pub initrd_file: PathBuf,
}

impl Guest {
    /// Puts the guest's kernel and initramfs in the cluster's image catalogue (an admin's
    /// `client`); a second call finds them there.
    pub async fn publish(&self, client: &keel_client::Client) {
        let images: keel_client::Api<serde_json::Value> =
            keel_client::Api::all(client, kind("clusterimages"));
        for (name, file) in [
            (&self.kernel, &self.kernel_file),
            (&self.initrd, &self.initrd_file),
        ] {
            let image = serde_json::json!({"apiVersion": "keel.dev/v1alpha1", "kind": "ClusterImage",
                "metadata": {"name": name},
                "spec": {"path": file, "format": "raw", "description": "the e2e test guest"}});
            // The server may still be electing or making its namespaces: try until it answers.
            eventually(
                &format!("ClusterImage {name}"),
                Duration::from_secs(60),
                || async {
                    match images.create(&image).await {
                        Ok(_) => Some(()),
                        Err(e) if e.code() == Some(409) => Some(()),
                        Err(_) => None,
                    }
                },
            )
            .await;
        }
    }
}

/// Builds the test guest if needed (once per process; `build.sh` locks across processes).
pub fn guest() -> Guest {
    static GUEST: std::sync::OnceLock<Guest> = std::sync::OnceLock::new();
    GUEST
        .get_or_init(|| {
            let dir = std::env::var_os("KEEL_GUEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                    PathBuf::from(home).join(".cache/keel/guest")
                });
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/build.sh");
            let out = Command::new("bash")
                .arg(&script)
                .arg(&dir)
                .output()
                .expect("run e2e/guest/build.sh");
            assert!(
                out.status.success(),
                "building the test guest failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Guest {
                kernel: "test-guest-kernel".into(),
                initrd: "test-guest-initrd".into(),
                kernel_file: dir.join("vmlinuz"),
                initrd_file: dir.join("initrd.img"),
            }
        })
        .clone()
}

impl Drop for KeelAgent {
    fn drop(&mut self) {
        self.kill();
        pods::remove_containers(&self.data_dir);
        // Tests must not leave workloads behind: stop the supervisors this agent started.
        if let Ok(entries) = std::fs::read_dir(self.dir().workloads()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if let Some((ns, vm)) = datadir::parse_object_dir(&name)
                    && let Some(pid) = self.workload_pid(ns, vm)
                {
                    let group = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}
