//! What the gateway's tests share: starting a gateway on a backend, a small HTTP client over
//! a real socket (hyper), an SSE reader and a WebSocket client.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use herald::Herald;
use herald_gateway::{Config, Gateway};
use herald_testkit::Backend;

/// How long a test waits for one expected thing.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct Running {
    pub gateway: Gateway,
    pub herald: Herald,
    pub addr: SocketAddr,
}

/// A gateway on `backend` listening on a free loopback port, configured by `tune`.
pub async fn start(backend: &Backend, tune: impl FnOnce(Config) -> Config) -> Running {
    let herald = backend.node("gateway").await;
    let config = tune(
        Config::new(herald.clone())
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .keep_alive(Duration::from_millis(500)),
    );
    let gateway = herald_gateway::serve(config).await.expect("serve");
    let addr = gateway.local_addr();
    Running {
        gateway,
        herald,
        addr,
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The error kind of a JSON error answer.
    pub fn error_kind(&self) -> String {
        let v = self.json();
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "no error message in {v}"
        );
        v["error"]["kind"].as_str().unwrap_or_default().to_string()
    }
}

async fn send_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> hyper::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).expect("request");
    tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("response in time")
        .expect("response")
}

/// One request, whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let resp = send_raw(addr, method, path, headers, body.into()).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], Bytes::new()).await
}

/// Publishes `data` to `topic` over HTTP; returns the receipt JSON (status must be 200).
pub async fn publish(addr: SocketAddr, topic: &str, data: &str, key: Option<&str>) -> Value {
    let mut headers = vec![];
    if let Some(k) = key {
        headers.push(("idempotency-key", k));
    }
    let r = request(
        addr,
        "POST",
        &format!("/v1/topics/{topic}/messages"),
        &headers,
        data.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "publish: {}", r.text());
    r.json()
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl Sse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// An open event stream.
pub struct SseStream {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: Option<Incoming>,
    buf: String,
    /// Whether a `retry:` line was seen.
    pub saw_retry: bool,
    /// How many keep-alive comments were seen.
    pub comments: usize,
}

/// Opens an event stream (the status must be checked by the caller).
pub async fn sse(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseStream {
    let mut h = vec![("accept", "text/event-stream")];
    h.extend_from_slice(headers);
    let resp = send_raw(addr, "GET", path, &h, Bytes::new()).await;
    SseStream {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: Some(resp.into_body()),
        buf: String::new(),
        saw_retry: false,
        comments: 0,
    }
}

impl SseStream {
    /// The next event with data, or `None` when the stream ended; panics after [`WAIT`].
    pub async fn next(&mut self) -> Option<Sse> {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no event within {WAIT:?}"))
    }

    /// `Some(next)` or `None` if nothing arrived within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Option<Sse>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        let _ = c;
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if has_data {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        has_data = true;
                    } else if line.starts_with("retry:") {
                        self.saw_retry = true;
                    }
                }
                if has_data {
                    return Some(Some(ev));
                }
                continue;
            }
            let Some(body) = self.body.as_mut() else {
                return Some(None);
            };
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => {
                    self.body = None;
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&data));
                    }
                }
            }
        }
    }

    /// The next `n` events, which must all be messages; returns (offset, data, id).
    pub async fn messages(&mut self, n: usize) -> Vec<(u64, String, String)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let ev = self.next().await.expect("stream open");
            assert_eq!(ev.event, "message", "expected a message, got {ev:?}");
            let v = ev.json();
            out.push((
                v["offset"].as_u64().expect("offset"),
                v["data"].as_str().expect("data").to_string(),
                ev.id.clone().expect("id"),
            ));
        }
        out
    }

    /// Asserts that no event arrives within `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(ev) = self.next_within(wait).await {
            panic!("unexpected event {ev:?}");
        }
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/ws` (with `query`, e.g. `?access_token=..`).
pub async fn ws(addr: SocketAddr, query: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws{query}"))
        .await
        .expect("websocket");
    ws
}

pub async fn ws_send(ws: &mut Ws, frame: &str) {
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(frame))
        .await
        .expect("send frame");
}

/// The next JSON text frame.
pub async fn ws_next(ws: &mut Ws) -> Value {
    use futures::StreamExt;
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("connection open")
            .expect("frame");
        match msg {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                return serde_json::from_str(t.as_str()).expect("JSON frame")
            }
            tokio_tungstenite::tungstenite::Message::Close(_) => return Value::Null,
            _ => continue,
        }
    }
}
