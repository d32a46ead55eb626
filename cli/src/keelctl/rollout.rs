//! `keelctl rollout history|status|undo|pause|resume KIND/NAME`: an object's Revisions (kept
//! by keel-controllers' `rollout`) and the levers on its rollouts.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::CtlError;
use super::{Ctx, resource};

/// The annotation that stops automatic rollbacks (keel-controllers' `rollout`).
const PAUSED: &str = keel_schemas::wellknown::ROLLOUT_PAUSED_ANNOTATION;

/// What `rollout` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// List the revisions, or show one's spec.
    History {
        /// Only this revision, with its spec.
        revision: Option<u64>,
    },
    /// Show the newest revision; with `watch`, wait until it has an outcome.
    Status {
        /// Wait for an outcome.
        watch: bool,
        /// How long to wait.
        timeout: Duration,
    },
    /// Write an earlier revision's spec back: `to`, or the last good one before the newest.
    Undo {
        /// The revision to return to.
        to: Option<u64>,
    },
    /// Stop automatic rollbacks.
    Pause,
    /// Allow them again.
    Resume,
}

/// Runs `rollout` on `target` (KIND/NAME); `Ok(false)` when `status` ends in a failure.
pub async fn rollout(ctx: &Ctx, target: &str, what: Rollout) -> Result<bool, CtlError> {
    let (kind, name) = resource::kind_and_name(target)?;
    let path = resource::item(kind, &ctx.namespace, &name);
    let shown = resource::display(kind, &name);
    match what {
        Rollout::Pause | Rollout::Resume => {
            let value = (what == Rollout::Pause).then_some("true");
            let patch = json!({"metadata": {"annotations": {PAUSED: value}}});
            ctx.client
                .patch(&path, "application/merge-patch+json", &patch)
                .await?;
            println!(
                "{shown} {}",
                if value.is_some() {
                    "paused: no automatic rollback"
                } else {
                    "resumed"
                }
            );
            Ok(true)
        }
        Rollout::History { revision } => {
            let object = ctx.client.get(&path).await?;
            let revisions = revisions(ctx, &object).await?;
            if let Some(n) = revision {
                let r = find(&revisions, n, &shown)?;
                if let Some(snapshot) = r["spec"]["snapshot"].as_str() {
                    println!("# disk snapshot taken before revision {n}: {snapshot}");
                }
                print!(
                    "{}",
                    serde_norway::to_string(&r["spec"]["spec"])
                        .map_err(|e| CtlError(e.to_string()))?
                );
                return Ok(true);
            }
            if revisions.is_empty() {
                println!("{shown} has no revisions yet");
                return Ok(true);
            }
            println!(
                "{:<9} {:<12} {:<26} {:<12} {:<8} MESSAGE",
                "REVISION", "PHASE", "REASON", "ROLLBACK-OF", "AGE"
            );
            for r in &revisions {
                let rollback_of = r["spec"]["rollbackOf"]
                    .as_u64()
                    .map_or("-".to_string(), |n| n.to_string());
                println!(
                    "{:<9} {:<12} {:<26} {:<12} {:<8} {}",
                    number(r),
                    r["status"]["phase"].as_str().unwrap_or("-"),
                    r["status"]["reason"].as_str().unwrap_or("-"),
                    rollback_of,
                    keel_schemas::time::age(
                        r["metadata"]["creationTimestamp"].as_str().unwrap_or("")
                    ),
                    r["status"]["message"].as_str().unwrap_or("")
                );
            }
            Ok(true)
        }
        Rollout::Status { watch, timeout } => {
            let started = Instant::now();
            loop {
                let object = ctx.client.get(&path).await?;
                let revisions = revisions(ctx, &object).await?;
                let Some(newest) = revisions.last() else {
                    println!("{shown}: no revision recorded yet");
                    return Ok(!watch);
                };
                let phase = newest["status"]["phase"].as_str().unwrap_or("Progressing");
                let paused = object["metadata"]["annotations"][PAUSED] == "true";
                let said = format!(
                    "{shown}: revision {} {phase}{}{}",
                    number(newest),
                    newest["status"]["message"]
                        .as_str()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default(),
                    if paused {
                        " (paused: no automatic rollback)"
                    } else {
                        ""
                    }
                );
                match phase {
                    "Healthy" => {
                        println!("{said}");
                        return Ok(true);
                    }
                    "RolledBack" | "Failed" => {
                        println!("{said}");
                        return Ok(false);
                    }
                    _ if !watch => {
                        let deadline = newest["status"]["deadline"].as_str().unwrap_or("-");
                        println!("{said}; waiting for health until {deadline}");
                        return Ok(true);
                    }
                    _ if started.elapsed() >= timeout => {
                        return Err(CtlError(format!(
                            "{said}: still progressing after {}s",
                            timeout.as_secs()
                        )));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        Rollout::Undo { to } => {
            let mut object = ctx.client.get(&path).await?;
            let revisions = revisions(ctx, &object).await?;
            let target = match to {
                Some(n) => find(&revisions, n, &shown)?.clone(),
                None => previous(&revisions, &object["spec"])
                    .ok_or_else(|| {
                        CtlError(format!("{shown} has no earlier revision to return to"))
                    })?
                    .clone(),
            };
            if target["spec"]["spec"] == object["spec"] {
                println!(
                    "{shown} already has the spec of revision {}",
                    number(&target)
                );
                return Ok(true);
            }
            object["spec"] = target["spec"]["spec"].clone();
            ctx.client.put(&path, &object).await?;
            println!("{shown} rolled back to revision {}", number(&target));
            Ok(true)
        }
    }
}

/// The object's revisions, oldest first.
async fn revisions(ctx: &Ctx, object: &Value) -> Result<Vec<Value>, CtlError> {
    let kind = resource::kind("revisions")?;
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&ctx.namespace);
    let list = ctx
        .client
        .get(&resource::collection(kind, Some(namespace)))
        .await?;
    let uid = &object["metadata"]["uid"];
    let mut mine: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["uid"] == *uid))
        })
        .cloned()
        .collect();
    mine.sort_by_key(number);
    Ok(mine)
}

fn number(r: &Value) -> u64 {
    r["spec"]["revision"].as_u64().unwrap_or(0)
}

fn find<'a>(revisions: &'a [Value], n: u64, shown: &str) -> Result<&'a Value, CtlError> {
    revisions.iter().find(|r| number(r) == n).ok_or_else(|| {
        let kept: Vec<String> = revisions.iter().map(|r| number(r).to_string()).collect();
        CtlError(format!(
            "{shown} has no revision {n} (kept: {})",
            kept.join(", ")
        ))
    })
}

/// What `undo` returns to by default: the newest Healthy revision with another spec than
/// the current one, else the newest revision with another spec.
fn previous<'a>(revisions: &'a [Value], current: &Value) -> Option<&'a Value> {
    let other = |r: &&Value| r["spec"]["spec"] != *current;
    revisions
        .iter()
        .rev()
        .filter(other)
        .find(|r| r["status"]["phase"] == "Healthy")
        .or_else(|| revisions.iter().rev().find(other))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u64, phase: &str, path: &str) -> Value {
        json!({"spec": {"revision": n, "spec": {"path": path}}, "status": {"phase": phase}})
    }

    #[test]
    fn undo_returns_to_the_last_good_other_spec() {
        let revs = [
            r(1, "Healthy", "/a"),
            r(2, "Healthy", "/b"),
            r(3, "Progressing", "/c"),
        ];
        assert_eq!(number(previous(&revs, &json!({"path": "/c"})).unwrap()), 2);
        assert_eq!(number(previous(&revs, &json!({"path": "/b"})).unwrap()), 1);
        let revs = [r(1, "Failed", "/a"), r(2, "Progressing", "/b")];
        assert_eq!(number(previous(&revs, &json!({"path": "/b"})).unwrap()), 1);
        assert!(previous(&revs[..1], &json!({"path": "/a"})).is_none());
        assert!(
            find(&revs, 7, "lb/web")
                .unwrap_err()
                .0
                .contains("kept: 1, 2")
        );
    }
}
