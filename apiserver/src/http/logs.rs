//! The `log` subresource: a guest's console or a container's output, which only its node
//! has. The server proxies the request to that node's agent ([`super::agent`]), as
//! kube-apiserver does to the kubelet for `kubectl logs`.

use std::collections::HashMap;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::header;

use super::Api;
use super::request::Target;
use super::status::{ApiError, ApiResult};

/// The kinds whose objects run on a node and have a console (or logs) there.
const WITH_LOGS: [&str; 2] = ["virtualmachines", "pods"];

/// `GET .../{plural}/{name}/log?follow=&tailLines=&limitBytes=`.
pub(crate) async fn proxy(
    api: &Api,
    t: &Target,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    if !WITH_LOGS.contains(&t.kind.plural) {
        return Err(ApiError::no_route(&format!(
            "{} have no log subresource",
            t.kind.plural
        )));
    }
    let mut forwarded = Vec::new();
    let flags = ["follow", "previous", "timestamps"];
    for name in [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "limitBytes",
        "container",
    ] {
        if let Some(v) = query.get(name) {
            if flags.contains(&name) && !matches!(v.as_str(), "true" | "false" | "1" | "0" | "") {
                return Err(ApiError::bad_request(format!(
                    "{name}: {v:?} is not true or false"
                )));
            }
            if name == "container" {
                if !v.is_empty() && !keel_schemas::names::is_dns_label(v) {
                    return Err(ApiError::bad_request(format!(
                        "container: {v:?} is not a container name"
                    )));
                }
            } else if !flags.contains(&name) && v.parse::<u64>().is_err() {
                return Err(ApiError::bad_request(format!(
                    "{name}: {v:?} is not a non-negative integer"
                )));
            }
            forwarded.push(format!("{name}={v}"));
        }
    }
    let object = api.get(t).await?;
    let node_name = super::agent::node_of(t, &object, "console or logs")?;
    let path = format!(
        "/logs/{}/{}/{}?{}",
        t.kind.plural,
        t.namespace.as_deref().unwrap_or_default(),
        t.name.as_deref().unwrap_or_default(),
        forwarded.join("&")
    );
    let agent = super::agent::connect(api, node_name).await?;
    fetch(agent, &path).await.map_err(|e| {
        ApiError::internal(format!(
            "cannot read the console from the agent of node {node_name}: {e}"
        ))
    })?
}

/// GETs `path` from `agent`, and answers with what it sends, streamed.
async fn fetch(agent: super::agent::Connection, path: &str) -> Result<ApiResult<Response>, String> {
    let super::agent::Connection { mut sender, addr } = agent;
    let request = hyper::Request::get(path)
        .header(header::HOST, addr)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Ok(Err(match status.as_u16() {
            404 => ApiError::bad_request(body),
            _ => ApiError::internal(format!("the agent answered {status}: {body}")),
        }));
    }
    Ok(Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::new(response.into_body()),
    )
        .into_response()))
}
