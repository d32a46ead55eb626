//! The `scale` subresource of the workload kinds (Deployment, ReplicaSet, StatefulSet): an
//! `autoscaling/v1` Scale whose `spec.replicas` is the workload's, as `kubectl scale` and
//! autoscalers read and write it.

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Api;
use super::objects::PatchKind;
use super::request::Target;
use super::status::{ApiError, ApiResult};

/// The kinds with a scale subresource.
const SCALABLE: [&str; 3] = ["deployments", "replicasets", "statefulsets"];

/// `GET`, `PUT` or `PATCH .../{plural}/{name}/scale`.
pub(crate) async fn handle(
    api: &Api,
    t: &Target,
    method: &hyper::Method,
    change: Option<(Option<PatchKind>, Value)>,
) -> ApiResult<Response> {
    if !SCALABLE.contains(&t.kind.plural) {
        return Err(ApiError::no_route(&format!(
            "{} have no scale subresource",
            t.kind.plural
        )));
    }
    let object = Target {
        sub: super::request::Subresource::None,
        ..t.clone()
    };
    let current = api.get(&object).await?;
    let answer = match (method, change) {
        (&hyper::Method::GET, _) => scale_of(&current),
        (&hyper::Method::PUT | &hyper::Method::PATCH, Some((kind, body))) => {
            let mut wanted = scale_of(&current);
            match kind {
                None => wanted = body,
                Some(PatchKind::Json) => {
                    super::patch::json_patch(&mut wanted, body, crate::http::MAX_BODY)
                        .map_err(|e| ApiError::bad_request(format!("the patch: {e}")))?;
                }
                Some(_) => json_patch::merge(&mut wanted, &body),
            }
            let replicas = wanted["spec"]["replicas"]
                .as_i64()
                .filter(|r| (0..=i64::from(i32::MAX)).contains(r))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "spec.replicas: {} is not a number of replicas (0 or more)",
                        wanted["spec"]["replicas"]
                    ))
                })?;
            let mut patch = json!({"spec": {"replicas": replicas}});
            if let Some(rv) = wanted["metadata"]["resourceVersion"].as_str() {
                patch["metadata"] = json!({"resourceVersion": rv});
            }
            let updated = api.patch(&object, PatchKind::Merge, patch).await?;
            scale_of(&updated)
        }
        (other, _) => {
            return Err(ApiError::method_not_allowed(format!(
                "{other} is not supported on the scale subresource"
            )));
        }
    };
    Ok(axum::Json(answer).into_response())
}

/// The Scale of a workload.
fn scale_of(object: &Value) -> Value {
    let meta = &object["metadata"];
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_text(&object["spec"]["selector"]),
        },
    })
}

/// A label selector as text (`app=web,tier in (a,b)`).
fn selector_text(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}
