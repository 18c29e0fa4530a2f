#![allow(clippy::unwrap_used)]
//! Work groups over HTTP and WebSocket, replicated maps as resources (ETag, compare-and-set,
//! SSE watch), their grants, and RS256 tokens; over real sockets.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use herald_gateway::{Auth, Key};
use herald_testkit::{on_both_backends, Backend};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

on_both_backends!(
    an_http_worker_acks_each_job_exactly_once_and_a_second_ack_is_stale,
    an_ack_after_the_lease_went_to_another_member_is_stale_409,
    nak_redelivers_the_job_as_a_new_attempt,
    an_idle_http_member_is_closed_and_its_leases_released,
    websocket_work_frames_fetch_ack_and_report_stale,
    two_concurrent_if_match_writes_with_one_revision_exactly_one_wins,
    etag_round_trip_with_if_match_and_if_none_match,
    map_watch_over_sse_sends_the_snapshot_then_changes,
);

/// Fetches from `path` until `n` jobs came (each call long-polls), at most 20 calls.
async fn fetch_n(addr: std::net::SocketAddr, path: &str, n: usize) -> Vec<Value> {
    let mut jobs = Vec::new();
    for _ in 0..20 {
        let r = request(addr, "POST", path, &[], "").await;
        assert_eq!(r.status, 200, "fetch: {}", r.text());
        jobs.extend(r.json()["jobs"].as_array().unwrap().iter().cloned());
        if jobs.len() >= n {
            break;
        }
    }
    assert_eq!(jobs.len(), n, "jobs: {jobs:?}");
    jobs
}

async fn outcome(
    addr: std::net::SocketAddr,
    topic: &str,
    group: &str,
    job: &Value,
    op: &str,
) -> Reply {
    let token = job["token"].as_str().unwrap();
    request(
        addr,
        "POST",
        &format!("/v1/topics/{topic}/groups/{group}/jobs/{token}/{op}"),
        &[],
        "",
    )
    .await
}

async fn an_http_worker_acks_each_job_exactly_once_and_a_second_ack_is_stale(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    for i in 1..=3 {
        publish(gw.addr, "jobs", &format!("job {i}"), None).await;
    }
    let jobs = fetch_n(
        gw.addr,
        "/v1/topics/jobs/groups/g/fetch?member=w1&max=3&wait=5",
        3,
    )
    .await;
    let offsets: Vec<u64> = jobs.iter().map(|j| j["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![1, 2, 3]);
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j["data"], format!("job {}", i + 1));
        assert_eq!(j["attempt"], 1);
        assert_eq!(j["topic"], "jobs");
        assert!(j["epoch"].is_u64());
    }
    for j in &jobs {
        let r = outcome(gw.addr, "jobs", "g", j, "ack").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["outcome"], "acked");
    }
    let again = outcome(gw.addr, "jobs", "g", &jobs[0], "ack").await;
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(again.json()["outcome"], "stale");
    // Nothing more to do, and the group's state says so.
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/jobs/groups/g/fetch?member=w1&wait=0.3",
        &[],
        "",
    )
    .await;
    assert_eq!(r.json()["jobs"], json!([]));
    let groups = get(gw.addr, "/v1/topics/jobs/groups").await;
    assert_eq!(groups.status, 200, "{}", groups.text());
    let g = &groups.json()["groups"][0];
    assert_eq!(g["group"], "g");
    assert_eq!(g["acked"], 3);
    assert_eq!(g["next_offset"], 4);
    assert_eq!(g["in_flight"], json!([]));
    assert_eq!(g["lag"], 0);
    // The status data shows the group too.
    let status = get(gw.addr, "/v1/status").await.json();
    let row = status["work_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["topic"] == "jobs" && w["group"] == "g")
        .cloned()
        .unwrap_or_else(|| panic!("no work group row in {status}"));
    assert_eq!(row["acked"], 3);
    // A token that is not one, and one for another path.
    let bad = request(
        gw.addr,
        "POST",
        "/v1/topics/jobs/groups/g/jobs/garbage/ack",
        &[],
        "",
    )
    .await;
    assert_eq!((bad.status, bad.error_kind().as_str()), (400, "bad_input"));
    let other = outcome(gw.addr, "jobs", "other", &jobs[1], "ack").await;
    assert_eq!(other.status, 400, "{}", other.text());
}

async fn an_ack_after_the_lease_went_to_another_member_is_stale_409(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    publish(gw.addr, "leases", "slow job", None).await;
    let first = fetch_n(
        gw.addr,
        "/v1/topics/leases/groups/g/fetch?member=slow&lease=0.5&wait=5",
        1,
    )
    .await;
    assert_eq!(first[0]["attempt"], 1);
    // Its lease runs out; another member gets the job as attempt 2.
    let second = fetch_n(
        gw.addr,
        "/v1/topics/leases/groups/g/fetch?member=fast&lease=10&wait=10",
        1,
    )
    .await;
    assert_eq!(second[0]["offset"], first[0]["offset"]);
    assert_eq!(second[0]["attempt"], 2);
    let late = outcome(gw.addr, "leases", "g", &first[0], "ack").await;
    assert_eq!(late.status, 409, "{}", late.text());
    assert_eq!(late.json()["outcome"], "stale");
    let ok = outcome(gw.addr, "leases", "g", &second[0], "ack").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let g = &get(gw.addr, "/v1/topics/leases/groups").await.json()["groups"][0];
    assert_eq!(g["acked"], 1);
}

async fn nak_redelivers_the_job_as_a_new_attempt(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    publish(gw.addr, "retry", "flaky", None).await;
    let path = "/v1/topics/retry/groups/g/fetch?member=w&wait=5";
    let first = fetch_n(gw.addr, path, 1).await;
    let r = outcome(gw.addr, "retry", "g", &first[0], "nak?delay=0").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outcome"], "retry");
    let again = fetch_n(gw.addr, path, 1).await;
    assert_eq!(again[0]["offset"], first[0]["offset"]);
    assert_eq!(again[0]["attempt"], 2);
    assert_eq!(again[0]["data"], "flaky");
    assert_eq!(again[0]["last_error"], "nak");
    let r = outcome(gw.addr, "retry", "g", &again[0], "in-progress").await;
    assert_eq!(r.json()["outcome"], "extended", "{}", r.text());
    let r = outcome(gw.addr, "retry", "g", &again[0], "term?reason=poison").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outcome"], "dead");
    // The dead letter is on the group's dead-letter topic.
    let dead = get(gw.addr, "/v1/topics/__dead%2Fretry%2Fg/messages").await;
    assert_eq!(dead.status, 200, "{}", dead.text());
    let events = dead.json()["events"].clone();
    assert_eq!(events[0]["data"], "flaky", "{events}");
    assert_eq!(events[0]["headers"]["herald-dead-error"], "poison");
}

async fn an_idle_http_member_is_closed_and_its_leases_released(backend: Backend) {
    let gw = start(&backend, |c| {
        c.work_idle(std::time::Duration::from_millis(300))
    })
    .await;
    publish(gw.addr, "idle", "abandoned", None).await;
    let first = fetch_n(
        gw.addr,
        "/v1/topics/idle/groups/g/fetch?member=gone&lease=600&wait=5",
        1,
    )
    .await;
    // The lease is 10 minutes: only the release of the idle member's leases lets another
    // member have the job within this fetch's 10 s.
    let second = fetch_n(
        gw.addr,
        "/v1/topics/idle/groups/g/fetch?member=next&lease=600&wait=10",
        1,
    )
    .await;
    assert_eq!(second[0]["offset"], first[0]["offset"]);
    assert_eq!(second[0]["attempt"], 2);
    let late = outcome(gw.addr, "idle", "g", &first[0], "ack").await;
    assert_eq!(late.status, 409, "{}", late.text());
    let ok = outcome(gw.addr, "idle", "g", &second[0], "ack").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

async fn websocket_work_frames_fetch_ack_and_report_stale(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    publish(gw.addr, "wsjobs", "over ws", None).await;
    let mut socket = ws(gw.addr, "").await;
    let mut job = Value::Null;
    for _ in 0..10 {
        ws_send(
            &mut socket,
            r#"{"type":"fetch","id":1,"topic":"wsjobs","group":"g","member":"ws","max":1,"wait":5}"#,
        )
        .await;
        let f = ws_next(&mut socket).await;
        assert_eq!(f["type"], "jobs", "{f}");
        assert_eq!(f["id"], 1);
        if let Some(j) = f["jobs"].as_array().unwrap().first() {
            job = j.clone();
            break;
        }
    }
    assert_eq!(job["data"], "over ws", "{job}");
    let ack = json!({"type": "ack", "id": 2, "token": job["token"]}).to_string();
    ws_send(&mut socket, &ack).await;
    let f = ws_next(&mut socket).await;
    assert_eq!(
        (f["type"].as_str(), f["outcome"].as_str()),
        (Some("outcome"), Some("acked")),
        "{f}"
    );
    ws_send(&mut socket, &ack).await;
    let f = ws_next(&mut socket).await;
    assert_eq!(f["outcome"], "stale", "{f}");
    ws_send(&mut socket, r#"{"type":"nak","token":"garbage"}"#).await;
    let f = ws_next(&mut socket).await;
    assert_eq!(
        (f["type"].as_str(), f["error"]["kind"].as_str()),
        (Some("error"), Some("bad_input")),
        "{f}"
    );
}

async fn put(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    request(addr, "PUT", path, headers, body.to_string()).await
}

fn etag_of(r: &Reply) -> String {
    r.headers
        .get("etag")
        .unwrap_or_else(|| panic!("no ETag: {} {}", r.status, r.text()))
        .to_str()
        .unwrap()
        .to_string()
}

async fn two_concurrent_if_match_writes_with_one_revision_exactly_one_wins(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    let path = "/v1/maps/config/keys/mode";
    let first = put(gw.addr, path, &[], "v0").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let tag = etag_of(&first);
    assert_eq!(
        tag,
        format!("\"{}\"", first.json()["revision"].as_str().unwrap())
    );
    for round in 0..3 {
        let current = etag_of(&get(gw.addr, path).await);
        let cond = [("if-match", current.as_str())];
        let (a, b) = tokio::join!(
            put(gw.addr, path, &cond, "from a"),
            put(gw.addr, path, &cond, "from b"),
        );
        let mut statuses = [a.status, b.status];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 412],
            "round {round}: {} / {}",
            a.text(),
            b.text()
        );
        let (won, lost) = if a.status == 200 { (&a, &b) } else { (&b, &a) };
        assert_eq!(lost.error_kind(), "conflict");
        assert_eq!(lost.json()["current"], won.json()["revision"]);
        assert_eq!(etag_of(lost), etag_of(won));
        let now = get(gw.addr, path).await;
        let expected = if a.status == 200 { "from a" } else { "from b" };
        assert_eq!(now.text(), expected);
        assert_eq!(etag_of(&now), etag_of(won));
    }
    // The same race on deletes.
    let current = etag_of(&get(gw.addr, path).await);
    let cond = [("if-match", current.as_str())];
    let (a, b) = tokio::join!(
        request(gw.addr, "DELETE", path, &cond, ""),
        request(gw.addr, "DELETE", path, &cond, ""),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412], "{} / {}", a.text(), b.text());
    assert_eq!(get(gw.addr, path).await.status, 404);
}

async fn etag_round_trip_with_if_match_and_if_none_match(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    let path = "/v1/maps/users/keys/alice";
    let created = put(gw.addr, path, &[("if-none-match", "*")], "admin").await;
    assert_eq!(created.status, 200, "{}", created.text());
    let tag1 = etag_of(&created);
    let again = put(gw.addr, path, &[("if-none-match", "*")], "other").await;
    assert_eq!(again.status, 412, "{}", again.text());
    assert_eq!(etag_of(&again), tag1);
    let read = get(gw.addr, path).await;
    assert_eq!((read.status, read.text().as_str()), (200, "admin"));
    assert_eq!(etag_of(&read), tag1);
    let not_modified = request(gw.addr, "GET", path, &[("if-none-match", &tag1)], "").await;
    assert_eq!(not_modified.status, 304);
    let updated = put(gw.addr, path, &[("if-match", &tag1)], "owner").await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    let tag2 = etag_of(&updated);
    assert_ne!(tag1, tag2);
    let stale = put(gw.addr, path, &[("if-match", &tag1)], "lost").await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.json()["current"], updated.json()["revision"]);
    let snapshot = get(gw.addr, "/v1/maps/users").await;
    assert_eq!(snapshot.status, 200);
    let s = snapshot.json();
    assert_eq!(s["entries"]["alice"]["data"], "owner", "{s}");
    assert_eq!(s["revision"], updated.json()["revision"]);
    assert_eq!(etag_of(&snapshot), tag2);
    let gone = request(gw.addr, "DELETE", path, &[("if-match", &tag1)], "").await;
    assert_eq!(gone.status, 412, "{}", gone.text());
    let gone = request(gw.addr, "DELETE", path, &[("if-match", &tag2)], "").await;
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(get(gw.addr, path).await.status, 404);
    let absent = request(gw.addr, "DELETE", path, &[], "").await;
    assert_eq!(
        (absent.status, absent.error_kind().as_str()),
        (404, "not_found")
    );
    let bad = put(gw.addr, path, &[("if-match", "\"yesterday\"")], "x").await;
    assert_eq!((bad.status, bad.error_kind().as_str()), (400, "bad_input"));
    assert_eq!(get(gw.addr, path).await.status, 404, "nothing stored");
}

async fn map_watch_over_sse_sends_the_snapshot_then_changes(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    let a = put(gw.addr, "/v1/maps/live/keys/a", &[], "1").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let mut s = sse(gw.addr, "/v1/maps/live/events", &[]).await;
    assert_eq!(s.status, 200);
    let snap = s.next().await.unwrap();
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.id.as_deref(), a.json()["revision"].as_str());
    let v = snap.json();
    assert_eq!(v["entries"]["a"]["data"], "1", "{v}");
    assert_eq!(v["reason"], "initial");
    let b = put(gw.addr, "/v1/maps/live/keys/b", &[], "2").await;
    let changed = s.next().await.unwrap();
    assert_eq!(changed.event, "changed");
    assert_eq!(changed.id.as_deref(), b.json()["revision"].as_str());
    assert_eq!(changed.json()["key"], "b");
    assert_eq!(changed.json()["data"], "2");
    let d = request(gw.addr, "DELETE", "/v1/maps/live/keys/a", &[], "").await;
    assert_eq!(d.status, 200, "{}", d.text());
    let deleted = s.next().await.unwrap();
    assert_eq!(deleted.event, "deleted");
    assert_eq!(deleted.json()["key"], "a");
    assert_eq!(deleted.id.as_deref(), d.json()["revision"].as_str());
}

// ---- auth ----

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(grants: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"aud": "herald", "exp": now() + 3600, "herald": grants}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_and_map_actions_are_refused_without_their_grants() {
    let backend = Backend::redis();
    let auth = Auth::new(Key::Hs256(SECRET.to_vec()), "herald").unwrap();
    let gw = start(&backend, |c| c.auth(auth)).await;
    let plain = format!(
        "Bearer {}",
        token(json!({"publish": ["*"], "subscribe": ["*"]}))
    );
    let worker = format!(
        "Bearer {}",
        token(json!({"publish": ["*"], "work": ["w.*"]}))
    );
    let reader = format!("Bearer {}", token(json!({"map_read": ["cfg"]})));
    let writer = format!(
        "Bearer {}",
        token(json!({"map_read": ["cfg"], "map_write": ["cfg"]}))
    );
    let with = |h: &str| vec![("authorization", h.to_string())];
    let req = |method: &'static str,
               path: String,
               auth: Vec<(&'static str, String)>,
               body: &'static str| {
        let addr = gw.addr;
        async move {
            let h: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request(addr, method, &path, &h, body).await
        }
    };
    let r = req(
        "POST",
        "/v1/topics/w.a/messages".into(),
        with(&worker),
        "job",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Work: refused without `work`, and on a topic outside its patterns.
    let fetch = "/v1/topics/w.a/groups/g/fetch?wait=5".to_string();
    let r = req("POST", fetch.clone(), with(&plain), "").await;
    assert_eq!((r.status, r.error_kind().as_str()), (403, "forbidden"));
    let r = req("GET", "/v1/topics/w.a/groups".into(), with(&plain), "").await;
    assert_eq!(r.status, 403);
    let r = req(
        "POST",
        "/v1/topics/x/groups/g/fetch".into(),
        with(&worker),
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = req("POST", fetch.clone(), vec![], "").await;
    assert_eq!(r.status, 401);
    let mut job = Value::Null;
    for _ in 0..10 {
        let r = req("POST", fetch.clone(), with(&worker), "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        if let Some(j) = r.json()["jobs"].as_array().unwrap().first() {
            job = j.clone();
            break;
        }
    }
    let ack = format!(
        "/v1/topics/w.a/groups/g/jobs/{}/ack",
        job["token"].as_str().expect("a job")
    );
    let r = req("POST", ack.clone(), with(&plain), "").await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = req("POST", ack, with(&worker), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = req("GET", "/v1/topics/w.a/groups".into(), with(&worker), "").await;
    assert_eq!(r.status, 200);
    // Over WebSocket as well.
    let plain_token = plain.trim_start_matches("Bearer ").to_string();
    let mut socket = ws(gw.addr, &format!("?access_token={plain_token}")).await;
    ws_send(&mut socket, r#"{"type":"fetch","topic":"w.a","group":"g"}"#).await;
    let f = ws_next(&mut socket).await;
    assert_eq!(f["error"]["kind"], "forbidden", "{f}");

    // Maps: read needs map_read, writes need map_write.
    let key = "/v1/maps/cfg/keys/k".to_string();
    let r = req("PUT", key.clone(), with(&plain), "v").await;
    assert_eq!(r.status, 403);
    let r = req("PUT", key.clone(), with(&reader), "v").await;
    assert_eq!(r.status, 403);
    let r = req("PUT", key.clone(), with(&writer), "v").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = req("DELETE", key.clone(), with(&reader), "").await;
    assert_eq!(r.status, 403);
    for path in [
        key.clone(),
        "/v1/maps/cfg".into(),
        "/v1/maps/cfg/events".into(),
    ] {
        let r = req("GET", path.clone(), with(&plain), "").await;
        assert_eq!(r.status, 403, "{path}");
    }
    let r = req("GET", key.clone(), with(&reader), "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "v"));
    let r = req("GET", "/v1/maps/other".into(), with(&reader), "").await;
    assert_eq!(r.status, 403);
    let mut s = sse(
        gw.addr,
        &format!(
            "/v1/maps/cfg/events?access_token={}",
            reader.trim_start_matches("Bearer ")
        ),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.next().await.unwrap().event, "snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_watch_ends_when_its_token_expires() {
    let backend = Backend::embedded();
    let auth = Auth::new(Key::Hs256(SECRET.to_vec()), "herald").unwrap();
    let gw = start(&backend, |c| c.auth(auth)).await;
    let short = encode(
        &Header::new(Algorithm::HS256),
        &json!({"aud": "herald", "exp": now() + 2, "herald": {"map_read": ["*"]}}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let mut s = sse(
        gw.addr,
        &format!("/v1/maps/m/events?access_token={short}"),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.next().await.unwrap().event, "snapshot");
    let ev = s.next().await.expect("an error event before the end");
    assert_eq!(ev.event, "error");
    assert_eq!(ev.json()["error"]["kind"], "unauthorized");
    assert!(s.next().await.is_none(), "the stream ends");
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_verify_with_the_public_key_and_another_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    for key in ["good", "other"] {
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &p(key),
        ]);
    }
    openssl(&["pkey", "-in", &p("good"), "-pubout", "-out", &p("good.pub")]);
    let auth = Auth::new(
        Key::from_spec(&format!("jwt-rs256:{}", p("good.pub"))).unwrap(),
        "herald",
    )
    .unwrap();
    let backend = Backend::embedded();
    let gw = start(&backend, |c| c.auth(auth)).await;
    let sign = |key: &str| {
        encode(
            &Header::new(Algorithm::RS256),
            &json!({"aud": "herald", "exp": now() + 600, "herald": {"publish": ["t"], "map_write": ["m"]}}),
            &EncodingKey::from_rsa_pem(&std::fs::read(p(key)).unwrap()).unwrap(),
        )
        .unwrap()
    };
    let good = format!("Bearer {}", sign("good"));
    let other = format!("Bearer {}", sign("other"));
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/t/messages",
        &[("authorization", &good)],
        "m",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        gw.addr,
        "PUT",
        "/v1/maps/m/keys/k",
        &[("authorization", &good)],
        "v",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/t/messages",
        &[("authorization", &other)],
        "m",
    )
    .await;
    assert_eq!((r.status, r.error_kind().as_str()), (401, "unauthorized"));
    // An HS256 token is refused by an RS256 gateway.
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/t/messages",
        &[(
            "authorization",
            &format!("Bearer {}", token(json!({"publish": ["t"]}))),
        )],
        "m",
    )
    .await;
    assert_eq!(r.status, 401);
}
