//! `network-bench`: how long the network controller takes to converge an empty OVN
//! northbound database to 100 subnets and 2,000 NIC ports, and what one pass costs when
//! nothing changed (it should read only: no transaction, no status write).
//!
//! It starts a `keel server` process and an `ovsdb-server` with OVN's northbound schema,
//! creates the objects through the API first, then runs the controller's passes in this
//! process and times them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use keel_client::{Api, ClientError};
use keel_controllers::network::{Caches, connect, pass};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Convergence of the network controller on a real northbound database.
#[derive(Parser, Debug)]
struct Args {
    /// Subnets (each a /24 of one VPC).
    #[arg(long, default_value_t = 100)]
    subnets: usize,
    /// NICs (VMs with one NIC each, spread over the subnets).
    #[arg(long, default_value_t = 2000)]
    ports: usize,
    /// Concurrent creators.
    #[arg(long, default_value_t = 32)]
    creators: usize,
    /// The keel binary (default: next to this one).
    #[arg(long)]
    keel: Option<PathBuf>,
}

async fn create_all(
    api: &Api<Value>,
    objects: Vec<Value>,
    creators: usize,
) -> Result<(), ClientError> {
    let objects = Arc::new(objects);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..creators {
        let (api, objects, next) = (api.clone(), objects.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(o) = objects.get(i) else {
                    return Ok::<(), ClientError>(());
                };
                api.create(o).await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| ClientError::Config(e.to_string()))??;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let keel = keel_bench::server::keel_binary(args.keel.clone())?;
    let dir = tempfile::Builder::new().prefix("nwb").tempdir_in("/tmp")?;
    // The northbound database.
    let db = dir.path().join("nb.db");
    let status = Command::new("ovsdb-tool")
        .arg("create")
        .arg(&db)
        .arg("/usr/share/ovn/ovn-nb.ovsschema")
        .status()?;
    if !status.success() {
        return Err("ovsdb-tool create failed (install ovn-central)".into());
    }
    let socket = dir.path().join("nb.sock");
    let mut nb_server = Command::new("ovsdb-server")
        .arg(&db)
        .arg(format!("--remote=punix:{}", socket.display()))
        .arg(format!("--unixctl={}", dir.path().join("nb.ctl").display()))
        .arg("--no-chdir")
        .stderr(Stdio::null())
        .spawn()?;
    // The API server.
    let server = keel_bench::server::start_server(&keel, dir.path(), &[]).await?;
    let client = server.client.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            let _ = nb_server.kill();
            return Err("ovsdb-server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kind = |p: &str| keel_schemas::lookup(p).ok_or(format!("{p} is not registered"));
    let started = Instant::now();
    Api::<Value>::namespaced(&client, kind("vpcs")?, "default")
        .create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VPC", "metadata": {"name": "main"}, "spec": {"cidr": "10.0.0.0/8"}}))
        .await?;
    let subnets: Vec<Value> = (0..args.subnets)
        .map(|i| json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Subnet", "metadata": {"name": format!("s{i}")},
                        "spec": {"vpc": "main", "cidr": format!("10.{}.{}.0/24", i / 256, i % 256)}}))
        .collect();
    create_all(
        &Api::namespaced(&client, kind("subnets")?, "default"),
        subnets,
        args.creators,
    )
    .await?;
    let vms: Vec<Value> = (0..args.ports)
        .map(|i| json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": format!("vm-{i}")},
                        "spec": {"cpu": 1, "memory": "128Mi", "kernel": "k", "nics": [{"subnet": format!("s{}", i % args.subnets)}]}}))
        .collect();
    create_all(
        &Api::namespaced(&client, kind("virtualmachines")?, "default"),
        vms,
        args.creators,
    )
    .await?;
    println!(
        "created 1 VPC, {} subnets and {} VMs with one NIC each through the API in {:.2}s",
        args.subnets,
        args.ports,
        started.elapsed().as_secs_f64()
    );

    // The controller's passes, from an empty northbound database.
    let notify = Arc::new(Notify::new());
    let caches = Caches::new();
    let _feeds = caches.watch(&client, notify.clone());
    caches.wait_ready().await;
    let nb = connect(
        &format!("unix:{}", socket.display()),
        &caches,
        notify.clone(),
    )
    .await?;
    let converging = Instant::now();
    let mut passes = Vec::new();
    loop {
        let t = Instant::now();
        let report = match pass(&client, &nb, &caches, None).await {
            Ok(r) => r,
            Err(e) => {
                // A conflict on a subnet's allocations: the next pass starts from its new state.
                eprintln!("pass: {e}");
                keel_controllers::network::PassReport::default()
            }
        };
        passes.push((t.elapsed(), report.clone()));
        if report.operations == 0 && report.status_writes == 0 && passes.len() > 1 {
            break;
        }
        // As the controller does: let the caches take in what the pass wrote.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if converging.elapsed() > Duration::from_secs(600) {
            return Err("no convergence in 600s".into());
        }
    }
    let converged = converging.elapsed();
    let ops: usize = passes.iter().map(|(_, r)| r.operations).sum();
    let writes: usize = passes.iter().map(|(_, r)| r.status_writes).sum();
    let (first_took, first) = &passes[0];
    println!(
        "converged {} subnets and {} ports from an empty NB in {:.2}s over {} passes: {} NB operations in all (first pass {:.2}s, {} operations, {} status writes), {} status writes in all",
        args.subnets,
        args.ports,
        converged.as_secs_f64(),
        passes.len(),
        ops,
        first_took.as_secs_f64(),
        first.operations,
        first.status_writes,
        writes
    );
    let lsps = nb
        .transact("OVN_Northbound", &[json!({"op": "select", "table": "Logical_Switch_Port", "where": [], "columns": ["name"]})])
        .await?;
    println!(
        "NB now holds {} logical switch ports",
        lsps[0]["rows"].as_array().map_or(0, Vec::len)
    );
    // Nothing changed: one pass, timed, counting what it sent.
    let mut quiet = Vec::new();
    for _ in 0..5 {
        let before = nb.requests();
        let t = Instant::now();
        let report = pass(&client, &nb, &caches, None).await?;
        quiet.push((t.elapsed(), report, nb.requests() - before));
    }
    quiet.sort_by_key(|(d, _, _)| *d);
    let (median, report, requests) = &quiet[quiet.len() / 2];
    println!(
        "a pass when nothing changed: median {:.1} ms of 5 (min {:.1} ms); {} NB operations, {} NB requests, {} status writes",
        median.as_secs_f64() * 1000.0,
        quiet[0].0.as_secs_f64() * 1000.0,
        report.operations,
        requests,
        report.status_writes
    );
    drop(server);
    let _ = nb_server.kill();
    let _ = nb_server.wait();
    Ok(())
}
