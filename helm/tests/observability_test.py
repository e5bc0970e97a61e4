#!/usr/bin/env python3
"""Chart tests of the operators' view (observability.*): the Grafana dashboard ConfigMap, the
PrometheusRule and the ServiceMonitor, rendered through the same Helm SDK as chart_test.py.

    python3 helm/tests/observability_test.py                      # the checks
    python3 helm/tests/observability_test.py --write DIR          # also write DIR/alerts.yaml
                                                                  # and DIR/dashboard.json as rendered
Exit codes: 0 passed, 1 failed, 3 skipped (nothing can render the chart here).
"""
from __future__ import annotations

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VENV = os.environ.get("CHART_CHECK_VENV", os.path.join(os.path.expanduser("~"), ".cache", "chart-check", "venv"))


def reexec_into_venv() -> None:
    """chart_test.ensure_deps re-executes its own file; do the same for this one first."""
    try:
        import helm_python, yaml  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.exists(py) and not os.environ.get("CHART_TEST_REEXEC"):
        os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], dict(os.environ, CHART_TEST_REEXEC="1"))


def exported_metrics() -> set[str]:
    """Every series name the services export, from the registry in mesh/src/telemetry/metrics.rs."""
    src = open(os.path.join(REPO, "mesh", "src", "telemetry", "metrics.rs")).read()
    body = src[src.index("fn new() -> Self"):src.index("pub fn encode")]
    names = set()
    for name, field in re.findall(r'registry\.register\(\s*"([a-z_]+)",\s*"[^"]*",\s*(?:m|self)\.([a-z_]+)\.(?:clone|family)\(\)', body, re.S):
        kind = re.search(rf"pub {field}: (.+),$", src, re.M).group(1)
        base = f"sharemesh_{name}"
        if kind.startswith("HistogramFamily"):
            names |= {base + "_bucket", base + "_sum", base + "_count"}
        elif "Counter" in kind:
            names.add(base + "_total")
        else:
            names.add(base)
    return names


def main() -> int:
    reexec_into_venv()
    sys.path.insert(0, HERE)
    import chart_test as ct

    ct.ensure_deps()
    write = sys.argv[sys.argv.index("--write") + 1] if "--write" in sys.argv else None
    failures: list[str] = []

    def check(what: str, ok: bool, detail: str = "") -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail and not ok else ""))
        if not ok:
            failures.append(what)

    metrics = exported_metrics()
    check("the registry parses into metric names", len(metrics) > 15, str(sorted(metrics)))

    docs = ct.render()
    maps = [d for d in ct.kinds(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    check("default: one dashboard ConfigMap", len(maps) == 1)
    check("default: no PrometheusRule, no ServiceMonitor (opt-in)",
          not ct.kinds(docs, "PrometheusRule") and not ct.kinds(docs, "ServiceMonitor"))
    cm = maps[0] if maps else {"metadata": {}, "data": {}}
    check("dashboard: Grafana sidecar label", cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1")
    dash = json.loads(cm["data"].get("sharemesh.json", "{}"))
    panels = dash.get("panels", [])
    check("dashboard: loads as JSON with panels", len(panels) >= 12)
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    check("dashboard: every panel has a query", all(p.get("targets") for p in panels))
    unknown = sorted({m for e in exprs for m in re.findall(r"sharemesh_[a-z_]+", e)} - metrics)
    check("dashboard: every metric a panel names is exported", not unknown, str(unknown))
    for needed in ["saga_outcomes", "outbox_pending", "inbox_pending", "inbox_lag_seconds", "inbox_dead_lettered", "client_circuit_state", "grpc_server_duration_seconds_bucket", "grpc_server_errors_total"]:
        check(f"dashboard: a panel on {needed}", any(needed in e for e in exprs))

    import tempfile

    def values(text: str) -> str:
        f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        f.write(text)
        f.close()
        return f.name

    enabled = values("""observability:
  dashboard: {enabled: false}
  prometheusRule: {enabled: true, errorRatio: 0.1, labels: {release: kps}}
  serviceMonitor: {enabled: true}
""")
    docs = ct.render(files=(enabled,))
    rules = ct.kinds(docs, "PrometheusRule")
    check("prometheusRule.enabled: one PrometheusRule with the given labels",
          len(rules) == 1 and rules[0]["metadata"]["labels"].get("release") == "kps")
    alerts = [r for g in (rules[0]["spec"]["groups"] if rules else []) for r in g["rules"]]
    names = {a["alert"] for a in alerts}
    want = {"SharemeshHighErrorRatio", "SharemeshHighLatencyP99", "SharemeshOutboxBacklogGrowing",
            "SharemeshConsumerLag", "SharemeshDeadLetters", "SharemeshCircuitOpen"}
    check("alerts: error ratio, p99, outbox backlog, consumer lag, dead letters, circuit open", names == want, str(names))
    ratio = next((a for a in alerts if a["alert"] == "SharemeshHighErrorRatio"), {"expr": ""})
    check("alerts: thresholds come from the values", "> 0.1" in ratio["expr"], ratio["expr"])
    unknown = sorted({m for a in alerts for m in re.findall(r"sharemesh_[a-z_]+", a["expr"])} - metrics)
    check("alerts: every metric named is exported", not unknown, str(unknown))
    check("dashboard.enabled=false: no ConfigMap", not [d for d in ct.kinds(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")])
    monitors = ct.kinds(docs, "ServiceMonitor")
    check("serviceMonitor.enabled: one ServiceMonitor", len(monitors) == 1)
    if monitors:
        sm = monitors[0]["spec"]
        ports = {p.get("name") for s in ct.kinds(docs, "Service") if ct.component(s) in ct.SERVICES for p in s["spec"]["ports"]}
        check("serviceMonitor: scrapes the services' metrics port", sm["endpoints"][0]["port"] == "metrics" and "metrics" in ports, str(ports))
        selected = [s for s in ct.kinds(docs, "Service")
                    if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sm["selector"]["matchLabels"].items())
                    and ct.component(s) in sm["selector"]["matchExpressions"][0]["values"]]
        check("serviceMonitor: selects the six services", {ct.component(s) for s in selected} == set(ct.SERVICES),
              str([ct.name(s) for s in selected]))
    try:
        ct.render(files=(values("observability: {prometheusRule: {errorRatio: 2}}\n"),))
        check("schema: errorRatio above 1 refused", False)
    except Exception:  # noqa: BLE001 - any render failure is the refusal
        check("schema: errorRatio above 1 refused", True)

    if write:
        os.makedirs(write, exist_ok=True)
        import yaml
        with open(os.path.join(write, "alerts.yaml"), "w") as f:
            yaml.safe_dump(rules[0]["spec"] if rules else {}, f, sort_keys=False, width=1000)
        with open(os.path.join(write, "dashboard.json"), "w") as f:
            json.dump(dash, f, indent=2)
    print(f"observability chart tests: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
