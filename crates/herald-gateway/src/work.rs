//! Work groups over HTTP and WebSocket (the `work` grant on the topic).
//!
//! - `POST /v1/topics/{topic}/groups/{group}/fetch?member=M&max=N&wait=SECS` long-polls for
//!   up to `N` jobs (1-1000, default 1) for `wait` seconds (0-30, default 0: what is there
//!   now). Each job carries its topic, epoch, offset, attempt, payload, headers and an opaque
//!   `token`.
//! - `POST /v1/topics/{topic}/groups/{group}/jobs/{token}/ack`, `.../nak?delay=SECS`,
//!   `.../fail?error=TEXT`, `.../in-progress`, `.../term?reason=TEXT` report an outcome:
//!   `{"outcome":"acked"|"retry"|"extended"|"dead"|"stale", ..}`; `stale` answers 409.
//! - `GET /v1/topics/{topic}/groups`: the state of every group of the topic (`herald groups`).
//!
//! ## Members
//! An HTTP worker is identified by its `member` parameter (default `http`): the gateway holds
//! one library [`Worker`] per (topic, group, member), created by the first fetch (whose
//! `in_flight` (default: its `max`), `lease` (seconds, default 30), `max_deliveries`
//! (default 5) and `from` (`earliest`, `latest` or an offset; default `earliest`) set it up;
//! later fetches of the same member share it). That worker heartbeats for the member while
//! fetches or outcomes keep coming; after the gateway's work idle timeout without either it
//! is closed, which releases its leases at once (their tokens become `stale`). Clients that
//! fetch with the same member share one worker and its jobs; give each process its own
//! member to spread the leases. The worker claims up to `in_flight` jobs ahead of fetches;
//! a claimed job waiting for a fetch is leased to the member meanwhile.
//!
//! ## Tokens
//! A token is the URL-safe base64 of a small JSON object (version, topic, group, member,
//! holder, epoch, offset, attempt, nonce): what fencing needs, plus the nonce that names the
//! job held by the gateway. An outcome for a token the gateway no longer holds (reported
//! already, its lease ran out and was swept, its member's worker was closed, another gateway
//! process) is `stale`: that delivery can no longer be finished by this member.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures::{FutureExt, StreamExt};
use herald::{Herald, Job, Outcome, Start, WorkEvent, Worker};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::api_error::ApiError;
use crate::auth::{Action, Grants};
use crate::http::{require, Query, State};
use crate::wire::MessageJson;

/// Longest long-poll of one fetch.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most jobs one fetch returns.
pub(crate) const MAX_FETCH: usize = 1000;
/// Most members (gateway-side workers) one gateway holds at once.
const MAX_MEMBERS: usize = 10_000;
/// How long after its lease ran out (by the gateway's clock) a job is forgotten.
const SWEEP_MARGIN: Duration = Duration::from_secs(1);

/// The gateway's work-group members, by (topic, group, member).
pub(crate) struct Pool {
    herald: Herald,
    idle: Duration,
    members: Mutex<HashMap<MemberKey, Arc<Member>>>,
    starting: tokio::sync::Mutex<()>,
}

type MemberKey = (String, String, String);

struct Member {
    key: MemberKey,
    lease: Duration,
    /// The worker; fetches take turns reading it. `None` once closed.
    worker: tokio::sync::Mutex<Option<Worker>>,
    /// Jobs handed out and not finished, by token.
    jobs: Mutex<HashMap<String, Arc<Slot>>>,
    last_used: Mutex<Instant>,
}

struct Slot {
    job: tokio::sync::Mutex<Option<Job>>,
    deadline: Mutex<Instant>,
}

impl Member {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// What a token says.
#[derive(Debug, Serialize, Deserialize)]
struct Token {
    v: u32,
    t: String,
    g: String,
    m: String,
    h: String,
    e: u64,
    o: u64,
    a: u32,
    n: u64,
}

impl Token {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }
    fn decode(text: &str) -> Result<Token, ApiError> {
        let bad = || {
            ApiError::bad_input("malformed job token: pass the token of a fetched job unchanged")
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| bad())?;
        let token: Token = serde_json::from_slice(&raw).map_err(|_| bad())?;
        if token.v != 1 {
            return Err(bad());
        }
        Ok(token)
    }
}

fn nonce() -> u64 {
    // A randomly keyed hasher: a fresh random value per call.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Fetch parameters, from a query string or a WebSocket frame.
pub(crate) struct FetchArgs {
    pub(crate) topic: String,
    pub(crate) group: String,
    member: String,
    max: usize,
    wait: Duration,
    in_flight: Option<usize>,
    lease: Duration,
    max_deliveries: u32,
    from: Start,
}

fn seconds(name: &str, v: &str, max: Duration) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::bad_input(format!(
            "invalid {name} {v:?}: expected seconds from 0 to {}",
            max.as_secs()
        ))
    };
    let s: f64 = v.parse().map_err(|_| bad())?;
    if !(0.0..=max.as_secs_f64()).contains(&s) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(s))
}

fn count<T: std::str::FromStr + PartialOrd>(
    name: &str,
    v: &str,
    lo: T,
    hi: T,
    range: &str,
) -> Result<T, ApiError> {
    match v.parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(ApiError::bad_input(format!(
            "invalid {name} {v:?}: expected {range}"
        ))),
    }
}

impl FetchArgs {
    pub(crate) fn parse(
        topic: String,
        group: String,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<FetchArgs, ApiError> {
        herald::validate_topic(&topic)?;
        herald::work::validate_work_group(&group)?;
        let member = get("member").unwrap_or_else(|| "http".into());
        if member.is_empty() || member.len() > 200 || member.contains(['#', '\n', '\r']) {
            return Err(ApiError::bad_input(format!(
                "invalid member {member:?}: 1-200 bytes without '#' or line breaks"
            )));
        }
        let max = match get("max") {
            None => 1,
            Some(v) => count("max", &v, 1, MAX_FETCH, "1-1000")?,
        };
        let wait = match get("wait") {
            None => Duration::ZERO,
            Some(v) => seconds("wait", &v, MAX_WAIT)?,
        };
        let in_flight = match get("in_flight") {
            None => None,
            Some(v) => Some(count("in_flight", &v, 1, 1000, "1-1000")?),
        };
        let lease = match get("lease") {
            None => Duration::from_secs(30),
            Some(v) => seconds("lease", &v, Duration::from_secs(24 * 3600))?,
        };
        if lease < herald::work::MIN_LEASE {
            return Err(ApiError::bad_input(format!(
                "invalid lease {lease:?}: at least {:?}",
                herald::work::MIN_LEASE
            )));
        }
        let max_deliveries = match get("max_deliveries") {
            None => 5,
            Some(v) => count("max_deliveries", &v, 1, 1_000_000, "1-1000000")?,
        };
        let from = match get("from").as_deref() {
            None | Some("earliest") => Start::Earliest,
            Some("latest") => Start::Latest,
            Some(n) => Start::Offset(n.parse().map_err(|_| {
                ApiError::bad_input(format!(
                    "invalid from {n:?}: expected earliest, latest or an offset"
                ))
            })?),
        };
        Ok(FetchArgs {
            topic,
            group,
            member,
            max,
            wait,
            in_flight,
            lease,
            max_deliveries,
            from,
        })
    }
}

/// What an outcome request asks.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Ack,
    Nak(Duration),
    Fail(String),
    Progress,
    Term(String),
}

impl Op {
    /// From the outcome's name (`ack`, `nak`, `fail`, `in-progress` / `in_progress`, `term`)
    /// and its parameters.
    pub(crate) fn parse(name: &str, get: &dyn Fn(&str) -> Option<String>) -> Result<Op, ApiError> {
        Ok(match name {
            "ack" => Op::Ack,
            "nak" => Op::Nak(match get("delay") {
                None => Duration::ZERO,
                Some(v) => seconds("delay", &v, Duration::from_secs(7 * 24 * 3600))?,
            }),
            "fail" => Op::Fail(get("error").unwrap_or_else(|| "failed".into())),
            "in-progress" | "in_progress" => Op::Progress,
            "term" => Op::Term(get("reason").unwrap_or_else(|| "terminated".into())),
            other => {
                return Err(ApiError::not_found(format!(
                    "unknown outcome {other:?}: expected ack, nak, fail, in-progress or term"
                )))
            }
        })
    }
}

impl Pool {
    pub(crate) fn new(herald: Herald, idle: Duration) -> Pool {
        Pool {
            herald,
            idle,
            members: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    fn lookup(&self, key: &MemberKey) -> Option<Arc<Member>> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// The member's worker, started when missing.
    async fn member(self: &Arc<Self>, args: &FetchArgs) -> Result<Arc<Member>, ApiError> {
        let key = (args.topic.clone(), args.group.clone(), args.member.clone());
        if let Some(m) = self.lookup(&key) {
            return Ok(m);
        }
        // One start at a time: two workers of one member id would be two incarnations, and
        // the second would release the first's leases.
        let _one = self.starting.lock().await;
        if let Some(m) = self.lookup(&key) {
            return Ok(m);
        }
        if self.members.lock().unwrap_or_else(|p| p.into_inner()).len() >= MAX_MEMBERS {
            return Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "unreachable",
                message: format!("the gateway holds {MAX_MEMBERS} work-group members already; retry later or use fewer member ids"),
            });
        }
        let worker = self
            .herald
            .work(args.topic.clone())
            .group(args.group.clone())
            .member(args.member.clone())
            .from(args.from.clone())
            .lease(args.lease)
            .max_deliveries(args.max_deliveries)
            .concurrency(args.in_flight.unwrap_or(args.max))
            .start()
            .await?;
        let member = Arc::new(Member {
            key: key.clone(),
            lease: args.lease,
            worker: tokio::sync::Mutex::new(Some(worker)),
            jobs: Mutex::new(HashMap::new()),
            last_used: Mutex::new(Instant::now()),
        });
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, member.clone());
        tokio::spawn(keeper(self.clone(), member.clone()));
        Ok(member)
    }

    fn forget(&self, member: &Arc<Member>) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if members
            .get(&member.key)
            .is_some_and(|m| Arc::ptr_eq(m, member))
        {
            members.remove(&member.key);
        }
    }

    /// Members and held jobs, for the status page.
    pub(crate) fn summary(&self) -> Vec<Value> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<Value> = members
            .values()
            .map(|m| {
                json!({
                    "topic": m.key.0, "group": m.key.1, "member": m.key.2,
                    "held": m.jobs.lock().unwrap_or_else(|p| p.into_inner()).len(),
                    "idle_ms": u64::try_from(m.idle_for().as_millis()).unwrap_or(u64::MAX),
                })
            })
            .collect();
        rows.truncate(200);
        rows
    }
}

/// Sweeps jobs whose lease ran out and closes the member after the idle timeout.
async fn keeper(pool: Arc<Pool>, member: Arc<Member>) {
    let every = (pool.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    // Bounded by the member's life: it ends when the member is closed.
    loop {
        tokio::time::sleep(every).await;
        let now = Instant::now();
        let expired: Vec<String> = {
            let jobs = member.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.iter()
                .filter(|(_, s)| *s.deadline.lock().unwrap_or_else(|p| p.into_inner()) <= now)
                .map(|(t, _)| t.clone())
                .collect()
        };
        if !expired.is_empty() {
            let mut jobs = member.jobs.lock().unwrap_or_else(|p| p.into_inner());
            for t in expired {
                jobs.remove(&t);
            }
        }
        if member.idle_for() < pool.idle {
            continue;
        }
        // A fetch in progress holds the worker: the member is not idle.
        let Ok(mut guard) = member.worker.try_lock() else {
            continue;
        };
        if member.idle_for() < pool.idle {
            continue;
        }
        pool.forget(&member);
        member
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let worker = guard.take();
        drop(guard);
        {
            if let Some(worker) = worker {
                if let Err(e) = worker.close().await {
                    tracing::warn!(topic = %member.key.0, group = %member.key.1, member = %member.key.2, error = %e, "closing an idle work-group member failed; its leases are released when its time to live passes");
                }
            }
            return;
        }
    }
}

fn job_json(token: &str, job: &Job, group: &str) -> Value {
    let mut v = serde_json::to_value(MessageJson::from(job.delivery())).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("token".into(), json!(token));
        obj.insert("group".into(), json!(group));
        obj.insert("attempt".into(), json!(job.attempt()));
        obj.insert("last_error".into(), json!(job.last_error()));
    }
    v
}

/// Fetches up to `max` jobs, waiting up to `wait` for the first.
pub(crate) async fn fetch(
    state: &State,
    grants: &Grants,
    args: FetchArgs,
) -> Result<Value, ApiError> {
    require(grants, Action::Work, &args.topic)?;
    state.saw(&args.topic);
    let pool = &state.0.work;
    let member = pool.member(&args).await?;
    member.touch();
    let deadline = Instant::now() + args.wait;
    let mut jobs = Vec::new();
    let mut notices = Vec::new();
    let Ok(mut guard) = tokio::time::timeout_at(deadline, member.worker.lock()).await else {
        // Another fetch of this member is waiting: nothing for this one.
        return Ok(json!({"jobs": jobs, "notices": notices}));
    };
    let Some(worker) = guard.as_mut() else {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "unreachable",
            message: "this work-group member was just closed after being idle; fetch again".into(),
        });
    };
    while jobs.len() < args.max {
        let next = if jobs.is_empty() && notices.is_empty() {
            tokio::time::timeout_at(deadline, worker.next()).await.ok()
        } else {
            worker.next().now_or_never()
        };
        let Some(next) = next else { break };
        match next {
            None => {
                *guard = None;
                pool.forget(&member);
                return Err(ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: "unreachable",
                    message: "the work-group member stopped; fetch again to start a new one".into(),
                });
            }
            Some(Err(e)) => {
                if jobs.is_empty() {
                    return Err(e.into());
                }
                break;
            }
            Some(Ok(WorkEvent::Job(job))) => {
                let pos = job.position();
                let token = Token {
                    v: 1,
                    t: args.topic.clone(),
                    g: args.group.clone(),
                    m: args.member.clone(),
                    h: worker.holder(),
                    e: pos.epoch,
                    o: pos.offset,
                    a: job.attempt(),
                    n: nonce(),
                }
                .encode();
                jobs.push(job_json(&token, &job, &args.group));
                let slot = Arc::new(Slot {
                    job: tokio::sync::Mutex::new(Some(job)),
                    deadline: Mutex::new(Instant::now() + member.lease + SWEEP_MARGIN),
                });
                member
                    .jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(token, slot);
            }
            Some(Ok(WorkEvent::Lost {
                epoch, count, ..
            })) => notices.push(json!({"event": "lost", "topic": args.topic, "group": args.group, "epoch": epoch, "count": count})),
            Some(Ok(WorkEvent::Reset { epoch, .. })) => {
                notices.push(json!({"event": "reset", "topic": args.topic, "group": args.group, "epoch": epoch}))
            }
            Some(Ok(_)) => {}
        }
    }
    drop(guard);
    member.touch();
    Ok(json!({"jobs": jobs, "notices": notices}))
}

/// Reports an outcome for `token`; `expect` is the (topic, group) of the path, when any.
/// Returns the outcome JSON and whether it is `stale`.
pub(crate) async fn outcome(
    state: &State,
    grants: &Grants,
    token_text: &str,
    expect: Option<(&str, &str)>,
    op: Op,
) -> Result<(Value, bool), ApiError> {
    let token = Token::decode(token_text)?;
    require(grants, Action::Work, &token.t)?;
    if let Some((topic, group)) = expect {
        if topic != token.t || group != token.g {
            return Err(ApiError::bad_input(format!(
                "this token is for topic {:?} group {:?}, not {topic:?} {group:?}",
                token.t, token.g
            )));
        }
    }
    let base = json!({"topic": token.t, "group": token.g, "epoch": token.e, "offset": token.o, "attempt": token.a});
    let with = |mut v: Value, outcome: &str| {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("outcome".into(), json!(outcome));
        }
        v
    };
    let stale = |why: &str| {
        let mut v = with(base.clone(), "stale");
        if let Some(obj) = v.as_object_mut() {
            obj.insert("reason".into(), json!(why));
        }
        Ok((v, true))
    };
    let key = (token.t.clone(), token.g.clone(), token.m.clone());
    let Some(member) = state.0.work.lookup(&key) else {
        return stale("this gateway holds no worker for the token's member (it was closed after being idle, or the token is from another gateway process): the delivery went back to the group");
    };
    member.touch();
    let slot = member
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(token_text)
        .cloned();
    let Some(slot) = slot else {
        return stale(
            "the job is no longer held: its outcome was reported already or its lease ran out",
        );
    };
    let mut held = slot.job.lock().await;
    let result = match op {
        Op::Progress => {
            let Some(job) = held.as_ref() else {
                return stale("the job's outcome was reported already");
            };
            let r = job.in_progress().await?;
            if r == Outcome::Extended {
                *slot.deadline.lock().unwrap_or_else(|p| p.into_inner()) =
                    Instant::now() + member.lease + SWEEP_MARGIN;
            }
            r
        }
        op => {
            let Some(job) = held.take() else {
                return stale("the job's outcome was reported already");
            };
            member
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(token_text);
            match op {
                Op::Ack => job.ack().await?,
                Op::Nak(d) => job.nak(d).await?,
                Op::Fail(e) => job.fail(e).await?,
                Op::Term(r) => job.term(r).await?,
                Op::Progress => Outcome::Stale,
            }
        }
    };
    drop(held);
    member.touch();
    Ok(match result {
        Outcome::Acked => (with(base, "acked"), false),
        Outcome::Retry { after } => {
            let mut v = with(base, "retry");
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "after_ms".into(),
                    json!(u64::try_from(after.as_millis()).unwrap_or(u64::MAX)),
                );
            }
            (v, false)
        }
        Outcome::Extended => (with(base, "extended"), false),
        Outcome::DeadLettered { position } => {
            let mut v = with(base, "dead");
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "dead_letter".into(),
                    json!({"epoch": position.epoch, "offset": position.offset}),
                );
            }
            (v, false)
        }
        _ => {
            let mut v = with(base, "stale");
            if let Some(obj) = v.as_object_mut() {
                obj.insert("reason".into(), json!("this delivery's attempt is no longer current: its lease ran out and it went to another member, the member was restarted, or the topic was reset"));
            }
            (v, true)
        }
    })
}

fn query_get(query: &Query) -> impl Fn(&str) -> Option<String> + '_ {
    move |k| query.first(k).map(str::to_string)
}

pub(crate) async fn fetch_route(
    AxState(state): AxState<State>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let grants = state.grants(&headers, &query)?;
    let Path((topic, group)) = path.map_err(|e| ApiError::bad_input(format!("bad path: {e}")))?;
    let args = FetchArgs::parse(topic, group, &query_get(&query))?;
    Ok(Json(fetch(&state, &grants, args).await?).into_response())
}

pub(crate) async fn outcome_route(
    AxState(state): AxState<State>,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let grants = state.grants(&headers, &query)?;
    let Path((topic, group, token, name)) =
        path.map_err(|e| ApiError::bad_input(format!("bad path: {e}")))?;
    herald::validate_topic(&topic)?;
    let op = Op::parse(&name, &query_get(&query))?;
    let (v, stale) = outcome(&state, &grants, &token, Some((&topic, &group)), op).await?;
    let status = if stale {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    Ok((status, Json(v)).into_response())
}

pub(crate) async fn groups_route(
    AxState(state): AxState<State>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let grants = state.grants(&headers, &query)?;
    let topic = crate::http::topic_of(path)?;
    require(&grants, Action::Work, &topic)?;
    let groups = state.0.herald.work_groups(&topic).await?;
    Ok(Json(json!({"topic": topic, "groups": groups})).into_response())
}

/// A WebSocket work frame (`fetch`, `ack`, `nak`, `fail`, `in_progress`, `term`): the reply.
pub(crate) async fn ws_frame(
    state: &State,
    grants: &Grants,
    kind: &str,
    frame: &Value,
) -> Result<Value, ApiError> {
    let get = |k: &str| -> Option<String> {
        match frame.get(k)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    };
    if kind == "fetch" {
        let topic =
            get("topic").ok_or_else(|| ApiError::bad_input("a fetch frame needs a \"topic\""))?;
        let group =
            get("group").ok_or_else(|| ApiError::bad_input("a fetch frame needs a \"group\""))?;
        let args = FetchArgs::parse(topic, group, &get)?;
        let mut v = fetch(state, grants, args).await?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("type".into(), json!("jobs"));
        }
        return Ok(v);
    }
    let token = get("token")
        .ok_or_else(|| ApiError::bad_input(format!("a {kind} frame needs the job's \"token\"")))?;
    let op = Op::parse(kind, &get)?;
    let (mut v, _) = outcome(state, grants, &token, None, op).await?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("type".into(), json!("outcome"));
        obj.insert("token".into(), json!(token));
    }
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t = Token {
            v: 1,
            t: "jobs".into(),
            g: "g".into(),
            m: "m".into(),
            h: "m#1".into(),
            e: 7,
            o: 3,
            a: 2,
            n: nonce(),
        };
        let text = t.encode();
        assert!(!text.contains(['/', '+', '=']));
        let back = Token::decode(&text).unwrap();
        assert_eq!(
            (back.t.as_str(), back.e, back.o, back.a, back.n),
            ("jobs", 7, 3, 2, t.n)
        );
        assert!(Token::decode("not-a-token").is_err());
        assert_ne!(nonce(), nonce());
    }
}
