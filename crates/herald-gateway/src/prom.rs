//! A small recorder for the `metrics` facade, rendered in the Prometheus text format at
//! `/metrics`: the library's own metrics (`herald_*`, see the README) next to the gateway's
//! (`herald_gateway_*`, in `metrics`).
//!
//! The gateway installs it as the process's global recorder when it starts, unless the
//! application already installed one (then `/metrics` shows only the gateway's own counters
//! and the application exports the library's metrics itself). Counters, gauges and
//! histograms (fixed buckets: seconds for `_seconds`, powers of ten otherwise) are kept as
//! atomics; registering a metric takes a lock, recording does not.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ::metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// Bucket bounds of `_seconds` histograms.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds of the other histograms.
const COUNTS: &[f64] = &[
    0.0,
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
];

/// What the library's metrics mean (it does not describe them itself).
const HELP: &[(&str, &str)] = &[
    ("herald_publish_total", "Messages published, by outcome (ok, duplicate, error)."),
    ("herald_publish_duration_seconds", "Time of one publish call (single or batch) until its receipt."),
    ("herald_deliveries_total", "Messages handed to subscribers."),
    ("herald_gaps_total", "Gap events handed to subscribers, by reason."),
    ("herald_resets_total", "Reset events handed to subscribers."),
    ("herald_reconnects_total", "Live feeds re-established after they were lost."),
    ("herald_history_reads_total", "History reads by subscriptions catching up."),
    ("herald_subscription_lag_messages", "At each periodic head check, messages a subscription's topic holds past what it delivered."),
];

#[derive(Default)]
struct Hist {
    buckets: Vec<AtomicU64>,
    bounds: &'static [f64],
    count: AtomicU64,
    /// The sum, as f64 bits.
    sum: AtomicU64,
}

impl HistogramFn for Hist {
    fn record(&self, value: f64) {
        for (b, bound) in self.buckets.iter().zip(self.bounds) {
            if value <= *bound {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

type Series<T> = Mutex<BTreeMap<String, BTreeMap<String, Arc<T>>>>;

#[derive(Default)]
struct Inner {
    counters: Series<AtomicU64>,
    gauges: Series<AtomicU64>,
    histograms: Series<Hist>,
    help: Mutex<BTreeMap<String, String>>,
}

/// The recorder and its values.
#[derive(Clone, Default)]
pub(crate) struct Registry(Arc<Inner>);

/// `{a="x",b="y"}` of a key, sorted, escaped; empty without labels.
fn labels(key: &Key) -> String {
    let mut pairs: Vec<(String, String)> = key
        .labels()
        .map(|l| (l.key().to_string(), l.value().to_string()))
        .collect();
    if pairs.is_empty() {
        return String::new();
    }
    pairs.sort();
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{v}\"");
    }
    out.push('}');
    out
}

fn entry<T>(series: &Series<T>, key: &Key, make: impl FnOnce() -> T) -> Arc<T> {
    let mut map = series.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(key.name().to_string())
        .or_default()
        .entry(labels(key))
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

impl Recorder for Registry {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }
    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }
    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }
    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(entry(&self.0.counters, key, AtomicU64::default))
    }
    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(entry(&self.0.gauges, key, AtomicU64::default))
    }
    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let bounds = if key.name().ends_with("_seconds") {
            SECONDS
        } else {
            COUNTS
        };
        Histogram::from_arc(entry(&self.0.histograms, key, || Hist {
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            bounds,
            ..Hist::default()
        }))
    }
}

impl Registry {
    fn describe(&self, key: KeyName, description: SharedString) {
        let mut help = self.0.help.lock().unwrap_or_else(|p| p.into_inner());
        help.insert(key.as_str().to_string(), description.to_string());
    }

    fn help_of(&self, name: &str) -> String {
        let help = self.0.help.lock().unwrap_or_else(|p| p.into_inner());
        help.get(name)
            .cloned()
            .or_else(|| {
                HELP.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, h)| h.to_string())
            })
            .unwrap_or_else(|| name.replace('_', " "))
    }

    /// The Prometheus text of every series recorded so far.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str| {
            let _ = writeln!(out, "# HELP {name} {}", self.help_of(name));
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        {
            let counters = self.0.counters.lock().unwrap_or_else(|p| p.into_inner());
            for (name, series) in counters.iter() {
                head(&mut out, name, "counter");
                for (labels, v) in series {
                    let _ = writeln!(out, "{name}{labels} {}", v.load(Ordering::Relaxed));
                }
            }
        }
        {
            let gauges = self.0.gauges.lock().unwrap_or_else(|p| p.into_inner());
            for (name, series) in gauges.iter() {
                head(&mut out, name, "gauge");
                for (labels, v) in series {
                    let v = f64::from_bits(v.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{name}{labels} {v}");
                }
            }
        }
        let histograms = self.0.histograms.lock().unwrap_or_else(|p| p.into_inner());
        for (name, series) in histograms.iter() {
            head(&mut out, name, "histogram");
            for (labels, h) in series {
                let inner = labels.trim_start_matches('{').trim_end_matches('}');
                let sep = if inner.is_empty() { "" } else { "," };
                for (b, bound) in h.buckets.iter().zip(h.bounds) {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{inner}{sep}le=\"{bound}\"}} {}",
                        b.load(Ordering::Relaxed)
                    );
                }
                let count = h.count.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"+Inf\"}} {count}");
                let sum = f64::from_bits(h.sum.load(Ordering::Relaxed));
                let _ = writeln!(out, "{name}_sum{labels} {sum}");
                let _ = writeln!(out, "{name}_count{labels} {count}");
            }
        }
        out
    }
}

/// The process's registry: installed as the global recorder by the first gateway; `None`
/// when another recorder was installed first.
pub(crate) fn global() -> Option<&'static Registry> {
    static GLOBAL: OnceLock<Option<Registry>> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let registry = Registry::default();
            ::metrics::set_global_recorder(registry.clone())
                .ok()
                .map(|()| registry)
        })
        .as_ref()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let r = Registry::default();
        ::metrics::with_local_recorder(&r, || {
            ::metrics::counter!("x_total", "outcome" => "ok").increment(3);
            ::metrics::counter!("x_total", "outcome" => "a\"b").increment(1);
            ::metrics::gauge!("y").set(2.5);
            ::metrics::histogram!("z_seconds").record(0.003);
            ::metrics::histogram!("z_seconds").record(20.0);
        });
        let text = r.render();
        assert!(text.contains("# TYPE x_total counter\n"), "{text}");
        assert!(text.contains("x_total{outcome=\"ok\"} 3\n"), "{text}");
        assert!(text.contains("x_total{outcome=\"a\\\"b\"} 1\n"), "{text}");
        assert!(text.contains("y 2.5\n"), "{text}");
        assert!(
            text.contains("z_seconds_bucket{le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("z_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("z_seconds_bucket{le=\"10\"} 1\n"), "{text}");
        assert!(text.contains("z_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("z_seconds_count 2\n"), "{text}");
    }
}
