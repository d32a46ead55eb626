//! What a container takes from outside its image, made ready before it is created (the
//! kubelet's volume manager and its environment): the pod's volumes as directories under
//! `<pods>/volumes/<pod uid>/<volume>` bind-mounted where `volumeMounts` say, and the
//! environment from `env` (values, `valueFrom`) and `envFrom`.
//!
//! - `emptyDir`: an empty directory that lives as long as the pod (kept across container
//!   restarts);
//! - `persistentVolumeClaim`: the directory of the local volume the claim is bound to
//!   (`<pods>/persistent/<volume handle>`), which outlives the pod; it is removed once its
//!   PersistentVolume is deleted and no pod of the node uses it;
//! - `configMap`, `secret`, `downwardAPI`, `projected` (of those three): files written from
//!   the objects (`items` pick keys and paths, `defaultMode`/`mode` their permissions),
//!   mounted read-only; written again (file by file, in the same directory, so the other
//!   containers' mounts stay good) before each container instance starts, so a restarted
//!   container sees the objects as they are then;
//! - `valueFrom` (`configMapKeyRef`, `secretKeyRef`, `fieldRef`, `resourceFieldRef`) and
//!   `envFrom` (`configMapRef`, `secretRef`, with `prefix`), `env` after `envFrom` as in
//!   Kubernetes.
//!
//! A missing ConfigMap, Secret or key that is not `optional` keeps the container from
//! being created (`CreateContainerConfigError`, naming it), as the kubelet does. Every path
//! and key is a tenant's text: an absolute path, a `..` component, or a key that is not a
//! file name is refused rather than followed. `subPath` is taken only inside volumes this
//! node writes (a container writes an `emptyDir`, and a link it left there must not lead a
//! mount outside it). Volume kinds this node cannot give (`hostPath`, ...)
//! are refused the same way. A projected `serviceAccountToken` is a token of the pod's
//! account bound to the pod ([`crate::tokens`]), kept fresh while the pod runs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use keel_client::Api;
use keel_runtime::ObjectExt;
use keel_schemas::kinds::core::{Container, Pod};
use serde_json::Value;

use crate::Context;
use crate::cri::v1;

/// What a container instance is given.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    pub(crate) mounts: Vec<v1::Mount>,
    pub(crate) envs: Vec<v1::KeyValue>,
}

/// The pod's addresses, for `fieldRef`s.
#[derive(Debug, Clone, Default)]
pub(crate) struct Addresses {
    pub(crate) pod_ip: Option<String>,
    pub(crate) host_ip: Option<String>,
}

/// The directory of the volumes of pod `uid`.
pub(crate) fn pod_dir(ctx: &Context, uid: &str) -> PathBuf {
    ctx.host.dir.join("volumes").join(uid)
}

/// The directory of the node's local persistent volumes (`<pods>/persistent/<handle>`).
pub(crate) fn persistent_dir(ctx: &Context) -> PathBuf {
    ctx.host.dir.join("persistent")
}

/// The directory of the local volume that claim `name` of `pod`'s namespace is bound to,
/// made if new. The binding is checked from the volume's side (its `claimRef` names the
/// claim and its uid): a claim's `volumeName` is its author's text, and must not lead a pod
/// to another tenant's volume. The volume must be of Keel's local driver and on this node.
async fn claim_dir(ctx: &Context, pod: &Pod, name: &str) -> Result<PathBuf, String> {
    use keel_schemas::kinds::storage::{
        LOCAL_DRIVER, PersistentVolume, PersistentVolumeClaim, binds, volume_nodes,
    };
    let namespace = pod.namespace().unwrap_or("default");
    let client = &ctx.host.node.client;
    let (Some(claim_kind), Some(volume_kind)) = (
        keel_schemas::lookup("persistentvolumeclaims"),
        keel_schemas::lookup("persistentvolumes"),
    ) else {
        return Err("the API has no persistent volumes".into());
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, claim_kind, namespace);
    let claim = claims
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read persistentvolumeclaim {name:?}: {e}"))?
        .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
    let volume_name = claim
        .spec
        .volume_name
        .clone()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("persistentvolumeclaim {name:?} is not bound yet"))?;
    let volumes: Api<PersistentVolume> = Api::all(client, volume_kind);
    let volume = volumes
        .get_opt(&volume_name)
        .await
        .map_err(|e| format!("cannot read persistentvolume {volume_name:?}: {e}"))?
        .ok_or_else(|| format!("persistentvolume {volume_name:?} not found"))?;
    if !binds(&volume, namespace, name, claim.uid()) {
        return Err(format!(
            "persistentvolume {volume_name:?} is not bound to claim {name:?}"
        ));
    }
    if volume.spec.csi.driver != LOCAL_DRIVER {
        return Err(format!(
            "persistentvolume {volume_name:?} is of driver {:?}; this node serves {LOCAL_DRIVER}",
            volume.spec.csi.driver
        ));
    }
    let node = ctx.host.node.name.as_str();
    if let Some(nodes) = volume_nodes(&volume)
        && !nodes.iter().any(|n| n == node)
    {
        return Err(format!(
            "persistentvolume {volume_name:?} is on node(s) {nodes:?}, not on {node}"
        ));
    }
    let handle = volume.spec.csi.volume_handle.as_str();
    if !keel_schemas::names::is_dns_label(handle) {
        return Err(format!(
            "persistentvolume {volume_name:?}: volume handle {handle:?} is not a directory name"
        ));
    }
    let dir = persistent_dir(ctx).join(handle);
    if !dir.exists() {
        // Writable by whatever user the pod's containers run as, as local-path makes it.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make its directory: {e}"))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("cannot open its directory to the pod's users: {e}"))?;
    }
    ctx.claimed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(pod.uid().to_string())
        .or_default()
        .insert(handle.to_string());
    Ok(dir)
}

/// Removes the directories of local volumes that no longer exist (their claim was deleted
/// with a `Delete` reclaim policy), once no pod of this node uses them, every `every`.
pub(crate) async fn sweep(
    ctx: std::sync::Arc<Context>,
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(volume_kind) = keel_schemas::lookup("persistentvolumes") else {
        return;
    };
    let volumes: Api<Value> = Api::all(&ctx.host.node.client, volume_kind);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Ok(entries) = std::fs::read_dir(persistent_dir(&ctx)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(handle) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let in_use = ctx
                .claimed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|h| h.contains(&handle));
            if in_use {
                continue;
            }
            // Only a volume the API says is gone: any error keeps the data.
            match volumes.get_opt(&handle).await {
                Ok(None) => {
                    let dir = entry.path();
                    match std::fs::remove_dir_all(&dir) {
                        Ok(()) => {
                            tracing::info!(volume = %handle, "volume deleted: its directory removed")
                        }
                        Err(e) => {
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a deleted volume's directory")
                        }
                    }
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    tracing::debug!(volume = %handle, error = %e, "cannot tell whether the volume exists")
                }
            }
        }
    }
}

/// Mounts a tmpfs at `dir` (made if missing) of `size` bytes (half the memory when none),
/// unless one is there already (the volume of an earlier container of the pod).
fn tmpfs(dir: &Path, size: Option<u64>, mode: u32) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot make its directory: {e}"))?;
    if mounted_under(dir).iter().any(|m| m == dir) {
        return Ok(());
    }
    let mut options = format!("mode={mode:o}");
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| format!("cannot mount its tmpfs: {e}"))
}

/// The mount points at or under `dir` (of this process's mount namespace), deepest first.
fn mounted_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        // Spaces and the like are written as octal escapes; a pod's paths have none.
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// Removes what pod `uid`'s volumes left (its persistent volumes stay).
pub(crate) fn remove(ctx: &Context, uid: &str) {
    ctx.claimed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(uid);
    if uid.is_empty() || uid.contains(['/', '.']) {
        return;
    }
    let dir = pod_dir(ctx, uid);
    for point in mounted_under(&dir) {
        if let Err(e) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(dir = %point.display(), error = %e, "cannot unmount a pod's tmpfs");
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a pod's volumes");
    }
}

/// The ConfigMaps and Secrets one preparation read, each once.
struct Objects<'a> {
    ctx: &'a Context,
    namespace: String,
    read: HashMap<(&'static str, String), Option<Value>>,
}

impl Objects<'_> {
    /// The `data` of ConfigMap or Secret `name` (`resource` "configmaps" or "secrets"),
    /// decoded to bytes; none if it does not exist.
    async fn data(
        &mut self,
        resource: &'static str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let key = (resource, name.to_string());
        if !self.read.contains_key(&key) {
            let kind = keel_schemas::lookup(resource)
                .ok_or_else(|| format!("the API has no {resource}"))?;
            let api: Api<Value> =
                Api::namespaced(&self.ctx.host.node.client, kind, &self.namespace);
            let got = api
                .get_opt(name)
                .await
                .map_err(|e| format!("cannot read {} {name:?}: {e}", singular(resource)))?;
            self.read.insert(key.clone(), got);
        }
        let Some(object) = self.read.get(&key).and_then(Option::as_ref) else {
            return Ok(None);
        };
        let mut out = BTreeMap::new();
        let text = |v: &Value| v.as_str().map(|s| s.as_bytes().to_vec());
        if resource == "secrets" {
            for (k, v) in object["data"].as_object().into_iter().flatten() {
                let bytes = v
                    .as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .ok_or_else(|| format!("secret {name:?} key {k:?} is not base64"))?;
                out.insert(k.clone(), bytes);
            }
        } else {
            for (k, v) in object["data"].as_object().into_iter().flatten() {
                out.extend(text(v).map(|b| (k.clone(), b)));
            }
            for (k, v) in object["binaryData"].as_object().into_iter().flatten() {
                let bytes = v
                    .as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
                out.extend(bytes.map(|b| (k.clone(), b)));
            }
        }
        Ok(Some(out))
    }
}

/// The credentials a pod's `imagePullSecrets` hold for `registry`, in their order, and the
/// Secrets that could not be read (missing, unreadable).
pub(crate) async fn pull_credentials(
    ctx: &Context,
    pod: &keel_schemas::kinds::core::Pod,
    registry: &str,
) -> (Vec<crate::cri::v1::AuthConfig>, Vec<String>) {
    use keel_runtime::ObjectExt as _;
    let mut objects = Objects {
        ctx,
        namespace: pod.namespace().unwrap_or("default").to_string(),
        read: HashMap::new(),
    };
    let mut auths = Vec::new();
    let mut missing = Vec::new();
    for reference in &pod.spec.image_pull_secrets {
        match objects.data("secrets", &reference.name).await {
            Ok(Some(data)) => {
                auths.extend(crate::registries::secret_auth(&data, registry));
            }
            Ok(None) => missing.push(format!("secret {:?} does not exist", reference.name)),
            Err(e) => missing.push(e),
        }
    }
    (auths, missing)
}

fn singular(resource: &str) -> &'static str {
    if resource == "secrets" {
        "secret"
    } else {
        "configmap"
    }
}

/// The longest a string may grow by expansion. Each variable may hold the expansion of the
/// ones before it, so a tenant's chain of `B=$(A)$(A)`, `C=$(B)$(B)`, ... would double at
/// each step; past this, the text is left as written.
const MAX_EXPANDED: usize = 1 << 20;

/// `text` with each `$(NAME)` that `lookup` knows replaced by its value, as Kubernetes
/// expands `command`, `args` and `env` values: `$$` is a `$`, and a `$(NAME)` it does not
/// know, or one left open, stays as written. A result over [`MAX_EXPANDED`] bytes is not
/// made: `text` is returned as it is.
pub(crate) fn expand<'a>(text: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    expand_within(text, lookup, MAX_EXPANDED).unwrap_or_else(|| text.to_string())
}

fn expand_within<'a>(
    text: &str,
    lookup: impl Fn(&str) -> Option<&'a str>,
    max: usize,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match lookup(name) {
                Some(value) => {
                    if out.len() + value.len() > max {
                        return None;
                    }
                    out.push_str(value)
                }
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    (out.len() <= max).then_some(out)
}

/// The variables that tell a container where the API is (`KUBERNETES_SERVICE_HOST`,
/// `KUBERNETES_SERVICE_PORT`, ...), from the `kubernetes` Service of `default`; none while it
/// does not exist. Its address, once read, is kept.
async fn kubernetes_env(ctx: &Context) -> Vec<(String, String)> {
    let known = ctx
        .api_service
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let at = match known {
        Some(at) => Some(at),
        None => {
            let read = match keel_schemas::lookup("services") {
                Some(kind) => Api::<Value>::namespaced(&ctx.host.node.client, kind, "default")
                    .get_opt("kubernetes")
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            let at = read.and_then(|s| {
                let ip = s["spec"]["clusterIP"].as_str()?.to_string();
                let port = s["spec"]["ports"][0]["port"].as_u64()?;
                Some((ip, port))
            });
            if let Some(at) = &at {
                *ctx.api_service.lock().unwrap_or_else(|e| e.into_inner()) = Some(at.clone());
            }
            at
        }
    };
    let Some((ip, port)) = at else {
        return Vec::new();
    };
    let url = format!("tcp://{ip}:{port}");
    [
        ("KUBERNETES_SERVICE_HOST", ip.clone()),
        ("KUBERNETES_SERVICE_PORT", port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
        ("KUBERNETES_PORT", url.clone()),
        (&format!("KUBERNETES_PORT_{port}_TCP"), url),
        (&format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (
            &format!("KUBERNETES_PORT_{port}_TCP_PORT"),
            port.to_string(),
        ),
        (&format!("KUBERNETES_PORT_{port}_TCP_ADDR"), ip),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Makes `c`'s volumes and environment ready, or says why it cannot be (the container
/// then waits with `CreateContainerConfigError`).
pub(crate) async fn prepare(
    ctx: &Context,
    pod: &Pod,
    c: &Container,
    addresses: &Addresses,
) -> Result<Prepared, String> {
    let mut objects = Objects {
        ctx,
        namespace: pod.namespace().unwrap_or("default").to_string(),
        read: HashMap::new(),
    };
    let mut prepared = Prepared::default();
    // The API's Service first (as the kubelet gives it to every container), then envFrom;
    // env after it, a name of env replacing the same from those.
    let mut envs: Vec<(String, String)> = kubernetes_env(ctx).await;
    let set = |envs: &mut Vec<(String, String)>, k: String, v: String| {
        envs.retain(|(name, _)| *name != k);
        envs.push((k, v));
    };
    let env_from = c.other.get("envFrom").and_then(Value::as_array);
    for source in env_from.into_iter().flatten() {
        let prefix = source["prefix"].as_str().unwrap_or_default();
        let (resource, reference) = if source.get("configMapRef").is_some() {
            ("configmaps", &source["configMapRef"])
        } else if source.get("secretRef").is_some() {
            ("secrets", &source["secretRef"])
        } else {
            return Err("envFrom: give configMapRef or secretRef".into());
        };
        let name = reference["name"].as_str().unwrap_or_default();
        let optional = reference["optional"].as_bool() == Some(true);
        match objects.data(resource, name).await? {
            Some(data) => {
                for (k, v) in data {
                    let key = format!("{prefix}{k}");
                    // Kubernetes skips keys that are not environment variable names.
                    if env_name(&key) {
                        set(&mut envs, key, String::from_utf8_lossy(&v).into_owned());
                    }
                }
            }
            None if optional => {}
            None => return Err(format!("{} {name:?} not found", singular(resource))),
        }
    }
    for e in &c.env {
        let value = match (&e.value, &e.value_from) {
            (_, Some(from)) => match value_from(&mut objects, pod, c, addresses, from).await? {
                Some(v) => v,
                None => continue,
            },
            // `$(NAME)` of a variable defined before it.
            (Some(v), None) => expand(v, |name| {
                envs.iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            }),
            (None, None) => String::new(),
        };
        set(&mut envs, e.name.clone(), value);
    }
    prepared.envs = envs
        .into_iter()
        .map(|(key, value)| v1::KeyValue { key, value })
        .collect();
    // Volumes: each mounted one made ready once.
    let volumes: BTreeMap<&str, &Value> = pod
        .spec
        .volumes
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    let dir = pod_dir(ctx, pod.uid());
    let mut made: HashMap<String, (PathBuf, bool)> = HashMap::new();
    let mut read_only_claims: Vec<&str> = Vec::new();
    for mount in &c.volume_mounts {
        let name = mount["name"].as_str().unwrap_or_default();
        let Some(volume) = volumes.get(name) else {
            return Err(format!("volume mount {name:?}: the pod has no such volume"));
        };
        let target = mount["mountPath"].as_str().unwrap_or_default();
        if !target.starts_with('/') || has_parent(Path::new(target)) {
            return Err(format!(
                "volume mount {name:?}: mountPath {target:?} must be an absolute path without '..'"
            ));
        }
        if !made.contains_key(name)
            && let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str()
        {
            let path = claim_dir(ctx, pod, claim)
                .await
                .map_err(|e| format!("volume {name:?}: {e}"))?;
            made.insert(name.to_string(), (path, false));
            if volume["persistentVolumeClaim"]["readOnly"].as_bool() == Some(true) {
                read_only_claims.push(name);
            }
        }
        if !made.contains_key(name) {
            let path = dir.join(name);
            let written = make(&mut objects, pod, c, addresses, volume, &path)
                .await
                .map_err(|e| format!("volume {name:?}: {e}"))?;
            made.insert(name.to_string(), (path, written));
        }
        let (path, written) = &made[name];
        let mut host = path.clone();
        if let Some(sub) = mount["subPath"].as_str().filter(|s| !s.is_empty()) {
            if !written {
                return Err(format!(
                    "volume mount {name:?}: subPath is taken only in configMap, secret, downwardAPI and projected volumes on this node"
                ));
            }
            let sub = relative(sub).map_err(|e| format!("volume mount {name:?}: subPath {e}"))?;
            host = host.join(sub);
        }
        let read_only = mount["readOnly"].as_bool() == Some(true)
            || *written
            || read_only_claims.contains(&name);
        prepared.mounts.push(v1::Mount {
            container_path: target.to_string(),
            host_path: host.display().to_string(),
            readonly: read_only,
            ..Default::default()
        });
    }
    Ok(prepared)
}

/// One `valueFrom`: the value, or none when an optional source is missing.
async fn value_from(
    objects: &mut Objects<'_>,
    pod: &Pod,
    c: &Container,
    addresses: &Addresses,
    from: &Value,
) -> Result<Option<String>, String> {
    for (field, resource) in [
        ("configMapKeyRef", "configmaps"),
        ("secretKeyRef", "secrets"),
    ] {
        let Some(r) = from.get(field) else { continue };
        let name = r["name"].as_str().unwrap_or_default();
        let key = r["key"].as_str().unwrap_or_default();
        let optional = r["optional"].as_bool() == Some(true);
        let data = objects.data(resource, name).await?;
        return match data.as_ref().map(|d| d.get(key)) {
            Some(Some(v)) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
            _ if optional => Ok(None),
            None => Err(format!("{} {name:?} not found", singular(resource))),
            Some(None) => Err(format!(
                "couldn't find key {key} in {} {}/{name}",
                if resource == "secrets" {
                    "Secret"
                } else {
                    "ConfigMap"
                },
                objects.namespace
            )),
        };
    }
    if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
        return field(pod, addresses, path).map(Some);
    }
    if let Some(r) = from.get("resourceFieldRef") {
        return resource_field(pod, c, r).map(Some);
    }
    Err("valueFrom: give configMapKeyRef, secretKeyRef, fieldRef or resourceFieldRef".into())
}

/// A `fieldRef`'s value.
fn field(pod: &Pod, addresses: &Addresses, path: &str) -> Result<String, String> {
    let keyed = |prefix: &str, map: &BTreeMap<String, String>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    let meta = &pod.metadata;
    let text = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| {
                format!(
                    "{k}=\"{}\"",
                    v.replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(match path {
        "metadata.name" => pod.name().to_string(),
        "metadata.namespace" => pod.namespace().unwrap_or("default").to_string(),
        "metadata.uid" => pod.uid().to_string(),
        "metadata.labels" => text(&meta.labels),
        "metadata.annotations" => text(&meta.annotations),
        "spec.nodeName" => pod.spec.node_name.clone().unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .other
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string(),
        "status.podIP" | "status.podIPs" => addresses.pod_ip.clone().unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => addresses.host_ip.clone().unwrap_or_default(),
        _ => {
            if let Some(v) = keyed("metadata.labels['", &meta.labels) {
                v
            } else if let Some(v) = keyed("metadata.annotations['", &meta.annotations) {
                v
            } else {
                return Err(format!("fieldRef {path:?} is not a field Kubernetes gives"));
            }
        }
    })
}

/// A `resourceFieldRef`'s value: a request or limit of the container, in `divisor`s
/// (rounded up, as Kubernetes does); an unset limit is the node's allocatable in Kubernetes,
/// here 0 (none).
fn resource_field(pod: &Pod, c: &Container, r: &Value) -> Result<String, String> {
    let name = r["containerName"].as_str().filter(|n| !n.is_empty());
    let container = match name {
        Some(n) => pod
            .spec
            .containers
            .iter()
            .chain(&pod.spec.init_containers)
            .find(|x| x.name == n)
            .ok_or_else(|| format!("resourceFieldRef: no container {n:?}"))?,
        None => c,
    };
    let resource = r["resource"].as_str().unwrap_or_default();
    let (list, what) = resource.split_once('.').ok_or_else(|| {
        format!("resourceFieldRef {resource:?}: give limits.cpu, requests.memory, ...")
    })?;
    let map = container.resources.as_ref().map(|res| match list {
        "limits" => &res.limits,
        _ => &res.requests,
    });
    let quantity = map.and_then(|m| m.get(what)).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let divisor = r["divisor"]
        .as_str()
        .map(str::to_string)
        .or_else(|| r["divisor"].as_u64().map(|n| n.to_string()))
        .unwrap_or_else(|| "1".into());
    let value = |q: &str| -> Option<f64> {
        if what == "cpu" {
            crate::sync::millicores(q).map(|m| m as f64 / 1000.0)
        } else {
            keel_schemas::parse_quantity(q).map(|b| b as f64)
        }
    };
    let amount = quantity.as_deref().map_or(Some(0.0), value).unwrap_or(0.0);
    let per = value(&divisor).filter(|d| *d > 0.0).unwrap_or(1.0);
    Ok(format!("{}", (amount / per).ceil() as u64))
}

/// Makes volume `volume` at `path`: whether its files are written by this node (and so
/// mounted read-only, and open to `subPath`), or an error naming what is missing.
async fn make(
    objects: &mut Objects<'_>,
    pod: &Pod,
    c: &Container,
    addresses: &Addresses,
    volume: &Value,
    path: &Path,
) -> Result<bool, String> {
    if let Some(empty) = volume.get("emptyDir") {
        std::fs::create_dir_all(path).map_err(|e| format!("cannot make its directory: {e}"))?;
        if empty["medium"] == "Memory" {
            let size = keel_schemas::quantity::quantity_of(&empty["sizeLimit"])
                .and_then(|b| u64::try_from(b).ok());
            tmpfs(path, size, 0o777)?;
        }
        return Ok(false);
    }
    // What holds secrets (and the downward API) stays off the disk, as in Kubernetes.
    if ["secret", "projected", "downwardAPI"]
        .iter()
        .any(|k| volume.get(*k).is_some())
    {
        tmpfs(path, None, 0o755)?;
    }
    let mut files: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
    let mut tokens: Vec<(PathBuf, crate::tokens::Request, u64)> = Vec::new();
    let default_mode = |v: &Value| {
        v["defaultMode"]
            .as_u64()
            .map_or(0o644, |m| m as u32 & 0o777)
    };
    if let Some(source) = volume.get("configMap") {
        let mode = default_mode(source);
        object_files(objects, "configmaps", "name", source, mode, &mut files).await?;
    } else if let Some(source) = volume.get("secret") {
        let mode = default_mode(source);
        object_files(objects, "secrets", "secretName", source, mode, &mut files).await?;
    } else if let Some(source) = volume.get("downwardAPI") {
        let mode = default_mode(source);
        downward_files(pod, c, addresses, source, mode, &mut files)?;
    } else if let Some(source) = volume.get("projected") {
        let mode = default_mode(source);
        for s in source["sources"].as_array().into_iter().flatten() {
            if let Some(t) = s.get("serviceAccountToken") {
                let request = crate::tokens::Request::of(pod, t)?;
                let file = relative(t["path"].as_str().unwrap_or_default())?;
                let (token, expires) = crate::tokens::request(objects.ctx, &request).await?;
                files.push((file.clone(), token.into_bytes(), mode));
                tokens.push((file, request, expires));
            } else if let Some(cm) = s.get("configMap") {
                object_files(objects, "configmaps", "name", cm, mode, &mut files).await?;
            } else if let Some(secret) = s.get("secret") {
                object_files(objects, "secrets", "name", secret, mode, &mut files).await?;
            } else if let Some(d) = s.get("downwardAPI") {
                downward_files(pod, c, addresses, d, mode, &mut files)?;
            } else {
                let kind = s
                    .as_object()
                    .and_then(|o| o.keys().next().cloned())
                    .unwrap_or_default();
                return Err(format!(
                    "projected source {kind:?} is not supported by this Keel node yet"
                ));
            }
        }
    } else {
        let kind = volume
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "name").cloned())
            .unwrap_or_default();
        return Err(format!(
            "{kind} volumes are not supported by this Keel node yet"
        ));
    }
    write_files(path, &files).map_err(|e| format!("cannot write its files: {e}"))?;
    for (file, request, expires) in tokens {
        let mode = files
            .iter()
            .find(|(p, _, _)| *p == file)
            .map_or(0o644, |(_, _, m)| *m);
        objects
            .ctx
            .tokens
            .remember(pod.uid(), path.join(file), mode, request, expires);
    }
    Ok(true)
}

/// The files of a ConfigMap or Secret volume source (`items`, or every key).
async fn object_files(
    objects: &mut Objects<'_>,
    resource: &'static str,
    name_field: &str,
    source: &Value,
    mode: u32,
    files: &mut Vec<(PathBuf, Vec<u8>, u32)>,
) -> Result<(), String> {
    let name = source[name_field].as_str().unwrap_or_default();
    let optional = source["optional"].as_bool() == Some(true);
    let Some(data) = objects.data(resource, name).await? else {
        return if optional {
            Ok(())
        } else {
            Err(format!("{} {name:?} not found", singular(resource)))
        };
    };
    match source["items"].as_array() {
        Some(items) => {
            for item in items {
                let key = item["key"].as_str().unwrap_or_default();
                let Some(bytes) = data.get(key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!(
                        "{} {name:?} has no key {key:?}",
                        singular(resource)
                    ));
                };
                let path = relative(item["path"].as_str().unwrap_or(key))?;
                let mode = item["mode"].as_u64().map_or(mode, |m| m as u32 & 0o777);
                files.push((path, bytes.clone(), mode));
            }
        }
        None => {
            for (key, bytes) in data {
                // A key is a file name (Kubernetes' rule for keys).
                if let Ok(path) = relative(&key)
                    && path.components().count() == 1
                {
                    files.push((path, bytes, mode));
                }
            }
        }
    }
    Ok(())
}

/// The files of a downwardAPI volume source.
fn downward_files(
    pod: &Pod,
    c: &Container,
    addresses: &Addresses,
    source: &Value,
    mode: u32,
    files: &mut Vec<(PathBuf, Vec<u8>, u32)>,
) -> Result<(), String> {
    for item in source["items"].as_array().into_iter().flatten() {
        let path = relative(item["path"].as_str().unwrap_or_default())?;
        let value = if let Some(f) = item["fieldRef"]["fieldPath"].as_str() {
            field(pod, addresses, f)?
        } else if let Some(r) = item.get("resourceFieldRef") {
            resource_field(pod, c, r)?
        } else {
            return Err(format!(
                "item {}: give fieldRef or resourceFieldRef",
                path.display()
            ));
        };
        let mode = item["mode"].as_u64().map_or(mode, |m| m as u32 & 0o777);
        files.push((path, value.into_bytes(), mode));
    }
    Ok(())
}

/// `path` as a relative path inside a volume, or why it is not one.
fn relative(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if path.is_empty() || p.is_absolute() || has_parent(p) {
        return Err(format!("{path:?} must be a relative path without '..'"));
    }
    Ok(p.components().collect())
}

fn has_parent(p: &Path) -> bool {
    p.components().any(|c| matches!(c, Component::ParentDir))
}

/// Writes `files` into `dir`, each file whole (written beside it, then renamed over it),
/// and removes the files that are no longer among them. The directory itself stays: a
/// container of the pod that runs on has it mounted and sees the new files.
fn write_files(dir: &Path, files: &[(PathBuf, Vec<u8>, u32)]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for (path, bytes, mode) in files {
        let target = dir.join(path);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)?;
        }
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let fresh = target.with_file_name(format!("..{name}.new"));
        std::fs::write(&fresh, bytes)?;
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(*mode))?;
        std::fs::rename(&fresh, &target)?;
    }
    let wanted: std::collections::HashSet<PathBuf> =
        files.iter().map(|(p, _, _)| dir.join(p)).collect();
    prune(dir, &wanted)?;
    Ok(())
}

/// Removes what under `dir` is not in `wanted` (files, and directories left empty).
fn prune(dir: &Path, wanted: &std::collections::HashSet<PathBuf>) -> std::io::Result<bool> {
    let mut empty = true;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if prune(&path, wanted)? {
                std::fs::remove_dir(&path)?;
            } else {
                empty = false;
            }
        } else if wanted.contains(&path) {
            empty = false;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(empty)
}

/// Whether `s` is an environment variable name Kubernetes takes from `envFrom`.
fn env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_tenants_stay_inside_the_volume() {
        assert_eq!(relative("a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
        assert!(relative("../etc/shadow").is_err());
        assert!(relative("a/../../x").is_err());
        assert!(relative("/etc/passwd").is_err());
        assert!(relative("").is_err());
        assert!(env_name("DB_HOST") && env_name("a.b-c") && !env_name("1X") && !env_name("A B"));
    }

    #[test]
    fn files_are_rewritten_in_the_same_directory() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("v");
        write_files(&dir, &[(PathBuf::from("a/x"), b"1".to_vec(), 0o600)]).unwrap();
        let inode = std::fs::metadata(&dir).unwrap().ino();
        write_files(&dir, &[(PathBuf::from("b/c"), b"2".to_vec(), 0o644)]).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().ino(),
            inode,
            "mounts stay valid"
        );
        assert!(!dir.join("a").exists(), "a key gone from the object goes");
        assert_eq!(std::fs::read(dir.join("b/c")).unwrap(), b"2");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("b/c"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}

#[cfg(test)]
mod expand_tests {
    use super::{MAX_EXPANDED, expand, expand_within};

    #[test]
    fn variables_expand_as_kubernetes_expands_them() {
        let vars = |name: &str| match name {
            "A" => Some("1"),
            "EMPTY" => Some(""),
            "LONG" => Some("$(A)"),
            _ => None,
        };
        assert_eq!(expand("x$(A)y", vars), "x1y");
        assert_eq!(expand("$(A)$(A)", vars), "11");
        assert_eq!(expand("$$(A)", vars), "$(A)");
        assert_eq!(expand("$$$(A)", vars), "$1");
        assert_eq!(expand("$(NOPE) $(EMPTY).", vars), "$(NOPE) .");
        assert_eq!(expand("$(A", vars), "$(A");
        assert_eq!(expand("cost: 5$", vars), "cost: 5$");
        assert_eq!(expand("$x $", vars), "$x $");
        // A value is not expanded again.
        assert_eq!(expand("$(LONG)", vars), "$(A)");
        assert_eq!(expand("é$(A)ü", vars), "é1ü");
        // Past the bound, the text stays as written.
        assert_eq!(expand_within("$(A)$(A)$(A)", vars, 2), None);
        let doubled = "$(A)".repeat(MAX_EXPANDED);
        assert_eq!(expand(&doubled, |_| Some("xy")), doubled);
    }
}
