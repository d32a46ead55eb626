//! The YAML in `examples/` (a new user's first tenant) applies cleanly with plain `kubectl`
//! against a running Keel server, applies again without changes, and deletes again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{kubectl, ok, start};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("examples")
}

/// One object of the examples, as kubectl names it.
#[derive(Debug)]
struct Object {
    /// `namespace`, `vpc.keel.dev`: lowercase kind, then the API group if there is one.
    resource: String,
    name: String,
    namespaced: bool,
    /// The file it is in.
    file: PathBuf,
}

impl Object {
    /// `vpc.keel.dev/main`, as `kubectl apply` and `get -o name` print it.
    fn id(&self) -> String {
        format!("{}/{}", self.resource, self.name)
    }
}

/// The top-level value of `key` in a YAML document (block style, no quoting).
fn top_level<'a>(doc: &'a str, key: &str) -> Option<&'a str> {
    doc.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.split('#').next().unwrap().trim())
}

/// The value of `key` directly under the top-level `metadata:` of a YAML document.
fn metadata_field<'a>(doc: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("  {key}:");
    doc.lines()
        .skip_while(|l| !l.starts_with("metadata:"))
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.trim().is_empty() || l.starts_with('#'))
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.split('#').next().unwrap().trim())
}

/// Every object in the examples' YAML files, in the order `kubectl apply -f` reads them.
fn example_objects() -> Vec<Object> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in examples/");
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in text.split("\n---") {
            let Some(kind) = top_level(doc, "kind") else {
                continue;
            };
            let api_version = top_level(doc, "apiVersion").expect("apiVersion");
            let name = metadata_field(doc, "name").expect("metadata.name");
            let namespace = metadata_field(doc, "namespace");
            let resource = match api_version.split_once('/') {
                Some((group, _)) => format!("{}.{group}", kind.to_lowercase()),
                None => kind.to_lowercase(),
            };
            objects.push(Object {
                resource,
                name: name.to_string(),
                namespaced: namespace.is_some(),
                file: file.clone(),
            });
        }
    }
    objects
}

/// Lines of kubectl's output that end with `verb`, e.g. `vpc.keel.dev/main created`.
fn lines_with(output: &str, verb: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_suffix(&format!(" {verb}")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_apply_reapply_and_delete_with_kubectl() {
    let objects = example_objects();
    let ids: Vec<String> = objects.iter().map(Object::id).collect();
    for kind in [
        "namespace/",
        "vpc.keel.dev/",
        "subnet.keel.dev/",
        "securitygroup.keel.dev/",
        "virtualmachine.keel.dev/",
        "zone.keel.dev/",
        "bucket.keel.dev/",
        "loadbalancer.keel.dev/",
        "rolebinding.rbac.authorization.k8s.io/",
        "serviceaccount/",
    ] {
        assert!(
            ids.iter().any(|id| id.starts_with(kind)),
            "{kind} in {ids:?}"
        );
    }
    assert_eq!(ids[0], "namespace/shop", "the namespace must come first");
    for object in objects.iter().filter(|o| !o.namespaced) {
        assert!(
            objects
                .iter()
                .all(|o| !o.namespaced || o.file != object.file),
            "{} shares {:?} with namespaced objects",
            object.id(),
            object.file
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let examples = examples_dir();
    let examples = examples.to_str().unwrap();

    // A first apply creates every object, and nothing else.
    let applied = ok(&kubectl(&server, &["apply", "-f", examples]).await);
    assert_eq!(lines_with(&applied, "created"), ids, "{applied}");

    // They are all stored, in the shop namespace.
    let kinds: Vec<&str> = objects
        .iter()
        .filter(|o| o.namespaced)
        .map(|o| o.resource.as_str())
        .collect();
    let listed = ok(&kubectl(
        &server,
        &["get", &kinds.join(","), "-n", "shop", "-o", "name"],
    )
    .await);
    let mut listed: Vec<&str> = listed.lines().collect();
    let mut namespaced: Vec<String> = objects
        .iter()
        .filter(|o| o.namespaced)
        .map(Object::id)
        .collect();
    listed.sort_unstable();
    listed.dedup();
    namespaced.sort();
    assert_eq!(listed, namespaced);

    // Applying again changes nothing.
    let again = ok(&kubectl(&server, &["apply", "-f", examples]).await);
    assert_eq!(lines_with(&again, "unchanged"), ids, "{again}");

    // delete -f removes every object: the tenant's files in reverse order, then the namespace.
    // (With the namespace first, as `delete -f examples/` does, the namespace turns
    // Terminating and the server empties it in the background, so a later delete in the same
    // command can now and then find its object gone already and fail with NotFound.)
    let mut files: Vec<&str> = Vec::new();
    for object in objects.iter().rev() {
        let file = object.file.to_str().unwrap();
        if object.namespaced && !files.contains(&file) {
            files.push(file);
        }
    }
    let mut args = vec!["delete"];
    for file in &files {
        args.extend(["-f", file]);
    }
    let mut deleted = ok(&kubectl(&server, &args).await);
    let mut cluster_files: Vec<&str> = Vec::new();
    for object in objects.iter().filter(|o| !o.namespaced) {
        let file = object.file.to_str().unwrap();
        if !cluster_files.contains(&file) {
            cluster_files.push(file);
            deleted += &ok(&kubectl(&server, &["delete", "-f", file]).await);
        }
    }
    for object in &objects {
        let line = format!("{} \"{}\" deleted", object.resource, object.name);
        assert!(deleted.contains(&line), "{line} in {deleted}");
    }
    ok(&kubectl(
        &server,
        &["wait", "--for=delete", "namespace/shop", "--timeout=30s"],
    )
    .await);
    let left = kubectl(
        &server,
        &["get", &kinds.join(","), "-n", "shop", "-o", "name"],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "left over: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    server.shutdown().await;
}
