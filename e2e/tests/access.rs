//! Who may do what, with real processes: kubectl 1.32 with three kubeconfigs (the admin's
//! client certificate, a namespace editor's and a viewer's UserTokens), the Python
//! Kubernetes client with a service-account token from TokenRequest, host agents with their
//! node certificates, and Secrets encrypted in the store's files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use keel_client::{Api, Client, ClientError};
use keel_e2e::{
    KeelAgent, KeelServer, condition, eventually, guest, keel, keelctl, kind, ok, stays,
};
use keel_schemas::datadir::AgentDir;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// `kubectl ARGS` with `kubeconfig` (its caches outside the servers' data dirs).
fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", std::env::temp_dir())
        .args(args)
        .output()
        .expect("kubectl runs")
}

/// The standard output of a kubectl that succeeded.
fn yes(out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The standard error of a kubectl that failed, which must say `needle`.
fn no(out: Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected a refusal saying {needle:?}, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    err
}

/// A server with its admin kubeconfig, once it is ready (its default roles in place).
async fn ready_server(root: &Path, name: &str, extra: &[&str]) -> (KeelServer, PathBuf) {
    let mut server = KeelServer::new(root, name);
    server.start(extra);
    let admin = server.dir().admin_kubeconfig();
    eventually("the server ready", WAIT, || async {
        let out = kubectl(&admin, &["get", "--raw", "/readyz"]);
        (admin.exists() && out.status.success()).then_some(())
    })
    .await;
    (server, admin)
}

const TENANT: &str = "apiVersion: keel.dev/v1alpha1
kind: VPC
metadata: {name: main, namespace: shop}
spec: {cidr: 10.40.0.0/16}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: site, namespace: shop}
data: {theme: dark}
---
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: shop}
stringData: {password: s3cr3t}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_users_get_what_their_roles_allow_and_nothing_more() {
    let root = tempfile::tempdir().unwrap();
    let (server, admin) = ready_server(root.path(), "k", &["--disable-agent"]).await;
    let dir = root.path();

    // The admin kubeconfig holds a client certificate for system:admin in system:masters.
    let text = std::fs::read_to_string(&admin).unwrap();
    assert!(
        text.contains("client-certificate-data") && !text.contains("token:"),
        "{text}"
    );
    let who = yes(kubectl(&admin, &["auth", "whoami"]));
    assert!(
        who.contains("system:admin") && who.contains("system:masters"),
        "{who}"
    );

    // Two users with tokens an admin made: an editor (through a group) and a viewer.
    yes(kubectl(&admin, &["create", "namespace", "shop"]));
    let editor = dir.join("editor.kubeconfig");
    let viewer = dir.join("viewer.kubeconfig");
    ok(keelctl(
        &admin,
        &[
            "config",
            "create-kubeconfig",
            "--user",
            "erin",
            "--group",
            "shop-editors",
            "-n",
            "shop",
            "-o",
            editor.to_str().unwrap(),
        ],
    ));
    ok(keelctl(
        &admin,
        &[
            "config",
            "create-kubeconfig",
            "--user",
            "vic",
            "-n",
            "shop",
            "-o",
            viewer.to_str().unwrap(),
        ],
    ));
    yes(kubectl(
        &admin,
        &[
            "create",
            "rolebinding",
            "editors",
            "--clusterrole=edit",
            "--group=shop-editors",
            "-n",
            "shop",
        ],
    ));
    yes(kubectl(
        &admin,
        &[
            "create",
            "rolebinding",
            "viewers",
            "--clusterrole=view",
            "--user=vic",
            "-n",
            "shop",
        ],
    ));
    let who = yes(kubectl(&editor, &["auth", "whoami"]));
    assert!(
        who.contains("erin") && who.contains("shop-editors"),
        "{who}"
    );

    // The editor writes every tenant kind in its namespace; the viewer reads them, but not
    // Secrets, and writes nothing.
    let manifest = dir.join("tenant.yaml");
    std::fs::write(&manifest, TENANT).unwrap();
    let m = manifest.to_str().unwrap();
    no(kubectl(&viewer, &["apply", "-f", m]), "is forbidden");
    let applied = yes(kubectl(&editor, &["apply", "-f", m]));
    for line in [
        "vpc.keel.dev/main created",
        "configmap/site created",
        "secret/db created",
    ] {
        assert!(applied.contains(line), "{applied}");
    }
    for what in ["vpc/main", "configmap/site"] {
        yes(kubectl(&viewer, &["get", what]));
        yes(kubectl(&editor, &["get", what]));
    }
    let err = no(
        kubectl(&viewer, &["create", "configmap", "x", "--from-literal=a=b"]),
        "forbidden",
    );
    assert!(
        err.contains("User \"vic\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"shop\""),
        "{err}"
    );
    let err = no(kubectl(&viewer, &["delete", "vpc", "main"]), "forbidden");
    assert!(
        err.contains("vpcs.keel.dev \"main\" is forbidden: User \"vic\" cannot delete resource \"vpcs\" in API group \"keel.dev\" in the namespace \"shop\""),
        "{err}"
    );
    no(
        kubectl(&viewer, &["get", "secret", "db"]),
        "cannot get resource \"secrets\"",
    );
    yes(kubectl(&editor, &["get", "secret", "db"]));
    let err = no(
        kubectl(&editor, &["get", "vpc", "-n", "default"]),
        "forbidden",
    );
    assert!(
        err.contains("User \"erin\" cannot list resource \"vpcs\" in API group \"keel.dev\" in the namespace \"default\""),
        "{err}"
    );
    no(
        kubectl(&editor, &["get", "nodes"]),
        "cannot list resource \"nodes\" in API group \"\" at the cluster scope",
    );
    no(
        kubectl(&editor, &["create", "token", "x", "-n", "default"]),
        "forbidden",
    );

    // Watches are authorized like lists: the viewer cannot watch Secrets.
    let err = no(
        kubectl(&viewer, &["get", "secrets", "-w", "--request-timeout=10s"]),
        "forbidden",
    );
    assert!(
        err.contains("cannot watch resource \"secrets\"")
            || err.contains("cannot list resource \"secrets\""),
        "{err}"
    );

    // kubectl auth can-i, one question or the whole list.
    assert_eq!(
        yes(kubectl(&viewer, &["auth", "can-i", "get", "vpcs"])).trim(),
        "yes"
    );
    let out = kubectl(&viewer, &["auth", "can-i", "create", "vpcs"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        (Some(1), "no")
    );
    assert_eq!(
        yes(kubectl(&editor, &["auth", "can-i", "delete", "secrets"])).trim(),
        "yes"
    );
    let out = kubectl(
        &editor,
        &["auth", "can-i", "delete", "secrets", "-n", "default"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    let list = yes(kubectl(&viewer, &["auth", "can-i", "--list"]));
    let line = |resource: &str| {
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(resource))
            .map(str::to_string)
    };
    let vm = line("virtualmachines.keel.dev").unwrap_or_else(|| panic!("{list}"));
    assert!(vm.ends_with("[get list watch]"), "{list}");
    assert!(line("virtualmachines.keel.dev/log").is_some(), "{list}");
    assert!(line("secrets").is_none(), "{list}");
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );

    // --as: the admin may act as the viewer; the editor may not impersonate users.
    assert_eq!(
        yes(kubectl(
            &admin,
            &["--as=vic", "auth", "can-i", "get", "vpcs", "-n", "shop"]
        ))
        .trim(),
        "yes"
    );
    let out = kubectl(
        &admin,
        &["--as=vic", "auth", "can-i", "create", "vpcs", "-n", "shop"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    no(
        kubectl(&admin, &["--as=vic", "get", "secrets", "-n", "shop"]),
        "User \"vic\" cannot list resource \"secrets\"",
    );
    yes(kubectl(
        &admin,
        &[
            "--as=erin",
            "--as-group=shop-editors",
            "get",
            "secrets",
            "-n",
            "shop",
        ],
    ));
    no(
        kubectl(&editor, &["--as=vic", "get", "vpcs"]),
        "users \"vic\" is forbidden: User \"erin\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
    );

    // Escalation: the editor may not bind cluster-admin (it may bind nothing); a namespace
    // admin may bind what it holds, never more.
    no(
        kubectl(
            &editor,
            &[
                "create",
                "rolebinding",
                "mine",
                "--clusterrole=cluster-admin",
                "--user=erin",
            ],
        ),
        "forbidden",
    );
    let nsadmin = dir.join("nsadmin.kubeconfig");
    ok(keelctl(
        &admin,
        &[
            "config",
            "create-kubeconfig",
            "--user",
            "ann",
            "-n",
            "shop",
            "-o",
            nsadmin.to_str().unwrap(),
        ],
    ));
    yes(kubectl(
        &admin,
        &[
            "create",
            "rolebinding",
            "ann-admin",
            "--clusterrole=admin",
            "--user=ann",
            "-n",
            "shop",
        ],
    ));
    yes(kubectl(
        &nsadmin,
        &[
            "create",
            "rolebinding",
            "dan-view",
            "--clusterrole=view",
            "--user=dan",
        ],
    ));
    let err = no(
        kubectl(
            &nsadmin,
            &[
                "create",
                "rolebinding",
                "ann-root",
                "--clusterrole=cluster-admin",
                "--user=ann",
            ],
        ),
        "is attempting to grant RBAC permissions not currently held",
    );
    assert!(
        err.contains("rolebindings.rbac.authorization.k8s.io \"ann-root\" is forbidden"),
        "{err}"
    );
    no(
        kubectl(
            &nsadmin,
            &["create", "role", "nodes", "--verb=get", "--resource=nodes"],
        ),
        "is attempting to grant RBAC permissions not currently held",
    );
    no(
        kubectl(
            &nsadmin,
            &[
                "create",
                "rolebinding",
                "x",
                "--clusterrole=view",
                "--user=dan",
                "-n",
                "default",
            ],
        ),
        "forbidden",
    );

    // keelctl asks the same questions, and makes service accounts and their tokens.
    let out = keelctl(&viewer, &["auth", "can-i", "get", "vm"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    let out = keelctl(&viewer, &["auth", "can-i", "create", "vm"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        (Some(1), "no")
    );
    assert!(ok(keelctl(&viewer, &["auth", "whoami"])).contains("vic"));
    assert!(
        ok(keelctl(
            &admin,
            &["--as", "vic", "-n", "shop", "auth", "can-i", "--list"]
        ))
        .contains("virtualmachines.keel.dev")
    );
    let out = keelctl(
        &admin,
        &[
            "--as", "vic", "-n", "shop", "auth", "can-i", "delete", "vpcs",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    assert!(
        ok(keelctl(&editor, &["create", "serviceaccount", "deployer"]))
            .contains("serviceaccount/deployer created")
    );
    let token = eventually("a token for deployer", WAIT, || async {
        let out = keelctl(
            &editor,
            &["create", "token", "deployer", "--duration", "20m"],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .await;
    let deployer = Client::new(&server.url(), &server.admin().1, &token).unwrap();
    let who = deployer
        .post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .await
        .unwrap();
    assert_eq!(
        who["status"]["userInfo"]["username"],
        "system:serviceaccount:shop:deployer"
    );
    // Who may make UserTokens must also be allowed to impersonate their users and groups.
    yes(kubectl(
        &admin,
        &[
            "create",
            "clusterrole",
            "token-maker",
            "--verb=create",
            "--resource=usertokens.keel.dev",
        ],
    ));
    yes(kubectl(
        &admin,
        &[
            "create",
            "clusterrolebinding",
            "erin-tokens",
            "--clusterrole=token-maker",
            "--user=erin",
        ],
    ));
    let err = String::from_utf8_lossy(
        &keelctl(
            &editor,
            &[
                "create",
                "token",
                "--user",
                "root",
                "--group",
                "system:masters",
            ],
        )
        .stderr,
    )
    .to_string();
    assert!(
        err.contains("that needs the right to impersonate it"),
        "{err}"
    );

    // A path that hides a '/' in a segment is refused before it is authorized: with the
    // right to read namespaces, `namespaces/shop%2Fsecrets` must not list shop's Secrets.
    yes(kubectl(
        &admin,
        &[
            "create",
            "clusterrole",
            "ns-reader",
            "--verb=get,list",
            "--resource=namespaces",
        ],
    ));
    yes(kubectl(
        &admin,
        &[
            "create",
            "clusterrolebinding",
            "vic-ns",
            "--clusterrole=ns-reader",
            "--user=vic",
        ],
    ));
    let vic_token = std::fs::read_to_string(&viewer)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(String::from))
        .unwrap();
    let vic = Client::new(&server.url(), &server.admin().1, &vic_token).unwrap();
    match vic.get("/api/v1/namespaces/shop%2Fsecrets").await {
        Err(ClientError::Api { code, .. }) => assert_eq!(code, 400),
        other => panic!("an encoded slash passed: {other:?}"),
    }
    assert_eq!(
        refused(vic.get("/api/v1/namespaces/shop/secrets").await).0,
        403
    );

    // An admin asks about someone else (SubjectAccessReview, as a webhook or dashboard
    // would); a token past its time is refused like an unknown one.
    let admin_client = Client::new(&server.url(), &server.admin().1, &server.admin().0).unwrap();
    let review = |verb: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {"user": "vic", "resourceAttributes": {"namespace": "shop", "verb": verb, "group": "keel.dev", "resource": "vpcs"}}})
    };
    let answer = admin_client
        .post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &review("list"),
        )
        .await
        .unwrap();
    assert_eq!(answer["status"]["allowed"], true, "{answer}");
    let answer = admin_client
        .post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &review("delete"),
        )
        .await
        .unwrap();
    assert_eq!(answer["status"]["allowed"], false, "{answer}");
    assert_eq!(
        refused(
            vic.post(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                &review("list")
            )
            .await
        )
        .0,
        403,
        "asking about others needs the right to"
    );
    let short = ok(keelctl(
        &admin,
        &["create", "token", "--user", "vic", "--ttl", "2s"],
    ));
    let short = Client::new(&server.url(), &server.admin().1, short.trim()).unwrap();
    short
        .get("/apis/keel.dev/v1alpha1/namespaces/shop/vpcs")
        .await
        .unwrap();
    eventually("the short token expired", WAIT, || async {
        matches!(
            short
                .get("/apis/keel.dev/v1alpha1/namespaces/shop/vpcs")
                .await,
            Err(ClientError::Api { code: 401, .. })
        )
        .then_some(())
    })
    .await;

    // A revoked token gets 401 on its next request. The viewer's token is NAME.SECRET:
    // its UserToken is listed with the hash of the secret, never the secret.
    let (name, secret) = vic_token.rsplit_once('.').unwrap();
    let tokens = yes(kubectl(&admin, &["get", "usertokens", "-o", "json"]));
    let tokens: Value = serde_json::from_str(&tokens).unwrap();
    let vics = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["metadata"]["name"] == name)
        .unwrap();
    assert_eq!(vics["spec"]["user"], "vic");
    assert_eq!(
        vics["spec"]["secretHash"].as_str().unwrap(),
        keel_apiserver::auth::secret_hash(secret),
        "{vics}"
    );
    assert!(
        !tokens.to_string().contains(secret),
        "listed without its secret"
    );
    yes(kubectl(&viewer, &["get", "vpcs"]));
    yes(kubectl(&admin, &["delete", "usertoken", name]));
    no(kubectl(&viewer, &["get", "vpcs"]), "Unauthorized");

    // The audit log: who did what, with the answer's code, never a Secret's data.
    let log_path = server.dir().audit_log();
    let audit = eventually("the audit log", WAIT, || async {
        let text = std::fs::read_to_string(&log_path).ok()?;
        text.contains("\"username\":\"vic\"").then_some(text)
    })
    .await;
    let events: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let created = events
        .iter()
        .find(|e| {
            e["verb"] == "create"
                && e["objectRef"]["resource"] == "secrets"
                && e["user"]["username"] == "erin"
        })
        .expect("the editor's Secret create is audited");
    assert_eq!(created["responseStatus"]["code"], 201);
    assert_eq!(created["level"], "Metadata");
    assert!(
        events
            .iter()
            .any(|e| e["user"]["username"] == "vic" && e["responseStatus"]["code"] == 403)
    );
    assert!(events.iter().any(|e| e["responseStatus"]["code"] == 401));
    assert!(
        !audit.contains("s3cr3t") && !audit.contains("czNjcjN0"),
        "no Secret data in the audit log"
    );
}

/// The Python client: gets a service-account token through TokenRequest with the admin
/// kubeconfig, verifies it with the cluster's published keys, reads with it, and fails once
/// the account is deleted.
const PYTHON: &str = r#"
import json, sys, time
import jwt, urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

urllib3.disable_warnings()
config.load_kube_config(sys.argv[1])
admin = client.ApiClient()
core = client.CoreV1Api(admin)
out = {}
req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=900))
token = core.create_namespaced_service_account_token("reporter", "shop", req).status.token
# The keys the cluster publishes verify the token.
jwks = json.loads(admin.call_api("/openid/v1/jwks", "GET", auth_settings=["BearerToken"], _preload_content=False)[0].data)
discovery = json.loads(admin.call_api("/.well-known/openid-configuration", "GET", auth_settings=["BearerToken"], _preload_content=False)[0].data)
key = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(jwks["keys"][0]))
claims = jwt.decode(token, key=key, algorithms=["ES256"], audience=discovery["issuer"])
out["sub"] = claims["sub"]
out["issuer"] = discovery["issuer"] == claims["iss"]

conf = client.Configuration()
conf.host = admin.configuration.host
conf.ssl_ca_cert = admin.configuration.ssl_ca_cert
conf.api_key = {"authorization": "Bearer " + token}
sa = client.CoreV1Api(client.ApiClient(conf))
out["configmaps"] = [c.metadata.name for c in sa.list_namespaced_config_map("shop").items]
try:
    sa.list_namespaced_secret("shop")
    out["secrets"] = "allowed"
except ApiException as e:
    out["secrets"] = e.status
core.delete_namespaced_service_account("reporter", "shop")
deadline = time.time() + 30
while True:
    try:
        sa.list_namespaced_config_map("shop")
    except ApiException as e:
        out["after_delete"] = e.status
        break
    if time.time() > deadline:
        out["after_delete"] = "still works"
        break
    time.sleep(0.2)
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_works_from_python_until_its_account_goes() {
    let root = tempfile::tempdir().unwrap();
    let (_server, admin) = ready_server(root.path(), "k", &["--disable-agent"]).await;
    yes(kubectl(&admin, &["create", "namespace", "shop"]));
    yes(kubectl(
        &admin,
        &[
            "create",
            "configmap",
            "site",
            "-n",
            "shop",
            "--from-literal=a=b",
        ],
    ));
    // Every namespace gets its default account; this one gets its own, with view.
    eventually("shop's default service account", WAIT, || async {
        kubectl(&admin, &["get", "sa", "default", "-n", "shop"])
            .status
            .success()
            .then_some(())
    })
    .await;
    yes(kubectl(
        &admin,
        &["create", "serviceaccount", "reporter", "-n", "shop"],
    ));
    yes(kubectl(
        &admin,
        &[
            "create",
            "rolebinding",
            "reporter-view",
            "--clusterrole=view",
            "--serviceaccount=shop:reporter",
            "-n",
            "shop",
        ],
    ));
    // kubectl create token works too, and the token names the account.
    let token = yes(kubectl(
        &admin,
        &[
            "create",
            "token",
            "reporter",
            "-n",
            "shop",
            "--duration=10m",
        ],
    ));
    assert!(token.starts_with("eyJ"), "{token}");
    let script = root.path().join("client.py");
    std::fs::write(&script, PYTHON).unwrap();
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&admin)
        .output()
        .expect("run /usr/bin/python3 (python3-kubernetes)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["sub"], "system:serviceaccount:shop:reporter",
        "{result}"
    );
    assert_eq!(result["issuer"], true, "{result}");
    // (Besides the cluster CA every namespace has, made when it was.)
    let own: Vec<&Value> = result["configmaps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| *n != "kube-root-ca.crt")
        .collect();
    assert_eq!(own, [&json!("site")], "{result}");
    assert_eq!(result["secrets"], 403, "{result}");
    assert_eq!(result["after_delete"], 401, "{result}");
}

/// A client that talks as the node whose agent keeps its credentials in `data_dir`.
fn node_client(url: &str, ca: &str, data_dir: &AgentDir) -> Client {
    let cert = std::fs::read_to_string(data_dir.node_cert()).unwrap();
    let key = std::fs::read_to_string(data_dir.node_key()).unwrap();
    node_client_from(url, ca, &cert, &key)
}

/// A client with this certificate and key, which retries nothing.
fn node_client_from(url: &str, ca: &str, cert: &str, key: &str) -> Client {
    Client::with_certificate(url, ca, cert, key)
        .unwrap()
        .with_retry(keel_client::RetryPolicy {
            attempts: 1,
            base: Duration::from_millis(10),
            max: Duration::from_millis(10),
        })
}

fn refused(result: Result<Value, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { code, message, .. }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_agents_have_their_nodes_rights_only_and_renew_their_certificates() {
    let root = tempfile::tempdir().unwrap();
    // Node certificates that last 30 s: renewed every 20 s while the test runs.
    let (server, admin_kc) = ready_server(
        root.path(),
        "k",
        &["--disable-agent", "--node-cert-lifetime", "30s"],
    )
    .await;
    let (admin_token, ca) = server.admin();
    let url = server.url();
    let admin = Client::new(&url, &ca, &admin_token).unwrap();
    let agent_token = std::fs::read_to_string(server.dir().agent_token()).unwrap();
    let agent_token = agent_token.trim();
    let g = guest();
    g.publish(&admin).await;
    let kernel = g.kernel_file.display().to_string();
    let mut a = KeelAgent::new(root.path(), "node-a", None);
    let mut b = KeelAgent::new(root.path(), "node-b", None);
    for agent in [&mut a, &mut b] {
        agent.start(
            &url,
            agent_token,
            &[
                "--s3-listen",
                "127.0.0.1:0",
                "--s3-plain-http",
                "--lease-duration",
                "10",
                "--kvm-probe-kernel",
                &kernel,
            ],
        );
    }
    let nodes: Api<Value> = Api::all(&admin, kind("nodes"));
    for name in ["node-a", "node-b"] {
        eventually(&format!("{name} Ready"), WAIT, || async {
            (condition(&nodes, name, "Ready").await.as_deref() == Some("True")).then_some(())
        })
        .await;
    }

    // The agent token joins no server: it gets no CA key, no admin token.
    let bootstrap = Client::new(&url, &ca, agent_token.rsplit(':').next().unwrap()).unwrap();
    match bootstrap.post("/keel/v1/join", &json!({})).await {
        Err(ClientError::Api { code, status, .. }) => {
            assert_eq!(code, 403, "{status}");
            let body = status.to_string();
            assert!(
                !body.contains("PRIVATE KEY") && !body.contains(&admin_token),
                "{body}"
            );
        }
        other => panic!("the agent token joined: {other:?}"),
    }
    // The node's certificate is its own: system:node:node-a in system:nodes.
    let node_a = node_client(&url, &ca, &a.dir());
    let who = node_a
        .post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .await
        .unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:node-a");
    assert!(
        who["status"]["userInfo"]["groups"]
            .as_array()
            .unwrap()
            .contains(&json!("system:nodes"))
    );

    // A bucket on node-a, and a VM: node-a's workloads.
    admin
        .post("/api/v1/namespaces", &json!({"metadata": {"name": "shop"}}))
        .await
        .unwrap();
    let buckets: Api<Value> = Api::namespaced(&admin, kind("buckets"), "shop");
    buckets
        .create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Bucket", "metadata": {"name": "assets"}, "spec": {"nodeName": "node-a"}}))
        .await
        .unwrap();
    eventually("the bucket Ready on node-a", WAIT, || async {
        (condition(&buckets, "assets", "Ready").await.as_deref() == Some("True")).then_some(())
    })
    .await;
    let secrets: Api<Value> = Api::namespaced(&admin, kind("secrets"), "shop");
    secrets
        .create(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other"}, "stringData": {"x": "y"}}))
        .await
        .unwrap();
    let vms: Api<Value> = Api::namespaced(&admin, kind("vm"), "shop");
    vms.create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "web"},
        "spec": {"cpu": 1, "memory": "128Mi", "kernel": g.kernel, "initrd": g.initrd,
                 "cmdline": "console=ttyS0 quiet keel.marker=rotate", "nodeSelector": {"kubernetes.io/hostname": "node-a"},
                 "readinessProbe": {"serialConsole": {"contains": "KEEL-GUEST up"}}}}))
        .await
        .unwrap();
    let running = eventually(
        "the VM Ready on node-a",
        Duration::from_secs(120),
        || async {
            let vm = vms.get("web").await.ok()?;
            (vm["status"]["nodeName"] == "node-a"
                && condition(&vms, "web", "Ready").await.as_deref() == Some("True"))
            .then(|| vm["status"]["qemuPid"].as_i64())
            .flatten()
        },
    )
    .await;

    // What node-a may do: its Lease, its Node's status, the Secret its bucket uses.
    let node_b = node_client(&url, &ca, &b.dir());
    let lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let own = node_a.get(&format!("{lease_path}/node-a")).await.unwrap();
    node_a
        .put(&format!("{lease_path}/node-a"), &own)
        .await
        .unwrap();
    let status = node_a.get("/api/v1/nodes/node-a/status").await.unwrap();
    node_a
        .put("/api/v1/nodes/node-a/status", &status)
        .await
        .unwrap();
    node_a
        .get("/api/v1/namespaces/shop/secrets/assets-credentials")
        .await
        .unwrap();
    // ... and what it may not: another node's Lease, Secrets its workloads do not use, any
    // spec, any new object but its own things.
    let other_lease = node_a.get(&format!("{lease_path}/node-b")).await;
    let (code, message) = refused(
        node_a
            .put(
                &format!("{lease_path}/node-b"),
                &other_lease.unwrap_or_default(),
            )
            .await,
    );
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("may only use its own Lease"), "{message}");
    let (code, message) = refused(node_a.get("/api/v1/namespaces/shop/secrets/other").await);
    assert_eq!(code, 403);
    assert!(
        message.contains("User \"system:node:node-a\" cannot get resource \"secrets\""),
        "{message}"
    );
    assert_eq!(
        refused(
            node_b
                .get("/api/v1/namespaces/shop/secrets/assets-credentials")
                .await
        )
        .0,
        403
    );
    assert_eq!(
        refused(node_a.get("/api/v1/namespaces/shop/secrets").await).0,
        403
    );
    let (code, message) = refused(
        node_a
            .patch(
                "/api/v1/nodes/node-a",
                "application/merge-patch+json",
                &json!({"spec": {"unschedulable": true}}),
            )
            .await,
    );
    assert_eq!(code, 403);
    assert!(message.contains("may not change its own spec"), "{message}");
    let (code, _) = refused(
        node_a
            .patch(
                "/apis/keel.dev/v1alpha1/namespaces/shop/virtualmachines/web",
                "application/merge-patch+json",
                &json!({"spec": {"cpu": 4}}),
            )
            .await,
    );
    assert_eq!(code, 403);
    let (code, message) = refused(
        node_a
            .patch(
                "/apis/keel.dev/v1alpha1/namespaces/shop/virtualmachines/web/status",
                "application/merge-patch+json",
                &json!({"status": {"nodeName": "node-b"}}),
            )
            .await,
    );
    assert_eq!(code, 403);
    assert!(message.contains("status.nodeName"), "{message}");
    assert_eq!(
        refused(
            node_b
                .patch(
                    "/apis/keel.dev/v1alpha1/namespaces/shop/virtualmachines/web/status",
                    "application/merge-patch+json",
                    &json!({"status": {"phase": "Failed"}})
                )
                .await
        )
        .0,
        403
    );
    assert_eq!(
        refused(
            node_a
                .post(
                    "/api/v1/namespaces/shop/configmaps",
                    &json!({"metadata": {"name": "x"}})
                )
                .await
        )
        .0,
        403
    );

    // A node's certificate is signed by the cluster CA, but it is no server's: the Raft
    // port (where writes skip the API's checks) refuses it; a server's certificate gets in.
    let node_peer = keel_apiserver::raft::PeerTls {
        ca_pem: ca.clone(),
        cert_pem: std::fs::read_to_string(a.dir().node_cert()).unwrap(),
        key_pem: std::fs::read_to_string(a.dir().node_key()).unwrap(),
    };
    let attempt =
        keel_apiserver::raft::Client::connect_tls(&server.addr, Duration::from_secs(2), &node_peer)
            .await;
    let refused_raft = match attempt {
        Ok(c) => c.status().await.err().map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    assert!(refused_raft.is_some(), "a node spoke Raft");
    let server_peer = keel_apiserver::raft::PeerTls {
        ca_pem: ca.clone(),
        cert_pem: std::fs::read_to_string(server.dir().server_cert()).unwrap(),
        key_pem: std::fs::read_to_string(server.dir().server_key()).unwrap(),
    };
    let peer = keel_apiserver::raft::Client::connect_tls(
        &server.addr,
        Duration::from_secs(2),
        &server_peer,
    )
    .await
    .unwrap();
    peer.status().await.unwrap();

    // Deleting a host's registration revokes it: its certificate is no longer renewed.
    let password = std::fs::read_to_string(b.dir().node_password()).unwrap();
    let renew = || async {
        let body =
            json!({"nodeName": "node-b", "nodePassword": password.trim(), "csr": "not a CSR"});
        refused(node_b.post("/keel/v1/node-certificate", &body).await)
    };
    let (code, message) = renew().await;
    assert_eq!(
        code, 400,
        "registered: only the bad request is refused: {message}"
    );
    let system_secrets: Api<Value> = Api::namespaced(&admin, kind("secrets"), "kube-system");
    system_secrets
        .delete(
            "node-b.node-password.keel",
            &keel_client::DeleteParams::default(),
        )
        .await
        .unwrap();
    let (code, message) = renew().await;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("no longer registered"), "{message}");

    // Renewal: node-a's certificate is replaced before it expires, the old one lapses, and
    // the node stays Ready with its guest untouched.
    let cert_path = a.dir().node_cert();
    let first = std::fs::read_to_string(&cert_path).unwrap();
    let first_key = std::fs::read_to_string(a.dir().node_key()).unwrap();
    let renewed = eventually("node-a's certificate renewed", WAIT, || async {
        let now = std::fs::read_to_string(&cert_path).ok()?;
        (now != first && now.contains("BEGIN CERTIFICATE")).then_some(now)
    })
    .await;
    let expiry = keel_apiserver::auth::not_after(&first).unwrap();
    tokio::time::sleep(
        expiry
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            + Duration::from_secs(2),
    )
    .await;
    assert!(keel_apiserver::auth::not_after(&renewed).unwrap() > expiry);
    // A new connection with the old certificate is refused in the handshake.
    let stale = node_client_from(&url, &ca, &first, &first_key);
    assert!(
        stale.get(&format!("{lease_path}/node-a")).await.is_err(),
        "the old certificate has expired"
    );
    let admin_leases: Api<Value> = Api::namespaced(&admin, kind("leases"), "kube-node-lease");
    let renew_time = |l: Value| {
        l["spec"]["renewTime"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let before = renew_time(admin_leases.get("node-a").await.unwrap());
    eventually(
        "node-a renews its Lease with its new certificate",
        WAIT,
        || async { (renew_time(admin_leases.get("node-a").await.ok()?) != before).then_some(()) },
    )
    .await;
    stays(
        "node-a stays Ready and its guest keeps running",
        Duration::from_secs(3),
        || async {
            let vm = vms.get("web").await.unwrap();
            condition(&nodes, "node-a", "Ready").await.as_deref() == Some("True")
                && vm["status"]["qemuPid"].as_i64() == Some(running)
                && a.qemu_pids("shop", "web") == vec![running as i32]
        },
    )
    .await;
    assert!(
        a.log().contains("renewed the node certificate"),
        "{}",
        a.log()
    );
    let _ = admin_kc;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_ciphertext_on_disk_and_keys_rotate() {
    let root = tempfile::tempdir().unwrap();
    let (mut server, admin) = ready_server(root.path(), "k", &["--disable-agent"]).await;
    let marker = format!("hunter2-{}", std::process::id());
    yes(kubectl(
        &admin,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "-n",
            "default",
            &format!("--from-literal=password={marker}"),
        ],
    ));
    // Readable through the API...
    let got = yes(kubectl(
        &admin,
        &["get", "secret", "db", "-o", "jsonpath={.data.password}"],
    ));
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&marker);
    assert_eq!(got.trim(), encoded);
    // ... and nowhere in the server's files: not the value, not its base64.
    let stored = |server: &KeelServer| stored_value(server, "db").expect("the Secret is stored");
    assert!(
        stored(&server).starts_with("k8s:enc:aesgcm:v1:key1:"),
        "{}",
        stored(&server)
    );
    let scan = |dir: &Path| -> Vec<String> {
        let mut hits = Vec::new();
        for entry in walk(dir) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            for needle in [marker.as_bytes(), encoded.as_bytes()] {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(entry.display().to_string());
                }
            }
        }
        hits
    };
    assert_eq!(
        scan(&server.data_dir),
        Vec::<String>::new(),
        "plaintext found"
    );
    // The data dir is its owner's only: 0700, files 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&server.data_dir), 0o700);
    for file in walk(&server.data_dir) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }

    // Rotation in two steps: a prepared key reads but does not write (what a cluster's
    // servers get first); once rotated it writes after a restart, and the leader rewrites
    // what the old one wrote; the Secret reads the same.
    let data_dir = server.data_dir.clone();
    let secrets_encrypt = |command: &str| {
        let out = keel(&[
            "secrets-encrypt",
            command,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    server.kill();
    assert!(secrets_encrypt("prepare").contains("key2 added"));
    server.start(&["--disable-agent"]);
    eventually("the server back", WAIT, || async {
        kubectl(&admin, &["get", "--raw", "/readyz"])
            .status
            .success()
            .then_some(())
    })
    .await;
    yes(kubectl(
        &admin,
        &[
            "create",
            "secret",
            "generic",
            "after-prepare",
            "--from-literal=a=b",
        ],
    ));
    assert!(
        stored_value(&server, "after-prepare")
            .unwrap_or_default()
            .starts_with("k8s:enc:aesgcm:v1:key1:"),
        "a prepared key does not write yet"
    );
    assert!(stored(&server).starts_with("k8s:enc:aesgcm:v1:key1:"));
    server.kill();
    assert!(secrets_encrypt("rotate").contains("key2 now writes"));
    server.start(&["--disable-agent"]);
    eventually("the Secret rewritten with key2", WAIT, || async {
        stored_value(&server, "db")?
            .starts_with("k8s:enc:aesgcm:v1:key2:")
            .then_some(())
    })
    .await;
    let got = yes(kubectl(
        &admin,
        &["get", "secret", "db", "-o", "jsonpath={.data.password}"],
    ));
    assert_eq!(got.trim(), encoded);
    let status = keel(&[
        "secrets-encrypt",
        "status",
        "--data-dir",
        server.data_dir.to_str().unwrap(),
    ]);
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status.contains("key2 (writes and reads)") && status.contains("key1 (reads)"),
        "{status}"
    );
}

/// Secret `default/NAME` as the store of `server` holds it (`keel kv get`), if readable.
fn stored_value(server: &KeelServer, name: &str) -> Option<String> {
    let key = format!("/registry/core/secrets/default/{name}");
    let out = keel(&[
        "kv",
        "get",
        &key,
        "--data-dir",
        server.data_dir.to_str()?,
        "-s",
        &server.addr,
    ]);
    let first = out.stdout.split(|b| *b == b'\n').next()?;
    let line: Value = serde_json::from_slice(first).ok()?;
    line["value"].as_str().map(String::from)
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
