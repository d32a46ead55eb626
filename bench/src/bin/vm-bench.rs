//! `vm-bench`: how long Keel takes from `apply` to `Ready` for 1 and for 10 VMs on one host,
//! next to the same `qemu-system-x86_64` command started by hand and probed the same way (an
//! HTTP GET through the forwarded port answering 200), and the agent's own CPU and memory
//! while 10 guests run.
//!
//! It starts a `keel server` (no local agent) and a `keel agent` as separate processes, so
//! that the agent's figures are its own, and boots the test guest (`e2e/guest/build.sh`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use keel_client::{Api, DeleteParams};
use serde_json::{Value, json};

/// apply-to-Ready of VMs on one host, against QEMU started by hand.
#[derive(Parser, Debug)]
struct Args {
    /// VMs started at once in the second round.
    #[arg(long, default_value_t = 10)]
    vms: usize,
    /// The guest kernel (default: ~/.cache/keel/guest/vmlinuz, see e2e/guest/build.sh).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The guest initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// The keel binary (default: next to this one).
    #[arg(long)]
    keel: Option<PathBuf>,
    /// Seconds over which the agent's CPU is sampled while the guests run.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
}

async fn http_ok(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).contains(" 200 "))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The ClusterImages the bench's VMs boot (VMs name images by catalogue entry, never by path).
const KERNEL_IMAGE: &str = "bench-kernel";
const INITRD_IMAGE: &str = "bench-initrd";

/// Puts the guest's kernel and initrd in the image catalogue.
async fn publish(
    client: &keel_client::Client,
    kernel: &Path,
    initrd: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let kind = keel_schemas::lookup("clusterimages").ok_or("no ClusterImage kind")?;
    let images: Api<Value> = Api::all(client, kind);
    for (name, path) in [(KERNEL_IMAGE, kernel), (INITRD_IMAGE, initrd)] {
        images
            .create(
                &json!({"apiVersion": "keel.dev/v1alpha1", "kind": "ClusterImage",
                "metadata": {"name": name}, "spec": {"path": path, "format": "raw"}}),
            )
            .await?;
    }
    Ok(())
}

fn vm(name: &str) -> Value {
    json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"cpu": 1, "memory": "128Mi", "kernel": KERNEL_IMAGE, "initrd": INITRD_IMAGE,
                 "cmdline": "console=ttyS0 quiet", "terminationGracePeriodSeconds": 5,
                 "readinessProbe": {"http": {"port": 8080, "path": "/"}}}})
}

fn ready(vm: &Value) -> bool {
    vm["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Applies `names` at once and returns each one's seconds to Ready.
async fn round(vms: &Api<Value>, names: &[String]) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let started = Instant::now();
    for name in names {
        vms.create(&vm(name)).await?;
    }
    let mut times = vec![0.0; names.len()];
    let deadline = started + Duration::from_secs(600);
    while times.contains(&0.0) {
        for (i, name) in names.iter().enumerate() {
            if times[i] == 0.0 && ready(&vms.get(name).await?) {
                times[i] = started.elapsed().as_secs_f64();
            }
        }
        if Instant::now() > deadline {
            return Err("VMs not ready within 600s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(times)
}

/// Starts `n` copies of QEMU's command line as Keel ran it (own sockets and ports) and
/// returns each one's seconds until its HTTP port answers, and the processes.
async fn by_hand(
    command: &[String],
    n: usize,
    dir: &Path,
) -> Result<(Vec<f64>, Vec<Child>), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for i in 0..n {
        let own = dir.join(format!("hand-{i}"));
        std::fs::create_dir_all(&own)?;
        let host_port = keel_bench::free_port();
        let args: Vec<String> = command[1..]
            .iter()
            .map(|a| {
                if a.starts_with("unix:") {
                    let file = a
                        .split(',')
                        .next()
                        .unwrap_or("")
                        .rsplit('/')
                        .next()
                        .unwrap_or("qmp.sock");
                    format!("unix:{}/{file},server=on,wait=off", own.display())
                } else if a.contains("hostfwd=") {
                    let (head, _) = a.split_once("hostfwd=").unwrap_or((a, ""));
                    format!("{head}hostfwd=tcp:127.0.0.1:{host_port}-:8080")
                } else if a.ends_with("qemu.pid") {
                    own.join("qemu.pid").display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        children.push(
            Command::new(&command[0])
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        ports.push(host_port);
    }
    let mut times = vec![0.0; n];
    let deadline = started + Duration::from_secs(600);
    while times.contains(&0.0) {
        for (i, p) in ports.iter().enumerate() {
            if times[i] == 0.0 && http_ok(*p).await {
                times[i] = started.elapsed().as_secs_f64();
            }
        }
        if Instant::now() > deadline {
            return Err("hand-started QEMU not answering within 600s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((times, children))
}

fn summary(times: &[f64]) -> String {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    format!(
        "first {:.2}s, median {:.2}s, last {:.2}s",
        t[0],
        t[t.len() / 2],
        t[t.len() - 1]
    )
}

async fn delete_all(vms: &Api<Value>, names: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    for name in names {
        vms.delete(name, &DeleteParams::default()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for name in names {
        while vms.get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                return Err(format!("{name} not deleted").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let keel = keel_bench::server::keel_binary(args.keel.clone())?;
    let guest = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
        .join(".cache/keel/guest");
    let kernel = args.kernel.unwrap_or_else(|| guest.join("vmlinuz"));
    let initrd = args.initrd.unwrap_or_else(|| guest.join("initrd.img"));
    if !kernel.exists() || !initrd.exists() {
        return Err(format!("no guest at {} (run e2e/guest/build.sh)", kernel.display()).into());
    }
    // Short paths: QMP socket paths are limited to 107 bytes.
    let dir = tempfile::Builder::new().prefix("vmb").tempdir_in("/tmp")?;
    let server = keel_bench::server::start_server(&keel, dir.path(), &[]).await?;
    let client = server.client.clone();
    publish(&client, &kernel, &initrd).await?;
    let data = server.data.clone();
    let api_url = server.url.clone();
    let join = std::fs::read_to_string(data.agent_token())?;
    let mut agent = Command::new(&keel)
        .args(["agent", "--server", &api_url, "--token", join.trim()])
        .args(["--node-name", "bench", "--data-dir"])
        .arg(dir.path().join("a"))
        .args([
            "--dns-listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--cpu-allocation-ratio",
            "16",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log"))?)
        .spawn()?;
    let nodes: Api<Value> = Api::all(&client, keel_schemas::lookup("nodes").ok_or("Node")?);
    let deadline = Instant::now() + Duration::from_secs(60);
    let accelerator = loop {
        if let Some(node) = nodes.get_opt("bench").await?
            && ready(&node)
        {
            let kvm = node["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "KVMAvailable"))
                .is_some_and(|c| c["status"] == "True");
            break if kvm { "kvm" } else { "tcg" };
        }
        if Instant::now() > deadline {
            return Err("the agent did not register".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let vms: Api<Value> =
        Api::namespaced(&client, keel_schemas::lookup("vm").ok_or("VM")?, "default");
    println!(
        "host: {} cores, accelerator {accelerator}; guest: Debian kernel + busybox initramfs, 1 vCPU, 128 MiB, Ready = HTTP 200 on guest port 8080",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // One VM: Keel, then the very command Keel ran, by hand.
    let one = vec!["one".to_string()];
    let keel_one = round(&vms, &one).await?;
    let pid = vms.get("one").await?["status"]["qemuPid"]
        .as_u64()
        .ok_or("no qemuPid")?;
    let command: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))?
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    delete_all(&vms, &one).await?;
    let (hand_one, mut children) = by_hand(&command, 1, dir.path()).await?;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!(
        "1 VM:   keel apply->Ready {:.2}s | qemu by hand ->HTTP 200 {:.2}s | ratio {:.2}",
        keel_one[0],
        hand_one[0],
        keel_one[0] / hand_one[0]
    );

    // N VMs at once.
    let names: Vec<String> = (0..args.vms).map(|i| format!("vm-{i}")).collect();
    let keel_n = round(&vms, &names).await?;
    let agent_pid = agent.id();
    let (cpu0, _) = keel_bench::usage(agent_pid);
    tokio::time::sleep(Duration::from_secs(args.sample_seconds)).await;
    let (cpu1, rss) = keel_bench::usage(agent_pid);
    delete_all(&vms, &names).await?;
    let (hand_n, mut children) = by_hand(&command, args.vms, dir.path()).await?;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let last = |t: &[f64]| t.iter().copied().fold(0.0, f64::max);
    println!(
        "{} VMs: keel apply->all Ready {:.2}s ({}) | qemu by hand {:.2}s ({}) | ratio {:.2}",
        args.vms,
        last(&keel_n),
        summary(&keel_n),
        last(&hand_n),
        summary(&hand_n),
        last(&keel_n) / last(&hand_n)
    );
    println!(
        "agent with {} guests running: CPU {:.1}% of one core (over {}s), RSS {} MiB",
        args.vms,
        (cpu1 - cpu0) / args.sample_seconds as f64 * 100.0,
        args.sample_seconds,
        rss / 1024
    );
    let _ = agent.kill();
    let _ = agent.wait();
    drop(server);
    // The agent's guests outlive it by design: stop any left.
    let _ = Command::new("pkill")
        .args(["-f", &dir.path().join("a").display().to_string()])
        .status();
    Ok(())
}
