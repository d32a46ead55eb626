//! Tenant confinement, tried as a hostile tenant would: a namespace editor (kubectl with a
//! token an admin made) tries to make host files and private addresses the images of their
//! VMs, and to write the image catalogue. Admission refuses what it can see in the spec,
//! naming the field and the rule; the host refuses what only a download shows (a redirect to
//! the metadata address, a qcow2 whose backing file is a host file), and nothing of those
//! images is left on the host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use keel_client::Api;
use keel_e2e::{KeelServer, condition_of, eventually, guest, keelctl, kind, ok};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(120);

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new("kubectl");
    command
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", std::env::temp_dir())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("kubectl runs");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Makes the namespace `shop` and a kubeconfig (in `dir`) for `user`, who may edit it.
fn editor_of_shop(admin: &Path, dir: &Path, user: &str) -> std::path::PathBuf {
    let editor = dir.join("editor.kubeconfig");
    let out = kubectl(admin, &["create", "namespace", "shop"], None);
    assert!(out.status.success(), "{out:?}");
    let file = editor.to_str().unwrap();
    ok(keelctl(
        admin,
        &[
            "config",
            "create-kubeconfig",
            "--user",
            user,
            "-n",
            "shop",
            "-o",
            file,
        ],
    ));
    let binding = format!("--user={user}");
    let args = [
        "create",
        "rolebinding",
        "ed",
        "--clusterrole=edit",
        &binding,
        "-n",
        "shop",
    ];
    let out = kubectl(admin, &args, None);
    assert!(out.status.success(), "{out:?}");
    editor
}

fn vm(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: keel.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  cpu: 1\n  memory: 64Mi\n  runStrategy: Always\n{spec}"
    )
}

/// An HTTP server on `ip` serving `/backed.qcow2` (`body`) and redirecting `/meta` to the
/// cloud metadata address.
async fn image_server(ip: &str, body: Vec<u8>) -> u16 {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            if request.starts_with("GET /backed.qcow2 ") {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            } else {
                let _ = s
                    .write_all(b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_make_host_files_or_private_addresses_its_vms_images() {
    let root = tempfile::tempdir().unwrap();
    let g = guest();
    let kernel = g.kernel_file.display().to_string();
    // The admin grants one loopback address as an image mirror; the tenant's web server sits
    // there (a tenant's URL may only reach public addresses and what an admin grants).
    let mut server = KeelServer::new(root.path(), "conf");
    server.start(&[
        "--kvm-probe-kernel",
        &kernel,
        "--image-allowed-network",
        "127.0.0.2/32",
    ]);
    let client = server.ready_client(WAIT).await;
    g.publish(&client).await;
    let admin = server.dir().admin_kubeconfig();
    let editor = editor_of_shop(&admin, root.path(), "mallory");

    // Host paths are refused at admission, each at its field, with the rule.
    let secret_disk = server.dir().agent().vm("default", "x").disk("root");
    for (name, spec, field) in [
        (
            "sda",
            "  disks: [{name: root, image: /dev/sda}]\n".to_string(),
            "spec.disks[0].image",
        ),
        (
            "steal",
            format!(
                "  disks: [{{name: root, image: \"{}\"}}]\n",
                secret_disk.display()
            ),
            "spec.disks[0].image",
        ),
        (
            "kern",
            "  kernel: /boot/vmlinuz\n".to_string(),
            "spec.kernel",
        ),
        (
            "rel",
            "  kernel: test-guest-kernel\n  initrd: ../../s3/bucket/object\n".to_string(),
            "spec.initrd",
        ),
    ] {
        let out = kubectl(&editor, &["apply", "-f", "-"], Some(&vm(name, &spec)));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was admitted");
        assert!(err.contains(field), "{name}: {err}");
        assert!(
            err.contains("host path is not allowed") && err.contains("ClusterImage"),
            "{name}: {err}"
        );
    }
    // The catalogue is the admins': a tenant reads it and cannot write it.
    let listed = kubectl(&editor, &["get", "clusterimages", "-o", "name"], None);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains("clusterimage.keel.dev/test-guest-kernel"),
        "{listed}"
    );
    let image = "apiVersion: keel.dev/v1alpha1\nkind: ClusterImage\nmetadata: {name: disk}\nspec: {path: /dev/sda}\n";
    let out = kubectl(&editor, &["apply", "-f", "-"], Some(image));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("clusterimages.keel.dev") && err.contains("forbidden"),
        "{err}"
    );

    // What only a download shows is refused on the host: the metadata address (directly, by
    // a redirect from the granted mirror), the API server on loopback, and a qcow2 whose
    // backing file is a host file (the CVE-2024-32498 class).
    let host_file = root.path().join("host-secret");
    std::fs::write(&host_file, vec![0x5a; 1 << 20]).unwrap();
    let crafted = root.path().join("backed.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&host_file)
        .arg(&crafted)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let port = image_server("127.0.0.2", std::fs::read(&crafted).unwrap()).await;
    let api_port = server.api_addr.rsplit(':').next().unwrap().to_string();
    let downloads = [
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "ImageSourceForbidden",
            "169.254.169.254, a link-local address",
        ),
        (
            "redirect",
            format!("http://127.0.0.2:{port}/meta"),
            "ImageSourceForbidden",
            "169.254.169.254, a link-local address",
        ),
        (
            "api",
            format!("https://127.0.0.1:{api_port}/api"),
            "ImageSourceForbidden",
            "127.0.0.1, a loopback address",
        ),
        (
            "backed",
            format!("http://127.0.0.2:{port}/backed.qcow2"),
            "ImageRefused",
            "it has a backing file",
        ),
    ];
    for (name, url, _, _) in &downloads {
        let spec = format!("  disks: [{{name: root, image: \"{url}\"}}]\n");
        let out = kubectl(&editor, &["apply", "-f", "-"], Some(&vm(name, &spec)));
        assert!(out.status.success(), "{name}: {out:?}");
    }
    let vms: Api<Value> = Api::namespaced(&client, kind("vm"), "shop");
    for (name, _, reason, message) in &downloads {
        let vm = eventually(&format!("{name} refused with {reason}"), WAIT, || async {
            let vm = vms.get(name).await.ok()?;
            let ready = condition_of(&vm, "Ready")?;
            (ready["reason"] == *reason).then_some(vm)
        })
        .await;
        let ready = condition_of(&vm, "Ready").unwrap();
        let said = ready["message"].as_str().unwrap_or_default();
        assert!(said.contains(message), "{name}: {said}");
        // No disk of it, and nothing of its image in the host's cache.
        let dir = server.dir().agent().vm("shop", name);
        assert!(!dir.disk("root").exists(), "{name}: a disk was made");
    }
    let cache = server.dir().agent().images();
    // (A retry's download in flight may hold a `.part` file for a moment; a refused image
    // never takes its name in the cache.)
    let cached: Vec<String> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|f| !f.ends_with(".part"))
        .collect();
    assert!(
        cached.is_empty(),
        "nothing of the refused images is kept: {cached:?}"
    );
}

/// ResourceQuota: an admin caps a namespace at two VMs and three CPUs; the tenant's third
/// VM is refused with the quota named, so is a change that takes the CPUs over, and once a
/// VM is deleted the third one is let in. The quota's status follows what the namespace
/// holds. The tenant cannot raise its own quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_quota_caps_vms_and_cpus_and_frees_with_a_delete() {
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), "quota");
    server.start(&["--disable-agent"]);
    let client = server.ready_client(WAIT).await;
    let admin = server.dir().admin_kubeconfig();
    let editor = editor_of_shop(&admin, root.path(), "ed");
    let quota = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: compute, namespace: shop}\nspec:\n  hard: {count/virtualmachines.keel.dev: \"2\", requests.cpu: \"3\", requests.memory: 1Gi}\n";
    // kubectl create quota sends it as protobuf.
    let hard = "--hard=count/virtualmachines.keel.dev=2,requests.cpu=3,requests.memory=1Gi";
    let out = kubectl(
        &admin,
        &["create", "quota", "compute", "-n", "shop", hard],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let raise = quota.replace("\"2\"", "\"20\"");
    let out = kubectl(&editor, &["apply", "-f", "-"], Some(&raise));
    assert!(!out.status.success(), "a tenant raised its own quota");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{out:?}"
    );

    let spec =
        |cpu: u32| format!("  kernel: test-guest-kernel\n  runStrategy: Halted\n  cpu: {cpu}\n");
    let vm = |name: &str, cpu: u32| {
        format!(
            "apiVersion: keel.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  memory: 64Mi\n{}",
            spec(cpu)
        )
    };
    for name in ["vm-1", "vm-2"] {
        let out = kubectl(&editor, &["apply", "-f", "-"], Some(&vm(name, 1)));
        assert!(out.status.success(), "{name}: {out:?}");
    }
    let out = kubectl(&editor, &["apply", "-f", "-"], Some(&vm("vm-3", 1)));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the third VM was admitted");
    assert!(
        err.contains("virtualmachines.keel.dev \"vm-3\" is forbidden: exceeded quota: compute, requested: count/virtualmachines.keel.dev=1, used: count/virtualmachines.keel.dev=2, limited: count/virtualmachines.keel.dev=2"),
        "{err}"
    );
    // A change that takes the namespace's CPUs over is refused too.
    let out = kubectl(&editor, &["apply", "-f", "-"], Some(&vm("vm-2", 3)));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "vm-2 grew past the CPUs");
    assert!(
        err.contains("requested: requests.cpu=2, used: requests.cpu=2, limited: requests.cpu=3"),
        "{err}"
    );
    let quotas: Api<Value> = Api::namespaced(&client, kind("resourcequotas"), "shop");
    let q = quotas.get("compute").await.unwrap();
    assert_eq!(
        q["status"]["used"]["count/virtualmachines.keel.dev"], "2",
        "{q}"
    );
    assert_eq!(q["status"]["used"]["requests.memory"], "128Mi", "{q}");

    // A delete makes room; the quota's status follows.
    let out = kubectl(&editor, &["delete", "vm", "vm-1", "-n", "shop"], None);
    assert!(out.status.success(), "{out:?}");
    eventually("the quota counts one VM", WAIT, || async {
        let q = quotas.get("compute").await.ok()?;
        (q["status"]["used"]["count/virtualmachines.keel.dev"] == "1").then_some(())
    })
    .await;
    let out = kubectl(&editor, &["apply", "-f", "-"], Some(&vm("vm-3", 1)));
    assert!(out.status.success(), "vm-3 after a delete: {out:?}");
    let out = kubectl(
        &editor,
        &["get", "resourcequota", "compute", "-n", "shop"],
        None,
    );
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.contains("count/virtualmachines.keel.dev: 2/2"),
        "{table}"
    );
}

/// LimitRange: an admin gives namespace `shop` per-object defaults and bounds. The editor's VM
/// that leaves out its CPUs and memory gets the defaults; a VM, a disk and a Bucket over max,
/// and a patch or apply that takes a VM over max, are refused with 403 naming the LimitRange,
/// and nothing of them is stored. The editor reads the LimitRange and cannot create, patch or
/// delete one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_limit_range_fills_in_and_bounds_vms_and_buckets() {
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), "limits");
    server.start(&["--disable-agent"]);
    let client = server.ready_client(WAIT).await;
    let admin = server.dir().admin_kubeconfig();
    let editor = editor_of_shop(&admin, root.path(), "ed");
    let limits = "apiVersion: v1\nkind: LimitRange\nmetadata: {name: limits, namespace: shop}\nspec:\n  limits:\n  - type: VirtualMachine\n    default: {cpu: \"1\", memory: 256Mi}\n    max: {cpu: \"2\", memory: 1Gi}\n  - type: Disk\n    max: {storage: 20Gi}\n  - type: Bucket\n    default: {storage: 1Gi}\n    max: {storage: 10Gi}\n";
    let out = kubectl(&admin, &["apply", "-f", "-"], Some(limits));
    assert!(out.status.success(), "{out:?}");

    // The tenant reads its limits, and cannot change, remove or add to them.
    let out = kubectl(&editor, &["get", "limits", "-n", "shop"], None);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("CREATED AT"),
        "{table}"
    );
    assert!(table.contains("\nlimits "), "{table}");
    let raise = limits.replace("cpu: \"2\"", "cpu: \"64\"");
    let own = limits.replace("name: limits", "name: mine");
    let lift = "{\"spec\":{\"limits\":[]}}";
    for (what, args, stdin) in [
        (
            "apply over it",
            vec!["apply", "-f", "-"],
            Some(raise.as_str()),
        ),
        ("add one", vec!["apply", "-f", "-"], Some(own.as_str())),
        (
            "patch it",
            vec![
                "patch",
                "limitrange",
                "limits",
                "-n",
                "shop",
                "--type=merge",
                "-p",
                lift,
            ],
            None,
        ),
        (
            "delete it",
            vec!["delete", "limits", "limits", "-n", "shop"],
            None,
        ),
    ] {
        let out = kubectl(&editor, &args, stdin);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "the editor could {what}");
        assert!(
            err.contains("limitranges") && err.contains("forbidden"),
            "{what}: {err}"
        );
    }
    let ranges: Api<Value> = Api::namespaced(&client, kind("limitranges"), "shop");
    let kept = ranges.get("limits").await.unwrap();
    assert_eq!(kept["spec"]["limits"][0]["max"]["cpu"], "2", "{kept}");
    assert!(ranges.get("mine").await.is_err());

    // A VM that leaves out its CPUs and memory gets the defaults.
    let vm = |name: &str, extra: &str| {
        format!(
            "apiVersion: keel.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  kernel: test-guest-kernel\n  runStrategy: Halted\n{extra}"
        )
    };
    let out = kubectl(&editor, &["apply", "-f", "-"], Some(&vm("small", "")));
    assert!(out.status.success(), "{out:?}");
    let vms: Api<Value> = Api::namespaced(&client, kind("vm"), "shop");
    let small = vms.get("small").await.unwrap();
    assert_eq!(
        (&small["spec"]["cpu"], &small["spec"]["memory"]),
        (&Value::from(1), &Value::from("256Mi")),
        "{small}"
    );

    // Over max: refused, naming the field, the bound and the LimitRange; nothing stored.
    let refused = |yaml: String, said: &str| {
        let out = kubectl(&editor, &["apply", "-f", "-"], Some(&yaml));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "admitted: {yaml}");
        assert!(err.contains(said), "{err}");
    };
    refused(
        vm("big", "  cpu: 4\n  memory: 512Mi\n"),
        "virtualmachines.keel.dev \"big\" is forbidden: maximum cpu per VirtualMachine is 2, but spec.cpu is 4 (LimitRange \"limits\")",
    );
    refused(
        vm("disky", "  disks: [{name: data, size: 50Gi}]\n"),
        "maximum storage per Disk is 20Gi, but spec.disks[0].size is 50Gi (LimitRange \"limits\")",
    );
    // A disk from an image is as large as the image: under a max, it must say its size.
    refused(
        vm("imaged", "  disks: [{name: root, image: debian-12}]\n"),
        "spec.disks[0].size is not set",
    );
    for name in ["big", "disky", "imaged"] {
        assert!(vms.get(name).await.is_err(), "{name} was stored");
    }
    let bucket = |name: &str, spec: &str| {
        format!(
            "apiVersion: keel.dev/v1alpha1\nkind: Bucket\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n"
        )
    };
    refused(
        bucket("huge", "{quota: {bytes: 1Ti}}"),
        "buckets.keel.dev \"huge\" is forbidden: maximum storage per Bucket is 10Gi, but spec.quota.bytes is 1Ti (LimitRange \"limits\")",
    );
    let out = kubectl(
        &editor,
        &["apply", "-f", "-"],
        Some(&bucket("assets", "{}")),
    );
    assert!(out.status.success(), "{out:?}");
    let buckets: Api<Value> = Api::namespaced(&client, kind("buckets"), "shop");
    let assets = buckets.get("assets").await.unwrap();
    assert_eq!(assets["spec"]["quota"]["bytes"], "1Gi", "{assets}");

    // Changing the VM past max is refused whichever way it is written.
    let out = kubectl(
        &editor,
        &[
            "patch",
            "vm",
            "small",
            "-n",
            "shop",
            "--type=merge",
            "-p",
            "{\"spec\":{\"cpu\":4}}",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a patch took the VM past max");
    assert!(
        err.contains(
            "maximum cpu per VirtualMachine is 2, but spec.cpu is 4 (LimitRange \"limits\")"
        ),
        "{err}"
    );
    refused(
        vm("small", "  cpu: 3\n"),
        "maximum cpu per VirtualMachine is 2, but spec.cpu is 3",
    );
    let out = kubectl(
        &editor,
        &[
            "patch",
            "vm",
            "small",
            "-n",
            "shop",
            "--type=json",
            "-p",
            "[{\"op\":\"replace\",\"path\":\"/spec/memory\",\"value\":\"2Gi\"}]",
        ],
        None,
    );
    assert!(!out.status.success(), "a JSON patch took the VM past max");
    let small = vms.get("small").await.unwrap();
    assert_eq!(
        (&small["spec"]["cpu"], &small["spec"]["memory"]),
        (&Value::from(1), &Value::from("256Mi")),
        "{small}"
    );
}

/// LoadBalancers: a tenant's VIPs come from the cluster's pool, its Subnets or ranges an
/// admin granted; its address backends from its Subnets or granted ranges — never the host's
/// loopback (the agent's port 10250), every address, or the metadata address. A tenant
/// cannot grant itself more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_load_balancers_stay_in_what_the_admin_gave_it() {
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), "lbs");
    server.start(&["--disable-agent", "--lb-vip-pool", "198.51.100.0/28"]);
    let _client = server.ready_client(WAIT).await;
    let admin = server.dir().admin_kubeconfig();
    let editor = editor_of_shop(&admin, root.path(), "ed");
    let lb = |name: &str, vip: Option<&str>, backend: &str| {
        let vip = vip.map(|v| format!("  vip: \"{v}\"\n")).unwrap_or_default();
        format!(
            "apiVersion: keel.dev/v1alpha1\nkind: LoadBalancer\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{vip}  listeners: [{{protocol: TCP, port: 80}}]\n  backends: {{addresses: [\"{backend}\"]}}\n"
        )
    };
    let refused = |yaml: String, field: &str, rule: &str| {
        let out = kubectl(&editor, &["apply", "-f", "-"], Some(&yaml));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "admitted: {yaml}");
        assert!(err.contains(field) && err.contains(rule), "{field}: {err}");
    };
    let backend_rule = "a backend address must be in one of namespace shop's Subnets";
    refused(
        lb("kubelet", None, "127.0.0.1:10250"),
        "spec.backends.addresses[0]",
        backend_rule,
    );
    refused(
        lb("meta", None, "169.254.169.254:80"),
        "spec.backends.addresses[0]",
        "a link-local address",
    );
    refused(
        lb("lan", None, "192.0.2.10:80"),
        "spec.backends.addresses[0]",
        backend_rule,
    );
    let vip_rule =
        "a VIP must be in the load balancer's Subnet, the cluster's VIP pool (198.51.100.0/28)";
    refused(
        lb("any", Some("0.0.0.0"), "10.0.0.1:80"),
        "spec.vip",
        vip_rule,
    );
    refused(
        lb("lo", Some("127.0.0.1"), "10.0.0.1:80"),
        "spec.vip",
        "a loopback address",
    );
    refused(
        lb("md", Some("169.254.169.254"), "10.0.0.1:80"),
        "spec.vip",
        vip_rule,
    );
    // The tenant's own Subnet and the pool are its to use.
    let net = "apiVersion: keel.dev/v1alpha1\nkind: VPC\nmetadata: {name: main, namespace: shop}\nspec: {cidr: 10.30.0.0/16}\n---\napiVersion: keel.dev/v1alpha1\nkind: Subnet\nmetadata: {name: front, namespace: shop}\nspec: {vpc: main, cidr: 10.30.1.0/24}\n";
    let out = kubectl(&editor, &["apply", "-f", "-"], Some(net));
    assert!(out.status.success(), "{out:?}");
    let out = kubectl(
        &editor,
        &["apply", "-f", "-"],
        Some(&lb("web", Some("198.51.100.3"), "10.30.1.10:8080")),
    );
    assert!(out.status.success(), "{out:?}");
    // Only an admin grants a namespace more.
    let grant =
        "{\"metadata\":{\"annotations\":{\"keel.dev/lb-backend-ranges\":\"192.0.2.0/24\"}}}";
    let out = kubectl(&editor, &["patch", "namespace", "shop", "-p", grant], None);
    assert!(!out.status.success(), "a tenant granted itself a range");
    let out = kubectl(&admin, &["patch", "namespace", "shop", "-p", grant], None);
    assert!(out.status.success(), "{out:?}");
    let out = kubectl(
        &editor,
        &["apply", "-f", "-"],
        Some(&lb("lan", None, "192.0.2.10:80")),
    );
    assert!(out.status.success(), "{out:?}");
}
