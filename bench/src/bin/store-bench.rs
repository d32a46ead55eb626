//! `store-bench`: committed writes per second and write latency (p50/p99) of 1- and 3-server
//! Keel clusters with 1, 16 and 64 concurrent clients, and reads per second — next to etcd
//! started on the same machine with the same workload, when an `etcd` binary is found.
//!
//! `store-bench serve ...` is the Keel server process the benchmark starts (this binary).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keel_apiserver::raft::{Client, Server, ServerConfig, Tuning};
use keel_bench::Conn;
use keel_bench::etcd::{EtcdClient, EtcdCluster};
use keel_bench::keel::{ApiCluster, KeelCluster};
use keel_bench::workload::{self, Figures, Op, Shape};
use keel_schemas::datadir::ServerDir;

/// Benchmarks Keel's replicated store (and etcd, for comparison).
#[derive(Parser, Debug)]
#[command(name = "store-bench")]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Seconds each workload runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// The etcd binary to compare with ("none" to skip).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: String,
    /// Where the servers keep their data (default: a temporary dir under /var/tmp, on disk).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 3])]
    servers: Vec<usize>,
    /// Concurrent clients of the write workloads.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    write_clients: Vec<usize>,
    /// Concurrent clients of the read workloads.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 64])]
    read_clients: Vec<usize>,
    /// What to measure: `store` (puts and gets on the replicated store), `api` (object
    /// creates through the HTTPS API, against etcd transactions), and `rbac` (creates through
    /// the API by a user RBAC authorizes, among 200 Roles and 1,000 RoleBindings, against the
    /// admin's certificate, which skips authorization).
    #[arg(long, value_delimiter = ',', default_values_t = ["store".to_string(), "api".to_string()])]
    suites: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run one Keel server (the benchmark starts these itself).
    Serve {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        raft_listen: SocketAddr,
        /// A Raft address to join (store only).
        #[arg(long)]
        join: Option<String>,
        /// Serve the HTTPS API here too (a whole Keel server).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Join through this API URL, with --token.
        #[arg(long)]
        join_url: Option<String>,
        /// The join token.
        #[arg(long)]
        token: Option<String>,
    },
}

struct Row {
    system: &'static str,
    servers: usize,
    workload: String,
    clients: usize,
    figures: Figures,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("store-bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Sub::Serve {
            data_dir,
            raft_listen,
            join,
            listen,
            join_url,
            token,
        }) => rt.block_on(serve(
            data_dir,
            raft_listen,
            join,
            listen,
            join_url.zip(token),
        )),
        None => rt.block_on(bench(&cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    data_dir: PathBuf,
    raft_listen: SocketAddr,
    join: Option<String>,
    listen: Option<SocketAddr>,
    join_url: Option<(String, String)>,
) -> Result<(), String> {
    let config = ServerConfig {
        data_dir,
        node_id: None,
        raft_listen,
        advertise: None,
        join,
        tls: None,
        tuning: Tuning::default(),
    };
    if let Some(listen) = listen {
        // A whole Keel server: the store with mutual TLS, and the HTTPS API.
        let mut api = keel_apiserver::ApiConfig::new(config, listen);
        api.join = join_url;
        let _server = keel_apiserver::ApiServer::start(api)
            .await
            .map_err(|e| e.to_string())?;
        std::future::pending::<()>().await;
        return Ok(());
    }
    let server = Server::start(config).await.map_err(|e| e.to_string())?;
    // Run until killed.
    std::future::pending::<()>().await;
    server.shutdown().await;
    Ok(())
}

async fn bench(cli: &Cli) -> Result<(), String> {
    let base = cli.dir.clone().unwrap_or_else(|| PathBuf::from("/var/tmp"));
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let etcd = (cli.etcd != "none" && std::path::Path::new(&cli.etcd).exists())
        .then(|| PathBuf::from(&cli.etcd));
    if etcd.is_none() {
        eprintln!(
            "store-bench: no etcd binary at {} (apt-get install etcd-server); measuring Keel only",
            cli.etcd
        );
    }
    let shape = |clients| Shape {
        clients,
        duration: Duration::from_secs(cli.seconds),
        key_space: 100_000,
        value_size: cli.value_size,
    };
    let mut rows = Vec::new();
    let mut rbac_rows = Vec::new();
    for &servers in &cli.servers {
        let root = tempfile::Builder::new()
            .prefix("keel-bench-")
            .tempdir_in(&base)
            .map_err(|e| e.to_string())?;
        let store = cli.suites.iter().any(|s| s == "store");
        let api = cli.suites.iter().any(|s| s == "api");
        if store {
            let cluster = KeelCluster::start(root.path(), servers).await?;
            let mut conns = Vec::new();
            for addr in &cluster.addrs {
                for _ in 0..2 {
                    let c = Client::connect(addr, Duration::from_secs(2))
                        .await
                        .map_err(|e| e.to_string())?;
                    conns.push(Conn::Keel(c));
                }
            }
            measure("keel", servers, &conns, shape, cli, &mut rows).await;
        }
        if api {
            let cluster = ApiCluster::start(root.path(), servers).await?;
            let mut conns = Vec::new();
            for url in &cluster.urls {
                for _ in 0..2 {
                    let c = keel_client::Client::new(url, &cluster.ca_pem, &cluster.token)
                        .map_err(|e| e.to_string())?;
                    conns.push(Conn::Api(Box::new(c)));
                }
            }
            measure_creates("keel", servers, &conns, shape, cli, &mut rows).await;
        }
        if cli.suites.iter().any(|s| s == "rbac") {
            let cluster = ApiCluster::start(root.path(), servers).await?;
            measure_rbac(&cluster, servers, shape, cli, &mut rbac_rows).await?;
        }
        if let Some(bin) = &etcd {
            let cluster = EtcdCluster::start(bin, root.path(), servers).await?;
            let mut conns = Vec::new();
            for addr in &cluster.client_addrs {
                for _ in 0..2 {
                    conns.push(Conn::Etcd(EtcdClient::connect(addr).await?));
                }
            }
            if store {
                measure("etcd", servers, &conns, shape, cli, &mut rows).await;
            }
            if api {
                measure_creates("etcd", servers, &conns, shape, cli, &mut rows).await;
            }
        }
    }
    if !rows.is_empty() {
        print_table(&rows);
    }
    if !rbac_rows.is_empty() {
        print_rbac(&rbac_rows);
        print_decision_cost();
    }
    Ok(())
}

/// Times RBAC decisions in-process, over the same policy the rbac suite makes (the default
/// roles, ROLES Roles, BINDINGS RoleBindings): what authorization adds to each request.
fn print_decision_cost() {
    use keel_apiserver::auth::UserInfo;
    use keel_apiserver::auth::rbac::{Attributes, Decision, RbacObjects, ResourceAttributes};
    use keel_schemas::kinds::access::{ClusterRole, Role, RoleBinding};
    let mut objects = RbacObjects::default();
    for role in keel_apiserver::auth::policy::cluster_roles() {
        if let Ok(r) = serde_json::from_value::<ClusterRole>(role) {
            objects
                .cluster_roles
                .insert(r.metadata.name.clone().unwrap_or_default(), r);
        }
    }
    for binding in keel_apiserver::auth::policy::cluster_role_bindings() {
        if let Ok(b) = serde_json::from_value::<RoleBinding>(binding) {
            objects
                .cluster_role_bindings
                .insert(b.metadata.name.clone().unwrap_or_default(), b);
        }
    }
    let ns = "default".to_string();
    for i in 0..ROLES {
        let rules: Vec<serde_json::Value> = ["virtualmachines", "vpcs", "subnets", "zones", "buckets"]
            .iter()
            .map(|k| serde_json::json!({"apiGroups": ["keel.dev"], "resources": [k], "verbs": ["get", "list", "watch"], "resourceNames": [format!("r{i}")]}))
            .collect();
        let role: Role =
            serde_json::from_value(serde_json::json!({ "rules": rules })).unwrap_or_default();
        objects
            .roles
            .insert((ns.clone(), format!("role-{i}")), role);
    }
    let binding = |name: String, subjects: serde_json::Value, kind: &str, role: String| {
        serde_json::from_value::<RoleBinding>(serde_json::json!({
            "metadata": {"name": name}, "subjects": subjects,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role}}))
        .unwrap_or_default()
    };
    for i in 0..BINDINGS {
        let subjects = serde_json::json!([
            {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": format!("user-{i}")},
            {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": format!("team-{}", i % 100)}]);
        objects.role_bindings.insert(
            (ns.clone(), format!("binding-{i}")),
            binding(
                format!("binding-{i}"),
                subjects,
                "Role",
                format!("role-{}", i % ROLES),
            ),
        );
    }
    let subjects = serde_json::json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bencher"}]);
    objects.role_bindings.insert(
        (ns.clone(), "zz-bencher-edit".into()),
        binding(
            "zz-bencher-edit".into(),
            subjects,
            "ClusterRole",
            "edit".into(),
        ),
    );
    let started = std::time::Instant::now();
    let index = objects.index();
    let built = started.elapsed();
    let user =
        UserInfo::authenticated("bencher", "", ["team-7".to_string(), "team-42".to_string()]);
    let create = Attributes::resource(
        "create",
        ResourceAttributes {
            resource: "configmaps".into(),
            namespace: "default".into(),
            version: "v1".into(),
            ..ResourceAttributes::default()
        },
    );
    const N: u32 = 200_000;
    let started = std::time::Instant::now();
    let mut allowed = 0u32;
    for _ in 0..N {
        allowed += u32::from(matches!(
            index.authorize(std::hint::black_box(&user), &create),
            Decision::Allow(_)
        ));
    }
    let per = started.elapsed() / N;
    println!(
        "one RBAC decision (create configmaps as a user matching 21 of {BINDINGS} RoleBindings): {:.2} µs; the index of {} grants builds in {:.1} ms{}",
        per.as_secs_f64() * 1e6,
        index.len(),
        built.as_secs_f64() * 1e3,
        if allowed == N {
            ""
        } else {
            " (NOT ALLOWED: the benchmark's policy is wrong)"
        }
    );
}

/// How many Roles and RoleBindings the RBAC suite makes first.
const ROLES: usize = 200;
const BINDINGS: usize = 1000;

/// Creates through the API as three requesters: the admin's client certificate (a member of
/// system:masters, which authorization does not consult), and a user authorized by RBAC among
/// ROLES Roles and BINDINGS RoleBindings — once by a client certificate, once by a
/// UserToken (which adds the token's lookup).
async fn measure_rbac(
    cluster: &ApiCluster,
    servers: usize,
    shape: impl Fn(usize) -> Shape,
    cli: &Cli,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let dir = cluster.data_dirs.first().ok_or("no server")?;
    let certificates = keel_apiserver::auth::Certificates::load(&ServerDir::new(dir))
        .map_err(|e| e.to_string())?
        .ok_or("the first server has no certificates")?;
    let lifetime = Duration::from_secs(3600);
    let issue = |user: &str, group: Option<&str>| certificates.issue_client(user, group, lifetime);
    let admin_id = issue("system:admin", Some("system:masters")).map_err(|e| e.to_string())?;
    let admin = keel_client::Client::with_certificate(
        &cluster.urls[0],
        &cluster.ca_pem,
        &admin_id.cert_pem,
        &admin_id.key_pem,
    )
    .map_err(|e| e.to_string())?;
    // 200 Roles over Keel's kinds, 1,000 RoleBindings of users and of 100 groups; the
    // benchmark's user is in two of the groups (so 20 bindings apply to it, none of which
    // allows ConfigMaps) and gets `edit` by a binding of its own.
    let kinds = ["virtualmachines", "vpcs", "subnets", "zones", "buckets"];
    let rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/default";
    for i in 0..ROLES {
        let rules: Vec<serde_json::Value> = kinds
            .iter()
            .map(|k| serde_json::json!({"apiGroups": ["keel.dev"], "resources": [k], "verbs": ["get", "list", "watch"], "resourceNames": [format!("r{i}")]}))
            .collect();
        admin
            .post(
                &format!("{rbac}/roles"),
                &serde_json::json!({"metadata": {"name": format!("role-{i}")}, "rules": rules}),
            )
            .await
            .map_err(|e| format!("role {i}: {e}"))?;
    }
    for i in 0..BINDINGS {
        let binding = serde_json::json!({
            "metadata": {"name": format!("binding-{i}")},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": format!("user-{i}")},
                         {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": format!("team-{}", i % 100)}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("role-{}", i % ROLES)},
        });
        admin
            .post(&format!("{rbac}/rolebindings"), &binding)
            .await
            .map_err(|e| format!("binding {i}: {e}"))?;
    }
    admin
        .post(
            &format!("{rbac}/rolebindings"),
            &serde_json::json!({
                "metadata": {"name": "zz-bencher-edit"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bencher"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            }),
        )
        .await
        .map_err(|e| e.to_string())?;
    let token = admin
        .post(
            "/apis/keel.dev/v1alpha1/usertokens",
            &serde_json::json!({"metadata": {"name": "bencher"}, "spec": {"user": "bencher", "groups": ["team-7", "team-42"]}}),
        )
        .await
        .map_err(|e| e.to_string())?["status"]["token"]
        .as_str()
        .ok_or("no token")?
        .to_string();
    let bencher_id = issue("bencher", Some("team-7")).map_err(|e| e.to_string())?;
    let clients = |make: &dyn Fn(&str) -> Result<keel_client::Client, keel_client::ClientError>| -> Result<Vec<Conn>, String> {
        let mut conns = Vec::new();
        for url in &cluster.urls {
            for _ in 0..2 {
                conns.push(Conn::Api(Box::new(make(url).map_err(|e| e.to_string())?)));
            }
        }
        Ok(conns)
    };
    let ca = &cluster.ca_pem;
    let cases: [(&str, Vec<Conn>); 3] = [
        (
            "admin cert",
            clients(&|u| {
                keel_client::Client::with_certificate(u, ca, &admin_id.cert_pem, &admin_id.key_pem)
            })?,
        ),
        (
            "rbac cert",
            clients(&|u| {
                keel_client::Client::with_certificate(
                    u,
                    ca,
                    &bencher_id.cert_pem,
                    &bencher_id.key_pem,
                )
            })?,
        ),
        (
            "rbac token",
            clients(&|u| keel_client::Client::new(u, ca, &token))?,
        ),
    ];
    // The store grows with every create, and a bigger store writes a little slower: each
    // client count runs every case three times, in a rotating order (ABC, BCA, CAB), and
    // the figures are the rounds' means.
    const ROUNDS: usize = 3;
    for &clients in &cli.write_clients {
        let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); cases.len()];
        for round in 0..ROUNDS {
            for i in 0..cases.len() {
                let case = (i + round) % cases.len();
                let (name, conns) = &cases[case];
                let figures = workload::run(conns, Op::Create, shape(clients)).await;
                eprintln!(
                    "keel x{servers} create ({name}) c={clients} round {round}: {:.0}/s ({} errors)",
                    figures.per_second, figures.errors
                );
                runs[case].push(figures);
            }
        }
        for ((name, _), figures) in cases.iter().zip(runs) {
            rows.push(Row {
                system: "keel",
                servers,
                workload: name.to_string(),
                clients,
                figures: workload::mean(&figures),
            });
        }
    }
    Ok(())
}

fn print_rbac(rows: &[Row]) {
    println!("\ncreates through the API with {ROLES} Roles and {BINDINGS} RoleBindings present");
    println!(
        "{:<12} {:>7} {:>7} | {:>10} {:>8} {:>8} | {:>10}",
        "requester", "servers", "clients", "op/s", "p50 ms", "p99 ms", "vs admin"
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| {
                b.workload == "admin cert" && b.servers == r.servers && b.clients == r.clients
            })
            .map_or(f64::NAN, |b| b.figures.per_second);
        println!(
            "{:<12} {:>7} {:>7} | {:>10.0} {:>8.2} {:>8.2} | {:>9.1}%{}",
            r.workload,
            r.servers,
            r.clients,
            r.figures.per_second,
            r.figures.p50_ms,
            r.figures.p99_ms,
            (r.figures.per_second / base - 1.0) * 100.0,
            if r.figures.errors > 0 {
                format!("  ({} errors)", r.figures.errors)
            } else {
                String::new()
            }
        );
    }
    println!(
        "admin cert: a member of system:masters, not authorized further; rbac: authorized by RBAC (cert: client certificate; token: a UserToken, looked up and hashed per request)"
    );
}

/// Object creates: through Keel's HTTPS API (with admission, defaulting and the JSON object),
/// and as kube-apiserver writes to etcd (a compare-create-revision transaction).
async fn measure_creates(
    system: &'static str,
    servers: usize,
    conns: &[Conn],
    shape: impl Fn(usize) -> Shape,
    cli: &Cli,
    rows: &mut Vec<Row>,
) {
    for &clients in &cli.write_clients {
        let figures = workload::run(conns, Op::Create, shape(clients)).await;
        eprintln!(
            "{system} x{servers} create c={clients}: {:.0}/s ({} errors)",
            figures.per_second, figures.errors
        );
        rows.push(Row {
            system,
            servers,
            workload: "create object".into(),
            clients,
            figures,
        });
    }
}

async fn measure(
    system: &'static str,
    servers: usize,
    conns: &[Conn],
    shape: impl Fn(usize) -> Shape,
    cli: &Cli,
    rows: &mut Vec<Row>,
) {
    // Fill the key space a little so that reads find keys.
    let _ = workload::run(
        conns,
        Op::Put,
        Shape {
            duration: Duration::from_secs(1),
            ..shape(16)
        },
    )
    .await;
    for &clients in &cli.write_clients {
        let figures = workload::run(conns, Op::Put, shape(clients)).await;
        eprintln!(
            "{system} x{servers} put c={clients}: {:.0}/s",
            figures.per_second
        );
        rows.push(Row {
            system,
            servers,
            workload: "put".into(),
            clients,
            figures,
        });
    }
    for (op, name) in [
        (Op::LinearizableGet, "get (linearizable)"),
        (Op::SerializableGet, "get (serializable)"),
    ] {
        for &clients in &cli.read_clients {
            let figures = workload::run(conns, op, shape(clients)).await;
            eprintln!(
                "{system} x{servers} {name} c={clients}: {:.0}/s",
                figures.per_second
            );
            rows.push(Row {
                system,
                servers,
                workload: name.into(),
                clients,
                figures,
            });
        }
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<20} {:>7} {:>7} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} | {:>7}",
        "workload",
        "servers",
        "clients",
        "keel op/s",
        "p50 ms",
        "p99 ms",
        "etcd op/s",
        "p50 ms",
        "p99 ms",
        "ratio"
    );
    let keel_rows = rows.iter().filter(|r| r.system == "keel");
    for k in keel_rows {
        let e = rows.iter().find(|r| {
            r.system == "etcd"
                && r.servers == k.servers
                && r.workload == k.workload
                && r.clients == k.clients
        });
        let (eps, ep50, ep99, ratio) = match e {
            Some(e) => (
                format!("{:.0}", e.figures.per_second),
                format!("{:.2}", e.figures.p50_ms),
                format!("{:.2}", e.figures.p99_ms),
                format!(
                    "{:.2}",
                    k.figures.per_second / e.figures.per_second.max(1e-9)
                ),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let errors = if k.figures.errors > 0 {
            format!("  ({} errors)", k.figures.errors)
        } else {
            String::new()
        };
        println!(
            "{:<20} {:>7} {:>7} | {:>10.0} {:>8.2} {:>8.2} | {:>10} {:>8} {:>8} | {:>7}{}",
            k.workload,
            k.servers,
            k.clients,
            k.figures.per_second,
            k.figures.p50_ms,
            k.figures.p99_ms,
            eps,
            ep50,
            ep99,
            ratio,
            errors
        );
    }
    println!(
        "ratio = keel op/s / etcd op/s on this machine; every put is acknowledged only after a quorum fsynced it"
    );
}
