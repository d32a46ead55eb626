//! `kubectl exec`, `attach` and `port-forward` on this node: the kubelet's streaming part.
//!
//! The API server checks and authorizes a request and passes its HTTP upgrade here; this
//! module asks the runtime (CRI `Exec`, `Attach`, `PortForward`) for a one-time URL on its
//! stream server, upgrades a connection to that URL to SPDY/3.1, and joins it to the
//! client's:
//!
//! - **SPDY** (kubectl's fallback): the client's upgrade goes to the stream server as it is,
//!   and the bytes are copied both ways.
//! - **WebSocket, remote command** (`v5.channel.k8s.io`, `v4.channel.k8s.io`; kubectl 1.30+):
//!   each message's first byte is its channel (0 stdin, 1 stdout, 2 stderr, 3 error,
//!   4 resize); each channel becomes a SPDY stream to the runtime, as kube-apiserver's
//!   stream translator does. v5's close message (255, channel) ends stdin, which the
//!   runtime's older WebSocket code (containerd 1.6 has v4 at most) could not do: `echo x |
//!   kubectl exec -i ... -- cat` ends.
//! - **WebSocket, port-forward** (`SPDY/3.1+portforward.k8s.io`; kubectl 1.31+): the client
//!   tunnels SPDY in binary messages; their bytes are copied to and from the runtime's SPDY
//!   connection.

use std::collections::HashMap;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode,
};

use crate::cri::{Cri, v1};
use crate::labels;
use crate::spdy;

/// The remote-command WebSocket protocols served, best first.
const CHANNEL_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The remote-command protocol spoken to the runtime over SPDY.
const RUNTIME_PROTOCOL: &str = "v4.channel.k8s.io";
/// The WebSocket protocol of a port-forward that tunnels SPDY.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The runtime's port-forward protocol over SPDY.
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The largest WebSocket message taken from a client.
const MAX_MESSAGE: usize = 4 << 20;
/// How much is read from the runtime at once for a tunnel.
const CHUNK: usize = 32 << 10;
/// How long the runtime's stream server may take to answer the upgrade.
const UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The channels of the remote-command protocols.
mod channel {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const ERROR: u8 = 3;
    pub const RESIZE: u8 = 4;
    /// v5: the next byte names a channel the client closes.
    pub const CLOSE: u8 = 255;
}

/// Which stream a request opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A command run in a container.
    Exec,
    /// A running container's own streams.
    Attach,
    /// Connections to the pod's ports.
    PortForward,
}

/// A stream request, as the API server forwards it (its query, checked again here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The command (exec).
    pub command: Vec<String>,
    /// The container (exec, attach).
    pub container: String,
    /// Whether the client sends stdin.
    pub stdin: bool,
    /// Whether the client reads stdout.
    pub stdout: bool,
    /// Whether the client reads stderr.
    pub stderr: bool,
    /// Whether the process gets a terminal.
    pub tty: bool,
    /// The ports (port-forward; kubectl names them per connection instead).
    pub ports: Vec<u16>,
}

/// Why a stream could not be opened: an HTTP status and what to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// The status code.
    pub code: StatusCode,
    /// The message.
    pub message: String,
}

/// How the client speaks, from its upgrade headers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Client {
    /// SPDY/3.1, with the stream protocols it offers.
    Spdy(Vec<String>),
    /// A WebSocket with the channel protocol chosen (`v5` or not) and the accept key.
    Channels {
        protocol: &'static str,
        accept: String,
    },
    /// A WebSocket tunnelling SPDY (port-forward).
    Tunnel { accept: String },
}

// === impl StreamError ===

impl StreamError {
    fn new(code: StatusCode, message: impl Into<String>) -> StreamError {
        StreamError {
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> StreamError {
        StreamError::new(StatusCode::BAD_REQUEST, message)
    }
}

// === impl Options ===

impl Options {
    /// Parses the query the API server forwards.
    pub fn parse(kind: Kind, query: &str) -> Result<Options, StreamError> {
        let mut o = Options::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let on = value == "true" || value == "1";
            match name.as_ref() {
                "command" => o.command.push(value.into_owned()),
                "container" => {
                    if !keel_schemas::names::is_dns_label(&value) {
                        return Err(StreamError::bad(format!(
                            "container: {value:?} is not a container name"
                        )));
                    }
                    o.container = value.into_owned();
                }
                "stdin" => o.stdin = on,
                "stdout" => o.stdout = on,
                "stderr" => o.stderr = on,
                "tty" => o.tty = on,
                "ports" => {
                    let port = value
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| {
                            StreamError::bad(format!("ports: {value:?} is not a port number"))
                        })?;
                    o.ports.push(port);
                }
                _ => {}
            }
        }
        if kind != Kind::PortForward {
            if o.container.is_empty() {
                return Err(StreamError::bad("no container named"));
            }
            if kind == Kind::Exec && o.command.is_empty() {
                return Err(StreamError::bad("no command given"));
            }
            if !(o.stdin || o.stdout || o.stderr) {
                return Err(StreamError::bad(
                    "you must specify at least 1 of stdin, stdout, stderr",
                ));
            }
            if o.tty {
                o.stderr = false;
            }
        }
        Ok(o)
    }
}

/// Serves the upgrade `req` for a `kind` stream into pod `namespace/name`: the response to
/// send (`101`, or why not), with the streams joined in a task once both sides switched.
pub async fn serve(
    cri: &Cri,
    kind: Kind,
    namespace: &str,
    name: &str,
    mut req: Request<Incoming>,
) -> Response<String> {
    let answer = async {
        let options = Options::parse(kind, req.uri().query().unwrap_or(""))?;
        let client = client_protocol(kind, req.headers())?;
        let url = runtime_url(cri, kind, namespace, name, &options).await?;
        let offered = match &client {
            Client::Spdy(offered) => offered.clone(),
            Client::Channels { .. } => vec![RUNTIME_PROTOCOL.to_string()],
            Client::Tunnel { .. } => vec![PORT_FORWARD_PROTOCOL.to_string()],
        };
        let runtime = upgrade_runtime(&url, &offered).await?;
        Ok::<_, StreamError>((options, client, runtime))
    }
    .await;
    let (options, client, runtime) = match answer {
        Ok(a) => a,
        Err(e) => return text(e.code, e.message),
    };
    let mut switched = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade");
    switched = match &client {
        Client::Spdy(_) => {
            let mut r = switched.header(header::UPGRADE, "SPDY/3.1");
            if let Some(v) = runtime.headers().get("x-stream-protocol-version") {
                r = r.header("x-stream-protocol-version", v);
            }
            r
        }
        Client::Channels { protocol, accept } => switched
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .header(header::SEC_WEBSOCKET_PROTOCOL, *protocol),
        Client::Tunnel { accept } => switched
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .header(header::SEC_WEBSOCKET_PROTOCOL, TUNNEL_PROTOCOL),
    };
    let Ok(switched) = switched.body(String::new()) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the switch response".into(),
        );
    };
    let pod = format!("{namespace}/{name}");
    let protocol = match &client {
        Client::Spdy(_) => "SPDY/3.1",
        Client::Channels { protocol, .. } => protocol,
        Client::Tunnel { .. } => TUNNEL_PROTOCOL,
    };
    tracing::info!(%pod, ?kind, container = %options.container, protocol, "stream opened");
    let client_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (client_io, runtime_io) =
            match tokio::join!(client_upgrade, hyper::upgrade::on(runtime)) {
                (Ok(c), Ok(r)) => (TokioIo::new(c), TokioIo::new(r)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(%pod, error = %e, "a stream ended before it started");
                    return;
                }
            };
        let ended = match client {
            Client::Spdy(_) => {
                let (mut c, mut r) = (client_io, runtime_io);
                tokio::io::copy_bidirectional(&mut c, &mut r)
                    .await
                    .map(|_| ())
            }
            Client::Channels { protocol, .. } => {
                let ws = websocket(client_io).await;
                channels(ws, runtime_io, &options, protocol == CHANNEL_PROTOCOLS[0]).await
            }
            Client::Tunnel { .. } => tunnel(websocket(client_io).await, runtime_io).await,
        };
        tracing::debug!(%pod, ?kind, ?ended, "a stream ended");
    });
    switched
}

/// The protocol the client asked for, from its upgrade headers.
fn client_protocol(kind: Kind, headers: &hyper::HeaderMap) -> Result<Client, StreamError> {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let list = |name: header::HeaderName| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    };
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return Ok(Client::Spdy(list(header::HeaderName::from_static(
            "x-stream-protocol-version",
        ))));
    }
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(StreamError::bad(format!(
            "Upgrade: {upgrade:?}: streams speak websocket or SPDY/3.1"
        )));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| StreamError::bad("a WebSocket upgrade without Sec-WebSocket-Key"))?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let offered = list(header::SEC_WEBSOCKET_PROTOCOL);
    if kind == Kind::PortForward {
        return if offered.iter().any(|p| p == TUNNEL_PROTOCOL) {
            Ok(Client::Tunnel { accept })
        } else {
            Err(StreamError::bad(format!(
                "none of the WebSocket protocols {offered:?} is served for port-forward: {TUNNEL_PROTOCOL}"
            )))
        };
    }
    CHANNEL_PROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .map(|protocol| Client::Channels { protocol, accept })
        .ok_or_else(|| {
            StreamError::bad(format!(
                "none of the WebSocket protocols {offered:?} is served: {}",
                CHANNEL_PROTOCOLS.join(", ")
            ))
        })
}

/// Asks the runtime for the one-time URL of the stream.
async fn runtime_url(
    cri: &Cri,
    kind: Kind,
    namespace: &str,
    name: &str,
    o: &Options,
) -> Result<String, StreamError> {
    let failed = |call: &str, s: tonic::Status| {
        StreamError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runtime's {call} failed: {}", s.message()),
        )
    };
    let ready = v1::PodSandboxFilter {
        state: Some(v1::PodSandboxStateValue {
            state: v1::PodSandboxState::SandboxReady as i32,
        }),
        label_selector: [
            (labels::POD_NAMESPACE.to_string(), namespace.to_string()),
            (labels::POD_NAME.to_string(), name.to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let sandbox = cri
        .runtime
        .clone()
        .list_pod_sandbox(v1::ListPodSandboxRequest {
            filter: Some(ready),
        })
        .await
        .map_err(|s| failed("ListPodSandbox", s))?
        .into_inner()
        .items
        .into_iter()
        .max_by_key(|s| s.created_at)
        .ok_or_else(|| {
            StreamError::new(
                StatusCode::NOT_FOUND,
                format!("pod {namespace}/{name} has no running sandbox on this node"),
            )
        })?;
    if kind == Kind::PortForward {
        let request = v1::PortForwardRequest {
            pod_sandbox_id: sandbox.id,
            port: o.ports.iter().map(|p| i32::from(*p)).collect(),
        };
        let response = cri.runtime.clone().port_forward(request).await;
        return Ok(response
            .map_err(|s| failed("PortForward", s))?
            .into_inner()
            .url);
    }
    let running = v1::ContainerFilter {
        state: Some(v1::ContainerStateValue {
            state: v1::ContainerState::ContainerRunning as i32,
        }),
        pod_sandbox_id: sandbox.id,
        label_selector: [(labels::CONTAINER_NAME.to_string(), o.container.clone())].into(),
        ..Default::default()
    };
    let container = cri
        .runtime
        .clone()
        .list_containers(v1::ListContainersRequest {
            filter: Some(running),
        })
        .await
        .map_err(|s| failed("ListContainers", s))?
        .into_inner()
        .containers
        .into_iter()
        .max_by_key(|c| c.created_at)
        .ok_or_else(|| {
            StreamError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "container {} of pod {namespace}/{name} is not running",
                    o.container
                ),
            )
        })?;
    let url = if kind == Kind::Exec {
        let request = v1::ExecRequest {
            container_id: container.id,
            cmd: o.command.clone(),
            tty: o.tty,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
        };
        let response = cri.runtime.clone().exec(request).await;
        response.map_err(|s| failed("Exec", s))?.into_inner().url
    } else {
        let request = v1::AttachRequest {
            container_id: container.id,
            stdin: o.stdin,
            tty: o.tty,
            stdout: o.stdout,
            stderr: o.stderr,
        };
        let response = cri.runtime.clone().attach(request).await;
        response.map_err(|s| failed("Attach", s))?.into_inner().url
    };
    Ok(url)
}

/// Upgrades a connection to the runtime's stream URL `url` to SPDY/3.1, offering
/// `protocols`; the `101` response, whose upgrade is the connection.
async fn upgrade_runtime(
    url: &str,
    protocols: &[String],
) -> Result<Response<Incoming>, StreamError> {
    let internal = |what: String| StreamError::new(StatusCode::INTERNAL_SERVER_ERROR, what);
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| internal(format!("the runtime's stream URL {url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(internal(format!(
            "the runtime's stream URL {url:?} is not plain HTTP (set enable_tls_streaming = false)"
        )));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| internal(format!("the runtime's stream URL {url:?} names no host")))?
        .to_string();
    let upgrade = async {
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection.with_upgrades());
        let mut request = Request::post(uri.path())
            .header(header::HOST, &authority)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1");
        for p in protocols {
            request = request.header("x-stream-protocol-version", p);
        }
        let request = request
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())
    };
    let response = tokio::time::timeout(UPGRADE_TIMEOUT, upgrade)
        .await
        .map_err(|_| {
            internal(format!(
                "the runtime's stream server did not answer within {UPGRADE_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| internal(format!("the runtime's stream server at {authority}: {e}")))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        use http_body_util::BodyExt;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), 64 << 10)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Err(internal(format!(
            "the runtime's stream server answered {status}: {body}"
        )));
    }
    Ok(response)
}

/// The client's side of an upgraded connection as a WebSocket (the handshake is done).
async fn websocket(
    io: TokioIo<hyper::upgrade::Upgraded>,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// Joins a remote-command WebSocket to the runtime's SPDY connection: a SPDY stream per
/// channel, opened as client-go opens them (error first).
async fn channels(
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    runtime: TokioIo<hyper::upgrade::Upgraded>,
    o: &Options,
    v5: bool,
) -> std::io::Result<()> {
    let (mut runtime_in, runtime_out) = tokio::io::split(runtime);
    let mut writer = spdy::Writer::new(runtime_out);
    // stream id -> the channel its data goes out on
    let mut outgoing: HashMap<u32, u8> = HashMap::new();
    // channel -> the stream its data goes in on
    let mut incoming: HashMap<u8, u32> = HashMap::new();
    let mut next = 1;
    for (wanted, kind, chan) in [
        (true, "error", channel::ERROR),
        (o.stdin, "stdin", channel::STDIN),
        (o.stdout, "stdout", channel::STDOUT),
        (o.stderr, "stderr", channel::STDERR),
        (o.tty, "resize", channel::RESIZE),
    ] {
        if !wanted {
            continue;
        }
        writer.open(next, &[("streamtype", kind)]).await?;
        if matches!(chan, channel::STDIN | channel::RESIZE) {
            incoming.insert(chan, next);
        } else {
            outgoing.insert(next, chan);
        }
        next += 2;
    }
    // One task reads the runtime's frames, so that a select! never drops a frame half read.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(async move {
        while let Ok(Some(frame)) = spdy::read(&mut runtime_in).await {
            if frames_tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    let (mut to_client, mut from_client) = ws.split();
    let ended = loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                None | Some(spdy::Frame::GoAway) => break Ok(()),
                Some(spdy::Frame::Data { stream, data, .. }) => {
                    if let Some(chan) = outgoing.get(&stream).filter(|_| !data.is_empty()) {
                        let mut message = Vec::with_capacity(1 + data.len());
                        message.push(*chan);
                        message.extend_from_slice(&data);
                        if let Err(e) = to_client.send(Message::Binary(message.into())).await {
                            break Err(std::io::Error::other(e));
                        }
                    }
                }
                Some(spdy::Frame::Ping(id)) => writer.pong(id).await?,
                Some(_) => {}
            },
            message = from_client.next() => {
                let data = match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                        let _ = writer.go_away().await;
                        reader.abort();
                        return Ok(());
                    }
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(_)) => continue,
                };
                let Some((&chan, payload)) = data.split_first() else {
                    continue;
                };
                if chan == channel::CLOSE && v5 {
                    if let Some(stream) = payload.first().and_then(|c| incoming.get(c)) {
                        writer.data(*stream, &[], true).await?;
                    }
                } else if let Some(stream) = incoming.get(&chan) {
                    writer.data(*stream, payload, false).await?;
                }
            }
        }
    };
    reader.abort();
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = to_client.send(Message::Close(Some(close))).await;
    ended
}

/// Joins a WebSocket that tunnels SPDY to the runtime's SPDY connection, bytes for bytes.
async fn tunnel(
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    runtime: TokioIo<hyper::upgrade::Upgraded>,
) -> std::io::Result<()> {
    let (mut runtime_in, mut runtime_out) = tokio::io::split(runtime);
    let (mut to_client, mut from_client) = ws.split();
    let upward = async {
        while let Some(message) = from_client.next().await {
            match message {
                Ok(Message::Binary(b)) => runtime_out.write_all(&b).await?,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        runtime_out.shutdown().await
    };
    let downward = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = runtime_in.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            to_client
                .send(Message::Binary(chunk))
                .await
                .map_err(std::io::Error::other)?;
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = to_client.send(Message::Close(Some(close))).await;
        Ok::<_, std::io::Error>(())
    };
    tokio::select! {
        up = upward => up,
        down = downward => down,
    }
}

fn text(code: StatusCode, message: String) -> Response<String> {
    let mut response = Response::new(message);
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> hyper::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn clients_get_the_best_protocol_they_offer() {
        let ws = |protocols: &'static str| {
            headers(&[
                ("upgrade", "websocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-protocol", protocols),
            ])
        };
        let kubectl = ws("v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io");
        assert_eq!(
            client_protocol(Kind::Exec, &kubectl).unwrap(),
            Client::Channels {
                protocol: "v5.channel.k8s.io",
                // RFC 6455's example key and answer.
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );
        assert!(matches!(
            client_protocol(Kind::Exec, &ws("v4.channel.k8s.io")).unwrap(),
            Client::Channels {
                protocol: "v4.channel.k8s.io",
                ..
            }
        ));
        let refused = client_protocol(Kind::Exec, &ws("base64.channel.k8s.io")).unwrap_err();
        assert_eq!(refused.code, StatusCode::BAD_REQUEST);
        assert!(matches!(
            client_protocol(Kind::PortForward, &ws("SPDY/3.1+portforward.k8s.io")).unwrap(),
            Client::Tunnel { .. }
        ));
        assert!(client_protocol(Kind::PortForward, &kubectl).is_err());
        let spdy = headers(&[
            ("upgrade", "SPDY/3.1"),
            (
                "x-stream-protocol-version",
                "v4.channel.k8s.io,v3.channel.k8s.io",
            ),
        ]);
        assert_eq!(
            client_protocol(Kind::Exec, &spdy).unwrap(),
            Client::Spdy(vec!["v4.channel.k8s.io".into(), "v3.channel.k8s.io".into()])
        );
        assert!(client_protocol(Kind::Exec, &headers(&[("upgrade", "h2c")])).is_err());
    }

    #[test]
    fn options_are_checked_again_on_the_node() {
        let o = Options::parse(
            Kind::Exec,
            "command=sh&command=-c&command=echo+ok&container=web&stdout=true&tty=true&stderr=true",
        )
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo ok"]);
        assert!(o.tty && !o.stderr);
        assert!(Options::parse(Kind::Exec, "container=web&stdout=true").is_err());
        assert!(Options::parse(Kind::Attach, "container=web").is_err());
        assert!(Options::parse(Kind::Attach, "container=../x&stdout=1").is_err());
        assert_eq!(
            Options::parse(Kind::PortForward, "ports=8080")
                .unwrap()
                .ports,
            [8080]
        );
        assert!(Options::parse(Kind::PortForward, "ports=0").is_err());
    }
}
