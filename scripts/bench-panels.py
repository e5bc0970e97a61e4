#!/usr/bin/env python3
"""The dashboard's main panels over a bench run, as one SVG (`make bench-panels`).

1. Starts Debian's `prometheus` (installed when missing, as `make observability-check` does)
   scraping every second whatever `sharemesh-bench --metrics-targets` lists: each service process
   the bench starts, `job` = `sharemesh-<context>` as the chart's ServiceMonitor labels them.
2. Runs the bench (`$BENCH_BIN $BENCH_ARGS`; its table goes to stdout as usual), noting when each
   scenario starts from its progress lines.
3. Asks Prometheus's `/api/v1/query_range` for the PromQL of the main panels of
   helm/sharemesh/files/dashboard.json, taken from the dashboard itself (Grafana's
   `$__rate_interval` becomes 4 s: four scrape intervals, what Grafana picks at a 1 s scrape), and
   draws their answers (`bench/panels.svg`, no third-party packages): one chart per panel with
   the panel's title, unit and legend, the bench's scenarios shaded behind.
"""
from __future__ import annotations

import html
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(REPO, "helm", "sharemesh", "files", "dashboard.json")
OUT = os.environ.get("BENCH_PANELS_OUT", os.path.join(REPO, "bench", "panels.svg"))
BENCH_BIN = os.environ.get("BENCH_BIN", os.path.join(REPO, "target", "release", "sharemesh-bench"))
RATE_INTERVAL = "4s"
# The panels drawn, by their dashboard titles, in reading order (two per row).
PANELS = [
    "Requests per second by service (scrape job)",
    "Error ratio by method",
    "Latency p50 / p95 / p99",
    "Saga outcomes",
    "Outbox backlog",
    "Consumer pending",
    "Inbox lag p99",
    "Circuit state",
]
# Axis labels where the dashboard's unit (`short`) does not say what is counted.
AXES = {
    "Saga outcomes": f"sagas ended per {RATE_INTERVAL}",
    "Outbox backlog": "events not yet published",
    "Consumer pending": "events not yet applied",
    "Circuit state": "0 closed, 1 half-open, 2 open",
}
# Grafana's classic palette.
COLORS = ["#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
          "#508642", "#CCA300", "#447EBC", "#C15C17"]

# What the observability check already knows: installing prometheus, free ports, HTTP, waiting.
_spec = importlib.util.spec_from_file_location("obs", os.path.join(REPO, "scripts", "observability-check.py"))
obs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(obs)


def run_bench(targets: str) -> tuple[float, float, list[tuple[str, str, float]]]:
    """Runs the bench; returns its start and end (Unix time) and each scenario's number, name and
    start, from its progress lines (`bench: 2 GetListing direct to catalog: 64 workers ...`)."""
    # The numbered scenarios on SQLite only: the panels show one mesh, scenario by scenario.
    args = [BENCH_BIN, "--sweep=", *os.environ.get("BENCH_ARGS", "").split(), "--metrics-targets", targets]
    print(f"bench-panels: {' '.join(args)}", flush=True)
    phases: list[tuple[str, str, float]] = []
    start = time.time()
    env = {**os.environ, "SHAREMESH_BENCH_POSTGRES": ""}
    bench = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    for line in bench.stderr:
        sys.stderr.write(line)
        m = re.match(r"bench: (\d+b?) ([^:]+)", line)
        if m:
            # "(REST/JSON, HTTP/1.1 pool)" -> "(REST/JSON)"
            phases.append((m.group(1), re.sub(r"\(([^,)]*)[^)]*\)", r"(\1)", m.group(2).strip()), time.time()))
    if bench.wait() != 0:
        raise SystemExit(f"bench-panels: the bench failed (exit {bench.returncode})")
    return start, time.time(), phases


def query_range(api: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    status, res = obs.http("GET", f"{api}/query_range?{q}")
    if status != 200:
        raise SystemExit(f"bench-panels: Prometheus answered {status} to {expr}: {res}")
    return res["data"]["result"]


def legend(fmt: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt or "") or json.dumps(labels)


# === the drawing ===

def nice_ticks(top: float, n: int = 4) -> list[float]:
    """0 and up to n round steps reaching `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:.3g}"


def scale_for(unit: str, top: float) -> tuple[float, str]:
    """Multiplier and axis label for a Grafana unit (`short`: none)."""
    if unit == "percentunit":
        return 100.0, "% of calls"
    if unit == "s":
        return (1000.0, "ms") if top < 1 else (1.0, "s")
    if unit == "reqps":
        return 1.0, "requests/s"
    if unit == "ops":
        return 1.0, "per second"
    return 1.0, ""


def esc(s: str) -> str:
    return html.escape(s, quote=True)


def draw_panel(x0: float, y0: float, w: float, h: float, panel: dict, answers: list[tuple[str, list]],
               t0: float, t1: float, phases: list[tuple[str, float, float]]) -> list[str]:
    out = [f'<g transform="translate({x0},{y0})">',
           f'<title>{esc(chr(10).join(t["expr"] for t in panel["targets"]))}</title>',
           f'<rect width="{w}" height="{h}" fill="#ffffff" stroke="#d8d9da"/>',
           f'<text x="10" y="20" class="title">{esc(panel["title"])}</text>']
    left, right, top, bottom = 52, 10, 32, 64
    pw, ph = w - left - right, h - top - bottom
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    values = [v for _, pts in answers for _, v in pts if v is not None]
    peak = max(values, default=0.0)
    mult, axis = scale_for(unit, peak)
    ticks = [0.0, 1.0, 2.0] if panel["title"] == "Circuit state" else nice_ticks(peak * mult * 1.05 if peak > 0 else 1.0)
    ymax = ticks[-1]
    sx = lambda t: left + (t - t0) / (t1 - t0) * pw
    sy = lambda v: top + ph - (v * mult) / ymax * ph
    # The bench's scenarios behind the lines.
    for i, (name, a, b) in enumerate(phases):
        xa, xb = sx(max(a, t0)), sx(min(b, t1))
        if i % 2 == 0:
            out.append(f'<rect x="{xa:.1f}" y="{top}" width="{xb - xa:.1f}" height="{ph}" fill="#f2f3f5"/>')
        out.append(f'<text x="{(xa + xb) / 2:.1f}" y="{top + 11}" class="phase">{esc(name)}</text>')
    for v in ticks:
        y = top + ph - v / ymax * ph
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e5e6"/>')
        out.append(f'<text x="{left - 5}" y="{y + 4:.1f}" class="ytick">{fmt_num(v)}</text>')
    out.append(f'<text transform="translate(12,{top + ph / 2:.0f}) rotate(-90)" class="axis">{esc(AXES.get(panel["title"], axis))}</text>')
    span = t1 - t0
    step = next(s for s in (5, 10, 15, 20, 30, 60, 120, 300) if span / s <= 8)
    for s in range(0, int(span) + 1, step):
        x = sx(t0 + s)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 15}" class="xtick">{s}s</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#888"/>')
    if not answers:
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" class="empty">Prometheus answered no series</text>')
    # Lines, broken where a series has no value.
    for i, (name, pts) in enumerate(answers):
        color = COLORS[i % len(COLORS)]
        runs, run = [], []
        for t, v in pts:
            if v is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(f"{sx(t):.1f},{sy(v):.1f}")
        if run:
            runs.append(run)
        for r in runs:
            if len(r) == 1:
                cx, cy = r[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="1.5" fill="{color}"/>')
            else:
                out.append(f'<polyline points="{" ".join(r)}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    # Legend under the plot, wrapped.
    lx, ly = left, top + ph + 32
    for i, (name, _) in enumerate(answers):
        width = 18 + 6.2 * len(name)
        if lx + width > w - 6:
            lx, ly = left, ly + 14
        out.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" fill="{COLORS[i % len(COLORS)]}"/>')
        out.append(f'<text x="{lx + 14}" y="{ly - 3}" class="legend">{esc(name)}</text>')
        lx += width
    out.append("</g>")
    return out


def svg(panels: list[tuple[dict, list]], t0: float, t1: float, phases: list[tuple[str, float, float]],
        subtitle: str, key: list[str]) -> str:
    cols, pw, ph, gap, head = 2, 600, 280, 12, 62 + 14 * len(key)
    rows = math.ceil(len(panels) / cols)
    width, height = cols * pw + (cols + 1) * gap, head + rows * (ph + gap) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           "<style>.title{font-size:14px;font-weight:bold;fill:#333}.ytick{font-size:10px;fill:#666;text-anchor:end}"
           ".xtick{font-size:10px;fill:#666;text-anchor:middle}.axis{font-size:10px;fill:#666;text-anchor:middle}"
           ".legend{font-size:10px;fill:#333}.phase{font-size:9px;fill:#999;text-anchor:middle}"
           ".empty{font-size:12px;fill:#999;text-anchor:middle}.head{font-size:16px;font-weight:bold;fill:#222}"
           ".sub{font-size:11px;fill:#555}</style>",
           f'<rect width="{width}" height="{height}" fill="#f7f8fa"/>',
           f'<text x="{gap}" y="24" class="head">sharemesh dashboard over a bench run (Prometheus, scraped every 1 s)</text>',
           f'<text x="{gap}" y="42" class="sub">{esc(subtitle)}</text>']
    out += [f'<text x="{gap}" y="{58 + 14 * i}" class="sub">{esc(line)}</text>' for i, line in enumerate(key)]
    for i, (panel, answers) in enumerate(panels):
        x = gap + (i % cols) * (pw + gap)
        y = head + (i // cols) * (ph + gap)
        out += draw_panel(x, y, pw, ph, panel, answers, t0, t1, phases)
    out.append(f'<text x="{gap}" y="{height - 6}" class="sub">x: seconds since the bench started '
               "(before the first band: the services start and the bench registers its cars); hover a panel for its PromQL</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    if not os.path.isfile(BENCH_BIN):
        raise SystemExit(f"bench-panels: {BENCH_BIN} missing: make bench-panels builds it")
    prometheus = obs.tool("prometheus")
    dashboard = json.load(open(DASHBOARD))
    by_title = {p["title"]: p for p in dashboard["panels"]}
    missing = [t for t in PANELS if t not in by_title]
    if missing:
        raise SystemExit(f"bench-panels: the dashboard has no panel {missing}: update PANELS")
    work = tempfile.mkdtemp(prefix="sharemesh-panels-")
    prom = None
    try:
        targets = os.path.join(work, "targets", "bench.json")
        os.makedirs(os.path.dirname(targets))
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: sharemesh-bench
    file_sd_configs: [{{files: ["{work}/targets/*.json"], refresh_interval: 1s}}]
""")
        port, prom_log = obs.free_port(), os.path.join(work, "prometheus.log")
        prom = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={work}/tsdb",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=open(prom_log, "w"))
        obs.wait("prometheus ready", lambda: obs.prometheus_ready(prom, port, prom_log))
        api = f"http://127.0.0.1:{port}/api/v1"

        start, end, marks = run_bench(targets)
        # The last scrapes: the bench has killed its services by now, Prometheus holds what it got.
        time.sleep(2)
        status, res = obs.http("GET", f"{api}/query?" + urllib.parse.urlencode({"query": "count by (job) (up)", "time": end - 5}))
        jobs = sorted(r["metric"]["job"] for r in res["data"]["result"])
        print(f"bench-panels: Prometheus scraped {len(jobs)} targets: {', '.join(jobs)}", flush=True)
        want = len(obs.devports.TOPOLOGY)
        if len(jobs) < want:
            raise SystemExit(f"bench-panels: Prometheus scraped {len(jobs)} of the {want} services")
        # Whole seconds, so the answers' timestamps fall on the grid drawn.
        t0, t1 = math.floor(start), math.ceil(end)
        step = max(1.0, round((t1 - t0) / 400))
        phases = [(num, a, marks[i + 1][2] if i + 1 < len(marks) else t1) for i, (num, _, a) in enumerate(marks)]
        names = [f"{num} {name}" for num, name, _ in marks]
        key = ["Scenarios (shaded bands, bench/README.md): " + ", ".join(names[:4]) + ",", ", ".join(names[4:])]
        drawn = []
        for title in PANELS:
            panel = by_title[title]
            answers = []
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                for series in sorted(query_range(api, expr, t0, t1, step), key=lambda s: legend(target.get("legendFormat"), s["metric"])):
                    got = {round(float(t)): float(v) for t, v in series["values"]}
                    grid = (t0 + i * step for i in range(int((t1 - t0) / step) + 1))
                    pts = [(t, v if v is not None and math.isfinite(v) else None) for t in grid for v in [got.get(t)]]
                    answers.append((legend(target.get("legendFormat"), series["metric"]), pts))
            print(f"bench-panels: {title}: {len(answers)} series", flush=True)
            drawn.append((panel, answers))
        args = os.environ.get("BENCH_ARGS", "").strip() or "(defaults)"
        commit = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty=+uncommitted"],
                                capture_output=True, text=True).stdout.strip() or "?"
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start))
        subtitle = (f"make bench-panels: sharemesh-bench {args} at {commit}, {when}, {os.cpu_count()} CPUs; "
                    f"{t1 - t0:.0f} s; every process a scrape target (job = sharemesh-<context>); "
                    f"$__rate_interval = {RATE_INTERVAL}, step {step:g} s")
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        with open(OUT, "w") as f:
            f.write(svg(drawn, t0, t1, phases, subtitle, key))
        print(f"bench-panels: wrote {os.path.relpath(OUT, REPO)}", flush=True)
        return 0
    finally:
        obs.stop([prom] if prom else [])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
