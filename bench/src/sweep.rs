//! The latency-versus-throughput sweep: PlaceReservation end to end through the edge at rising
//! concurrency, as a table and as a picture (an SVG of its own making: two panels, throughput
//! and latency against concurrency on a log-2 axis, one line per storage).

use serde::Serialize;

use crate::report::cpu_ms_per_op;
use crate::stats::Summary;

/// One concurrency level of the sweep.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SweepPoint {
    /// Workers (calls in flight).
    pub(crate) concurrency: usize,
    /// Successful calls per second.
    pub(crate) rps: f64,
    /// Latency percentiles of the successful calls, ms.
    pub(crate) p50_ms: f64,
    /// 99th percentile, ms.
    pub(crate) p99_ms: f64,
    /// Failed calls.
    pub(crate) errors: u64,
    /// CPU of the mesh per successful call, ms.
    pub(crate) cpu_ms_per_op: Option<f64>,
    /// CPU each process used, % of one core.
    pub(crate) cpu_percent: Vec<(String, f64)>,
}

impl SweepPoint {
    /// The point `summary` gives at `concurrency`, with the CPU each process used meanwhile.
    pub(crate) fn new(concurrency: usize, summary: &Summary, cpu_percent: Vec<(String, f64)>) -> Self {
        Self {
            concurrency,
            rps: summary.rps,
            p50_ms: summary.p50_ms,
            p99_ms: summary.p99_ms,
            errors: summary.errors,
            cpu_ms_per_op: cpu_ms_per_op(&cpu_percent, summary.rps),
            cpu_percent,
        }
    }
}

/// The sweeps as one table, a block per storage.
pub(crate) fn render(sweeps: &[(&str, &[SweepPoint])]) -> String {
    let mut out = format!(
        "{:<44} {:>4} {:>9} {:>7} {:>7} {:>6} {:>10}\n",
        "sweep: PlaceReservation e2e via edge", "conc", "rps", "p50 ms", "p99 ms", "errors", "CPU ms/op"
    );
    for (storage, points) in sweeps {
        for p in *points {
            out.push_str(&format!(
                "{:<44} {:>4} {:>9.0} {:>7.2} {:>7.2} {:>6} {:>10}\n",
                format!("  on {storage}"),
                p.concurrency,
                p.rps,
                p.p50_ms,
                p.p99_ms,
                p.errors,
                p.cpu_ms_per_op.map_or_else(|| "?".to_owned(), |ms| format!("{ms:.2}"))
            ));
        }
    }
    out
}

/// Panel geometry, in SVG user units.
const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 260.0;
const MARGIN_L: f64 = 64.0;
const MARGIN_T: f64 = 36.0;
const MARGIN_B: f64 = 44.0;
const GAP: f64 = 40.0;
/// One colour per storage (in the latency panel p99 solid, p50 dashed).
const COLOURS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * magnitude)
}

/// One line of a panel.
struct Line {
    label: String,
    colour: &'static str,
    dashed: bool,
    /// (concurrency, value), by concurrency.
    points: Vec<(usize, f64)>,
}

/// One panel: its lines over the sweep's levels.
struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    left: f64,
    levels: &'a [usize],
    lines: Vec<Line>,
}

impl Panel<'_> {
    fn draw(&self, out: &mut String) {
        let (x0, y0) = (self.left + MARGIN_L, MARGIN_T);
        let (w, h) = (PANEL_W - MARGIN_L - 16.0, PANEL_H - MARGIN_T - MARGIN_B);
        let top = nice_ceiling(self.lines.iter().flat_map(|l| l.points.iter().map(|(_, v)| *v)).fold(0.0, f64::max));
        let (lo, hi) = (
            self.levels.iter().copied().min().unwrap_or(1).max(1) as f64,
            self.levels.iter().copied().max().unwrap_or(2).max(2) as f64,
        );
        let span = (hi.log2() - lo.log2()).max(1.0);
        let x = |c: usize| x0 + ((c.max(1) as f64).log2() - lo.log2()) / span * w;
        let y = |v: f64| y0 + h - (v / top).clamp(0.0, 1.0) * h;
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
            x0, self.title
        ));
        out.push_str(&format!(
            "<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"none\" stroke=\"#999\"/>\n"
        ));
        for i in 0..=4 {
            let v = top * f64::from(i) / 4.0;
            let yy = y(v);
            out.push_str(&format!(
                "<line x1=\"{x0:.1}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n",
                x0 + w,
                x0 - 6.0,
                yy + 4.0,
                format_tick(v)
            ));
        }
        for &c in self.levels {
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{c}</text>\n",
                x(c),
                y0 + h + 16.0
            ));
        }
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">concurrency (calls in flight)</text>\n",
            x0 + w / 2.0,
            y0 + h + 34.0
        ));
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 {:.1} {:.1})\">{}</text>\n",
            self.left + 14.0,
            y0 + h / 2.0,
            self.left + 14.0,
            y0 + h / 2.0,
            self.unit
        ));
        for (i, line) in self.lines.iter().enumerate() {
            line.draw(out, i, (x0, y0), &x, &y);
        }
    }
}

impl Line {
    /// The line, a dot per point and its legend entry (the `i`-th) at the panel's corner `origin`.
    fn draw(&self, out: &mut String, i: usize, origin: (f64, f64), x: &dyn Fn(usize) -> f64, y: &dyn Fn(f64) -> f64) {
        let (x0, y0) = origin;
        let Line {
            label,
            colour,
            dashed,
            points,
        } = self;
        let path: Vec<String> = points.iter().map(|(c, v)| format!("{:.1},{:.1}", x(*c), y(*v))).collect();
        let dash = if *dashed { " stroke-dasharray=\"5 4\"" } else { "" };
        out.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\n",
            path.join(" ")
        ));
        for (c, v) in points {
            out.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>\n",
                x(*c),
                y(*v)
            ));
        }
        let ly = y0 + 14.0 + 15.0 * i as f64;
        out.push_str(&format!(
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\n<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{label}</text>\n",
            x0 + 10.0,
            ly - 4.0,
            x0 + 30.0,
            ly - 4.0,
            x0 + 36.0,
            ly
        ));
    }
}

fn format_tick(v: f64) -> String {
    let (v, suffix) = if v >= 1000.0 { (v / 1000.0, "k") } else { (v, "") };
    // At most two decimals, none trailing: 1250 -> 1.25k, 0.25 -> 0.25, 500 -> 500.
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

/// The picture: throughput (left) and latency (right, p99 solid, p50 dashed) against
/// concurrency, one colour per storage.
pub(crate) fn svg(sweeps: &[(&str, &[SweepPoint])]) -> String {
    let mut levels: Vec<usize> = sweeps.iter().flat_map(|(_, ps)| ps.iter().map(|p| p.concurrency)).collect();
    levels.sort_unstable();
    levels.dedup();
    let line = |label: String, colour, dashed, points: &[SweepPoint], value: fn(&SweepPoint) -> f64| Line {
        label,
        colour,
        dashed,
        points: points.iter().map(|p| (p.concurrency, value(p))).collect(),
    };
    let throughput = Panel {
        title: "PlaceReservation e2e: throughput",
        unit: "reservations / s",
        left: 0.0,
        levels: &levels,
        lines: sweeps
            .iter()
            .zip(COLOURS)
            .map(|((storage, ps), colour)| line((*storage).to_owned(), colour, false, ps, |p| p.rps))
            .collect(),
    };
    let latency = Panel {
        title: "PlaceReservation e2e: latency",
        unit: "ms",
        left: PANEL_W + GAP,
        levels: &levels,
        lines: sweeps
            .iter()
            .zip(COLOURS)
            .flat_map(|((storage, ps), colour)| {
                [
                    line(format!("{storage} p99"), colour, false, ps, |p| p.p99_ms),
                    line(format!("{storage} p50"), colour, true, ps, |p| p.p50_ms),
                ]
            })
            .collect(),
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{PANEL_H:.0}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * PANEL_W + GAP
    );
    throughput.draw(&mut out);
    latency.draw(&mut out);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(concurrency: usize, rps: f64, p99_ms: f64) -> SweepPoint {
        SweepPoint {
            concurrency,
            rps,
            p50_ms: p99_ms / 2.0,
            p99_ms,
            errors: 0,
            cpu_ms_per_op: Some(1.0),
            cpu_percent: Vec::new(),
        }
    }

    #[test]
    fn ticks_read_as_written() {
        assert_eq!(format_tick(0.0), "0");
        assert_eq!(format_tick(0.25), "0.25");
        assert_eq!(format_tick(500.0), "500");
        assert_eq!(format_tick(1250.0), "1.25k");
        assert_eq!(format_tick(2000.0), "2k");
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(nice_ceiling(230.0), 500.0);
        assert_eq!(nice_ceiling(500.0), 500.0);
    }

    #[test]
    fn draws_a_line_and_a_dot_per_point_for_each_storage() {
        let sqlite = [point(1, 50.0, 5.0), point(4, 150.0, 20.0), point(16, 200.0, 90.0)];
        let pg = [point(1, 30.0, 8.0), point(4, 100.0, 30.0), point(16, 120.0, 140.0)];
        let svg = svg(&[("SQLite", &sqlite), ("PostgreSQL", &pg)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // Throughput: one line per storage; latency: p99 and p50 per storage.
        assert_eq!(svg.matches("<polyline").count(), 2 + 4);
        assert_eq!(svg.matches("<circle").count(), 3 * 6);
        assert!(svg.contains(">PostgreSQL p99<") && svg.contains(">SQLite<"));
        let table = render(&[("SQLite", &sqlite), ("PostgreSQL", &pg)]);
        assert_eq!(table.lines().count(), 1 + 6);
        assert!(table.contains("on PostgreSQL"));
    }
}
