//! Results: one [`Row`] per run, printed as a JSON object per line (`--json`) or as a table,
//! with Herald's ratios to the baselines of the same case and round, and the process's peak
//! memory. With several rounds (`--rounds`), a [`RoundsSummary`] per case gives the median,
//! minimum and maximum of Herald's ratios over the rounds ([`spread`]).
//!
//! Throughput ratios are Herald's `delivered_per_s` divided by the baseline's (higher is
//! better for Herald); latency ratios are Herald's p99 divided by the baseline's (lower is
//! better). Peak RSS comes from `VmHWM` in `/proc/self/status`; before each run the
//! high-water mark is reset (writing `5` to `/proc/self/clear_refs`) where the kernel allows
//! it, so each row's `peak_rss_kib` is that run's own peak.

use std::io::Write;

use serde::Serialize;

use super::cases::{
    size_label, Case, CurvePoint, Measured, Rate, Shape, System, FULL_SPEED_BATCH, PREFILL_BATCH,
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
    /// The round (1-based): with `--rounds N`, each case runs every system N times.
    pub(crate) round: u32,
    /// Subscribers (work-group cases: the workers).
    pub(crate) subscribers: usize,
    /// Work-group cases: the workers sharing the group (each message is processed by one, so
    /// `delivered_per_s` is processed messages/s and `expected` is `published`; the
    /// `redis-streams` baseline is a raw Streams consumer group and `p50_us`/`p99_us` are
    /// publish-to-start latencies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) workers: Option<usize>,
    /// Publishers, each with its own handle or connection.
    pub(crate) publishers: usize,
    /// Topics (channels, streams) published to.
    pub(crate) topics: usize,
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
    /// Many-topics cases: milliseconds from the subscribe call until the subscriber was ready
    /// (raw: SUBSCRIBE of every channel registered, then a pipelined read of one key each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ready_ms: Option<f64>,
    /// Many-topics cases: the process's resident memory (VmRSS) when the subscriber was ready
    /// minus before it connected, KiB (an RSS delta, not a peak; publishing not yet started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) subscriber_rss_delta_kib: Option<i64>,
    /// Many-topics rows: Herald's `ready_ms` / redis-pubsub's (lower is better).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ready_ratio_pubsub: Option<Option<f64>>,
    /// The chart curves this row is a point of (not in the JSON).
    #[serde(skip)]
    pub(crate) curves: Vec<CurvePoint>,
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
    /// The row of one run in `round`; `baselines` are the rows of the same case and round run
    /// before it (Herald's ratios are paired with them).
    pub(crate) fn new(
        case: &Case,
        system: System,
        round: u32,
        m: &Measured,
        peak_rss_kib: Option<u64>,
        baselines: &[Row],
    ) -> Self {
        let quantile = |q: f64| m.latency.as_ref().map(|h| h.value_at_quantile(q));
        let mut row = Row {
            case: case.name.clone(),
            system: system.name(),
            round,
            subscribers: case.subscribers(),
            workers: case.workers(),
            publishers: case.publishers(),
            topics: case.topics(),
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
            ready_ms: m.ready.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0),
            subscriber_rss_delta_kib: m.subscriber_rss_kib,
            ready_ratio_pubsub: None,
            curves: case.curve_points(),
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
            if row.ready_ms.is_some() {
                row.ready_ratio_pubsub = Some(ratio(row.ready_ms, pubsub.and_then(|b| b.ready_ms)));
            }
        }
        row
    }

    /// The line printed to the terminal above the progress bar when the run ends (`rounds`:
    /// how many rounds each case runs; the round is named when there are several).
    pub(crate) fn summary(&self, rounds: u32) -> String {
        let latency = match self.p99_us {
            Some(p99) => format!(", p99 {p99} µs"),
            None => String::new(),
        };
        let round = if rounds > 1 {
            format!(" (round {}/{rounds})", self.round)
        } else {
            String::new()
        };
        format!(
            "{} {}{round}: {:.0} delivered/s{latency}, lost {}",
            self.case, self.system, self.delivered_per_s, self.lost
        )
    }
}

/// The median, minimum and maximum of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Spread {
    /// The middle value; for an even count, the mean of the two middle values (rounded to
    /// 0.0001).
    pub(crate) median: f64,
    /// The smallest value.
    pub(crate) min: f64,
    /// The largest value.
    pub(crate) max: f64,
}

/// The spread of the known values among `values` (`None` and non-finite values are
/// skipped); `None` when no value is known.
pub(crate) fn spread(values: impl IntoIterator<Item = Option<f64>>) -> Option<Spread> {
    let mut known: Vec<f64> = values
        .into_iter()
        .flatten()
        .filter(|v| v.is_finite())
        .collect();
    known.sort_by(f64::total_cmp);
    let (&min, &max) = (known.first()?, known.last()?);
    let mid = known.len() / 2;
    let median = if known.len() % 2 == 1 {
        known[mid]
    } else {
        (known[mid - 1] + known[mid]) / 2.0
    };
    Some(Spread {
        median: (median * 10_000.0).round() / 10_000.0,
        min,
        max,
    })
}

/// Herald's ratios over the rounds of one case (`--rounds N` with N > 1): one JSON object
/// per case, after its runs, or a line of the second table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RoundsSummary {
    /// The case's name.
    pub(crate) case: String,
    /// Always `herald`: the ratios are Herald's.
    pub(crate) system: &'static str,
    /// Always `rounds`: tells this object from a run's row.
    pub(crate) summary: &'static str,
    /// How many Herald rows (rounds) the summary covers.
    pub(crate) rounds: usize,
    /// Spread of `ratio_pubsub` (null when no round has it).
    pub(crate) ratio_pubsub: Option<Spread>,
    /// Spread of `ratio_streams`.
    pub(crate) ratio_streams: Option<Spread>,
    /// Spread of `p99_ratio_pubsub`.
    pub(crate) p99_ratio_pubsub: Option<Spread>,
    /// Spread of `p99_ratio_streams`.
    pub(crate) p99_ratio_streams: Option<Spread>,
}

impl RoundsSummary {
    /// The summary of the Herald rows of `case` among `rows`; `None` when there are none.
    pub(crate) fn of(case: &str, rows: &[Row]) -> Option<Self> {
        let herald: Vec<&Row> = rows
            .iter()
            .filter(|r| r.case == case && r.system == System::Herald.name())
            .collect();
        if herald.is_empty() {
            return None;
        }
        let over =
            |f: fn(&Row) -> Option<Option<f64>>| spread(herald.iter().map(|r| f(r).flatten()));
        Some(RoundsSummary {
            case: case.to_string(),
            system: System::Herald.name(),
            summary: "rounds",
            rounds: herald.len(),
            ratio_pubsub: over(|r| r.ratio_pubsub),
            ratio_streams: over(|r| r.ratio_streams),
            p99_ratio_pubsub: over(|r| r.p99_ratio_pubsub),
            p99_ratio_streams: over(|r| r.p99_ratio_streams),
        })
    }

    /// The summaries of every case among `rows` that has Herald rows, in order of first run.
    pub(crate) fn all(rows: &[Row]) -> Vec<Self> {
        let mut cases: Vec<&str> = Vec::new();
        for r in rows {
            if !cases.contains(&r.case.as_str()) {
                cases.push(&r.case);
            }
        }
        cases
            .into_iter()
            .filter_map(|c| RoundsSummary::of(c, rows))
            .collect()
    }
}

/// Writes one row (or summary) as a JSON line.
pub(crate) fn write_json(out: &mut impl Write, row: &impl Serialize) -> std::io::Result<()> {
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

/// `0.93x (0.88–1.02)`: median (min–max), or `-`.
fn times_spread(v: Option<Spread>) -> String {
    match v {
        Some(s) => format!("{:.2}x ({:.2}–{:.2})", s.median, s.min, s.max),
        None => "-".into(),
    }
}

/// Writes the results table; `show_round` adds a `round` column (with several rounds).
pub(crate) fn write_table(
    out: &mut impl Write,
    rows: &[Row],
    show_round: bool,
) -> std::io::Result<()> {
    let mut header = vec![
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
    let wide = rows.iter().any(|r| r.publishers > 1 || r.topics > 1);
    let ready = rows.iter().any(|r| r.ready_ms.is_some());
    if wide {
        header.insert(3, "pubs");
        header.insert(4, "topics");
    }
    if ready {
        header.extend(["ready ms", "ready vs pubsub", "sub RSS Δ KiB"]);
    }
    if show_round {
        header.insert(2, "round");
    }
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let mut line = vec![
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
        ];
        if wide {
            line.insert(3, r.publishers.to_string());
            line.insert(4, r.topics.to_string());
        }
        if ready {
            line.extend([
                opt(r.ready_ms),
                times(r.ready_ratio_pubsub),
                opt(r.subscriber_rss_delta_kib),
            ]);
        }
        if show_round {
            line.insert(2, r.round.to_string());
        }
        cells.push(line);
    }
    write_aligned(out, &cells)
}

/// Writes the second table of several rounds: per case, Herald's ratios as median (min–max)
/// over the rounds.
pub(crate) fn write_rounds_table(
    out: &mut impl Write,
    summaries: &[RoundsSummary],
) -> std::io::Result<()> {
    let header = [
        "case",
        "rounds",
        "deliv/s vs pubsub",
        "vs streams",
        "p99 vs pubsub",
        "vs streams",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for s in summaries {
        cells.push(vec![
            s.case.clone(),
            s.rounds.to_string(),
            times_spread(s.ratio_pubsub),
            times_spread(s.ratio_streams),
            times_spread(s.p99_ratio_pubsub),
            times_spread(s.p99_ratio_streams),
        ]);
    }
    write_aligned(out, &cells)
}

/// Writes `cells` (a header row, then the rows) in aligned columns: the first two columns
/// flush left, the others flush right, a rule under the header.
fn write_aligned(out: &mut impl Write, cells: &[Vec<String>]) -> std::io::Result<()> {
    let columns = cells.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            cells
                .iter()
                .map(|row| row.get(c).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, row) in cells.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths
                .get(c)
                .map_or(0, |w| w.saturating_sub(cell.chars().count()));
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
                "-".repeat(widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1))
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
    status_kib("VmHWM:")
}

/// `VmRSS` of this process (resident memory now), in KiB.
pub(crate) fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

/// A `kB` field of `/proc/self/status`.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::{plan, Measured};
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
            ready: None,
            subscriber_rss_kib: None,
        }
    }

    #[test]
    fn herald_rows_carry_ratios() {
        let case = &plan(100, 10, 10_000, &["fan4-128B-max".into()], false)[0];
        let pubsub = Row::new(case, System::RedisPubsub, 1, &measured(400), None, &[]);
        let herald = Row::new(
            case,
            System::Herald,
            1,
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
        assert_eq!(json["round"], 1);
        assert_eq!(json["publisher_batch"], 64);
        assert_eq!(json["ratio_pubsub"], 0.75);
        assert!(json["ratio_streams"].is_null());
        let json = serde_json::to_value(&pubsub).unwrap();
        assert!(json.get("ratio_pubsub").is_none());
        let mut table = Vec::new();
        write_table(&mut table, &[pubsub.clone(), herald.clone()], false).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("0.75x"), "{table}");
        assert!(!table.contains("round"), "{table}");
        let mut table = Vec::new();
        write_table(&mut table, &[pubsub, herald], true).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.lines().next().unwrap().contains("round"), "{table}");
    }

    fn spread_of(values: &[Option<f64>]) -> Option<Spread> {
        spread(values.iter().copied())
    }

    #[test]
    fn spread_of_an_odd_count() {
        let s = spread_of(&[Some(1.9), Some(0.8), Some(1.1)]).unwrap();
        assert_eq!(
            s,
            Spread {
                median: 1.1,
                min: 0.8,
                max: 1.9
            }
        );
        let one = spread_of(&[Some(0.75)]).unwrap();
        assert_eq!((one.median, one.min, one.max), (0.75, 0.75, 0.75));
    }

    #[test]
    fn spread_of_an_even_count_is_the_mean_of_the_middle_two() {
        let s = spread_of(&[Some(1.3), Some(0.9), Some(2.0), Some(1.0)]).unwrap();
        assert_eq!(s.median, 1.15);
        assert_eq!((s.min, s.max), (0.9, 2.0));
        let two = spread_of(&[Some(0.883), Some(1.0)]).unwrap();
        assert_eq!(two.median, 0.9415);
    }

    #[test]
    fn spread_skips_missing_values() {
        assert_eq!(spread_of(&[]), None);
        assert_eq!(spread_of(&[None, None]), None);
        assert_eq!(spread_of(&[Some(f64::NAN)]), None);
        let s = spread_of(&[None, Some(2.0), None, Some(1.0), Some(f64::INFINITY)]).unwrap();
        assert_eq!((s.median, s.min, s.max), (1.5, 1.0, 2.0));
    }

    #[test]
    fn rounds_summary_pairs_rounds_and_skips_absent_ratios() {
        let case = &plan(100, 10, 10_000, &["fan4-128B-max".into()], false)[0];
        let mut rows = Vec::new();
        for (round, (base, herald)) in [(400, 300), (400, 400), (200, 300)].into_iter().enumerate()
        {
            let round = round as u32 + 1;
            let pubsub = Row::new(case, System::RedisPubsub, round, &measured(base), None, &[]);
            let h = Row::new(
                case,
                System::Herald,
                round,
                &measured(herald),
                None,
                std::slice::from_ref(&pubsub),
            );
            rows.push(pubsub);
            rows.push(h);
        }
        let ratios: Vec<_> = rows.iter().filter_map(|r| r.ratio_pubsub).collect();
        assert_eq!(ratios, [Some(0.75), Some(1.0), Some(1.5)]);
        let all = RoundsSummary::all(&rows);
        assert_eq!(all.len(), 1);
        let s = &all[0];
        assert_eq!(s.rounds, 3);
        assert_eq!(
            s.ratio_pubsub,
            Some(Spread {
                median: 1.0,
                min: 0.75,
                max: 1.5
            })
        );
        assert_eq!(s.ratio_streams, None);
        assert_eq!(s.p99_ratio_pubsub, None);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["case"], "fan4-128B-max");
        assert_eq!(json["system"], "herald");
        assert_eq!(json["summary"], "rounds");
        assert_eq!(json["rounds"], 3);
        assert_eq!(json["ratio_pubsub"]["median"], 1.0);
        assert_eq!(json["ratio_pubsub"]["min"], 0.75);
        assert_eq!(json["ratio_pubsub"]["max"], 1.5);
        assert!(json["ratio_streams"].is_null());
        assert_eq!(RoundsSummary::of("catchup-128B", &rows), None);
        let mut table = Vec::new();
        write_rounds_table(&mut table, &all).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("1.00x (0.75–1.50)"), "{table}");
    }

    #[test]
    fn reads_peak_rss() {
        assert!(peak_rss_kib().unwrap_or(1) > 0);
        assert!(rss_kib().unwrap_or(1) > 0);
    }

    #[test]
    fn many_topics_rows_carry_ready_and_memory() {
        let case = &plan(100, 10, 10_000, &["topics1000-128B".into()], false)[0];
        let with_ready = |ms: u64| Measured {
            ready: Some(Duration::from_millis(ms)),
            subscriber_rss_kib: Some(2048),
            ..measured(1000)
        };
        let pubsub = Row::new(case, System::RedisPubsub, 1, &with_ready(20), None, &[]);
        let herald = Row::new(
            case,
            System::Herald,
            1,
            &with_ready(300),
            None,
            std::slice::from_ref(&pubsub),
        );
        assert_eq!(herald.ready_ratio_pubsub, Some(Some(15.0)));
        let json = serde_json::to_value(&herald).unwrap();
        for field in [
            "case",
            "system",
            "subscribers",
            "payload_bytes",
            "delivered_per_s",
            "p99_us",
            "lost",
            "publishers",
            "topics",
        ] {
            assert!(json.get(field).is_some(), "{field} missing: {json}");
        }
        assert_eq!(json["case"], "topics1000-128B");
        assert_eq!(json["subscribers"], 1);
        assert_eq!(json["topics"], 1000);
        assert_eq!(json["publishers"], 1);
        assert_eq!(json["ready_ms"], 300.0);
        assert_eq!(json["subscriber_rss_delta_kib"], 2048);
        assert_eq!(json["ready_ratio_pubsub"], 15.0);
        assert!(json.get("curves").is_none());
        let mut table = Vec::new();
        write_table(&mut table, &[pubsub, herald], false).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("ready ms"), "{table}");
        assert!(table.contains("15.00x"), "{table}");
    }

    #[test]
    fn work_rows_carry_workers_and_the_ratio_to_consumer_groups() {
        let case = &plan(100, 10, 10_000, &["work4-128B-max".into()], false)[0];
        let groups = Row::new(case, System::RedisStreams, 1, &measured(400), None, &[]);
        let herald = Row::new(
            case,
            System::Herald,
            1,
            &measured(200),
            None,
            std::slice::from_ref(&groups),
        );
        let json = serde_json::to_value(&herald).unwrap();
        assert_eq!(json["workers"], 4);
        assert_eq!(json["case"], "work4-128B-max");
        assert!(json["ratio_streams"].as_f64().is_some(), "{json}");
        let mut table = Vec::new();
        write_table(&mut table, &[groups, herald], false).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("work4-128B-max"), "{table}");
        let fan = &plan(100, 10, 10_000, &["fan4-128B-max".into()], false)[0];
        let row = Row::new(fan, System::RedisPubsub, 1, &measured(400), None, &[]);
        assert!(serde_json::to_value(&row).unwrap().get("workers").is_none());
    }

    #[test]
    fn fan_out_rows_have_no_ready_fields() {
        let case = &plan(100, 10, 10_000, &["pubs16-16topics".into()], false)[0];
        let row = Row::new(case, System::RedisPubsub, 1, &measured(400), None, &[]);
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["publishers"], 16);
        assert_eq!(json["topics"], 16);
        assert!(json.get("ready_ms").is_none());
        assert!(json.get("subscriber_rss_delta_kib").is_none());
    }
}
