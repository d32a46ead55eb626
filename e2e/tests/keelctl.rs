//! `keelctl` against a `keel server` process, with the admin kubeconfig the server wrote:
//! apply, get (tables, yaml, watch), describe, diff, edit, wait, delete, explain, cluster
//! status, completion — and one clear line for each kind of mistake.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use keel_e2e::{KeelServer, eventually, keelctl, keelctl_bin, ok};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn fails(out: Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected a failure mentioning {needle:?}"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    err
}

const TENANT: &str = "apiVersion: keel.dev/v1alpha1
kind: VPC
metadata: {name: main}
spec: {cidr: 10.30.0.0/16}
---
apiVersion: keel.dev/v1alpha1
kind: Subnet
metadata: {name: front, labels: {tier: front}}
spec: {vpc: main, cidr: 10.30.1.0/24}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {color: blue, size: large}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_does_what_kubectl_users_expect() {
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), "k");
    server.start::<&str>(&[]);
    let kc = server.dir().admin_kubeconfig();
    eventually("the API", WAIT, || async {
        (kc.exists()
            && keelctl(&kc, &["get", "ns", "kube-node-lease"])
                .status
                .success())
        .then_some(())
    })
    .await;
    let file = root.path().join("tenant.yaml");
    std::fs::write(&file, TENANT).unwrap();
    let f = file.to_str().unwrap();

    // apply: created, then unchanged; a removed field is removed on the next apply.
    let out = ok(keelctl(&kc, &["apply", "-f", f]));
    assert_eq!(
        out,
        "vpc.keel.dev/main created\nsubnet.keel.dev/front created\nconfigmap/settings created\n"
    );
    let out = ok(keelctl(&kc, &["apply", "-f", f]));
    assert!(out.lines().all(|l| l.ends_with("unchanged")), "{out}");
    std::fs::write(&file, TENANT.replace(", size: large", "")).unwrap();
    // diff shows it first, and exits 1.
    let diff = keelctl(&kc, &["diff", "-f", f]);
    assert_eq!(diff.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&diff.stdout).contains("-  size: large"),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    assert!(ok(keelctl(&kc, &["apply", "-f", f])).contains("configmap/settings configured"));
    let cm: serde_json::Value =
        serde_json::from_str(&ok(keelctl(&kc, &["get", "cm", "settings", "-o", "json"]))).unwrap();
    assert_eq!(cm["data"], json!({"color": "blue"}));
    assert_eq!(keelctl(&kc, &["diff", "-f", f]).status.code(), Some(0));

    // get: tables with the kind's columns, yaml, names, selectors, all namespaces.
    let table = ok(keelctl(&kc, &["get", "subnets"]));
    assert!(
        table.starts_with("NAME") && table.contains("GATEWAY") && table.contains("10.30.1.1"),
        "{table}"
    );
    let yaml = ok(keelctl(&kc, &["get", "vpc", "main", "-o", "yaml"]));
    assert!(yaml.contains("cidr: 10.30.0.0/16"), "{yaml}");
    assert_eq!(
        ok(keelctl(
            &kc,
            &["get", "subnets", "-A", "-l", "tier=front", "-o", "name"]
        )),
        "subnet.keel.dev/front\n"
    );
    assert!(ok(keelctl(&kc, &["get", "subnets", "-A"])).contains("NAMESPACE"));

    // describe shows spec, status and conditions.
    let (token, ca) = server.admin();
    let api =
        keel_client::Client::new(&format!("https://{}", server.api_addr), &ca, &token).unwrap();
    let path = "/apis/keel.dev/v1alpha1/namespaces/default/subnets/front";
    let mut subnet = api.get(path).await.unwrap();
    subnet["status"] = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned", "message": "switch up", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    api.put(&format!("{path}/status"), &subnet).await.unwrap();
    let described = ok(keelctl(&kc, &["describe", "subnet", "front"]));
    assert!(
        described.contains("Spec:")
            && described.contains("gateway: 10.30.1.1")
            && described.contains("Provisioned"),
        "{described}"
    );

    // wait for a condition; wait for deletion.
    assert!(
        ok(keelctl(
            &kc,
            &[
                "wait",
                "--for=condition=Ready",
                "subnet/front",
                "--timeout=10s"
            ]
        ))
        .contains("condition met")
    );
    fails(
        keelctl(
            &kc,
            &["wait", "--for=condition=Ready", "vpc/main", "--timeout=1s"],
        ),
        "timed out",
    );

    // get -w prints a change made meanwhile.
    let mut watch = Command::new(keelctl_bin())
        .env("KUBECONFIG", &kc)
        .args(["get", "cm", "settings", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "configmap/settings");
    api.patch(
        "/api/v1/namespaces/default/configmaps/settings",
        "application/merge-patch+json",
        &json!({"data": {"n": "1"}}),
    )
    .await
    .unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "configmap/settings");
    let _ = watch.kill();
    let _ = watch.wait();

    // edit through an "editor" that rewrites the file.
    let editor = root.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/color: blue/color: red/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let edited = Command::new(keelctl_bin())
        .env("KUBECONFIG", &kc)
        .env("EDITOR", &editor)
        .args(["edit", "cm", "settings"])
        .output()
        .unwrap();
    assert_eq!(ok(edited), "configmap/settings edited\n");
    assert!(ok(keelctl(&kc, &["get", "cm", "settings", "-o", "json"])).contains("\"red\""));

    // explain, cluster status, completion, api-resources.
    assert!(
        ok(keelctl(&kc, &["explain", "lb.spec.healthCheck"])).contains("FIELD:    healthCheck")
    );
    let status = ok(keelctl(&kc, &["cluster", "status"]));
    assert!(
        status.contains("Leader") && status.contains(&server.addr),
        "{status}"
    );
    assert!(ok(keelctl(&kc, &["completion", "bash"])).contains("keelctl"));
    assert!(ok(keelctl(&kc, &["api-resources"])).contains("virtualmachines"));

    // Mistakes: one clear line, non-zero exit, nothing changed.
    let bad = root.path().join("bad.yaml");
    std::fs::write(&bad, "kind: VPC\n---\n: [unclosed\n").unwrap();
    fails(
        keelctl(&kc, &["apply", "-f", bad.to_str().unwrap()]),
        "bad.yaml (document 2)",
    );
    std::fs::write(&bad, "apiVersion: keel.dev/v1alpha1\nkind: VPC\nmetadata: {name: bad}\nspec: {cidr: not-a-cidr}\n").unwrap();
    let out = keelctl(&kc, &["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.cidr"));
    fails(keelctl(&kc, &["get", "frobnicators"]), "frobnicators");
    fails(keelctl(&kc, &["get", "vpc", "nope"]), "not found");
    fails(
        Command::new(keelctl_bin())
            .env("KUBECONFIG", root.path().join("missing"))
            .args(["get", "vpc"])
            .output()
            .unwrap(),
        "missing",
    );
    fails(
        keelctl(&kc, &["--server", "https://127.0.0.1:1", "get", "vpc"]),
        "127.0.0.1:1",
    );

    // The first tenant of examples/ applies as a new user would apply it.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let out = ok(keelctl(&kc, &["apply", "-f", examples.to_str().unwrap()]));
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" created")).count(),
        out.lines().count(),
        "{out}"
    );
    assert!(
        out.contains("virtualmachine.keel.dev/web-1 created")
            && out.contains("loadbalancer.keel.dev/web created"),
        "{out}"
    );
    let again = ok(keelctl(&kc, &["apply", "-f", examples.to_str().unwrap()]));
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");
    let vms = ok(keelctl(&kc, &["get", "vm", "-n", "shop"]));
    assert!(
        vms.contains("web-1") && vms.contains("web-2") && vms.contains("MEMORY"),
        "{vms}"
    );
    ok(keelctl(
        &kc,
        &["delete", "ns", "shop", "--wait", "--timeout", "30"],
    ));

    // delete -f, and wait for it.
    let out = ok(keelctl(&kc, &["delete", "-f", f, "--wait"]));
    assert!(out.contains("vpc.keel.dev \"main\" deleted"), "{out}");
    fails(keelctl(&kc, &["get", "subnet", "front"]), "not found");
}
