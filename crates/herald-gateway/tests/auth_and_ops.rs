#![allow(clippy::unwrap_used)]
//! Auth (HS256 and ES256 bearer JWTs, grants on topic patterns, expiry), bad input, and the
//! operations endpoints, over real sockets against a real redis-server.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herald_gateway::{Auth, Config, GatewayError, Key};
use herald_testkit::Backend;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs_token(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn claims(grants: serde_json::Value, exp: u64) -> serde_json::Value {
    json!({"aud": "herald", "exp": exp, "sub": "test", "herald": grants})
}

fn hs_auth() -> Auth {
    Auth::new(Key::Hs256(SECRET.to_vec()), "herald").unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refuses_each_action_without_its_grant_and_allows_it_with_it() {
    let backend = Backend::redis();
    let gw = start(&backend, |c| c.auth(hs_auth())).await;
    let exp = now() + 3600;
    let a_only = hs_token(claims(
        json!({"publish": ["a.*"], "subscribe": ["a.*"]}),
        exp,
    ));
    let read_only = hs_token(claims(json!({"subscribe": ["*"]}), exp));
    let a_auth = bearer(&a_only);

    // No token, a bad token, an expired one, a wrong audience, alg none: 401.
    let r = request(gw.addr, "POST", "/v1/topics/a.x/messages", &[], "m").await;
    assert_eq!((r.status, r.error_kind().as_str()), (401, "unauthorized"));
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let expired = hs_token(claims(json!({"publish": ["*"]}), now() - 10));
    let wrong_aud = hs_token(json!({"aud": "other", "exp": exp, "herald": {"publish": ["*"]}}));
    let no_exp = hs_token(json!({"aud": "herald", "herald": {"publish": ["*"]}}));
    // alg "none": header {"alg":"none","typ":"JWT"}, claims granting everything, no signature.
    let none = {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b.encode(claims(json!({"admin": true}), exp).to_string())
        )
    };
    for bad in ["garbage", &expired, &wrong_aud, &no_exp, &none] {
        let r = request(
            gw.addr,
            "POST",
            "/v1/topics/a.x/messages",
            &[("authorization", &bearer(bad))],
            "m",
        )
        .await;
        assert_eq!(r.status, 401, "{bad}: {}", r.text());
        assert_eq!(r.error_kind(), "unauthorized");
    }

    // Publish granted on a.*, refused on b and for a read-only token.
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/a.x/messages",
        &[("authorization", &a_auth)],
        "m",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (topic, token) in [("b", &a_only), ("a.x", &read_only)] {
        let r = request(
            gw.addr,
            "POST",
            &format!("/v1/topics/{topic}/messages"),
            &[("authorization", &bearer(token))],
            "m",
        )
        .await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.error_kind(), "forbidden");
    }
    assert_eq!(gw.herald.inspect("b").await.unwrap().last_offset, 0);

    // A token for a.* cannot read b: not its history, not its events, not over WebSocket.
    let r = request(
        gw.addr,
        "GET",
        "/v1/topics/b/messages",
        &[("authorization", &a_auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    let s = sse(
        gw.addr,
        "/v1/events?topic=a.x&topic=b",
        &[("authorization", &a_auth)],
    )
    .await;
    assert_eq!(s.status, 403);
    let s = sse(
        gw.addr,
        &format!("/v1/topics/b/events?access_token={a_only}"),
        &[],
    )
    .await;
    assert_eq!(s.status, 403);
    let mut socket = ws(gw.addr, &format!("?access_token={a_only}")).await;
    ws_send(&mut socket, r#"{"type":"subscribe","topic":"b"}"#).await;
    let f = ws_next(&mut socket).await;
    assert_eq!(
        (f["type"].as_str(), f["error"]["kind"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    ws_send(&mut socket, r#"{"type":"publish","topic":"b","data":"x"}"#).await;
    assert_eq!(ws_next(&mut socket).await["error"]["kind"], "forbidden");
    // ... and can read a.*, here with the EventSource fallback `access_token`.
    let mut s = sse(
        gw.addr,
        &format!("/v1/topics/a.x/events?from=earliest&access_token={a_only}"),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.messages(1).await[0].1, "m");
    ws_send(
        &mut socket,
        r#"{"type":"subscribe","topic":"a.x","from":"earliest"}"#,
    )
    .await;
    assert_eq!(ws_next(&mut socket).await["type"], "subscribed");
    assert_eq!(ws_next(&mut socket).await["data"], "m");
    // A WebSocket upgrade without a token is refused.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", gw.addr))
            .await
            .is_err()
    );

    // Admin: /v1/info needs it.
    let r = request(
        gw.addr,
        "GET",
        "/v1/info",
        &[("authorization", &a_auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    let admin = hs_token(claims(json!({"admin": true}), exp));
    let r = request(
        gw.addr,
        "GET",
        "/v1/info",
        &[("authorization", &bearer(&admin))],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["auth"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_its_streams() {
    let backend = Backend::redis();
    let gw = start(&backend, |c| c.auth(hs_auth())).await;
    let short = hs_token(claims(json!({"subscribe": ["*"]}), now() + 2));
    let mut s = sse(
        gw.addr,
        &format!("/v1/topics/x/events?access_token={short}"),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    let mut socket = ws(gw.addr, &format!("?access_token={short}")).await;
    let ev = s.next().await.expect("an error event before the end");
    assert_eq!(ev.event, "error");
    assert_eq!(ev.json()["error"]["kind"], "unauthorized");
    assert!(s.next().await.is_none(), "the stream ends");
    let f = ws_next(&mut socket).await;
    assert_eq!(f["error"]["kind"], "unauthorized", "{f}");
    assert_eq!(
        ws_next(&mut socket).await,
        serde_json::Value::Null,
        "then a close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_verify_with_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let pkcs8 = dir.path().join("pkcs8.pem");
    let public = dir.path().join("public.pem");
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        key.to_str().unwrap(),
        "-out",
        pkcs8.to_str().unwrap(),
    ]);
    run(&[
        "ec",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let spec = format!("jwt-es256:{}", public.display());
    let auth = Auth::new(Key::from_spec(&spec).unwrap(), "herald").unwrap();
    let backend = Backend::redis();
    let gw = start(&backend, |c| c.auth(auth)).await;
    let signing = EncodingKey::from_ec_pem(&std::fs::read(&pkcs8).unwrap()).unwrap();
    let token = encode(
        &Header::new(Algorithm::ES256),
        &claims(json!({"publish": ["t"]}), now() + 600),
        &signing,
    )
    .unwrap();
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/t/messages",
        &[("authorization", &bearer(&token))],
        "m",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // An HS256 token (signed with anything) is refused by an ES256 gateway.
    let hs = hs_token(claims(json!({"publish": ["t"]}), now() + 600));
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/t/messages",
        &[("authorization", &bearer(&hs))],
        "m",
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_the_gateway_refuses_a_non_loopback_address() {
    let backend = Backend::embedded();
    let herald = backend.node("n").await;
    let err =
        herald_gateway::serve(Config::new(herald).listen(SocketAddr::from(([0, 0, 0, 0], 0))))
            .await
            .unwrap_err();
    assert!(matches!(err, GatewayError::InsecureListen { .. }));
    assert!(err.to_string().contains("without authentication"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_json_errors_and_stores_nothing() {
    let backend = Backend::redis();
    let gw = start(&backend, |c| c.max_body(1024)).await;
    let mut watcher = sse(gw.addr, "/v1/topics/ok/events", &[]).await;

    // A bad topic name.
    let r = request(gw.addr, "POST", "/v1/topics/bad%20name/messages", &[], "m").await;
    assert_eq!((r.status, r.error_kind().as_str()), (400, "bad_input"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid topic name"));
    let r = get(gw.addr, "/v1/topics/bad%20name/events").await;
    assert_eq!(r.status, 400);
    // An oversize body.
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/ok/messages",
        &[],
        vec![b'x'; 4096],
    )
    .await;
    assert_eq!((r.status, r.error_kind().as_str()), (413, "too_large"));
    // A batch with one malformed line stores none of its lines.
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/ok/messages",
        &[("content-type", "application/x-ndjson")],
        "{\"data\":\"fine\"}\n{\"data\": oops}\n",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("line 2"), "{}", r.text());
    // A bad idempotency key, a bad `from`, a bad limit.
    let long = "k".repeat(600);
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/ok/messages",
        &[("idempotency-key", &long)],
        "m",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        get(gw.addr, "/v1/topics/ok/events?from=yesterday")
            .await
            .status,
        400
    );
    assert_eq!(
        get(gw.addr, "/v1/topics/ok/messages?limit=0").await.status,
        400
    );
    assert_eq!(get(gw.addr, "/v1/events").await.status, 400);
    let r = get(gw.addr, "/v1/nothing-here").await;
    assert_eq!((r.status, r.error_kind().as_str()), (404, "not_found"));
    assert_eq!(
        gw.herald.inspect("ok").await.unwrap().last_offset,
        0,
        "nothing stored"
    );

    // Malformed WebSocket frames get error frames; the connection stays up.
    let mut socket = ws(gw.addr, "").await;
    for frame in [
        "not json",
        r#"{"no":"type"}"#,
        r#"{"type":"dance"}"#,
        r#"{"type":"subscribe"}"#,
        r#"{"type":"subscribe","topic":"bad name"}"#,
        r#"{"type":"publish","topic":"ok"}"#,
        r#"{"type":"subscribe","topic":"ok","from":{"x":1}}"#,
    ] {
        ws_send(&mut socket, frame).await;
        let f = ws_next(&mut socket).await;
        assert_eq!(f["type"], "error", "{frame}: {f}");
        assert_eq!(f["error"]["kind"], "bad_input", "{frame}: {f}");
    }
    ws_send(&mut socket, r#"{"type":"subscribe","topic":"ok"}"#).await;
    assert_eq!(ws_next(&mut socket).await["type"], "subscribed");
    assert_eq!(
        gw.herald.inspect("ok").await.unwrap().last_offset,
        0,
        "nothing stored"
    );
    // Other clients were unaffected: the watcher gets the next good message and nothing else.
    publish(gw.addr, "ok", "good", None).await;
    assert_eq!(watcher.messages(1).await[0].1, "good");
    assert_eq!(ws_next(&mut socket).await["data"], "good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_report_health_readiness_metrics_and_info() {
    let mut backend = Backend::redis();
    let gw = start(&backend, |c| c).await;
    assert_eq!(get(gw.addr, "/healthz").await.status, 200);
    assert_eq!(get(gw.addr, "/readyz").await.status, 200);
    let mut s = sse(gw.addr, "/v1/topics/m/events", &[]).await;
    publish(gw.addr, "m", "1", None).await;
    publish(gw.addr, "m", "2", Some("same")).await;
    publish(gw.addr, "m", "2", Some("same")).await;
    s.messages(2).await;
    let metrics = get(gw.addr, "/metrics").await.text();
    for line in [
        "herald_gateway_connections{kind=\"sse\"} 1",
        "herald_gateway_published_total 2",
        "herald_gateway_duplicates_total 1",
        "herald_gateway_delivered_total 2",
        "herald_gateway_feeds 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in\n{metrics}"
        );
    }
    let info = get(gw.addr, "/v1/info").await.json();
    assert_eq!(info["topics"], json!(["m"]));
    assert_eq!(info["connections"]["sse"], 1);
    drop(s);

    // Redis down: not ready (503); back: ready again.
    if let Backend::Redis(server) = &mut backend {
        server.kill9();
    }
    let r = get(gw.addr, "/readyz").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(get(gw.addr, "/healthz").await.status, 200);
    if let Backend::Redis(server) = &mut backend {
        server.restart();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while get(gw.addr, "/readyz").await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready again after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ready means Herald's scripts are loaded: after SCRIPT FLUSH, /readyz loads them again.
    if let Backend::Redis(server) = &backend {
        let sha: String = server.cmd(&["SCRIPT", "LOAD", herald::broker::PUBLISH_SCRIPT]);
        let _: () = server.cmd(&["SCRIPT", "FLUSH"]);
        let exists: Vec<i64> = server.cmd(&["SCRIPT", "EXISTS", &sha]);
        assert_eq!(exists, vec![0]);
        let r = get(gw.addr, "/readyz").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let exists: Vec<i64> = server.cmd(&["SCRIPT", "EXISTS", &sha]);
        assert_eq!(exists, vec![1], "the publish script is loaded again");
    }
}
