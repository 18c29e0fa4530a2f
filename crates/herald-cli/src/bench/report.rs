//! Results: one [`Row`] per run, printed as a JSON object per line (`--json`) or as a table,
//! with Herald's ratios to the baselines of the same case, and the process's peak memory.
//!
//! Throughput ratios are Herald's `delivered_per_s` divided by the baseline's (higher is
//! better for Herald); latency ratios are Herald's p99 divided by the baseline's (lower is
//! better). Peak RSS comes from `VmHWM` in `/proc/self/status`; before each run the
//! high-water mark is reset (writing `5` to `/proc/self/clear_refs`) where the kernel allows
//! it, so each row's `peak_rss_kib` is that run's own peak.

use std::io::Write;

use serde::Serialize;

use super::cases::{
    size_label, Case, Measured, Rate, Shape, System, FULL_SPEED_BATCH, PREFILL_BATCH,
};

/// `rate` in the JSON output: `"max"` or messages per second.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub(crate) enum RateField {
    /// Full speed.
    Label(&'static str),
    /// Fixed rate.
    PerSecond(u64),
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// The case's name.
    pub(crate) case: String,
    /// `herald`, `redis-pubsub` or `redis-streams`.
    pub(crate) system: &'static str,
    /// Subscribers.
    pub(crate) subscribers: usize,
    /// Payload size in bytes.
    pub(crate) payload_bytes: usize,
    /// `"max"` or messages per second.
    pub(crate) rate: RateField,
    /// Messages per publisher call: one pipeline of PUBLISH/XADD, one Herald `publish_batch`
    /// (64 at full speed, 1 at a fixed rate, 1000 when filling catch-up history).
    pub(crate) publisher_batch: usize,
    /// Messages published.
    pub(crate) published: u64,
    /// Messages published per second.
    pub(crate) published_per_s: f64,
    /// Deliveries expected (published × subscribers).
    pub(crate) expected: u64,
    /// Distinct deliveries, all subscribers together.
    pub(crate) delivered: u64,
    /// Distinct deliveries per second, all subscribers together (catch-up: the read rate).
    pub(crate) delivered_per_s: f64,
    /// Median end-to-end latency, µs (none for catch-up).
    pub(crate) p50_us: Option<u64>,
    /// 99th percentile latency, µs.
    pub(crate) p99_us: Option<u64>,
    /// 99.9th percentile latency, µs.
    pub(crate) p999_us: Option<u64>,
    /// Expected minus delivered.
    pub(crate) lost: u64,
    /// Deliveries repeated (not counted in `delivered`).
    pub(crate) duplicates: u64,
    /// Deliveries after a message published later (at a fixed rate, messages sent
    /// concurrently have no defined order, so this is informative only there).
    pub(crate) reordered: u64,
    /// Problems seen by subscribers (errors, gaps, resets, closed connections).
    pub(crate) errors: u64,
    /// The first problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_error: Option<String>,
    /// Peak resident memory of this process during the run, KiB.
    pub(crate) peak_rss_kib: Option<u64>,
    /// Herald rows: delivered_per_s / redis-pubsub's delivered_per_s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio_pubsub: Option<Option<f64>>,
    /// Herald rows: delivered_per_s / redis-streams's delivered_per_s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio_streams: Option<Option<f64>>,
    /// Herald rows: p99_us / redis-pubsub's p99_us.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p99_ratio_pubsub: Option<Option<f64>>,
    /// Herald rows: p99_us / redis-streams's p99_us.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p99_ratio_streams: Option<Option<f64>>,
}

/// Per second, rounded to 0.1.
fn per_second(count: u64, elapsed: std::time::Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (count as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// `a / b` rounded to 0.001, when both are known and `b` is not zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 1000.0).round() / 1000.0),
        _ => None,
    }
}

impl Row {
    /// The row of one run; `baselines` are the rows of the same case run before it.
    pub(crate) fn new(
        case: &Case,
        system: System,
        m: &Measured,
        peak_rss_kib: Option<u64>,
        baselines: &[Row],
    ) -> Self {
        let quantile = |q: f64| m.latency.as_ref().map(|h| h.value_at_quantile(q));
        let mut row = Row {
            case: case.name.clone(),
            system: system.name(),
            subscribers: case.subscribers(),
            payload_bytes: case.payload,
            rate: match case.rate() {
                Rate::Max => RateField::Label("max"),
                Rate::PerSecond(r) => RateField::PerSecond(r),
            },
            publisher_batch: match (case.shape, case.rate()) {
                (Shape::CatchUp, _) => PREFILL_BATCH,
                (_, Rate::Max) => FULL_SPEED_BATCH,
                (_, Rate::PerSecond(_)) => 1,
            },
            published: m.published,
            published_per_s: per_second(m.published, m.publish_elapsed),
            expected: m.expected,
            delivered: m.delivered,
            delivered_per_s: per_second(m.delivered, m.deliver_elapsed),
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            lost: m.expected.saturating_sub(m.delivered),
            duplicates: m.duplicates,
            reordered: m.reordered,
            errors: m.errors,
            first_error: m.first_error.clone(),
            peak_rss_kib,
            ratio_pubsub: None,
            ratio_streams: None,
            p99_ratio_pubsub: None,
            p99_ratio_streams: None,
        };
        if system == System::Herald {
            let find = |name: &str| baselines.iter().find(|b| b.system == name);
            let throughput =
                |b: Option<&Row>| ratio(Some(row.delivered_per_s), b.map(|b| b.delivered_per_s));
            let p99 = |b: Option<&Row>| {
                ratio(
                    row.p99_us.map(|v| v as f64),
                    b.and_then(|b| b.p99_us).map(|v| v as f64),
                )
            };
            let (pubsub, streams) = (find("redis-pubsub"), find("redis-streams"));
            row.ratio_pubsub = Some(throughput(pubsub));
            row.ratio_streams = Some(throughput(streams));
            row.p99_ratio_pubsub = Some(p99(pubsub));
            row.p99_ratio_streams = Some(p99(streams));
        }
        row
    }

    /// The line printed to the terminal above the progress bar when the run ends.
    pub(crate) fn summary(&self) -> String {
        let latency = match self.p99_us {
            Some(p99) => format!(", p99 {p99} µs"),
            None => String::new(),
        };
        format!(
            "{} {}: {:.0} delivered/s{latency}, lost {}",
            self.case, self.system, self.delivered_per_s, self.lost
        )
    }
}

/// Writes one row as a JSON line.
pub(crate) fn write_json(out: &mut impl Write, row: &Row) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, row)?;
    writeln!(out)?;
    out.flush()
}

/// `-` for unknown values.
fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// `0.93x`, or blank.
fn times(v: Option<Option<f64>>) -> String {
    match v {
        Some(Some(r)) => format!("{r:.2}x"),
        Some(None) => "-".into(),
        None => String::new(),
    }
}

/// Writes the results table.
pub(crate) fn write_table(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    let header = [
        "case",
        "system",
        "subs",
        "payload",
        "rate",
        "published",
        "pub/s",
        "deliv/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "lost",
        "deliv/s vs pubsub",
        "vs streams",
        "p99 vs pubsub",
        "vs streams",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        cells.push(vec![
            r.case.clone(),
            r.system.to_string(),
            r.subscribers.to_string(),
            size_label(r.payload_bytes),
            match r.rate {
                RateField::Label(l) => l.to_string(),
                RateField::PerSecond(n) => format!("{n}/s"),
            },
            r.published.to_string(),
            format!("{:.0}", r.published_per_s),
            format!("{:.0}", r.delivered_per_s),
            opt(r.p50_us),
            opt(r.p99_us),
            opt(r.p999_us),
            r.lost.to_string(),
            times(r.ratio_pubsub),
            times(r.ratio_streams),
            times(r.p99_ratio_pubsub),
            times(r.p99_ratio_streams),
        ]);
    }
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            cells
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, row) in cells.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c < 2 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
            if c + 1 < columns {
                line.push_str("  ");
            }
        }
        writeln!(out, "{}", line.trim_end())?;
        if i == 0 {
            writeln!(
                out,
                "{}",
                "-".repeat(widths.iter().sum::<usize>() + 2 * (columns - 1))
            )?;
        }
    }
    Ok(())
}

/// Resets the kernel's peak-RSS mark of this process, where allowed.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `VmHWM` of this process, in KiB.
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cases::{plan, Measured};
    use std::time::Duration;

    fn measured(delivered: u64) -> Measured {
        Measured {
            published: 100,
            publish_elapsed: Duration::from_secs(1),
            expected: 400,
            delivered,
            deliver_elapsed: Duration::from_secs(2),
            latency: None,
            duplicates: 0,
            reordered: 0,
            errors: 0,
            first_error: None,
        }
    }

    #[test]
    fn herald_rows_carry_ratios() {
        let case = &plan(100, 10, 10_000, &["fan4-128B-max".into()])[0];
        let pubsub = Row::new(case, System::RedisPubsub, &measured(400), None, &[]);
        let herald = Row::new(
            case,
            System::Herald,
            &measured(300),
            None,
            std::slice::from_ref(&pubsub),
        );
        assert_eq!(pubsub.delivered_per_s, 200.0);
        assert_eq!(herald.lost, 100);
        assert_eq!(herald.ratio_pubsub, Some(Some(0.75)));
        assert_eq!(herald.ratio_streams, Some(None));
        let json = serde_json::to_value(&herald).unwrap();
        assert_eq!(json["rate"], "max");
        assert_eq!(json["publisher_batch"], 64);
        assert_eq!(json["ratio_pubsub"], 0.75);
        assert!(json["ratio_streams"].is_null());
        let json = serde_json::to_value(&pubsub).unwrap();
        assert!(json.get("ratio_pubsub").is_none());
        let mut table = Vec::new();
        write_table(&mut table, &[pubsub, herald]).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("0.75x"), "{table}");
    }

    #[test]
    fn reads_peak_rss() {
        assert!(peak_rss_kib().unwrap_or(1) > 0);
    }
}
