//! The verbs on one object: get, create, replace (and its `/status`), patch, delete — with
//! Kubernetes' rules for resourceVersion, generation, finalizers and status.

use serde_json::{Value, json};

use keel_schemas::limits::Limits;
use keel_schemas::{Kind, Scope, lookup, storage_key};

use super::Api;
use super::limits::check_limits;
use super::meta::{self, finalizers, meta_str, set_resource_version};
use super::request::{Target, parse_rv};
use super::status::{ApiError, ApiResult};
use crate::admission;
use crate::raft::Consistency;
use keel_store::{Compare, KeyRange, KeyValue, Op, RangeRequest, Txn};

/// How often a write retries after losing a race it did not ask to detect.
const RETRIES: usize = 5;

/// The kinds of patch bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    /// RFC 7386 JSON merge patch.
    Merge,
    /// RFC 6902 JSON patch.
    Json,
    /// Kubernetes strategic merge patch (keyed lists merge by key).
    Strategic,
}

/// An object as stored, with its revision.
pub(crate) struct Stored {
    pub object: Value,
    pub mod_revision: u64,
}

// === impl Api ===

impl Api {
    pub(crate) fn key(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<String> {
        let ns = match kind.scope {
            Scope::Namespaced => namespace,
            Scope::Cluster => None,
        };
        storage_key(kind, ns, name)
            .ok_or_else(|| ApiError::bad_request(format!("invalid name {name:?}")))
    }

    /// Reads one object, linearizably.
    pub(crate) async fn read(&self, key: &str) -> ApiResult<Option<Stored>> {
        let resp = self
            .server
            .range(
                RangeRequest {
                    range: Some(KeyRange::Key(key.as_bytes().to_vec())),
                    ..RangeRequest::default()
                },
                Consistency::Linearizable,
            )
            .await?;
        resp.kvs
            .into_iter()
            .next()
            .map(|kv| self.decode(kv))
            .transpose()
    }

    /// An object from the store (decrypted when it is stored encrypted), with its
    /// resourceVersion set.
    pub(crate) fn decode(&self, kv: KeyValue) -> ApiResult<Stored> {
        let plain = self
            .encryption
            .open(&kv.key, &kv.value)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut object: Value = serde_json::from_slice(&plain).map_err(|e| {
            ApiError::internal(format!(
                "stored object {} does not decode: {e}",
                String::from_utf8_lossy(&kv.key)
            ))
        })?;
        set_resource_version(&mut object, kv.mod_revision);
        Ok(Stored {
            object,
            mod_revision: kv.mod_revision,
        })
    }

    /// What the store keeps for `object` under `key`: without the server's per-read fields,
    /// and encrypted when its resource is.
    pub(crate) fn encode(&self, key: &str, object: &Value) -> Vec<u8> {
        self.encryption
            .seal(key.as_bytes(), meta::for_storage(object))
    }

    /// GET of one object.
    pub(crate) async fn get(&self, t: &Target) -> ApiResult<Value> {
        let name = t.name.as_deref().unwrap_or_default();
        let key = self.key(t.kind, t.namespace.as_deref(), name)?;
        match self.read(&key).await? {
            Some(s) => Ok(s.object),
            None => Err(ApiError::not_found(t.kind.group, t.kind.plural, name)),
        }
    }

    /// POST to a collection.
    pub(crate) async fn create(&self, t: &Target, mut object: Value) -> ApiResult<Value> {
        let kind = t.kind;
        check_type(kind, &object)?;
        let namespace = place(kind, t.namespace.as_deref(), &mut object)?;
        let name = match meta_str(&object, "name") {
            Some(n) => n.to_string(),
            None => match meta_str(&object, "generateName") {
                Some(prefix) => format!("{prefix}{}", &meta::new_uid()[..5]),
                None => {
                    return Err(ApiError::invalid(
                        kind.group,
                        kind.kind,
                        "",
                        vec![admission::cause(
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )],
                    ));
                }
            },
        };
        let meta = meta::metadata(&mut object)
            .ok_or_else(|| ApiError::bad_request("the body is not a JSON object"))?;
        meta.insert("name".into(), json!(name));
        meta.insert("uid".into(), json!(meta::new_uid()));
        meta.insert(
            "creationTimestamp".into(),
            json!(keel_schemas::time::now_rfc3339()),
        );
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        if kind.kind != "Event" && kind.kind != "Lease" {
            // Status is the controllers' to write, through /status.
            if let Some(obj) = object.as_object_mut() {
                obj.remove("status");
            }
        }
        if kind.kind == "Namespace" {
            object["status"] = json!({"phase": "Active"});
        }
        if kind.kind == "Pod"
            && kind.group.is_empty()
            && let Some(ns) = namespace.as_deref()
        {
            self.admit_service_account(ns, &name, &mut object).await?;
        }
        // A namespace's LimitRanges fill in what the object leaves out before it is validated
        // (and charged to quotas), then bound what it sets.
        let limits = self.limits(kind, namespace.as_deref()).await?;
        limits.fill_defaults(kind, None, &mut object);
        admission::admit_create(kind, &mut object)?;
        check_limits(&limits, kind, None, &object)?;
        self.check_references(kind, namespace.as_deref(), &object)
            .await?;
        let key = self.key(kind, namespace.as_deref(), &name)?;
        let token = match kind.kind {
            "UserToken" => {
                super::credentials::mint_user_token(self, t.user.as_deref(), &mut object).await?
            }
            _ => None,
        };
        self.guard(t, None, &object).await?;
        if t.dry_run {
            return Ok(object);
        }
        for _ in 0..RETRIES {
            let mut compares = vec![Compare::mod_revision(key.clone(), 0)];
            if let Some(ns) = &namespace {
                let ns_key = self.namespace_key(ns)?;
                match self.read(&ns_key).await? {
                    None => return Err(ApiError::not_found("", "namespaces", ns)),
                    Some(s) if meta_str(&s.object, "deletionTimestamp").is_some() => {
                        return Err(ApiError::forbidden(format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            kind.plural
                        )));
                    }
                    // The namespace must not change meanwhile (it may start terminating).
                    Some(s) => compares.push(Compare::mod_revision(ns_key, s.mod_revision)),
                }
            }
            let mut success = vec![Op::Put {
                key: key.clone().into_bytes(),
                value: self.encode(&key, &object),
            }];
            if let Some(ns) = &namespace {
                let charges = self.quota_charges(kind, ns, &name, None, &object).await?;
                compares.extend(charges.compares);
                success.extend(charges.puts);
            }
            let txn = Txn {
                compares,
                success,
                failure: vec![],
            };
            let resp = self.commit(txn).await?;
            if resp.succeeded {
                set_resource_version(&mut object, resp.revision);
                if let Some(token) = token {
                    // Shown once, in this answer; never stored.
                    object["status"] = json!({"token": token});
                }
                return Ok(object);
            }
            if self.read(&key).await?.is_some() {
                return Err(ApiError::already_exists(kind.group, kind.plural, &name));
            }
            // The namespace changed under us (a label, say): look again.
        }
        Err(ApiError::conflict(
            "",
            "namespaces",
            namespace.as_deref().unwrap_or_default(),
        ))
    }

    /// Kubernetes' ServiceAccount admission of a new pod: its account (`default` when it
    /// names none) must exist — `default`, which the cluster makes with each namespace, may
    /// come just after — and unless the pod or the account turns
    /// `automountServiceAccountToken` off, the pod gets the `kube-api-access-XXXXX` projected
    /// volume (a token of its account bound to it, the cluster CA from the `kube-root-ca.crt`
    /// ConfigMap, its namespace), mounted read-only at
    /// `/var/run/secrets/kubernetes.io/serviceaccount` in each container that has nothing
    /// there.
    async fn admit_service_account(
        &self,
        ns: &str,
        pod: &str,
        object: &mut Value,
    ) -> ApiResult<()> {
        const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let account = ["serviceAccountName", "serviceAccount"]
            .iter()
            .find_map(|k| {
                spec.get(*k)
                    .and_then(Value::as_str)
                    .filter(|a| !a.is_empty())
            })
            .unwrap_or("default")
            .to_string();
        spec.insert("serviceAccountName".into(), json!(account));
        spec.insert("serviceAccount".into(), json!(account));
        let sa_kind = lookup("serviceaccounts")
            .ok_or_else(|| ApiError::internal("ServiceAccount is not registered"))?;
        let stored = self.read(&self.key(sa_kind, Some(ns), &account)?).await?;
        if stored.is_none() && account != "default" {
            return Err(ApiError::forbidden(format!(
                "pods {pod:?} is forbidden: error looking up service account {ns}/{account}: serviceaccount {account:?} not found"
            )));
        }
        let automount = spec
            .get("automountServiceAccountToken")
            .and_then(Value::as_bool)
            .or_else(|| {
                stored
                    .as_ref()
                    .and_then(|s| s.object["automountServiceAccountToken"].as_bool())
            })
            .unwrap_or(true);
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        let has = volumes.as_array().is_some_and(|vs| {
            vs.iter().any(|v| {
                v["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("kube-api-access-"))
            })
        });
        if !automount || has {
            return Ok(());
        }
        let name = format!("kube-api-access-{}", &meta::new_uid()[..5]);
        if let Some(list) = volumes.as_array_mut() {
            list.push(json!({"name": name, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}));
        }
        for list in ["initContainers", "containers"] {
            for c in spec
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let Some(c) = c.as_object_mut() else { continue };
                let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
                let Some(mounts) = mounts.as_array_mut() else {
                    continue;
                };
                if !mounts.iter().any(|m| m["mountPath"] == MOUNT_PATH) {
                    mounts.push(json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH}));
                }
            }
        }
        Ok(())
    }

    /// The rules that need other objects: a Subnet lies inside its VPC; what a tenant's
    /// objects name lies inside what its namespace was given.
    async fn check_references(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        object: &Value,
    ) -> ApiResult<()> {
        if let Some(ns) = namespace {
            self.check_tenancy(kind, ns, object).await?;
        }
        if kind.kind != "Subnet" {
            return Ok(());
        }
        let (Some(vpc_name), Some(vpcs)) = (object["spec"]["vpc"].as_str(), lookup("vpcs")) else {
            return Ok(());
        };
        let key = self.key(vpcs, namespace, vpc_name)?;
        match self.read(&key).await? {
            Some(vpc) => admission::check_subnet_in_vpc(object, &vpc.object),
            None => Ok(()),
        }
    }

    fn namespace_key(&self, ns: &str) -> ApiResult<String> {
        let kind = lookup("namespaces")
            .ok_or_else(|| ApiError::internal("Namespace is not registered"))?;
        self.key(kind, None, ns)
    }

    /// PUT of an object (or of its status).
    pub(crate) async fn replace(&self, t: &Target, mut object: Value) -> ApiResult<Value> {
        let kind = t.kind;
        let name = t.name.clone().unwrap_or_default();
        check_type(kind, &object)?;
        place(kind, t.namespace.as_deref(), &mut object)?;
        match meta_str(&object, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        let precondition = parse_rv(meta_str(&object, "resourceVersion"))?;
        let status = t.status();
        self.update(t, precondition, move |current| {
            Ok(if status {
                merge_status(current, &object)
            } else {
                merge_spec(current, &object)
            })
        })
        .await
    }

    /// PATCH of an object (or of its status).
    pub(crate) async fn patch(
        &self,
        t: &Target,
        kind_of_patch: PatchKind,
        body: Value,
    ) -> ApiResult<Value> {
        let status = t.status();
        let precondition = match &body {
            Value::Object(_) => parse_rv(body["metadata"]["resourceVersion"].as_str())?,
            _ => None,
        };
        self.update(t, precondition, move |current| {
            let mut patched = current.clone();
            match kind_of_patch {
                PatchKind::Merge => json_patch::merge(&mut patched, &body),
                PatchKind::Strategic => {
                    super::patch::strategic_merge(t.kind.kind, &mut patched, &body)
                }
                PatchKind::Json => {
                    super::patch::json_patch(&mut patched, body.clone(), crate::http::MAX_BODY)
                        .map_err(|e| {
                            ApiError::invalid(
                                t.kind.group,
                                t.kind.kind,
                                t.name.as_deref().unwrap_or_default(),
                                vec![admission::cause("", &e)],
                            )
                        })?;
                }
            }
            check_type(t.kind, &patched)?;
            Ok(if status {
                merge_status(current, &patched)
            } else {
                merge_spec(current, &patched)
            })
        })
        .await
    }

    /// Reads, changes and writes back an object, compare-and-swap on its revision. With a
    /// precondition the caller's revision must match; without, a lost race is retried.
    async fn update(
        &self,
        t: &Target,
        precondition: Option<u64>,
        change: impl Fn(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        let kind = t.kind;
        let name = t.name.clone().unwrap_or_default();
        let key = self.key(kind, t.namespace.as_deref(), &name)?;
        for _ in 0..RETRIES {
            let current = self
                .read(&key)
                .await?
                .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, &name))?;
            if precondition.is_some_and(|rv| rv != current.mod_revision) {
                return Err(ApiError::conflict(kind.group, kind.plural, &name));
            }
            let mut next = change(&current.object)?;
            // The name and namespace are the URL's, whatever a patch says.
            for (field, value) in [
                ("name", Some(name.clone())),
                ("namespace", t.namespace.clone()),
            ] {
                if let Some(meta) = meta::metadata(&mut next) {
                    match value {
                        Some(v) if kind.scope == Scope::Namespaced || field == "name" => {
                            meta.insert(field.into(), json!(v));
                        }
                        _ => {
                            meta.remove(field);
                        }
                    }
                }
            }
            // The server's fields stay the server's.
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                let value = current.object["metadata"].get(field).cloned();
                if let Some(meta) = meta::metadata(&mut next) {
                    match value {
                        Some(v) => meta.insert(field.into(), v),
                        None => meta.remove(field),
                    };
                }
            }
            set_resource_version(&mut next, current.mod_revision);
            // LimitRanges judge only what a write changes in the spec: a status or metadata
            // write (a finalizer, a label) leaves it as it was admitted.
            let limits = if spec_of(&next) == spec_of(&current.object) {
                Limits::default()
            } else {
                self.limits(kind, t.namespace.as_deref()).await?
            };
            limits.fill_defaults(kind, Some(&current.object), &mut next);
            admission::admit_update(kind, &current.object, &mut next)?;
            // After defaulting: a write that only leaves out defaulted fields changes nothing.
            let spec_changed = spec_of(&next) != spec_of(&current.object);
            if spec_changed {
                let generation = current.object["metadata"]["generation"]
                    .as_i64()
                    .unwrap_or(0)
                    + 1;
                if let Some(meta) = meta::metadata(&mut next) {
                    meta.insert("generation".into(), json!(generation));
                }
            }
            if next == current.object {
                return Ok(next);
            }
            // Rules that read other objects judge a spec; a status or metadata write leaves
            // it as it was admitted (a VPC that came later does not lock its Subnets' status).
            if spec_changed {
                check_limits(&limits, kind, Some(&current.object), &next)?;
                self.check_references(kind, t.namespace.as_deref(), &next)
                    .await?;
            }
            self.guard(t, Some(&current.object), &next).await?;
            if t.dry_run {
                return Ok(next);
            }
            let terminating = meta_str(&next, "deletionTimestamp").is_some();
            let mut compares = vec![Compare::mod_revision(key.clone(), current.mod_revision)];
            let mut charged = Vec::new();
            if spec_changed
                && !terminating
                && let Some(ns) = t.namespace.as_deref()
            {
                let charges = self
                    .quota_charges(kind, ns, &name, Some(&current.object), &next)
                    .await?;
                compares.extend(charges.compares);
                charged = charges.puts;
            }
            let mut success =
                if terminating && finalizers(&next).is_empty() && kind.kind != "Namespace" {
                    // The last finalizer is gone: the object goes.
                    vec![Op::Delete(KeyRange::Key(key.clone().into_bytes()))]
                } else {
                    vec![Op::Put {
                        key: key.clone().into_bytes(),
                        value: self.encode(&key, &next),
                    }]
                };
            success.extend(charged);
            let resp = self
                .commit(Txn {
                    compares,
                    success,
                    failure: vec![],
                })
                .await?;
            if resp.succeeded {
                set_resource_version(&mut next, resp.revision);
                return Ok(next);
            }
            // A caller's precondition fails only on the object's own revision (a quota that
            // changed meanwhile is counted again).
            let moved = self
                .read(&key)
                .await?
                .is_none_or(|s| s.mod_revision != current.mod_revision);
            if precondition.is_some() && moved {
                return Err(ApiError::conflict(kind.group, kind.plural, &name));
            }
        }
        Err(ApiError::conflict(kind.group, kind.plural, &name))
    }

    /// DELETE of an object: gone at once without finalizers; marked for deletion with them.
    pub(crate) async fn delete(&self, t: &Target, options: Option<Value>) -> ApiResult<Value> {
        let kind = t.kind;
        let name = t.name.clone().unwrap_or_default();
        let key = self.key(kind, t.namespace.as_deref(), &name)?;
        let pre_rv = parse_rv(
            options
                .as_ref()
                .and_then(|o| o["preconditions"]["resourceVersion"].as_str()),
        )?;
        let dry_run = t.dry_run
            || options.as_ref().is_some_and(|o| {
                o["dryRun"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|v| v == "All"))
            });
        if kind.kind == "Namespace" && crate::http::SYSTEM_NAMESPACES.contains(&name.as_str()) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let pre_uid = options
            .as_ref()
            .and_then(|o| o["preconditions"]["uid"].as_str().map(String::from));
        for _ in 0..RETRIES {
            let current = self
                .read(&key)
                .await?
                .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, &name))?;
            if pre_rv.is_some_and(|rv| rv != current.mod_revision)
                || pre_uid
                    .as_deref()
                    .is_some_and(|u| Some(u) != meta_str(&current.object, "uid"))
            {
                return Err(ApiError::conflict(kind.group, kind.plural, &name));
            }
            let mut object = current.object.clone();
            if dry_run {
                return Ok(object);
            }
            if kind.kind == "Namespace" {
                return self.delete_namespace(&name, current).await;
            }
            let (success, gone) = if finalizers(&object).is_empty() {
                (
                    vec![Op::Delete(KeyRange::Key(key.clone().into_bytes()))],
                    true,
                )
            } else {
                if meta_str(&object, "deletionTimestamp").is_some() {
                    return Ok(object);
                }
                if let Some(meta) = meta::metadata(&mut object) {
                    meta.insert(
                        "deletionTimestamp".into(),
                        json!(keel_schemas::time::now_rfc3339()),
                    );
                    meta.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
                (
                    vec![Op::Put {
                        key: key.clone().into_bytes(),
                        value: self.encode(&key, &object),
                    }],
                    false,
                )
            };
            let resp = self
                .commit(Txn {
                    compares: vec![Compare::mod_revision(key.clone(), current.mod_revision)],
                    success,
                    failure: vec![],
                })
                .await?;
            if resp.succeeded {
                if !gone {
                    set_resource_version(&mut object, resp.revision);
                }
                return Ok(object);
            }
        }
        Err(ApiError::conflict(kind.group, kind.plural, &name))
    }

    /// DELETE of a namespace, as Kubernetes does it: an empty namespace goes at once; one with
    /// content turns `Terminating`, and [`Api::finalize_namespace`] empties and removes it.
    async fn delete_namespace(&self, ns: &str, current: Stored) -> ApiResult<Value> {
        let ns_key = self.namespace_key(ns)?;
        let mut object = current.object;
        if self.namespace_content(ns).await?.is_empty() {
            // Gone at once, unless something was created in it meanwhile.
            let mut compares = self.namespace_empty(ns);
            compares.push(Compare::mod_revision(ns_key.clone(), current.mod_revision));
            let resp = self
                .commit(Txn {
                    compares,
                    success: vec![Op::Delete(KeyRange::Key(ns_key.clone().into_bytes()))],
                    failure: vec![],
                })
                .await?;
            if resp.succeeded {
                return Ok(object);
            }
        }
        if meta_str(&object, "deletionTimestamp").is_some() {
            return Ok(object);
        }
        if let Some(meta) = meta::metadata(&mut object) {
            meta.insert(
                "deletionTimestamp".into(),
                json!(keel_schemas::time::now_rfc3339()),
            );
        }
        object["status"] = json!({"phase": "Terminating"});
        let resp = self
            .commit(Txn {
                compares: vec![Compare::mod_revision(ns_key.clone(), current.mod_revision)],
                success: vec![Op::Put {
                    value: self.encode(&ns_key, &object),
                    key: ns_key.into_bytes(),
                }],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(ApiError::conflict("", "namespaces", ns));
        }
        set_resource_version(&mut object, resp.revision);
        Ok(object)
    }

    /// Compares that hold only while nothing lives in namespace `ns`.
    fn namespace_empty(&self, ns: &str) -> Vec<Compare> {
        keel_schemas::registry()
            .iter()
            .filter(|k| k.scope == Scope::Namespaced)
            .map(|k| Compare {
                range: KeyRange::Prefix(format!("{}{ns}/", k.storage_prefix()).into_bytes()),
                op: keel_store::CompareOp::Equal,
                target: keel_store::CompareTarget::ModRevision(0),
            })
            .collect()
    }

    /// Every object in a namespace, with its key.
    async fn namespace_content(&self, ns: &str) -> ApiResult<Vec<KeyValue>> {
        let mut out = Vec::new();
        for kind in keel_schemas::registry()
            .iter()
            .filter(|k| k.scope == Scope::Namespaced)
        {
            out.extend(
                self.keys_under(&format!("{}{ns}/", kind.storage_prefix()))
                    .await?,
            );
        }
        Ok(out)
    }

    /// Every key under `prefix` as stored (values still sealed), linearizably.
    pub(crate) async fn keys_under(&self, prefix: &str) -> ApiResult<Vec<KeyValue>> {
        let resp = self
            .server
            .range(
                RangeRequest {
                    range: Some(KeyRange::Prefix(prefix.as_bytes().to_vec())),
                    ..RangeRequest::default()
                },
                Consistency::Linearizable,
            )
            .await?;
        Ok(resp.kvs)
    }

    /// One step of emptying a terminating namespace: each object without finalizers is
    /// deleted, each with finalizers is marked for deletion (one transaction per object, so a
    /// busy object holds up only itself), and once nothing is left the namespace goes.
    /// Returns whether the namespace is gone.
    pub(crate) async fn finalize_namespace(&self, ns: &str) -> ApiResult<bool> {
        let ns_key = self.namespace_key(ns)?;
        let Some(current) = self.read(&ns_key).await? else {
            return Ok(true);
        };
        if meta_str(&current.object, "deletionTimestamp").is_none() {
            return Ok(false);
        }
        for kv in self.namespace_content(ns).await? {
            let s = self.decode(kv.clone())?;
            let op = if finalizers(&s.object).is_empty() {
                Op::Delete(KeyRange::Key(kv.key.clone()))
            } else if meta_str(&s.object, "deletionTimestamp").is_none() {
                let mut marked = s.object;
                if let Some(meta) = meta::metadata(&mut marked) {
                    meta.insert(
                        "deletionTimestamp".into(),
                        json!(keel_schemas::time::now_rfc3339()),
                    );
                }
                Op::Put {
                    key: kv.key.clone(),
                    value: self.encryption.seal(&kv.key, meta::for_storage(&marked)),
                }
            } else {
                continue;
            };
            // A lost race is fine: the next round looks again.
            self.commit(Txn {
                compares: vec![Compare::mod_revision(kv.key, kv.mod_revision)],
                success: vec![op],
                failure: vec![],
            })
            .await?;
        }
        let mut compares = self.namespace_empty(ns);
        compares.push(Compare::mod_revision(ns_key.clone(), current.mod_revision));
        let resp = self
            .commit(Txn {
                compares,
                success: vec![Op::Delete(KeyRange::Key(ns_key.into_bytes()))],
                failure: vec![],
            })
            .await?;
        Ok(resp.succeeded)
    }

    /// Commits a transaction through Raft.
    pub(crate) async fn commit(&self, txn: Txn) -> ApiResult<keel_store::TxnResponse> {
        self.server
            .txn(txn)
            .await?
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// Refuses a body that is not an object of the kind the path names.
fn check_type(kind: &Kind, object: &Value) -> ApiResult<()> {
    if !object.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let api_version = kind.api_version();
    match object["apiVersion"].as_str() {
        Some(v) if v == api_version => {}
        None => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "apiVersion {v:?} does not match the path ({api_version})"
            )));
        }
    }
    match object["kind"].as_str() {
        Some(k) if k == kind.kind => Ok(()),
        None => Ok(()),
        Some(k) => Err(ApiError::bad_request(format!(
            "kind {k:?} does not match the path ({})",
            kind.kind
        ))),
    }
}

/// Sets apiVersion, kind and the namespace from the path; refuses a body in another namespace.
fn place(kind: &Kind, namespace: Option<&str>, object: &mut Value) -> ApiResult<Option<String>> {
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.kind);
    let in_body = meta_str(object, "namespace").map(String::from);
    let meta = meta::metadata(object)
        .ok_or_else(|| ApiError::bad_request("the body is not a JSON object"))?;
    match (kind.scope, namespace, in_body) {
        (Scope::Cluster, _, _) => {
            meta.remove("namespace");
            Ok(None)
        }
        (Scope::Namespaced, Some(ns), Some(body)) if ns != body => {
            Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({body}) does not match the namespace sent on the request ({ns})"
            )))
        }
        (Scope::Namespaced, Some(ns), _) => {
            meta.insert("namespace".into(), json!(ns));
            Ok(Some(ns.to_string()))
        }
        (Scope::Namespaced, None, _) => {
            Err(ApiError::bad_request("a namespace is required in the path"))
        }
    }
}

/// Everything but metadata and status: what a generation counts.
fn spec_of(object: &Value) -> Value {
    let mut spec = object.clone();
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("metadata");
        obj.remove("status");
    }
    spec
}

/// A main-resource write: the new object, with the current status kept.
fn merge_spec(current: &Value, new: &Value) -> Value {
    let mut next = new.clone();
    if let Some(obj) = next.as_object_mut() {
        match current.get("status") {
            Some(status) => obj.insert("status".into(), status.clone()),
            None => obj.remove("status"),
        };
    }
    next
}

/// A status write: the current object, with the new status (and nothing else).
fn merge_status(current: &Value, new: &Value) -> Value {
    let mut next = current.clone();
    if let Some(obj) = next.as_object_mut() {
        match new.get("status") {
            Some(status) => obj.insert("status".into(), status.clone()),
            None => obj.remove("status"),
        };
    }
    next
}
