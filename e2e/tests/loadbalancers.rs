//! LoadBalancers end to end: a `keel server` whose local agent's L4 proxy serves VIPs over
//! real backends — three `busybox httpd` processes answering with their own names, TCP and
//! UDP echo servers — with active health checks. Requests spread in round-robin turns; a
//! killed backend costs no request and shows as down, then rejoins; a connection open
//! across a change of the backend set is not cut and its old backend drains; port clashes,
//! selectors matching nothing, an address already taken and bad health checks are refused
//! or reported. A tenant's hostile tries fail: a flood of connections from one source gets
//! its cap (and others still get in), idle connections are closed, a health check pointed
//! at a service that is not HTTP reports why without a byte of its answer, and a host name
//! resolving to the host itself is not connected to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use keel_client::{Api, Client, Patch};
use keel_e2e::httpd::{Httpd, get};
use keel_e2e::{KeelServer, condition_of, eventually, free_port, keelctl, kind};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(60);

/// A server whose local agent serves load balancers, VIPs from 127.0.77.0/28.
struct Cluster {
    root: tempfile::TempDir,
    _server: KeelServer,
    client: Client,
    kubeconfig: PathBuf,
}

async fn cluster() -> Cluster {
    cluster_with(&[]).await
}

/// A cluster whose server is started with `extra` flags too.
async fn cluster_with(extra: &[&str]) -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), "lb-1");
    let mut args = vec!["--lb-vip-pool", "127.0.77.0/28"];
    args.extend_from_slice(extra);
    server.start(&args);
    let client = server.ready_client(WAIT).await;
    // The tests' backends listen on loopback, and some VIPs are there outside the pool.
    keel_e2e::grant_loopback(&client, "default").await;
    let kubeconfig = server.dir().admin_kubeconfig();
    Cluster {
        root,
        _server: server,
        client,
        kubeconfig,
    }
}

fn lbs(c: &Client) -> Api<Value> {
    Api::namespaced(c, kind("loadbalancers"), "default")
}

/// How many of `n` requests each backend answered; fails on any failed request.
fn spread(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let body = get(addr).unwrap_or_else(|e| panic!("request {i} through {addr} failed: {e}"));
        *counts.entry(body).or_default() += 1;
    }
    counts
}

/// The LoadBalancer once `Ready` has `status` and its message contains `needle`.
async fn ready(api: &Api<Value>, name: &str, status: &str, needle: &str) -> Value {
    eventually(
        &format!("{name} Ready={status} with {needle:?}"),
        WAIT,
        || async {
            let lb = api.get(name).await.ok()?;
            let c = condition_of(&lb, "Ready")?;
            (c["status"] == status && c["message"].as_str()?.contains(needle)).then_some(lb)
        },
    )
    .await
}

fn backend<'a>(lb: &'a Value, address: &str) -> &'a Value {
    lb["status"]["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["address"] == address))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_spreads_round_robin_and_a_killed_backend_costs_no_request() {
    let c = cluster().await;
    let ports = [free_port(), free_port(), free_port()];
    let mut web: Vec<Httpd> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| Httpd::start(c.root.path(), &format!("web-{i}"), *p))
        .collect();
    // The user's way in: YAML through keelctl, the VIP from the pool.
    let manifest = c.root.path().join("lb.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: keel.dev/v1alpha1\nkind: LoadBalancer\nmetadata: {{name: web, namespace: default}}\nspec:\n  listeners: [{{protocol: TCP, port: 8080}}]\n  backends: {{addresses: [\"127.0.0.1:{}\", \"127.0.0.1:{}\", \"127.0.0.1:{}\"]}}\n  healthCheck: {{type: HTTP, path: /healthz, expectedCodes: \"200\", intervalSeconds: 1, timeoutSeconds: 1, healthyThreshold: 2, unhealthyThreshold: 2}}\n",
            ports[0], ports[1], ports[2]
        ),
    )
    .unwrap();
    keel_e2e::ok(keelctl(
        &c.kubeconfig,
        &["apply", "-f", manifest.to_str().unwrap()],
    ));
    let api = lbs(&c.client);
    let lb = ready(&api, "web", "True", "3 of 3 backends healthy").await;
    let vip = lb["status"]["vip"].as_str().unwrap().to_string();
    assert!(vip.starts_with("127.0.77."), "a VIP of the pool: {lb}");
    assert_eq!(condition_of(&lb, "Accepted").unwrap()["status"], "True");
    for b in lb["status"]["backends"].as_array().unwrap() {
        assert_eq!(b["healthy"], true, "{b}");
        assert_eq!(b["lastCheckResult"], "HTTP 200", "{b}");
    }
    let addr: SocketAddr = format!("{vip}:8080").parse().unwrap();

    // curl, as a user would.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("http://{vip}:8080/")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("web-"));

    // 300 requests, each on its own connection: 100 each, in turn.
    let counts = tokio::task::spawn_blocking(move || spread(addr, 300))
        .await
        .unwrap();
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|n| *n == 100),
        "round-robin: {counts:?}"
    );

    // Kill web-1: requests go on without a failure while the checks notice, and after.
    web[1].kill();
    let dead = format!("127.0.0.1:{}", ports[1]);
    let during = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(4) {
            get(addr).unwrap_or_else(|e| panic!("a request failed while web-1 died: {e}"));
            n += 1;
        }
        n
    });
    let lb = ready(&api, "web", "True", "2 of 3 backends healthy").await;
    let b = backend(&lb, &dead);
    assert_eq!(b["healthy"], false, "{lb}");
    assert_eq!(b["lastCheckResult"], "connection refused", "{b}");
    assert!(during.await.unwrap() > 10);
    eventually("a Warning Event naming the dead backend", WAIT, || async {
        let events = keel_e2e::ok(keelctl(&c.kubeconfig, &["get", "events", "-o", "json"]));
        (events.contains("BackendUnhealthy") && events.contains(&dead)).then_some(())
    })
    .await;
    let counts = tokio::task::spawn_blocking(move || spread(addr, 100))
        .await
        .unwrap();
    assert_eq!(counts.get("web-1"), None, "{counts:?}");
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [50, 50],
        "{counts:?}"
    );

    // Back: it rejoins after two good checks.
    web[1] = Httpd::start(c.root.path(), "web-1", ports[1]);
    let lb = ready(&api, "web", "True", "3 of 3 backends healthy").await;
    assert_eq!(backend(&lb, &dead)["healthy"], true);
    let counts = tokio::task::spawn_blocking(move || spread(addr, 90))
        .await
        .unwrap();
    assert!(counts.values().all(|n| *n == 30), "{counts:?}");

    // Every backend failing its check: not Ready, and says why.
    api.patch(
        "web",
        &Patch::Merge(json!({"spec": {"healthCheck": {"path": "/missing"}}})),
    )
    .await
    .unwrap();
    let lb = ready(&api, "web", "False", "no backend passes its health check").await;
    assert_eq!(
        condition_of(&lb, "Ready").unwrap()["reason"],
        "NoHealthyBackends"
    );
    assert!(
        backend(&lb, &dead)["lastCheckResult"]
            .as_str()
            .unwrap()
            .starts_with("answered HTTP 404, expected 200"),
        "{lb}"
    );
    drop(web);
}

/// A TCP server on 127.0.0.1:`port` answering each line with `name: line`.
async fn echo_tcp(name: &'static str) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{name}: {line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A UDP server on 127.0.0.1 answering each datagram with `name: datagram`.
async fn echo_udp(name: &'static str) -> u16 {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = s.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let answer = format!("{name}: {}", String::from_utf8_lossy(&buf[..n]));
            let _ = s.send_to(answer.as_bytes(), from).await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_survives_a_change_of_backends_and_udp_sessions_stick() {
    let c = cluster().await;
    let (a, b) = (echo_tcp("a").await, echo_tcp("b").await);
    let (ua, ub) = (echo_udp("ua").await, echo_udp("ub").await);
    let api = lbs(&c.client);
    let vip = "127.0.78.1";
    api.create(
        &json!({"apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": "echo"},
        "spec": {"vip": vip, "listeners": [{"protocol": "TCP", "port": 7000}],
                 "backends": {"addresses": [format!("127.0.0.1:{a}")]},
                 "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1}}}),
    )
    .await
    .unwrap();
    ready(&api, "echo", "True", "1 of 1").await;
    let stream = tokio::net::TcpStream::connect((vip, 7000)).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"one\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "a: one");

    // Replace a by b while the connection is open.
    api.patch(
        "echo",
        &Patch::Merge(json!({"spec": {"backends": {"addresses": [format!("127.0.0.1:{b}")]}}})),
    )
    .await
    .unwrap();
    let lb = eventually("a draining, b serving", WAIT, || async {
        let lb = api.get("echo").await.ok()?;
        let old = backend(&lb, &format!("127.0.0.1:{a}")).clone();
        (old["draining"] == true
            && old["connections"] == 1
            && backend(&lb, &format!("127.0.0.1:{b}"))["healthy"] == true)
            .then_some(lb)
    })
    .await;
    assert_eq!(
        condition_of(&lb, "Ready").unwrap()["message"]
            .as_str()
            .unwrap()
            .split(';')
            .next(),
        Some("1 of 1 backends healthy")
    );
    w.write_all(b"two\n").await.unwrap();
    assert_eq!(
        lines.next_line().await.unwrap().unwrap(),
        "a: two",
        "the open connection is not cut"
    );
    // New connections go to b.
    let fresh = tokio::net::TcpStream::connect((vip, 7000)).await.unwrap();
    let (fr, mut fw) = fresh.into_split();
    fw.write_all(b"three\n").await.unwrap();
    assert_eq!(
        BufReader::new(fr)
            .lines()
            .next_line()
            .await
            .unwrap()
            .unwrap(),
        "b: three"
    );
    // Closed: a is gone from the status.
    drop(w);
    drop(lines);
    eventually("a drained", WAIT, || async {
        let lb = api.get("echo").await.ok()?;
        backend(&lb, &format!("127.0.0.1:{a}"))
            .is_null()
            .then_some(())
    })
    .await;

    // UDP, source-hash: one client's datagrams all reach one backend; both backends serve.
    api.create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": "dns"},
        "spec": {"vip": vip, "algorithm": "source-hash",
                 "listeners": [{"protocol": "UDP", "port": 5300}],
                 "backends": {"addresses": [format!("127.0.0.1:{ua}"), format!("127.0.0.1:{ub}")]}}}))
        .await
        .unwrap();
    let lb = ready(&api, "dns", "True", "2 of 2").await;
    assert_eq!(lb["status"]["nodeName"], "lb-1", "one VIP, one node");
    let mut seen = std::collections::BTreeSet::new();
    for client in 1..=12 {
        let s = tokio::net::UdpSocket::bind(format!("127.0.0.{client}:0"))
            .await
            .unwrap();
        let mut first = None;
        for i in 0..3 {
            s.send_to(format!("q{i}").as_bytes(), (vip, 5300))
                .await
                .unwrap();
            let mut buf = [0u8; 1500];
            let (n, from) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
                .await
                .expect("an answer through the VIP")
                .unwrap();
            assert_eq!(
                from,
                format!("{vip}:5300").parse::<SocketAddr>().unwrap(),
                "answered from the VIP"
            );
            let answer = String::from_utf8_lossy(&buf[..n]).to_string();
            let (who, what) = answer.split_once(": ").unwrap();
            assert_eq!(what, format!("q{i}"));
            assert_eq!(
                *first.get_or_insert(who.to_string()),
                who,
                "client {client} moved"
            );
        }
        seen.insert(first.unwrap());
    }
    assert_eq!(
        seen.len(),
        2,
        "twelve clients hash onto both backends: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clashes_empty_selectors_taken_addresses_and_bad_checks_are_reported() {
    let c = cluster().await;
    let api = lbs(&c.client);
    let port = echo_tcp("x").await;
    let lb = |name: &str, vip: &str, listen: u16| {
        json!({"apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer", "metadata": {"name": name},
               "spec": {"vip": vip, "listeners": [{"protocol": "TCP", "port": listen}],
                        "backends": {"addresses": [format!("127.0.0.1:{port}")]}}})
    };
    api.create(&lb("first", "127.0.79.1", 8080)).await.unwrap();
    ready(&api, "first", "True", "1 of 1").await;
    // Same VIP and port: the newer is refused, naming the older, which serves on.
    api.create(&lb("second", "127.0.79.1", 8080)).await.unwrap();
    let second = eventually("second refused", WAIT, || async {
        let o = api.get("second").await.ok()?;
        let c = condition_of(&o, "Accepted")?;
        (c["status"] == "False").then_some(c)
    })
    .await;
    assert_eq!(second["reason"], "PortConflict");
    assert!(
        second["message"]
            .as_str()
            .unwrap()
            .contains("TCP/8080 on 127.0.79.1")
            && second["message"]
                .as_str()
                .unwrap()
                .contains("default/first"),
        "{second}"
    );
    assert!(api.get("second").await.unwrap()["status"]["nodeName"].is_null());
    let events = keel_e2e::ok(keelctl(&c.kubeconfig, &["get", "events", "-o", "json"]));
    assert!(events.contains("PortConflict"), "a Warning Event too");
    // Same VIP, another port: fine.
    api.create(&lb("third", "127.0.79.1", 8081)).await.unwrap();
    ready(&api, "third", "True", "1 of 1").await;
    // The older one gone, the newer takes its port.
    api.delete("first", &Default::default()).await.unwrap();
    ready(&api, "second", "True", "1 of 1").await;

    // A selector matching no VM: said so, nothing crashes, the others still serve.
    api.create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer", "metadata": {"name": "nobody"},
        "spec": {"vip": "127.0.79.2", "listeners": [{"protocol": "TCP", "port": 80}],
                 "backends": {"selector": {"matchLabels": {"app": "nothing"}}}}}))
        .await
        .unwrap();
    let nobody = ready(&api, "nobody", "False", "matches no VirtualMachine").await;
    assert_eq!(
        condition_of(&nobody, "Ready").unwrap()["reason"],
        "NoBackends"
    );
    let mut s = TcpStream::connect("127.0.79.1:8081").unwrap();
    s.write_all(b"still\n").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"x: still\n");

    // An address some other program holds: said so.
    let _squatter = std::net::TcpListener::bind("127.0.79.3:9999").unwrap();
    api.create(&lb("taken", "127.0.79.3", 9999)).await.unwrap();
    let taken = ready(
        &api,
        "taken",
        "False",
        "cannot listen on 127.0.79.3:9999/TCP",
    )
    .await;
    assert_eq!(
        condition_of(&taken, "Ready").unwrap()["reason"],
        "ListenFailed"
    );

    // Bad health checks never get in: 422 naming the field.
    let bad = c.root.path().join("bad.yaml");
    for (check, field, why) in [
        (
            "{type: HTTP, path: '/health check'}",
            "spec.healthCheck.path",
            "' '",
        ),
        (
            "{type: HTTP, path: healthz}",
            "spec.healthCheck.path",
            "start with '/'",
        ),
        (
            "{type: TCP, path: /healthz}",
            "spec.healthCheck.path",
            "HTTP health checks only",
        ),
        (
            "{type: HTTP, expectedCodes: 'ok'}",
            "spec.healthCheck.expectedCodes",
            "not an HTTP status code",
        ),
        (
            "{intervalSeconds: 1, timeoutSeconds: 5}",
            "spec.healthCheck.timeoutSeconds",
            "at most intervalSeconds",
        ),
    ] {
        std::fs::write(
            &bad,
            format!("apiVersion: keel.dev/v1alpha1\nkind: LoadBalancer\nmetadata: {{name: bad, namespace: default}}\nspec:\n  vip: 127.0.79.4\n  listeners: [{{protocol: TCP, port: 80}}]\n  backends: {{addresses: [\"127.0.0.1:{port}\"]}}\n  healthCheck: {check}\n"),
        )
        .unwrap();
        let out = keelctl(&c.kubeconfig, &["apply", "-f", bad.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{check} was accepted");
        assert!(err.contains(field) && err.contains(why), "{check}: {err}");
    }
    assert!(
        api.get_opt("bad").await.unwrap().is_none(),
        "nothing half-applied"
    );
}

/// A TCP server on 127.0.0.1 answering anything with `answer`, then closing.
async fn answering(answer: &'static str) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// A connection from `source` to `vip`: `Some` once a line went through the proxy and
/// back, `None` when the proxy ended it (EOF or reset); fails when neither happens soon.
async fn through(
    source: &str,
    vip: SocketAddr,
) -> Option<(
    tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    tokio::net::tcp::OwnedWriteHalf,
)> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    // Under a flood the proxy's reset may come before the connect is seen through.
    let stream = match socket.connect(vip).await {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("cannot connect from {source} to {vip}: {e}"),
    };
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let exchange = async {
        w.write_all(b"hi\n").await?;
        lines.next_line().await
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(Some(line))) => {
            assert_eq!(line, "x: hi");
            Some((lines, w))
        }
        Ok(Ok(None) | Err(_)) => None,
        Err(_) => panic!("a connection from {source} was neither proxied nor closed in 10s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_source_gets_its_cap_and_idle_connections_are_closed() {
    let c = cluster_with(&[
        "--lb-max-connections-per-source",
        "20",
        "--lb-idle-timeout",
        "5s",
    ])
    .await;
    let api = lbs(&c.client);
    let port = echo_tcp("x").await;
    api.create(
        &json!({"apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": "capped"},
        "spec": {"vip": "127.0.81.1", "listeners": [{"protocol": "TCP", "port": 7000}],
                 "backends": {"addresses": [format!("127.0.0.1:{port}")]},
                 "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1}}}),
    )
    .await
    .unwrap();
    ready(&api, "capped", "True", "1 of 1").await;
    let vip: SocketAddr = "127.0.81.1:7000".parse().unwrap();

    // 200 connections at once from 127.0.0.1, all kept open: 20 are proxied, the rest are
    // ended at once.
    let flood: Vec<_> = (0..200)
        .map(|_| tokio::spawn(through("127.0.0.1", vip)))
        .collect();
    let mut held = Vec::new();
    for f in flood {
        held.extend(f.await.unwrap());
    }
    assert_eq!(held.len(), 20, "the per-source cap holds");
    // Another source still gets through.
    let mut other = through("127.0.0.2", vip)
        .await
        .expect("another source is proxied");

    // Idle for the timeout: closed; kept busy: not.
    let (mut lines, mut w) = held.pop().unwrap();
    w.write_all(b"last\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("x: last"));
    let quiet = std::time::Instant::now();
    let busy = tokio::spawn(async move {
        for i in 0..14 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            other
                .1
                .write_all(format!("{i}\n").as_bytes())
                .await
                .unwrap();
            assert_eq!(
                other.0.next_line().await.unwrap().as_deref(),
                Some(format!("x: {i}").as_str()),
                "a busy connection stays open"
            );
        }
    });
    let end = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("an idle connection is closed");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    let took = quiet.elapsed();
    assert!(
        took >= Duration::from_secs(5),
        "closed after {took:?}, before the idle timeout"
    );
    busy.await.unwrap();
    eventually("a Warning Event counting the refusals", WAIT, || async {
        let events = keel_e2e::ok(keelctl(&c.kubeconfig, &["get", "events", "-o", "json"]));
        (events.contains("LimitReached")
            && events.contains("127.0.0.1 holds its limit of 20 connections"))
        .then_some(())
    })
    .await;
    // The idle ones gave their places back: 127.0.0.1 gets in again.
    drop(held);
    eventually("127.0.0.1 proxied again", WAIT, || async {
        through("127.0.0.1", vip).await.map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_of_a_foreign_service_tells_why_without_its_bytes_and_names_cannot_reach_the_host()
{
    let c = cluster().await;
    let api = lbs(&c.client);
    // Two "host services" a tenant should not read: a banner, and an HTTP error page.
    let banner = answering("SSH-2.0-OpenSSH_9 SECRET-MARKER-4242\r\n").await;
    let page =
        answering("HTTP/1.1 503 SECRET-MARKER-4242\r\nX-Token: SECRET-MARKER-4242\r\n\r\n").await;
    api.create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": "peek"},
        "spec": {"vip": "127.0.81.2", "listeners": [{"protocol": "TCP", "port": 80}],
                 "backends": {"addresses": [format!("127.0.0.1:{banner}"), format!("127.0.0.1:{page}")]},
                 "healthCheck": {"type": "HTTP", "intervalSeconds": 1, "timeoutSeconds": 1}}}))
        .await
        .unwrap();
    let lb = ready(&api, "peek", "False", "no backend passes its health check").await;
    assert_eq!(
        backend(&lb, &format!("127.0.0.1:{banner}"))["lastCheckResult"],
        "the answer is not HTTP",
        "{lb}"
    );
    assert_eq!(
        backend(&lb, &format!("127.0.0.1:{page}"))["lastCheckResult"],
        "answered HTTP 503, expected 200-399",
        "{lb}"
    );
    assert!(!lb.to_string().contains("SECRET-MARKER"), "{lb}");
    let events = eventually("Warning Events for both backends", WAIT, || async {
        let events = keel_e2e::ok(keelctl(&c.kubeconfig, &["get", "events", "-o", "json"]));
        (events.matches("BackendUnhealthy").count() >= 2).then_some(events)
    })
    .await;
    assert!(events.contains("the answer is not HTTP"), "{events}");
    assert!(!events.contains("SECRET-MARKER"), "{events}");

    // A backend by host name resolving to the host itself: refused, not connected to.
    let port = echo_tcp("x").await;
    api.create(
        &json!({"apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": "named"},
        "spec": {"vip": "127.0.81.3", "listeners": [{"protocol": "TCP", "port": 80}],
                 "backends": {"addresses": [format!("localhost:{port}")]},
                 "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1}}}),
    )
    .await
    .unwrap();
    let lb = ready(&api, "named", "False", "a loopback address").await;
    let why = backend(&lb, &format!("localhost:{port}"))["lastCheckResult"].clone();
    assert!(
        why.as_str().unwrap().starts_with("resolves to ")
            && why.as_str().unwrap().ends_with(", a loopback address"),
        "{lb}"
    );
    assert!(
        through("127.0.0.1", "127.0.81.3:80".parse().unwrap())
            .await
            .is_none(),
        "no connection reaches the host through the name"
    );
}
