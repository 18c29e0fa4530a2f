#![allow(clippy::unwrap_used)]
//! Publish, history, SSE and WebSocket delivery and resume, over real sockets, on the
//! embedded broker and on a real redis-server.

mod common;

use std::time::Duration;

use common::*;
use herald::SettingsChange;
use herald_testkit::{on_both_backends, Backend};

on_both_backends!(
    http_publish_reaches_sse_and_websocket_in_order_with_idempotency_dedup,
    sse_resume_with_last_event_id_gets_exactly_the_missed_ones,
    resume_from_a_trimmed_offset_gets_an_explicit_gap,
    bogus_id_gets_reset_then_live_and_foreign_epoch_id_gets_reset_then_current_epoch,
    multi_topic_stream_resumes_each_topic_at_its_own_position,
    fresh_connection_with_only_last_event_id_query_resumes_without_duplicates,
    history_returns_tail_fields_and_batch_publish_returns_receipts,
    a_client_behind_the_shared_channel_is_caught_up_from_history_in_order,
);

async fn http_publish_reaches_sse_and_websocket_in_order_with_idempotency_dedup(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    let mut stream = sse(gw.addr, "/v1/topics/t/events", &[]).await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.headers["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut socket = ws(gw.addr, "").await;
    ws_send(
        &mut socket,
        r#"{"type":"subscribe","topic":"t","from":"latest","id":1}"#,
    )
    .await;
    let subscribed = ws_next(&mut socket).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["id"], 1);

    let r1 = publish(gw.addr, "t", "one", Some("k1")).await;
    let r2 = publish(gw.addr, "t", "two", Some("k2")).await;
    let again = publish(gw.addr, "t", "one again", Some("k1")).await;
    assert_eq!(r1["offset"], 1);
    assert_eq!(r1["duplicate"], false);
    assert_eq!(r2["offset"], 2);
    assert_eq!(
        again["offset"], 1,
        "a duplicate answers the original's offset"
    );
    assert_eq!(again["duplicate"], true);
    let epoch = r1["epoch"].as_u64().unwrap();
    let r3 = publish(gw.addr, "t", "three", None).await;
    assert_eq!(r3["offset"], 3);

    let got = stream.messages(3).await;
    assert_eq!(
        got,
        vec![
            (1, "one".into(), format!("{epoch}:1")),
            (2, "two".into(), format!("{epoch}:2")),
            (3, "three".into(), format!("{epoch}:3")),
        ]
    );
    assert!(stream.saw_retry, "the stream starts with a retry: hint");
    for (offset, data) in [(1, "one"), (2, "two"), (3, "three")] {
        let f = ws_next(&mut socket).await;
        assert_eq!(f["type"], "message", "{f}");
        assert_eq!(f["offset"], offset);
        assert_eq!(f["data"], data);
        assert_eq!(f["epoch"], epoch);
        assert_eq!(f["topic"], "t");
    }
    // Nothing else: the duplicate was not delivered; keep-alive comments arrive meanwhile.
    stream.assert_quiet(Duration::from_millis(1200)).await;
    assert!(stream.comments > 0, "keep-alive comments on an idle stream");

    // Publishing over the WebSocket, with headers.
    ws_send(
        &mut socket,
        r#"{"type":"publish","topic":"t","data":"four","key":"k4","headers":{"region":"eu"},"id":"p"}"#,
    )
    .await;
    let receipt = ws_next(&mut socket).await;
    assert_eq!(receipt["type"], "receipt", "{receipt}");
    assert_eq!(receipt["offset"], 4);
    assert_eq!(receipt["id"], "p");
    let f = ws_next(&mut socket).await;
    assert_eq!(f["offset"], 4);
    assert_eq!(f["headers"]["region"], "eu");
    let ev = stream.next().await.unwrap();
    assert_eq!(ev.json()["key"], "k4");

    // HTTP headers by prefix.
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/t/messages",
        &[("herald-header-source", "curl")],
        "five",
    )
    .await;
    assert_eq!(r.status, 200);
    let ev = stream.next().await.unwrap();
    assert_eq!(ev.json()["headers"]["source"], "curl");
    gw.gateway.shutdown().await.unwrap();
}

async fn sse_resume_with_last_event_id_gets_exactly_the_missed_ones(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    publish(gw.addr, "r", "m1", None).await;
    publish(gw.addr, "r", "m2", None).await;
    let mut first = sse(gw.addr, "/v1/topics/r/events?from=earliest", &[]).await;
    let got = first.messages(2).await;
    let last_id = got[1].2.clone();
    drop(first);
    for i in 3..=5 {
        publish(gw.addr, "r", &format!("m{i}"), None).await;
    }
    let mut again = sse(
        gw.addr,
        "/v1/topics/r/events?from=earliest",
        &[("last-event-id", &last_id)],
    )
    .await;
    let got: Vec<(u64, String)> = again
        .messages(3)
        .await
        .into_iter()
        .map(|(o, d, _)| (o, d))
        .collect();
    assert_eq!(
        got,
        vec![(3, "m3".into()), (4, "m4".into()), (5, "m5".into())]
    );
    // And then live, without repeating anything.
    publish(gw.addr, "r", "m6", None).await;
    assert_eq!(again.messages(1).await[0].0, 6);
    again.assert_quiet(Duration::from_millis(300)).await;
}

async fn resume_from_a_trimmed_offset_gets_an_explicit_gap(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    let mut change = SettingsChange::default();
    change.max_len = Some(3);
    gw.herald.configure("g", change).await.unwrap();
    let r = publish(gw.addr, "g", "m1", None).await;
    let epoch = r["epoch"].as_u64().unwrap();
    for i in 2..=10 {
        publish(gw.addr, "g", &format!("m{i}"), None).await;
    }
    let info = gw.herald.inspect("g").await.unwrap();
    let first = info.first_offset;
    assert!(first > 3, "retention trimmed the start (first {first})");
    let mut stream = sse(
        gw.addr,
        "/v1/topics/g/events",
        &[("last-event-id", &format!("{epoch}:2"))],
    )
    .await;
    let gap = stream.next().await.unwrap();
    assert_eq!(gap.event, "gap", "{gap:?}");
    let v = gap.json();
    assert_eq!(v["event"], "gap");
    assert_eq!(v["from"], 3);
    assert_eq!(v["to"], first - 1);
    assert_eq!(v["reason"], "retention");
    assert_eq!(
        gap.id.as_deref(),
        Some(format!("{epoch}:{}", first - 1).as_str())
    );
    let offsets: Vec<u64> = stream
        .messages((10 - first + 1) as usize)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(offsets, (first..=10).collect::<Vec<_>>());
}

async fn bogus_id_gets_reset_then_live_and_foreign_epoch_id_gets_reset_then_current_epoch(
    backend: Backend,
) {
    let gw = start(&backend, |c| c).await;
    let r = publish(gw.addr, "e", "old", None).await;
    let epoch = r["epoch"].as_u64().unwrap();

    // Garbage: a reset, then only new messages.
    let mut bogus = sse(
        gw.addr,
        "/v1/topics/e/events",
        &[("last-event-id", "no-such-id")],
    )
    .await;
    assert_eq!(bogus.status, 200);
    let reset = bogus.next().await.unwrap();
    assert_eq!(reset.event, "reset", "{reset:?}");
    let v = reset.json();
    assert_eq!(v["epoch"], epoch);
    assert_eq!(v["previous_epoch"], 0);
    assert_eq!(v["last_delivered"], 0);
    // An offset past the head of the current epoch is bogus too.
    let mut ahead = sse(
        gw.addr,
        "/v1/topics/e/events",
        &[("last-event-id", &format!("{epoch}:99"))],
    )
    .await;
    let v = ahead.next().await.unwrap().json();
    assert_eq!(v["event"], "reset");
    assert_eq!(v["previous_epoch"], epoch);
    assert_eq!(v["last_delivered"], 99);

    // Another epoch: a reset naming it, then the current epoch from its oldest message.
    let foreign = epoch - 1000;
    let mut old = sse(
        gw.addr,
        "/v1/topics/e/events",
        &[("last-event-id", &format!("{foreign}:7"))],
    )
    .await;
    let v = old.next().await.unwrap().json();
    assert_eq!(v["event"], "reset");
    assert_eq!(v["previous_epoch"], foreign);
    assert_eq!(v["last_delivered"], 7);
    assert_eq!(v["epoch"], epoch);
    let replay = old.messages(1).await;
    assert_eq!((replay[0].0, replay[0].1.as_str()), (1, "old"));

    publish(gw.addr, "e", "new", None).await;
    for s in [&mut bogus, &mut ahead, &mut old] {
        let m = s.messages(1).await;
        assert_eq!((m[0].0, m[0].1.as_str()), (2, "new"));
        s.assert_quiet(Duration::from_millis(200)).await;
    }
}

async fn multi_topic_stream_resumes_each_topic_at_its_own_position(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    publish(gw.addr, "a", "a1", None).await;
    publish(gw.addr, "b", "b1", None).await;
    publish(gw.addr, "b", "b2", None).await;
    let mut s = sse(gw.addr, "/v1/events?topic=a&topic=b&from=earliest", &[]).await;
    assert_eq!(s.status, 200);
    let mut seen = Vec::new();
    let mut last_id = String::new();
    for _ in 0..3 {
        let ev = s.next().await.unwrap();
        let v = ev.json();
        seen.push(format!("{}{}", v["topic"].as_str().unwrap(), v["offset"]));
        last_id = ev.id.unwrap();
    }
    seen.sort();
    assert_eq!(seen, vec!["a1", "b1", "b2"]);
    assert!(
        last_id.contains("a=") && last_id.contains(",b="),
        "{last_id}"
    );
    drop(s);
    publish(gw.addr, "a", "a2", None).await;
    publish(gw.addr, "a", "a3", None).await;
    publish(gw.addr, "b", "b3", None).await;
    let mut s = sse(
        gw.addr,
        "/v1/events?topic=a&topic=b&from=earliest",
        &[("last-event-id", &last_id)],
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let v = s.next().await.unwrap().json();
        got.push((
            v["topic"].as_str().unwrap().to_string(),
            v["offset"].as_u64().unwrap(),
        ));
    }
    let a: Vec<u64> = got.iter().filter(|(t, _)| t == "a").map(|x| x.1).collect();
    let b: Vec<u64> = got.iter().filter(|(t, _)| t == "b").map(|x| x.1).collect();
    assert_eq!(a, vec![2, 3]);
    assert_eq!(b, vec![3]);
    s.assert_quiet(Duration::from_millis(300)).await;
}

async fn fresh_connection_with_only_last_event_id_query_resumes_without_duplicates(
    backend: Backend,
) {
    let gw = start(&backend, |c| c).await;
    let mut epoch = 0;
    for i in 1..=4 {
        epoch = publish(gw.addr, "q", &format!("m{i}"), None).await["epoch"]
            .as_u64()
            .unwrap();
    }
    let mut s = sse(
        gw.addr,
        &format!("/v1/topics/q/events?last_event_id={epoch}:2"),
        &[],
    )
    .await;
    let got: Vec<u64> = s.messages(2).await.into_iter().map(|m| m.0).collect();
    assert_eq!(got, vec![3, 4]);
    s.assert_quiet(Duration::from_millis(300)).await;
}

async fn history_returns_tail_fields_and_batch_publish_returns_receipts(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    let body = "{\"data\":\"x\",\"key\":\"b1\"}\n{\"data_base64\":\"/wA=\",\"headers\":{\"h\":\"v\"}}\n\n{\"data\":\"x\",\"key\":\"b1\"}\n";
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/h/messages",
        &[("content-type", "application/x-ndjson")],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let receipts = r.json();
    let receipts = receipts.as_array().unwrap();
    assert_eq!(receipts.len(), 3);
    assert_eq!(receipts[0]["offset"], 1);
    assert_eq!(receipts[1]["offset"], 2);
    assert_eq!(receipts[2]["duplicate"], true);
    assert_eq!(receipts[2]["offset"], 1);

    let h = get(gw.addr, "/v1/topics/h/messages?from=earliest&limit=10").await;
    assert_eq!(h.status, 200, "{}", h.text());
    let v = h.json();
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["data"], "x");
    assert_eq!(events[0]["key"], "b1");
    assert!(events[0]["node"].is_string() && events[0]["published_at"].is_u64());
    assert_eq!(events[1]["data_base64"], "/wA=");
    assert!(events[1].get("data").is_none());
    assert_eq!(events[1]["headers"]["h"], "v");
    let one = get(gw.addr, "/v1/topics/h/messages?from=2&limit=1")
        .await
        .json();
    assert_eq!(one["events"].as_array().unwrap().len(), 1);
    assert_eq!(one["events"][0]["offset"], 2);
    let none = get(gw.addr, "/v1/topics/h/messages?from=latest")
        .await
        .json();
    assert_eq!(none["events"].as_array().unwrap().len(), 0);
}

async fn a_client_behind_the_shared_channel_is_caught_up_from_history_in_order(backend: Backend) {
    // A shared channel of 2 events: any client that does not keep up within 2 events lags.
    let gw = start(&backend, |c| c.topic_channel(2).client_buffer(4)).await;
    let mut slow = sse(gw.addr, "/v1/topics/s/events", &[]).await;
    let mut fast = sse(gw.addr, "/v1/topics/s/events", &[]).await;
    let lines: String = (1..=60)
        .map(|i| format!("{{\"data\":\"m{i}\"}}\n"))
        .collect();
    let r = request(
        gw.addr,
        "POST",
        "/v1/topics/s/messages",
        &[("content-type", "application/x-ndjson")],
        lines,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let want: Vec<u64> = (1..=60).collect();
    let got: Vec<u64> = fast.messages(60).await.into_iter().map(|m| m.0).collect();
    assert_eq!(got, want);
    let got: Vec<u64> = slow.messages(60).await.into_iter().map(|m| m.0).collect();
    assert_eq!(got, want);
    slow.assert_quiet(Duration::from_millis(300)).await;
}
