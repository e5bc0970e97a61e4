"""How many times the rendered mesh routes and the services' own clients retry one call.

Read from rendered objects only, with each layer's documented rules:

  Istio VirtualService (istio pilot/pkg/networking/core/route/retry/retry.go): the first http
  route whose match fits the request applies; a route without `retries` gets Istio's default
  policy (2 retries on connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
  with 503); attempts <= 0 disables retries; numbers in retryOn are retriable status codes.
  Linkerd (docs "Retries", "Timeouts"): the callers' proxy uses the best-matching HTTPRoute or
  GRPCRoute parented to the Service; retry.linkerd.io/http|grpc say what is retried and
  retry.linkerd.io/limit how often (1 when unset).
  The services' client (mesh/src/client/retry.rs): a method declared IDEMPOTENT or
  NO_SIDE_EFFECTS in proto/ is retried SHAREMESH_CLIENT_RETRIES times on UNAVAILABLE and
  transport errors; others are sent once.

A retry only on connect-failure / refused-stream never reaches a server (the connection failed,
or HTTP/2 REFUSED_STREAM says the request was not processed), so it is not counted as an attempt
that reaches a service.
"""
from __future__ import annotations

NOT_PROCESSED = {"connect-failure", "refused-stream"}
ISTIO_DEFAULT = {"attempts": 2, "retryOn": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503"}
SHEDDING_ISTIO = {"5xx", "gateway-error", "retriable-status-codes", "503", "429", "resource-exhausted", "envoy-ratelimited"}


def istio_route(vs: dict, path: str, verb: str) -> dict:
    for route in vs["spec"].get("http") or []:
        matches = route.get("match")
        if not matches:
            return route
        for m in matches:
            ok = True
            if "uri" in m and m["uri"].get("exact") not in (None, path):
                ok = False
            if "uri" in m and "prefix" in m["uri"] and not path.startswith(m["uri"]["prefix"]):
                ok = False
            if "method" in m and m["method"].get("exact") != verb:
                ok = False
            if ok:
                return route
    return {}


def istio_retries(route: dict) -> dict:
    r = route.get("retries")
    if r is None:
        return dict(ISTIO_DEFAULT, default=True)
    return {"attempts": int(r.get("attempts", 0)), "retryOn": r.get("retryOn", ISTIO_DEFAULT["retryOn"]) if int(r.get("attempts", 0)) > 0 else ""}


def istio_processed_retries(route: dict) -> int:
    r = istio_retries(route)
    conds = {c.strip() for c in r["retryOn"].split(",") if c.strip()}
    if r["attempts"] <= 0 or conds <= NOT_PROCESSED:
        return 0
    return r["attempts"]


def istio_shedding_conditions(route: dict) -> set[str]:
    r = istio_retries(route)
    if r["attempts"] <= 0:
        return set()
    conds = {c.strip() for c in r["retryOn"].split(",") if c.strip()}
    return conds & SHEDDING_ISTIO


def _code_ranges(spec: str) -> set[int]:
    out = set()
    for part in str(spec).split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "5xx":
            out |= set(range(500, 600))
        elif part == "gateway-error":
            out |= {502, 503, 504}
        elif "-" in part:
            a, b = part.split("-")
            out |= set(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return out


def linkerd_route(routes: list[dict], path: str | None, verb: str) -> dict:
    """The best route among those parented to one Service: exact gRPC method > anything else."""
    best, best_score = {}, -1
    for r in routes:
        for rule in r["spec"].get("rules") or [{}]:
            for m in rule.get("matches") or [{}]:
                mm = m.get("method")
                if r["kind"] == "GRPCRoute":
                    if mm is None:
                        score = 0
                    elif path and f"/{mm.get('service')}/{mm.get('method')}" == path:
                        score = 3
                    else:
                        continue
                else:
                    if mm is None:
                        score = 0
                    elif mm == verb:
                        score = 2
                    else:
                        continue
                if score > best_score:
                    best, best_score = r, score
    return best


def linkerd_processed_retries(route: dict) -> int:
    ann = route.get("metadata", {}).get("annotations") or {}
    if not any(k in ann for k in ("retry.linkerd.io/http", "retry.linkerd.io/grpc")):
        return 0
    return int(ann.get("retry.linkerd.io/limit", 1))


def linkerd_shedding_conditions(route: dict) -> set[str]:
    ann = route.get("metadata", {}).get("annotations") or {}
    bad = set()
    if "retry.linkerd.io/http" in ann:
        codes = _code_ranges(ann["retry.linkerd.io/http"])
        bad |= {str(c) for c in codes & {503, 429}}
    if "retry.linkerd.io/grpc" in ann:
        if "resource-exhausted" in {c.strip() for c in ann["retry.linkerd.io/grpc"].split(",")}:
            bad.add("resource-exhausted")
    return bad


class Layers:
    """Retry factors of one rendering: mesh(caller -> target, method) and app(caller, method)."""

    def __init__(self, docs: list[dict], provider: str, release: str, namespace: str, idempotent: set[str]):
        self.docs = docs
        self.provider = provider
        self.release = release
        self.ns = namespace
        self.idempotent = idempotent  # "/pkg.Svc/Method" declared IDEMPOTENT or NO_SIDE_EFFECTS
        env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-env"))["data"]
        self.client_retries = int(env["SHAREMESH_CLIENT_RETRIES"])

    def mesh(self, target: str, path: str, verb: str = "POST") -> int:
        full = f"{self.release}-{target}"
        if self.provider == "istio":
            host = f"{full}.{self.ns}.svc.cluster.local"
            vs = next((d for d in self.docs if d["kind"] == "VirtualService" and host in d["spec"]["hosts"]), None)
            if vs is None:
                return ISTIO_DEFAULT["attempts"]  # no VirtualService: Istio's default retries apply
            return istio_processed_retries(istio_route(vs, path, verb))
        if self.provider == "linkerd":
            routes = [d for d in self.docs if d["kind"] in ("GRPCRoute", "HTTPRoute")
                      and any(pr.get("kind") == "Service" and pr["name"] == full for pr in d["spec"].get("parentRefs") or [])]
            return linkerd_processed_retries(linkerd_route(routes, path, verb)) if routes else 0
        return 0

    def app(self, path: str, verb: str = "POST") -> int:
        """The services' client: idempotent methods (and, at the edge, REST GET) are retried."""
        return self.client_retries if (path in self.idempotent or verb == "GET") else 0
