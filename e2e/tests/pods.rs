//! Pods on real containerd: a host agent in a network namespace supervises its own
//! containerd, pulls images from a `docker-registry` on its loopback, and runs what `kubectl`
//! asks, reporting as a kubelet does.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use keel_e2e::pods::{Registry, Upstream, containers};
use keel_e2e::{BridgedServer, KeelAgent, Netns, eventually};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", std::env::temp_dir())
        .args(args)
        .output()
        .expect("kubectl runs")
}

/// kubectl's output, asserting it succeeded.
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `PodScheduled=False` condition of pod `namespace/name`, once the scheduler wrote it.
async fn unschedulable(kubeconfig: &Path, namespace: &str, name: &str) -> Value {
    eventually(&format!("{name} unschedulable"), WAIT, || async {
        let out = kubectl(
            kubeconfig,
            &["get", "pod", name, "-n", namespace, "-o", "json"],
        );
        let p: Value = serde_json::from_slice(&out.stdout).ok()?;
        let conditions = p["status"]["conditions"].as_array()?.clone();
        conditions
            .into_iter()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
    })
    .await
}

fn pod(kubeconfig: &Path, name: &str) -> Option<Value> {
    let out = kubectl(kubeconfig, &["get", "pod", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// `curl` run in the host's namespace.
fn curl(net: &Netns, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.name,
            "curl",
            "-sf",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One host with the pod role, its registry, and the cluster's admin kubeconfig.
struct PodHost {
    cluster: BridgedServer,
    net: Netns,
    registry: Registry,
    agent: KeelAgent,
    admin: std::path::PathBuf,
}

/// The agent's flags: the registry's pause image, and a lease of `lease` seconds.
fn agent_flags(registry: &Registry, lease: &str) -> Vec<String> {
    let mut flags = registry.agent_flags();
    flags.extend(["--lease-duration".to_string(), lease.to_string()]);
    flags
}

/// The node's lease, in seconds: it fences this long after its last renewal (short: fencing
/// is tested).
const LEASE: &str = "4";
/// A lease an agent restarts well within (its first renewal comes 2-3 s after it starts
/// here, later under load): its pods' fence keeps them.
const RESTART_LEASE: &str = "10";

async fn pod_host(root: &Path, tag: &str) -> PodHost {
    pod_host_with(root, tag, &[], &[]).await
}

/// A default route, as k3s asks of a node: the node's own connections to a ClusterIP (its
/// load balancer's, its health checks') are routed before they are DNATed.
fn default_route(cluster: &BridgedServer, net: &Netns) {
    let route = Command::new("ip")
        .args(["-n", &net.name, "route", "add", "default", "via"])
        .arg(cluster.bridge.address())
        .output()
        .expect("ip route");
    assert!(
        route.status.success(),
        "{}",
        String::from_utf8_lossy(&route.stderr)
    );
}

/// A pod host whose server and agent also have `server_extra` and `extra` flags.
async fn pod_host_with(root: &Path, tag: &str, server_extra: &[&str], extra: &[&str]) -> PodHost {
    leased_pod_host(root, tag, server_extra, extra, LEASE).await
}

/// A pod host whose agent holds a lease of `lease` seconds.
async fn leased_pod_host(
    root: &Path,
    tag: &str,
    server_extra: &[&str],
    extra: &[&str],
    lease: &str,
) -> PodHost {
    let cluster = BridgedServer::start(root, tag, server_extra).await;
    let net = cluster.bridge.netns(2);
    default_route(&cluster, &net);
    let registry = Registry::start(root, Some(&net));
    let mut agent = KeelAgent::new(root, "pod-node", Some(&net));
    let flags = agent_flags(&registry, lease);
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend_from_slice(extra);
    agent.start(&cluster.url, &cluster.agent_token, &flags);
    let admin = cluster.server.dir().admin_kubeconfig();
    PodHost {
        cluster,
        net,
        registry,
        agent,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_run_starts_a_pod_on_containerd_that_answers_and_logs() {
    let root = tempfile::tempdir().expect("a temp dir");
    let mut host = leased_pod_host(root.path(), "p", &[], &[], RESTART_LEASE).await;
    let admin = &host.admin.clone();
    // The node reads as on k3s: its runtime, its pod range.
    let node = eventually("the node with its pod range and runtime", WAIT, || async {
        let out = kubectl(admin, &["get", "node", "pod-node", "-o", "json"]);
        let node: Value = serde_json::from_slice(&out.stdout).ok()?;
        let runtime = node["status"]["nodeInfo"]["containerRuntimeVersion"].as_str()?;
        (runtime.starts_with("containerd://1.6") && node["spec"]["podCIDR"].is_string())
            .then_some(node)
    })
    .await;
    let range = node["spec"]["podCIDR"].as_str().unwrap().to_string();
    assert!(
        range.starts_with("10.42.") && range.ends_with(".0/24"),
        "{range}"
    );
    let wide = ok(kubectl(admin, &["get", "nodes", "-o", "wide"]));
    assert!(wide.contains("containerd://1.6"), "{wide}");

    let image = host.registry.image("busybox:test");
    let script = "echo hello from the pod; mkdir -p /www; echo page > /www/index.html; \
                  exec httpd -f -p 8080 -h /www";
    ok(kubectl(
        admin,
        &["run", "web", "--image", &image, "--", "sh", "-c", script],
    ));
    let out = kubectl(
        admin,
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=120s"],
    );
    assert!(
        out.status.success(),
        "the pod is not Ready: {}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ok(kubectl(admin, &["describe", "pod", "web"])),
        host.agent.log()
    );
    let web = pod(admin, "web").expect("the pod");
    let status = &web["status"];
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["hostIP"], host.net.address.as_str());
    let ip = status["podIP"].as_str().expect("a pod IP").to_string();
    let prefix = range.trim_end_matches("0/24");
    assert!(ip.starts_with(prefix), "{ip} is not in {range}");
    let container = &status["containerStatuses"][0];
    assert!(
        container["containerID"]
            .as_str()
            .is_some_and(|c| c.starts_with("containerd://")),
        "{container}"
    );
    assert!(container["state"]["running"]["startedAt"].is_string());
    assert_eq!(container["ready"], true);
    assert_eq!(web["metadata"]["finalizers"][0], "keel.dev/pod-host");

    // Its address answers from the host.
    let page = eventually("the pod's page", WAIT, || async {
        curl(&host.net, &format!("http://{ip}:8080/"))
    })
    .await;
    assert_eq!(page.trim(), "page");
    // kubectl logs reads what it printed.
    let logs = ok(kubectl(admin, &["logs", "web"]));
    assert_eq!(logs, "hello from the pod\n");

    // logs -f follows a container until it ends.
    ok(kubectl(
        admin,
        &[
            "run",
            "counter",
            "--restart=Never",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            "for i in 1 2 3; do echo line $i; sleep 1; done",
        ],
    ));
    eventually("the counter started", WAIT, || async {
        let p = pod(admin, "counter")?;
        p["status"]["containerStatuses"][0]["containerID"]
            .is_string()
            .then_some(())
    })
    .await;
    let followed = ok(kubectl(admin, &["logs", "-f", "counter"]));
    assert_eq!(followed, "line 1\nline 2\nline 3\n");
    let done = eventually("the counter Succeeded", WAIT, || async {
        let p = pod(admin, "counter")?;
        (p["status"]["phase"] == "Succeeded").then_some(p)
    })
    .await;
    let terminated = &done["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 0);
    assert_eq!(terminated["reason"], "Completed");

    // The pod outlives its agent: a new agent (and its new containerd) takes the same
    // container back, never starting a second one; back within its lease, its pods' fence
    // left them alone.
    let id = container["containerID"].as_str().unwrap().to_string();
    host.agent.kill();
    let flags = agent_flags(&host.registry, RESTART_LEASE);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    host.agent
        .start(&host.cluster.url, &host.cluster.agent_token, &flags);
    assert_eq!(
        curl(&host.net, &format!("http://{ip}:8080/")).as_deref(),
        Some("page\n"),
        "the pod stopped serving with its agent gone"
    );
    eventually("the new agent reporting the pod", WAIT, || async {
        let log = host.agent.log();
        (log.matches("caches synced, reconciling controller=agent-pods")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let web = pod(admin, "web").expect("the pod");
    let c = &web["status"]["containerStatuses"][0];
    assert_eq!(c["containerID"].as_str(), Some(id.as_str()), "{c}");
    assert_eq!(c["restartCount"], 0, "{c}");
    assert_eq!(c["ready"], true, "{c}");

    // Cut off from the cluster, the node fences: it stops its pods once its lease runs out.
    host.net.set_link(false);
    eventually("the fenced node's pod stopped", WAIT, || async {
        curl(&host.net, &format!("http://{ip}:8080/"))
            .is_none()
            .then_some(())
    })
    .await;
    assert!(host.agent.log().contains("fenced: stopping the pod"));
    // Back, it runs it again in a new sandbox.
    host.net.set_link(true);
    eventually("the pod back after the fence", WAIT, || async {
        curl(
            &host.net,
            &format!(
                "http://{}:8080/",
                pod(admin, "web")?["status"]["podIP"].as_str()?
            ),
        )
    })
    .await;

    // Deleting waits for the node to stop the containers: none is left.
    let before = containers(&host.agent.data_dir).len();
    ok(kubectl(
        admin,
        &[
            "delete",
            "pod",
            "web",
            "counter",
            "--wait=true",
            "--timeout=60s",
        ],
    ));
    let after = containers(&host.agent.data_dir).len();
    assert!(after < before, "containers before {before}, after {after}");
    assert!(pod(admin, "web").is_none());
    drop(host.cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pods_get_the_kubelets_clear_statuses() {
    let root = tempfile::tempdir().expect("a temp dir");
    // Room for the four pods of this test that run at once, and no more.
    let host = pod_host_with(root.path(), "q", &[], &["--max-pods", "4"]).await;
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    let missing = host.registry.image("nothing:here");
    ok(kubectl(admin, &["run", "ghost", "--image", &missing]));
    ok(kubectl(
        admin,
        &[
            "run",
            "crash",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            "echo dying; exit 3",
        ],
    ));
    ok(kubectl(
        admin,
        &[
            "run",
            "once",
            "--restart=Never",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
    ));
    // An image that does not exist: ErrImagePull, then ImagePullBackOff, as kubelet says.
    let ghost = eventually("ghost in ImagePullBackOff", WAIT, || async {
        let p = pod(admin, "ghost")?;
        let reason = p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].clone();
        (reason == "ImagePullBackOff").then_some(p)
    })
    .await;
    assert_eq!(ghost["status"]["phase"], "Pending");
    let events = ok(kubectl(
        admin,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=ghost",
        ],
    ));
    assert!(events.contains("Failed to pull image"), "{events}");
    // A command that exits 3 under restartPolicy Always: restarted, then CrashLoopBackOff.
    let crash = eventually("crash in CrashLoopBackOff", WAIT, || async {
        let p = pod(admin, "crash")?;
        let c = &p["status"]["containerStatuses"][0];
        (c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && c["restartCount"].as_i64() >= Some(1))
        .then_some(p)
    })
    .await;
    let c = &crash["status"]["containerStatuses"][0];
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3, "{c}");
    assert_eq!(c["ready"], false);
    let previous = ok(kubectl(admin, &["logs", "crash", "--previous"]));
    assert_eq!(previous, "dying\n");
    // Under restartPolicy Never it fails for good.
    let once = eventually("once Failed", WAIT, || async {
        let p = pod(admin, "once")?;
        (p["status"]["phase"] == "Failed").then_some(p)
    })
    .await;
    let t = &once["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 7);
    assert_eq!(t["reason"], "Error");
    // A pod asking for more memory than any node has: Pending, with the scheduler's reason.
    let huge = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: huge}}\nspec:\n  containers:\n  - name: c\n    image: {image}\n    resources: {{requests: {{memory: 100Ti}}}}\n"
    );
    let file = root.path().join("huge.yaml");
    std::fs::write(&file, huge).unwrap();
    ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    let huge = unschedulable(admin, "default", "huge").await;
    assert_eq!(huge["reason"], "Unschedulable");
    assert!(
        huge["message"]
            .as_str()
            .is_some_and(|m| m.contains("Insufficient memory")),
        "{huge}"
    );
    // A volume naming a Secret that does not exist: the container waits and says so, rather
    // than run without it; once the Secret is made, it starts with it.
    let mounted = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: mounted}}\nspec:\n  volumes: [{{name: creds, secret: {{secretName: missing}}}}]\n  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, 'cat /creds/password; echo; sleep 3600']\n    volumeMounts: [{{name: creds, mountPath: /creds}}]\n"
    );
    let file = root.path().join("mounted.yaml");
    std::fs::write(&file, mounted).unwrap();
    ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    let waiting = waiting_with(admin, "mounted", "CreateContainerConfigError").await;
    assert!(
        waiting["message"]
            .as_str()
            .is_some_and(|m| m.contains("secret \"missing\" not found")),
        "{waiting}"
    );
    // Nothing half-made: no container was created for it.
    let status = pod(admin, "mounted").expect("the pod");
    assert!(
        status["status"]["containerStatuses"][0]["containerID"].is_null(),
        "{status}"
    );
    ok(kubectl(
        admin,
        &[
            "create",
            "secret",
            "generic",
            "missing",
            "--from-literal=password=s3cret",
        ],
    ));
    eventually("mounted running", WAIT, || async {
        let p = pod(admin, "mounted")?;
        (p["status"]["phase"] == "Running").then_some(())
    })
    .await;
    let said = eventually("the Secret's file in the container", WAIT, || async {
        let out = ok(kubectl(admin, &["logs", "mounted"]));
        out.contains("s3cret").then_some(out)
    })
    .await;
    assert_eq!(said.trim(), "s3cret");

    // The host's network is the admins' to give: refused in a namespace not granted it.
    let overrides = r#"{"spec":{"hostNetwork":true}}"#;
    let out = kubectl(
        admin,
        &[
            "run",
            "hostnet",
            "--image",
            &image,
            "--overrides",
            overrides,
            "--",
            "sleep",
            "3600",
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && said.contains("spec.hostNetwork"),
        "{said}"
    );
    assert!(said.contains("keel.dev/pod-host-network"), "{said}");
    ok(kubectl(
        admin,
        &[
            "annotate",
            "namespace",
            "default",
            "keel.dev/pod-host-network=true",
        ],
    ));
    ok(kubectl(
        admin,
        &[
            "run",
            "hostnet",
            "--image",
            &image,
            "--overrides",
            overrides,
            "--",
            "sleep",
            "3600",
        ],
    ));
    let hostnet = eventually("hostnet running in the host's network", WAIT, || async {
        let p = pod(admin, "hostnet")?;
        (p["status"]["phase"] == "Running").then_some(p)
    })
    .await;
    assert_eq!(hostnet["status"]["podIP"], hostnet["status"]["hostIP"]);
    // The node runs four pods (ghost, crash, mounted, hostnet; once has ended): a fifth
    // waits for room.
    ok(kubectl(
        admin,
        &["run", "fifth", "--image", &image, "--", "sleep", "3600"],
    ));
    let fifth = unschedulable(admin, "default", "fifth").await;
    assert_eq!(
        fifth["message"], "0/1 nodes are available: 1 Too many pods.",
        "{fifth}"
    );
    // Under a compute quota, a pod must say what it asks for.
    ok(kubectl(admin, &["create", "namespace", "metered"]));
    ok(kubectl(
        admin,
        &[
            "create",
            "quota",
            "compute",
            "-n",
            "metered",
            "--hard=requests.cpu=2,pods=10",
        ],
    ));
    let out = kubectl(
        admin,
        &[
            "run", "greedy", "-n", "metered", "--image", &image, "--", "sleep", "3600",
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success()
            && said.contains("failed quota: compute: must specify requests.cpu for: greedy"),
        "{said}"
    );
    ok(kubectl(admin, &["delete", "pod", "--all", "--timeout=60s"]));
    drop(host.cluster);
}

/// `kubectl create deployment web` of `replicas` pods running `script` (serving on 8080).
fn create_web(kubeconfig: &Path, image: &str, replicas: u32, script: &str) {
    let replicas = replicas.to_string();
    ok(kubectl(
        kubeconfig,
        &[
            "create",
            "deployment",
            "web",
            "--image",
            image,
            "--replicas",
            &replicas,
            "--port",
            "8080",
            "--",
            "sh",
            "-c",
            script,
        ],
    ));
}

/// The ClusterIP the service controller gives Service `name`.
async fn cluster_ip(kubeconfig: &Path, name: &str) -> String {
    eventually(&format!("{name}'s ClusterIP"), WAIT, || async {
        let out = kubectl(
            kubeconfig,
            &["get", "service", name, "-o", "jsonpath={.spec.clusterIP}"],
        );
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ip.starts_with("10.43.").then_some(ip)
    })
    .await
}

/// The pods of deployment `app=NAME`, as JSON.
fn pods_of(kubeconfig: &Path, app: &str) -> Vec<Value> {
    let out = kubectl(
        kubeconfig,
        &["get", "pods", "-l", &format!("app={app}"), "-o", "json"],
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list["items"].as_array().cloned().unwrap_or_default()
}

fn running(pods: &[Value]) -> usize {
    pods.iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_roll_scale_and_roll_back_a_broken_image_by_themselves() {
    let root = tempfile::tempdir().expect("a temp dir");
    let host = pod_host(root.path(), "d").await;
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    let serve = "mkdir -p /www; echo v1 > /www/index.html; exec httpd -f -p 8080 -h /www";
    create_web(admin, &image, 3, serve);
    let status = |args: &[&str]| {
        let mut all = vec!["rollout", "status", "deployment/web", "--timeout=120s"];
        all.extend_from_slice(args);
        kubectl(admin, &all)
    };
    let out = status(&[]);
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ok(kubectl(admin, &["describe", "deployment", "web"])),
        ok(kubectl(admin, &["get", "pods", "-o", "wide"]))
    );
    assert_eq!(running(&pods_of(admin, "web")), 3);
    let table = ok(kubectl(admin, &["get", "deployment", "web"]));
    assert!(table.contains("3/3"), "{table}");

    // kubectl scale goes through the scale subresource.
    ok(kubectl(
        admin,
        &["scale", "deployment", "web", "--replicas", "5"],
    ));
    ok(status(&[]));
    eventually("5 pods", WAIT, || async {
        (running(&pods_of(admin, "web")) == 5).then_some(())
    })
    .await;
    ok(kubectl(
        admin,
        &["scale", "deployment", "web", "--replicas", "2"],
    ));
    eventually("2 pods", WAIT, || async {
        (pods_of(admin, "web")
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .count()
            == 2)
            .then_some(())
    })
    .await;

    // A change of template rolls out through a second ReplicaSet.
    ok(kubectl(
        admin,
        &["set", "env", "deployment/web", "VERSION=2"],
    ));
    ok(status(&[]));
    let history = ok(kubectl(admin, &["rollout", "history", "deployment/web"]));
    assert!(history.contains('1') && history.contains('2'), "{history}");
    let rs = ok(kubectl(admin, &["get", "replicasets", "-l", "app=web"]));
    assert_eq!(rs.lines().count(), 3, "{rs}");

    // A broken image: the new pods cannot pull it, the rollout makes no progress, and Keel
    // puts the last good template back by itself once progressDeadlineSeconds pass.
    ok(kubectl(
        admin,
        &[
            "patch",
            "deployment",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"progressDeadlineSeconds":8}}"#,
        ],
    ));
    ok(status(&[]));
    let missing = host.registry.image("busybox:broken");
    ok(kubectl(
        admin,
        &[
            "set",
            "image",
            "deployment/web",
            &format!("busybox={missing}"),
        ],
    ));
    let rolled = eventually("Keel's rollback", WAIT, || async {
        let out = kubectl(admin, &["get", "deployment", "web", "-o", "json"]);
        let d: Value = serde_json::from_slice(&out.stdout).ok()?;
        let back = d["spec"]["template"]["spec"]["containers"][0]["image"] == image.as_str();
        (back && d["metadata"]["annotations"]["keel.dev/rolled-back-from"].is_string()).then_some(d)
    })
    .await;
    assert_eq!(
        rolled["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "2"
    );
    ok(status(&[]));
    let events = ok(kubectl(
        admin,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web,reason=RolledBack",
        ],
    ));
    assert!(events.contains("rolled back to revision"), "{events}");
    let pods = pods_of(admin, "web");
    assert!(
        pods.iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .all(|p| p["spec"]["containers"][0]["image"] == image.as_str()),
        "{pods:#?}"
    );

    // kubectl rollout undo to the first revision: the template without VERSION. (A plain
    // undo would go to the revision before the current one: the broken image.)
    ok(kubectl(
        admin,
        &["rollout", "undo", "deployment/web", "--to-revision=1"],
    ));
    ok(status(&[]));
    let d: Value =
        serde_json::from_slice(&kubectl(admin, &["get", "deployment", "web", "-o", "json"]).stdout)
            .unwrap();
    let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.is_null() || env.as_array().is_some_and(Vec::is_empty),
        "{env}"
    );

    // Deleting the deployment takes its ReplicaSets and pods with it.
    ok(kubectl(admin, &["delete", "deployment", "web"]));
    eventually("the pods gone", WAIT, || async {
        pods_of(admin, "web").is_empty().then_some(())
    })
    .await;
    drop(host.cluster);
}

/// The waiting state of pod `name`'s first container, once its reason is `reason`.
async fn waiting_with(kubeconfig: &Path, name: &str, reason: &str) -> Value {
    eventually(&format!("{name} waiting with {reason}"), WAIT, || async {
        let p = pod(kubeconfig, name)?;
        let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == reason).then_some(w)
    })
    .await
}

/// Runs `script` in a pod named `name` to completion and returns what it printed.
async fn run_to_end(kubeconfig: &Path, image: &str, name: &str, script: &str) -> String {
    run_pinned(kubeconfig, image, name, None, script).await
}

/// The same, on `node` when one is given.
async fn run_pinned(
    kubeconfig: &Path,
    image: &str,
    name: &str,
    node: Option<&str>,
    script: &str,
) -> String {
    let overrides = node.map(|n| format!(r#"{{"spec":{{"nodeName":"{n}"}}}}"#));
    let mut args = vec!["run", name, "--restart=Never", "--image", image];
    if let Some(o) = &overrides {
        args.extend(["--overrides", o.as_str()]);
    }
    args.extend(["--", "sh", "-c", script]);
    ok(kubectl(kubeconfig, &args));
    eventually(&format!("{name} to end"), WAIT, || async {
        let p = pod(kubeconfig, name)?;
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(())
    })
    .await;
    ok(kubectl(kubeconfig, &["logs", name]))
}

#[tokio::test(flavor = "multi_thread")]
async fn services_answer_on_their_cluster_ip_node_port_and_load_balancer_from_their_ready_pods() {
    let root = tempfile::tempdir().expect("a temp dir");
    // The node's L4 proxy serves LoadBalancer VIPs from the pool, on its loopback.
    let host = pod_host_with(root.path(), "s", &["--lb-vip-pool", "127.0.78.0/28"], &[]).await;
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    let serve = "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 8080 -h /www";
    create_web(admin, &image, 2, serve);
    ok(kubectl(
        admin,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
    ));
    ok(kubectl(
        admin,
        &[
            "expose",
            "deployment",
            "web",
            "--port",
            "80",
            "--target-port",
            "8080",
        ],
    ));
    let ip = cluster_ip(admin, "web").await;
    // Its EndpointSlice lists both pods, ready.
    let slice = eventually("the EndpointSlice with both pods", WAIT, || async {
        let out = kubectl(
            admin,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "json",
            ],
        );
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        let slice = list["items"].as_array()?.first()?.clone();
        let ready = slice["endpoints"]
            .as_array()?
            .iter()
            .filter(|e| e["conditions"]["ready"] == true)
            .count();
        (ready == 2).then_some(slice)
    })
    .await;
    assert_eq!(slice["ports"][0]["port"], 8080);
    // A pod reaches the Service at its ClusterIP, and both pods answer in turn.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..12 {
        let got = run_to_end(
            admin,
            &image,
            &format!("client-{i}"),
            // busybox-static's wget crashes in a container; nc does not.
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 80 2>&1 | tail -1"),
        )
        .await;
        assert!(
            got.starts_with("web-"),
            "client-{i} got {got:?}: {}; the agent: {}",
            pod(admin, &format!("client-{i}"))
                .map(|p| p["status"].to_string())
                .unwrap_or_default(),
            host.agent
                .log()
                .lines()
                .filter(|l| l.contains("rules") || l.contains("nft"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        seen.insert(got.trim().to_string());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "only {seen:?} answered");
    // With ClientIP affinity, one client keeps its pod.
    ok(kubectl(
        admin,
        &[
            "expose",
            "deployment",
            "web",
            "--name",
            "web-sticky",
            "--port",
            "80",
            "--target-port",
            "8080",
            "--session-affinity",
            "ClientIP",
        ],
    ));
    let sticky = cluster_ip(admin, "web-sticky").await;
    let got = run_to_end(
        admin,
        &image,
        "sticky-client",
        &format!(
            "for i in 1 2 3 4 5 6 7 8; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {sticky} 80 2>&1 | tail -1; done"
        ),
    )
    .await;
    let answers: std::collections::BTreeSet<&str> = got.lines().map(str::trim).collect();
    assert!(
        answers.len() == 1 && got.lines().count() == 8 && got.starts_with("web-"),
        "{got}"
    );
    // The node answers on a NodePort.
    ok(kubectl(
        admin,
        &[
            "expose",
            "deployment",
            "web",
            "--name",
            "web-np",
            "--type",
            "NodePort",
            "--port",
            "80",
            "--target-port",
            "8080",
        ],
    ));
    let node_port = eventually("the NodePort", WAIT, || async {
        let out = kubectl(
            admin,
            &[
                "get",
                "service",
                "web-np",
                "-o",
                "jsonpath={.spec.ports[0].nodePort}",
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u16>()
            .ok()
    })
    .await;
    assert!((30000..=32767).contains(&node_port));
    let page = eventually("the NodePort answering", WAIT, || async {
        curl(
            &host.net,
            &format!("http://{}:{node_port}/", host.net.address),
        )
    })
    .await;
    assert!(page.starts_with("web-"), "{page}");
    // A LoadBalancer Service gets a VIP of the pool, in its status, served by the node's
    // proxy through the ClusterIP to the pods; its LoadBalancer is the Service's.
    ok(kubectl(
        admin,
        &[
            "expose",
            "deployment",
            "web",
            "--name",
            "web-lb",
            "--type",
            "LoadBalancer",
            "--port",
            "80",
            "--target-port",
            "8080",
        ],
    ));
    let vip = eventually("the LoadBalancer Service's ingress", WAIT, || async {
        let out = kubectl(
            admin,
            &[
                "get",
                "service",
                "web-lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ],
        );
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ip.starts_with("127.0.78.").then_some(ip)
    })
    .await;
    let page = eventually("the VIP answering", WAIT, || async {
        curl(&host.net, &format!("http://{vip}/"))
    })
    .await;
    assert!(page.starts_with("web-"), "{page}");
    let lb: Value = serde_json::from_str(&ok(kubectl(
        admin,
        &["get", "loadbalancers.keel.dev", "web-lb", "-o", "json"],
    )))
    .expect("the LoadBalancer");
    assert_eq!(lb["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(lb["spec"]["backends"]["service"], "web-lb");
    assert_eq!(lb["spec"]["listeners"][0]["port"], 80);
    // Deleted with its Service.
    ok(kubectl(admin, &["delete", "service", "web-lb"]));
    eventually("the Service's LoadBalancer gone", WAIT, || async {
        let out = kubectl(admin, &["get", "loadbalancers.keel.dev", "web-lb"]);
        (!out.status.success()).then_some(())
    })
    .await;
    // A Service with no ready pod refuses at once, as on Kubernetes.
    ok(kubectl(
        admin,
        &["create", "service", "clusterip", "nobody", "--tcp=80:8080"],
    ));
    let nobody = cluster_ip(admin, "nobody").await;
    let refused = run_to_end(
        admin,
        &image,
        "refused",
        &format!("nc -w 5 {nobody} 80 </dev/null 2>&1; echo exit=$?"),
    )
    .await;
    assert!(refused.contains("Connection refused"), "{refused}");
    ok(kubectl(admin, &["delete", "deployment", "web"]));
    drop(host.cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_hold_readiness_and_restart_what_fails_its_liveness_probe() {
    let root = tempfile::tempdir().expect("a temp dir");
    let host = pod_host(root.path(), "r").await;
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    // Ready only once the page is served (an HTTP readiness probe), after a startup probe
    // (a command) passes; alive only while /tmp/alive exists: it is removed after 4 s.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {image}
    command: ["sh", "-c", "touch /tmp/alive; (sleep 4; rm /tmp/alive) & sleep 2; mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
    startupProbe: {{exec: {{command: ["test", "-f", "/tmp/alive"]}}, periodSeconds: 1}}
    readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
    livenessProbe: {{exec: {{command: ["test", "-f", "/tmp/alive"]}}, periodSeconds: 1, failureThreshold: 2}}
"#
    );
    let file = root.path().join("probed.yaml");
    std::fs::write(&file, manifest).unwrap();
    ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    // Running but not ready while httpd has not started.
    let early = eventually("probed running, not ready", WAIT, || async {
        let p = pod(admin, "probed")?;
        let c = &p["status"]["containerStatuses"][0];
        (c["state"]["running"].is_object() && c["ready"] == false).then_some(p)
    })
    .await;
    assert_eq!(early["status"]["phase"], "Running");
    eventually("probed ready", WAIT, || async {
        let p = pod(admin, "probed")?;
        (p["status"]["containerStatuses"][0]["ready"] == true).then_some(())
    })
    .await;
    // Its liveness probe fails once /tmp/alive is gone: killed and started again.
    let restarted = eventually("probed restarted by its liveness probe", WAIT, || async {
        let p = pod(admin, "probed")?;
        let c = &p["status"]["containerStatuses"][0];
        (c["restartCount"].as_i64() >= Some(1)).then_some(p)
    })
    .await;
    let c = &restarted["status"]["containerStatuses"][0];
    assert!(c["lastState"]["terminated"].is_object(), "{c}");
    let events = ok(kubectl(
        admin,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=probed,reason=Unhealthy",
        ],
    ));
    assert!(events.contains("Liveness probe failed"), "{events}");
    ok(kubectl(
        admin,
        &["delete", "pod", "probed", "--timeout=60s"],
    ));
    drop(host.cluster);
}

/// The port of the node's DNS server at `address` (the kube-dns Service's endpoint).
async fn dns_port(admin: &Path, address: &str) -> u16 {
    eventually("the kube-dns endpoint", WAIT, || async {
        let out = kubectl(
            admin,
            &[
                "get",
                "endpointslices",
                "-n",
                "kube-system",
                "-l",
                "kubernetes.io/service-name=kube-dns",
                "-o",
                "jsonpath={.items[0].endpoints[0].addresses[0]}:{.items[0].ports[0].port}",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (ip, port) = text.split_once(':')?;
        (ip == address).then(|| port.parse::<u16>().ok()).flatten()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_resolve_services_and_pods_by_their_cluster_dns_names() {
    let root = tempfile::tempdir().expect("a temp dir");
    // The pod node is the cluster's DNS server too.
    // It forwards other names to a BIND upstream (started below) for pods only.
    let upstream_port = keel_e2e::free_port();
    let upstream = format!("127.0.0.1:{upstream_port}");
    let host = pod_host_with(
        root.path(),
        "d",
        &[],
        &["--dns-listen", "0.0.0.0:0", "--dns-upstream", &upstream],
    )
    .await;
    let _named = Upstream::start(
        root.path(),
        &host.net,
        upstream_port,
        "outside.test.",
        "www A 192.0.2.80",
    );
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    // The cluster DNS Service and its zone are made by the cluster, and the Service's
    // endpoint is the node's DNS server.
    eventually("the kube-dns Service", WAIT, || async {
        let out = kubectl(
            admin,
            &[
                "get",
                "service",
                "kube-dns",
                "-n",
                "kube-system",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
        );
        (String::from_utf8_lossy(&out.stdout).trim() == "10.43.0.10").then_some(())
    })
    .await;
    let port = dns_port(admin, &host.net.address).await;
    let serve = "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 8080 -h /www";
    create_web(admin, &image, 1, serve);
    ok(kubectl(
        admin,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
    ));
    ok(kubectl(
        admin,
        &[
            "expose",
            "deployment",
            "web",
            "--name",
            "svc-b",
            "--port",
            "80",
            "--target-port",
            "8080",
        ],
    ));
    let ip = cluster_ip(admin, "svc-b").await;
    // A headless Service with a named port: its pods' addresses and SRV records.
    let headless = r#"{"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web-pods"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 8080}]}}"#;
    let mut apply = Command::new("kubectl")
        .args([
            "--kubeconfig",
            &admin.display().to_string(),
            "apply",
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    use std::io::Write as _;
    apply
        .stdin
        .take()
        .expect("stdin")
        .write_all(headless.as_bytes())
        .expect("write the Service");
    ok(apply.wait_with_output().expect("kubectl apply"));
    let web_ip = pods_of(admin, "web")[0]["status"]["podIP"]
        .as_str()
        .expect("the web pod's IP")
        .to_string();
    let ns = host.net.name.clone();
    let dig = |args: &[&str]| keel_e2e::dig(Some(&ns), port, args);
    // Served by the node's DNS server once the zone controller generated the records.
    eventually("svc-b's record", WAIT, || async {
        dig(&["+short", "svc-b.default.svc.cluster.local", "A"])
            .contains(&ip)
            .then_some(())
    })
    .await;
    let srv = eventually("the headless Service's SRV record", WAIT, || async {
        let out = dig(&[
            "+short",
            "_http._tcp.web-pods.default.svc.cluster.local",
            "SRV",
        ]);
        let dashed = web_ip.replace('.', "-");
        out.contains(&format!(
            "8080 {dashed}.web-pods.default.svc.cluster.local."
        ))
        .then_some(out)
    })
    .await;
    assert!(srv.starts_with("0 100 8080 "), "{srv}");
    assert!(
        dig(&["+short", "web-pods.default.svc.cluster.local", "A"]).contains(&web_ip),
        "the headless Service names its pod"
    );
    // Only pods may recurse: the node itself (not in the pod range) is refused.
    let refused = keel_e2e::dig(Some(&ns), port, &["+rec", "www.outside.test", "A"]);
    assert!(refused.contains("REFUSED"), "{refused}");
    let pod_name = format!("{}.default.pod.cluster.local", web_ip.replace('.', "-"));
    assert!(
        dig(&["+short", &pod_name, "A"]).contains(&web_ip),
        "{pod_name}"
    );
    // A pod asks the cluster DNS through 10.43.0.10 (its resolv.conf, with the search
    // path), then fetches the page through the ClusterIP it was told.
    let got = run_to_end(
        admin,
        &image,
        "pod-a",
        "cat /etc/resolv.conf; \
         nslookup svc-b.default.svc.cluster.local; \
         nslookup svc-b; \
         addr=$(nslookup svc-b.default.svc.cluster.local | sed -n 's/^Address: *//p' | tail -1); \
         nslookup www.outside.test; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $addr 80 | tail -1",
    )
    .await;
    // A name outside Keel's zones was forwarded to the upstream.
    assert!(got.contains("Address: 192.0.2.80"), "{got}");
    assert!(got.contains("nameserver 10.43.0.10"), "{got}");
    assert!(
        got.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{got}"
    );
    assert!(got.contains("options ndots:5"), "{got}");
    let answers = got.matches(&format!("Address: {ip}")).count();
    assert_eq!(answers, 2, "the full and the short name resolve: {got}");
    assert!(
        got.lines().last().is_some_and(|l| l.starts_with("web-")),
        "{got}"
    );
    // Another namespace's pod finds it by its full name, not by the bare name.
    ok(kubectl(admin, &["create", "namespace", "other"]));
    let other = eventually("a pod in another namespace", WAIT, || async {
        let out = kubectl(
            admin,
            &[
                "run",
                "pod-o",
                "-n",
                "other",
                "--restart=Never",
                "--image",
                &image,
                "--",
                "sh",
                "-c",
                "nslookup svc-b.default.svc.cluster.local; nslookup svc-b; true",
            ],
        );
        out.status.success().then_some(())
    });
    other.await;
    let logs = eventually("pod-o to end", WAIT, || async {
        let out = kubectl(admin, &["get", "pod", "pod-o", "-n", "other", "-o", "json"]);
        let p: Value = serde_json::from_slice(&out.stdout).ok()?;
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            .then(|| ok(kubectl(admin, &["logs", "pod-o", "-n", "other"])))
    })
    .await;
    assert_eq!(logs.matches(&format!("Address: {ip}")).count(), 1, "{logs}");
    assert!(
        logs.contains("can't find svc-b.other.svc.cluster.local: NXDOMAIN"),
        "{logs}"
    );
    // The Service deleted, its name goes.
    let deleted = std::time::Instant::now();
    ok(kubectl(admin, &["delete", "service", "svc-b"]));
    eventually("svc-b's record gone", WAIT, || async {
        let out = dig(&["svc-b.default.svc.cluster.local", "A"]);
        out.contains("NXDOMAIN").then_some(())
    })
    .await;
    // A figure, not a limit: how soon the cluster DNS follows a Service.
    eprintln!(
        "figure: a deleted Service's name was gone from the cluster DNS {} ms after kubectl delete began",
        deleted.elapsed().as_millis()
    );
    ok(kubectl(admin, &["delete", "deployment", "web"]));
    drop(host.cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn volumes_and_environment_come_from_configmaps_secrets_and_the_downward_api() {
    let root = tempfile::tempdir().expect("a temp dir");
    let host = pod_host(root.path(), "v").await;
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    ok(kubectl(
        admin,
        &[
            "create",
            "configmap",
            "site",
            "--from-literal=index.html=hello",
            "--from-literal=GREETING=hi",
        ],
    ));
    ok(kubectl(
        admin,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=password=s3cret",
        ],
    ));
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: reader, labels: {{tier: web}}}}
spec:
  restartPolicy: Never
  volumes:
  - {{name: site, configMap: {{name: site, items: [{{key: index.html, path: www/index.html, mode: 0600}}]}}}}
  - {{name: creds, secret: {{secretName: creds}}}}
  - {{name: info, downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}}}
  - {{name: shared, emptyDir: {{}}}}
  - {{name: both, projected: {{sources: [{{configMap: {{name: site}}}}, {{secret: {{name: creds}}}}]}}}}
  - {{name: scratch, emptyDir: {{medium: Memory, sizeLimit: 8Mi}}}}
  initContainers:
  - name: init
    image: {image}
    command: [sh, -c, 'echo from-init > /shared/note']
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: c
    image: {image}
    resources: {{limits: {{memory: 64Mi}}}}
    command: [sh, -c, 'cat /site/www/index.html; echo; stat -c %a /site/www/index.html; cat /creds/password; echo; cat /info/labels; echo; cat /shared/note; ls /both; echo "env $GREETING $PASS $CM_GREETING $POD_NAME $POD_NS $MEM"; echo "$POD_IP" | grep -c 10.42; touch /site/x 2>&1 | grep -c Read-only; echo "who $WHO"; echo ''$(POD_NS) $$(POD_NS)''; grep -E " /(creds|both|info|scratch) tmpfs " /proc/mounts | cut -d" " -f2 | sort | tr "\n" " "; echo; df -k /scratch | tail -1 | tr -s " " | cut -d" " -f2; grep -cE " /(site|shared) tmpfs " /proc/mounts; true']
    volumeMounts:
    - {{name: site, mountPath: /site}}
    - {{name: creds, mountPath: /creds, readOnly: true}}
    - {{name: info, mountPath: /info}}
    - {{name: shared, mountPath: /shared}}
    - {{name: both, mountPath: /both}}
    - {{name: scratch, mountPath: /scratch}}
    envFrom: [{{configMapRef: {{name: site}}, prefix: CM_}}]
    env:
    - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: site, key: GREETING}}}}}}
    - {{name: PASS, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: POD_NS, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: MEM, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}
    - {{name: NOPE, valueFrom: {{configMapKeyRef: {{name: absent, key: k, optional: true}}}}}}
    - {{name: WHO, value: "$(POD_NAME) in $(POD_NS), $(UNDEFINED)"}}
"#
    );
    let file = root.path().join("reader.yaml");
    std::fs::write(&file, manifest).unwrap();
    ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    eventually("reader to end", WAIT, || async {
        let p = pod(admin, "reader")?;
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(())
    })
    .await;
    let out = ok(kubectl(admin, &["logs", "reader"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "hello",
            "600",
            "s3cret",
            "tier=\"web\"",
            "from-init",
            "GREETING",
            "index.html",
            "password",
            "env hi s3cret hi reader default 64",
            "1",
            "1",
            "who reader in default, $(UNDEFINED)",
            "default $(POD_NS)",
            // Secrets, projections, the downward API and memory-backed emptyDirs are on
            // tmpfs (8Mi = 8192 KiB); ConfigMaps and other emptyDirs on disk.
            "/both /creds /info /scratch ",
            "8192",
            "0",
        ],
        "{out}"
    );
    // A missing key that is not optional: the container waits, naming the key.
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: keyless}}\nspec:\n  containers:\n  - name: c\n    image: {image}\n    env: [{{name: X, valueFrom: {{configMapKeyRef: {{name: site, key: nope}}}}}}]\n"
    );
    std::fs::write(&file, manifest).unwrap();
    ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    let waiting = waiting_with(admin, "keyless", "CreateContainerConfigError").await;
    assert_eq!(
        waiting["message"], "couldn't find key nope in ConfigMap default/site",
        "{waiting}"
    );
    // A host path is not a tenant's to mount: refused by this node, saying so.
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: hostly}}\nspec:\n  volumes: [{{name: etc, hostPath: {{path: /etc}}}}]\n  containers:\n  - name: c\n    image: {image}\n    volumeMounts: [{{name: etc, mountPath: /host}}]\n"
    );
    std::fs::write(&file, manifest).unwrap();
    ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    let waiting = waiting_with(admin, "hostly", "CreateContainerConfigError").await;
    assert!(
        waiting["message"]
            .as_str()
            .is_some_and(|m| m.contains("hostPath volumes are not supported")),
        "{waiting}"
    );
    ok(kubectl(admin, &["delete", "pod", "--all", "--timeout=60s"]));
    // Their volumes went with them.
    let volumes = host.agent.data_dir.join("pods/volumes");
    let left: Vec<_> = std::fs::read_dir(&volumes)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    drop(host.cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_spreads_over_two_nodes_whose_pods_reach_each_other_and_moves_off_a_dead_one()
{
    let root = tempfile::tempdir().expect("a temp dir");
    let cluster = BridgedServer::start(
        root.path(),
        "m",
        &[
            "--node-monitor-grace-period",
            "4",
            "--node-eviction-timeout",
            "2",
        ],
    )
    .await;
    let admin = cluster.server.dir().admin_kubeconfig();
    let admin = &admin;
    let port = keel_e2e::free_port();
    let mut hosts = Vec::new();
    for (i, name) in [(2u8, "node-a"), (3, "node-b")] {
        let net = cluster.bridge.netns(i);
        default_route(&cluster, &net);
        let dir = root.path().join(format!("{name}-registry"));
        std::fs::create_dir_all(&dir).unwrap();
        let registry = Registry::start_at(&dir, Some(&net), port);
        let mut agent = KeelAgent::new(root.path(), name, Some(&net));
        let flags = agent_flags(&registry, LEASE);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        agent.start(&cluster.url, &cluster.agent_token, &flags);
        hosts.push((net, registry, agent));
    }
    let image = hosts[0].1.image("busybox:test");
    // Both nodes ready, with their pod ranges, before the replicas are placed.
    for node in ["node-a", "node-b"] {
        eventually(&format!("{node} ready with a pod range"), WAIT, || async {
            let out = kubectl(
                admin,
                &[
                    "get",
                    "node",
                    node,
                    "-o",
                    "jsonpath={.spec.podCIDR} {.status.conditions[?(@.type==\"Ready\")].status}",
                ],
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            (text.starts_with("10.42.") && text.ends_with("True")).then_some(())
        })
        .await;
    }
    let serve = "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 8080 -h /www";
    create_web(admin, &image, 4, serve);
    ok(kubectl(
        admin,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
    ));
    // Spread: two replicas on each node.
    let pods = pods_of(admin, "web");
    let on = |node: &str| -> Vec<Value> {
        pods.iter()
            .filter(|p| p["spec"]["nodeName"] == node)
            .cloned()
            .collect()
    };
    assert_eq!((on("node-a").len(), on("node-b").len()), (2, 2), "{pods:?}");
    // A pod on node-a reaches a pod on node-b at its address (host-gw routes).
    let far = on("node-b")[0]["status"]["podIP"]
        .as_str()
        .expect("a pod IP")
        .to_string();
    let far_name = on("node-b")[0]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let got = run_pinned(
        admin,
        &image,
        "client-a",
        Some("node-a"),
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {far} 8080 2>&1 | tail -1"),
    )
    .await;
    assert_eq!(got.trim(), far_name, "node-a's pod reached {far}");
    // A DaemonSet puts one pod on each node, and rolls a new template node by node.
    let daemon = format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec:\n      containers:\n      - name: c\n        image: {image}\n        command: [sleep, '3600']\n"
    );
    let file = root.path().join("daemon.yaml");
    std::fs::write(&file, daemon).unwrap();
    ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    ok(kubectl(
        admin,
        &["rollout", "status", "daemonset/agent", "--timeout=120s"],
    ));
    let nodes_of = |app: &str| {
        let mut nodes: Vec<String> = pods_of(admin, app)
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
            .collect();
        nodes.sort();
        nodes
    };
    assert_eq!(nodes_of("agent"), ["node-a", "node-b"]);
    ok(kubectl(admin, &["set", "env", "daemonset/agent", "V=2"]));
    ok(kubectl(
        admin,
        &["rollout", "status", "daemonset/agent", "--timeout=120s"],
    ));
    let updated = pods_of(admin, "agent");
    let fresh = updated
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["spec"]["containers"][0]["env"][0]["value"] == "2")
        .count();
    assert_eq!(fresh, 2, "{updated:?}");
    ok(kubectl(admin, &["delete", "daemonset", "agent"]));
    // node-b's agent is killed: its containerd and the containers run on, until its pods'
    // fence (keel pod-fence) finds the heartbeat a lease old and kills them. After the
    // grace period and the eviction timeout its pods are deleted and made again on node-a.
    let agent_b = &mut hosts[1].2;
    assert!(!containers(&agent_b.data_dir).is_empty());
    agent_b.kill();
    eventually("node-b's containers stopped by its fence", WAIT, || async {
        containers(&agent_b.data_dir).is_empty().then_some(())
    })
    .await;
    let fence_log =
        std::fs::read_to_string(agent_b.data_dir.join("pods/fence.log")).unwrap_or_default();
    assert!(fence_log.contains("fenced, killed"), "{fence_log}");
    let moved = eventually("all four replicas on node-a", WAIT, || async {
        let pods = pods_of(admin, "web");
        let live = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| p["spec"]["nodeName"] == "node-a")
            .count();
        (live == 4 && pods.len() == 4).then_some(pods)
    })
    .await;
    assert_eq!(moved.len(), 4, "the lost node's pods are gone: {moved:?}");
    let events = ok(kubectl(
        admin,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=NodeLost",
            "-o",
            "name",
        ],
    ));
    assert!(!events.trim().is_empty(), "NodeLost events");
    ok(kubectl(admin, &["delete", "deployment", "web"]));
    drop(hosts);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_pods_to_completion_and_fail_after_their_backoff_limit() {
    let root = tempfile::tempdir().expect("a temp dir");
    let host = pod_host(root.path(), "j").await;
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    // kubectl create job: one pod to success; kubectl wait and logs read it as on k3s.
    ok(kubectl(
        admin,
        &[
            "create",
            "job",
            "hello",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            "echo hello from a job",
        ],
    ));
    ok(kubectl(
        admin,
        &[
            "wait",
            "--for=condition=complete",
            "job/hello",
            "--timeout=120s",
        ],
    ));
    let logs = ok(kubectl(admin, &["logs", "job/hello"]));
    assert_eq!(logs.trim(), "hello from a job");
    let table = ok(kubectl(admin, &["get", "job", "hello"]));
    assert!(
        table.contains("Complete") && table.contains("1/1"),
        "{table}"
    );
    // Three completions, two at a time.
    let manifest = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: batch}}\nspec:\n  completions: 3\n  parallelism: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: {image}\n        command: [sh, -c, 'sleep 1; echo done']\n"
    );
    let file = root.path().join("job.yaml");
    std::fs::write(&file, manifest).unwrap();
    ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    ok(kubectl(
        admin,
        &[
            "wait",
            "--for=condition=complete",
            "job/batch",
            "--timeout=120s",
        ],
    ));
    let job: Value =
        serde_json::from_str(&ok(kubectl(admin, &["get", "job", "batch", "-o", "json"])))
            .expect("the job");
    assert_eq!(job["status"]["succeeded"], 3, "{job}");
    assert_eq!(job["status"]["active"], 0, "{job}");
    let pods = ok(kubectl(
        admin,
        &[
            "get",
            "pods",
            "-l",
            "job-name=batch",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
    ));
    assert_eq!(
        pods.split_whitespace().count(),
        3,
        "no pod too many: {pods}"
    );
    // A pod that fails is replaced after a back-off, until backoffLimit failures: then the
    // job is Failed.
    let manifest = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: bad}}\nspec:\n  backoffLimit: 1\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: {image}\n        command: [sh, -c, 'exit 1']\n"
    );
    std::fs::write(&file, manifest).unwrap();
    ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    ok(kubectl(
        admin,
        &[
            "wait",
            "--for=condition=failed",
            "job/bad",
            "--timeout=120s",
        ],
    ));
    let job: Value =
        serde_json::from_str(&ok(kubectl(admin, &["get", "job", "bad", "-o", "json"])))
            .expect("the job");
    assert_eq!(job["status"]["failed"], 2, "{job}");
    let failed = job["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Failed").cloned())
        .expect("a Failed condition");
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{job}");
    // A Job whose pods would restart Always is refused, naming the field.
    let out = kubectl(
        admin,
        &[
            "create",
            "job",
            "always",
            "--image",
            &image,
            "--dry-run=client",
            "-o",
            "json",
        ],
    );
    let mut always: Value = serde_json::from_slice(&out.stdout).expect("a job");
    always["spec"]["template"]["spec"]["restartPolicy"] = "Always".into();
    std::fs::write(&file, always.to_string()).unwrap();
    let out = kubectl(admin, &["apply", "-f", file.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("spec.template.spec.restartPolicy"),
        "{said}"
    );
    // Deleted with its pods.
    ok(kubectl(admin, &["delete", "job", "batch", "--wait=true"]));
    eventually("the job's pods gone", WAIT, || async {
        let out = kubectl(
            admin,
            &["get", "pods", "-l", "job-name=batch", "-o", "name"],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .is_empty()
            .then_some(())
    })
    .await;
    drop(host.cluster);
}

/// kubectl run with `env` set, `stdin` written and closed, under a 60 s `timeout` so that a
/// stream that never ends fails the test instead of hanging it.
fn kubectl_with(kubeconfig: &Path, env: &[(&str, &str)], stdin: &str, args: &[&str]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new("timeout")
        .arg("60")
        .arg("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", std::env::temp_dir())
        .envs(env.iter().copied())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("stdin written");
    drop(input);
    child.wait_with_output().expect("kubectl ends")
}

/// kubectl port-forward to `target` on a free local port, until dropped.
struct Forward {
    child: std::process::Child,
    port: u16,
}

impl Forward {
    fn start(kubeconfig: &Path, env: &[(&str, &str)], target: &str, remote: u16) -> Forward {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", std::env::temp_dir())
            .envs(env.iter().copied())
            .args(["port-forward", target, &format!("{port}:{remote}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl port-forward runs");
        Forward { child, port }
    }

    /// The page at `path` through the forward (waiting for it to listen).
    async fn get(&self, path: &str) -> String {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        eventually("a page through port-forward", WAIT, || async {
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "10", &url])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .await
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_exec_attach_and_port_forward_reach_a_pods_containers() {
    let root = tempfile::tempdir().expect("a temp dir");
    let host = pod_host(root.path(), "x").await;
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    // A web server, and a container that reads its stdin (for attach; stdinOnce: it ends
    // when the first attach closes it).
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: shell}}
spec:
  containers:
  - name: web
    image: {image}
    command: [sh, -c, 'mkdir -p /www; echo page > /www/index.html; exec httpd -f -p 8080 -h /www']
  - name: reader
    image: {image}
    stdin: true
    stdinOnce: true
    command: [sh, -c, 'while read line; do echo "got $line"; done; echo bye']
"#
    );
    let file = root.path().join("shell.yaml");
    std::fs::write(&file, manifest).unwrap();
    ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    let out = kubectl(
        admin,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/shell",
            "--timeout=120s",
        ],
    );
    assert!(out.status.success(), "{}", host.agent.log());
    let spdy_exec = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
    let spdy_forward = [("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")];

    // exec, over kubectl's WebSocket (v5) and over SPDY.
    for env in [&[][..], &spdy_exec[..]] {
        let out = kubectl_with(
            admin,
            env,
            "",
            &["exec", "shell", "-c", "web", "--", "sh", "-c", "echo ok"],
        );
        assert_eq!(ok(out), "ok\n");
        // stdout and stderr apart; the exit code comes back.
        let out = kubectl_with(
            admin,
            env,
            "",
            &[
                "exec",
                "shell",
                "-c",
                "web",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
        );
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("err\n") && stderr.contains("exit code 3"),
            "{stderr}"
        );
        // stdin reaches the command, and its end ends it.
        let out = kubectl_with(
            admin,
            env,
            "line one\nline two\n",
            &["exec", "-i", "shell", "-c", "web", "--", "wc", "-l"],
        );
        assert_eq!(ok(out).trim(), "2");
    }
    let log = host.agent.log();
    assert!(log.contains("protocol=\"v5.channel.k8s.io\""), "{log}");
    assert!(log.contains("protocol=\"SPDY/3.1\""), "{log}");

    // Clear refusals: a container the pod lacks, no command.
    let out = kubectl(admin, &["exec", "shell", "-c", "nope", "--", "true"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("container nope is not valid for pod shell"),
        "{stderr}"
    );

    // attach: the reader gets a line, and ends when the attach closes its stdin.
    let out = kubectl_with(
        admin,
        &[],
        "hello\n",
        &["attach", "-i", "shell", "-c", "reader"],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("got hello"), "{out:?}");

    // port-forward, tunnelled in a WebSocket and over SPDY: two connections each.
    for env in [&[][..], &spdy_forward[..]] {
        let forward = Forward::start(admin, env, "pod/shell", 8080);
        assert_eq!(forward.get("/").await, "page\n");
        assert_eq!(forward.get("/index.html").await, "page\n");
    }
    assert!(
        host.agent
            .log()
            .contains("protocol=\"SPDY/3.1+portforward.k8s.io\""),
        "{}",
        host.agent.log()
    );

    // Only who may create pods/exec may run commands: a viewer cannot, an editor can.
    for (user, role) in [("viewer", "view"), ("editor", "edit")] {
        ok(kubectl(
            admin,
            &[
                "create",
                "rolebinding",
                user,
                &format!("--clusterrole={role}"),
                &format!("--user={user}"),
            ],
        ));
    }
    let out = kubectl(
        admin,
        &["--as=viewer", "exec", "shell", "-c", "web", "--", "true"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("forbidden") && stderr.contains("pods/exec"),
        "{stderr}"
    );
    let out = kubectl(
        admin,
        &["--as=viewer", "port-forward", "pod/shell", "0:8080"],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pods/portforward"),
        "{out:?}"
    );
    let out = kubectl(
        admin,
        &[
            "--as=editor",
            "exec",
            "shell",
            "-c",
            "web",
            "--",
            "echo",
            "edited",
        ],
    );
    assert_eq!(ok(out), "edited\n");
}

/// The Jobs of cron job `name`, oldest first.
fn jobs_of(kubeconfig: &Path, name: &str) -> Vec<Value> {
    let out = ok(kubectl(kubeconfig, &["get", "jobs", "-o", "json"]));
    let list: Value = serde_json::from_str(&out).expect("a job list");
    let mut jobs: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == name)
        .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect();
    jobs.sort_by_key(|j| {
        j["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    jobs
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_jobs_make_a_job_each_minute_their_schedule_names() {
    let root = tempfile::tempdir().expect("a temp dir");
    let host = pod_host(root.path(), "c").await;
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    // kubectl create cronjob (a protobuf body): a Job at each minute, its output in its logs.
    ok(kubectl(
        admin,
        &[
            "create",
            "cronjob",
            "tick",
            "--image",
            &image,
            "--schedule",
            "* * * * *",
            "--",
            "sh",
            "-c",
            "echo tick",
        ],
    ));
    // Replace: a run still going at the next minute is deleted for the new one.
    let replace = format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: long}}\nspec:\n  schedule: '*/1 * * * *'\n  timeZone: Europe/Paris\n  concurrencyPolicy: Replace\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - {{name: c, image: '{image}', command: [sleep, '600']}}\n"
    );
    // Suspended: nothing runs.
    let suspended = replace
        .replace("name: long", "name: idle")
        .replace("concurrencyPolicy: Replace", "suspend: true");
    for (name, manifest) in [("long", &replace), ("idle", &suspended)] {
        let file = root.path().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        ok(kubectl(admin, &["apply", "-f", file.to_str().unwrap()]));
    }
    // Bad schedules and zones are refused, naming what is wrong.
    for (schedule, says) in [
        ("61 * * * *", "minute: 61 is out of 0-59"),
        ("* * * *", "has 4 fields"),
        ("@every 5m", "not a descriptor"),
    ] {
        let out = kubectl(
            admin,
            &[
                "create",
                "cronjob",
                "bad",
                "--image",
                &image,
                "--schedule",
                schedule,
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{schedule}: {stderr}"
        );
    }
    let bad_zone = replace
        .replace("name: long", "name: nowhere")
        .replace("Europe/Paris", "Mars/Olympus");
    let file = root.path().join("nowhere.yaml");
    std::fs::write(&file, bad_zone).unwrap();
    let out = kubectl(admin, &["apply", "-f", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown time zone \"Mars/Olympus\""),
        "{stderr}"
    );

    // The first minute: tick's job completes and says so; long's runs.
    let first = eventually(
        "tick's first job complete",
        Duration::from_secs(150),
        || async {
            let jobs = jobs_of(admin, "tick");
            jobs.iter().find(|j| j["status"]["succeeded"] == 1).cloned()
        },
    )
    .await;
    let name = first["metadata"]["name"].as_str().unwrap().to_string();
    let minutes: i64 = name
        .trim_start_matches("tick-")
        .parse()
        .expect("minutes in the name");
    let scheduled =
        first["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .expect("the scheduled time")
            .to_string();
    assert!(scheduled.ends_with(":00Z"), "{scheduled}");
    assert_eq!(
        keel_schemas::time::parse_rfc3339(&scheduled).map(|s| s as i64 / 60),
        Some(minutes)
    );
    let logs = ok(kubectl(admin, &["logs", &format!("job/{name}")]));
    assert_eq!(logs.trim(), "tick");
    let cron: Value = serde_json::from_str(&ok(kubectl(
        admin,
        &["get", "cronjob", "tick", "-o", "json"],
    )))
    .expect("the cron job");
    assert!(cron["status"]["lastScheduleTime"].is_string(), "{cron}");
    let table = ok(kubectl(admin, &["get", "cronjobs"]));
    assert!(
        table.contains("SCHEDULE") && table.contains("* * * * *"),
        "{table}"
    );

    // The next minute: long's running job is replaced; tick keeps its finished jobs.
    let first_long = eventually("long's first job", WAIT, || async {
        jobs_of(admin, "long").first().cloned()
    })
    .await;
    let first_long = first_long["metadata"]["name"].as_str().unwrap().to_string();
    eventually("long's run replaced", Duration::from_secs(150), || async {
        let jobs = jobs_of(admin, "long");
        (jobs.len() == 1 && jobs[0]["metadata"]["name"] != first_long.as_str()).then_some(())
    })
    .await;
    assert!(jobs_of(admin, "tick").len() >= 2);
    assert!(
        jobs_of(admin, "idle").is_empty(),
        "a suspended cron job ran"
    );
    let events = ok(kubectl(
        admin,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=long",
            "-o",
            "json",
        ],
    ));
    assert!(events.contains("SuccessfulDelete"), "{events}");
    ok(kubectl(
        admin,
        &["delete", "cronjob", "tick", "long", "idle"],
    ));
}

/// The message of the first failed pull of pod `name` in `namespace` (its `Failed` event:
/// the waiting state soon reads `ImagePullBackOff`, which only says that it waits).
async fn pull_failed(kubeconfig: &Path, namespace: &str, name: &str) -> String {
    let selector = format!("involvedObject.name={name},reason=Failed");
    eventually(
        &format!("{namespace}/{name} failing its pull"),
        WAIT,
        || async {
            let out = kubectl(
                kubeconfig,
                &[
                    "get",
                    "events",
                    "-n",
                    namespace,
                    "--field-selector",
                    &selector,
                    "-o",
                    "json",
                ],
            );
            let list: Value = serde_json::from_slice(&out.stdout).ok()?;
            list["items"][0]["message"].as_str().map(str::to_string)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn private_images_pull_with_their_pods_secrets_and_through_the_nodes_mirrors() {
    let root = tempfile::tempdir().expect("a temp dir");
    // The node's registries file (k3s's registries.yaml): images of `mirror.test` come from
    // a mirror that asks for credentials only the node has.
    let mirror_port = keel_e2e::free_port();
    let file = root.path().join("registries.yaml");
    std::fs::write(
        &file,
        format!(
            "mirrors:\n  mirror.test:\n    endpoint: [\"http://127.0.0.1:{mirror_port}\"]\n\
             configs:\n  \"127.0.0.1:{mirror_port}\":\n    auth: {{username: bob, password: hunter2}}\n"
        ),
    )
    .unwrap();
    let flags = ["--private-registry", file.to_str().unwrap()];
    let host = pod_host_with(root.path(), "i", &[], &flags).await;
    let admin = &host.admin;
    let dir = |name: &str| {
        let d = root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let _mirror = Registry::start_private_at(
        &dir("mirror"),
        Some(&host.net),
        mirror_port,
        "bob",
        "hunter2",
    );
    let private = Registry::start_private(&dir("private"), Some(&host.net), "alice", "s3cret");
    let image = private.image("busybox:test");
    let sleep = ["--", "sleep", "3600"];

    // Without credentials the private registry refuses the pull.
    ok(kubectl(
        admin,
        &[&["run", "anonymous", "--image", &image][..], &sleep].concat(),
    ));
    let message = pull_failed(admin, "default", "anonymous").await;
    assert!(
        message.contains("401") || message.contains("nauthorized"),
        "{message}"
    );
    // With a docker-registry Secret named in imagePullSecrets it pulls.
    let server = image.split('/').next().unwrap();
    ok(kubectl(
        admin,
        &[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            &format!("--docker-server={server}"),
            "--docker-username=alice",
            "--docker-password=s3cret",
        ],
    ));
    let overrides = r#"{"spec":{"imagePullSecrets":[{"name":"regcred"}]}}"#;
    ok(kubectl(
        admin,
        &[
            &[
                "run",
                "entitled",
                "--image",
                &image,
                "--overrides",
                overrides,
            ][..],
            &sleep,
        ]
        .concat(),
    ));
    let out = kubectl(
        admin,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/entitled",
            "--timeout=120s",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        ok(kubectl(admin, &["describe", "pod", "entitled"]))
    );
    // The image is on the node now; a pod of another tenant without the credentials still
    // cannot use it: the node pulls again with that pod's own (none) and fails.
    ok(kubectl(admin, &["create", "namespace", "other"]));
    ok(kubectl(
        admin,
        &[
            &[
                "run",
                "thief",
                "-n",
                "other",
                "--image",
                &image,
                "--image-pull-policy=IfNotPresent",
            ][..],
            &sleep,
        ]
        .concat(),
    ));
    let message = pull_failed(admin, "other", "thief").await;
    assert!(
        message.contains("401") || message.contains("nauthorized"),
        "{message}"
    );
    // A Secret that does not exist is said in an event; the pull goes on without it.
    let missing = r#"{"spec":{"imagePullSecrets":[{"name":"nowhere"}]}}"#;
    ok(kubectl(
        admin,
        &[
            &[
                "run",
                "forgetful",
                "--image",
                &image,
                "--overrides",
                missing,
            ][..],
            &sleep,
        ]
        .concat(),
    ));
    pull_failed(admin, "default", "forgetful").await;
    let events = ok(kubectl(
        admin,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=forgetful",
            "-o",
            "json",
        ],
    ));
    assert!(
        events.contains("FailedToRetrieveImagePullSecret") && events.contains("nowhere"),
        "{events}"
    );

    // Through the node's mirror, with the node's credentials for it.
    ok(kubectl(
        admin,
        &[
            &["run", "mirrored", "--image", "mirror.test/busybox:test"][..],
            &sleep,
        ]
        .concat(),
    ));
    let out = kubectl(
        admin,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/mirrored",
            "--timeout=120s",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        ok(kubectl(admin, &["describe", "pod", "mirrored"])),
        host.agent.log()
    );
}

/// `kubectl get KIND -o json`'s items.
fn items(kubeconfig: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    let list: Value = serde_json::from_str(&ok(kubectl(kubeconfig, &all))).unwrap_or_default();
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The names of the pods of stateful set `web` that exist and are not being deleted.
fn web_pods(kubeconfig: &Path) -> Vec<String> {
    let mut names: Vec<String> = items(kubeconfig, &["pods", "-l", "app=web"])
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn stateful_sets_make_pods_in_order_with_stable_names_and_their_own_volumes() {
    let root = tempfile::tempdir().expect("a temp dir");
    let host = pod_host_with(root.path(), "s", &[], &["--dns-listen", "0.0.0.0:0"]).await;
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    // k3s's default class is there from the start.
    let classes = ok(kubectl(admin, &["get", "storageclass"]));
    assert!(classes.contains("local-path (default)"), "{classes}");
    assert!(classes.contains("rancher.io/local-path"), "{classes}");
    // A headless Service and a stateful set of three that serves and keeps what each of its
    // pods wrote at each start.
    let manifest = format!(
        r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "web"}},
          "spec": {{"clusterIP": "None", "selector": {{"app": "web"}}, "ports": [{{"name": "http", "port": 8080}}]}}}}
{{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {{"name": "web"}},
          "spec": {{"replicas": 3, "serviceName": "web",
            "selector": {{"matchLabels": {{"app": "web"}}}},
            "template": {{"metadata": {{"labels": {{"app": "web"}}}},
              "spec": {{"terminationGracePeriodSeconds": 1, "containers": [{{"name": "httpd", "image": "{image}",
                "command": ["sh", "-c", "hostname >> /data/boots; exec httpd -f -p 8080 -h /data"],
                "volumeMounts": [{{"name": "data", "mountPath": "/data"}}]}}]}}}},
            "volumeClaimTemplates": [{{"metadata": {{"name": "data"}},
              "spec": {{"accessModes": ["ReadWriteOnce"], "resources": {{"requests": {{"storage": "16Mi"}}}}}}}}]}}}}"#
    );
    let applied = std::time::Instant::now();
    ok(kubectl_with(admin, &[], &manifest, &["apply", "-f", "-"]));
    ok(kubectl_with(
        admin,
        &[],
        "",
        &["rollout", "status", "statefulset/web", "--timeout=120s"],
    ));
    // A figure, not a limit: three pods one after another, each with a volume made first.
    eprintln!(
        "figure: a 3-pod StatefulSet with a volume per pod was ready {} ms after kubectl apply",
        applied.elapsed().as_millis()
    );
    assert_eq!(web_pods(admin), ["web-0", "web-1", "web-2"]);
    // In order: each pod was made once the one before it was Ready.
    let pods = items(admin, &["pods", "-l", "app=web"]);
    let by_name = |name: &str| {
        pods.iter()
            .find(|p| p["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let ready_at = |p: &Value| {
        p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    for (before, after) in [("web-0", "web-1"), ("web-1", "web-2")] {
        let made = by_name(after)["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            made >= ready_at(&by_name(before)),
            "{after} made at {made}, before {before} was ready"
        );
    }
    for n in 0..3 {
        let p = by_name(&format!("web-{n}"));
        assert_eq!(p["spec"]["hostname"], format!("web-{n}"));
        assert_eq!(p["spec"]["subdomain"], "web");
        assert_eq!(
            p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            format!("web-{n}")
        );
    }
    // A claim per pod, each bound to a local volume on the node.
    let claims = items(admin, &["pvc"]);
    let mut names: Vec<&str> = claims
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["data-web-0", "data-web-1", "data-web-2"]);
    for c in &claims {
        assert_eq!(c["status"]["phase"], "Bound", "{c}");
        assert_eq!(c["spec"]["storageClassName"], "local-path", "{c}");
        assert_eq!(c["status"]["capacity"]["storage"], "16Mi", "{c}");
    }
    let volume_of = |claim: &str| {
        claims
            .iter()
            .find(|c| c["metadata"]["name"] == claim)
            .and_then(|c| c["spec"]["volumeName"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let volume = volume_of("data-web-1");
    let pv: Value =
        serde_json::from_str(&ok(kubectl(admin, &["get", "pv", &volume, "-o", "json"])))
            .expect("the volume");
    assert_eq!(pv["spec"]["claimRef"]["name"], "data-web-1");
    assert_eq!(pv["spec"]["csi"]["driver"], "local.keel.dev");
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
            [0],
        "pod-node"
    );
    let dir = host.agent.data_dir.join("pods/persistent").join(&volume);
    assert_eq!(
        std::fs::read_to_string(dir.join("boots")).expect("the volume's directory on the node"),
        "web-1\n"
    );
    // Each pod finds the others by their stable names under the Service.
    let port = dns_port(admin, &host.net.address).await;
    let ns = host.net.name.clone();
    let ip_of = |name: &str| {
        by_name(name)["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let web0 = ip_of("web-0");
    eventually("web-0's own name", WAIT, || async {
        keel_e2e::dig(
            Some(&ns),
            port,
            &["+short", "web-0.web.default.svc.cluster.local", "A"],
        )
        .contains(&web0)
        .then_some(())
    })
    .await;
    let looked = ok(kubectl(
        admin,
        &[
            "exec",
            "web-2",
            "--",
            "nslookup",
            "web-0.web.default.svc.cluster.local",
        ],
    ));
    assert!(looked.contains(&format!("Address: {web0}")), "{looked}");
    // A pod deleted comes back under its name, with its volume.
    ok(kubectl(
        admin,
        &[
            "exec",
            "web-1",
            "--",
            "sh",
            "-c",
            "echo kept > /data/marker",
        ],
    ));
    let old_uid = by_name("web-1")["metadata"]["uid"].clone();
    ok(kubectl(admin, &["delete", "pod", "web-1"]));
    eventually("web-1 made again and ready", WAIT, || async {
        let p = pod(admin, "web-1")?;
        let ready = p["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        (p["metadata"]["uid"] != old_uid && ready).then_some(())
    })
    .await;
    let data = ok(kubectl(
        admin,
        &[
            "exec",
            "web-1",
            "--",
            "sh",
            "-c",
            "cat /data/marker /data/boots",
        ],
    ));
    assert_eq!(data, "kept\nweb-1\nweb-1\n");
    // Scaled down: from the highest ordinal, one at a time; the claims stay.
    ok(kubectl(
        admin,
        &["scale", "statefulset", "web", "--replicas=1"],
    ));
    let mut seen: Vec<Vec<String>> = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = web_pods(admin);
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now == ["web-0"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "web not scaled to one pod: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // web-2 never stays once web-1 is gone.
    let has = |s: &[String], name: &str| s.iter().any(|n| n == name);
    assert!(
        seen.iter().all(|s| !has(s, "web-2") || has(s, "web-1")),
        "web-1 went before web-2: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s == &["web-0", "web-1"]),
        "one at a time: {seen:?}"
    );
    assert_eq!(items(admin, &["pvc"]).len(), 3, "the claims are retained");
    // Scaled up again, web-1 finds its data.
    ok(kubectl(
        admin,
        &["scale", "statefulset", "web", "--replicas=2"],
    ));
    ok(kubectl_with(
        admin,
        &[],
        "",
        &["rollout", "status", "statefulset/web", "--timeout=120s"],
    ));
    let data = ok(kubectl(
        admin,
        &["exec", "web-1", "--", "cat", "/data/marker"],
    ));
    assert_eq!(data, "kept\n");
    // Hostile: a claim of another namespace that names web-1's volume is not bound to it,
    // and a pod using it is not placed.
    ok(kubectl(admin, &["create", "namespace", "thief"]));
    let stolen = format!(
        r#"{{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {{"name": "loot", "namespace": "thief"}},
          "spec": {{"accessModes": ["ReadWriteOnce"], "volumeName": "{volume}", "resources": {{"requests": {{"storage": "16Mi"}}}}}}}}
{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "reader", "namespace": "thief"}},
          "spec": {{"containers": [{{"name": "c", "image": "{image}", "command": ["cat", "/loot/marker"],
            "volumeMounts": [{{"name": "loot", "mountPath": "/loot"}}]}}],
            "volumes": [{{"name": "loot", "persistentVolumeClaim": {{"claimName": "loot"}}}}]}}}}"#
    );
    // (Until the namespace's default service account is made, its pods are refused.)
    eventually("the thief's claim and pod", WAIT, || async {
        let out = kubectl_with(admin, &[], &stolen, &["apply", "-f", "-"]);
        out.status.success().then_some(())
    })
    .await;
    let why = unschedulable(admin, "thief", "reader").await;
    assert!(
        why["message"]
            .as_str()
            .is_some_and(|m| m.contains("bound to a different claim")),
        "{why}"
    );
    let loot: Value = serde_json::from_str(&ok(kubectl(
        admin,
        &["get", "pvc", "loot", "-n", "thief", "-o", "json"],
    )))
    .expect("the claim");
    assert_eq!(loot["status"]["phase"], "Pending", "{loot}");
    // A pod whose claim does not exist says so.
    ok(kubectl(
        admin,
        &[
            "run",
            "orphan",
            "--image",
            &image,
            "--restart=Never",
            "--overrides",
            r#"{"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "nope"}}]}}"#,
        ],
    ));
    let why = unschedulable(admin, "default", "orphan").await;
    assert!(
        why["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"persistentvolumeclaim "nope" not found"#)),
        "{why}"
    );
    // The set deleted, its pods go; a claim deleted, its volume and directory go.
    ok(kubectl(admin, &["delete", "statefulset", "web"]));
    eventually("web's pods gone", WAIT, || async {
        web_pods(admin).is_empty().then_some(())
    })
    .await;
    ok(kubectl(admin, &["delete", "pvc", "data-web-1"]));
    eventually("web-1's volume deleted", WAIT, || async {
        let out = kubectl(admin, &["get", "pv", &volume]);
        (!out.status.success()).then_some(())
    })
    .await;
    eventually("web-1's directory removed", WAIT, || async {
        (!dir.exists()).then_some(())
    })
    .await;
    let kept = host
        .agent
        .data_dir
        .join("pods/persistent")
        .join(volume_of("data-web-0"));
    assert!(kept.join("boots").exists(), "web-0's volume stays");
    drop(host.cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_the_api_as_their_service_account_with_a_token_bound_to_them() {
    let root = tempfile::tempdir().expect("a temp dir");
    let host = pod_host(root.path(), "k").await;
    let admin = &host.admin;
    let image = host.registry.image("busybox:test");
    // The API's Service, at the first address of the Service range, leads to the server.
    let endpoint = eventually("the kubernetes Service's endpoint", WAIT, || async {
        let out = kubectl(
            admin,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=kubernetes",
                "-o",
                "jsonpath={.items[0].endpoints[0].addresses[0]}:{.items[0].ports[0].port}",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (text == format!("{}:{}", host.cluster.bridge.address(), host.cluster.port)).then_some(text)
    })
    .await;
    let ip = cluster_ip(admin, "kubernetes").await;
    assert_eq!(ip, "10.43.0.1", "{endpoint}");
    // A pod gets its account's token, the cluster CA and its namespace, and where the API
    // is; the API answers it there (a TLS alert, 15 03 03, to a plain HTTP request).
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "ls {dir}; cat {dir}/namespace; echo; env | grep ^KUBERNETES_SERVICE | sort; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT | od -An -tx1 | head -1; \
         sleep 3600"
    );
    ok(kubectl(
        admin,
        &["run", "api", "--image", &image, "--", "sh", "-c", &script],
    ));
    let logs = eventually("the api pod's output", WAIT, || async {
        let out = kubectl(admin, &["logs", "api"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains(" 15 03 03").then_some(text)
    })
    .await;
    for want in [
        "ca.crt\nnamespace\ntoken\ndefault\n",
        "KUBERNETES_SERVICE_HOST=10.43.0.1\n",
        "KUBERNETES_SERVICE_PORT=443\n",
    ] {
        assert!(logs.contains(want), "{want:?} in {logs}");
    }
    let p = pod(admin, "api").expect("the pod");
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    let volume = p["spec"]["volumes"][0]["name"].as_str().unwrap_or_default();
    assert!(volume.starts_with("kube-api-access-"), "{p}");
    // Its token and CA work from outside: the API says who it is, and that it is the pod's.
    let read = |file: &str| {
        ok(kubectl(
            admin,
            &["exec", "api", "--", "cat", &format!("{dir}/{file}")],
        ))
    };
    let ca = root.path().join("pod-ca.crt");
    std::fs::write(&ca, read("ca.crt")).expect("write the pod's CA");
    let token = read("token");
    let whoami = |token: &str| {
        Command::new("kubectl")
            .env("HOME", std::env::temp_dir())
            .args(["--kubeconfig", "/dev/null", "--server", &host.cluster.url])
            .arg(format!("--certificate-authority={}", ca.display()))
            .args(["--token", token, "auth", "whoami", "-o", "json"])
            .output()
            .expect("kubectl")
    };
    let me: Value = serde_json::from_str(&ok(whoami(&token))).expect("whoami");
    let user = &me["status"]["userInfo"];
    assert_eq!(user["username"], "system:serviceaccount:default:default");
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/pod-name"][0],
        "api"
    );
    // A pod that turns the token off gets none; one naming an account that does not exist
    // is refused.
    let off = r#"{"spec": {"automountServiceAccountToken": false}}"#;
    ok(kubectl(
        admin,
        &[
            "run",
            "quiet",
            "--image",
            &image,
            "--overrides",
            off,
            "--",
            "sleep",
            "3600",
        ],
    ));
    let quiet = pod(admin, "quiet").expect("the quiet pod");
    assert!(
        quiet["spec"]["volumes"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{quiet}"
    );
    let named = r#"{"spec": {"serviceAccountName": "ghost"}}"#;
    let refused = kubectl(
        admin,
        &[
            "run",
            "ghost",
            "--image",
            &image,
            "--overrides",
            named,
            "--",
            "true",
        ],
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(r#"serviceaccount "ghost" not found"#),
        "{said}"
    );
    // The pod gone, its token stops working.
    ok(kubectl(
        admin,
        &["delete", "pod", "api", "--grace-period=1"],
    ));
    let out = whoami(&token);
    assert!(!out.status.success(), "a deleted pod's token still works");
    drop(host.cluster);
}
