//! HTTP backends for the load balancer tests: `busybox httpd` processes, and a one-shot
//! HTTP/1.0 GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `busybox httpd` on 127.0.0.1:`port` answering `/` with its name and `/healthz` and
/// `/ok-too` with ok; killed when dropped.
pub struct Httpd {
    child: Child,
}

impl Httpd {
    /// Starts one serving files under `root/name`, once it accepts connections.
    pub fn start(root: &Path, name: &str, port: u16) -> Httpd {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("the httpd's directory");
        std::fs::write(dir.join("index.html"), name).expect("index.html");
        for ok in ["healthz", "ok-too"] {
            std::fs::write(dir.join(ok), "ok").expect("a health file");
        }
        let child = Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox httpd");
        let h = Httpd { child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "httpd {name} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// Kills it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.0 `GET /` on a new connection: the body of a 200 answer, or why there is none.
pub fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(format!("not a 200 answer: {answer:?}")),
    }
}
