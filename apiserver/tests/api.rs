//! API conformance over real HTTPS: an in-process Keel server, a client that trusts only the
//! cluster CA, and the Kubernetes REST rules: verbs, conflicts, finalizers, status, selectors,
//! paging, watches, errors as `Status` objects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{WAIT, client, start};
use keel_client::{Client, ClientError};
use serde_json::{Value, json};

fn code(e: ClientError) -> (u16, String, Value) {
    match e {
        ClientError::Api {
            code,
            reason,
            status,
            ..
        } => (code, reason, status),
        other => panic!("expected an API error, got {other}"),
    }
}

const CM: &str = "/api/v1/namespaces/default/configmaps";
const VPC: &str = "/apis/keel.dev/v1alpha1/namespaces/default/vpcs";
const SUBNET: &str = "/apis/keel.dev/v1alpha1/namespaces/default/subnets";

fn configmap(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_follow_the_kubernetes_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);

    // No credentials: system:anonymous, who may read no object (403). A wrong token: 401,
    // never anonymous. Health needs nothing.
    let anonymous = Client::new(server.url(), server.ca_pem(), "").unwrap();
    assert_eq!(code(anonymous.get(CM).await.unwrap_err()).0, 403);
    let wrong = Client::new(server.url(), server.ca_pem(), "wrong").unwrap();
    let (status, reason, _) = code(wrong.get(CM).await.unwrap_err());
    assert_eq!((status, reason.as_str()), (401, "Unauthorized"));
    let (status, body) = anonymous
        .raw(hyper::Method::GET, "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));

    // Create, then create again.
    let created = c
        .post(CM, &configmap("a", json!({"app": "web"})))
        .await
        .unwrap();
    let rv: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(created["metadata"]["uid"].as_str().unwrap().len() > 10);
    assert!(
        created["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let (code_, reason, status) = code(c.post(CM, &configmap("a", json!({}))).await.unwrap_err());
    assert_eq!((code_, reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["details"]["name"], "a");

    // Update with the read revision; then with the now stale one.
    let mut update = created.clone();
    update["data"]["k"] = json!("v2");
    let updated = c.put(&format!("{CM}/a"), &update).await.unwrap();
    assert_eq!(updated["data"]["k"], "v2");
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    let (code_, reason, _) = code(c.put(&format!("{CM}/a"), &update).await.unwrap_err());
    assert_eq!((code_, reason.as_str()), (409, "Conflict"));
    assert!(
        c.get(&format!("{CM}/a")).await.unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > rv
    );

    // Patches: merge and JSON patch.
    let merged = c
        .patch(
            &format!("{CM}/a"),
            "application/merge-patch+json",
            &json!({"data": {"m": "1"}}),
        )
        .await
        .unwrap();
    assert_eq!(merged["data"], json!({"k": "v2", "m": "1"}));
    let patched = c
        .patch(
            &format!("{CM}/a"),
            "application/json-patch+json",
            &json!([{"op": "remove", "path": "/data/k"}]),
        )
        .await
        .unwrap();
    assert_eq!(patched["data"], json!({"m": "1"}));
    let (code_, _, _) = code(
        c.patch(
            &format!("{CM}/a"),
            "application/json-patch+json",
            &json!([{"op": "remove", "path": "/data/absent"}]),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code_, 422);

    // Generation counts spec changes; status goes through /status only; immutable fields
    // stay; a Subnet must lie inside its VPC.
    let vpc = json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VPC", "metadata": {"name": "main"}, "spec": {"cidr": "10.20.0.0/16"}});
    c.post(VPC, &vpc).await.unwrap();
    let outside = json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Subnet", "metadata": {"name": "out"}, "spec": {"vpc": "main", "cidr": "10.99.1.0/24"}});
    let (code_, _, status) = code(c.post(SUBNET, &outside).await.unwrap_err());
    assert_eq!(code_, 422);
    assert_eq!(status["details"]["causes"][0]["field"], "spec.cidr");
    let subnet = json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Subnet", "metadata": {"name": "front"}, "spec": {"vpc": "main", "cidr": "10.20.1.0/24"}, "status": {"usedIPs": 7}});
    let created = c.post(SUBNET, &subnet).await.unwrap();
    assert!(
        created.get("status").is_none(),
        "status is not set on create"
    );
    assert_eq!(created["spec"]["gateway"], "10.20.1.1", "defaulted");
    assert_eq!(created["spec"]["dhcp"]["enabled"], true, "defaulted");
    let mut with_status = created.clone();
    with_status["status"] = json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-23T00:00:00Z", "reason": "Created", "message": "ok"}]});
    with_status["spec"]["dhcp"]["enabled"] = json!(false);
    let after = c
        .put(&format!("{SUBNET}/front/status"), &with_status)
        .await
        .unwrap();
    assert_eq!(after["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(
        after["spec"]["dhcp"]["enabled"], true,
        "a status write leaves the spec alone"
    );
    assert_eq!(after["metadata"]["generation"], 1);
    let mut spec_change = after.clone();
    spec_change["spec"]["dhcp"]["enabled"] = json!(false);
    spec_change["status"] = json!({});
    let after = c
        .put(&format!("{SUBNET}/front"), &spec_change)
        .await
        .unwrap();
    assert_eq!(after["metadata"]["generation"], 2);
    assert_eq!(
        after["status"]["conditions"][0]["type"], "Ready",
        "a spec write leaves the status alone"
    );
    let mut immutable = after.clone();
    immutable["spec"]["cidr"] = json!("10.20.2.0/24");
    let (code_, _, status) = code(
        c.put(&format!("{SUBNET}/front"), &immutable)
            .await
            .unwrap_err(),
    );
    assert_eq!(code_, 422);
    assert_eq!(status["details"]["causes"][0]["field"], "spec.cidr");

    // Finalizers hold a deleted object until they are cleared.
    let mut held = configmap("held", json!({}));
    held["metadata"]["finalizers"] = json!(["keel.dev/test"]);
    c.post(CM, &held).await.unwrap();
    let deleting = c.delete(&format!("{CM}/held")).await.unwrap();
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    let still = c.get(&format!("{CM}/held")).await.unwrap();
    assert!(still["metadata"]["deletionTimestamp"].is_string());
    c.patch(
        &format!("{CM}/held"),
        "application/merge-patch+json",
        &json!({"metadata": {"finalizers": null}}),
    )
    .await
    .unwrap();
    assert_eq!(code(c.get(&format!("{CM}/held")).await.unwrap_err()).0, 404);

    // /metrics counts requests by verb and code, and shows the store's position.
    let (status, body) = c
        .raw(hyper::Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status.as_u16(), 200);
    assert!(
        text.contains("apiserver_request_total{verb=\"POST\",code=\"201\"}"),
        "{text}"
    );
    assert!(
        text.contains("apiserver_request_total{verb=\"PUT\",code=\"409\"}"),
        "{text}"
    );
    assert!(
        text.contains("keel_raft_leader 1")
            && text.contains("keel_store_revision ")
            && text.contains("keel_audit_events_dropped_total 0"),
        "{text}"
    );
    assert_eq!(code(anonymous.get("/metrics").await.unwrap_err()).0, 403);

    // Delete, then get: 404 with a Status naming the object.
    c.delete(&format!("{CM}/a")).await.unwrap();
    let (code_, reason, status) = code(c.get(&format!("{CM}/a")).await.unwrap_err());
    assert_eq!((code_, reason.as_str()), (404, "NotFound"));
    assert_eq!(status["message"], "configmaps \"a\" not found");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_select_and_page_at_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    c.post(
        "/api/v1/namespaces",
        &json!({"metadata": {"name": "other"}}),
    )
    .await
    .unwrap();
    for i in 0..30 {
        let tier = if i % 3 == 0 { "db" } else { "web" };
        c.post(CM, &configmap(&format!("cm-{i:02}"), json!({"tier": tier})))
            .await
            .unwrap();
    }
    c.post(
        "/api/v1/namespaces/other/configmaps",
        &configmap("elsewhere", json!({"tier": "web"})),
    )
    .await
    .unwrap();

    let all = c.get(CM).await.unwrap();
    assert_eq!(all["kind"], "ConfigMapList");
    assert_eq!(all["items"].as_array().unwrap().len(), 30);
    assert!(
        all["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    let everywhere = c.get("/api/v1/configmaps").await.unwrap();
    assert_eq!(everywhere["items"].as_array().unwrap().len(), 31);
    let db = c
        .get(&format!("{CM}?labelSelector=tier%3Ddb"))
        .await
        .unwrap();
    assert_eq!(db["items"].as_array().unwrap().len(), 10);
    let not_db = c
        .get(&format!("{CM}?labelSelector=tier!%3Ddb,tier"))
        .await
        .unwrap();
    assert_eq!(not_db["items"].as_array().unwrap().len(), 20);
    let one = c
        .get(&format!("{CM}?fieldSelector=metadata.name%3Dcm-07"))
        .await
        .unwrap();
    assert_eq!(one["items"][0]["metadata"]["name"], "cm-07");

    // Pages of 7 web objects, all at the first page's revision.
    let mut names = Vec::new();
    let mut path = format!("{CM}?labelSelector=tier%3Dweb&limit=7");
    let first_rv = loop {
        let page = c.get(&path).await.unwrap();
        let rv = page["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        if names.len() == 7 {
            // Changes after the first page do not show in later pages.
            c.delete(&format!("{CM}/cm-29")).await.unwrap();
        }
        match page["metadata"]["continue"].as_str() {
            Some(token) => path = format!("{CM}?labelSelector=tier%3Dweb&limit=7&continue={token}"),
            None => break rv,
        }
    };
    assert_eq!(names.len(), 20);
    assert!(names.contains(&"cm-29".to_string()));
    assert!(!first_rv.is_empty());
    let (code_, _, _) = code(c.get(&format!("{CM}?continue=bogus")).await.unwrap_err());
    assert_eq!(code_, 400);
    let (code_, _, _) = code(
        c.get(&format!("{CM}?labelSelector=in%20("))
            .await
            .unwrap_err(),
    );
    assert_eq!(code_, 400);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_bookmark_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let a = c
        .post(CM, &configmap("a", json!({"app": "x"})))
        .await
        .unwrap();
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // From a revision: strictly later events, in order, with bookmarks.
    let mut w = c
        .watch(&format!(
            "{CM}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true"
        ))
        .await
        .unwrap();
    c.patch(
        &format!("{CM}/a"),
        "application/merge-patch+json",
        &json!({"data": {"k": "2"}}),
    )
    .await
    .unwrap();
    c.post(CM, &configmap("b", json!({}))).await.unwrap();
    c.delete(&format!("{CM}/a")).await.unwrap();
    let mut seen = Vec::new();
    let mut bookmark = false;
    while seen.len() < 3 || !bookmark {
        let e = tokio::time::timeout(WAIT, w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let kind = e["type"].as_str().unwrap().to_string();
        if kind == "BOOKMARK" {
            assert_eq!(e["object"]["kind"], "ConfigMap");
            assert!(e["object"]["metadata"]["resourceVersion"].is_string());
            bookmark = true;
            continue;
        }
        seen.push((
            kind,
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        ));
    }
    assert_eq!(
        seen,
        [
            ("MODIFIED".into(), "a".into()),
            ("ADDED".into(), "b".into()),
            ("DELETED".into(), "a".into())
        ]
    );

    // Without a revision: the current state first.
    let mut w = c.watch(&format!("{CM}?watch=true")).await.unwrap();
    let e = tokio::time::timeout(WAIT, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("b"))
    );

    // A label selector turns leaving the selection into DELETED.
    let mut w = c
        .watch(&format!(
            "{CM}?watch=true&resourceVersion=1&labelSelector=app%3Dx"
        ))
        .await
        .unwrap();
    c.post(CM, &configmap("c", json!({"app": "x"})))
        .await
        .unwrap();
    c.patch(
        &format!("{CM}/c"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"app": "y"}}}),
    )
    .await
    .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 5 {
        let e = tokio::time::timeout(WAIT, w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        kinds.push(format!(
            "{} {}",
            e["type"].as_str().unwrap(),
            e["object"]["metadata"]["name"].as_str().unwrap()
        ));
    }
    assert_eq!(
        kinds,
        ["ADDED a", "MODIFIED a", "DELETED a", "ADDED c", "DELETED c"]
    );

    // After compaction: one ERROR event with a 410 Expired status, on an HTTP 200.
    let current = server.raft().store().revisions().current;
    server.raft().compact(current).await.unwrap().unwrap();
    let mut w = c
        .watch(&format!("{CM}?watch=true&resourceVersion={rv}"))
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(
        tokio::time::timeout(WAIT, w.next())
            .await
            .unwrap()
            .is_none(),
        "the watch ends after the error"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_status_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let before = server.raft().store().revisions().current;
    let raw = |method, path: &str, ct: Option<&'static str>, body: Vec<u8>| {
        let c = c.clone();
        let path = path.to_string();
        async move {
            let (status, bytes) = c.raw(method, &path, ct, Some(body)).await.unwrap();
            let value: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not a Status: {}", String::from_utf8_lossy(&bytes)));
            assert_eq!(value["kind"], "Status", "{value}");
            (
                status.as_u16(),
                value["reason"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    use hyper::Method;
    assert_eq!(
        raw(
            Method::POST,
            CM,
            Some("application/json"),
            b"{not json".to_vec()
        )
        .await,
        (400, "BadRequest".into())
    );
    assert_eq!(
        raw(Method::POST, CM, Some("application/yaml"), b"a: b".to_vec())
            .await
            .0,
        415
    );
    assert_eq!(
        raw(
            Method::POST,
            CM,
            Some("application/json"),
            b"[1,2]".to_vec()
        )
        .await
        .0,
        400
    );
    let huge = format!(
        "{{\"metadata\":{{\"name\":\"x\"}},\"data\":{{\"k\":\"{}\"}}}}",
        "x".repeat(4 << 20)
    );
    assert_eq!(
        raw(
            Method::POST,
            CM,
            Some("application/json"),
            huge.into_bytes()
        )
        .await
        .0,
        413
    );
    assert_eq!(
        raw(
            Method::GET,
            "/apis/keel.dev/v1alpha1/namespaces/default/frobnicators",
            None,
            vec![]
        )
        .await
        .0,
        404
    );
    assert_eq!(
        raw(Method::GET, "/apis/nope.dev/v1/things", None, vec![])
            .await
            .0,
        404
    );
    let wrong_ns =
        serde_json::to_vec(&json!({"metadata": {"name": "x", "namespace": "other"}})).unwrap();
    assert_eq!(
        raw(Method::POST, CM, Some("application/json"), wrong_ns)
            .await
            .0,
        400
    );
    let wrong_kind =
        serde_json::to_vec(&json!({"kind": "Secret", "metadata": {"name": "x"}})).unwrap();
    assert_eq!(
        raw(Method::POST, CM, Some("application/json"), wrong_kind)
            .await
            .0,
        400
    );
    let bad_name = serde_json::to_vec(&json!({"metadata": {"name": "Not_A_Name"}})).unwrap();
    let (code_, reason) = raw(Method::POST, CM, Some("application/json"), bad_name).await;
    assert_eq!((code_, reason.as_str()), (422, "Invalid"));
    let no_ns = serde_json::to_vec(&json!({"metadata": {"name": "x"}})).unwrap();
    assert_eq!(
        raw(
            Method::POST,
            "/api/v1/namespaces/missing/configmaps",
            Some("application/json"),
            no_ns
        )
        .await
        .0,
        404
    );
    assert_eq!(
        raw(
            Method::PATCH,
            &format!("{CM}/x"),
            Some("application/apply-patch+yaml"),
            b"{}".to_vec()
        )
        .await
        .0,
        415
    );
    assert_eq!(
        server.raft().store().revisions().current,
        before,
        "nothing was stored"
    );
    server.shutdown().await;
}

/// The collection path of an object's kind in its namespace.
fn collection(object: &Value) -> String {
    let kind = keel_schemas::lookup(object["kind"].as_str().unwrap()).unwrap();
    let base = if kind.group.is_empty() {
        format!("/api/{}", kind.version)
    } else {
        format!("/apis/{}/{}", kind.group, kind.version)
    };
    match kind.scope {
        keel_schemas::Scope::Namespaced => {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            format!("{base}/namespaces/{ns}/{}", kind.plural)
        }
        keel_schemas::Scope::Cluster => format!("{base}/{}", kind.plural),
    }
}

/// The paths an example expects, as the API reports them: a Secret's `stringData` is folded
/// into `data` before validation, as in Kubernetes.
fn api_paths(example: &Value, object: &Value) -> Vec<String> {
    let mut want: Vec<String> = serde_json::from_value(example["errors"].clone()).unwrap();
    if object["kind"] == "Secret" {
        for p in &mut want {
            if let Some(rest) = p.strip_prefix("stringData") {
                *p = format!("data{rest}");
            }
        }
    }
    want.sort();
    want.dedup();
    want
}

fn fields(status: &Value) -> Vec<String> {
    let mut fields: Vec<String> = status["details"]["causes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    fields.sort();
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kinds_examples_are_admitted_or_refused_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/examples");
    let mut files: Vec<_> = walk(&root);
    files.sort();
    let (mut valid, mut invalid, mut updates) = (0, 0, 0);
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let example: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let object = example
            .get("object")
            .or(example.get("old"))
            .unwrap_or(&example)
            .clone();
        if let Some(ns) = object["metadata"]["namespace"].as_str() {
            // The examples' LoadBalancers name any address: the admin grants them all (the
            // tenancy rules have tests of their own).
            let grants = json!({"keel.dev/lb-vip-ranges": "0.0.0.0/0,::/0",
                                "keel.dev/lb-backend-ranges": "0.0.0.0/0,::/0"});
            let _ = c
                .post(
                    "/api/v1/namespaces",
                    &json!({"metadata": {"name": ns, "annotations": grants}}),
                )
                .await;
        }
        let path = collection(&object);
        if name.starts_with("invalid-update-") {
            let want = api_paths(&example, &object);
            let created = c
                .post(&path, &object)
                .await
                .unwrap_or_else(|e| panic!("{name}: old: {e}"));
            let mut new = example["new"].clone();
            new["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"].clone();
            let item = format!("{path}/{}", object["metadata"]["name"].as_str().unwrap());
            let (code_, _, status) = code(c.put(&item, &new).await.unwrap_err());
            assert_eq!((code_, fields(&status)), (422, want), "{name}: {status}");
            c.delete(&item).await.unwrap();
            updates += 1;
        } else if name.starts_with("invalid-") {
            let mut want = api_paths(&example, &object);
            // A create ignores status (controllers write it through /status), except for the
            // kinds whose state is their top-level fields.
            if !matches!(object["kind"].as_str(), Some("Event" | "Lease")) {
                want.retain(|p| !p.starts_with("status"));
            }
            want.sort();
            if want.is_empty() {
                continue;
            }
            let (code_, _, status) = code(c.post(&path, &object).await.unwrap_err());
            assert_eq!((code_, fields(&status)), (422, want), "{name}: {status}");
            invalid += 1;
        } else {
            let existing = format!(
                "{path}/{}",
                object["metadata"]["name"].as_str().unwrap_or_default()
            );
            let _ = c.delete(&existing).await;
            let created = c
                .post(&path, &object)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let item = format!("{path}/{}", created["metadata"]["name"].as_str().unwrap());
            c.delete(&item).await.unwrap();
            valid += 1;
        }
    }
    eprintln!("{valid} valid, {invalid} invalid, {updates} invalid updates");
    assert!(valid >= 17 && invalid >= 17 && updates >= 1);
    assert_eq!(server.raft().store().revisions().compacted, 0);
    server.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_patch_limits_and_namespace_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    use hyper::Method;

    // Dry runs change nothing, whether asked in the query or in DeleteOptions.
    c.post(CM, &configmap("keep", json!({"app": "x"})))
        .await
        .unwrap();
    let before = server.raft().store().revisions().current;
    let planned = c
        .post(&format!("{CM}?dryRun=All"), &configmap("ghost", json!({})))
        .await
        .unwrap();
    assert_eq!(planned["metadata"]["name"], "ghost");
    c.request(
        Method::DELETE,
        &format!("{CM}/keep"),
        None,
        Some(&json!({"dryRun": ["All"]})),
    )
    .await
    .unwrap();
    c.request(
        Method::DELETE,
        &format!("{CM}?dryRun=All&labelSelector=app%3Dx"),
        None,
        None,
    )
    .await
    .unwrap();
    c.patch(
        &format!("{CM}/keep?dryRun=All"),
        "application/merge-patch+json",
        &json!({"data": {"k": "dry"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        server.raft().store().revisions().current,
        before,
        "a dry run stored something"
    );
    assert_eq!(
        c.get(&format!("{CM}/keep")).await.unwrap()["data"]["k"],
        "v"
    );

    // A JSON patch that doubles the object again and again is refused, and the server stays up.
    let bomb: Vec<Value> = (0..40)
        .map(|i| json!({"op": "copy", "from": "/data", "path": format!("/data/a{i}")}))
        .collect();
    let (code_, _, _) = code(
        c.patch(
            &format!("{CM}/keep"),
            "application/json-patch+json",
            &json!(bomb),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code_, 422);
    // A huge watch timeout is clamped, not a crash.
    let mut w = c
        .watch(&format!(
            "{CM}?watch=true&timeoutSeconds=18446744073709551615"
        ))
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()["type"],
        "ADDED"
    );

    // Strategic merge patches merge keyed lists (kubectl apply on a Service).
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}});
    c.post("/api/v1/namespaces/default/services", &svc)
        .await
        .unwrap();
    let patched = c
        .patch(
            "/api/v1/namespaces/default/services/web",
            "application/strategic-merge-patch+json",
            &json!({"spec": {"ports": [{"port": 443, "targetPort": 8443}]}}),
        )
        .await
        .unwrap();
    let ports = patched["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2, "{patched}");
    assert_eq!(ports[1]["targetPort"], 8443);

    // System namespaces stay; namespaces are not deleted as a collection; DELETE of /status is
    // not a delete of the object.
    assert_eq!(
        code(c.delete("/api/v1/namespaces/default").await.unwrap_err()).0,
        403
    );
    assert_eq!(
        code(c.delete("/api/v1/namespaces").await.unwrap_err()).0,
        405
    );
    assert_eq!(
        code(c.delete(&format!("{CM}/keep/status")).await.unwrap_err()).0,
        405
    );
    c.get(&format!("{CM}/keep")).await.unwrap();

    // A terminating namespace survives writes to itself until it is empty, then goes.
    c.post("/api/v1/namespaces", &json!({"metadata": {"name": "gone"}}))
        .await
        .unwrap();
    let mut held = configmap("held", json!({}));
    held["metadata"]["finalizers"] = json!(["keel.dev/test"]);
    c.post("/api/v1/namespaces/gone/configmaps", &held)
        .await
        .unwrap();
    c.delete("/api/v1/namespaces/gone").await.unwrap();
    c.patch(
        "/api/v1/namespaces/gone",
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"x": "y"}}}),
    )
    .await
    .unwrap();
    let ns = c.get("/api/v1/namespaces/gone").await.unwrap();
    assert_eq!(ns["status"]["phase"], "Terminating");
    let (code_, _, _) = code(
        c.post(
            "/api/v1/namespaces/gone/configmaps",
            &configmap("late", json!({})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code_, 403);
    c.patch(
        "/api/v1/namespaces/gone/configmaps/held",
        "application/merge-patch+json",
        &json!({"metadata": {"finalizers": null}}),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.get("/api/v1/namespaces/gone").await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the namespace never went"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Made-up methods are counted under one label.
    let _ = c
        .raw(Method::from_bytes(b"FROBNICATE").unwrap(), CM, None, None)
        .await
        .unwrap();
    let (_, body) = c.raw(Method::GET, "/metrics", None, None).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("verb=\"OTHER\"") && !text.contains("FROBNICATE"),
        "{text}"
    );
    assert!(text.contains("apiserver_watches 1"), "{text}");
    server.shutdown().await;
}

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
const METADATA: &str = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io";

fn column_names(table: &Value) -> Vec<&str> {
    table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_come_as_tables_or_metadata_as_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let vpc = |name: &str, cidr: &str| json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VPC", "metadata": {"name": name}, "spec": {"cidr": cidr}});
    // A write answers with the object whatever the client accepts for reads.
    let tables = c.accepting(TABLE);
    let created = tables.post(VPC, &vpc("a", "10.1.0.0/16")).await.unwrap();
    assert_eq!(created["kind"], "VPC");
    c.post(VPC, &vpc("b", "10.2.0.0/16")).await.unwrap();

    // A list as a Table: the kind's columns, a row per object with its metadata.
    let t = tables.get(VPC).await.unwrap();
    assert_eq!(
        (t["kind"].as_str(), t["apiVersion"].as_str()),
        (Some("Table"), Some("meta.k8s.io/v1"))
    );
    assert_eq!(column_names(&t), ["Name", "CIDR", "Age"]);
    assert_eq!(t["columnDefinitions"][0]["format"], "name");
    assert_eq!(
        t["rows"][0]["cells"].as_array().unwrap()[..2],
        [json!("a"), json!("10.1.0.0/16")]
    );
    assert_eq!(
        t["rows"][1]["cells"].as_array().unwrap()[..2],
        [json!("b"), json!("10.2.0.0/16")]
    );
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(
        t["rows"][0]["object"]["metadata"]["uid"],
        created["metadata"]["uid"]
    );
    assert!(t["rows"][0]["object"].get("spec").is_none());
    assert!(t["metadata"]["resourceVersion"].is_string());
    let whole = tables
        .get(&format!("{VPC}?includeObject=Object"))
        .await
        .unwrap();
    assert_eq!(whole["rows"][1]["object"]["spec"]["cidr"], "10.2.0.0/16");
    let bare = tables
        .get(&format!("{VPC}?includeObject=None"))
        .await
        .unwrap();
    assert!(bare["rows"][0].get("object").is_none());
    // Paging carries over.
    let page = tables.get(&format!("{VPC}?limit=1")).await.unwrap();
    assert_eq!(page["rows"].as_array().unwrap().len(), 1);
    assert!(page["metadata"]["continue"].is_string());
    // One object is a table of one row.
    let one = tables.get(&format!("{VPC}/b")).await.unwrap();
    assert_eq!(one["rows"].as_array().unwrap().len(), 1);
    assert_eq!(one["rows"][0]["cells"][0], "b");
    // Metadata only.
    let meta = c.accepting(METADATA).get(VPC).await.unwrap();
    assert_eq!(meta["kind"], "PartialObjectMetadataList");
    assert_eq!(meta["items"][1]["metadata"]["name"], "b");
    assert!(meta["items"][1].get("spec").is_none());
    // A form Keel does not serve: 406, and the Status says what can be served.
    let (status, reason, body) = code(c.accepting("application/yaml").get(VPC).await.unwrap_err());
    assert_eq!((status, reason.as_str()), (406, "NotAcceptable"));
    assert!(
        body["message"].as_str().unwrap().contains("as=Table"),
        "{body}"
    );
    let (status, _, _) = code(
        tables
            .get(&format!("{VPC}?includeObject=Some"))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 400);

    // A Table watch: every event is a one-row table.
    let mut w = tables.watch(&format!("{VPC}?watch=true")).await.unwrap();
    for name in ["a", "b"] {
        let e = w.next().await.unwrap().unwrap();
        assert_eq!(
            (e["type"].as_str(), e["object"]["kind"].as_str()),
            (Some("ADDED"), Some("Table"))
        );
        assert_eq!(e["object"]["rows"][0]["cells"][0], name);
    }
    c.post(VPC, &vpc("c", "10.3.0.0/16")).await.unwrap();
    let e = w.next().await.unwrap().unwrap();
    assert_eq!(e["type"], "ADDED");
    assert_eq!(column_names(&e["object"]), ["Name", "CIDR", "Age"]);
    assert_eq!(
        e["object"]["rows"][0]["cells"].as_array().unwrap()[..2],
        [json!("c"), json!("10.3.0.0/16")]
    );
    c.delete(&format!("{VPC}/c")).await.unwrap();
    let e = w.next().await.unwrap().unwrap();
    assert_eq!(
        (
            e["type"].as_str(),
            e["object"]["rows"][0]["cells"][0].as_str()
        ),
        (Some("DELETED"), Some("c"))
    );

    // A metadata watch, bookmarks included, as kube-rs' metadata watcher reads it.
    let metas = c.accepting("application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io");
    let mut w = metas
        .watch(&format!(
            "{VPC}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"
        ))
        .await
        .unwrap();
    let mut names = Vec::new();
    loop {
        let e = w.next().await.unwrap().unwrap();
        assert_eq!(e["object"]["kind"], "PartialObjectMetadata", "{e}");
        assert!(e["object"].get("spec").is_none());
        if e["type"] == "BOOKMARK" {
            assert_eq!(
                e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
                "true"
            );
            break;
        }
        names.push(
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(names, ["a", "b"]);
    server.shutdown().await;
}

const VM: &str = "/apis/keel.dev/v1alpha1/namespaces/default/virtualmachines";
const BUCKET: &str = "/apis/keel.dev/v1alpha1/namespaces/default/buckets";

/// A LimitRange fills in what a VM or Bucket leaves out before it is validated, shown by a dry
/// run and charged to a quota; and every write path — create, PUT, merge, JSON and strategic
/// patch — is refused with 403 naming the LimitRange when it sets a value past a bound, with
/// nothing stored. A `/status` write cannot carry a spec past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_and_bound_every_write_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let vm = |name: &str, spec: Value| {
        let mut spec = spec;
        spec["kernel"] = json!("guest-kernel");
        json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": name}, "spec": spec})
    };
    // Without a LimitRange a VM still needs its CPUs and memory.
    let (code_, _, status) = code(c.post(VM, &vm("bare", json!({}))).await.unwrap_err());
    assert_eq!(
        (code_, fields(&status)),
        (422, vec!["spec.cpu".to_string(), "spec.memory".to_string()])
    );
    let limits = json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "limits"},
        "spec": {"limits": [
            {"type": "VirtualMachine", "default": {"cpu": "1", "memory": "256Mi"}, "max": {"cpu": "2", "memory": "1Gi"}},
            {"type": "Disk", "default": {"storage": "5Gi"}, "max": {"storage": "20Gi"}},
            {"type": "Bucket", "default": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}]}});
    c.post("/api/v1/namespaces/default/limitranges", &limits)
        .await
        .unwrap();

    // A dry run shows the defaults and stores nothing.
    let before = server.raft().store().revisions().current;
    let planned = c
        .post(
            &format!("{VM}?dryRun=All"),
            &vm("small", json!({"disks": [{"name": "data"}]})),
        )
        .await
        .unwrap();
    assert_eq!(planned["spec"]["cpu"], 1);
    assert_eq!(planned["spec"]["memory"], "256Mi");
    assert_eq!(planned["spec"]["disks"][0]["size"], "5Gi");
    assert_eq!(server.raft().store().revisions().current, before);
    let small = c
        .post(VM, &vm("small", json!({"disks": [{"name": "data"}]})))
        .await
        .unwrap();
    assert_eq!(
        (&small["spec"]["cpu"], &small["spec"]["memory"]),
        (&json!(1), &json!("256Mi"))
    );
    assert_eq!(
        c.get(&format!("{VM}/small")).await.unwrap()["spec"],
        small["spec"]
    );

    // Over max: refused with Kubernetes' words, naming the LimitRange; nothing stored.
    let (code_, reason, status) = code(
        c.post(VM, &vm("big", json!({"cpu": 4, "memory": "2Gi"})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code_, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status["message"],
        "virtualmachines.keel.dev \"big\" is forbidden: maximum cpu per VirtualMachine is 2, but spec.cpu is 4 (LimitRange \"limits\"); maximum memory per VirtualMachine is 1Gi, but spec.memory is 2Gi (LimitRange \"limits\")"
    );
    assert_eq!(code(c.get(&format!("{VM}/big")).await.unwrap_err()).0, 404);

    // Every way of changing the VM is held to the same bounds.
    let item = format!("{VM}/small");
    let before = server.raft().store().revisions().current;
    let mut put = small.clone();
    put["spec"]["cpu"] = json!(3);
    let strategic = json!({"spec": {"disks": [{"name": "data", "size": "21Gi"}]}});
    let attempts = [
        ("PUT", c.put(&item, &put).await),
        (
            "merge",
            c.patch(
                &item,
                "application/merge-patch+json",
                &json!({"spec": {"cpu": 4}}),
            )
            .await,
        ),
        (
            "json",
            c.patch(
                &item,
                "application/json-patch+json",
                &json!([{"op": "add", "path": "/spec/disks/-", "value": {"name": "more", "size": "30Gi"}}]),
            )
            .await,
        ),
        (
            "strategic",
            c.patch(&item, "application/strategic-merge-patch+json", &strategic)
                .await,
        ),
    ];
    for (how, result) in attempts {
        let (code_, _, status) = code(result.unwrap_err());
        let message = status["message"].as_str().unwrap();
        assert_eq!(code_, 403, "{how}: {message}");
        assert!(
            message.contains("(LimitRange \"limits\")"),
            "{how}: {message}"
        );
    }
    // The status subresource keeps the spec as it is, whatever the body says.
    let mut status_write = small.clone();
    status_write["spec"]["cpu"] = json!(8);
    status_write["status"] = json!({"phase": "Pending"});
    let written = c
        .put(&format!("{item}/status"), &status_write)
        .await
        .unwrap();
    assert_eq!(written["spec"]["cpu"], 1);
    let stored = c.get(&item).await.unwrap();
    assert_eq!(stored["spec"], small["spec"]);
    assert!(server.raft().store().revisions().current <= before + 1);
    // Dropping the CPUs brings the default back: nothing changes.
    let same = c
        .patch(
            &item,
            "application/merge-patch+json",
            &json!({"spec": {"cpu": null}}),
        )
        .await
        .unwrap();
    assert_eq!(
        (&same["spec"]["cpu"], &same["metadata"]["generation"]),
        (&json!(1), &json!(1))
    );
    // Within the bounds, a change goes through.
    let grown = c
        .patch(
            &item,
            "application/merge-patch+json",
            &json!({"spec": {"cpu": 2}}),
        )
        .await
        .unwrap();
    assert_eq!(grown["spec"]["cpu"], 2);

    // The defaults are what a quota charges.
    let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "cpus"},
        "spec": {"hard": {"requests.cpu": "2"}}});
    c.post("/api/v1/namespaces/default/resourcequotas", &quota)
        .await
        .unwrap();
    let (code_, _, status) = code(c.post(VM, &vm("third", json!({}))).await.unwrap_err());
    assert_eq!(code_, 403);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("exceeded quota: cpus, requested: requests.cpu=1, used: requests.cpu=2"),
        "{status}"
    );

    // Buckets: a byte quota by default, and none past max.
    let bucket = |name: &str, spec: Value| json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Bucket", "metadata": {"name": name}, "spec": spec});
    let made = c.post(BUCKET, &bucket("assets", json!({}))).await.unwrap();
    assert_eq!(made["spec"]["quota"]["bytes"], "1Gi");
    let (code_, _, status) = code(
        c.post(BUCKET, &bucket("huge", json!({"quota": {"bytes": "1Ti"}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(code_, 403);
    assert_eq!(
        status["message"],
        "buckets.keel.dev \"huge\" is forbidden: maximum storage per Bucket is 10Gi, but spec.quota.bytes is 1Ti (LimitRange \"limits\")"
    );
    let (code_, _, _) = code(
        c.patch(
            &format!("{BUCKET}/assets"),
            "application/merge-patch+json",
            &json!({"spec": {"quota": {"bytes": "11Gi"}}}),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code_, 403);
    server.shutdown().await;
}
