#!/usr/bin/env python3
"""Chart tests for helm/sharemesh: render the chart offline and check what it promises.

    python3 helm/tests/chart_test.py            (helm-check.sh runs it)

Renders through the same Helm v4 Go SDK as chart-check (helm-python-sdk, from chart-check's
venv), so no cluster and no helm binary are needed; without the kit, a helm binary is used. The cases:

  schema   values.schema.json is what helm/tools/gen-schema.py generates; every values file in
           helm/tests/bad-values/ (misspelled keys, out-of-range values) fails chart-check with the
           message its "# expect:" line names - a typo must fail the install, not be ignored;
  breaker  --set mesh.circuitBreaker.consecutiveErrors=3 reaches the Istio DestinationRule
           (consecutive5xxErrors: 3) and the Linkerd Service annotation
           (balancer.linkerd.io/failure-accrual-consecutive-max-failures: "3"), for every service;
  ports    probes are gRPC probes on the health port, every Service targetPort names a container
           port of the pods it selects;
  plus the storage rules (SQLite -> one-replica StatefulSet without HPA, PostgreSQL ->
  Deployment with HPA), the shutdown budget, pod security, and the NetworkPolicies' public door.

Prints PASS/FAIL per check and a final "N passed, N failed"; exits 1 on any failure, 3 (after a
SKIPPED line) when neither helm-python-sdk nor a helm binary is there to render with.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# CHART_DIR renders another copy of the chart (e.g. an older commit's) through the same checks.
CHART = os.environ.get("CHART_DIR") or os.path.join(REPO, "helm", "sharemesh")
CHART_CHECK = os.environ.get("CHART_CHECK") or os.path.join(REPO, "..", "shared", "tools", "chart-check", "chart-check")
VENV = os.environ.get("CHART_CHECK_VENV", os.path.join(os.path.expanduser("~"), ".cache", "chart-check", "venv"))
PYDEPS = os.path.join(os.path.expanduser("~"), ".cache", "chart-check", "pydeps")

# The topology, written once in mesh/src/topology.rs (its copy files/topology.json is what the
# chart reads): every service, contexts that keep data first, then the edge.
TOPOLOGY = json.load(open(os.path.join(REPO, "helm", "sharemesh", "files", "topology.json")))["contexts"]
SERVICES = [c["name"] for c in TOPOLOGY]
CONTEXTS = [c["name"] for c in TOPOLOGY if c["keepsData"]]
RELEASE, NAMESPACE = "sharemesh", "sharemesh"


# ----------------------------------------------------------------------------- environment
SKIPPED = 3  # exit code: nothing could render the chart here (helm-check.sh reports it)
BACKEND = "sdk"  # "sdk": helm-python-sdk (chart-check's venv); "helm": a helm binary


def ensure_deps() -> None:
    """Render with chart-check's helm-python-sdk (re-exec into its venv), else a helm binary."""
    global BACKEND
    if os.path.isdir(PYDEPS) and PYDEPS not in sys.path:
        sys.path.insert(0, PYDEPS)
    try:
        import helm_python, yaml  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.exists(py) and not os.environ.get("CHART_TEST_REEXEC"):
        os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], dict(os.environ, CHART_TEST_REEXEC="1"))
    try:
        import yaml  # noqa: F401
        have_yaml = True
    except ImportError:
        have_yaml = False
    if shutil.which("helm") and have_yaml:
        BACKEND = "helm"
        return
    print("SKIPPED chart tests: neither chart-check's helm-python-sdk nor a helm binary with PyYAML is available")
    sys.exit(SKIPPED)


# ----------------------------------------------------------------------------- rendering
def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class RenderError(Exception):
    pass


def _render_texts(sets, files, kube="1.33.0") -> dict[str, str]:
    if BACKEND == "helm":
        cmd = ["helm", "template", RELEASE, CHART, "-n", NAMESPACE, "--kube-version", kube]
        for f in files:
            cmd += ["-f", f]
        for s in sets:
            cmd += ["--set", s]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RenderError(r.stderr.strip())
        return {"all.yaml": r.stdout}
    import helm_python as helm
    from helm_python import _native

    values: dict = {}
    for f in files:
        values = deep_merge(values, helm.values_from_yaml(open(f).read()) or {})
    for s in sets:
        values = deep_merge(values, helm.parse_set_string(s))
    try:
        with helm.Chart.load(CHART) as chart:
            opts = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True, "kube_version": "v" + kube}
            return json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))
    except helm.HelmError as exc:
        raise RenderError(str(exc)) from exc


def render(*sets: str, files: tuple[str, ...] = (), kube: str = "1.33.0") -> list[dict]:
    """`helm template` with --set/-f, as chart-check does it; returns the parsed objects."""
    import yaml

    docs = []
    for path, text in sorted(_render_texts(sets, files, kube).items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        docs += [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    return docs


def kinds(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def name(d):
    return d["metadata"]["name"]


def component(d):
    return d["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def full(svc):
    return f"{RELEASE}-{svc}"


# ----------------------------------------------------------------------------- reporting
class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, what: str, problems: list[str]) -> None:
        if problems:
            self.failed += 1
            print(f"FAIL {what}")
            for p in problems[:20]:
                print(f"     - {p}")
        else:
            self.passed += 1
            print(f"PASS {what}")

    def run(self, what: str, fn) -> None:
        try:
            self.check(what, fn())
        except Exception as exc:  # a crash in a check is a failure of that check
            self.check(what, [f"{type(exc).__name__}: {exc}"])


# ----------------------------------------------------------------------------- the checks
def check_schema_generated() -> list[str]:
    gen = os.path.join(REPO, "helm", "tools", "gen-schema.py")
    r = subprocess.run([sys.executable, gen, "--check"], capture_output=True, text=True)
    return [] if r.returncode == 0 else [r.stdout.strip() or r.stderr.strip()]


def check_schema_closed() -> list[str]:
    """Every object in values.schema.json says which keys it takes (a typo anywhere fails)."""
    schema = json.load(open(os.path.join(CHART, "values.schema.json")))
    problems = []

    def walk(node, path):
        if isinstance(node, dict):
            t = node.get("type")
            if (t == "object" or (isinstance(t, list) and "object" in t)) and "additionalProperties" not in node:
                problems.append(f"{path or '/'}: object without additionalProperties")
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(schema, "")
    if schema.get("additionalProperties") is not False:
        problems.append("top level is open")
    return problems


def check_good_values(path: str) -> list[str]:
    docs = render(files=(path,))
    return [] if docs else ["rendered nothing"]


def check_bad_values(path: str) -> list[str]:
    """chart-check must fail on this values file, naming the problem."""
    expect = [line.split(":", 1)[1].strip() for line in open(path) if line.startswith("# expect:")]
    if not expect:
        return [f"{path} has no '# expect:' line"]
    if BACKEND == "helm":  # helm lint's wording differs between Helm versions: look for the key
        r = subprocess.run(["helm", "lint", "--strict", CHART, "-f", path], capture_output=True, text=True)
        out = r.stdout + r.stderr
        problems = [] if r.returncode != 0 else ["helm lint --strict accepted it (the schema must reject it)"]
        keys = [e.split("'")[1] if "'" in e else e for e in expect]
        keys = [k.rsplit("/", 1)[-1] for k in keys]
        problems += [f"output does not name {k!r}" for k in keys if k not in out]
    elif not os.path.exists(CHART_CHECK):  # the SDK without the kit: its lint, as chart-check runs it
        import helm_python as helm
        values = helm.values_from_yaml(open(path).read()) or {}
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
        out = json.dumps(report)
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 3] + list(report.get("errors", []))
        problems = [] if bad else ["helm lint --strict accepted it (the schema must reject it)"]
        problems += [f"output does not say {e!r}" for e in expect if e not in out]
    else:
        r = subprocess.run([sys.executable, CHART_CHECK, CHART, "-f", path, "-q",
                            "-n", NAMESPACE, "--release-name", RELEASE], capture_output=True, text=True)
        out = r.stdout + r.stderr
        problems = []
        if r.returncode != 1:
            problems.append(f"chart-check exited {r.returncode}, want 1 (the schema must reject it)")
        problems += [f"output does not say {e!r}" for e in expect if e not in out]
    if problems:
        problems.append("output: " + " | ".join(out.strip().splitlines()[-6:]))
    return problems


def check_breaker_istio() -> list[str]:
    docs = render("mesh.provider=istio", "mesh.circuitBreaker.consecutiveErrors=3",
                  "mesh.circuitBreaker.maxPendingRequests=1", "mesh.circuitBreaker.maxRequestsPerConnection=1")
    drs = {component(d): d for d in kinds(docs, "DestinationRule")}
    problems = [f"no DestinationRule for {s}" for s in SERVICES if s not in drs]
    for svc, dr in drs.items():
        tp = dr["spec"]["trafficPolicy"]
        od, http = tp["outlierDetection"], tp["connectionPool"]["http"]
        if svc == "edge":  # counts only its own failures: see check_shedding_not_counted
            if od.get("consecutiveLocalOriginFailures") != 3:
                problems.append(f"edge: consecutiveLocalOriginFailures = {od.get('consecutiveLocalOriginFailures')!r}, want 3")
        elif od.get("consecutive5xxErrors") != 3:
            problems.append(f"{svc}: outlierDetection.consecutive5xxErrors = {od.get('consecutive5xxErrors')!r}, want 3")
        if http.get("http1MaxPendingRequests") != 1 or http.get("maxRequestsPerConnection") != 1:
            problems.append(f"{svc}: connectionPool.http = {http}, want http1MaxPendingRequests 1, maxRequestsPerConnection 1")
        if dr["spec"]["host"] != f"{full(svc)}.{NAMESPACE}.svc.cluster.local":
            problems.append(f"{svc}: host {dr['spec']['host']}")
    if any(kinds(docs, k) for k in ("Server", "MeshTLSAuthentication", "GRPCRoute")):
        problems.append("Linkerd objects rendered with mesh.provider=istio")
    return problems


def check_breaker_linkerd() -> list[str]:
    docs = render("mesh.provider=linkerd", "mesh.circuitBreaker.consecutiveErrors=3")
    key = "balancer.linkerd.io/failure-accrual-consecutive-max-failures"
    svcs = {name(d): d for d in kinds(docs, "Service")}
    problems = []
    for svc in CONTEXTS:  # the edge has none: see check_shedding_not_counted
        s = svcs.get(full(svc))
        if s is None:
            problems.append(f"no Service {full(svc)}")
            continue
        ann = s["metadata"].get("annotations") or {}
        if ann.get("balancer.linkerd.io/failure-accrual") != "consecutive":
            problems.append(f"{svc}: failure-accrual = {ann.get('balancer.linkerd.io/failure-accrual')!r}")
        if ann.get(key) != "3":
            problems.append(f"{svc}: {key} = {ann.get(key)!r}, want '3'")
    if kinds(docs, "DestinationRule") or kinds(docs, "VirtualService"):
        problems.append("Istio objects rendered with mesh.provider=linkerd")
    return problems


def proto_reads() -> dict[str, set[str]]:
    """Get*/List* RPCs per context, from proto/sharemesh/<context>/v1/*.proto."""
    import re
    reads: dict[str, set[str]] = {}
    for ctx in CONTEXTS:
        for path in glob.glob(os.path.join(REPO, "proto", "sharemesh", ctx, "v1", "*.proto")):
            text = re.sub(r"//[^\n]*", "", open(path).read())
            pkg = re.search(r"^\s*package\s+([\w.]+)\s*;", text, re.M)
            for svc, body in re.findall(r"\bservice\s+(\w+)\s*\{(.*?)\n\}", text, re.S):
                for rpc in re.findall(r"\brpc\s+((?:Get|List)\w*)\s*\(", body):
                    reads.setdefault(ctx, set()).add(f"{pkg.group(1)}.{svc}/{rpc}")
    return reads


def check_retried_reads() -> list[str]:
    """The routes the meshes retry are exactly the contracts' Get/List RPCs: into the edge always,
    between services only with mesh.retries.internal=mesh (else the services' client retries)."""
    want = proto_reads()
    if not want:
        return [f"no Get/List RPCs found under {os.path.join(REPO, 'proto')}"]
    problems = []
    for layer in ("app", "mesh"):
        linkerd = {name(d): d for d in kinds(render("mesh.provider=linkerd", f"mesh.retries.internal={layer}"), "GRPCRoute")}
        istio = {name(d): d for d in kinds(render("mesh.provider=istio", f"mesh.retries.internal={layer}"), "VirtualService")}
        for ctx in CONTEXTS:
            expected = want.get(ctx, set()) if layer == "mesh" else set()
            route = linkerd.get(f"{full(ctx)}-reads")
            got = set()
            if route:
                for m in route["spec"]["rules"][0]["matches"]:
                    got.add(f"{m['method']['service']}/{m['method']['method']}")
                if "retry.linkerd.io/grpc" not in route["metadata"].get("annotations", {}):
                    problems.append(f"Linkerd {ctx}: reads route has no retry.linkerd.io/grpc")
            if got != expected:
                problems.append(f"internal={layer}: Linkerd {ctx}: mesh-retried {sorted(got)}, want {sorted(expected)}")
            vs = istio.get(full(ctx))
            reads = [r for r in vs["spec"]["http"] if r.get("name") == "reads"] if vs else []
            got = {m["uri"]["exact"].lstrip("/") for m in reads[0]["match"]} if reads else set()
            if got != expected:
                problems.append(f"internal={layer}: Istio {ctx}: mesh-retried {sorted(got)}, want {sorted(expected)}")
            if vs and "perTryTimeout" in vs["spec"]["http"][-1].get("retries", {}):
                problems.append(f"Istio {ctx}: commands route has a perTryTimeout (an expired command would be resent)")
        every = set().union(*want.values())
        vs = istio.get(full("edge"))
        got = {m["uri"]["exact"].lstrip("/") for m in vs["spec"]["http"][0]["match"] if "uri" in m} if vs else set()
        if got != every:
            problems.append(f"Istio edge: retried {sorted(got)}, want every context's reads")
    return problems


def check_mesh_none() -> list[str]:
    docs = render()
    crs = [f"{d['kind']}/{name(d)}" for d in docs if "istio.io" in d["apiVersion"] or "linkerd.io" in d["apiVersion"]]
    anns = [name(s) for s in kinds(docs, "Service") if any(k.startswith("balancer.linkerd.io") for k in (s["metadata"].get("annotations") or {}))]
    return [f"mesh object with provider none: {c}" for c in crs] + [f"Linkerd annotation on {a}" for a in anns]


def workloads(docs):
    return kinds(docs, "Deployment") + kinds(docs, "StatefulSet")


def check_probes_and_ports(*sets: str) -> list[str]:
    docs = render(*sets)
    problems = []
    pods = []  # (labels, {port name: number})
    for w in workloads(docs):
        tpl = w["spec"]["template"]
        ports = {}
        for c in tpl["spec"]["containers"]:
            for p in c.get("ports", []):
                ports[p["name"]] = p["containerPort"]
        pods.append((tpl["metadata"]["labels"], ports, name(w)))
        svc = component(w)
        if svc not in SERVICES:
            continue
        health_name = "http" if svc == "edge" else "grpc"
        health_port = 8080 if svc == "edge" else 50051
        c = tpl["spec"]["containers"][0]
        if ports.get(health_name) != health_port:
            problems.append(f"{name(w)}: container port {health_name!r} = {ports.get(health_name)}, want {health_port}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe) or {}
            g = p.get("grpc")
            if g is None:
                problems.append(f"{name(w)}: {probe} is not a gRPC probe: {p}")
                continue
            if g.get("port") != ports.get(health_name):
                problems.append(f"{name(w)}: {probe} port {g.get('port')} != container port {health_name} ({ports.get(health_name)})")
            if g.get("service", "") != "":
                problems.append(f"{name(w)}: {probe} asks service {g.get('service')!r}, want the overall status ''")
    for s in kinds(docs, "Service"):
        sel = s["spec"].get("selector") or {}
        matching = [(l, p, n) for l, p, n in pods if all(l.get(k) == v for k, v in sel.items())]
        if not matching:
            problems.append(f"Service {name(s)} selects no workload ({sel})")
            continue
        for port in s["spec"]["ports"]:
            tp = port.get("targetPort", port["port"])
            for _, cports, wname in matching:
                ok = tp in cports if isinstance(tp, str) else tp in cports.values()
                if not ok:
                    problems.append(f"Service {name(s)} port {port['name']}: targetPort {tp!r} is not a port of {wname} ({sorted(cports)})")
        if component(s) in SERVICES and s["spec"].get("clusterIP") != "None":
            names = [p["name"] for p in s["spec"]["ports"]]
            want = ["http" if component(s) == "edge" else "grpc", "metrics"]
            if names != want:
                problems.append(f"Service {name(s)} ports {names}, want {want}")
            if component(s) != "edge" and s["spec"]["ports"][0].get("appProtocol") != "grpc":
                problems.append(f"Service {name(s)}: gRPC port without appProtocol: grpc")
    return problems


def check_storage(default: str) -> list[str]:
    docs = render(f"storage.default={default}", "services.view.storage=sqlite" if default == "postgres" else "services.view.storage=postgres")
    problems = []
    hpas = {d["spec"]["scaleTargetRef"]["name"] for d in kinds(docs, "HorizontalPodAutoscaler")}
    sts = {name(d): d for d in kinds(docs, "StatefulSet")}
    deps = {name(d): d for d in kinds(docs, "Deployment")}
    for svc in CONTEXTS:
        want = default
        if svc == "view":
            want = "sqlite" if default == "postgres" else "postgres"
        n = full(svc)
        if want == "sqlite":
            s = sts.get(n)
            if s is None:
                problems.append(f"{svc} on sqlite: no StatefulSet")
                continue
            if s["spec"]["replicas"] != 1:
                problems.append(f"{svc} on sqlite: replicas {s['spec']['replicas']}, want 1")
            if n in hpas:
                problems.append(f"{svc} on sqlite has an HPA")
            vct = s["spec"].get("volumeClaimTemplates") or []
            if [v["metadata"]["name"] for v in vct] != ["data"]:
                problems.append(f"{svc} on sqlite: volumeClaimTemplates {vct}")
            env = next(d for d in kinds(docs, "ConfigMap") if name(d) == n)["data"]
            if env.get("DATABASE_URL") != f"sqlite:///data/{svc}.db?mode=rwc":
                problems.append(f"{svc}: DATABASE_URL {env.get('DATABASE_URL')!r}")
        else:
            if n not in deps:
                problems.append(f"{svc} on postgres: no Deployment")
            if n not in hpas:
                problems.append(f"{svc} on postgres: no HPA")
            c = deps[n]["spec"]["template"]["spec"]["containers"][0] if n in deps else {"env": []}
            refs = [e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if e["name"] == "DATABASE_URL"]
            if refs != [f"DATABASE_URL_{svc.upper()}"]:
                problems.append(f"{svc} on postgres: DATABASE_URL from {refs}")
    if full("edge") not in deps or full("edge") not in hpas:
        problems.append("edge: want a Deployment with an HPA")
    secret = kinds(docs, "Secret")[0]["stringData"]
    for svc in CONTEXTS:
        on_pg = (svc == "view") != (default == "postgres")
        key = f"DATABASE_URL_{svc.upper()}"
        if on_pg and not secret.get(key, "").startswith("postgres://"):
            problems.append(f"Secret: {key} missing")
    if not kinds(docs, "StatefulSet") or not any(component(d) == "postgresql" for d in kinds(docs, "StatefulSet")):
        problems.append("no in-chart PostgreSQL StatefulSet although a service uses postgres")
    return problems


def check_shutdown_budget() -> list[str]:
    problems = []
    for w in workloads(render()):
        if component(w) in SERVICES and w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] <= 25:
            problems.append(f"{name(w)}: terminationGracePeriodSeconds does not cover drain 5s + grace 20s")
    try:
        render("terminationGracePeriodSeconds=20")
        problems.append("terminationGracePeriodSeconds=20 (< 5s + 20s) rendered; want a refusal")
    except RenderError as exc:
        if "terminationGracePeriodSeconds" not in str(exc):
            problems.append(f"refused for another reason: {exc}")
    return problems


def check_pod_security() -> list[str]:
    problems = []
    docs = render("storage.default=postgres")
    for w in workloads(docs) + kinds(docs, "Pod"):
        spec = w["spec"]["template"]["spec"] if "template" in w["spec"] else w["spec"]
        psc = spec.get("securityContext") or {}
        if not psc.get("runAsNonRoot") or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name(w)}: pod securityContext {psc}")
        for c in spec["containers"]:
            sc = c.get("securityContext") or {}
            if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                    and "ALL" in ((sc.get("capabilities") or {}).get("drop") or [])):
                problems.append(f"{name(w)}/{c['name']}: container securityContext {sc}")
        if component(w) in SERVICES and psc.get("runAsUser") != 10001:
            problems.append(f"{name(w)}: runAsUser {psc.get('runAsUser')}, want 10001")
    return problems


def check_network_policies() -> list[str]:
    docs = render("storage.default=postgres")
    problems = []
    pols = {component(d): d for d in kinds(docs, "NetworkPolicy")}
    for comp in SERVICES + ["nats", "postgresql"]:
        p = pols.get(comp)
        if p is None:
            problems.append(f"no NetworkPolicy for {comp}")
            continue
        open_rules = [r for r in p["spec"].get("ingress", []) if not r.get("from")]
        if comp == "edge":
            if [[pt["port"] for pt in r.get("ports", [])] for r in open_rules] != [["http"]]:
                problems.append(f"edge: want exactly one open ingress rule, on port http: {open_rules}")
        elif open_rules:
            problems.append(f"{comp}: reachable from anywhere: {open_rules}")
        for r in p["spec"].get("ingress", []):
            for peer in r.get("from", []):
                if "namespaceSelector" in peer or "ipBlock" in peer:
                    problems.append(f"{comp}: ingress from outside the namespace: {peer}")
        egress = p["spec"].get("egress") or []
        if not any({"port": 53, "protocol": "UDP"} in (r.get("ports") or []) for r in egress):
            problems.append(f"{comp}: no DNS egress")
    return problems


def main() -> int:
    ensure_deps()
    sys.modules.setdefault("chart_test", sys.modules[__name__])  # behaviour.py shares this module
    sys.path.insert(0, HERE)
    import behaviour as b

    rep = Report()
    rep.run("schema: values.schema.json matches helm/tools/gen-schema.py", check_schema_generated)
    rep.run("schema: every object is closed (additionalProperties)", check_schema_closed)
    for path in sorted(glob.glob(os.path.join(HERE, "good-values", "*.yaml"))):
        rep.run(f"schema: {os.path.relpath(path, REPO)} is accepted", lambda p=path: check_good_values(p))
    for path in sorted(glob.glob(os.path.join(HERE, "bad-values", "*.yaml"))):
        rep.run(f"schema: {os.path.relpath(path, REPO)} is rejected", lambda p=path: check_bad_values(p))
    rep.run("breaker: consecutiveErrors=3 -> Istio DestinationRule consecutive5xxErrors: 3 (every service)", check_breaker_istio)
    rep.run("breaker: consecutiveErrors=3 -> Linkerd failure-accrual-consecutive-max-failures: \"3\" (every Service)", check_breaker_linkerd)
    rep.run("breaker: mesh.provider=none renders no mesh objects", check_mesh_none)
    rep.run("retries: only the contracts' Get/List RPCs are retried by the mesh, by one layer per hop", check_retried_reads)
    for sets in ((), ("storage.default=postgres",), ("mesh.provider=istio",), ("mesh.provider=linkerd", "nats.replicas=3")):
        rep.run(f"ports: gRPC probes on the health port, targetPorts name container ports [{' '.join(sets) or 'default'}]",
                lambda s=sets: check_probes_and_ports(*s))
    rep.run("storage: sqlite -> 1-replica StatefulSet + PVC, no HPA; postgres -> Deployment + HPA [default sqlite]", lambda: check_storage("sqlite"))
    rep.run("storage: sqlite -> 1-replica StatefulSet + PVC, no HPA; postgres -> Deployment + HPA [default postgres]", lambda: check_storage("postgres"))
    rep.run("shutdown: terminationGracePeriodSeconds covers drain + grace, and is enforced", check_shutdown_budget)
    rep.run("security: non-root, read-only root fs, no capabilities, RuntimeDefault seccomp", check_pod_security)
    rep.run("network: only the edge is open; NATS/PostgreSQL only from the mesh; DNS egress", check_network_policies)
    # Behaviour (helm/tests/behaviour.py): what the objects do, judged by each mesh's rules.
    for provider in ("none", "istio", "linkerd"):
        rep.run(f"graph [{provider}]: needed calls allowed, unneeded refused (mesh policy + NetworkPolicy)",
                lambda p=provider: b.check_allow_graph(p))
    for provider, sets in (("none", ()), ("istio", ("auth.istioRequestAuthentication=true",)), ("linkerd", ())):
        rep.run(f"graph [{provider}, identity provider]: the same, plus every service -> the provider's HTTPS port only",
                lambda p=provider, s=sets: b.check_allow_graph(p, f"auth.issuer={b.KEYCLOAK}", *s))
    for provider in ("istio", "linkerd"):
        rep.run(f"retries [{provider}]: no route retries load shedding (503/429/RESOURCE_EXHAUSTED)",
                lambda p=provider: b.check_shedding_not_retried(p) + b.check_shedding_not_retried(p, "mesh.retries.internal=mesh"))
    rep.run("retries: the edge's load-shedding 503 does not eject edge pods (Istio outlier detection, Linkerd failure accrual)",
            b.check_shedding_not_counted)
    for provider, sets in (("none", ()), ("istio", ()), ("linkerd", ()), ("istio", ("mesh.retries.internal=mesh",)),
                           ("linkerd", ("mesh.retries.internal=mesh",))):
        label = f"{provider}{' ' + ' '.join(sets) if sets else ''}"
        try:
            problems, figure = b.check_worst_case(provider, *sets)
        except Exception as exc:  # noqa: BLE001
            problems, figure = [f"{type(exc).__name__}: {exc}"], "?"
        rep.check(f"retries [{label}]: worst-case attempts of one client call at one service = {figure} <= 9", problems)
    rep.run("retries: attempts=0 means no retries (no Linkerd retry annotations; Istio attempts: 0)", b.check_no_retry_when_zero)
    rep.run("refusals: disabled dependencies, shedding retries, unbounded retries, streams that do not fit, kubeVersion",
            b.check_refusals)
    rep.run("sqlite: replicas/autoscaling refused by the templates too; defaults are null (decided by storage)",
            b.check_sqlite_refused_by_template)
    rep.run("image: the default image is what make image builds", b.check_image_is_make_image)
    rep.run("secrets: checksum/secret hashes the rendered Secret (one key for all replicas); kept on uninstall",
            b.check_secret_consistency)
    rep.run("postgres: each service its own non-superuser role; passwords percent-encoded (spaces, +, @, /)",
            b.check_postgres_roles_and_urls)
    rep.run("statefulsets: serviceName is a headless Service selecting the pods", b.check_statefulsets_headless)
    rep.run("images: NATS/PostgreSQL/test images pinned; NATS = make deps' nats-server (scripts/deps.sh NATS_VERSION)",
            b.check_pinned_images)
    rep.run("nats [1 server]: sync_interval always, server_name per pod, SHAREMESH_STREAM_REPLICAS=1, streams fit the store",
            lambda: b.check_nats(1))
    rep.run("nats [3 servers]: cluster block, routes between the pods over the headless Service, SHAREMESH_STREAM_REPLICAS=3",
            lambda: b.check_nats(3))
    rep.run("nats [external]: comma-separated URLs -> egress to every port (never 0); stream settings explicit",
            b.check_nats_external)
    rep.run("shutdown: Linkerd and Istio proxies both wait drainDelay + shutdownGrace", b.check_drain_waits)
    rep.run("identity [provider]: auth.issuer -> SHAREMESH_OIDC_* and the service key for every service (edge too); no JWT key in env or Secret",
            b.check_identity_provider_mode)
    rep.run("identity [HS256]: no issuer -> JWT key and issuer as before, plus a separate generated service key; optional with an older existingSecret",
            b.check_hs256_mode)
    rep.run("identity: the edge's Istio RequestAuthentication only when asked, only with istio and an issuer; from the same values",
            b.check_request_authentication)
    rep.run("identity: jwksUri/audience without issuer, roleMap to service, JWT key with issuer refused by the templates too",
            b.check_identity_refused_by_template)
    rep.run("identity: NetworkPolicy egress to the provider's port only in provider mode (ports from the URLs, or set; to narrows)",
            b.check_identity_provider_egress)
    rep.run("database: SHAREMESH_DB_POOL on every PostgreSQL service; in-chart max_connections from postgresql.maxConnections",
            b.check_db_pool)
    rep.run("database: worst-case connections (max replicas + surge) x pool + margin fit max_connections; refused with a message otherwise",
            b.check_connection_budget)
    print(f"{rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
