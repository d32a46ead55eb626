//! `pod-bench`: how long Keel takes from applying a Deployment of 1 and of 30 pods to all of
//! them Ready, next to the same pods made directly through containerd's CRI (the floor:
//! RunPodSandbox, CreateContainer, StartContainer, until the container runs), and the
//! agent's CPU and memory with 30 pods running.
//!
//! It starts a `keel server` on a bridge and a `keel agent` with the pod role in a network
//! namespace on it (its own containerd, as on any host), builds the busybox image offline
//! and serves it from Debian's `docker-registry` in that namespace. The floor runs on the
//! agent's own containerd, once the agent is gone (its containerd keeps running), with the
//! same images already pulled, as Keel's rounds had them.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use keel_client::{Api, DeleteParams};
use keel_e2e::pods::Registry;
use keel_e2e::{BridgedServer, KeelAgent};
use keel_pods::cri::{Cri, v1};
use serde_json::{Value, json};

/// apply-to-Ready of pods on one host, against containerd's CRI by hand.
#[derive(Parser, Debug)]
struct Args {
    /// Pods of the second round.
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Seconds over which the agent's CPU is sampled while the pods run.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
}

fn deployment(name: &str, replicas: usize, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]}}}})
}

/// Applies a Deployment of `replicas` pods and returns the seconds until all are Ready.
async fn keel_round(
    deployments: &Api<Value>,
    name: &str,
    replicas: usize,
    image: &str,
) -> Result<f64, Box<dyn std::error::Error>> {
    let started = Instant::now();
    deployments
        .create(&deployment(name, replicas, image))
        .await?;
    keel_bench::eventually(
        &format!("{replicas} pods Ready"),
        Duration::from_secs(600),
        || async {
            let d = deployments.get(name).await.ok()?;
            (d["status"]["readyReplicas"].as_u64() == Some(replicas as u64)).then_some(())
        },
    )
    .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Deletes the Deployment and waits until none of its pods is left.
async fn keel_delete(
    deployments: &Api<Value>,
    pods: &Api<Value>,
    name: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    deployments.delete(name, &DeleteParams::default()).await?;
    let selector = format!("app={name}");
    keel_bench::eventually("the pods gone", Duration::from_secs(300), || async {
        let list = pods
            .list(&keel_client::ListParams {
                label_selector: Some(selector.clone()),
                ..Default::default()
            })
            .await
            .ok()?;
        list.items.is_empty().then_some(())
    })
    .await?;
    Ok(())
}

/// Makes one pod by hand through CRI, as the agent does, and returns once its container
/// runs.
async fn cri_pod(cri: Cri, logs: &Path, i: usize, image: String) -> Result<(), String> {
    let uid = format!("floor-{i}");
    let config = v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: uid.clone(),
            uid: uid.clone(),
            namespace: "floor".into(),
            attempt: 0,
        }),
        hostname: uid.clone(),
        log_directory: logs.join(&uid).display().to_string(),
        linux: Some(v1::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let sandbox = cri
        .runtime
        .clone()
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner()
        .pod_sandbox_id;
    let container = v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image,
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "c/0.log".into(),
        linux: Some(v1::LinuxContainerConfig::default()),
        ..Default::default()
    };
    let id = cri
        .runtime
        .clone()
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: sandbox,
            config: Some(container),
            sandbox_config: Some(config),
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner()
        .container_id;
    cri.runtime
        .clone()
        .start_container(v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|s| s.message().to_string())?;
    loop {
        let status = cri
            .runtime
            .clone()
            .container_status(v1::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner()
            .status;
        if status.is_some_and(|s| s.state == v1::ContainerState::ContainerRunning as i32) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` pods by hand at once: the seconds until all run.
async fn cri_round(cri: &Cri, logs: &Path, n: usize, image: &str) -> Result<f64, String> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (cri, logs, image) = (cri.clone(), logs.to_path_buf(), image.to_string());
            tokio::spawn(async move { cri_pod(cri, &logs, i, image).await })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Removes every sandbox of the floor.
async fn cri_clean(cri: &Cri) -> Result<(), String> {
    let sandboxes = cri
        .runtime
        .clone()
        .list_pod_sandbox(v1::ListPodSandboxRequest::default())
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner()
        .items;
    for s in sandboxes {
        let id = s.id;
        let _ = cri
            .runtime
            .clone()
            .stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        let _ = cri
            .runtime
            .clone()
            .remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // The servers and agents are started by the e2e helpers: the `keel` binary next to this
    // one (or `KEEL_BIN`).
    let dir = tempfile::Builder::new().prefix("podb").tempdir_in("/tmp")?;
    let root = dir.path();
    let cluster = BridgedServer::start(root, "pb", &[]).await;
    let net = cluster.bridge.netns(2);
    let registry = Registry::start(root, Some(&net));
    let image = registry.image("busybox:test");
    let mut agent = KeelAgent::new(root, "bench", Some(&net));
    let mut flags = registry.agent_flags();
    flags.extend(["--cpu-allocation-ratio".to_string(), "64".to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    agent.start(&cluster.url, &cluster.agent_token, &flags);
    let client = cluster.client.clone();
    let nodes: Api<Value> = Api::all(&client, keel_schemas::lookup("nodes").ok_or("Node")?);
    keel_bench::eventually(
        "the node with its pod range",
        Duration::from_secs(120),
        || async {
            let node = nodes.get_opt("bench").await.ok()??;
            node["spec"]["podCIDR"].is_string().then_some(())
        },
    )
    .await?;
    let deployments: Api<Value> = Api::namespaced(
        &client,
        keel_schemas::lookup("deployments").ok_or("Deployment")?,
        "default",
    );
    let pods: Api<Value> = Api::namespaced(
        &client,
        keel_schemas::lookup("pods").ok_or("Pod")?,
        "default",
    );
    println!(
        "host: {} cores; pods: busybox `sleep 3600`, Ready = the kubelet's Ready condition (container running); floor = RunPodSandbox + CreateContainer + StartContainer until running, on the same containerd",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // Warm-up: pulls the images, as the floor finds them.
    let warm = keel_round(&deployments, "warm", 1, &image).await?;
    keel_delete(&deployments, &pods, "warm").await?;
    let keel_one = keel_round(&deployments, "one", 1, &image).await?;
    keel_delete(&deployments, &pods, "one").await?;
    let keel_n = keel_round(&deployments, "many", args.pods, &image).await?;
    let pid = agent.pid().ok_or("the agent is not running")?;
    let containerd_pid: u32 =
        std::fs::read_to_string(agent.dir().pods().join("containerd/containerd.pid"))?
            .trim()
            .parse()?;
    let (cpu0, _) = keel_bench::usage(pid);
    tokio::time::sleep(Duration::from_secs(args.sample_seconds)).await;
    let (cpu1, rss) = keel_bench::usage(pid);
    let (_, containerd_rss) = keel_bench::usage(containerd_pid);
    keel_delete(&deployments, &pods, "many").await?;
    // The floor, on the agent's containerd once the agent is gone (so that nothing sweeps
    // the hand-made pods).
    agent.kill();
    let cri = Cri::new(&agent.dir().pods().join("containerd/containerd.sock"));
    let logs = root.join("floor-logs");
    let floor_one = cri_round(&cri, &logs, 1, &image).await?;
    cri_clean(&cri).await?;
    let floor_n = cri_round(&cri, &logs, args.pods, &image).await?;
    cri_clean(&cri).await?;
    println!("warm-up (image pulls): keel 1 pod {warm:.2}s");
    println!(
        "1 pod:    keel apply->Ready {keel_one:.2}s | CRI by hand ->running {floor_one:.2}s | ratio {:.2}",
        keel_one / floor_one
    );
    println!(
        "{} pods:  keel apply->all Ready {keel_n:.2}s | CRI by hand, all at once {floor_n:.2}s | ratio {:.2}",
        args.pods,
        keel_n / floor_n
    );
    println!(
        "agent with {} pods running: CPU {:.1}% of one core over {}s, RSS {:.1} MiB (its containerd: RSS {:.1} MiB)",
        args.pods,
        (cpu1 - cpu0) / args.sample_seconds as f64 * 100.0,
        args.sample_seconds,
        rss as f64 / 1024.0,
        containerd_rss as f64 / 1024.0
    );
    drop(agent);
    drop(registry);
    drop(net);
    drop(cluster);
    Ok(())
}
