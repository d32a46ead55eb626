//! What the controllers' component tests share: an in-process Keel server (OVN comes from
//! `keel_e2e::ovn`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use keel_apiserver::raft::{ServerConfig, Tuning};
use keel_apiserver::{ApiConfig, ApiServer};
use keel_client::Client;

/// How long a test waits for anything.
pub const WAIT: Duration = Duration::from_secs(30);

pub async fn start(dir: &std::path::Path) -> ApiServer {
    let port = keel_e2e::free_port();
    let raft = ServerConfig {
        data_dir: dir.to_path_buf(),
        node_id: None,
        raft_listen: SocketAddr::from(([127, 0, 0, 1], port)),
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
    let c = client(&server);
    until("system namespaces", || async {
        c.get("/api/v1/namespaces/kube-node-lease").await.is_ok()
    })
    .await;
    server
}

pub fn client(server: &ApiServer) -> Client {
    Client::new(server.url(), server.ca_pem(), server.admin_token()).unwrap()
}

pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
