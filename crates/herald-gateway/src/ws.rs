//! WebSocket: `GET /v1/ws`, JSON text frames.
//!
//! Client frames (`id` is optional and echoed in the replies):
//! - `{"type":"subscribe","topic":T,"from":"earliest"|"latest"|N|"E:O"}` →
//!   `{"type":"subscribed","topic":T,"epoch":..,"offset":..}`, then the topic's events;
//! - `{"type":"unsubscribe","topic":T}` → `{"type":"unsubscribed","topic":T}`;
//! - `{"type":"publish","topic":T,"data"|"data_base64":..,"key":..,"headers":{..}}` →
//!   `{"type":"receipt","topic","epoch","offset","duplicate"}`.
//!
//! - work groups (grant `work`): `{"type":"fetch","topic":T,"group":G,"member":M,"max":N,
//!   "wait":SECS}` → `{"type":"jobs","jobs":[..],"notices":[..]}` (answered when it is, other
//!   frames go on meanwhile); `{"type":"ack"|"nak"|"fail"|"in_progress"|"term","token":..,
//!   "delay":SECS,"error":..,"reason":..}` → `{"type":"outcome","outcome":"acked"|"retry"|
//!   "extended"|"dead"|"stale",..}` (the same parameters and outcomes as over HTTP).
//!
//! Server frames: `message`, `gap` and `reset` (the fields of `herald tail`'s JSON lines plus
//! `type`), and `{"type":"error","error":{"kind","message"}}`. A malformed frame gets an
//! `error` frame; the connection stays up. When the token expires the gateway sends an
//! `error` frame of kind `unauthorized` and closes the connection.

use std::collections::HashMap;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State as AxState};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api_error::ApiError;
use crate::auth::{Action, Grants};
use crate::follow::{Follower, StartAt};
use crate::http::{require, Query, State};
use crate::metrics::Open;
use crate::wire::{PublishItem, ReceiptJson};

/// The frame types of work groups.
const WORK_FRAMES: [&str; 6] = ["fetch", "ack", "nak", "fail", "in_progress", "term"];

/// Most topics one connection may follow.
const MAX_SUBSCRIPTIONS: usize = 100;

pub(crate) async fn upgrade(
    AxState(state): AxState<State>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let grants = state.grants(&headers, &Query::parse(raw.as_deref()))?;
    Ok(ws
        .max_message_size(state.0.max_body + 64 * 1024)
        .on_upgrade(move |socket| run(state, grants, socket))
        .into_response())
}

#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    from: Option<Value>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    data_base64: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: herald::Headers,
}

fn with_id(mut v: Value, id: &Option<Value>) -> Value {
    if let (Some(id), Some(obj)) = (id, v.as_object_mut()) {
        obj.insert("id".into(), id.clone());
    }
    v
}

fn error_frame(e: &ApiError, id: &Option<Value>) -> String {
    let mut v = e.json();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("type".into(), json!("error"));
    }
    with_id(v, id).to_string()
}

async fn run(state: State, grants: Grants, socket: WebSocket) {
    let _open = Open::new(state.0.metrics.clone(), true);
    let (mut sink, mut incoming) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<String>(state.0.client_buffer);
    let mut subs: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut end = crate::sse::end_of(&state, &grants);
    loop {
        tokio::select! {
            expired = &mut end => {
                if expired {
                    let e = ApiError::unauthorized("the token expired: reconnect with a fresh token");
                    let _ = sink.send(WsMessage::Text(error_frame(&e, &None).into())).await;
                }
                let _ = sink.send(WsMessage::Close(None)).await;
                break;
            }
            out = out_rx.recv() => {
                let Some(out) = out else { break };
                if sink.send(WsMessage::Text(out.into())).await.is_err() {
                    break;
                }
            }
            msg = incoming.next() => {
                let text = match msg {
                    None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break,
                    Some(Ok(WsMessage::Text(t))) => t.to_string(),
                    Some(Ok(WsMessage::Binary(_))) => {
                        let e = ApiError::bad_input("binary frames are not accepted: send JSON text frames");
                        if sink.send(WsMessage::Text(error_frame(&e, &None).into())).await.is_err() { break; }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                let reply = handle(&state, &grants, &text, &mut subs, &out_tx).await;
                if let Some(reply) = reply {
                    if sink.send(WsMessage::Text(reply.into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    for (_, task) in subs {
        task.abort();
    }
}

/// Handles one client frame; returns the reply frame.
async fn handle(
    state: &State,
    grants: &Grants,
    text: &str,
    subs: &mut HashMap<String, tokio::task::JoinHandle<()>>,
    out: &mpsc::Sender<String>,
) -> Option<String> {
    // Work-group frames (see `crate::work`): a fetch long-polls beside the connection's loop.
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if WORK_FRAMES.contains(&kind) {
            let kind = kind.to_string();
            let id = value.get("id").cloned();
            let reply = move |r: Result<Value, ApiError>| match r {
                Ok(v) => with_id(v, &id).to_string(),
                Err(e) => error_frame(&e, &id),
            };
            if kind == "fetch" {
                let (state, grants, out) = (state.clone(), grants.clone(), out.clone());
                tokio::spawn(async move {
                    let r = crate::work::ws_frame(&state, &grants, &kind, &value).await;
                    let _ = out.send(reply(r)).await;
                });
                return None;
            }
            return Some(reply(
                crate::work::ws_frame(state, grants, &kind, &value).await,
            ));
        }
    }
    let frame: Frame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            return Some(error_frame(
                &ApiError::bad_input(format!(
                    "malformed frame: {e}; expected a JSON object with \"type\" subscribe, unsubscribe or publish"
                )),
                &None,
            ))
        }
    };
    let id = frame.id.clone();
    match handle_frame(state, grants, frame, subs, out).await {
        Ok(v) => Some(with_id(v, &id).to_string()),
        Err(e) => Some(error_frame(&e, &id)),
    }
}

fn topic_in(frame: &Frame) -> Result<String, ApiError> {
    let topic = frame
        .topic
        .clone()
        .ok_or_else(|| ApiError::bad_input(format!("a {} frame needs a \"topic\"", frame.kind)))?;
    herald::validate_topic(&topic)?;
    Ok(topic)
}

async fn handle_frame(
    state: &State,
    grants: &Grants,
    frame: Frame,
    subs: &mut HashMap<String, tokio::task::JoinHandle<()>>,
    out: &mpsc::Sender<String>,
) -> Result<Value, ApiError> {
    match frame.kind.as_str() {
        "subscribe" => {
            let topic = topic_in(&frame)?;
            require(grants, Action::Subscribe, &topic)?;
            subs.retain(|_, t| !t.is_finished());
            if subs.contains_key(&topic) {
                return Err(ApiError::bad_input(format!(
                    "already subscribed to {topic:?}: unsubscribe first"
                )));
            }
            if subs.len() >= MAX_SUBSCRIPTIONS {
                return Err(ApiError::bad_input(format!(
                    "one connection follows at most {MAX_SUBSCRIPTIONS} topics"
                )));
            }
            let from = match &frame.from {
                None => StartAt::Latest,
                Some(Value::String(s)) => StartAt::parse(s)?,
                Some(Value::Number(n)) => StartAt::parse(&n.to_string())?,
                Some(other) => {
                    return Err(ApiError::bad_input(format!(
                        "invalid from {other}: expected \"earliest\", \"latest\", an offset or \"EPOCH:OFFSET\""
                    )))
                }
            };
            let mut follower =
                Follower::start(&state.0.hub, &topic, from, state.0.client_buffer).await?;
            state.saw(&topic);
            let position = follower.position();
            let out = out.clone();
            let metrics = state.0.metrics.clone();
            let task = tokio::spawn(async move {
                while let Some(event) = follower.next().await {
                    if out.send(event.ws_frame().to_string()).await.is_err() {
                        break;
                    }
                    metrics.delivered.inc();
                }
            });
            subs.insert(topic.clone(), task);
            Ok(json!({"type": "subscribed", "topic": topic,
                      "epoch": position.epoch, "offset": position.offset}))
        }
        "unsubscribe" => {
            let topic = topic_in(&frame)?;
            match subs.remove(&topic) {
                Some(task) => {
                    task.abort();
                    Ok(json!({"type": "unsubscribed", "topic": topic}))
                }
                None => Err(ApiError::bad_input(format!("not subscribed to {topic:?}"))),
            }
        }
        "publish" => {
            let topic = topic_in(&frame)?;
            require(grants, Action::Publish, &topic)?;
            let message = PublishItem {
                data: frame.data,
                data_base64: frame.data_base64,
                key: frame.key,
                headers: frame.headers,
            }
            .into_message()
            .map_err(ApiError::bad_input)?;
            match state.0.herald.publish(&topic, message).await {
                Ok(receipt) => {
                    state.saw(&topic);
                    if receipt.duplicate {
                        state.0.metrics.duplicates.inc();
                    } else {
                        state.0.metrics.published.inc();
                    }
                    let mut v =
                        serde_json::to_value(ReceiptJson::from(&receipt)).unwrap_or(Value::Null);
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("type".into(), json!("receipt"));
                    }
                    Ok(v)
                }
                Err(e) => {
                    state.0.metrics.publish_errors.inc();
                    Err(e.into())
                }
            }
        }
        other => Err(ApiError::bad_input(format!(
            "unknown frame type {other:?}: expected subscribe, unsubscribe, publish, fetch, ack, nak, fail, in_progress or term"
        ))),
    }
}
