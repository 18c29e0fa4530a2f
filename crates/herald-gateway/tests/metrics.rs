#![allow(clippy::unwrap_used)]
//! `/metrics`: the library's metrics (through the `metrics` facade and the gateway's
//! recorder) next to the gateway's own, with the values of what happened. The recorder is
//! global to the process, so this file holds one test, which runs both backends in turn and
//! checks the change of each value.

mod common;

use common::*;
use herald_testkit::Backend;

/// The value of the sample `series` (name with labels) in a Prometheus text, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .unwrap_or(0.0)
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    r.text()
}

const LIBRARY: &[&str] = &[
    "herald_publish_total{outcome=\"ok\"}",
    "herald_publish_total{outcome=\"duplicate\"}",
    "herald_publish_duration_seconds_count",
    "herald_deliveries_total",
    "herald_gaps_total{reason=\"retention\"}",
];

async fn publish_and_deliver_are_counted(backend: Backend) {
    let gw = start(&backend, |c| c).await;
    let before = scrape(gw.addr).await;
    let mut stream = sse(gw.addr, "/v1/topics/m.t/events", &[]).await;
    assert_eq!(stream.status, 200);
    publish(gw.addr, "m.t", "one", Some("k1")).await;
    publish(gw.addr, "m.t", "two", None).await;
    let dup = publish(gw.addr, "m.t", "one again", Some("k1")).await;
    assert_eq!(dup["duplicate"], true);
    let got = stream.messages(2).await;
    assert_eq!(got[1].1, "two");

    let after = scrape(gw.addr).await;
    let delta = |s: &str| sample(&after, s) - sample(&before, s);
    assert_eq!(delta(LIBRARY[0]), 2.0, "ok publishes:\n{after}");
    assert_eq!(delta(LIBRARY[1]), 1.0, "duplicates:\n{after}");
    assert_eq!(delta(LIBRARY[2]), 3.0, "timed publish calls:\n{after}");
    // The topic's shared subscription handed both messages over (one subscription, however
    // many clients).
    assert_eq!(delta(LIBRARY[3]), 2.0, "deliveries:\n{after}");
    assert_eq!(delta(LIBRARY[4]), 0.0, "no gap:\n{after}");
    assert!(after.contains("# TYPE herald_publish_duration_seconds histogram"));
    assert!(after.contains("# TYPE herald_publish_total counter"));
    // The gateway's own.
    assert_eq!(
        sample(&after, "herald_gateway_connections{kind=\"sse\"}"),
        1.0
    );
    assert_eq!(delta("herald_gateway_published_total"), 2.0);
    assert_eq!(delta("herald_gateway_duplicates_total"), 1.0);
    assert_eq!(delta("herald_gateway_delivered_total"), 2.0);
    assert_eq!(
        sample(&after, "herald_gateway_topic_subscribers{topic=\"m.t\"}"),
        1.0,
        "{after}"
    );

    // Resuming from a trimmed offset: the follower's history read hands over a gap.
    let mut change = herald::SettingsChange::default();
    change.max_len = Some(1);
    gw.herald.configure("m.t", change).await.unwrap();
    publish(gw.addr, "m.t", "three", None).await;
    let mut late = sse(gw.addr, "/v1/topics/m.t/events?from=1", &[]).await;
    let gap = late.next().await.unwrap();
    assert_eq!(gap.event, "gap", "{gap:?}");
    let last = scrape(gw.addr).await;
    assert!(
        sample(&last, LIBRARY[4]) - sample(&after, LIBRARY[4]) >= 1.0,
        "the gap is counted:\n{last}"
    );
    assert!(
        sample(&last, "herald_history_reads_total") > sample(&before, "herald_history_reads_total")
    );
    drop((stream, late));
    gw.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_publishes_deliveries_and_gaps_with_their_values() {
    publish_and_deliver_are_counted(Backend::embedded()).await;
    publish_and_deliver_are_counted(Backend::redis()).await;
}
