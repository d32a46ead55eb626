//! VirtualMachines on real QEMU: one `keel server` and one `keel agent` on loopback, booting
//! the test guest (Debian's kernel and a busybox initramfs, `e2e/guest/build.sh`) under the
//! accelerator the agent's probe chose. Apply, console logs through the API server, the
//! readiness probe, run strategies against killed guests, Halted and back, an agent restart
//! that adopts its guests, a spec change applied by a controlled restart, pause, delete
//! without leftovers, and bad specs that end in a condition and an Event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use keel_client::api::ListParams;
use keel_client::{Api, Client, Patch};
use keel_e2e::{
    KeelAgent, KeelServer, condition, condition_of, eventually, guest, keelctl, keelctl_bin, kind,
    ok, stays,
};
use serde_json::{Value, json};

/// Generous: a guest boots in a few seconds under TCG, but CI machines are slow and shared.
const WAIT: Duration = Duration::from_secs(120);

/// A VM of the test guest printing `marker`, probed on its HTTP port, as YAML for keelctl.
fn vm_yaml(name: &str, marker: &str, extra: &str) -> String {
    let g = guest();
    format!(
        "apiVersion: keel.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: {name}, labels: {{app: test}}}}
spec:
  cpu: 1
  memory: 128Mi
  kernel: {}
  initrd: {}
  cmdline: console=ttyS0 quiet keel.marker={marker}
  terminationGracePeriodSeconds: 20
{extra}",
        g.kernel, g.initrd
    )
}

fn status<'a>(vm: &'a Value, field: &str) -> &'a Value {
    &vm["status"][field]
}

async fn events_for(client: &Client, name: &str) -> Vec<Value> {
    let events: Api<Value> = Api::namespaced(client, kind("events"), "default");
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == name)
        .collect()
}

async fn wait_ready(vms: &Api<Value>, name: &str) -> Value {
    eventually(&format!("{name} Ready"), WAIT, || async {
        let vm = vms.get(name).await.ok()?;
        (condition(vms, name, "Ready").await.as_deref() == Some("True")).then_some(vm)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_boot_run_restart_pause_and_go_away_on_qemu() {
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), "server");
    server.start(&["--disable-agent"]);
    let (admin, ca) = eventually("credentials", WAIT, || async { server.try_admin() }).await;
    let token = eventually("join token", WAIT, || async {
        std::fs::read_to_string(server.dir().agent_token()).ok()
    })
    .await;
    let url = server.url();
    let client = Client::new(&url, &ca, &admin).unwrap();
    let kubeconfig = server.dir().admin_kubeconfig();
    let g = guest();
    g.publish(&client).await;
    let kernel = g.kernel_file.display().to_string();
    // Image URLs on loopback (the bad-url case below) are an admin's grant, not a tenant's.
    let agent_args = [
        "--image-allowed-network",
        "127.0.0.1/32",
        "--lease-duration",
        "6",
        "--kvm-probe-kernel",
        kernel.as_str(),
    ];
    let mut agent = KeelAgent::new(root.path(), "host-1", None);
    agent.start(&url, token.trim(), &agent_args);

    // The node says which accelerator guests get, from a real boot under KVM.
    let nodes: Api<Value> = Api::all(&client, kind("nodes"));
    eventually("host-1 Ready", WAIT, || async {
        (condition(&nodes, "host-1", "Ready").await.as_deref() == Some("True")).then_some(())
    })
    .await;
    let kvm = condition(&nodes, "host-1", "KVMAvailable").await.unwrap();
    let accelerator = if kvm == "True" { "kvm" } else { "tcg" };

    // Apply: scheduled, QEMU runs, the marker is in `keelctl logs`, Ready through the probe.
    let web = vm_yaml(
        "web",
        "hello-web",
        "  readinessProbe: {http: {port: 8080, path: /}}
  disks: [{name: data, size: 64Mi}]
  cloudInit: {userData: \"#cloud-config\\nhostname: web\\n\"}
",
    );
    std::fs::write(root.path().join("web.yaml"), &web).unwrap();
    ok(keelctl(
        &kubeconfig,
        &[
            "apply",
            "-f",
            root.path().join("web.yaml").to_str().unwrap(),
        ],
    ));
    let vms: Api<Value> = Api::namespaced(&client, kind("vm"), "default");
    let vm = wait_ready(&vms, "web").await;
    assert_eq!(status(&vm, "phase"), "Running", "{vm}");
    assert_eq!(status(&vm, "nodeName"), "host-1");
    assert_eq!(status(&vm, "accelerator"), accelerator, "{vm}");
    assert_eq!(
        condition(&vms, "web", "Scheduled").await.as_deref(),
        Some("True")
    );
    let first_pid = status(&vm, "qemuPid").as_i64().unwrap() as i32;
    assert_eq!(agent.qemu_pids("default", "web"), vec![first_pid]);
    assert_confined(first_pid, "default_web", &agent.dir().vm("default", "web"));
    let logs = ok(keelctl(&kubeconfig, &["logs", "vm/web"]));
    assert!(logs.contains("KEEL-GUEST up marker=hello-web"), "{logs}");
    assert!(
        logs.contains("KEEL-GUEST disk data"),
        "the blank disk is attached: {logs}"
    );
    assert!(
        logs.contains("KEEL-GUEST disk cidata"),
        "the cloud-init seed is attached: {logs}"
    );
    let tail = ok(keelctl(&kubeconfig, &["logs", "vm/web", "--tail", "1"]));
    assert_eq!(tail.lines().count(), 1, "{tail}");
    // The guest's port is reachable on the node through the forward the status names.
    let forward = &status(&vm, "portForwards")[0];
    assert_eq!(forward["guestPort"], 8080);
    let body = http_get(forward["hostPort"].as_u64().unwrap() as u16).await;
    assert!(body.contains("guest hello-web"), "{body}");
    let no_node = keelctl(&kubeconfig, &["logs", "vm/nothing"]);
    assert!(!no_node.status.success());

    // Kill QEMU under Always: it comes back.
    kill(first_pid);
    let vm = eventually("web restarted", WAIT, || async {
        let vm = vms.get("web").await.ok()?;
        let pid = status(&vm, "qemuPid").as_i64()? as i32;
        (pid != first_pid && condition(&vms, "web", "Ready").await.as_deref() == Some("True"))
            .then_some(vm)
    })
    .await;
    assert!(
        events_for(&client, "web")
            .await
            .iter()
            .any(|e| e["reason"] == "GuestStopped"),
        "the restart is an Event"
    );
    let second_pid = status(&vm, "qemuPid").as_i64().unwrap() as i32;

    // Manual: a guest killed stays stopped, and the status says so.
    let manual = vm_yaml(
        "manual",
        "hello-manual",
        "  runStrategy: Manual\n  readinessProbe: {tcp: {port: 8080}}\n",
    );
    std::fs::write(root.path().join("manual.yaml"), &manual).unwrap();
    ok(keelctl(
        &kubeconfig,
        &[
            "apply",
            "-f",
            root.path().join("manual.yaml").to_str().unwrap(),
        ],
    ));
    // A guest that listens on nothing is not Ready through QEMU's forward, which accepts
    // connections itself.
    let deaf = vm_yaml("deaf", "deaf", "  readinessProbe: {tcp: {port: 8080}}\n")
        .replace("keel.marker=deaf", "keel.marker=deaf keel.serve=no");
    std::fs::write(root.path().join("deaf.yaml"), &deaf).unwrap();
    ok(keelctl(
        &kubeconfig,
        &[
            "apply",
            "-f",
            root.path().join("deaf.yaml").to_str().unwrap(),
        ],
    ));
    let m = wait_ready(&vms, "manual").await;
    kill(status(&m, "qemuPid").as_i64().unwrap() as i32);
    eventually("manual Stopped", WAIT, || async {
        let vm = vms.get("manual").await.ok()?;
        (status(&vm, "phase") == "Stopped").then_some(())
    })
    .await;
    stays(
        "Manual does not restart",
        Duration::from_secs(3),
        || async { agent.qemu_pids("default", "manual").is_empty() },
    )
    .await;
    let m = vms.get("manual").await.unwrap();
    let ready = condition_of(&m, "Ready").unwrap();
    assert_eq!(ready["reason"], "GuestFailed", "{m}");
    assert!(
        ready["message"].as_str().unwrap().contains("signal 9"),
        "{ready}"
    );
    // Manual means start and stop on request: keelctl start, then stop.
    let said = ok(keelctl(&kubeconfig, &["start", "vm/manual"]));
    assert!(said.contains("start requested"), "{said}");
    let m = wait_ready(&vms, "manual").await;
    assert_eq!(agent.qemu_pids("default", "manual").len(), 1, "{m}");
    ok(keelctl(&kubeconfig, &["stop", "vm/manual"]));
    eventually("manual stopped on request", WAIT, || async {
        let vm = vms.get("manual").await.ok()?;
        (status(&vm, "phase") == "Stopped" && agent.qemu_pids("default", "manual").is_empty())
            .then_some(())
    })
    .await;
    stays("manual stays stopped", Duration::from_secs(2), || async {
        agent.qemu_pids("default", "manual").is_empty()
    })
    .await;
    let logs = ok(keelctl(&kubeconfig, &["logs", "vm/manual"]));
    assert!(
        logs.contains("reboot: Power down"),
        "a graceful stop: {logs}"
    );

    eventually("deaf booted", WAIT, || async {
        let logs = keelctl(&kubeconfig, &["logs", "vm/deaf"]);
        String::from_utf8_lossy(&logs.stdout)
            .contains("KEEL-GUEST up")
            .then_some(())
    })
    .await;
    stays("deaf stays not Ready", Duration::from_secs(2), || async {
        condition(&vms, "deaf", "Ready").await.as_deref() != Some("True")
    })
    .await;
    let d = vms.get("deaf").await.unwrap();
    let ready = condition_of(&d, "Ready").unwrap();
    assert_eq!(ready["status"], "False", "{d}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("nothing listens"),
        "{ready}"
    );

    // Halted shuts the guest down through the power button; Always starts it again.
    vms.patch(
        "web",
        &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await
    .unwrap();
    eventually("web Stopped", WAIT, || async {
        let vm = vms.get("web").await.ok()?;
        (status(&vm, "phase") == "Stopped" && agent.qemu_pids("default", "web").is_empty())
            .then_some(())
    })
    .await;
    let logs = ok(keelctl(&kubeconfig, &["logs", "vm/web"]));
    assert!(
        logs.contains("reboot: Power down"),
        "the guest powered itself off: {logs}"
    );
    vms.patch(
        "web",
        &Patch::Merge(json!({"spec": {"runStrategy": "Always"}})),
    )
    .await
    .unwrap();
    let vm = wait_ready(&vms, "web").await;
    let third_pid = status(&vm, "qemuPid").as_i64().unwrap() as i32;
    assert_ne!(third_pid, second_pid);

    // Restart the agent while the guest runs: the same QEMU is adopted, none is doubled.
    agent.kill();
    agent.start(&url, token.trim(), &agent_args);
    stays(
        "one QEMU while the agent restarts",
        Duration::from_secs(4),
        || async { agent.qemu_pids("default", "web") == vec![third_pid] },
    )
    .await;
    let vm = wait_ready(&vms, "web").await;
    assert_eq!(
        status(&vm, "qemuPid").as_i64().unwrap() as i32,
        third_pid,
        "adopted, not restarted"
    );
    assert_eq!(
        agent.qemu_pids("default", "web"),
        vec![third_pid],
        "exactly one QEMU"
    );

    // A change that needs a restart is applied by a controlled restart; `logs -f` follows the
    // console into the new boot.
    let mut follower = Command::new(keelctl_bin())
        .env("KUBECONFIG", &kubeconfig)
        .args(["logs", "-f", "vm/web", "--tail", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    vms.patch(
        "web",
        &Patch::Merge(
            json!({"spec": {"cpu": 2, "cmdline": "console=ttyS0 quiet keel.marker=second-boot"}}),
        ),
    )
    .await
    .unwrap();
    let vm = eventually("web restarted with generation 2's spec", WAIT, || async {
        let vm = vms.get("web").await.ok()?;
        let booted = status(&vm, "bootedGeneration").as_i64()?;
        (booted == vm["metadata"]["generation"].as_i64()?
            && condition(&vms, "web", "Ready").await.as_deref() == Some("True"))
        .then_some(vm)
    })
    .await;
    assert_ne!(status(&vm, "qemuPid").as_i64().unwrap() as i32, third_pid);
    let mut followed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !followed
        .iter()
        .any(|l: &String| l.contains("marker=second-boot"))
        && std::time::Instant::now() < deadline
    {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            followed.push(line);
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        followed
            .iter()
            .any(|l| l.contains("KEEL-GUEST up marker=second-boot")),
        "logs -f shows the new boot: {followed:?}"
    );
    assert!(
        !followed.iter().any(|l| l.contains("marker=hello-web")),
        "--tail 0 starts at the end: {followed:?}"
    );
    assert_eq!(
        condition(&vms, "web", "RestartRequired").await.as_deref(),
        Some("False")
    );
    let logs = ok(keelctl(&kubeconfig, &["logs", "vm/web"]));
    assert!(
        logs.contains("marker=second-boot") && logs.contains("marker=hello-web"),
        "{logs}"
    );
    assert!(
        events_for(&client, "web")
            .await
            .iter()
            .any(|e| e["reason"] == "Restarting"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("cmdline, cpu changed")),
        "the restart says why"
    );

    // Pause and resume.
    vms.patch("web", &Patch::Merge(json!({"spec": {"paused": true}})))
        .await
        .unwrap();
    eventually("web Paused", WAIT, || async {
        (condition(&vms, "web", "Paused").await.as_deref() == Some("True")).then_some(())
    })
    .await;
    vms.patch("web", &Patch::Merge(json!({"spec": {"paused": false}})))
        .await
        .unwrap();
    eventually("web resumed and Ready", WAIT, || async {
        let resumed = condition(&vms, "web", "Paused").await.as_deref() == Some("False");
        (resumed && condition(&vms, "web", "Ready").await.as_deref() == Some("True")).then_some(())
    })
    .await;

    // keelctl restart: the guest is shut down and started again.
    let before = status(&vms.get("web").await.unwrap(), "qemuPid")
        .as_i64()
        .unwrap();
    ok(keelctl(&kubeconfig, &["restart", "vm/web"]));
    eventually("web restarted on request", WAIT, || async {
        let vm = vms.get("web").await.ok()?;
        let pid = status(&vm, "qemuPid").as_i64()?;
        (pid != before && condition(&vms, "web", "Ready").await.as_deref() == Some("True"))
            .then_some(())
    })
    .await;

    // Bad specs end in a condition and an Event, and the agent keeps working.
    let closed = keel_e2e::free_port();
    let bad = [
        (
            "no-image",
            "ImageNotFound",
            "  disks: [{name: root, image: no-such-image}]\n".to_string(),
        ),
        (
            "bad-url",
            "ImageFetchFailed",
            format!("  disks: [{{name: root, image: \"http://127.0.0.1:{closed}/disk.qcow2\"}}]\n"),
        ),
        (
            "bad-seed",
            "InvalidCloudInit",
            "  cloudInit: {userData: \"#cloud-config\\npackages: [nginx\\n\"}\n".to_string(),
        ),
    ];
    let applied = std::time::Instant::now();
    for (name, _, extra) in &bad {
        let file = root.path().join(format!("{name}.yaml"));
        std::fs::write(&file, vm_yaml(name, name, extra)).unwrap();
        ok(keelctl(
            &kubeconfig,
            &["apply", "-f", file.to_str().unwrap()],
        ));
    }
    for (name, reason, _) in &bad {
        eventually(&format!("{name} failed with {reason}"), WAIT, || async {
            let vm = vms.get(name).await.ok()?;
            let ready = condition_of(&vm, "Ready")?;
            (status(&vm, "phase") == "Failed" && ready["reason"] == *reason).then_some(())
        })
        .await;
        // The agent publishes the Event after it writes the status.
        eventually(
            &format!("{name}: a Warning Event with reason {reason}"),
            WAIT,
            || async {
                events_for(&client, name)
                    .await
                    .iter()
                    .any(|e| e["reason"] == *reason && e["type"] == "Warning")
                    .then_some(())
            },
        )
        .await;
    }
    let huge = root.path().join("huge.yaml");
    std::fs::write(
        &huge,
        vm_yaml("huge", "huge", "").replace("memory: 128Mi", "memory: 64Ti"),
    )
    .unwrap();
    ok(keelctl(
        &kubeconfig,
        &["apply", "-f", huge.to_str().unwrap()],
    ));
    eventually("huge unschedulable", WAIT, || async {
        let vm = vms.get("huge").await.ok()?;
        let c = condition_of(&vm, "Scheduled")?;
        (c["status"] == "False" && c["message"].as_str()?.contains("Insufficient memory"))
            .then_some(())
    })
    .await;
    // Retried with backoff (1 s, 2 s, 4 s ...), not in a loop: over the first 15 seconds after
    // the apply, a handful of attempts (a loop would make thousands).
    let attempts = || async {
        events_for(&client, "no-image")
            .await
            .iter()
            .filter(|e| e["reason"] == "ImageNotFound")
            .map(|e| e["count"].as_i64().unwrap_or(1))
            .sum::<i64>()
    };
    let window = Duration::from_secs(15).saturating_sub(applied.elapsed());
    stays(
        "at most 8 attempts in 15 s: the agent backs off",
        window,
        || async { attempts().await <= 8 },
    )
    .await;
    assert_eq!(
        condition(&vms, "web", "Ready").await.as_deref(),
        Some("True"),
        "web unaffected"
    );

    // Delete: no QEMU, disk, seed or socket is left on the host.
    for name in [
        "web", "manual", "deaf", "no-image", "bad-url", "bad-seed", "huge",
    ] {
        ok(keelctl(
            &kubeconfig,
            &["delete", "vm", name, "--wait", "--timeout", "90"],
        ));
    }
    assert!(agent.qemu_pids("default", "web").is_empty());
    let left: Vec<String> = std::fs::read_dir(agent.dir().vms())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "VM directories left: {left:?}");
    assert!(keel_e2e::qemu_pids_with(&agent.data_dir.display().to_string()).is_empty());
}

fn kill(pid: i32) {
    assert!(pid > 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill QEMU");
}

/// The guest's QEMU runs as an unprivileged id of its own with no capabilities, under
/// seccomp, in the guest's cgroup (128Mi of guest memory: a bounded limit), and its files are
/// that id's.
fn assert_confined(pid: i32, name: &str, dir: &keel_schemas::datadir::VmDir) {
    use std::os::unix::fs::MetadataExt;
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let uid: u32 = field("Uid:").parse().unwrap();
    assert!(uid >= 900_000_000, "QEMU runs as {uid}: {proc_status}");
    assert_eq!(field("Gid:"), uid.to_string(), "{proc_status}");
    assert_eq!(field("Seccomp:"), "2", "a seccomp filter: {proc_status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{proc_status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{proc_status}");
    let disk = dir.disk("data");
    for file in [dir.root.as_path(), disk.as_path()] {
        assert_eq!(
            std::fs::metadata(file).unwrap().uid(),
            uid,
            "{}",
            file.display()
        );
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = cgroups
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            (controllers.split(',').any(|c| c == "memory") || controllers.is_empty())
                .then(|| path.to_string())
        })
        .unwrap_or_default();
    assert!(
        memory.ends_with(&format!("keel.guests/{name}")),
        "QEMU is in its guest's cgroup: {cgroups}"
    );
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory").join(memory.trim_start_matches('/'));
    let limit = std::fs::read_to_string(v1.join("memory.limit_in_bytes"))
        .or_else(|_| {
            std::fs::read_to_string(
                std::path::Path::new("/sys/fs/cgroup")
                    .join(memory.trim_start_matches('/'))
                    .join("memory.max"),
            )
        })
        .unwrap();
    let limit: u64 = limit.trim().parse().unwrap();
    assert!(
        limit < 2 << 30,
        "a memory limit near the guest's 128Mi: {limit}"
    );
}

async fn http_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await;
    out
}
