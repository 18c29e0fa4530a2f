//! Charts of the results (`--charts DIR`): one SVG file per curve and measure.
//!
//! A *curve* is a family of cases that differ in one quantity (each case says which curves it
//! is a point of, [`crate::cases::Case::curve_points`]): subscribers of a fan-out at one
//! payload and rate, publishers over one or 16 topics, topics in one subscription, or the
//! payload at fan-out 4. For each curve and each measure (delivered/s, p99 latency and, for
//! the many-topics curve, the time to ready) a chart draws one line per system, the x axis
//! logarithmic (the points are 1, 4, 16, 64, 256 and the like). With several rounds a point is
//! the median of the rounds. Drawn with `plotters`' SVG backend only: no font files, text
//! stays SVG `<text>` for the viewer to render.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::cases::{size_label, Axis};
use super::report::{spread, Row};

/// What a chart's y axis shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measure {
    /// Deliveries per second, all subscribers together.
    Delivered,
    /// 99th percentile latency, µs.
    P99,
    /// Milliseconds from the subscribe call to ready.
    Ready,
}

impl Measure {
    const ALL: [Measure; 3] = [Measure::Delivered, Measure::P99, Measure::Ready];

    /// The row's value of this measure.
    fn of(self, row: &Row) -> Option<f64> {
        match self {
            Measure::Delivered => Some(row.delivered_per_s),
            Measure::P99 => row.p99_us.map(|v| v as f64),
            Measure::Ready => row.ready_ms,
        }
    }

    /// The file name suffix.
    fn slug(self) -> &'static str {
        match self {
            Measure::Delivered => "delivered",
            Measure::P99 => "p99",
            Measure::Ready => "ready",
        }
    }

    /// The y axis caption.
    fn caption(self) -> &'static str {
        match self {
            Measure::Delivered => "delivered/s (all subscribers)",
            Measure::P99 => "p99 latency, µs",
            Measure::Ready => "subscribe to ready, ms",
        }
    }
}

/// One system's line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    /// The system's name.
    pub(crate) system: &'static str,
    /// `(x, y)` in increasing x.
    pub(crate) points: Vec<(f64, f64)>,
}

/// One chart: a curve's measure, a line per system.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chart {
    /// The curve's name, e.g. `subscribers-128B-max`.
    pub(crate) curve: String,
    /// What x counts.
    pub(crate) axis: Axis,
    /// What y shows.
    pub(crate) measure: Measure,
    /// The lines, in the order the systems first ran (baselines first).
    pub(crate) series: Vec<Series>,
}

impl Chart {
    /// The file name: the curve and the measure, `/` spelt `-per-`
    /// (`subscribers-128B-10000-per-s-p99.svg`).
    pub(crate) fn file_name(&self) -> String {
        format!(
            "{}-{}.svg",
            self.curve.replace('/', "-per-"),
            self.measure.slug()
        )
    }
}

/// The charts of `rows`: every curve and measure with at least one value.
pub(crate) fn charts(rows: &[Row]) -> Vec<Chart> {
    let mut curves: Vec<(String, Axis)> = Vec::new();
    for row in rows {
        for p in &row.curves {
            if !curves.iter().any(|(c, _)| *c == p.curve) {
                curves.push((p.curve.clone(), p.axis));
            }
        }
    }
    let mut out = Vec::new();
    for (curve, axis) in curves {
        for measure in Measure::ALL {
            let series = series_of(rows, &curve, measure);
            if !series.is_empty() {
                out.push(Chart {
                    curve: curve.clone(),
                    axis,
                    measure,
                    series,
                });
            }
        }
    }
    out
}

/// The lines of `curve`'s `measure`: per system and x, the median over the rounds.
fn series_of(rows: &[Row], curve: &str, measure: Measure) -> Vec<Series> {
    let on_curve = |r: &&Row| r.curves.iter().find(|p| p.curve == curve).map(|p| p.x);
    let mut systems: Vec<&'static str> = Vec::new();
    for r in rows.iter().filter(|r| on_curve(r).is_some()) {
        if !systems.contains(&r.system) {
            systems.push(r.system);
        }
    }
    let mut out = Vec::new();
    for system in systems {
        let mut xs: Vec<f64> = rows
            .iter()
            .filter(|r| r.system == system)
            .filter_map(|r| on_curve(&r))
            .collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        let points: Vec<(f64, f64)> = xs
            .into_iter()
            .filter_map(|x| {
                let values = rows
                    .iter()
                    .filter(|r| r.system == system && on_curve(r) == Some(x))
                    .map(|r| measure.of(r));
                spread(values).map(|s| (x, s.median))
            })
            .collect();
        if !points.is_empty() {
            out.push(Series { system, points });
        }
    }
    out
}

/// The colour of a system's line.
fn colour(system: &str) -> RGBColor {
    match system {
        "herald" => RGBColor(214, 39, 40),
        "redis-pubsub" => RGBColor(31, 119, 180),
        "redis-streams" => RGBColor(44, 160, 44),
        _ => RGBColor(127, 127, 127),
    }
}

/// `chart` as an SVG document.
pub(crate) fn render_svg(chart: &Chart) -> Result<String, String> {
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), &(x, _)| {
        (lo.min(x), hi.max(x))
    });
    if !(x_min > 0.0 && x_max >= x_min) {
        return Err(format!("chart {} has no positive x", chart.curve));
    }
    // The x axis is labelled at the cases' own x values (1, 4, 16, 64, 256, ...).
    let mut xs: Vec<f64> = points().map(|&(x, _)| x).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    // Some room either side on the logarithmic axis (and a range for a single point).
    x_min /= 1.5;
    x_max *= 1.5;
    let y_max = points().map(|&(_, y)| y).fold(0.0, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let title = format!("{}: {}", chart.curve, chart.measure.caption());
        let mut plot = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(84)
            .build_cartesian_2d(
                (x_min..x_max).log_scale().with_key_points(xs.clone()),
                0.0..y_max,
            )
            .map_err(|e| e.to_string())?;
        let axis = chart.axis;
        plot.configure_mesh()
            .x_desc(chart.axis.caption())
            .y_desc(chart.measure.caption())
            .x_label_formatter(&|x| match axis {
                Axis::Payload => size_label(*x as usize),
                _ => format!("{x:.0}"),
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        for s in &chart.series {
            let c = colour(s.system);
            plot.draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.system)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            plot.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(|e| e.to_string())?;
        }
        plot.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Writes every chart of `rows` into `dir` (created if missing); returns the files written.
pub(crate) fn write_charts(dir: &Path, rows: &[Row]) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for chart in charts(rows) {
        let svg = render_svg(&chart).map_err(std::io::Error::other)?;
        let path = dir.join(chart.file_name());
        std::fs::write(&path, svg)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::{plan, Measured, System};
    use std::time::Duration;

    fn measured(delivered: u64, p99: Option<u64>, ready_ms: Option<u64>) -> Measured {
        let latency = p99.map(|v| {
            let mut h = crate::cases::new_histogram().unwrap();
            h.record(v).unwrap();
            h
        });
        Measured {
            published: delivered,
            publish_elapsed: Duration::from_secs(1),
            expected: delivered,
            delivered,
            deliver_elapsed: Duration::from_secs(1),
            latency,
            duplicates: 0,
            reordered: 0,
            errors: 0,
            first_error: None,
            ready: ready_ms.map(Duration::from_millis),
            subscriber_rss_kib: ready_ms.map(|_| 100),
        }
    }

    /// Rows of the fan-out 4 and 16 cases at 128 B full speed, for every system.
    fn fan_out_rows() -> Vec<Row> {
        let cases = plan(
            100,
            10,
            10_000,
            &["fan4-128B-max".into(), "fan16-128B-max".into()],
            false,
        );
        let mut rows = Vec::new();
        for case in &cases {
            let scale = case.subscribers() as u64;
            for (system, rate) in [
                (System::RedisPubsub, 1000),
                (System::RedisStreams, 800),
                (System::Herald, 1200),
            ] {
                let m = measured(rate * scale, Some(100 * scale), None);
                rows.push(Row::new(case, system, 1, &m, None, &[]));
            }
        }
        rows
    }

    #[test]
    fn groups_rows_into_curves_with_a_line_per_system() {
        let rows = fan_out_rows();
        let charts = charts(&rows);
        let names: Vec<String> = charts.iter().map(Chart::file_name).collect();
        assert_eq!(
            names,
            [
                "subscribers-128B-max-delivered.svg",
                "subscribers-128B-max-p99.svg",
                "payload-fan4-max-delivered.svg",
                "payload-fan4-max-p99.svg",
            ]
        );
        let delivered = &charts[0];
        assert_eq!(delivered.axis, Axis::Subscribers);
        let systems: Vec<&str> = delivered.series.iter().map(|s| s.system).collect();
        assert_eq!(systems, ["redis-pubsub", "redis-streams", "herald"]);
        assert_eq!(delivered.series[2].points, [(4.0, 4800.0), (16.0, 19200.0)]);
        let p99 = &charts[1];
        assert_eq!(p99.series[0].points.len(), 2);
        assert_eq!(p99.series[0].points[0].0, 4.0);
        // The payload curve has only the 128 B point here.
        assert_eq!(charts[2].series[0].points, [(128.0, 4000.0)]);
    }

    #[test]
    fn rounds_are_medians_and_rates_become_file_names() {
        let case = &plan(100, 10, 10_000, &["fan1-4KiB-10000/s".into()], false)[0];
        let rows: Vec<Row> = [100, 300, 200]
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                Row::new(
                    case,
                    System::Herald,
                    i as u32 + 1,
                    &measured(d, None, None),
                    None,
                    &[],
                )
            })
            .collect();
        let charts = charts(&rows);
        assert_eq!(charts.len(), 1, "no p99 without latencies");
        assert_eq!(
            charts[0].file_name(),
            "subscribers-4KiB-10000-per-s-delivered.svg"
        );
        assert_eq!(charts[0].series[0].points, [(1.0, 200.0)]);
    }

    #[test]
    fn many_topics_charts_include_the_time_to_ready() {
        let filters = ["topics1000-".into(), "topics10000-".into()];
        let cases = plan(100, 10, 10_000, &filters, false);
        let mut rows = Vec::new();
        for case in &cases {
            for system in [System::RedisPubsub, System::Herald] {
                let m = measured(1000, Some(50), Some(case.topics() as u64 / 10));
                rows.push(Row::new(case, system, 1, &m, None, &[]));
            }
        }
        let charts = charts(&rows);
        let ready = charts.iter().find(|c| c.measure == Measure::Ready).unwrap();
        assert_eq!(ready.file_name(), "topics-128B-ready.svg");
        assert_eq!(ready.series[1].points, [(1000.0, 100.0), (10000.0, 1000.0)]);
    }

    #[test]
    fn renders_well_formed_svg_with_the_series() {
        let rows = fan_out_rows();
        for chart in charts(&rows) {
            let svg = render_svg(&chart).unwrap();
            let doc = roxmltree::Document::parse(&svg).unwrap();
            let root = doc.root_element();
            assert_eq!(root.tag_name().name(), "svg");
            let texts: Vec<String> = doc
                .descendants()
                .filter(|n| n.has_tag_name("text"))
                .filter_map(|n| n.text())
                .map(|t| t.trim().to_string())
                .collect();
            for system in ["herald", "redis-pubsub", "redis-streams"] {
                assert!(texts.iter().any(|t| t == system), "{system} in {texts:?}");
            }
            assert!(texts.iter().any(|t| t.contains(chart.axis.caption())));
            // The x axis is labelled at the cases' x values.
            let labels: &[&str] = match chart.axis {
                Axis::Payload => &["128B"],
                _ => &["4", "16"],
            };
            for label in labels {
                assert!(texts.iter().any(|t| t == label), "{label} in {texts:?}");
            }
            // One polyline per system (the lines) besides the legend's.
            let lines = doc
                .descendants()
                .filter(|n| n.has_tag_name("polyline"))
                .count();
            assert!(lines >= chart.series.len(), "{lines} polylines");
        }
    }

    #[test]
    fn writes_one_file_per_chart() {
        let dir = std::env::temp_dir().join(format!("herald-bench-charts-{}", std::process::id()));
        let files = write_charts(&dir, &fan_out_rows()).unwrap();
        assert_eq!(files.len(), 4);
        for f in &files {
            let svg = std::fs::read_to_string(f).unwrap();
            assert!(svg.starts_with("<svg"), "{}", f.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
