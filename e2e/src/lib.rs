//! Helpers for Keel's end-to-end tests: start real `keel` processes, find free ports, wait
//! for conditions with deadlines.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `keel` binary next to this test binary (`target/<profile>/keel`); `KEEL_BIN` overrides.
pub fn keel_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KEEL_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/<test> -> target/<profile>/keel
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("keel"))
        .expect("the test binary lives in target/<profile>/deps");
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
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
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

/// One `keel server` process with a fixed data dir and address, killed when dropped.
pub struct KeelServer {
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its Raft address.
    pub addr: String,
    /// Its HTTPS API address.
    pub api_addr: String,
    child: Option<Child>,
    log: PathBuf,
}

impl KeelServer {
    /// A server slot under `root`; not started yet.
    pub fn new(root: &Path, name: &str) -> KeelServer {
        KeelServer {
            data_dir: root.join(name),
            addr: format!("127.0.0.1:{}", free_port()),
            api_addr: format!("127.0.0.1:{}", free_port()),
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
        let child = Command::new(keel_bin())
            .args(["server", "--heartbeat-ms", "50", "--join-timeout", "10"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--raft-listen", &self.addr])
            .args(["--listen", &self.api_addr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keel server");
        self.child = Some(child);
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
        let token = std::fs::read_to_string(self.data_dir.join("join-token"))
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
        let token = std::fs::read_to_string(self.data_dir.join("admin-token")).ok()?;
        let ca = std::fs::read_to_string(self.data_dir.join("tls/ca.crt")).ok()?;
        Some((token.trim().to_string(), ca))
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KeelServer {
    fn drop(&mut self) {
        self.kill();
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
