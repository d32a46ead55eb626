//! Plain `kubectl` against a running Keel server: apply, get, get -w, explain, delete, with
//! the admin kubeconfig the server wrote and nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use keel_apiserver::raft::{ServerConfig, Tuning};
use keel_apiserver::{ApiConfig, ApiServer};

const WAIT: Duration = Duration::from_secs(30);

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(dir: &std::path::Path) -> ApiServer {
    let raft = ServerConfig {
        data_dir: dir.to_path_buf(),
        node_id: None,
        raft_listen: SocketAddr::from(([127, 0, 0, 1], port())),
        advertise: None,
        join: None,
        tls: None,
        tuning: Tuning::default(),
    };
    let server = ApiServer::start(ApiConfig::new(raft, SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .unwrap();
    server.raft().wait_for_leader(WAIT).await.unwrap();
    server
}

/// Runs kubectl with the server's kubeconfig, off the async runtime.
async fn kubectl(server: &ApiServer, args: &[&str]) -> Output {
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

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

const TENANT: &str = r#"
apiVersion: keel.dev/v1alpha1
kind: VPC
metadata: {name: main, namespace: shop}
spec: {cidr: 10.20.0.0/16}
---
apiVersion: keel.dev/v1alpha1
kind: Subnet
metadata: {name: front, namespace: shop, labels: {tier: front}}
spec: {vpc: main, cidr: 10.20.1.0/24}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web, namespace: shop}
data: {color: blue}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_watches_explains_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let file = dir.path().join("tenant.yaml");
    std::fs::write(&file, TENANT).unwrap();
    let file = file.to_str().unwrap().to_string();

    // The system namespaces are made in the background; wait for them.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !kubectl(&server, &["get", "ns", "default"])
        .await
        .status
        .success()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no default namespace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // (kubectl's generators, such as `create namespace`, speak protobuf; files are JSON.)
    let ns_file = dir.path().join("ns.yaml");
    std::fs::write(
        &ns_file,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .unwrap();
    let ns_file = ns_file.to_str().unwrap().to_string();
    ok(&kubectl(&server, &["apply", "-f", &ns_file]).await);
    let applied = ok(&kubectl(&server, &["apply", "-f", &file]).await);
    for line in [
        "vpc.keel.dev/main created",
        "subnet.keel.dev/front created",
        "configmap/web created",
    ] {
        assert!(applied.contains(line), "{applied}");
    }
    // Applying again changes nothing.
    let again = ok(&kubectl(&server, &["apply", "-f", &file]).await);
    assert!(again.contains("vpc.keel.dev/main unchanged"), "{again}");

    // get, with JSON output and short names.
    let subnet: serde_json::Value = serde_json::from_str(&ok(&kubectl(
        &server,
        &["get", "subnet", "front", "-n", "shop", "-o", "json"],
    )
    .await))
    .unwrap();
    assert_eq!(subnet["spec"]["gateway"], "10.20.1.1");
    let names = ok(&kubectl(
        &server,
        &["get", "vpc,subnets,cm", "-n", "shop", "-o", "name"],
    )
    .await);
    assert!(
        names.contains("vpc.keel.dev/main") && names.contains("subnet.keel.dev/front"),
        "{names}"
    );
    let selected = ok(&kubectl(
        &server,
        &["get", "subnets", "-A", "-l", "tier=front", "-o", "name"],
    )
    .await);
    assert_eq!(selected.trim(), "subnet.keel.dev/front");

    // get -w sees a change made meanwhile.
    let kubeconfig = server.kubeconfig().to_path_buf();
    let mut watch = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", std::env::temp_dir())
        .args([
            "get",
            "cm",
            "web",
            "-n",
            "shop",
            "-w",
            "-o",
            "jsonpath={.data.color}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
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
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "blue");
    ok(&kubectl(
        &server,
        &[
            "patch",
            "cm",
            "web",
            "-n",
            "shop",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"color":"green"}}"#,
        ],
    )
    .await);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "green");
    let _ = watch.kill();
    let _ = watch.wait();

    // explain reads the schemas' descriptions.
    let explained = ok(&kubectl(&server, &["explain", "virtualmachines.spec.runStrategy"]).await);
    assert!(
        explained.contains("KIND:       VirtualMachine") && explained.contains("Always"),
        "{explained}"
    );

    // Invalid input: a clear error naming the field, nothing stored.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: keel.dev/v1alpha1\nkind: Subnet\nmetadata: {name: back, namespace: shop}\nspec: {vpc: main, cidr: 10.99.0.0/24}\n").unwrap();
    let out = kubectl(&server, &["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.cidr") && err.contains("10.20.0.0/16"),
        "{err}"
    );
    assert!(
        !kubectl(&server, &["get", "subnet", "back", "-n", "shop"])
            .await
            .status
            .success()
    );

    // delete -f removes everything in the file.
    let deleted = ok(&kubectl(&server, &["delete", "-f", &file]).await);
    assert!(
        deleted.contains("vpc.keel.dev \"main\" deleted"),
        "{deleted}"
    );
    let gone = kubectl(&server, &["get", "vpc", "main", "-n", "shop"]).await;
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"));

    // A namespace with content terminates, empties, and goes.
    let left = dir.path().join("left.yaml");
    std::fs::write(
        &left,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: left, namespace: shop}\ndata: {a: b}\n",
    )
    .unwrap();
    ok(&kubectl(&server, &["apply", "-f", left.to_str().unwrap()]).await);
    ok(&kubectl(&server, &["delete", "namespace", "shop", "--wait=false"]).await);
    ok(&kubectl(
        &server,
        &["wait", "--for=delete", "namespace/shop", "--timeout=30s"],
    )
    .await);
    assert!(
        !kubectl(&server, &["get", "cm", "left", "-n", "shop"])
            .await
            .status
            .success()
    );
    server.shutdown().await;
}
