//! The live status page (`/`, embedded, no external assets) and its data:
//! `GET /v1/status` (one JSON snapshot) and `GET /v1/status/events` (a snapshot per second
//! over SSE, event `status`). Both need the `admin` grant; the page passes its own
//! `access_token` query parameter on.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State as AxState};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::auth::Action;
use crate::http::{require, Query, State};
use crate::metrics::Open;

/// Most topics a snapshot shows.
const MAX_SHOWN: usize = 200;
/// How often the status stream sends a snapshot.
const EVERY: Duration = Duration::from_secs(1);

/// Most groups a snapshot shows, and members per group.
const MAX_GROUPS: usize = 50;
const MAX_MEMBERS: usize = 100;
/// The window of a topic's publish rate.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Each topic's last offsets as the gateway saw them, for its publish rate: the offset
/// grows by one per message, whoever published it.
#[derive(Default)]
pub(crate) struct Rates(Mutex<HashMap<String, VecDeque<Sample>>>);

/// When, in which epoch, at which last offset.
type Sample = (Instant, Option<u64>, u64);

impl Rates {
    /// Records `(epoch, last_offset)` of `topic` now; returns messages per second over the
    /// window so far (`None` until two observations of one epoch are at least 0.5 s apart).
    fn observe(&self, topic: &str, epoch: Option<u64>, last: u64) -> Option<f64> {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 && !map.contains_key(topic) {
            return None;
        }
        let samples = map.entry(topic.to_string()).or_default();
        samples.retain(|(at, e, _)| *e == epoch && now.duration_since(*at) <= RATE_WINDOW);
        if samples
            .back()
            .is_none_or(|(at, _, _)| now.duration_since(*at) >= Duration::from_millis(200))
        {
            samples.push_back((now, epoch, last));
        }
        let (first_at, _, first) = *samples.front()?;
        let span = now.duration_since(first_at).as_secs_f64();
        (span >= 0.5).then(|| last.saturating_sub(first) as f64 / span)
    }
}

/// The page.
pub(crate) const PAGE: &str = include_str!("status.html");

/// The gateway's state: topics it knows with their offsets, connections, counters.
async fn build(state: &State) -> Value {
    let mut topics = state.known();
    for t in state.0.hub.topics() {
        if !topics.contains(&t) {
            topics.push(t);
        }
    }
    topics.sort();
    topics.truncate(MAX_SHOWN);
    let infos = futures::future::join_all(topics.iter().map(|t| state.0.herald.inspect(t))).await;
    let feeds = state.0.hub.subscribers();
    let rows: Vec<Value> = topics
        .iter()
        .zip(infos)
        .map(|(t, info)| match info {
            Ok(i) => json!({
                "rate": state.0.rates.observe(t, i.epoch, i.last_offset),
                "subscribers": feeds.iter().find(|(f, _)| f == t).map_or(0, |(_, n)| *n),
                "cursor_lag": i.cursors.iter().map(|c| json!({
                    "cursor": c.name,
                    "position": c.commit.position.to_string(),
                    "lag": c.lag,
                    "age_ms": now_ms().saturating_sub(c.commit.committed_at_ms),
                })).collect::<Vec<_>>(),
                "topic": t,
                "epoch": i.epoch,
                "first_offset": i.first_offset,
                "last_offset": i.last_offset,
                "length": i.length,
                "max_len": i.settings.max_len,
                "max_age_ms": i.settings.max_age_ms,
                "live": feeds.iter().any(|(f, _)| f == t),
                "cursors": i.cursors.len(),
            }),
            Err(e) => json!({"topic": t, "error": e.to_string()}),
        })
        .collect();
    let m = &state.0.metrics;
    json!({
        "node_id": state.0.herald.node_id(),
        "topics": rows,
        "groups": groups(state).await,
        "work_groups": work_groups(state, &topics).await,
        "work_members": state.0.work.summary(),
        "connections": {"sse": m.sse_open.get(), "ws": m.ws_open.get()},
        "published": m.published.get(),
        "delivered": m.delivered.get(),
    })
}

/// The live members of each group (or the error that kept them from being read).
async fn groups(state: &State) -> Value {
    let herald = &state.0.herald;
    let mut names = match herald.member_groups().await {
        Ok(g) => g,
        Err(e) => return json!({"error": e.to_string()}),
    };
    names.truncate(MAX_GROUPS);
    let lists = futures::future::join_all(names.iter().map(|g| herald.members(g))).await;
    let now = now_ms();
    let rows: Vec<Value> = names
        .iter()
        .zip(lists)
        .map(|(g, list)| match list {
            Ok(members) => json!({
                "group": g,
                "live": members.len(),
                "members": members.iter().take(MAX_MEMBERS).map(|m| json!({
                    "id": m.id,
                    "meta": m.meta,
                    "expires_in_ms": m.expires_at_ms.saturating_sub(now),
                })).collect::<Vec<_>>(),
            }),
            Err(e) => json!({"group": g, "error": e.to_string()}),
        })
        .collect();
    json!(rows)
}

/// The work groups of the topics shown (at most [`MAX_GROUPS`] topics are asked).
async fn work_groups(state: &State, topics: &[String]) -> Value {
    let asked: Vec<&String> = topics
        .iter()
        .filter(|t| !t.starts_with(herald::map::MAP_TOPIC_PREFIX))
        .take(MAX_GROUPS)
        .collect();
    let lists =
        futures::future::join_all(asked.iter().map(|t| state.0.herald.work_groups(t))).await;
    let mut rows = Vec::new();
    for (t, list) in asked.iter().zip(lists) {
        match list {
            Ok(groups) => rows.extend(groups.into_iter().map(|g| json!(g))),
            Err(e) => rows.push(json!({"topic": t, "group": "-", "error": e.to_string()})),
        }
    }
    json!(rows)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) async fn snapshot(
    AxState(state): AxState<State>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let grants = state.grants(&headers, &Query::parse(raw.as_deref()))?;
    require(&grants, Action::Admin, "")?;
    Ok(Json(build(&state).await).into_response())
}

pub(crate) async fn events(
    AxState(state): AxState<State>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let grants = state.grants(&headers, &Query::parse(raw.as_deref()))?;
    require(&grants, Action::Admin, "")?;
    let end = crate::sse::end_of(&state, &grants);
    let open = Open::new(state.0.metrics.clone(), false);
    let body = futures::stream::unfold(
        (state, end, open, true),
        |(state, mut end, open, first)| async move {
            if !first {
                tokio::select! {
                    _ = &mut end => return None,
                    _ = tokio::time::sleep(EVERY) => {}
                }
            }
            let snapshot = build(&state).await;
            let event = SseEvent::default()
                .event("status")
                .data(snapshot.to_string());
            Some((Ok::<_, Infallible>(event), (state, end, open, false)))
        },
    );
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response())
}
