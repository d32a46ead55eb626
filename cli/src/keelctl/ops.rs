//! `edit`, `wait` and `cluster status`.

use std::time::{Duration, Instant};

use keel_schemas::wellknown;
use serde_json::Value;

use super::manifest::{self, to_yaml};
use super::resource;
use super::{CtlError, Ctx};

/// `keelctl edit KIND NAME`: the object as YAML in `$EDITOR` (`vi` by default), written back
/// with its resourceVersion, so a change made meanwhile is a conflict, not lost.
pub async fn edit(ctx: &Ctx, kind: &str, name: Option<&str>) -> Result<(), CtlError> {
    let (kind, name) = match name {
        Some(n) => (resource::kind(kind)?, n.to_string()),
        None => resource::kind_and_name(kind)?,
    };
    let path = resource::item(kind, &ctx.namespace, &name);
    let mut object = ctx.client.get(&path).await?;
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("managedFields");
    }
    let before = to_yaml(&object);
    let file = private_file(&before)?;
    let editor = std::env::var("KUBE_EDITOR")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let mut words = editor.split_whitespace();
    let program = words.next().unwrap_or("vi");
    let status = tokio::process::Command::new(program)
        .args(words)
        .arg(&file)
        .status()
        .await
        .map_err(|e| CtlError(format!("cannot run the editor {editor:?}: {e}")))?;
    let after = std::fs::read_to_string(&file)
        .map_err(|e| CtlError(format!("cannot read {}: {e}", file.display())))?;
    if !status.success() {
        let _ = std::fs::remove_file(&file);
        return Err(CtlError(format!("the editor {editor:?} failed: {status}")));
    }
    if after == before {
        let _ = std::fs::remove_file(&file);
        println!("Edit cancelled, no changes made.");
        return Ok(());
    }
    // Keep the edit when the write fails (a conflict, an invalid field): it is not lost.
    let kept = |e: CtlError| CtlError(format!("{e}; your edit is kept in {}", file.display()));
    let mut parsed = Vec::new();
    manifest::parse(&after, "the edited object", &mut parsed).map_err(kept)?;
    let [edited] = parsed.as_slice() else {
        return Err(kept(CtlError(
            "the edited file must hold exactly one object".into(),
        )));
    };
    ctx.client
        .put(&path, &edited.object)
        .await
        .map_err(|e| kept(e.into()))?;
    let _ = std::fs::remove_file(&file);
    println!("{} edited", resource::display(kind, &name));
    Ok(())
}

/// A new file only its owner can read, with `text` in it (objects may hold secrets).
fn private_file(text: &str) -> Result<std::path::PathBuf, CtlError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..16u32 {
        let name = format!(
            "keelctl-edit-{}-{nanos:x}-{attempt}.yaml",
            std::process::id()
        );
        let path = std::env::temp_dir().join(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match file {
            Ok(mut f) => {
                f.write_all(text.as_bytes())
                    .map_err(|e| CtlError(format!("cannot write {}: {e}", path.display())))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(CtlError(format!("cannot create {}: {e}", path.display()))),
        }
    }
    Err(CtlError(
        "cannot create a temporary file for the edit".into(),
    ))
}

/// `keelctl wait --for=condition=Ready[=True] KIND/NAME` or `--for=delete`.
pub async fn wait(ctx: &Ctx, target: &str, condition: &str, timeout: &str) -> Result<(), CtlError> {
    let (kind, name) = resource::kind_and_name(target)?;
    let secs: u64 = timeout
        .trim_end_matches('s')
        .parse()
        .map_err(|_| CtlError(format!("--timeout {timeout:?}: give seconds, like 30s")))?;
    let deadline = Instant::now() + Duration::from_secs(secs.min(86_400));
    let path = resource::item(kind, &ctx.namespace, &name);
    let want: Option<(String, String)> = match condition {
        "delete" => None,
        c => {
            let rest = c.strip_prefix("condition=").ok_or_else(|| {
                CtlError(format!("--for={c}: use condition=NAME[=STATUS] or delete"))
            })?;
            let (ty, status) = rest.split_once('=').unwrap_or((rest, "True"));
            Some((ty.to_string(), status.to_string()))
        }
    };
    loop {
        let current = ctx.client.get(&path).await;
        let done = match (&want, &current) {
            (None, Err(keel_client::ClientError::Api { code: 404, .. })) => true,
            (None, _) => false,
            (Some((ty, status)), Ok(o)) => o["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == ty.as_str() && c["status"] == status.as_str())
            }),
            (Some(_), Err(keel_client::ClientError::Api { code: 404, .. })) => false,
            (Some(_), Err(e)) => return Err(CtlError(e.to_string())),
        };
        if done {
            let what = if want.is_some() {
                "condition met"
            } else {
                "deleted"
            };
            println!("{} {what}", resource::display(kind, &name));
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CtlError(format!(
                "timed out waiting for the condition on {}",
                resource::display(kind, &name)
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `keelctl cluster status`: every server's role, term and applied index.
pub async fn cluster_status(ctx: &Ctx) -> Result<(), CtlError> {
    let status = ctx.client.get("/keel/v1/cluster").await?;
    println!(
        "CLUSTER {}   LEADER {}",
        status["clusterId"].as_str().unwrap_or_default(),
        status["leader"]
    );
    println!(
        "{:<6} {:<22} {:<10} {:<6} {:<9} {:<9} {:<9} VOTER",
        "NODE", "ADDRESS", "ROLE", "TERM", "LOG", "APPLIED", "REVISION"
    );
    for s in status["servers"].as_array().into_iter().flatten() {
        let field = |k: &str| match &s[k] {
            Value::Null => "-".to_string(),
            Value::String(t) => t.clone(),
            v => v.to_string(),
        };
        match s["error"].as_str() {
            Some(e) => println!(
                "{:<6} {:<22} unreachable: {e}",
                field("nodeId"),
                field("raftAddress")
            ),
            None => println!(
                "{:<6} {:<22} {:<10} {:<6} {:<9} {:<9} {:<9} {}",
                field("nodeId"),
                field("raftAddress"),
                field("role"),
                field("term"),
                field("lastLogIndex"),
                field("appliedIndex"),
                field("revision"),
                field("voter")
            ),
        }
    }
    Ok(())
}

/// `logs KIND/NAME`: the console, streamed from the object's node through the API server.
pub async fn logs(
    ctx: &Ctx,
    target: &str,
    follow: bool,
    tail: i64,
    limit_bytes: Option<u64>,
) -> Result<(), CtlError> {
    use std::io::Write;
    let (kind, name) = resource::kind_and_name(target)?;
    let mut query = vec![format!("follow={follow}")];
    if tail >= 0 {
        query.push(format!("tailLines={tail}"));
    }
    if let Some(limit) = limit_bytes {
        query.push(format!("limitBytes={limit}"));
    }
    let path = format!(
        "{}/log?{}",
        resource::item(kind, &ctx.namespace, &name),
        query.join("&")
    );
    let mut body = ctx.client.stream(&path).await?;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        out.write_all(&chunk)
            .and_then(|()| out.flush())
            .map_err(|e| CtlError(format!("cannot write the log: {e}")))?;
    }
    Ok(())
}

/// What `start`, `stop` and `restart` ask of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Run it.
    Start,
    /// Shut it down.
    Stop,
    /// Shut it down and run it again.
    Restart,
}

/// `start|stop|restart vm/NAME`: through the run strategy where it says what should run
/// (Always, RerunOnFailure, Halted), through a request annotation the VM's agent acts on
/// once otherwise (Manual, and every restart).
pub async fn power(ctx: &Ctx, target: &str, what: Power) -> Result<(), CtlError> {
    let (kind, name) = resource::kind_and_name(target)?;
    if kind.kind != "VirtualMachine" {
        return Err(CtlError(format!(
            "{target}: only VirtualMachines start and stop"
        )));
    }
    let path = resource::item(kind, &ctx.namespace, &name);
    let vm = ctx.client.get(&path).await?;
    let strategy = vm["spec"]["runStrategy"].as_str().unwrap_or("Always");
    let now = keel_schemas::time::now_rfc3339_micros();
    let request =
        |annotation: &str| serde_json::json!({"metadata": {"annotations": {annotation: now}}});
    let (patch, said) = match (what, strategy) {
        (Power::Start, "Halted") => (
            serde_json::json!({"spec": {"runStrategy": "Always"}}),
            "started",
        ),
        (Power::Start, _) => (
            request(wellknown::START_REQUESTED_ANNOTATION),
            "start requested",
        ),
        (Power::Stop, "Halted") => {
            println!(
                "{} is already stopped (runStrategy Halted)",
                resource::display(kind, &name)
            );
            return Ok(());
        }
        (Power::Stop, "Manual") => (
            request(wellknown::STOP_REQUESTED_ANNOTATION),
            "stop requested",
        ),
        (Power::Stop, _) => (
            serde_json::json!({"spec": {"runStrategy": "Halted"}}),
            "stopped",
        ),
        (Power::Restart, "Halted") => {
            return Err(CtlError(format!(
                "{} is stopped (runStrategy Halted): start it instead",
                resource::display(kind, &name)
            )));
        }
        (Power::Restart, _) => (
            request(wellknown::RESTART_REQUESTED_ANNOTATION),
            "restart requested",
        ),
    };
    ctx.client
        .patch(&path, "application/merge-patch+json", &patch)
        .await?;
    println!("{} {said}", resource::display(kind, &name));
    Ok(())
}
