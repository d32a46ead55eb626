//! The `exec`, `attach` and `portforward` subresources of pods: `kubectl exec`, `kubectl
//! attach` and `kubectl port-forward`.
//!
//! kubectl upgrades its connection: to a WebSocket (remote-command protocol `v5.channel.k8s.io`
//! and older, or SPDY tunnelled in a WebSocket for port-forward), falling back to SPDY/3.1.
//! The server authenticates and authorizes the request (`create` on `pods/exec`,
//! `pods/attach` or `pods/portforward`, whatever the method, as Kubernetes does since 1.31),
//! checks the pod and its options, and passes the upgrade to the agent of the pod's node
//! ([`super::agent`]). Once the agent answers `101 Switching Protocols` the server copies
//! bytes both ways until either side closes. The protocols themselves are the agent's: it
//! answers the WebSocket and speaks SPDY to the container runtime's stream server.

use axum::body::Body;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Method, StatusCode};
use serde_json::Value;

use super::Api;
use super::request::{Subresource, Target};
use super::status::{ApiError, ApiResult};

/// The headers of an upgrade that the agent (and then the client) must see; the client's
/// credentials and everything else stay here.
const UPGRADE_HEADERS: [&str; 6] = [
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];
/// The headers of the agent's `101` that the client must see.
const SWITCHED_HEADERS: [&str; 4] = [
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];
/// The most a command line may hold, all arguments together.
const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// The most of an agent's refusal that is read.
const MAX_REFUSAL_BYTES: usize = 64 * 1024;

/// An upgrade request for a stream: what the handler took from the HTTP request.
pub(crate) struct Upgrade {
    /// GET (WebSocket) or POST (SPDY).
    pub method: Method,
    /// The query as sent: `command` repeats, which a map would lose.
    pub raw_query: String,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The connection, once hyper hands it over after the `101`.
    pub on_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// What an exec, attach or port-forward asks, checked.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    command: Vec<String>,
    container: String,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    ports: Vec<u16>,
}

/// `GET|POST .../pods/{name}/{exec,attach,portforward}?...` with an upgrade.
pub(crate) async fn proxy(api: &Api, t: &Target, request: Upgrade) -> ApiResult<Response> {
    let what = match t.sub {
        Subresource::Exec => "exec",
        Subresource::Attach => "attach",
        _ => "portforward",
    };
    if t.kind.plural != "pods" {
        return Err(ApiError::no_route(&format!(
            "{} have no {what} subresource",
            t.kind.plural
        )));
    }
    if !matches!(request.method, Method::GET | Method::POST) {
        return Err(ApiError::method_not_allowed(format!(
            "{} is not supported on the {what} subresource",
            request.method
        )));
    }
    let mut options = parse(t.sub, &request.raw_query)?;
    let pod = api.get(t).await?;
    if t.sub != Subresource::PortForward {
        options.container = container_of(&pod, &options.container)?;
    }
    if let Some(phase @ ("Succeeded" | "Failed")) = pod["status"]["phase"].as_str() {
        return Err(ApiError::bad_request(format!(
            "cannot {what} into a container in a completed pod; current phase is {phase}"
        )));
    }
    let (Some(upgrade), Some(on_upgrade)) = (
        request
            .headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok()),
        request.on_upgrade,
    ) else {
        return Err(ApiError::bad_request(
            "Upgrade request required: exec, attach and port-forward speak WebSocket or SPDY/3.1 over HTTP/1.1",
        ));
    };
    let node_name = super::agent::node_of(t, &pod, "containers to reach")?;
    let path = format!(
        "/{what}/{}/{}?{}",
        t.namespace.as_deref().unwrap_or_default(),
        t.name.as_deref().unwrap_or_default(),
        options.query()
    );
    let super::agent::Connection { mut sender, addr } =
        super::agent::connect(api, node_name).await?;
    let mut forwarded = hyper::Request::builder()
        .method(request.method.clone())
        .uri(&path)
        .header(header::HOST, &addr)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, upgrade);
    for name in UPGRADE_HEADERS.iter().skip(1) {
        for value in request.headers.get_all(*name) {
            forwarded = forwarded.header(*name, value);
        }
    }
    let forwarded = forwarded
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::internal(format!("the request to the agent: {e}")))?;
    let response = sender.send_request(forwarded).await.map_err(|e| {
        ApiError::internal(format!(
            "the agent of node {node_name} did not answer the {what} request: {e}"
        ))
    })?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(refusal(node_name, response).await);
    }
    let mut switched = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade");
    for name in SWITCHED_HEADERS {
        for value in response.headers().get_all(HeaderName::from_static(name)) {
            switched = switched.header(name, value);
        }
    }
    let switched = switched
        .body(Body::empty())
        .map_err(|e| ApiError::internal(format!("the switch to the stream: {e}")))?;
    let pod_name = format!(
        "{}/{}",
        t.namespace.as_deref().unwrap_or_default(),
        t.name.as_deref().unwrap_or_default()
    );
    tokio::spawn(async move {
        let (client, agent) = match tokio::join!(on_upgrade, hyper::upgrade::on(response)) {
            (Ok(client), Ok(agent)) => (client, agent),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(pod = %pod_name, error = %e, "a stream ended before it started");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut agent = hyper_util::rt::TokioIo::new(agent);
        let copied = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
        tracing::debug!(pod = %pod_name, ?copied, "a stream ended");
    });
    Ok(switched)
}

/// The error the agent answered instead of switching, as a Status kubectl prints.
async fn refusal(node_name: &str, response: hyper::Response<hyper::body::Incoming>) -> ApiError {
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_REFUSAL_BYTES)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default();
    match status.as_u16() {
        400 | 404 | 409 => ApiError::bad_request(body),
        _ => ApiError::internal(format!(
            "the agent of node {node_name} answered {status}: {body}"
        )),
    }
}

/// Parses and checks the query of a stream request.
fn parse(sub: Subresource, raw_query: &str) -> ApiResult<Options> {
    let mut o = Options::default();
    let flag = |name: &str, v: &str| match v {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{name}: {v:?} is not true or false"
        ))),
    };
    for (name, value) in form_urlencoded::parse(raw_query.as_bytes()) {
        match name.as_ref() {
            "command" if sub == Subresource::Exec => o.command.push(value.into_owned()),
            "ports" | "port" if sub == Subresource::PortForward => {
                for port in value.split(',').filter(|p| !p.is_empty()) {
                    let port = port
                        .trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| {
                            ApiError::bad_request(format!("ports: {port:?} is not a port number"))
                        })?;
                    o.ports.push(port);
                }
            }
            "container" => {
                if !value.is_empty() && !keel_schemas::names::is_dns_label(&value) {
                    return Err(ApiError::bad_request(format!(
                        "container: {value:?} is not a container name"
                    )));
                }
                o.container = value.into_owned();
            }
            "stdin" => o.stdin = flag("stdin", &value)?,
            "stdout" => o.stdout = flag("stdout", &value)?,
            "stderr" => o.stderr = flag("stderr", &value)?,
            "tty" => o.tty = flag("tty", &value)?,
            _ => {}
        }
    }
    if sub == Subresource::PortForward {
        return Ok(o);
    }
    if sub == Subresource::Exec {
        if o.command.is_empty() || o.command[0].is_empty() {
            return Err(ApiError::bad_request(
                "exec: no command given (command=... in the query)",
            ));
        }
        let size: usize = o.command.iter().map(|a| a.len() + 1).sum();
        if size > MAX_COMMAND_BYTES {
            return Err(ApiError::bad_request(format!(
                "exec: the command is {size} bytes long, over the {MAX_COMMAND_BYTES} allowed"
            )));
        }
        if o.command.iter().any(|a| a.contains('\0')) {
            return Err(ApiError::bad_request(
                "exec: an argument of the command holds a NUL byte",
            ));
        }
    }
    if !(o.stdin || o.stdout || o.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    // A terminal joins the output streams, as the kubelet does.
    if o.tty {
        o.stderr = false;
    }
    Ok(o)
}

/// The container a stream request reaches: the one named, or the pod's only one.
fn container_of(pod: &Value, named: &str) -> ApiResult<String> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    if named.is_empty() {
        return match containers.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}] or one of the init containers: [{}]",
                containers.join(" "),
                init.join(" ")
            ))),
        };
    }
    if containers.iter().chain(&init).any(|c| c == named) {
        Ok(named.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "container {named} is not valid for pod {pod_name}"
        )))
    }
}

// === impl Options ===

impl Options {
    /// The query the agent reads: checked values only, in one form.
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for arg in &self.command {
            q.append_pair("command", arg);
        }
        if !self.container.is_empty() {
            q.append_pair("container", &self.container);
        }
        for (name, on) in [
            ("stdin", self.stdin),
            ("stdout", self.stdout),
            ("stderr", self.stderr),
            ("tty", self.tty),
        ] {
            if on {
                q.append_pair(name, "true");
            }
        }
        for port in &self.ports {
            q.append_pair("ports", &port.to_string());
        }
        q.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_queries_are_checked_and_repeat_their_command() {
        let o = parse(
            Subresource::Exec,
            "command=sh&command=-c&command=echo%20ok&container=web&stdout=true&stderr=true&tty=true",
        )
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo ok"]);
        // A terminal joins stderr to stdout.
        assert!(o.stdout && o.tty && !o.stderr);
        assert_eq!(
            o.query(),
            "command=sh&command=-c&command=echo+ok&container=web&stdout=true&tty=true"
        );
        let err = |sub, q: &str| parse(sub, q).unwrap_err().message;
        assert!(err(Subresource::Exec, "stdout=true").contains("no command"));
        assert!(err(Subresource::Exec, "command=ls").contains("at least 1 of stdin"));
        assert!(err(Subresource::Exec, "command=ls&stdout=yes").contains("stdout"));
        assert!(err(Subresource::Exec, "command=a%00b&stdout=1").contains("NUL"));
        assert!(err(Subresource::Attach, "container=Web!&stdout=1").contains("container"));
        assert!(err(Subresource::PortForward, "ports=80,70000").contains("70000"));
        let long = format!("command={}&stdout=1", "a".repeat(MAX_COMMAND_BYTES));
        assert!(err(Subresource::Exec, &long).contains("bytes long"));
        let o = parse(Subresource::PortForward, "ports=80,8080").unwrap();
        assert_eq!(o.ports, [80, 8080]);
    }

    #[test]
    fn the_container_is_the_named_one_or_the_only_one() {
        let pod = serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]}
        });
        assert_eq!(container_of(&pod, "").unwrap(), "a");
        assert_eq!(container_of(&pod, "i").unwrap(), "i");
        assert!(
            container_of(&pod, "b")
                .unwrap_err()
                .message
                .contains("not valid")
        );
        let two = serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}
        });
        assert!(
            container_of(&two, "")
                .unwrap_err()
                .message
                .contains("choose one of: [a b]")
        );
    }
}
