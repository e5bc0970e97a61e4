//! The results: the machine, then per storage a table per kind of figure (throughput/latency,
//! event lag, memory, start-up) with each target met or missed, the sweep, and the same as JSON.

use std::io::Write;

use serde::Serialize;

use crate::scenarios::LagReport;
use crate::stats::Summary;
use crate::sweep::{self, SweepPoint};

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// Logical CPUs available to the process.
    pub(crate) cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// `MemTotal` from /proc/meminfo, MiB.
    pub(crate) memory_mib: u64,
    /// `uname -r`-like kernel release, when readable.
    pub(crate) kernel: String,
    /// 1-minute load average when the run started: well above 0 means someone else is busy.
    pub(crate) load_average: f64,
}

impl Machine {
    /// Reads /proc.
    pub(crate) fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_mib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or_default(),
        }
    }
}

/// A target figure and whether it was reached.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    /// What was aimed at, e.g. `>= 0.5x baseline`.
    pub(crate) goal: String,
    /// Reached or not.
    pub(crate) met: bool,
}

impl Target {
    /// `goal`, reached when `met`.
    pub(crate) fn new(goal: impl Into<String>, met: bool) -> Self {
        Self { goal: goal.into(), met }
    }

    fn cell(target: Option<&Target>) -> String {
        target.map_or_else(
            || "-".to_owned(),
            |t| format!("{}: {}", if t.met { "met" } else { "MISSED" }, t.goal),
        )
    }
}

/// One throughput/latency row.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// What ran.
    pub(crate) name: String,
    /// Workers (calls in flight).
    pub(crate) concurrency: usize,
    /// The measurement.
    #[serde(flatten)]
    pub(crate) summary: Summary,
    /// Throughput relative to the baseline's.
    pub(crate) x_baseline: f64,
    /// The target, if this row has one.
    pub(crate) target: Option<Target>,
    /// CPU each process used during the scenario (warm-up included), % of one core.
    pub(crate) cpu_percent: Vec<(String, f64)>,
    /// Seconds after the window until every event consumer had caught up (writes only).
    pub(crate) backlog_drained_s: Option<f64>,
    /// CPU of the mesh's processes (services, NATS and a local PostgreSQL; not the load
    /// generator) per successful operation, ms (writes only).
    pub(crate) cpu_ms_per_op: Option<f64>,
}

impl Row {
    /// Fills [`Row::cpu_ms_per_op`] from the row's CPU use and throughput.
    pub(crate) fn with_cpu_per_op(mut self) -> Self {
        self.cpu_ms_per_op = cpu_ms_per_op(&self.cpu_percent, self.summary.rps);
        self
    }
}

/// CPU of the mesh's processes (all of `cpu_percent` but the load generator and the rest of the
/// machine) per operation at `rps`, in ms; `None` when nothing succeeded.
pub(crate) fn cpu_ms_per_op(cpu_percent: &[(String, f64)], rps: f64) -> Option<f64> {
    let mesh_percent: f64 = cpu_percent
        .iter()
        .filter(|(name, _)| name != "bench" && name != "other")
        .map(|(_, p)| p)
        .sum();
    (rps > 0.0).then(|| mesh_percent / 100.0 / rps * 1000.0)
}

/// Resident memory of one service.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Memory {
    /// The context.
    pub(crate) service: String,
    /// Right after start-up (all services up, no load yet), MiB.
    pub(crate) idle_mib: Option<f64>,
    /// After every load scenario, MiB.
    pub(crate) after_load_mib: Option<f64>,
    /// The anonymous part of `idle_mib` (`RssAnon`: heap, caches, stacks), MiB.
    pub(crate) idle_anon_mib: Option<f64>,
    /// The anonymous part of `after_load_mib`, MiB.
    pub(crate) after_load_anon_mib: Option<f64>,
    /// `< 40 MiB after load`.
    pub(crate) target: Target,
}

/// Start-up time of one service.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Startup {
    /// The context.
    pub(crate) service: String,
    /// From spawn to the first SERVING health answer, ms.
    pub(crate) ms: f64,
    /// `< 300 ms`.
    pub(crate) target: Target,
}

/// Everything measured on one storage.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pass {
    /// `SQLite` or `PostgreSQL`.
    pub(crate) storage: String,
    /// Throughput and latency, baseline first (on the first storage only).
    pub(crate) rows: Vec<Row>,
    /// Commit -> read model.
    pub(crate) event_lag: Option<LagReport>,
    /// The lag target.
    pub(crate) event_lag_target: Option<Target>,
    /// CPU each process used during the lag run, % of one core.
    pub(crate) event_lag_cpu_percent: Vec<(String, f64)>,
    /// PlaceReservation at rising concurrency.
    pub(crate) sweep: Vec<SweepPoint>,
    /// RSS per service.
    pub(crate) memory: Vec<Memory>,
    /// Start-up per service.
    pub(crate) startup: Vec<Startup>,
}

/// How much slower than the first storage another may be and still meet its targets.
const OTHER_STORAGE_SHARE: f64 = 0.5;

impl Pass {
    /// Replaces each row's and the lag's target with "at least half of `first`'s figure" (the
    /// same row on the first storage; latency at most twice).
    pub(crate) fn aim_at(&mut self, first: &Pass) {
        let share = OTHER_STORAGE_SHARE;
        for row in &mut self.rows {
            if let Some(theirs) = first.rows.iter().find(|r| r.name == row.name) {
                let x = row.summary.rps / theirs.summary.rps.max(f64::EPSILON);
                row.target = Some(Target::new(
                    format!(">= {share}x {} (is {x:.2}x)", first.storage),
                    x >= share && row.summary.count > 0,
                ));
            }
        }
        if let (Some(lag), Some(theirs)) = (&self.event_lag, &first.event_lag) {
            let limit = theirs.p99_ms / share;
            self.event_lag_target = Some(Target::new(
                format!("p99 <= {limit:.1} ms, {:.0}x {}'s", 1.0 / share, first.storage),
                lag.p99_ms <= limit && lag.seen > 0 && lag.not_seen == 0,
            ));
        }
    }

    fn targets(&self) -> impl Iterator<Item = &Target> {
        self.rows
            .iter()
            .filter_map(|r| r.target.as_ref())
            .chain(self.event_lag_target.as_ref())
            .chain(self.memory.iter().map(|m| &m.target))
            .chain(self.startup.iter().map(|s| &s.target))
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Where.
    pub(crate) machine: Machine,
    /// The `sharemesh` binary measured.
    pub(crate) binary: String,
    /// With which settings (the command-line flags).
    pub(crate) settings: serde_json::Value,
    /// SQLite, then PostgreSQL when asked for.
    pub(crate) passes: Vec<Pass>,
    /// What could not be measured (a failed PostgreSQL pass).
    pub(crate) failures: Vec<String>,
    /// Targets met / all targets.
    pub(crate) targets_met: String,
    /// Total run time, seconds.
    pub(crate) total_s: f64,
}

/// `cpu % of a core: bench 95, nats 3, ...` (only processes above 0.5%).
fn cpu_line(cpu: &[(String, f64)]) -> String {
    let parts: Vec<String> = cpu
        .iter()
        .filter(|(_, p)| *p >= 0.5)
        .map(|(name, p)| format!("{name} {p:.0}"))
        .collect();
    let total: f64 = cpu.iter().filter(|(name, _)| name != "other").map(|(_, p)| p).sum();
    format!("cpu % of a core: {} (bench + mesh {total:.0})", parts.join(", "))
}

/// Appends `s` and a newline.
fn line(out: &mut String, s: String) {
    out.push_str(&s);
    out.push('\n');
}

fn opt_mib(v: Option<f64>) -> String {
    v.map_or_else(|| "?".to_owned(), |m| format!("{m:.1}"))
}

impl Report {
    /// Counts the targets met.
    pub(crate) fn count_targets(&mut self) {
        let all: Vec<&Target> = self.passes.iter().flat_map(Pass::targets).collect();
        let met = all.iter().filter(|t| t.met).count();
        self.targets_met = format!("{met}/{}", all.len());
    }

    /// The machine line, printed before the run starts.
    pub(crate) fn machine_line(machine: &Machine) -> String {
        format!(
            "machine: {} CPUs ({}), {} MiB RAM, Linux {}, load average {:.2} at start",
            machine.cpus, machine.cpu_model, machine.memory_mib, machine.kernel, machine.load_average
        )
    }

    /// The tables: each storage's, then the sweeps side by side.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for pass in &self.passes {
            line(&mut out, format!("== on {} ==", pass.storage));
            pass.render(&mut out);
        }
        if self.has_sweep() {
            out.push_str(&sweep::render(&self.sweeps()));
            out.push('\n');
        }
        for failure in &self.failures {
            line(&mut out, format!("FAILED: {failure}"));
        }
        line(
            &mut out,
            format!("targets met: {}   (total run {:.0} s)", self.targets_met, self.total_s),
        );
        out
    }

    /// Each storage's sweep.
    fn sweeps(&self) -> Vec<(&str, &[SweepPoint])> {
        self.passes.iter().map(|p| (p.storage.as_str(), p.sweep.as_slice())).collect()
    }

    /// Whether a sweep ran.
    pub(crate) fn has_sweep(&self) -> bool {
        self.passes.iter().any(|p| !p.sweep.is_empty())
    }

    /// Writes the sweep's picture (parent directories created); nothing when no sweep ran.
    pub(crate) fn write_sweep_svg(&self, path: &std::path::Path) -> Result<(), String> {
        if !self.has_sweep() {
            return Ok(());
        }
        write_file(path, sweep::svg(&self.sweeps()).as_bytes())
    }

    /// Writes the JSON file (parent directories created).
    pub(crate) fn write_json(&self, path: &std::path::Path) -> Result<(), String> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| format!("JSON: {e}"))?;
        json.push(b'\n');
        write_file(path, &json)
    }
}

/// Writes `bytes` to `path`, creating its parent directories.
fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(bytes).map_err(|e| format!("{}: {e}", path.display()))
}

impl Pass {
    /// This storage's tables.
    fn render(&self, out: &mut String) {
        self.render_rows(out);
        if let Some(lag) = &self.event_lag {
            out.push('\n');
            self.render_lag(out, lag);
        }
        out.push('\n');
        self.render_memory(out);
        out.push('\n');
        self.render_startup(out);
        out.push('\n');
    }

    /// The throughput / latency table, each row with its notes (errors, CPU, drain).
    fn render_rows(&self, out: &mut String) {
        line(
            out,
            format!(
                "{:<44} {:>4} {:>8} {:>9} {:>7} {:>7} {:>7} {:>8} {:>6} {:>7}  {}",
                "throughput / latency", "conc", "count", "rps", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "x base", "target"
            ),
        );
        for r in &self.rows {
            let s = &r.summary;
            line(
                out,
                format!(
                    "{:<44} {:>4} {:>8} {:>9.0} {:>7.2} {:>7.2} {:>7.2} {:>8.2} {:>6} {:>6.3}x  {}",
                    r.name,
                    r.concurrency,
                    s.count,
                    s.rps,
                    s.p50_ms,
                    s.p90_ms,
                    s.p99_ms,
                    s.max_ms,
                    s.errors,
                    r.x_baseline,
                    Target::cell(r.target.as_ref())
                ),
            );
            if !s.errors_by_code.is_empty() {
                let codes: Vec<String> = s.errors_by_code.iter().map(|(c, n)| format!("{c}={n}")).collect();
                line(out, format!("{:<44}   errors by code: {}", "", codes.join(", ")));
            }
            line(out, format!("{:<44}   {}", "", cpu_line(&r.cpu_percent)));
            if let Some(ms) = r.cpu_ms_per_op {
                line(
                    out,
                    format!(
                        "{:<44}   CPU of the mesh (services, NATS, PostgreSQL) per operation: {ms:.2} ms",
                        ""
                    ),
                );
            }
            if let Some(drained) = r.backlog_drained_s {
                line(
                    out,
                    format!("{:<44}   event consumers caught up {drained:.1} s after the window", ""),
                );
            }
        }
    }

    /// The event-lag table and its notes.
    fn render_lag(&self, out: &mut String, lag: &LagReport) {
        line(
            out,
            format!(
                "{:<44} {:>6} {:>8} {:>6} {:>6} {:>7} {:>7} {:>7} {:>8}  {}",
                "event lag (commit -> view MyPage)",
                "res/s",
                "events/s",
                "placed",
                "seen",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "target"
            ),
        );
        line(
            out,
            format!(
                "{:<44} {:>6.0} {:>8} {:>6} {:>6} {:>7.2} {:>7.2} {:>7.2} {:>8.2}  {}",
                "PlaceReservation (direct) -> CONFIRMED in view",
                lag.achieved_rate,
                lag.events_per_s.map_or_else(|| "?".to_owned(), |e| format!("{e:.0}")),
                lag.placed,
                lag.seen,
                lag.p50_ms,
                lag.p90_ms,
                lag.p99_ms,
                lag.max_ms,
                Target::cell(self.event_lag_target.as_ref())
            ),
        );
        let mut notes = vec![
            format!("{:.1} events per reservation", lag.events_per_reservation.unwrap_or_default()),
            format!("asked {:.0} reservations/s", lag.rate),
            format!("poll every {:.0} ms", lag.poll_interval_ms),
            format!(
                "PlaceReservation p50 {:.2} ms p99 {:.2} ms at this rate",
                lag.place_p50_ms, lag.place_p99_ms
            ),
        ];
        if lag.not_seen > 0 {
            notes.push(format!("{} never seen", lag.not_seen));
        }
        if !lag.errors_by_code.is_empty() {
            let codes: Vec<String> = lag.errors_by_code.iter().map(|(c, n)| format!("{c}={n}")).collect();
            notes.push(format!("errors: {}", codes.join(", ")));
        }
        line(out, format!("{:<44}   {}", "", notes.join("; ")));
        line(out, format!("{:<44}   {}", "", cpu_line(&self.event_lag_cpu_percent)));
    }

    /// Resident memory per service.
    fn render_memory(&self, out: &mut String) {
        line(
            out,
            format!(
                "{:<44} {:>9} {:>14} {:>16}  {}",
                "resident memory (VmRSS)", "idle MiB", "after load MiB", "of it anonymous", "target"
            ),
        );
        for m in &self.memory {
            line(
                out,
                format!(
                    "{:<44} {:>9} {:>14} {:>16}  {}",
                    m.service,
                    opt_mib(m.idle_mib),
                    opt_mib(m.after_load_mib),
                    format!("{} -> {}", opt_mib(m.idle_anon_mib), opt_mib(m.after_load_anon_mib)),
                    Target::cell(Some(&m.target))
                ),
            );
        }
    }

    /// Start-up time per service.
    fn render_startup(&self, out: &mut String) {
        line(
            out,
            format!("{:<44} {:>9}  {}", "start-up (spawn -> health SERVING)", "ms", "target"),
        );
        for s in &self.startup {
            line(out, format!("{:<44} {:>9.1}  {}", s.service, s.ms, Target::cell(Some(&s.target))));
        }
    }
}
