//! The live status page (`/`, embedded, no external assets) and its data:
//! `GET /v1/status` (one JSON snapshot) and `GET /v1/status/events` (a snapshot per second
//! over SSE, event `status`). Both need the `admin` grant; the page passes its own
//! `access_token` query parameter on.

use std::convert::Infallible;
use std::time::Duration;

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
    let feeds = state.0.hub.topics();
    let rows: Vec<Value> = topics
        .iter()
        .zip(infos)
        .map(|(t, info)| match info {
            Ok(i) => json!({
                "topic": t,
                "epoch": i.epoch,
                "first_offset": i.first_offset,
                "last_offset": i.last_offset,
                "length": i.length,
                "max_len": i.settings.max_len,
                "max_age_ms": i.settings.max_age_ms,
                "live": feeds.contains(t),
                "cursors": i.cursors.len(),
            }),
            Err(e) => json!({"topic": t, "error": e.to_string()}),
        })
        .collect();
    let m = &state.0.metrics;
    json!({
        "node_id": state.0.herald.node_id(),
        "topics": rows,
        "connections": {"sse": m.sse_open.get(), "ws": m.ws_open.get()},
        "published": m.published.get(),
        "delivered": m.delivered.get(),
    })
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
