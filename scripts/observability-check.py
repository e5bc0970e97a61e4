#!/usr/bin/env python3
"""The dashboard and the alerts against a real Prometheus (`make observability-check`, run by
`make test`).

1. Renders the chart's dashboard and alert rules (helm/tests/observability_test.py --write) and
   runs `promtool check rules` on the rules.
2. Starts `sharemesh dev` on free ports, drives a journey through the edge (a listing, a
   reservation paid and cancelled, a declined card, a missing listing).
3. Starts Debian's `prometheus` scraping the mesh every second with the rules loaded, then asks its
   HTTP API for every dashboard panel's query and every alert's query (its threshold comparison
   taken off): each must return series. The rules must load with health "ok".
4. Per context under `dev`: every series carries `job="sharemesh-<context>"` as in Kubernetes (dev
   serves all contexts on one `/metrics`, scraped with `honor_labels: true`), and the dashboard's
   per-service request rate returns one series per context of the topology.

Installs Debian's `prometheus` package (prometheus + promtool) when they are missing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import devports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SHAREMESH_BIN", os.path.join(REPO, "target", "debug", "sharemesh"))
SECRET = "observability-check-secret-0123456789"


def tool(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.path.exists(p)), None)
    if found:
        return found
    print(f"observability-check: installing Debian's prometheus package ({name} missing)", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"], check=True, env=env)
    return shutil.which(name) or f"/usr/bin/{name}"


def free_port(avoid: frozenset[int] = frozenset()) -> int:
    """A port free now, none of `avoid` (ports chosen for processes that have not bound them yet)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def prometheus_ready(proc: subprocess.Popen, port: int, log: str) -> bool:
    """True once the Prometheus we started answers on `port`. It must still be running, and the
    answer must be its own: a sharemesh gRPC port also answers a plain GET with 200."""
    if proc.poll() is not None:
        raise SystemExit(f"observability-check: prometheus exited ({proc.returncode}):\n{open(log).read()[-2000:]}")
    status, body = http("GET", f"http://127.0.0.1:{port}/-/ready")
    return status == 200 and "Prometheus" in str(body)


def parse(raw: bytes):
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


def http(method: str, url: str, token: str | None = None, body: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    if body:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, parse(r.read())
    except urllib.error.HTTPError as e:
        return e.code, parse(e.read())


def listening(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait(what: str, f, limit: float = 60.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            got = f()
            if got:
                return got
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"observability-check: {what} did not happen within {limit:.0f}s")


def token(sub: str, role: str) -> str:
    out = subprocess.run([BIN, "token", "--sub", sub, "--role", role], check=True, capture_output=True, text=True,
                         env=dict(os.environ, SHAREMESH_JWT_SECRET=SECRET))
    return out.stdout.strip().splitlines()[-1]


def journey(edge: str) -> None:
    host, alice, bob = token("host-1", "host"), token("alice", "customer"), token("bob", "customer")
    status, car = http("POST", f"{edge}/v1/listings", host,
                       '{"title":"Avante 2030","price":{"amountMinor":"12000","currency":"KRW"},"car":{"model":"Avante","carType":"CAR_TYPE_SEDAN","seats":5}}')
    assert status == 200, car
    listing = car["listing"]["listingId"]

    def body(day: int, number: str) -> str:
        return json.dumps({"listingId": listing, "requestId": str(uuid.uuid4()),
                           "window": {"startTime": f"2030-01-{day:02}T09:00:00Z", "endTime": f"2030-01-{day:02}T11:00:00Z"},
                           "card": {"number": number, "expMonth": 12, "expYear": 2099, "cvc": "123"}})
    for day in (1, 2, 3):
        status, placed = http("POST", f"{edge}/v1/reservations", alice, body(day, "4242424242424242"))
        assert status == 200, placed
    rid = placed["reservation"]["reservationId"]
    status, _ = http("POST", f"{edge}/v1/reservations", bob, body(4, "4000000000000002"))
    assert status == 400, status
    status, cancelled = http("POST", f"{edge}/v1/reservations/{rid}:cancel", alice, '{"reason":"plans changed"}')
    assert status == 200, cancelled
    status, _ = http("GET", f"{edge}/v1/listings/{uuid.uuid4()}", alice)
    assert status == 404, status
    # The read side too, so every context serves a call.
    for path in ("/v1/mypage", "/v1/messages"):
        status, page = http("GET", f"{edge}{path}", alice)
        assert status == 200, (path, status, page)


def strip_thresholds(expr: str) -> str:
    """`q > 0.05` -> `q`: the query an alert compares, which must return series."""
    return re.sub(r"\s*(>=|<=|==|!=|>|<)\s*-?[0-9.]+(e-?[0-9]+)?(?=\s*(\)|$|\n|and|or|unless))", "", expr.strip(), flags=re.M)


def per_context(api: str, dashboard: dict) -> int:
    """Under dev, the series of each context are told apart as in Kubernetes: returns failures."""
    def jobs(query: str) -> list[str]:
        status, res = http("GET", f"{api}/query?" + urllib.parse.urlencode({"query": query}))
        assert status == 200, res
        return sorted(r["metric"].get("job", "") for r in res["data"]["result"])
    every = sorted(f"sharemesh-{c['name']}" for c in devports.TOPOLOGY)
    keeping_data = sorted(f"sharemesh-{c['name']}" for c in devports.TOPOLOGY if c["keepsData"])
    by_job = next(t["expr"] for p in dashboard["panels"] for t in p["targets"] if "by (job)" in t["expr"])
    checks = [
        ("every sharemesh_* series has a context's job", 'count by (job) ({__name__=~"sharemesh_.+"})', every),
        ("dashboard request rate by job: one series per context", by_job.replace("$__rate_interval", "1m"), every),
        ("outbox backlog by job: one series per context keeping data", "sum by (job) (sharemesh_outbox_pending)", keeping_data),
        ("inbox handled by job: one series per context keeping data", "sum by (job) (sharemesh_inbox_handled_total)", keeping_data),
    ]
    failed = 0
    for what, query, want in checks:
        got = jobs(query)
        ok = got == want
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} per context: {what} ({len(got)})" + ("" if ok else f"\n       {query}\n       got {got}\n       want {want}"))
    return failed


def main() -> int:
    prometheus, promtool = tool("prometheus"), tool("promtool")
    work = tempfile.mkdtemp(prefix="sharemesh-obs-")
    procs: list[subprocess.Popen] = []
    try:
        rendered = os.path.join(work, "rendered")
        r = subprocess.run([sys.executable, os.path.join(REPO, "helm", "tests", "observability_test.py"), "--write", rendered])
        if r.returncode == 3:
            print("SKIPPED observability-check: nothing can render the chart here (see make helm-check)")
            return 0
        if r.returncode != 0:
            return 1
        rules = os.path.join(rendered, "alerts.yaml")
        subprocess.run([promtool, "check", "rules", rules], check=True)
        dashboard = json.load(open(os.path.join(rendered, "dashboard.json")))

        base, nats, metrics = devports.free_dev_ports()
        # The services bind their ports only after their migrations: keep Prometheus off them.
        prom = free_port(frozenset(devports.service_ports(base) + [nats, metrics]))
        log = open(os.path.join(work, "dev.log"), "w")
        env = dict(os.environ, SHAREMESH_DEV_PORT=str(base), SHAREMESH_DEV_NATS_PORT=str(nats),
                   SHAREMESH_DEV_METRICS_PORT=str(metrics), SHAREMESH_DATA_DIR=os.path.join(work, "data"),
                   SHAREMESH_JWT_SECRET=SECRET, SHAREMESH_LOG="warn")
        env.pop("NATS_URL", None)
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        procs.append(subprocess.Popen([BIN, "dev"], env=env, stdout=subprocess.DEVNULL, stderr=log))
        edge = f"http://127.0.0.1:{base}"
        wait("sharemesh dev serving", lambda: http("GET", f"{edge}/healthz")[0] == 200)
        # Each service listens only after its migrations; the edge binds first.
        for port in devports.service_ports(base):
            wait(f"port {port} listening", lambda port=port: listening(port))

        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [{rules}]
scrape_configs:
  - job_name: sharemesh-dev
    # dev labels each series job="sharemesh-<context>" itself (one process, six contexts).
    honor_labels: true
    static_configs: [{{targets: ["127.0.0.1:{metrics}"]}}]
""")
        subprocess.run([promtool, "check", "config", config], check=True)
        prom_log = os.path.join(work, "prometheus.log")
        procs.append(subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={work}/tsdb",
                                       f"--web.listen-address=127.0.0.1:{prom}"],
                                      stdout=subprocess.DEVNULL, stderr=open(prom_log, "w")))
        api = f"http://127.0.0.1:{prom}/api/v1"
        wait("prometheus ready", lambda: prometheus_ready(procs[-1], prom, prom_log))
        journey(edge)

        queries = [(f"panel '{p['title']}'", t["expr"].replace("$__rate_interval", "1m"))
                   for p in dashboard["panels"] for t in p["targets"]]
        groups = json.load(urllib.request.urlopen(f"{api}/rules"))["data"]["groups"]
        alerts = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
        queries += [(f"alert {a['name']}", strip_thresholds(a["query"])) for a in alerts]

        def answers() -> dict:
            out = {}
            for what, q in queries:
                status, res = http("GET", f"{api}/query?" + urllib.parse.urlencode({"query": q}))
                out[what] = (q, len(res["data"]["result"]) if status == 200 else f"HTTP {status}: {res}")
            return out
        deadline, got = time.time() + 60, {}
        while time.time() < deadline:
            got = answers()
            if all(isinstance(n, int) and n > 0 for _, n in got.values()):
                break
            time.sleep(2)
        failed = 0
        for what, (q, n) in got.items():
            ok = isinstance(n, int) and n > 0
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {what}: {n} series" + ("" if ok else f"\n       {q}"))
        empty = failed
        failed += per_context(api, dashboard)
        groups = json.load(urllib.request.urlopen(f"{api}/rules"))["data"]["groups"]
        alerts = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
        unhealthy = [(r["name"], r.get("health"), r.get("lastError")) for r in alerts if r.get("health") != "ok"]
        print(f"{'ok  ' if not unhealthy else 'FAIL'} {len(alerts)} alert rules loaded, health ok" + (f": {unhealthy}" if unhealthy else ""))
        failed += bool(unhealthy) + (len(alerts) < 6)
        print(f"observability-check: {len(got) - empty} of {len(got)} queries return series; {failed} checks failed")
        return 1 if failed else 0
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


def stop(procs: list) -> None:
    """SIGTERM every process, then waits for each (killing one that takes over 20 s)."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    sys.exit(main())
