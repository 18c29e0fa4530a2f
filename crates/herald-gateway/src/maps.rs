//! Replicated maps as resources (grants `map_read` and `map_write` on map names).
//!
//! - `GET /v1/maps/{map}`: the snapshot `{"map","revision","entries":{key:{"data"|"data_base64",
//!   "revision"}}}`, with the map's revision as `ETag`.
//! - `GET /v1/maps/{map}/keys/{key}`: the value as the body (`application/octet-stream`),
//!   its revision as `ETag` (`"epoch:offset"`); 404 when absent; `If-None-Match` with the
//!   current revision gives 304.
//! - `PUT /v1/maps/{map}/keys/{key}` (body = value): `If-Match: "<rev>"` writes only if the
//!   key is at that revision, `If-Match: *` only if it exists, `If-None-Match: *` only if it
//!   does not; a lost race is 412 with the key's current revision (`current`, and `ETag`
//!   when it exists). Answers `{"map","key","revision"}` with the new `ETag`.
//! - `DELETE /v1/maps/{map}/keys/{key}`: the same conditions (`If-Match`); 404 when absent.
//! - `GET /v1/maps/{map}/events`: the watch over SSE: `snapshot` first, then `changed`,
//!   `deleted`, `reset` (then a new `snapshot`); every event's `id` is the map's revision
//!   after it. A reconnect gets a fresh snapshot (a watch never resumes mid-way).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures::StreamExt;
use herald::{Expect, Map, MapEvent, Revision, Versioned};
use serde_json::{json, Map as JsonMap, Value};

use crate::api_error::ApiError;
use crate::auth::{Action, Grants};
use crate::http::{body_of, require, Query, State};
use crate::metrics::Open;

fn value_json(bytes: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(bytes) {
        Ok(t) => ("data", json!(t)),
        Err(_) => (
            "data_base64",
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

fn versioned_json(v: &Versioned) -> Value {
    let (field, data) = value_json(&v.value);
    let mut obj = JsonMap::new();
    obj.insert(field.into(), data);
    obj.insert("revision".into(), json!(v.revision.to_string()));
    Value::Object(obj)
}

fn etag(rev: Revision) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("\"{rev}\"")).ok()
}

fn open_map(
    state: &State,
    grants: &Grants,
    path_map: String,
    action: Action,
) -> Result<Map, ApiError> {
    let map = state.0.herald.map(&path_map)?;
    require(grants, action, &path_map)?;
    Ok(map)
}

/// A revision from a header value: `"epoch:offset"` (quotes optional, no weak tags).
fn revision_of(name: &str, v: &str) -> Result<Revision, ApiError> {
    let t = v.trim();
    let inner = t
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(t);
    inner.parse::<Revision>().map_err(|_| {
        ApiError::bad_input(format!(
            "invalid {name} {v:?}: expected a revision as the ETag gives it (\"EPOCH:OFFSET\") or *"
        ))
    })
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::bad_input(format!("the {name} header is not text"))),
    }
}

/// What the request's conditions expect of the key.
enum Cond {
    None,
    Expect(Expect),
    Exists,
}

fn condition(headers: &HeaderMap) -> Result<Cond, ApiError> {
    let if_match = header_text(headers, "if-match")?;
    let if_none = header_text(headers, "if-none-match")?;
    match (if_match, if_none) {
        (Some(_), Some(_)) => Err(ApiError::bad_input(
            "give If-Match or If-None-Match, not both",
        )),
        (Some(m), None) if m.trim() == "*" => Ok(Cond::Exists),
        (Some(m), None) => Ok(Cond::Expect(Expect::Revision(revision_of("If-Match", m)?))),
        (None, Some(n)) if n.trim() == "*" => Ok(Cond::Expect(Expect::Absent)),
        (None, Some(n)) => Err(ApiError::bad_input(format!(
            "If-None-Match {n:?} on a write: only * (the key must not exist) is supported"
        ))),
        (None, None) => Ok(Cond::None),
    }
}

/// A 412 with the key's current revision.
fn conflict(message: String, current: Option<Revision>) -> Response {
    let body = json!({
        "error": {"kind": "conflict", "message": message},
        "current": current.map(|r| r.to_string()),
    });
    let mut r = (StatusCode::PRECONDITION_FAILED, Json(body)).into_response();
    if let Some(tag) = current.and_then(etag) {
        r.headers_mut().insert(header::ETAG, tag);
    }
    r
}

fn written(map: &Map, key: &str, rev: Revision) -> Response {
    let mut r =
        Json(json!({"map": map.name(), "key": key, "revision": rev.to_string()})).into_response();
    if let Some(tag) = etag(rev) {
        r.headers_mut().insert(header::ETAG, tag);
    }
    r
}

fn map_error(e: herald::Error) -> Response {
    match e {
        herald::Error::Conflict { current, .. } => conflict(e.to_string(), current),
        e => ApiError::from(e).into_response(),
    }
}

type KeyPath = Result<Path<(String, String)>, PathRejection>;

fn key_path(path: KeyPath) -> Result<(String, String), ApiError> {
    let Path((map, key)) = path.map_err(|e| ApiError::bad_input(format!("bad path: {e}")))?;
    herald::map::validate_map_key(&key)?;
    Ok((map, key))
}

pub(crate) async fn snapshot(
    AxState(state): AxState<State>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let grants = state.grants(&headers, &Query::parse(raw.as_deref()))?;
    let Path(name) = path.map_err(|e| ApiError::bad_input(format!("bad path: {e}")))?;
    let map = open_map(&state, &grants, name, Action::MapRead)?;
    let snap = map.snapshot().await?;
    let entries: JsonMap<String, Value> = snap
        .entries
        .iter()
        .map(|(k, v)| (k.clone(), versioned_json(v)))
        .collect();
    let mut r = Json(json!({
        "map": map.name(),
        "revision": snap.revision.map(|r| r.to_string()),
        "entries": entries,
    }))
    .into_response();
    if let Some(tag) = snap.revision.and_then(etag) {
        r.headers_mut().insert(header::ETAG, tag);
    }
    Ok(r)
}

pub(crate) async fn get_key(
    AxState(state): AxState<State>,
    path: KeyPath,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let grants = state.grants(&headers, &Query::parse(raw.as_deref()))?;
    let (name, key) = key_path(path)?;
    let map = open_map(&state, &grants, name, Action::MapRead)?;
    let Some(v) = map.get(&key).await? else {
        return Err(ApiError::not_found(format!(
            "map {:?} has no key {key:?}",
            map.name()
        )));
    };
    let tag = etag(v.revision);
    if let (Some(n), Some(tag)) = (header_text(&headers, "if-none-match")?, &tag) {
        if n.split(',')
            .any(|t| t.trim() == tag.to_str().unwrap_or_default())
        {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            r.headers_mut().insert(header::ETAG, tag.clone());
            return Ok(r);
        }
    }
    let mut r = v.value.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(tag) = tag {
        h.insert(header::ETAG, tag);
    }
    Ok(r)
}

pub(crate) async fn put_key(
    AxState(state): AxState<State>,
    path: KeyPath,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let grants = state.grants(&headers, &Query::parse(raw.as_deref()))?;
    let (name, key) = key_path(path)?;
    let map = open_map(&state, &grants, name, Action::MapWrite)?;
    let cond = condition(&headers)?;
    let body = body_of(body)?;
    let result = match cond {
        Cond::None => map.put(&key, &body).await,
        Cond::Expect(e) => map.put_if(&key, &body, e).await,
        Cond::Exists => match map.get(&key).await? {
            None => {
                return Ok(conflict(
                    format!(
                        "map {:?}: key {key:?} does not exist (If-Match: *)",
                        map.name()
                    ),
                    None,
                ))
            }
            Some(v) => map.put_if(&key, &body, Expect::Revision(v.revision)).await,
        },
    };
    Ok(match result {
        Ok(rev) => written(&map, &key, rev),
        Err(e) => map_error(e),
    })
}

pub(crate) async fn delete_key(
    AxState(state): AxState<State>,
    path: KeyPath,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let grants = state.grants(&headers, &Query::parse(raw.as_deref()))?;
    let (name, key) = key_path(path)?;
    let map = open_map(&state, &grants, name, Action::MapWrite)?;
    let absent =
        || ApiError::not_found(format!("map {:?} has no key {key:?}", map.name())).into_response();
    let result = match condition(&headers)? {
        Cond::None => match map.delete(&key).await {
            Ok(None) => return Ok(absent()),
            Ok(Some(rev)) => Ok(rev),
            Err(e) => Err(e),
        },
        Cond::Expect(Expect::Revision(rev)) => map.delete_if(&key, rev).await,
        Cond::Expect(Expect::Absent) => {
            return Err(ApiError::bad_input(
                "If-None-Match: * on a delete can never succeed; use If-Match",
            ))
        }
        Cond::Exists => match map.get(&key).await? {
            None => return Ok(absent()),
            Some(v) => map.delete_if(&key, v.revision).await,
        },
    };
    Ok(match result {
        Ok(rev) => written(&map, &key, rev),
        Err(e) => map_error(e),
    })
}

/// A watch event as SSE: name, id (the map's revision after it) and JSON data.
fn watch_event(map: &str, event: &MapEvent) -> SseEvent {
    let (name, rev, data) = match event {
        MapEvent::Snapshot {
            entries,
            revision,
            reason,
        } => {
            let entries: JsonMap<String, Value> = entries
                .iter()
                .map(|(k, v)| (k.clone(), versioned_json(v)))
                .collect();
            (
                "snapshot",
                *revision,
                json!({"map": map, "revision": revision.map(|r| r.to_string()),
                       "reason": reason, "entries": entries}),
            )
        }
        MapEvent::Changed {
            key,
            value,
            revision,
        } => {
            let (field, data) = value_json(value);
            let mut v = json!({"map": map, "key": key, "revision": revision.to_string()});
            if let Some(obj) = v.as_object_mut() {
                obj.insert(field.into(), data);
            }
            ("changed", Some(*revision), v)
        }
        MapEvent::Deleted { key, revision } => (
            "deleted",
            Some(*revision),
            json!({"map": map, "key": key, "revision": revision.to_string()}),
        ),
        MapEvent::Reset { last } => (
            "reset",
            None,
            json!({"map": map, "last": last.map(|r| r.to_string())}),
        ),
        _ => ("unknown", None, json!({"map": map})),
    };
    let mut e = SseEvent::default().event(name).data(data.to_string());
    if let Some(rev) = rev {
        e = e.id(rev.to_string());
    }
    e
}

pub(crate) async fn events(
    AxState(state): AxState<State>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let grants = state.grants(&headers, &Query::parse(raw.as_deref()))?;
    let Path(name) = path.map_err(|e| ApiError::bad_input(format!("bad path: {e}")))?;
    let map = open_map(&state, &grants, name, Action::MapRead)?;
    let watch = map.watch().await?;
    state.saw(map.topic());
    let end = crate::sse::end_of(&state, &grants);
    let open = Open::new(state.0.metrics.clone(), false);
    let name = map.name().to_string();
    let retry = SseEvent::default().retry(state.0.retry);
    let body = futures::stream::once(async move { Ok::<_, Infallible>(retry) }).chain(
        futures::stream::unfold(
            (watch, end, open, name, false),
            |(mut watch, mut end, open, name, done)| async move {
                if done {
                    return None;
                }
                tokio::select! {
                    biased;
                    expired = &mut end => {
                        if !expired {
                            return None;
                        }
                        let e = ApiError::unauthorized("the token expired: reconnect with a fresh token");
                        let ev = SseEvent::default().event("error").data(e.json().to_string());
                        Some((Ok(ev), (watch, end, open, name, true)))
                    }
                    item = watch.next() => match item? {
                        Ok(event) => {
                            let ev = watch_event(&name, &event);
                            Some((Ok(ev), (watch, end, open, name, false)))
                        }
                        Err(e) => {
                            let ev = SseEvent::default().event("error").data(ApiError::from(e).json().to_string());
                            Some((Ok(ev), (watch, end, open, name, true)))
                        }
                    }
                }
            },
        ),
    );
    let keep_alive = KeepAlive::new()
        .interval(state.0.keep_alive.max(Duration::from_millis(10)))
        .text("keep-alive");
    Ok(Sse::new(body).keep_alive(keep_alive).into_response())
}
