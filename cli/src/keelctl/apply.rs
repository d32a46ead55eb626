//! `apply`, `diff` and `delete`: from manifests, with kubectl's last-applied annotation so that
//! fields removed from a file are removed from the object, and fields others set are kept.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use keel_schemas::{Kind, Scope};
use serde_json::{Map, Value, json};

use super::manifest::{self, Manifest};
use super::resource;
use super::{CtlError, Ctx};

/// The annotation kubectl keeps the applied configuration in (shared, so kubectl and keelctl
/// can take turns).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// An object of a manifest, placed: kind, namespace, name and where it lives.
struct Placed {
    kind: &'static Kind,
    namespace: String,
    name: String,
    path: String,
    object: Value,
}

fn place(ctx: &Ctx, m: &Manifest) -> Result<Placed, CtlError> {
    let at = |e: CtlError| CtlError(format!("{}: {e}", m.source));
    let kind = resource::kind_of(&m.object).map_err(at)?;
    let name = m.object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CtlError(format!("{}: metadata.name is required", m.source)))?
        .to_string();
    let mut object = m.object.clone();
    let namespace = match kind.scope {
        Scope::Namespaced => {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or(&ctx.namespace)
                .to_string();
            object["metadata"]["namespace"] = json!(ns);
            ns
        }
        Scope::Cluster => String::new(),
    };
    Ok(Placed {
        kind,
        path: resource::item(kind, &namespace, &name),
        namespace,
        name,
        object,
    })
}

/// The object as applied: the file's object with the annotation recording it.
fn with_last_applied(object: &Value) -> Value {
    let mut recorded = object.clone();
    if let Some(annotations) = recorded
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_object_mut)
    {
        annotations.remove(LAST_APPLIED);
    }
    let mut out = object.clone();
    let text = serde_json::to_string(&recorded).unwrap_or_default();
    match out
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_object_mut)
    {
        Some(annotations) => {
            annotations.insert(LAST_APPLIED.into(), json!(text));
        }
        None => out["metadata"]["annotations"] = json!({ LAST_APPLIED: text }),
    }
    out
}

/// A merge patch that makes the object what the file says: every field of the file set, and
/// every field the last apply set but the file no longer has removed (three-way, as kubectl).
fn apply_patch(last: &Value, desired: &Value) -> Value {
    match (last, desired) {
        (Value::Object(l), Value::Object(d)) => {
            let mut out = Map::new();
            for (k, dv) in d {
                let v = match l.get(k) {
                    Some(lv) if lv.is_object() && dv.is_object() => apply_patch(lv, dv),
                    _ => dv.clone(),
                };
                out.insert(k.clone(), v);
            }
            for k in l.keys() {
                if !d.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        _ => desired.clone(),
    }
}

/// What `apply` sends for one object: `None` to create it, or the merge patch.
async fn plan(ctx: &Ctx, p: &Placed) -> Result<Option<(Value, Value)>, CtlError> {
    match ctx.client.get(&p.path).await {
        Ok(current) => {
            let last = current["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(json!({}));
            let patch = apply_patch(&last, &with_last_applied(&p.object));
            Ok(Some((current, patch)))
        }
        Err(keel_client::ClientError::Api { code: 404, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `keelctl apply -f`.
pub async fn apply(ctx: &Ctx, files: &[String]) -> Result<(), CtlError> {
    let manifests = manifest::read(files)?;
    let placed = manifests
        .iter()
        .map(|m| place(ctx, m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut failures = 0;
    for p in placed {
        let shown = resource::display(p.kind, &p.name);
        let result = match plan(ctx, &p).await {
            Ok(None) => {
                let collection = resource::collection(p.kind, Some(&p.namespace));
                ctx.client
                    .post(&collection, &with_last_applied(&p.object))
                    .await
                    .map(|_| "created")
            }
            Ok(Some((current, patch))) => {
                let before = current["metadata"]["resourceVersion"].clone();
                ctx.client
                    .patch(&p.path, "application/merge-patch+json", &patch)
                    .await
                    .map(|after| {
                        if after["metadata"]["resourceVersion"] == before {
                            "unchanged"
                        } else {
                            "configured"
                        }
                    })
            }
            Err(e) => {
                eprintln!("error: {shown}: {e}");
                failures += 1;
                continue;
            }
        };
        match result {
            Ok(verb) => println!("{shown} {verb}"),
            Err(e) => {
                eprintln!("error: {shown}: {}", CtlError::from(e));
                failures += 1;
            }
        }
    }
    match failures {
        0 => Ok(()),
        n => Err(CtlError(format!("{n} object(s) could not be applied"))),
    }
}

/// `keelctl diff -f`: the server's answer to a dry-run apply against the live object.
pub async fn diff(ctx: &Ctx, files: &[String]) -> Result<ExitCode, CtlError> {
    let manifests = manifest::read(files)?;
    let mut changed = false;
    for m in &manifests {
        let p = place(ctx, m)?;
        let (live, merged) = match plan(ctx, &p).await? {
            None => {
                let collection = format!(
                    "{}?dryRun=All",
                    resource::collection(p.kind, Some(&p.namespace))
                );
                (
                    Value::Null,
                    ctx.client
                        .post(&collection, &with_last_applied(&p.object))
                        .await?,
                )
            }
            Some((current, patch)) => {
                let path = format!("{}?dryRun=All", p.path);
                let merged = ctx
                    .client
                    .patch(&path, "application/merge-patch+json", &patch)
                    .await?;
                (current, merged)
            }
        };
        let (a, b) = (comparable(&live), comparable(&merged));
        if a != b {
            changed = true;
            let name = resource::display(p.kind, &p.name);
            print!(
                "{}",
                unified(&a, &b, &format!("live/{name}"), &format!("merged/{name}"))
            );
        }
    }
    Ok(if changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// YAML without the fields every write changes, for a diff a person reads.
fn comparable(object: &Value) -> String {
    if object.is_null() {
        return String::new();
    }
    let mut o = object.clone();
    if let Some(meta) = o["metadata"].as_object_mut() {
        for f in [
            "resourceVersion",
            "generation",
            "managedFields",
            "creationTimestamp",
            "uid",
        ] {
            meta.remove(f);
        }
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(LAST_APPLIED);
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    manifest::to_yaml(&o)
}

/// A unified diff of two texts, line by line (longest common subsequence).
pub fn unified(a: &str, b: &str, from: &str, to: &str) -> String {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut lcs = vec![vec![0usize; y.len() + 1]; x.len() + 1];
    for i in (0..x.len()).rev() {
        for j in (0..y.len()).rev() {
            lcs[i][j] = if x[i] == y[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!("--- {from}\n+++ {to}\n");
    let (mut i, mut j) = (0, 0);
    while i < x.len() || j < y.len() {
        if i < x.len() && j < y.len() && x[i] == y[j] {
            out.push_str(&format!(" {}\n", x[i]));
            i += 1;
            j += 1;
        } else if i < x.len() && (j == y.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("-{}\n", x[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", y[j]));
            j += 1;
        }
    }
    out
}

/// `keelctl delete -f FILE` or `keelctl delete KIND NAME...` (or `KIND/NAME`).
pub async fn delete(
    ctx: &Ctx,
    files: &[String],
    args: &[String],
    wait: Option<u64>,
) -> Result<(), CtlError> {
    let mut targets: Vec<(&'static Kind, String, String)> = Vec::new();
    if !files.is_empty() {
        for m in manifest::read(files)? {
            let p = place(ctx, &m)?;
            targets.push((p.kind, p.namespace, p.name));
        }
    } else {
        match args {
            [] => return Err(CtlError("give -f FILE, KIND NAME..., or KIND/NAME".into())),
            [one] if one.contains('/') => {
                let (kind, name) = resource::kind_and_name(one)?;
                targets.push((kind, ctx.namespace.clone(), name));
            }
            [kind, names @ ..] if !names.is_empty() => {
                let kind = resource::kind(kind)?;
                for n in names {
                    targets.push((kind, ctx.namespace.clone(), n.clone()));
                }
            }
            _ => return Err(CtlError("give a name after the kind".into())),
        }
    }
    let mut failures = 0;
    for (kind, ns, name) in &targets {
        match ctx.client.delete(&resource::item(kind, ns, name)).await {
            Ok(_) => println!("{} deleted", resource::quoted(kind, name)),
            Err(e) => {
                eprintln!("error: {}", CtlError::from(e));
                failures += 1;
            }
        }
    }
    if let Some(secs) = wait {
        let deadline = Instant::now() + Duration::from_secs(secs.min(86_400));
        for (kind, ns, name) in &targets {
            loop {
                match ctx.client.get(&resource::item(kind, ns, name)).await {
                    Err(keel_client::ClientError::Api { code: 404, .. }) => break,
                    Err(e) => return Err(e.into()),
                    Ok(_) => {}
                }
                if Instant::now() > deadline {
                    return Err(CtlError(format!(
                        "timed out waiting for {} to be deleted",
                        resource::display(kind, name)
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    match failures {
        0 => Ok(()),
        n => Err(CtlError(format!("{n} object(s) could not be deleted"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_patches_remove_what_the_file_dropped() {
        let last = json!({"spec": {"a": 1, "b": 2}, "data": {"x": "1"}});
        let desired = json!({"spec": {"a": 3}});
        assert_eq!(
            apply_patch(&last, &desired),
            json!({"spec": {"a": 3, "b": null}, "data": null})
        );
        assert_eq!(apply_patch(&json!({}), &desired), desired);
    }

    #[test]
    fn diffs_are_unified() {
        let d = unified("a\nb\nc\n", "a\nB\nc\nd\n", "live", "merged");
        assert_eq!(d, "--- live\n+++ merged\n a\n-b\n+B\n c\n+d\n");
    }
}
