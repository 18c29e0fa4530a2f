#![allow(clippy::unwrap_used)]
//! The gateway survives Redis `kill -9` and a restart on the same port: an SSE client that
//! connected before sees continuity (every message published before and after, in order, no
//! duplicate) when Redis persists with AOF `always`, and a `reset` followed by the new
//! messages when Redis lost everything.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use herald_gateway::Config;
use herald_testkit::RedisServer;

async fn gateway(server: &RedisServer) -> (herald_gateway::Gateway, SocketAddr) {
    let herald = herald::Herald::builder()
        .redis(server.url())
        .node_id("gateway")
        .poll_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let gw = herald_gateway::serve(
        Config::new(herald)
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .keep_alive(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let addr = gw.local_addr();
    (gw, addr)
}

/// The next event that is not a keep-alive, as (event name, JSON data, id).
async fn next(stream: &mut SseStream) -> (String, serde_json::Value, String) {
    let ev = stream.next().await.expect("stream open");
    let v = ev.json();
    (ev.event.clone(), v, ev.id.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_aof_a_client_sees_every_message_across_kill9_and_restart_in_order() {
    let mut server = RedisServer::start_persistent();
    let (gw, addr) = gateway(&server).await;
    let mut stream = sse(addr, "/v1/topics/r/events", &[]).await;
    assert_eq!(stream.status, 200);
    for i in 1..=5 {
        publish(addr, "r", &format!("m{i}"), None).await;
    }
    let before = stream.messages(5).await;
    let offsets: Vec<u64> = before.iter().map(|m| m.0).collect();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5]);

    server.kill9();
    server.restart();
    for i in 6..=10 {
        publish(addr, "r", &format!("m{i}"), None).await;
    }
    let mut data = Vec::new();
    let mut last_offset = 5;
    while data.len() < 5 {
        let (name, v, _id) = next(&mut stream).await;
        assert_eq!(name, "message", "continuity, no {name}: {v}");
        let offset = v["offset"].as_u64().unwrap();
        assert_eq!(offset, last_offset + 1, "in order, no duplicate: {v}");
        last_offset = offset;
        data.push(v["data"].as_str().unwrap().to_string());
    }
    assert_eq!(data, vec!["m6", "m7", "m8", "m9", "m10"]);
    stream.assert_quiet(Duration::from_millis(700)).await;
    drop(stream);
    gw.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_persistence_a_client_gets_a_reset_then_the_new_messages() {
    let mut server = RedisServer::start();
    let (gw, addr) = gateway(&server).await;
    let mut stream = sse(addr, "/v1/topics/r/events", &[]).await;
    for i in 1..=3 {
        publish(addr, "r", &format!("m{i}"), None).await;
    }
    let before = stream.messages(3).await;
    let old_epoch: u64 = before[2].2.split(':').next().unwrap().parse().unwrap();

    server.kill9();
    server.restart();
    for i in 4..=6 {
        publish(addr, "r", &format!("m{i}"), None).await;
    }
    let (name, reset, _) = next(&mut stream).await;
    assert_eq!(name, "reset", "{reset}");
    assert_eq!(reset["previous_epoch"], old_epoch, "{reset}");
    assert_eq!(reset["last_delivered"], 3, "{reset}");
    let after = stream.messages(3).await;
    let got: Vec<(u64, &str)> = after.iter().map(|m| (m.0, m.1.as_str())).collect();
    assert_eq!(got, vec![(1, "m4"), (2, "m5"), (3, "m6")]);
    let new_epoch: u64 = after[0].2.split(':').next().unwrap().parse().unwrap();
    assert_ne!(new_epoch, old_epoch, "a new epoch after the log was lost");
    stream.assert_quiet(Duration::from_millis(700)).await;
    drop(stream);
    gw.shutdown().await.unwrap();
}
