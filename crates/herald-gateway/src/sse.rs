//! Server-Sent Events: `GET /v1/topics/{topic}/events` and `GET /v1/events?topic=..`.
//!
//! Every event's `id` resumes the stream: for one topic it is `epoch:offset` (the topic's
//! position after this event), for several `topic=epoch:offset,topic=epoch:offset` (each
//! topic's position; topic names cannot hold `=` or `,`). The id comes back in the
//! `Last-Event-ID` header (EventSource does that on reconnect) or the `last_event_id` query
//! parameter (a fresh page). See `follow` for what each kind of id resumes to.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use herald::Position;

use crate::api_error::ApiError;
use crate::auth::{Action, Grants};
use crate::follow::{Follower, StartAt};
use crate::http::{require, topic_of, Query, State};
use crate::metrics::Open;

/// Most topics one stream may follow.
pub(crate) const MAX_TOPICS: usize = 100;

pub(crate) async fn topic_events(
    AxState(state): AxState<State>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let grants = state.grants(&headers, &query)?;
    let topic = topic_of(path)?;
    require(&grants, Action::Subscribe, &topic)?;
    let from = StartAt::parse(query.first("from").unwrap_or("latest"))?;
    let start = match resume_id(&headers, &query) {
        None => from,
        Some(id) => match id.parse::<Position>() {
            Ok(p) => StartAt::Resume(p),
            Err(_) => StartAt::Bogus,
        },
    };
    stream(state, grants, vec![(topic, start)], true).await
}

pub(crate) async fn events(
    AxState(state): AxState<State>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let grants = state.grants(&headers, &query)?;
    let mut topics = query.all("topic");
    let mut seen = std::collections::HashSet::new();
    topics.retain(|t| seen.insert(t.clone()));
    if topics.is_empty() {
        return Err(ApiError::bad_input(
            "no topic: give one or more `topic=NAME` query parameters",
        ));
    }
    if topics.len() > MAX_TOPICS {
        return Err(ApiError::bad_input(format!(
            "{} topics: one stream follows at most {MAX_TOPICS}",
            topics.len()
        )));
    }
    for t in &topics {
        herald::validate_topic(t)?;
        require(&grants, Action::Subscribe, t)?;
    }
    let from = StartAt::parse(query.first("from").unwrap_or("latest"))?;
    let resume = resume_id(&headers, &query).map(|id| parse_multi(&id));
    let starts = topics
        .into_iter()
        .map(|t| {
            let start = match &resume {
                None => from.clone(),
                Some(None) => StartAt::Bogus,
                Some(Some(map)) => match map.iter().find(|(name, _)| *name == t) {
                    None => from.clone(),
                    Some((_, Some(p))) => StartAt::Resume(*p),
                    Some((_, None)) => StartAt::Bogus,
                },
            };
            (t, start)
        })
        .collect();
    stream(state, grants, starts, false).await
}

/// The id to resume from: `Last-Event-ID`, else `last_event_id`; empty counts as none.
fn resume_id(headers: &HeaderMap, query: &Query) -> Option<String> {
    let id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.first("last_event_id").map(str::to_string))?;
    let id = id.trim().to_string();
    (!id.is_empty()).then_some(id)
}

/// `a=E:O,b=E:O` as (topic, position) pairs (`None` for a position that does not parse);
/// `None` when it is not of that form at all.
pub(crate) fn parse_multi(id: &str) -> Option<Vec<(String, Option<Position>)>> {
    let mut out = Vec::new();
    for part in id.split(',') {
        let (topic, pos) = part.split_once('=')?;
        out.push((topic.to_string(), pos.parse::<Position>().ok()));
    }
    Some(out)
}

/// The multi-topic id of these positions.
pub(crate) fn encode_multi(positions: &[(String, Position)]) -> String {
    let mut id = String::new();
    for (i, (topic, p)) in positions.iter().enumerate() {
        if i > 0 {
            id.push(',');
        }
        id.push_str(topic);
        id.push('=');
        id.push_str(&p.to_string());
    }
    id
}

enum End {
    Expired,
    Shutdown,
}

type Tagged = (usize, std::sync::Arc<crate::wire::Outgoing>, Position);

struct Run {
    merged: SelectAll<BoxStream<'static, Tagged>>,
    end: Pin<Box<dyn Future<Output = End> + Send>>,
    positions: Vec<(String, Position)>,
    single: bool,
    done: bool,
    state: State,
    grants: Grants,
    _open: Open,
}

/// How a stream ends on its own: when its token expires, or when the gateway stops.
pub(crate) fn end_of(state: &State, grants: &Grants) -> Pin<Box<dyn Future<Output = bool> + Send>> {
    let remaining = grants.remaining();
    let mut stopped = state.0.stopped.clone();
    Box::pin(async move {
        let expiry = async {
            match remaining {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = expiry => true,
            _ = stopped.wait_for(|s| *s) => false,
        }
    })
}

async fn stream(
    state: State,
    grants: Grants,
    starts: Vec<(String, StartAt)>,
    single: bool,
) -> Result<Response, ApiError> {
    let buffer = state.0.client_buffer;
    let hub = &state.0.hub;
    let followers = futures::future::try_join_all(
        starts
            .iter()
            .map(|(topic, start)| Follower::start(hub, topic, start.clone(), buffer)),
    )
    .await?;
    for (topic, _) in &starts {
        state.saw(topic);
    }
    let positions: Vec<(String, Position)> = followers
        .iter()
        .map(|f| (f.topic().to_string(), f.position()))
        .collect();
    let mut merged = SelectAll::new();
    for (i, follower) in followers.into_iter().enumerate() {
        merged.push(
            futures::stream::unfold(follower, move |mut f| async move {
                let event = f.next().await?;
                let position = f.position();
                Some(((i, event, position), f))
            })
            .boxed(),
        );
    }
    let ends = end_of(&state, &grants);
    let run = Run {
        merged,
        end: Box::pin(async move {
            if ends.await {
                End::Expired
            } else {
                End::Shutdown
            }
        }),
        positions,
        single,
        done: false,
        grants: grants.clone(),
        _open: Open::new(state.0.metrics.clone(), false),
        state: state.clone(),
    };
    let retry = SseEvent::default().retry(state.0.retry);
    let body = futures::stream::once(async move { Ok::<_, Infallible>(retry) }).chain(
        futures::stream::unfold(run, |mut run| async move {
            if run.done {
                return None;
            }
            tokio::select! {
                biased;
                end = &mut run.end => {
                    run.done = true;
                    match end {
                        End::Expired => {
                            let e = ApiError::unauthorized("the token expired: reconnect with a fresh token");
                            Some((Ok(SseEvent::default().event("error").data(e.json().to_string())), run))
                        }
                        End::Shutdown => None,
                    }
                }
                item = run.merged.next() => {
                    let (i, event, position) = item?;
                    // Every event, replayed history included, is checked against the token
                    // as it is sent: an expired token or a topic it does not grant ends the
                    // stream before the event.
                    let expired = run.grants.remaining().is_some_and(|d| d.is_zero());
                    if expired || !run.grants.allows(Action::Subscribe, &run.positions[i].0) {
                        run.done = true;
                        let e = ApiError::unauthorized("the token expired: reconnect with a fresh token");
                        return Some((Ok(SseEvent::default().event("error").data(e.json().to_string())), run));
                    }
                    run.positions[i].1 = position;
                    let id = if run.single {
                        position.to_string()
                    } else {
                        encode_multi(&run.positions)
                    };
                    run.state.0.metrics.delivered.inc();
                    Some((Ok(SseEvent::default().event(event.name()).id(id).data(event.sse_data())), run))
                }
            }
        }),
    );
    let keep_alive = KeepAlive::new()
        .interval(state.0.keep_alive.max(Duration::from_millis(10)))
        .text("keep-alive");
    Ok(Sse::new(body).keep_alive(keep_alive).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn multi_topic_ids_round_trip() {
        let positions = vec![
            ("a.b".to_string(), Position::new(7, 3)),
            ("c:d/e".to_string(), Position::new(0, 0)),
        ];
        let id = encode_multi(&positions);
        assert_eq!(id, "a.b=7:3,c:d/e=0:0");
        let parsed = parse_multi(&id).unwrap();
        assert_eq!(parsed[0], ("a.b".to_string(), Some(Position::new(7, 3))));
        assert_eq!(parsed[1], ("c:d/e".to_string(), Some(Position::new(0, 0))));
        assert_eq!(parse_multi("garbage"), None);
        assert_eq!(parse_multi("a=x").unwrap(), vec![("a".to_string(), None)]);
    }
}
