//! What the API tests share: an in-process Keel server on loopback, and kubectl run against
//! it with the admin kubeconfig the server wrote.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use keel_apiserver::raft::{ServerConfig, Tuning};
use keel_apiserver::{ApiConfig, ApiServer};
use keel_client::Client;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(30);

/// A free loopback port.
pub fn port() -> u16 {
    keel_e2e::free_port()
}

/// A one-server cluster with its API on a free loopback port, with short Raft timings and
/// bookmarks every 300 ms; returns once it has a leader and its system namespaces.
pub async fn start(dir: &std::path::Path) -> ApiServer {
    let raft = ServerConfig {
        data_dir: dir.to_path_buf(),
        node_id: None,
        raft_listen: SocketAddr::from(([127, 0, 0, 1], port())),
        advertise: None,
        join: None,
        tls: None,
        tuning: Tuning {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(200), Duration::from_millis(400)),
            ..Tuning::default()
        },
    };
    let mut config = ApiConfig::new(raft, SocketAddr::from(([127, 0, 0, 1], 0)));
    config.bookmark_interval = Duration::from_millis(300);
    let server = ApiServer::start(config).await.unwrap();
    server.raft().wait_for_leader(WAIT).await.unwrap();
    // The system namespaces and the default RBAC policy are made in the background:
    // /readyz says when they are in place.
    let c = client(&server);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = c.raw(hyper::Method::GET, "/readyz", None, None).await;
        if ready.is_ok_and(|(status, _)| status.is_success()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server is not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// A client of the server with the admin token, trusting only the cluster CA.
pub fn client(server: &ApiServer) -> Client {
    Client::new(server.url(), server.ca_pem(), server.admin_token()).unwrap()
}

/// Runs kubectl with the server's kubeconfig, off the async runtime.
pub async fn kubectl(server: &ApiServer, args: &[&str]) -> Output {
    let kubeconfig = server.kubeconfig().to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", std::env::temp_dir())
            .args(&args)
            .output()
            .expect("kubectl runs (it is installed on the test machine)")
    })
    .await
    .unwrap()
}

/// kubectl's output, after checking that it succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
