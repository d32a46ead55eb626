//! `reconcile-bench`: reconcile throughput of Keel's controller runtime. Starts a `keel
//! server` process, runs a controller with a trivial reconciler (it writes
//! `status.observedGeneration`) in this process, creates N SecurityGroups, and reports how
//! fast they reach `observedGeneration == generation`, and this (the controller's) process's
//! memory. The controller is typed (`Controller<SecurityGroup>`, as Keel's are) unless
//! `--untyped` asks for the JSON form.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use keel_client::{Api, ClientError, Patch};
use keel_runtime::{Action, Controller, ObjectExt, Resource, watcher};
use keel_schemas::kinds::network::SecurityGroup;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Reconcile throughput of the controller runtime against a real server.
#[derive(Parser, Debug)]
struct Args {
    /// Objects to create.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Concurrent creators.
    #[arg(long, default_value_t = 32)]
    creators: usize,
    /// Reconciles at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The keel binary (default: next to this one).
    #[arg(long)]
    keel: Option<PathBuf>,
    /// Reconcile the JSON form (`Controller<Value>`) instead of the typed one.
    #[arg(long)]
    untyped: bool,
}

/// What the reconciler reads: `status.observedGeneration`, in either form.
trait Observed: Resource {
    fn observed(&self) -> Option<i64>;
}

impl Observed for Value {
    fn observed(&self) -> Option<i64> {
        self["status"]["observedGeneration"].as_i64()
    }
}

impl Observed for SecurityGroup {
    fn observed(&self) -> Option<i64> {
        self.status.as_ref()?.observed_generation
    }
}

struct Ctx {
    api: Api<Value>,
    observed: Mutex<HashSet<String>>,
    done: watch::Sender<usize>,
}

async fn reconcile<K: Observed>(sg: Arc<K>, ctx: Arc<Ctx>) -> Result<Action, ClientError> {
    if sg.observed() != Some(sg.generation()) {
        let patch = json!({"status": {"observedGeneration": sg.generation()}});
        ctx.api
            .patch_status(sg.name(), &Patch::Merge(patch))
            .await?;
    } else {
        let mut seen = ctx.observed.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(sg.name().to_string()) {
            ctx.done.send_replace(seen.len());
        }
    }
    Ok(Action::await_change())
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let keel = keel_bench::server::keel_binary(args.keel.clone())?;
    let dir = tempfile::tempdir()?;
    let server = keel_bench::server::start_server(&keel, dir.path(), &[]).await?;
    let client = server.client.clone();
    let kind = keel_schemas::lookup("securitygroups").ok_or("SecurityGroup is not registered")?;
    let api: Api<Value> = Api::namespaced(&client, kind, "default");
    let (done_tx, mut done) = watch::channel(0usize);
    let ctx = Arc::new(Ctx {
        api: api.clone(),
        observed: Mutex::default(),
        done: done_tx,
    });
    let rss_before = rss_kib("VmRSS:");
    let (stop, stopped) = watch::channel(false);
    let task = if args.untyped {
        let controller = Controller::<Value>::new("bench", api.clone(), watcher::Config::default())
            .concurrency(args.concurrency);
        tokio::spawn(controller.run(reconcile::<Value>, ctx.clone(), stopped))
    } else {
        let controller =
            Controller::<SecurityGroup>::new("bench", api.cast(), watcher::Config::default())
                .concurrency(args.concurrency);
        tokio::spawn(controller.run(reconcile::<SecurityGroup>, ctx.clone(), stopped))
    };

    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = Vec::new();
    for _ in 0..args.creators {
        let (api, next, n) = (api.clone(), next.clone(), args.objects);
        creators.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), ClientError>(());
                }
                let sg = json!({"apiVersion": "keel.dev/v1alpha1", "kind": "SecurityGroup",
                    "metadata": {"name": format!("sg-{i}")},
                    "spec": {"ingress": [{"protocol": "TCP", "ports": "80", "from": {"cidr": "0.0.0.0/0"}}]}});
                api.create(&sg).await?;
            }
        }));
    }
    for c in creators {
        c.await??;
    }
    let created = started.elapsed();
    done.wait_for(|n| *n >= args.objects).await?;
    let observed = started.elapsed();
    let metrics = keel_runtime::metrics::controller("bench");
    println!(
        "objects={} creators={} concurrency={} controller={}",
        args.objects,
        args.creators,
        args.concurrency,
        if args.untyped {
            "Controller<Value>"
        } else {
            "Controller<SecurityGroup>"
        }
    );
    println!(
        "created in {:.2}s ({:.0}/s); all observed (observedGeneration == generation) in {:.2}s: {:.0} objects/s end to end",
        created.as_secs_f64(),
        args.objects as f64 / created.as_secs_f64(),
        observed.as_secs_f64(),
        args.objects as f64 / observed.as_secs_f64()
    );
    println!(
        "reconciles={} errors={}; controller process memory: RSS {} MiB (peak {} MiB, {} MiB before the controller started)",
        metrics.reconciles(),
        metrics.errors(),
        rss_kib("VmRSS:") / 1024,
        rss_kib("VmHWM:") / 1024,
        rss_before / 1024
    );
    stop.send_replace(true);
    let _ = task.await;
    drop(server);
    Ok(())
}
