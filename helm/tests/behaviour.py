"""Chart tests of behaviour: what the rendered objects DO on a cluster, judged by each mesh's rules.

  graph     for each mesh.provider: every call sharemesh needs is allowed (edge -> each service's
            public RPCs, reservation -> catalog/payment, services -> NATS and their PostgreSQL,
            the kubelet's gRPC probes, helm test, a meshed ingress, Prometheus) and calls it does
            not need are refused (edge -> internal RPCs, a pod outside the release -> catalog,
            NATS, PostgreSQL; view -> catalog) - by the mesh (meshgraph.Linkerd / Istio) and by
            the NetworkPolicies (meshgraph.NetPol).
  retries   no route retries a load-shedding answer, the edge's breaker does not count it, and
            the worst-case attempts of one client call (mesh + services' retries, retrymodel)
            stay within mesh.retries.maxAttemptsPerCall.
  deploy    issue #12's items 3-6 and the scale-out pieces of #10 (image, secrets, NATS, ...).
  identity  issue #14: HS256 mode and identity-provider mode (SHAREMESH_OIDC_*, no JWT key, the
            service key for all), the edge's Istio RequestAuthentication, the refusals, egress to
            the provider.
  database  SHAREMESH_DB_POOL and the in-chart PostgreSQL's connection budget.

chart_test.py runs them; they use its render() and proto readers.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse

import chart_test as ct
import meshgraph as mg
import retrymodel as rm

NS = ct.NAMESPACE
GRAPH_VALUES = os.path.join(ct.HERE, "good-values", "observed-and-fenced.yaml")
# What reservation calls (services/reservation/src/saga.rs: hold_listing, confirm_hold, release_hold,
# approve_payment, list_payments), from its commands only (the saga), never from its reads.
RESERVATION_CALLS = [
    ("catalog", "/sharemesh.catalog.v1.CatalogService/HoldListing"),
    ("catalog", "/sharemesh.catalog.v1.CatalogService/ConfirmHold"),
    ("catalog", "/sharemesh.catalog.v1.CatalogService/ReleaseHold"),
    ("payment", "/sharemesh.payment.v1.PaymentService/ApprovePayment"),
    ("payment", "/sharemesh.payment.v1.PaymentService/ListPayments"),
]
HEALTH = "/grpc.health.v1.Health/Check"
# The identity provider of the provider-mode tests: Keycloak's realm URL (README "Identity"), at an
# address outside the cluster (TEST-NET-3).
KEYCLOAK = "https://sso.example.com/realms/sharemesh"
KEYCLOAK_ROLE_MAP = "sharemesh-customer=customer,sharemesh-host=host,sharemesh-admin=admin"
IDP_IP = "203.0.113.10"


def env_of(docs) -> dict:
    """The shared environment ConfigMap (<release>-env) of a rendering."""
    return next(d for d in ct.kinds(docs, "ConfigMap") if ct.name(d).endswith("-env"))["data"]


def idp_port(url: str) -> int:
    u = urllib.parse.urlsplit(url)
    return u.port or (443 if u.scheme == "https" else 80)


# ----------------------------------------------------------------------------- the contracts
def proto_methods() -> dict[str, list[dict]]:
    """Per context: [{path, idempotent, read, verb}] from proto/sharemesh/<ctx>/v1/*.proto: idempotent =
    IDEMPOTENT or NO_SIDE_EFFECTS (what the services' client retries), read = NO_SIDE_EFFECTS, verb =
    the google.api.http verb (None: an internal RPC)."""
    out: dict[str, list[dict]] = {}
    for ctx in ct.CONTEXTS:
        for path in sorted(ct.glob.glob(os.path.join(ct.REPO, "proto", "sharemesh", ctx, "v1", "*.proto"))):
            text = re.sub(r"//[^\n]*", "", open(path).read())
            pkg = re.search(r"^\s*package\s+([\w.]+)\s*;", text, re.M).group(1)
            for svc, body in re.findall(r"\bservice\s+(\w+)\s*\{(.*?)\n\}", text, re.S):
                for rpc, opts in re.findall(r"\brpc\s+(\w+)\s*\([^)]*\)\s*returns\s*\([^)]*\)\s*(\{.*?\n  \}|;)", body, re.S):
                    verb = re.search(r"\b(get|post|put|patch|delete)\s*:", opts)
                    out.setdefault(ctx, []).append({
                        "path": f"/{pkg}.{svc}/{rpc}",
                        "idempotent": bool(re.search(r"idempotency_level\s*=\s*(IDEMPOTENT|NO_SIDE_EFFECTS)", opts)),
                        "read": bool(re.search(r"idempotency_level\s*=\s*NO_SIDE_EFFECTS", opts)),
                        "verb": verb.group(1).upper() if verb else None,
                    })
    return out


def internal_paths(methods) -> dict[str, list[str]]:
    """RPCs without a google.api.http annotation: internal (reservation only)."""
    return {ctx: [m["path"] for m in ms if m["verb"] is None] for ctx, ms in methods.items()}


# ----------------------------------------------------------------------------- the graph
def peers(docs, provider: str) -> dict[str, mg.Peer]:
    pods = mg.pods_of(docs)
    out = {}
    for comp, pod in pods.items():
        meshed = (provider == "istio" and pod.labels.get("sidecar.istio.io/inject") == "true") or \
                 (provider == "linkerd" and pod.annotations.get("linkerd.io/inject") == "enabled")
        out[comp] = mg.Peer(comp, NS, tuple(sorted(pod.labels.items())), pod.service_account, meshed)
    test_pod = next((d for d in docs if d["kind"] == "Pod" and ct.component(d) == "test"), None)
    if test_pod:
        out["test"] = mg.Peer("test", NS, tuple(sorted(test_pod["metadata"]["labels"].items())), None, False)
    mesh_on = provider != "none"
    out["kubelet"] = mg.Peer("kubelet", "", node=True)
    out["outsider"] = mg.Peer("outsider", NS, (("app", "other"),), "other", mesh_on, ip="10.1.7.7")
    out["other-namespace"] = mg.Peer("other-namespace", "shop", (("app", "shop"),), "shop", mesh_on, ip="10.1.8.8")
    out["ingress"] = mg.Peer("ingress", "ingress-nginx", (("app.kubernetes.io/name", "ingress-nginx"),),
                             "ingress-nginx", mesh_on, ip="10.1.5.5")
    out["prometheus"] = mg.Peer("prometheus", "monitoring", (("app", "prometheus"),), "prometheus", False, ip="10.1.6.6")
    return out


def calls(docs, provider: str) -> tuple[list[mg.Call], list[mg.Call]]:
    """(needed, refused) calls of a rendering with every service on PostgreSQL."""
    p = peers(docs, provider)
    methods = proto_methods()
    internal = internal_paths(methods)
    pods = mg.pods_of(docs)
    need, refuse = [], []
    for ctx, ms in methods.items():
        for m in ms:
            if m["path"] not in internal[ctx]:
                need.append(mg.Call(p["edge"], ctx, "grpc", m["path"]))
        for path in internal[ctx]:
            refuse.append(mg.Call(p["edge"], ctx, "grpc", path))
    for ctx, path in RESERVATION_CALLS:
        need.append(mg.Call(p["reservation"], ctx, "grpc", path))
    for svc in ct.SERVICES:
        need.append(mg.Call(p["kubelet"], svc, "http" if svc == "edge" else "grpc", HEALTH, probe=True))
        need.append(mg.Call(p["prometheus"], svc, "metrics"))
        extra = {"istio": 15020, "linkerd": 4191}.get(provider)
        if extra:  # the mesh's own metrics port (NetworkPolicy only: it is the proxy's, not the app's)
            need.append(mg.Call(p["prometheus"], svc, extra))
    for ctx in ct.CONTEXTS:
        if "nats" in pods:
            need.append(mg.Call(p[ctx], "nats", "client"))
        if "postgresql" in pods:
            need.append(mg.Call(p[ctx], "postgresql", "postgresql"))
    # The identity provider (an address outside the cluster): every service fetches its discovery
    # document and keys in provider mode; in HS256 mode no service reaches the internet.
    issuer = env_of(docs).get("SHAREMESH_OIDC_ISSUER")
    for svc in ct.SERVICES:
        if issuer:
            need.append(mg.Call(p[svc], "identity-provider", idp_port(issuer), ip=IDP_IP))
            refuse.append(mg.Call(p[svc], "identity-provider", 22, ip=IDP_IP))  # only the provider's port
        else:
            refuse.append(mg.Call(p[svc], "internet", 443, ip=IDP_IP))
    need.append(mg.Call(p["test"], "edge", "http", "/healthz"))
    need.append(mg.Call(p["ingress"], "edge", "http", "/v1/listings"))
    refuse += [
        mg.Call(p["outsider"], "catalog", "grpc", "/sharemesh.catalog.v1.CatalogService/GetListing"),
        mg.Call(p["other-namespace"], "reservation", "grpc", "/sharemesh.reservation.v1.ReservationService/ListReservations"),
        mg.Call(p["view"], "catalog", "grpc", "/sharemesh.catalog.v1.CatalogService/GetListing"),
        mg.Call(p["outsider"], "nats", "client"),
        mg.Call(p["outsider"], "postgresql", "postgresql"),
        mg.Call(p["other-namespace"], "edge", "http", "/v1/listings"),  # edgeFrom names ingress-nginx only
    ]
    return need, refuse


def _judges(docs, provider: str):
    judges = {"NetworkPolicy": mg.NetPol(docs, NS, provider)}
    if provider == "linkerd":
        judges["Linkerd"] = mg.Linkerd(docs, NS)
    elif provider == "istio":
        judges["Istio"] = mg.Istio(docs, NS)
    return judges


def _mesh_port(call: mg.Call) -> bool:
    return isinstance(call.port, int)  # 15020 / 4191: the proxy's own port


def check_allow_graph(provider: str, *sets: str) -> list[str]:
    docs = ct.render(f"mesh.provider={provider}", *sets, files=(GRAPH_VALUES,))
    need, refuse = calls(docs, provider)
    judges = _judges(docs, provider)
    problems = []
    for call in need:
        for jname, judge in judges.items():
            if jname != "NetworkPolicy" and (_mesh_port(call) or call.target in ("nats", "postgresql") or call.external):
                continue
            ok, why = judge.allows(call)
            if not ok:
                problems.append(f"needed call refused by {jname}: {call}: {why}")
    for call in refuse:
        # Outbound to an address outside the cluster: only the client's NetworkPolicy egress decides.
        verdicts = {j: judge.allows(call) for j, judge in judges.items() if j == "NetworkPolicy" or not call.external}
        method_level = call.client.name == "edge" or call.client.name == "view"
        if method_level and provider == "none":
            continue  # L4 cannot tell methods apart: without a mesh the services' role checks refuse these
        if all(ok for ok, _ in verdicts.values()):
            problems.append(f"unneeded call allowed: {call}: " + "; ".join(f"{j}: {w}" for j, (_, w) in verdicts.items()))
        l4 = not method_level
        if l4 and verdicts["NetworkPolicy"][0]:
            problems.append(f"unneeded call allowed by the NetworkPolicies: {call}")
    return problems


# ----------------------------------------------------------------------------- retries
def _layers(docs, provider):
    idem = {m["path"] for ms in proto_methods().values() for m in ms if m["idempotent"]}
    return rm.Layers(docs, provider, ct.RELEASE, NS, idem)


def worst_case(docs, provider: str) -> tuple[int, str]:
    """Most attempts one client call (gRPC or REST into the edge) can cause at one service."""
    L = _layers(docs, provider)
    get_paths = {m["path"] for ms in proto_methods().values() for m in ms if m["verb"] == "GET"}
    internal = internal_paths(proto_methods())
    worst, how = 0, ""

    def app(path):
        return L.app(path, "GET" if path in get_paths else "POST")

    for ctx, ms in proto_methods().items():
        for m in ms:
            if m["path"] in internal[ctx]:
                continue
            entries = [("gRPC", m["path"], "POST")] + ([("REST", "/v1/...", m["verb"])] if m["verb"] else [])
            for kind, epath, verb in entries:
                entry = 1 + L.mesh("edge", epath, verb)
                hop1 = (1 + app(m["path"])) * (1 + L.mesh(ctx, m["path"]))
                if entry * hop1 > worst:
                    worst, how = entry * hop1, f"{kind} {m['path']} at {ctx}: {entry} x {hop1}"
                # Only reservation's saga (its commands) calls catalog/payment; its reads do not.
                if ctx == "reservation" and not m["read"]:
                    for up, upath in RESERVATION_CALLS:
                        hop2 = (1 + app(upath)) * (1 + L.mesh(up, upath))
                        if entry * hop1 * hop2 > worst:
                            worst, how = entry * hop1 * hop2, f"{kind} {m['path']} -> {upath} at {up}: {entry} x {hop1} x {hop2}"
    return worst, how


def check_worst_case(provider: str, *sets: str) -> tuple[list[str], str]:
    docs = ct.render(f"mesh.provider={provider}", *sets)
    worst, how = worst_case(docs, provider)
    bound = 9  # mesh.retries.maxAttemptsPerCall's default, documented in helm/README.md
    problems = [] if worst <= bound else [f"worst case {worst} attempts ({how}) > {bound}"]
    return problems, f"{worst} ({how})"


def check_shedding_not_retried(provider: str, *sets: str) -> list[str]:
    docs = ct.render(f"mesh.provider={provider}", *sets)
    problems = []
    if provider == "istio":
        for vs in ct.kinds(docs, "VirtualService"):
            for r in vs["spec"]["http"]:
                if "retries" not in r:
                    problems.append(f"{ct.name(vs)} route {r.get('name')}: no retries block (Istio's default retries 503 and stacks)")
                bad = rm.istio_shedding_conditions(r)
                if bad:
                    problems.append(f"{ct.name(vs)} route {r.get('name')} retries load shedding: {sorted(bad)}")
    if provider == "linkerd":
        for d in ct.kinds(docs, "GRPCRoute") + ct.kinds(docs, "HTTPRoute") + ct.kinds(docs, "Service"):
            bad = rm.linkerd_shedding_conditions(d)
            if bad:
                problems.append(f"{d['kind']} {ct.name(d)} retries load shedding: {sorted(bad)}")
    return problems


def check_shedding_not_counted() -> list[str]:
    """The edge's 503 (shedding, upstream down) must not eject edge pods."""
    problems = []
    docs = ct.render("mesh.provider=istio")
    dr = next(d for d in ct.kinds(docs, "DestinationRule") if ct.component(d) == "edge")
    od = dr["spec"]["trafficPolicy"]["outlierDetection"]
    # Istio leaves an absent consecutive5xxErrors at Envoy's default (5, enforced): it must be 0.
    if od.get("consecutive5xxErrors") != 0:
        problems.append(f"Istio edge: consecutive5xxErrors = {od.get('consecutive5xxErrors')!r}, want 0 (503 is load shedding)")
    if od.get("consecutiveGatewayErrors", 0) != 0:
        problems.append("Istio edge: consecutiveGatewayErrors counts 503")
    if not od.get("splitExternalLocalOriginErrors") or not od.get("consecutiveLocalOriginFailures"):
        problems.append(f"Istio edge: no local-origin ejection (a dead edge pod would stay in): {od}")
    docs = ct.render("mesh.provider=linkerd")
    edge = next(d for d in ct.kinds(docs, "Service") if ct.name(d) == ct.full("edge"))
    ann = edge["metadata"].get("annotations") or {}
    if any(k.startswith("balancer.linkerd.io/failure-accrual") for k in ann):
        problems.append("Linkerd edge Service has failure accrual: Linkerd counts HTTP 5xx, so shedding (503) would eject edge pods")
    return problems


def check_no_retry_when_zero() -> list[str]:
    problems = []
    for d in ct.render("mesh.provider=linkerd", "mesh.retries.attempts=0", "mesh.retries.internal=mesh"):
        ann = d.get("metadata", {}).get("annotations") or {}
        if any(k.startswith("retry.linkerd.io/") for k in ann):
            problems.append(f"Linkerd {d['kind']} {ct.name(d)} has retry annotations with attempts=0 (Linkerd would retry once)")
    for vs in ct.kinds(ct.render("mesh.provider=istio", "mesh.retries.attempts=0"), "VirtualService"):
        for r in vs["spec"]["http"]:
            if (r.get("retries") or {}).get("attempts", None) != 0:
                problems.append(f"Istio {ct.name(vs)} route {r.get('name')}: retries {r.get('retries')}, want attempts: 0")
    return problems


# ----------------------------------------------------------------------------- deploy items
def expect_refusal(sets=(), files=(), says="", kube="1.33.0") -> list[str]:
    try:
        ct.render(*sets, files=files, kube=kube)
    except ct.RenderError as exc:
        return [] if says in str(exc) else [f"refused, but the message does not say {says!r}: {exc}"]
    return [f"rendered {list(sets) + list(files)} (kube {kube}); want a refusal saying {says!r}"]


def check_refusals() -> list[str]:
    cases = [
        (("services.catalog.enabled=false",), "services.catalog.enabled=false, but services.reservation calls it"),
        (("services.view.enabled=false",), "services.view.enabled=false, but services.edge calls it"),
        (("mesh.retries.retryOn=connect-failure\\,5xx",), "mesh.retries.retryOn contains \"5xx\""),
        (("mesh.retries.retryOn=reset\\,503",), "mesh.retries.retryOn contains \"503\""),
        (("mesh.retries.httpStatuses=500-504",), "mesh.retries.httpStatuses contains \"500-504\""),
        (("mesh.provider=istio", "mesh.retries.attempts=4"), "above mesh.retries.maxAttemptsPerCall=9"),
        (("nats.streams.maxBytes=1073741824",), "does not fit the JetStream store"),
        (("nats.streams.replicas=3",), "cannot have more replicas than servers"),
        (("nats.jetstream.maxFileStore=10Gi",), "exceeds the JetStream volume"),
        (("nats.streams.maxAge=30s",), "at least 1m"),
        (("storage.default=postgres", "postgresql.mode=external", "postgresql.external.host=pg"), "set postgresql.auth.password"),
    ]
    problems = []
    for sets, says in cases:
        problems += expect_refusal(sets, says=says)
    problems += expect_refusal(kube="1.28.0", says="this chart needs Kubernetes >=1.29.0-0")
    # Also the template's own SQLite refusal (for renders that skip the schema).
    return problems


def check_image_is_make_image() -> list[str]:
    mk = open(os.path.join(ct.REPO, "Makefile")).read()
    m = re.search(r"^IMAGE\s*\?=\s*(\S+)", mk, re.M)
    if not m:
        return ["Makefile: no IMAGE ?= line"]
    images = {c["image"] for w in ct.workloads(ct.render()) if ct.component(w) in ct.SERVICES
              for c in w["spec"]["template"]["spec"]["containers"]}
    return [] if images == {m.group(1)} else [f"default image {sorted(images)} != what make image builds ({m.group(1)})"]


def _go_json(data: dict) -> str:
    """Go's encoding/json of a map[string]string (what Helm's toJson writes): sorted, compact, HTML-escaped."""
    text = json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def check_secret_consistency() -> list[str]:
    problems = []
    for sets in ((), ("storage.default=postgres",)):
        docs = ct.render(*sets)
        secret = ct.kinds(docs, "Secret")[0]
        if (secret["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") != "keep":
            problems.append("Secret without helm.sh/resource-policy: keep (uninstall + install breaks the kept PostgreSQL volume)")
        want = hashlib.sha256(_go_json(secret["stringData"]).encode()).hexdigest()
        for w in ct.workloads(docs):
            got = w["spec"]["template"]["metadata"].get("annotations", {}).get("checksum/secret")
            if (ct.component(w) in ct.SERVICES or ct.component(w) == "postgresql") and got != want:
                problems.append(f"{ct.name(w)}: checksum/secret {got} is not the hash of the rendered Secret ({want}) [{' '.join(sets)}]")
    a = ct.render("auth.jwtSecret=0123456789abcdef-one")
    b = ct.render("auth.jwtSecret=0123456789abcdef-two")
    ca = {w["spec"]["template"]["metadata"]["annotations"]["checksum/secret"] for w in ct.workloads(a) if ct.component(w) in ct.SERVICES}
    cb = {w["spec"]["template"]["metadata"]["annotations"]["checksum/secret"] for w in ct.workloads(b) if ct.component(w) in ct.SERVICES}
    if len(ca) != 1 or ca == cb:
        problems.append(f"checksum/secret does not follow the JWT key: {ca} / {cb}")
    return problems


def check_postgres_roles_and_urls() -> list[str]:
    password = "p@ss w+rd/:?#%&é"
    docs = ct.render("storage.default=postgres", f"postgresql.auth.password={password.replace(',', '')}")
    problems = []
    data = ct.kinds(docs, "Secret")[0]["stringData"]
    pg = next(w for w in ct.workloads(docs) if ct.component(w) == "postgresql")
    admin = next(e["value"] for e in pg["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "POSTGRES_USER")
    roles_sql = next(d for d in ct.kinds(docs, "ConfigMap") if ct.name(d).endswith("-roles"))["data"]["roles.sql"]
    for ctx in ct.CONTEXTS:
        url = urllib.parse.urlsplit(data[f"DATABASE_URL_{ctx.upper()}"])
        user, pw = urllib.parse.unquote(url.username or ""), urllib.parse.unquote(url.password or "")
        if pw != password:
            problems.append(f"{ctx}: the URL's password decodes to {pw!r}, want {password!r} (raw {url.netloc!r})")
        if "+" in url.netloc:
            problems.append(f"{ctx}: '+' in the URL userinfo ({url.netloc!r}): PostgreSQL clients read it as a literal '+'")
        if user == admin or user != f"sharemesh_{ctx}":
            problems.append(f"{ctx}: connects as {user!r} (superuser {admin!r}); want its own role sharemesh_{ctx}")
        if url.path != f"/{ctx}":
            problems.append(f"{ctx}: database {url.path}")
        if f"role_{ctx}" not in roles_sql:
            problems.append(f"roles.sql does not create the role of {ctx}")
    if "NOSUPERUSER" not in roles_sql or "REVOKE ALL ON DATABASE" not in roles_sql:
        problems.append("roles.sql: the services' roles must be NOSUPERUSER and the databases closed to PUBLIC")
    return problems


def check_statefulsets_headless() -> list[str]:
    docs = ct.render("storage.default=postgres", "services.view.storage=sqlite", "nats.replicas=3")
    services = {ct.name(s): s for s in ct.kinds(docs, "Service")}
    problems = []
    for st in ct.kinds(docs, "StatefulSet"):
        svc = services.get(st["spec"]["serviceName"])
        if svc is None or svc["spec"].get("clusterIP") != "None":
            problems.append(f"StatefulSet {ct.name(st)}: serviceName {st['spec']['serviceName']} is not a headless Service")
        elif not mg.selects({"matchLabels": svc["spec"]["selector"]}, st["spec"]["template"]["metadata"]["labels"]):
            problems.append(f"StatefulSet {ct.name(st)}: its headless Service does not select its pods")
    return problems


def nats_pin() -> str | None:
    m = re.search(r"^\s*NATS_VERSION=[\"']?([0-9][0-9.]*)", open(os.path.join(ct.REPO, "scripts", "deps.sh")).read(), re.M)
    return m.group(1) if m else None


def check_pinned_images() -> list[str]:
    problems = []
    pin = nats_pin()
    if not pin:
        problems.append("scripts/deps.sh has no NATS_VERSION= line: make deps and the chart cannot share the nats-server version")
    docs = ct.render("storage.default=postgres")
    for w in ct.workloads(docs) + ct.kinds(docs, "Pod"):
        spec = w["spec"]["template"]["spec"] if "template" in w["spec"] else w["spec"]
        for c in spec["containers"]:
            repo, _, tag = c["image"].rpartition(":")
            if ct.component(w) in ct.SERVICES:
                continue  # the project's own image: make image's tag (check_image_is_make_image)
            if not re.match(r"^\d+\.\d+(\.\d+)?(-|$)", tag):
                problems.append(f"{ct.name(w)}/{c['name']}: floating image tag {c['image']!r} (pin major.minor[.patch])")
            if repo == "nats" and pin and tag != f"{pin}-alpine":
                problems.append(f"NATS image {c['image']} != make deps' nats-server {pin} (scripts/deps.sh NATS_VERSION)")
    return problems


def check_nats(replicas: int) -> list[str]:
    docs = ct.render(f"nats.replicas={replicas}")
    problems = []
    conf = next(d for d in ct.kinds(docs, "ConfigMap") if ct.name(d) == ct.full("nats") + "-config")["data"]["nats.conf"]
    env = next(d for d in ct.kinds(docs, "ConfigMap") if ct.name(d).endswith("-env"))["data"]
    if not re.search(r"jetstream\s*\{[^}]*\bsync_interval:\s*always\b", conf, re.S):
        problems.append("nats.conf: no sync_interval: always under jetstream")
    if not re.search(r"^server_name:\s*\$POD_NAME\s*$", conf, re.M):
        problems.append("nats.conf: server_name is not the pod name")
    st = next(w for w in ct.kinds(docs, "StatefulSet") if ct.component(w) == "nats")
    if st["spec"]["replicas"] != replicas:
        problems.append(f"NATS StatefulSet replicas {st['spec']['replicas']}")
    headless = st["spec"]["serviceName"]
    if env.get("SHAREMESH_STREAM_REPLICAS") != str(replicas):
        problems.append(f"SHAREMESH_STREAM_REPLICAS = {env.get('SHAREMESH_STREAM_REPLICAS')!r}, want '{replicas}'")
    store = int(re.search(r"max_file_store:\s*(\d+)", conf).group(1))
    if int(env["SHAREMESH_STREAM_MAX_BYTES"]) * 6 > store or int(env["SHAREMESH_STREAM_MAX_BYTES"]) <= 0:
        problems.append(f"SHAREMESH_STREAM_MAX_BYTES {env['SHAREMESH_STREAM_MAX_BYTES']} x 6 streams vs max_file_store {store}")
    cluster = re.search(r"cluster\s*\{(.*?)\n\}", conf, re.S)
    if replicas == 1:
        if cluster:
            problems.append("a single NATS server has a cluster block")
        return problems
    if not cluster:
        return problems + ["nats.replicas=3: no cluster block"]
    body = cluster.group(1)
    if not re.search(rf"\bname:\s*{ct.full('nats')}\b", body):
        problems.append("cluster block without name")
    routes = set(re.findall(r"nats://([\w.-]+):6222", body))
    want = {f"{ct.full('nats')}-{i}.{headless}.{NS}.svc.cluster.local" for i in range(replicas)}
    if routes != want:
        problems.append(f"cluster routes {sorted(routes)}, want {sorted(want)}")
    if "advertise: $CLUSTER_ADVERTISE" not in body:
        problems.append("cluster block does not advertise the pod's DNS name")
    c = st["spec"]["template"]["spec"]["containers"][0]
    adv = next((e["value"] for e in c.get("env", []) if e["name"] == "CLUSTER_ADVERTISE"), "")
    if adv != f"$(POD_NAME).{headless}.{NS}.svc.cluster.local:6222":
        problems.append(f"CLUSTER_ADVERTISE = {adv!r}")
    if st["spec"].get("podManagementPolicy") != "Parallel":
        problems.append("NATS pods must start in parallel to elect a meta leader")
    return problems


def check_nats_external() -> list[str]:
    problems = []
    docs = ct.render("nats.external.url=nats://a.example:4222\\,nats://b.example:4223\\,tls://c.example",
                     "nats.streams.replicas=3", "nats.streams.maxAge=720h", "nats.streams.maxBytes=1000000")
    env = next(d for d in ct.kinds(docs, "ConfigMap") if ct.name(d).endswith("-env"))["data"]
    for k, v in (("SHAREMESH_STREAM_REPLICAS", "3"), ("SHAREMESH_STREAM_MAX_AGE", "720h"), ("SHAREMESH_STREAM_MAX_BYTES", "1000000")):
        if env.get(k) != v:
            problems.append(f"{k} = {env.get(k)!r}, want {v!r}")
    for p in ct.kinds(docs, "NetworkPolicy"):
        if ct.component(p) not in ct.CONTEXTS:
            continue
        ports = {pt["port"] for r in p["spec"]["egress"] for pt in r.get("ports") or [] if pt.get("port") not in (53,)}
        if not {4222, 4223} <= ports or 0 in ports:
            problems.append(f"{ct.name(p)}: egress ports {sorted(map(str, ports))}, want 4222 and 4223 (and never 0)")
    if any(ct.component(w) == "nats" for w in ct.workloads(docs)):
        problems.append("an external NATS still deploys the in-chart one")
    return problems


def check_drain_waits() -> list[str]:
    stop = 5 + 20
    problems = []
    for provider, key in (("istio", "proxy.istio.io/config"), ("linkerd", "config.alpha.linkerd.io/proxy-wait-before-exit-seconds")):
        for w in ct.workloads(ct.render(f"mesh.provider={provider}")):
            if ct.component(w) not in ct.SERVICES:
                continue
            ann = w["spec"]["template"]["metadata"]["annotations"]
            value = ann.get(key, "")
            got = json.loads(value)["terminationDrainDuration"] if provider == "istio" else value
            if str(got).rstrip("s") != str(stop):
                problems.append(f"{provider} {ct.name(w)}: proxy drain {got!r}, want {stop}s (drainDelay + shutdownGrace)")
    return problems


def check_sqlite_refused_by_template() -> list[str]:
    """The schema refuses these; the templates refuse them too (renders that skip the schema)."""
    import shutil
    import tempfile
    import yaml
    problems = []
    with tempfile.TemporaryDirectory() as tmp:  # the chart without its schema (--skip-schema-validation)
        copy = os.path.join(tmp, "sharemesh")
        shutil.copytree(ct.CHART, copy)
        os.remove(os.path.join(copy, "values.schema.json"))
        saved, ct.CHART = ct.CHART, copy
        try:
            for sets, says in ((("services.catalog.replicas=2",), "catalog keeps SQLite"),
                               (("services.payment.autoscaling.enabled=true",), "payment keeps SQLite")):
                problems += expect_refusal(sets, says=says)
        finally:
            ct.CHART = saved
    values = yaml.safe_load(open(os.path.join(ct.CHART, "values.yaml")))
    for ctx in ct.CONTEXTS:
        svc = values["services"][ctx]
        if svc.get("replicas") is not None or svc["autoscaling"].get("enabled") is not None:
            problems.append(f"values.yaml services.{ctx}: replicas/autoscaling.enabled must default to null (decided by storage)")
    return problems


# ----------------------------------------------------------------------------- identity (issue #14)
OIDC_VARS = ("SHAREMESH_OIDC_ISSUER", "SHAREMESH_OIDC_ROLES_CLAIM", "SHAREMESH_OIDC_ROLE_MAP",
             "SHAREMESH_OIDC_SUBJECT_CLAIM", "SHAREMESH_OIDC_LEEWAY", "SHAREMESH_OIDC_REFRESH")


def service_env(docs) -> dict[str, dict]:
    """Per service: the environment its container gets, as the kubelet builds it: the ConfigMaps of
    envFrom (in order), then env; a value from a Secret is ("secret", name, key, optional)."""
    cms = {ct.name(d): d.get("data") or {} for d in ct.kinds(docs, "ConfigMap")}
    out = {}
    for w in ct.workloads(docs):
        if ct.component(w) not in ct.SERVICES:
            continue
        c = w["spec"]["template"]["spec"]["containers"][0]
        env: dict = {}
        for src in c.get("envFrom") or []:
            env.update(cms.get(src["configMapRef"]["name"], {"<missing ConfigMap>": src["configMapRef"]["name"]}))
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            env[e["name"]] = ("secret", ref["name"], ref["key"], bool(ref.get("optional"))) if ref else e.get("value")
        out[ct.component(w)] = env
    return out


def _secret_data(docs) -> dict:
    secrets = ct.kinds(docs, "Secret")
    return secrets[0]["stringData"] if secrets else {}


def check_identity_provider_mode() -> list[str]:
    """auth.issuer set: every service (the edge too) gets the SHAREMESH_OIDC_* settings and the
    service key, and neither a SHAREMESH_JWT_SECRET (the services refuse both modes at once) nor the
    HS256 issuer; the Secret holds the service key and no JWT key."""
    problems = []
    for sets in ((), ("storage.default=postgres",), ("secrets.existingSecret=byo",)):
        docs = ct.render(f"auth.issuer={KEYCLOAK}", "auth.audience=sharemesh-web", "auth.rolesClaim=realm_access.roles",
                         f"auth.roleMap={KEYCLOAK_ROLE_MAP.replace(',', chr(92) + ',')}", *sets)
        label = f"[{' '.join(sets) or 'default'}]"
        envs = service_env(docs)
        if sorted(envs) != sorted(ct.SERVICES):
            problems.append(f"{label} services rendered: {sorted(envs)}")
        want = {"SHAREMESH_OIDC_ISSUER": KEYCLOAK, "SHAREMESH_OIDC_AUDIENCE": "sharemesh-web",
                "SHAREMESH_OIDC_ROLES_CLAIM": "realm_access.roles", "SHAREMESH_OIDC_ROLE_MAP": KEYCLOAK_ROLE_MAP,
                "SHAREMESH_OIDC_SUBJECT_CLAIM": "sub", "SHAREMESH_OIDC_LEEWAY": "30s", "SHAREMESH_OIDC_REFRESH": "10m"}
        secret_name = "byo" if "secrets.existingSecret=byo" in sets else f"{ct.full('secrets')}"
        for svc, env in envs.items():
            for k, v in want.items():
                if env.get(k) != v:
                    problems.append(f"{label} {svc}: {k} = {env.get(k)!r}, want {v!r}")
            for k in ("SHAREMESH_JWT_SECRET", "SHAREMESH_JWT_ISSUER"):
                if k in env:
                    problems.append(f"{label} {svc}: {k} is set in provider mode ({env[k]!r}): the services refuse it")
            ref = env.get("SHAREMESH_SERVICE_SECRET")
            if ref != ("secret", secret_name, "SHAREMESH_SERVICE_SECRET", False):
                problems.append(f"{label} {svc}: SHAREMESH_SERVICE_SECRET = {ref!r}, want required, from Secret {secret_name}")
        data = _secret_data(docs)
        if "secrets.existingSecret=byo" in sets:
            if data:
                problems.append(f"{label} a Secret is rendered although secrets.existingSecret is set")
            continue
        if "SHAREMESH_JWT_SECRET" in data:
            problems.append(f"{label} the Secret holds SHAREMESH_JWT_SECRET in provider mode")
        if len(data.get("SHAREMESH_SERVICE_SECRET", "")) < 16:
            problems.append(f"{label} the Secret's SHAREMESH_SERVICE_SECRET is missing or shorter than 16 bytes")
    # The service key is hashed into checksum/secret like the JWT key: every replica restarts together.
    sums = []
    for key in ("0123456789abcdef-one", "0123456789abcdef-two"):
        docs = ct.render(f"auth.issuer={KEYCLOAK}", f"auth.serviceSecret={key}")
        sums.append({w["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
                     for w in ct.workloads(docs) if ct.component(w) in ct.SERVICES})
        if _secret_data(docs).get("SHAREMESH_SERVICE_SECRET") != key:
            problems.append(f"auth.serviceSecret={key} is not what the Secret holds")
    if len(sums[0]) != 1 or sums[0] == sums[1]:
        problems.append(f"checksum/secret does not follow the service key: {sums}")
    # jwksUri rendered when set (and only then).
    env = service_env(ct.render(f"auth.issuer={KEYCLOAK}", f"auth.jwksUri={KEYCLOAK}/protocol/openid-connect/certs"))["edge"]
    if env.get("SHAREMESH_OIDC_JWKS_URI") != f"{KEYCLOAK}/protocol/openid-connect/certs":
        problems.append(f"SHAREMESH_OIDC_JWKS_URI = {env.get('SHAREMESH_OIDC_JWKS_URI')!r}")
    if "SHAREMESH_OIDC_JWKS_URI" in service_env(ct.render(f"auth.issuer={KEYCLOAK}"))["edge"]:
        problems.append("SHAREMESH_OIDC_JWKS_URI rendered without auth.jwksUri (it must come from discovery then)")
    return problems


def check_hs256_mode() -> list[str]:
    """No auth.issuer: as before (SHAREMESH_JWT_SECRET and SHAREMESH_JWT_ISSUER, no SHAREMESH_OIDC_*),
    plus the generated service key for every service, a different secret from the JWT key."""
    problems = []
    for sets in ((), ("storage.default=postgres",)):
        docs = ct.render(*sets)
        label = f"[{' '.join(sets) or 'default'}]"
        secret = ct.full("secrets")
        for svc, env in service_env(docs).items():
            if env.get("SHAREMESH_JWT_SECRET") != ("secret", secret, "SHAREMESH_JWT_SECRET", False):
                problems.append(f"{label} {svc}: SHAREMESH_JWT_SECRET = {env.get('SHAREMESH_JWT_SECRET')!r}")
            if env.get("SHAREMESH_SERVICE_SECRET") != ("secret", secret, "SHAREMESH_SERVICE_SECRET", False):
                problems.append(f"{label} {svc}: SHAREMESH_SERVICE_SECRET = {env.get('SHAREMESH_SERVICE_SECRET')!r}")
            if env.get("SHAREMESH_JWT_ISSUER") != "sharemesh":
                problems.append(f"{label} {svc}: SHAREMESH_JWT_ISSUER = {env.get('SHAREMESH_JWT_ISSUER')!r}")
            oidc = sorted(k for k in env if k.startswith("SHAREMESH_OIDC_"))
            if oidc:
                problems.append(f"{label} {svc}: OIDC settings in HS256 mode: {oidc}")
        data = _secret_data(docs)
        jwt, svc_key = data.get("SHAREMESH_JWT_SECRET", ""), data.get("SHAREMESH_SERVICE_SECRET", "")
        if len(jwt) < 16 or len(svc_key) < 16:
            problems.append(f"{label} the Secret must hold both keys, 16+ bytes each: {sorted(data)}")
        elif jwt == svc_key:
            problems.append(f"{label} the service key equals the JWT key")
    # An existing Secret from before the service key: optional in HS256 mode (the services derive it).
    for svc, env in service_env(ct.render("secrets.existingSecret=byo")).items():
        if env.get("SHAREMESH_SERVICE_SECRET") != ("secret", "byo", "SHAREMESH_SERVICE_SECRET", True):
            problems.append(f"existingSecret, HS256: {svc}: SHAREMESH_SERVICE_SECRET = {env.get('SHAREMESH_SERVICE_SECRET')!r}, want optional")
        if env.get("SHAREMESH_JWT_SECRET") != ("secret", "byo", "SHAREMESH_JWT_SECRET", False):
            problems.append(f"existingSecret, HS256: {svc}: SHAREMESH_JWT_SECRET = {env.get('SHAREMESH_JWT_SECRET')!r}")
    return problems


def check_request_authentication() -> list[str]:
    """The edge's Istio RequestAuthentication: only with auth.istioRequestAuthentication=true, only
    with mesh.provider=istio and auth.issuer (refused otherwise), from the same values."""
    problems = []
    ra = lambda docs: [d for d in docs if d.get("kind") == "RequestAuthentication"]  # noqa: E731
    for sets in (("mesh.provider=istio",), ("mesh.provider=istio", f"auth.issuer={KEYCLOAK}"),
                 ("mesh.provider=linkerd", f"auth.issuer={KEYCLOAK}"), (f"auth.issuer={KEYCLOAK}",)):
        if ra(ct.render(*sets)):
            problems.append(f"RequestAuthentication rendered without being asked for: {sets}")
    docs = ct.render("mesh.provider=istio", f"auth.issuer={KEYCLOAK}", "auth.audience=sharemesh-web",
                     f"auth.jwksUri={KEYCLOAK}/protocol/openid-connect/certs", "auth.istioRequestAuthentication=true")
    objs = ra(docs)
    if len(objs) != 1:
        return problems + [f"want one RequestAuthentication, got {len(objs)}"]
    obj = objs[0]
    if obj["apiVersion"] != "security.istio.io/v1":
        problems.append(f"apiVersion {obj['apiVersion']}")
    edge = mg.pods_of(docs)["edge"]
    sel = obj["spec"].get("selector")
    if not sel or not mg.selects(sel, edge.labels):
        problems.append(f"selector {sel} does not select the edge's pods")
    for comp, pod in mg.pods_of(docs).items():
        if comp != "edge" and sel and mg.selects(sel, pod.labels):
            problems.append(f"the RequestAuthentication also selects {comp}")
    want = {"issuer": KEYCLOAK, "jwksUri": f"{KEYCLOAK}/protocol/openid-connect/certs",
            "audiences": ["sharemesh-web"], "forwardOriginalToken": True}
    if obj["spec"].get("jwtRules") != [want]:
        problems.append(f"jwtRules {obj['spec'].get('jwtRules')}, want [{want}]")
    # Without jwksUri / audience: discovery from the issuer, any audience.
    rules = ra(ct.render("mesh.provider=istio", f"auth.issuer={KEYCLOAK}", "auth.istioRequestAuthentication=true"))[0]["spec"]["jwtRules"]
    if rules != [{"issuer": KEYCLOAK, "forwardOriginalToken": True}]:
        problems.append(f"without jwksUri/audience: jwtRules {rules}")
    problems += expect_refusal(("mesh.provider=linkerd", f"auth.issuer={KEYCLOAK}", "auth.istioRequestAuthentication=true"),
                               says="auth.istioRequestAuthentication=true needs mesh.provider=istio")
    problems += expect_refusal((f"auth.issuer={KEYCLOAK}", "auth.istioRequestAuthentication=true"),
                               says="needs mesh.provider=istio")
    problems += expect_refusal(("mesh.provider=istio", "auth.istioRequestAuthentication=true"),
                               says="/auth/istioRequestAuthentication")
    return problems


def _without_schema(fn):
    """Runs fn with ct.CHART pointing at a copy of the chart without values.schema.json (renders that skip it)."""
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "sharemesh")
        shutil.copytree(ct.CHART, copy)
        os.remove(os.path.join(copy, "values.schema.json"))
        saved, ct.CHART = ct.CHART, copy
        try:
            return fn()
        finally:
            ct.CHART = saved


def check_identity_refused_by_template() -> list[str]:
    """The schema refuses these (bad-values/oidc-*.yaml); the templates refuse them too, with a message."""
    cases = [
        (("auth.jwksUri=https://sso.example.com/certs",), "auth.jwksUri is set but auth.issuer is not"),
        (("auth.audience=sharemesh-web",), "auth.audience is set but auth.issuer is not"),
        ((f"auth.issuer={KEYCLOAK}", "auth.roleMap=sharemesh-admin=admin\\,sharemesh-robot=service"),
         'auth.roleMap maps "sharemesh-robot" to service'),
        ((f"auth.issuer={KEYCLOAK}", "auth.jwtSecret=0123456789abcdef-x"), "auth.jwtSecret is set together with auth.issuer"),
        (("mesh.provider=istio", "auth.istioRequestAuthentication=true"), "auth.istioRequestAuthentication=true needs auth.issuer"),
    ]
    return _without_schema(lambda: [p for sets, says in cases for p in expect_refusal(sets, says=says)])


def check_identity_provider_egress() -> list[str]:
    """NetworkPolicies: in provider mode every service may reach the provider on its port (443 for
    https://, the URL's port, or networkPolicies.identityProvider.ports), to anywhere or only
    networkPolicies.identityProvider.to; in HS256 mode no egress to outside addresses at all."""
    problems = []

    def judge(sets, ip, port):
        docs = ct.render("storage.default=postgres", *sets)
        net = mg.NetPol(docs, NS, "none")
        pods = mg.pods_of(docs)
        out = {}
        for svc in ct.SERVICES:
            peer = mg.Peer(svc, NS, tuple(sorted(pods[svc].labels.items())), pods[svc].service_account)
            out[svc] = net.allows(mg.Call(peer, "identity-provider", port, ip=ip))
        return out

    cases = [  # (sets, ip, port, allowed)
        ((), IDP_IP, 443, False),
        ((f"auth.issuer={KEYCLOAK}",), IDP_IP, 443, True),
        ((f"auth.issuer={KEYCLOAK}",), IDP_IP, 80, False),
        (("auth.issuer=http://keycloak.sso.svc:8080/realms/sharemesh",), "10.96.0.20", 8080, True),
        (("auth.issuer=http://keycloak.sso.svc:8080/realms/sharemesh",), "10.96.0.20", 443, False),
        ((f"auth.issuer={KEYCLOAK}", "auth.jwksUri=https://keys.example.com:8443/certs"), IDP_IP, 8443, True),
        ((f"auth.issuer={KEYCLOAK}", "networkPolicies.identityProvider.ports[0]=9443"), IDP_IP, 9443, True),
        ((f"auth.issuer={KEYCLOAK}", "networkPolicies.identityProvider.ports[0]=9443"), IDP_IP, 443, False),
        ((f"auth.issuer={KEYCLOAK}", "networkPolicies.identityProvider.to[0].ipBlock.cidr=198.51.100.0/24"), "198.51.100.7", 443, True),
        ((f"auth.issuer={KEYCLOAK}", "networkPolicies.identityProvider.to[0].ipBlock.cidr=198.51.100.0/24"), IDP_IP, 443, False),
    ]
    for sets, ip, port, allowed in cases:
        for svc, (ok, why) in judge(sets, ip, port).items():
            if ok != allowed:
                problems.append(f"{' '.join(sets) or 'HS256'}: {svc} -> {ip}:{port} {'allowed' if ok else 'refused'} ({why}), want {'allowed' if allowed else 'refused'}")
    return problems


# ----------------------------------------------------------------------------- PostgreSQL connections
def _max_connections(docs) -> int | None:
    pg = next((w for w in ct.workloads(docs) if ct.component(w) == "postgresql"), None)
    if pg is None:
        return None
    args = pg["spec"]["template"]["spec"]["containers"][0].get("args") or []
    found = [a.split("=", 1)[1] for a in args if a.startswith("max_connections=")]
    return int(found[0]) if found else None


def worst_case_connections(docs) -> int:
    """From the rendered objects: per service on PostgreSQL, (HPA maxReplicas, or the Deployment's
    replicas) + 1 pod a rolling update surges (maxSurge), x its SHAREMESH_DB_POOL."""
    hpas = {d["spec"]["scaleTargetRef"]["name"]: d["spec"]["maxReplicas"] for d in ct.kinds(docs, "HorizontalPodAutoscaler")}
    envs = service_env(docs)
    total = 0
    for w in ct.kinds(docs, "Deployment"):
        svc = ct.component(w)
        env = envs.get(svc, {})
        if svc not in ct.CONTEXTS or not isinstance(env.get("DATABASE_URL"), tuple):
            continue  # only services whose DATABASE_URL is a PostgreSQL URL from the Secret
        most = hpas.get(ct.name(w), w["spec"].get("replicas", 1))
        surge = ((w["spec"].get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", 1)
        total += (most + int(surge)) * int(env["SHAREMESH_DB_POOL"])
    return total


def check_db_pool() -> list[str]:
    """SHAREMESH_DB_POOL = database.pool on every service on PostgreSQL (not on SQLite, not the
    edge); the in-chart PostgreSQL runs with max_connections = postgresql.maxConnections."""
    problems = []
    for sets, pool, maxc in (((), "5", 200), (("database.pool=3", "postgresql.maxConnections=300"), "3", 300)):
        docs = ct.render("storage.default=postgres", "services.view.storage=sqlite", *sets)
        for svc, env in service_env(docs).items():
            on_pg = svc in ct.CONTEXTS and svc != "view"
            got = env.get("SHAREMESH_DB_POOL")
            if on_pg and got != pool:
                problems.append(f"[{' '.join(sets) or 'default'}] {svc} on PostgreSQL: SHAREMESH_DB_POOL = {got!r}, want {pool!r}")
            if not on_pg and got is not None:
                problems.append(f"{svc} (not on PostgreSQL) has SHAREMESH_DB_POOL = {got!r}")
        if _max_connections(docs) != maxc:
            problems.append(f"in-chart PostgreSQL max_connections = {_max_connections(docs)}, want {maxc}")
    # External PostgreSQL: the pool is rendered; the budget is yours (no in-chart server to check).
    docs = ct.render("storage.default=postgres", "postgresql.mode=external", "postgresql.external.host=pg",
                     "postgresql.auth.password=pw", "database.pool=50")
    if {e.get("SHAREMESH_DB_POOL") for s, e in service_env(docs).items() if s in ct.CONTEXTS} != {"50"}:
        problems.append("external PostgreSQL: SHAREMESH_DB_POOL not rendered as database.pool")
    return problems


def check_connection_budget() -> list[str]:
    """The services' worst case (recomputed from the rendered HPAs, Deployments and SHAREMESH_DB_POOL)
    + postgresql.connectionMargin fits the in-chart max_connections in every accepted rendering, and
    the chart refuses, with a message, the values where it does not - exactly at the boundary."""
    problems = []
    margin = 10
    for sets in (("storage.default=postgres",),
                 ("storage.default=postgres", "services.catalog.autoscaling.enabled=false", "services.catalog.replicas=3"),
                 ("storage.default=postgres", "services.message.storage=sqlite", "database.pool=6")):
        docs = ct.render(*sets)
        worst, maxc = worst_case_connections(docs), _max_connections(docs)
        if maxc is None or worst + margin > maxc:
            problems.append(f"{sets}: worst case {worst} + margin {margin} > max_connections {maxc}")
    # The default all-PostgreSQL install: (7+7+7+5+7) pods x 5 = 165, + 10 = 175.
    worst = worst_case_connections(ct.render("storage.default=postgres"))
    if worst != 165:
        problems.append(f"default worst case {worst}, want 165 ((6+1)x4 + (4+1) pods x 5)")
    try:
        ct.render("storage.default=postgres", "postgresql.maxConnections=175")
    except ct.RenderError as exc:
        problems.append(f"an exact fit (165 + 10 = 175) was refused: {exc}")
    problems += expect_refusal(("storage.default=postgres", "postgresql.maxConnections=174"),
                               says="could open 165 connections")
    problems += expect_refusal(("storage.default=postgres", "database.pool=10"),
                               says="above postgresql.maxConnections=200: lower database.pool")
    problems += expect_refusal(("storage.default=postgres", "services.edge.autoscaling.maxReplicas=50",
                                "services.catalog.autoscaling.maxReplicas=20"), says="catalog 21 + reservation 7")
    # The edge keeps no database; SQLite services and an external server are not counted.
    for sets in (("storage.default=postgres", "services.edge.autoscaling.maxReplicas=100"),
                 ("database.pool=100",),
                 ("storage.default=postgres", "postgresql.mode=external", "postgresql.external.host=pg",
                  "postgresql.auth.password=pw", "database.pool=100")):
        try:
            ct.render(*sets)
        except ct.RenderError as exc:
            problems.append(f"{sets} refused: {exc}")
    return problems
