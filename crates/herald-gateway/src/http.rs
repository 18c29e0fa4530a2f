//! The routes, the shared state, authentication of requests, publish and history.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use herald::{Event, Herald, Message, Start};
use tokio::sync::watch;

use crate::api_error::ApiError;
use crate::auth::{Action, Auth, Grants};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::wire::{event_json, PublishItem, ReceiptJson};
use crate::Config;

/// The prefix of request headers that become message headers (`Herald-Header-Region: eu`
/// gives the header `region`, names lowercased).
pub(crate) const HEADER_PREFIX: &str = "herald-header-";
/// Most topics the gateway remembers for its status page.
const MAX_KNOWN: usize = 10_000;
/// Most history events one request returns.
pub(crate) const MAX_LIMIT: usize = 1000;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct State(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) herald: Herald,
    pub(crate) hub: Hub,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) auth: Option<Arc<Auth>>,
    pub(crate) keep_alive: Duration,
    pub(crate) retry: Duration,
    pub(crate) client_buffer: usize,
    pub(crate) max_body: usize,
    pub(crate) stopped: watch::Receiver<bool>,
    pub(crate) rates: crate::status::Rates,
    pub(crate) work: Arc<crate::work::Pool>,
    known: Mutex<BTreeSet<String>>,
}

impl State {
    pub(crate) fn new(config: Config, stopped: watch::Receiver<bool>) -> State {
        let metrics = Arc::new(Metrics::default());
        let work = Arc::new(crate::work::Pool::new(
            config.herald.clone(),
            config.work_idle,
        ));
        State(Arc::new(Inner {
            hub: Hub::new(config.herald.clone(), config.topic_channel, metrics.clone()),
            herald: config.herald,
            metrics,
            auth: config.auth,
            keep_alive: config.keep_alive,
            retry: config.retry,
            client_buffer: config.client_buffer,
            max_body: config.max_body,
            stopped,
            rates: Default::default(),
            work,
            known: Mutex::new(BTreeSet::new()),
        }))
    }

    /// Remembers a topic for the status page.
    pub(crate) fn saw(&self, topic: &str) {
        let mut known = self.0.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() < MAX_KNOWN && !known.contains(topic) {
            known.insert(topic.to_string());
        }
    }

    /// Topics published or followed through this gateway.
    pub(crate) fn known(&self) -> Vec<String> {
        let known = self.0.known.lock().unwrap_or_else(|p| p.into_inner());
        known.iter().cloned().collect()
    }

    /// The request's grants: from its bearer token (the `Authorization` header, else the
    /// `access_token` query parameter), or everything without auth.
    pub(crate) fn grants(&self, headers: &HeaderMap, query: &Query) -> Result<Grants, ApiError> {
        let Some(auth) = &self.0.auth else {
            return Ok(Grants::all());
        };
        let from_header = match headers.get(header::AUTHORIZATION) {
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
                match v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                {
                    Some(t) => Some(t.trim().to_string()),
                    None => {
                        return Err(ApiError::unauthorized(
                            "the Authorization header must be `Bearer TOKEN`",
                        ))
                    }
                }
            }
            None => None,
        };
        let token = from_header
            .or_else(|| query.first("access_token").map(str::to_string))
            .ok_or_else(|| ApiError::unauthorized(crate::auth::AuthError::Missing.to_string()))?;
        auth.verify(&token)
            .map_err(|e| ApiError::unauthorized(e.to_string()))
    }
}

/// Checks a grant, as a 403.
pub(crate) fn require(grants: &Grants, action: Action, topic: &str) -> Result<(), ApiError> {
    grants
        .check(action, topic)
        .map_err(|e| ApiError::forbidden(e.to_string()))
}

/// A parsed query string (keys may repeat).
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        Query(
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }
    pub(crate) fn first(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

pub(crate) fn router(state: State) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/info", get(info))
        .route("/v1/status", get(crate::status::snapshot))
        .route("/v1/status/events", get(crate::status::events))
        .route("/v1/topics/{topic}/messages", post(publish).get(history))
        .route("/v1/topics/{topic}/events", get(crate::sse::topic_events))
        .route("/v1/events", get(crate::sse::events))
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/v1/topics/{topic}/groups", get(crate::work::groups_route))
        .route(
            "/v1/topics/{topic}/groups/{group}/fetch",
            post(crate::work::fetch_route),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/jobs/{token}/{outcome}",
            post(crate::work::outcome_route),
        )
        .route("/v1/maps/{map}", get(crate::maps::snapshot))
        .route("/v1/maps/{map}/events", get(crate::maps::events))
        .route(
            "/v1/maps/{map}/keys/{*key}",
            get(crate::maps::get_key)
                .put(crate::maps::put_key)
                .delete(crate::maps::delete_key),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint; see docs/GATEWAY.md") })
        // The gateway checks sizes itself, with its own limit and a JSON error.
        .layer(DefaultBodyLimit::max(state_max_body(&state)))
        .with_state(state)
}

fn state_max_body(state: &State) -> usize {
    state.0.max_body
}

/// The topic from the path, checked.
pub(crate) fn topic_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(topic) = path.map_err(|e| ApiError::bad_input(format!("bad topic in path: {e}")))?;
    herald::validate_topic(&topic)?;
    Ok(topic)
}

pub(crate) fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the request body is larger than the gateway's limit: {}",
                e.body_text()
            ))
        } else {
            ApiError::bad_input(format!("cannot read the request body: {}", e.body_text()))
        }
    })
}

async fn publish(
    axum::extract::State(state): axum::extract::State<State>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match publish_inner(&state, path, raw, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            state.0.metrics.publish_errors.inc();
            e.into_response()
        }
    }
}

async fn publish_inner(
    state: &State,
    path: Result<Path<String>, PathRejection>,
    raw: Option<String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let grants = state.grants(headers, &Query::parse(raw.as_deref()))?;
    let topic = topic_of(path)?;
    require(&grants, Action::Publish, &topic)?;
    let body = body_of(body)?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_input("the Idempotency-Key header is not text"))?
                .to_string(),
        ),
        None => None,
    };
    let herald = &state.0.herald;
    if ndjson {
        if key.is_some() {
            return Err(ApiError::bad_input(
                "Idempotency-Key applies to a single publish; give each NDJSON line its own \"key\"",
            ));
        }
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_input("the NDJSON body is not UTF-8"))?;
        let mut messages = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let item: PublishItem = serde_json::from_str(line)
                .map_err(|e| ApiError::bad_input(format!("line {}: {e}", i + 1)))?;
            messages.push(
                item.into_message()
                    .map_err(|e| ApiError::bad_input(format!("line {}: {e}", i + 1)))?,
            );
        }
        if messages.is_empty() {
            return Err(ApiError::bad_input("the NDJSON body holds no message"));
        }
        let receipts = herald.publish_batch(&topic, messages).await?;
        state.saw(&topic);
        count(state, receipts.iter().map(|r| r.duplicate));
        let out: Vec<ReceiptJson<'_>> = receipts.iter().map(ReceiptJson::from).collect();
        return Ok(Json(out).into_response());
    }
    let mut message = Message::new(body);
    if let Some(key) = key {
        message = message.key(key);
    }
    for (name, value) in headers {
        if let Some(h) = name.as_str().strip_prefix(HEADER_PREFIX) {
            let value = value.to_str().map_err(|_| {
                ApiError::bad_input(format!("the value of header {name} is not text"))
            })?;
            message = message.header(h, value);
        }
    }
    let receipt = herald.publish(&topic, message).await?;
    state.saw(&topic);
    count(state, [receipt.duplicate]);
    Ok(Json(ReceiptJson::from(&receipt)).into_response())
}

fn count(state: &State, duplicates: impl IntoIterator<Item = bool>) {
    for dup in duplicates {
        if dup {
            state.0.metrics.duplicates.inc();
        } else {
            state.0.metrics.published.inc();
        }
    }
}

/// How long a history read may take before it returns what it has.
const HISTORY_WAIT: Duration = Duration::from_secs(10);

async fn history(
    axum::extract::State(state): axum::extract::State<State>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let grants = state.grants(&headers, &query)?;
    let topic = topic_of(path)?;
    require(&grants, Action::Subscribe, &topic)?;
    let limit = match query.first("limit") {
        None => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_input(format!(
                    "invalid limit {l:?}: expected 1-{MAX_LIMIT}"
                )))
            }
        },
    };
    let herald = &state.0.herald;
    let info = herald.inspect(&topic).await?;
    let start = match query.first("from").unwrap_or("earliest") {
        "earliest" => info.first_offset.max(1),
        "latest" => info.last_offset + 1,
        n => n.parse::<u64>().map_err(|_| {
            ApiError::bad_input(format!(
                "invalid from {n:?}: expected earliest, latest or an offset"
            ))
        })?,
    }
    .max(1);
    let mut events = Vec::new();
    if info.epoch.is_some() && start <= info.last_offset {
        let mut sub = herald
            .subscribe([topic.as_str()])
            .from(Start::Offset(start))
            .buffer(limit)
            .await?;
        let deadline = tokio::time::Instant::now() + HISTORY_WAIT;
        while events.len() < limit {
            let Ok(item) = tokio::time::timeout_at(deadline, sub.next()).await else {
                break;
            };
            let Some(event) = item else { break };
            let event = event?;
            let done = match &event {
                Event::Message(d) => d.position.offset >= info.last_offset,
                Event::Gap { to, .. } => *to >= info.last_offset,
                _ => true,
            };
            events.push(event_json(&event).1);
            if done {
                break;
            }
        }
    }
    Ok(Json(serde_json::json!({
        "topic": topic,
        "epoch": info.epoch,
        "first_offset": info.first_offset,
        "last_offset": info.last_offset,
        "events": events,
    }))
    .into_response())
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Ready when Redis answers and holds Herald's scripts ([`Herald::ready`], which loads a
/// missing one), within 3 s.
async fn readyz(axum::extract::State(state): axum::extract::State<State>) -> Response {
    match tokio::time::timeout(Duration::from_secs(3), state.0.herald.ready()).await {
        Ok(Ok(_)) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => {
            let mut r = ApiError::from(e);
            r.status = StatusCode::SERVICE_UNAVAILABLE;
            r.into_response()
        }
        Err(_) => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "unreachable",
            message: "Redis did not answer within 3s".into(),
        }
        .into_response(),
    }
}

async fn metrics(axum::extract::State(state): axum::extract::State<State>) -> Response {
    let mut text = state.0.metrics.render(&state.0.hub.subscribers());
    if let Some(registry) = crate::prom::global() {
        text.push_str(&registry.render());
    }
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn info(
    axum::extract::State(state): axum::extract::State<State>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let grants = state.grants(&headers, &Query::parse(raw.as_deref()))?;
    require(&grants, Action::Admin, "")?;
    let m = &state.0.metrics;
    Ok(Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "protocol_version": herald::PROTOCOL_VERSION,
        "node_id": state.0.herald.node_id(),
        "auth": state.0.auth.is_some(),
        "topics": state.known(),
        "feeds": state.0.hub.topics(),
        "connections": {"sse": m.sse_open.get(), "ws": m.ws_open.get()},
    }))
    .into_response())
}

async fn status_page() -> Html<&'static str> {
    Html(crate::status::PAGE)
}
