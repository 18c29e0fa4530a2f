//! The gateway's own counters, exported at `/metrics` in the Prometheus text format.
//!
//! | name | type | what |
//! | --- | --- | --- |
//! | `herald_gateway_connections` | gauge | open SSE streams and WebSocket connections, by `kind` |
//! | `herald_gateway_connections_total` | counter | streams and connections opened, by `kind` |
//! | `herald_gateway_published_total` | counter | messages appended through the gateway (duplicates excluded) |
//! | `herald_gateway_duplicates_total` | counter | publishes answered as duplicates |
//! | `herald_gateway_publish_errors_total` | counter | publishes refused or failed |
//! | `herald_gateway_delivered_total` | counter | events sent to clients (messages, gaps, resets) |
//! | `herald_gateway_feeds` | gauge | topics with a shared subscription now |
//! | `herald_gateway_feed_events_total` | counter | events received by the shared subscriptions |
//! | `herald_gateway_topic_subscribers` | gauge | clients following a topic now, by `topic` (topics with a feed) |
//!
//! The library's own metrics (`herald_*`) follow, from the recorder in `prom`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicI64);

impl Gauge {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) sse_open: Gauge,
    pub(crate) ws_open: Gauge,
    pub(crate) sse_total: Counter,
    pub(crate) ws_total: Counter,
    pub(crate) published: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) publish_errors: Counter,
    pub(crate) delivered: Counter,
    pub(crate) feeds_open: Gauge,
    pub(crate) feed_events: Counter,
}

/// An open connection, counted until dropped.
pub(crate) struct Open {
    metrics: std::sync::Arc<Metrics>,
    ws: bool,
}

impl Open {
    /// Counts an SSE stream (`ws` false) or a WebSocket connection.
    pub(crate) fn new(metrics: std::sync::Arc<Metrics>, ws: bool) -> Self {
        if ws {
            metrics.ws_open.inc();
            metrics.ws_total.inc();
        } else {
            metrics.sse_open.inc();
            metrics.sse_total.inc();
        }
        Open { metrics, ws }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.ws {
            self.metrics.ws_open.dec();
        } else {
            self.metrics.sse_open.dec();
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition, with each topic's clients.
    pub(crate) fn render(&self, subscribers: &[(String, usize)]) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "herald_gateway_connections",
            "gauge",
            "Open SSE streams and WebSocket connections.",
            &[
                ("{kind=\"sse\"}", self.sse_open.get().to_string()),
                ("{kind=\"ws\"}", self.ws_open.get().to_string()),
            ],
        );
        family(
            "herald_gateway_connections_total",
            "counter",
            "SSE streams and WebSocket connections opened.",
            &[
                ("{kind=\"sse\"}", self.sse_total.get().to_string()),
                ("{kind=\"ws\"}", self.ws_total.get().to_string()),
            ],
        );
        for (name, help, value) in [
            (
                "herald_gateway_published_total",
                "Messages appended through the gateway.",
                self.published.get(),
            ),
            (
                "herald_gateway_duplicates_total",
                "Publishes answered as duplicates of an earlier idempotency key.",
                self.duplicates.get(),
            ),
            (
                "herald_gateway_publish_errors_total",
                "Publishes refused or failed.",
                self.publish_errors.get(),
            ),
            (
                "herald_gateway_delivered_total",
                "Events sent to clients (messages, gaps, resets).",
                self.delivered.get(),
            ),
            (
                "herald_gateway_feed_events_total",
                "Events received by the shared per-topic subscriptions.",
                self.feed_events.get(),
            ),
        ] {
            family(name, "counter", help, &[("", value.to_string())]);
        }
        family(
            "herald_gateway_feeds",
            "gauge",
            "Topics with a shared subscription now.",
            &[("", self.feeds_open.get().to_string())],
        );
        let per_topic: Vec<(String, String)> = subscribers
            .iter()
            .map(|(t, n)| (format!("{{topic=\"{}\"}}", escape(t)), n.to_string()))
            .collect();
        let per_topic: Vec<(&str, String)> = per_topic
            .iter()
            .map(|(l, v)| (l.as_str(), v.clone()))
            .collect();
        family(
            "herald_gateway_topic_subscribers",
            "gauge",
            "Clients following a topic now (topics with a shared subscription).",
            &per_topic,
        );
        out
    }
}

/// A label value, escaped for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
