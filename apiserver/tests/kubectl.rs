//! Plain `kubectl` against a running Keel server: apply, get, get -w, explain, delete, with
//! the admin kubeconfig the server wrote and nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};

use common::{WAIT, kubectl, ok, start};

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
apiVersion: keel.dev/v1alpha1
kind: Bucket
metadata: {name: assets, namespace: shop}
spec: {bucketName: shop-assets}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web, namespace: shop}
data: {color: blue}
"#;

/// The lines a child writes, as they come.
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
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
    rx
}

/// The cells of a table kubectl printed: one `Vec` per line, split on runs of spaces.
fn cells(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_watches_explains_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let file = dir.path().join("tenant.yaml");
    std::fs::write(&file, TENANT).unwrap();
    let file = file.to_str().unwrap().to_string();

    // kubectl's generators send protobuf.
    ok(&kubectl(&server, &["create", "namespace", "shop"]).await);
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

    // More generators: a config map, a secret and a service, each as kubectl encodes them.
    ok(&kubectl(
        &server,
        &[
            "create",
            "configmap",
            "gen",
            "-n",
            "shop",
            "--from-literal=a=1",
            "--from-literal=b=2",
        ],
    )
    .await);
    ok(&kubectl(
        &server,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "-n",
            "shop",
            "--from-literal=password=p@ss",
        ],
    )
    .await);
    ok(&kubectl(
        &server,
        &[
            "create",
            "service",
            "clusterip",
            "web",
            "-n",
            "shop",
            "--tcp=80:8080",
        ],
    )
    .await);
    let get_json = |args: &'static [&'static str]| {
        let server = &server;
        async move {
            serde_json::from_str::<serde_json::Value>(&ok(&kubectl(server, args).await)).unwrap()
        }
    };
    let cm = get_json(&["get", "cm", "gen", "-n", "shop", "-o", "json"]).await;
    assert_eq!(cm["data"], serde_json::json!({"a": "1", "b": "2"}));
    let secret = get_json(&["get", "secret", "creds", "-n", "shop", "-o", "json"]).await;
    assert_eq!(secret["data"]["password"], "cEBzcw==");
    let svc = get_json(&["get", "svc", "web", "-n", "shop", "-o", "json"]).await;
    assert_eq!(
        svc["spec"]["ports"][0],
        serde_json::json!({"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080})
    );
    assert_eq!(svc["spec"]["selector"]["app"], "web");
    let again = kubectl(&server, &["create", "namespace", "shop"]).await;
    assert!(String::from_utf8_lossy(&again.stderr).contains("AlreadyExists"));

    // Tables have each kind's columns (the server's Table form); -o wide adds the wide ones;
    // --sort-by reads the whole objects in the rows.
    let table = cells(&ok(
        &kubectl(&server, &["get", "subnets", "-n", "shop"]).await
    ));
    assert_eq!(table[0], ["NAME", "VPC", "CIDR", "GATEWAY", "AGE"]);
    assert_eq!(
        table[1][..4],
        ["front", "main", "10.20.1.0/24", "10.20.1.1"]
    );
    let table = cells(&ok(&kubectl(&server, &["get", "buckets", "-A"]).await));
    assert_eq!(table[0], ["NAMESPACE", "NAME", "BUCKET", "READY", "AGE"]);
    assert_eq!(table[1][..3], ["shop", "assets", "shop-assets"]);
    let table = cells(&ok(&kubectl(
        &server,
        &["get", "buckets", "-n", "shop", "-o", "wide"],
    )
    .await));
    assert_eq!(table[0], ["NAME", "BUCKET", "READY", "ENDPOINT", "AGE"]);
    let table = cells(&ok(&kubectl(
        &server,
        &["get", "ns", "--sort-by", ".metadata.name"],
    )
    .await));
    let names: Vec<&str> = table[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        [
            "default",
            "kube-node-lease",
            "kube-public",
            "kube-system",
            "shop"
        ]
    );
    assert!(table[1..].iter().all(|r| r[1] == "Active"), "{table:?}");

    // A table watch prints a row per change, under one header.
    let mut table_watch = Command::new("kubectl")
        .env("KUBECONFIG", server.kubeconfig())
        .env("HOME", std::env::temp_dir())
        .args(["get", "subnets", "-n", "shop", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rows = lines_of(table_watch.stdout.take().unwrap());
    assert_eq!(
        cells(&rows.recv_timeout(WAIT).unwrap())[0],
        ["NAME", "VPC", "CIDR", "GATEWAY", "AGE"]
    );
    assert_eq!(cells(&rows.recv_timeout(WAIT).unwrap())[0][0], "front");
    ok(&kubectl(
        &server,
        &["label", "subnet", "front", "-n", "shop", "zone=a"],
    )
    .await);
    assert_eq!(
        cells(&rows.recv_timeout(WAIT).unwrap())[0][..3],
        ["front", "main", "10.20.1.0/24"]
    );
    let _ = table_watch.kill();
    let _ = table_watch.wait();

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
    let rx = lines_of(watch.stdout.take().unwrap());
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
