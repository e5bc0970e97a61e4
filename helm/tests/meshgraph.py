"""Who may call whom, decided from rendered objects the way each mesh and Kubernetes decide it.

The chart tests build the calls sharemesh needs (and some it must refuse), then ask three
independent judges about each one:

  linkerd(call)  the Linkerd policy controller's rules (policy-controller/k8s/index/src/inbound/
                 index.rs, grpc/src/inbound.rs, docs "Server", "GRPCRoute", "AuthorizationPolicy"):
                 no Server on the port -> the pod's default-inbound-policy; a Server -> deny unless
                 authorized; its proxyProtocol decides which routes apply (gRPC: GRPCRoutes only;
                 HTTP/1, HTTP/2, unknown: HTTPRoutes only; opaque/TLS: none); no route of that kind ->
                 a default route authorized by policies targeting the Server; else the most specific
                 matching route, authorized by policies targeting that route (gateway.networking.k8s.io
                 GRPCRoute/HTTPRoute, or policy.linkerd.io HTTPRoute); a policy holds when ALL its
                 requiredAuthenticationRefs hold and exist (MeshTLSAuthentication: the client's
                 ServiceAccount; NetworkAuthentication: the client's address).
  istio(call)    PeerAuthentication (STRICT needs a client with a sidecar; port-level modes) and
                 AuthorizationPolicy (when ALLOW policies select the workload, a request must match
                 one rule: from.source principals/namespaces AND to.operation paths/notPaths/ports);
                 the kubelet's HTTP/gRPC probes are rewritten to the sidecar agent and bypass both
                 (unless sidecar.istio.io/rewriteAppHTTPProbers is "false").
  netpol(call)   Kubernetes NetworkPolicy: a pod selected by a policy of a direction accepts only
                 what some rule of that direction allows (ports by number or container-port name;
                 peers by podSelector in the policy's namespace, namespaceSelector, ipBlock); traffic
                 from the pod's own node (the kubelet) is always allowed. With Linkerd, a meshed
                 client's proxy connects to the meshed target's inbound port 4143, not the app port.
                 A call to an address outside the cluster (the identity provider) is judged by the
                 client's egress alone: only an ipBlock peer (or a rule without peers) matches it,
                 never a podSelector or namespaceSelector. The meshes' inbound policies do not
                 govern it.

Nothing here knows the chart's intent: it reads only the rendered objects.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

LINKERD_INBOUND_PORT = 4143
NODE_IP = "10.0.0.10"  # the kubelet's source address (any node address)


@dataclass(frozen=True)
class Peer:
    """A caller: a release pod, the kubelet, or something outside the release."""
    name: str
    namespace: str
    labels: tuple = ()
    service_account: str | None = None
    meshed: bool = False
    ip: str = "10.1.2.3"
    node: bool = False  # the kubelet on the target's node

    def label_dict(self) -> dict:
        return dict(self.labels)


@dataclass
class Call:
    """One request: `client` calls the pods of `target` (a component) on `port` (name or number)."""
    client: Peer
    target: str
    port: str | int
    path: str | None = None  # gRPC "/pkg.Service/Method"; None for plain TCP (NATS, PostgreSQL)
    probe: bool = False  # a kubelet probe (gRPC health check)
    ip: str | None = None  # set: `target` is outside the cluster (e.g. the identity provider) at this address

    @property
    def external(self) -> bool:
        return self.ip is not None

    def __str__(self) -> str:
        what = self.path or f"tcp:{self.port}"
        where = f" ({self.ip})" if self.ip else ""
        return f"{self.client.name} -> {self.target}{where} {what}"


@dataclass
class Pod:
    component: str
    namespace: str
    labels: dict
    annotations: dict
    ports: dict  # container port name -> number
    service_account: str | None
    probes: list = field(default_factory=list)


def pods_of(docs: list[dict]) -> dict[str, Pod]:
    out = {}
    for w in docs:
        if w.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        tpl = w["spec"]["template"]
        labels = tpl["metadata"].get("labels") or {}
        comp = labels.get("app.kubernetes.io/component")
        ports = {}
        probes = []
        for c in tpl["spec"]["containers"]:
            for p in c.get("ports", []):
                ports[p["name"]] = p["containerPort"]
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if c.get(kind):
                    probes.append(c[kind])
        out[comp] = Pod(comp, w["metadata"]["namespace"], labels, tpl["metadata"].get("annotations") or {},
                        ports, tpl["spec"].get("serviceAccountName"), probes)
    return out


def port_number(pod: Pod, port) -> int:
    return port if isinstance(port, int) else pod.ports[port]


def selects(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes LabelSelector (matchLabels + matchExpressions); {} selects everything."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        have = e["key"] in labels
        val = labels.get(e["key"])
        op = e["operator"]
        if op == "In" and not (have and val in e["values"]):
            return False
        if op == "NotIn" and have and val in e["values"]:
            return False
        if op == "Exists" and not have:
            return False
        if op == "DoesNotExist" and have:
            return False
    return True


# ----------------------------------------------------------------------------- Linkerd
class Linkerd:
    def __init__(self, docs: list[dict], namespace: str, cluster_default: str = "all-unauthenticated"):
        self.docs = docs
        self.ns = namespace
        self.pods = pods_of(docs)
        self.cluster_default = cluster_default

    def _objs(self, kind, group=None):
        out = []
        for d in self.docs:
            if d.get("kind") != kind:
                continue
            if group and not d["apiVersion"].startswith(group + "/"):
                continue
            out.append(d)
        return out

    def _default_policy(self, pod: Pod, call: Call) -> tuple[bool, str]:
        policy = pod.annotations.get("config.linkerd.io/default-inbound-policy", self.cluster_default)
        c = call.client
        ok = {
            "all-unauthenticated": True,
            "cluster-unauthenticated": True,
            "all-authenticated": c.meshed,
            "cluster-authenticated": c.meshed,
            "deny": False,
            "audit": True,
        }[policy]
        return ok, f"no Server on the port: default policy {policy}"

    def _authn_holds(self, ref: dict, call: Call) -> tuple[bool, str]:
        kind, name = ref["kind"], ref["name"]
        ns = ref.get("namespace") or self.ns
        c = call.client
        if kind == "ServiceAccount":
            return (c.meshed and c.service_account == name and c.namespace == ns), f"ServiceAccount {name}"
        objs = [d for d in self._objs(kind, "policy.linkerd.io") if d["metadata"]["name"] == name]
        if not objs:
            return False, f"{kind} {name} does not exist (the authorization is ignored)"
        spec = objs[0]["spec"]
        if kind == "MeshTLSAuthentication":
            if not c.meshed:
                return False, f"{kind} {name}: client has no mesh identity"
            for i in spec.get("identityRefs") or []:
                if i["kind"] == "ServiceAccount" and i["name"] == c.service_account and (i.get("namespace") or ns) == c.namespace:
                    return True, ""
                if i["kind"] == "Namespace" and i["name"] == c.namespace:
                    return True, ""
            ident = f"{c.service_account}.{c.namespace}.serviceaccount.identity"
            if any(x == "*" or ident.startswith(x.replace("*", "")) for x in spec.get("identities") or []):
                return True, ""
            return False, f"{kind} {name} does not list {c.service_account}"
        if kind == "NetworkAuthentication":
            ip = ipaddress.ip_address(NODE_IP if c.node else c.ip)
            for n in spec.get("networks") or []:
                net = ipaddress.ip_network(n["cidr"], strict=False)
                if ip.version == net.version and ip in net and not any(
                        ip in ipaddress.ip_network(x, strict=False) for x in n.get("except") or []):
                    return True, ""
            return False, f"{kind} {name} does not cover {ip}"
        return False, f"unsupported authentication {kind}"

    def _policies_for(self, group: str, kind: str, name: str) -> list[dict]:
        out = []
        for ap in self._objs("AuthorizationPolicy", "policy.linkerd.io"):
            t = ap["spec"]["targetRef"]
            if t["kind"] == kind and t["name"] == name and (t.get("group") or "") == group:
                out.append(ap)
        return out

    def _authorized(self, policies: list[dict], call: Call, where: str) -> tuple[bool, str]:
        if not policies:
            return False, f"{where}: no AuthorizationPolicy (denied)"
        reasons = []
        for ap in policies:
            results = [self._authn_holds(r, call) for r in ap["spec"]["requiredAuthenticationRefs"]]
            if all(ok for ok, _ in results):
                return True, f"{where}: AuthorizationPolicy {ap['metadata']['name']}"
            reasons += [why for ok, why in results if not ok]
        return False, f"{where}: " + "; ".join(reasons)

    @staticmethod
    def _grpc_score(route: dict, path: str) -> int | None:
        """Best match of a GRPCRoute for /svc/method: 3 exact method, 2 service only, 1 match-all."""
        svc, _, method = path.lstrip("/").partition("/")
        best = None
        for rule in route["spec"].get("rules") or [{}]:
            matches = rule.get("matches") or [{}]
            for m in matches:
                mm = m.get("method")
                if not mm:
                    score = 1
                elif mm.get("type", "Exact") != "Exact":
                    continue  # Linkerd rejects RegularExpression method matches
                elif mm.get("service") not in (None, svc):
                    continue
                elif mm.get("method") not in (None, method):
                    continue
                else:
                    score = 1 + (1 if mm.get("service") else 0) + (1 if mm.get("method") else 0)
                best = score if best is None else max(best, score)
        return best

    @staticmethod
    def _http_score(route: dict, path: str) -> int | None:
        best = None
        for rule in route["spec"].get("rules") or [{}]:
            for m in rule.get("matches") or [{}]:
                p = m.get("path")
                if not p:
                    score = 1
                elif p.get("type", "PathPrefix") == "Exact" and p["value"] == path:
                    score = 10000
                elif p.get("type", "PathPrefix") == "PathPrefix" and path.startswith(p["value"].rstrip("/") + "/") or p.get("value") == "/":
                    score = 1 + len(p["value"])
                else:
                    continue
                best = score if best is None else max(best, score)
        return best

    def allows(self, call: Call) -> tuple[bool, str]:
        pod = self.pods[call.target]
        if pod.annotations.get("linkerd.io/inject") != "enabled":
            return True, "target not meshed"
        if call.probe and not call.path:
            return True, "non-HTTP probe"
        port = port_number(pod, call.port)
        servers = []
        for s in self._objs("Server", "policy.linkerd.io"):
            spec = s["spec"]
            if not selects(spec.get("podSelector"), pod.labels):
                continue
            sport = spec["port"]
            if (isinstance(sport, int) and sport == port) or (isinstance(sport, str) and pod.ports.get(sport) == port):
                servers.append(s)
        if not servers:
            return self._default_policy(pod, call)
        server = sorted(servers, key=lambda s: s["metadata"]["name"])[0]
        sname = server["metadata"]["name"]
        proto = server["spec"].get("proxyProtocol", "unknown")
        if proto == "gRPC":
            kinds = [("gateway.networking.k8s.io", "GRPCRoute")]
            score = self._grpc_score
        elif proto in ("HTTP/1", "HTTP/2", "unknown"):
            kinds = [("policy.linkerd.io", "HTTPRoute"), ("gateway.networking.k8s.io", "HTTPRoute")]
            score = self._http_score
        else:
            kinds = []
            score = None
        routes = []
        for group, kind in kinds:
            for r in self._objs(kind, group):
                for pr in r["spec"].get("parentRefs") or []:
                    if pr.get("kind") == "Server" and pr.get("group") == "policy.linkerd.io" and pr["name"] == sname:
                        routes.append((group, kind, r))
        ignored = [f"{d['kind']}/{d['metadata']['name']}" for d in self.docs
                   if d.get("kind") in ("HTTPRoute", "GRPCRoute")
                   and any(pr.get("kind") == "Server" and pr["name"] == sname for pr in d["spec"].get("parentRefs") or [])
                   and (d["apiVersion"].split("/")[0], d["kind"]) not in kinds]
        note = f" (ignored by a {proto} Server: {', '.join(ignored)})" if ignored else ""
        if not routes:
            return self._authorized(self._policies_for("policy.linkerd.io", "Server", sname), call,
                                    f"Server {sname} ({proto}), default route{note}")
        scored = [(score(r, call.path or "/"), g, k, r) for g, k, r in routes]
        scored = [x for x in scored if x[0] is not None]
        if not scored:
            return False, f"Server {sname}: no route matches {call.path}{note}"
        _, group, kind, route = max(scored, key=lambda x: x[0])
        return self._authorized(self._policies_for(group, kind, route["metadata"]["name"]), call,
                                f"Server {sname} -> {kind} {route['metadata']['name']}")


# ----------------------------------------------------------------------------- Istio
class Istio:
    def __init__(self, docs: list[dict], namespace: str, trust_domain: str = "cluster.local"):
        self.docs = docs
        self.ns = namespace
        self.pods = pods_of(docs)
        self.td = trust_domain

    def _selecting(self, kind: str, pod: Pod) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind and d["apiVersion"].startswith("security.istio.io/")
                and d["metadata"].get("namespace") == pod.namespace
                and selects((d["spec"].get("selector") or {}), pod.labels)]

    def allows(self, call: Call) -> tuple[bool, str]:
        pod = self.pods[call.target]
        if pod.labels.get("sidecar.istio.io/inject") != "true":
            return True, "target has no sidecar"
        c = call.client
        if call.probe:
            if pod.annotations.get("sidecar.istio.io/rewriteAppHTTPProbers") == "false":
                return False, "probe rewriting disabled: the kubelet's plaintext probe meets the sidecar"
            return True, "probe rewritten to the sidecar agent (15020)"
        port = port_number(pod, call.port)
        mode = "PERMISSIVE"
        for pa in self._selecting("PeerAuthentication", pod):
            mode = (pa["spec"].get("mtls") or {}).get("mode", mode)
            plm = (pa["spec"].get("portLevelMtls") or {})
            if str(port) in {str(k) for k in plm}:
                mode = plm.get(port, plm.get(str(port)))["mode"]
        mtls = c.meshed
        if mode == "STRICT" and not mtls:
            return False, f"PeerAuthentication STRICT on port {port}: client has no sidecar"
        principal = f"{self.td}/ns/{c.namespace}/sa/{c.service_account}" if mtls else None
        allows = [ap for ap in self._selecting("AuthorizationPolicy", pod) if ap["spec"].get("action", "ALLOW") == "ALLOW"]
        if not allows:
            return True, "no ALLOW AuthorizationPolicy selects the workload"
        for ap in allows:
            for i, rule in enumerate(ap["spec"].get("rules") or []):
                if self._rule(rule, principal, c.namespace if mtls else None, port, call.path):
                    return True, f"AuthorizationPolicy {ap['metadata']['name']} rule {i}"
        return False, f"no rule of {[ap['metadata']['name'] for ap in allows]} matches ({principal}, port {port}, {call.path})"

    @staticmethod
    def _rule(rule: dict, principal, namespace, port: int, path: str | None) -> bool:
        froms = rule.get("from")
        if froms:
            ok = False
            for f in froms:
                s = f.get("source") or {}
                if "principals" in s and not (principal and (principal in s["principals"] or "*" in s["principals"])):
                    continue
                if "namespaces" in s and namespace not in s["namespaces"]:
                    continue
                if "notPrincipals" in s and principal in s["notPrincipals"]:
                    continue
                ok = True
            if not ok:
                return False
        tos = rule.get("to")
        if tos:
            ok = False
            for t in tos:
                op = t.get("operation") or {}
                if "ports" in op and str(port) not in op["ports"]:
                    continue
                if "paths" in op and path not in op["paths"]:
                    continue
                if "notPaths" in op and path in op["notPaths"]:
                    continue
                ok = True
            if not ok:
                return False
        return True


# ----------------------------------------------------------------------------- NetworkPolicy
class NetPol:
    def __init__(self, docs: list[dict], namespace: str, mesh: str):
        self.docs = [d for d in docs if d.get("kind") == "NetworkPolicy"]
        self.ns = namespace
        self.pods = pods_of(docs)
        self.mesh = mesh

    @staticmethod
    def _port_ok(rule_ports, port: int, names: dict) -> bool:
        if not rule_ports:
            return True
        for p in rule_ports:
            rp = p.get("port")
            if rp is None:
                return True
            if isinstance(rp, int) and (rp == port or (p.get("endPort") and rp <= port <= p["endPort"])):
                return True
            if isinstance(rp, str) and names.get(rp) == port:
                return True
        return False

    def _peer_ok(self, peers, policy_ns: str, other: Peer | Pod, other_ip: str) -> bool:
        if not peers:
            return True
        labels = other.label_dict() if isinstance(other, Peer) else other.labels
        ns = other.namespace
        for peer in peers:
            if "ipBlock" in peer:
                ip = ipaddress.ip_address(other_ip)
                net = ipaddress.ip_network(peer["ipBlock"]["cidr"], strict=False)
                if ip.version == net.version and ip in net and not any(
                        ip in ipaddress.ip_network(x, strict=False) for x in peer["ipBlock"].get("except") or []):
                    return True
                continue
            ns_ok = (selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns})
                     if "namespaceSelector" in peer else ns == policy_ns)
            pod_ok = selects(peer["podSelector"], labels) if "podSelector" in peer else True
            if ns_ok and pod_ok:
                return True
        return False

    def _egress(self, client_pod: Pod) -> list[dict]:
        return [p for p in self.docs if p["metadata"]["namespace"] == client_pod.namespace
                and selects(p["spec"].get("podSelector"), client_pod.labels) and "Egress" in p["spec"].get("policyTypes", [])]

    def _allows_external(self, call: Call) -> tuple[bool, str]:
        client_pod = self.pods.get(call.client.name) if call.client.namespace == self.ns else None
        if client_pod is None:
            return True, "client outside the release: not governed here"
        outside = Peer(call.target, "", ip=call.ip)  # no namespace, no labels: only ipBlocks select it
        for p in self._egress(client_pod):
            for r in p["spec"].get("egress") or []:
                peers = r.get("to")
                ip_peers = [x for x in peers or [] if "ipBlock" in x]
                if peers and not ip_peers:
                    continue  # pod/namespace selectors match pods, never an outside address
                if self._port_ok(r.get("ports"), int(call.port), {}) and (not peers or self._peer_ok(ip_peers, "", outside, call.ip)):
                    return True, "allowed"
        if not self._egress(client_pod):
            return True, "no egress policy selects the client"
        return False, f"egress of {call.client.name}: no rule allows {call.ip} port {call.port}"

    def allows(self, call: Call) -> tuple[bool, str]:
        if call.external:
            return self._allows_external(call)
        pod = self.pods[call.target]
        c = call.client
        if c.node:
            return True, "from the pod's node (always allowed)"
        port = port_number(pod, call.port)
        client_pod = self.pods.get(c.name) if c.namespace == self.ns else None
        target_meshed = pod.annotations.get("linkerd.io/inject") == "enabled"
        if self.mesh == "linkerd" and c.meshed and target_meshed:
            port = LINKERD_INBOUND_PORT
        names = dict(pod.ports)
        # ingress at the target
        ing = [p for p in self.docs if p["metadata"]["namespace"] == pod.namespace
               and selects(p["spec"].get("podSelector"), pod.labels) and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
        if ing and not any(self._port_ok(r.get("ports"), port, names) and self._peer_ok(r.get("from"), p["metadata"]["namespace"], c, c.ip)
                           for p in ing for r in p["spec"].get("ingress") or []):
            return False, f"ingress of {call.target} on port {port}: no rule allows {c.name} ({c.namespace})"
        # egress at the client
        if client_pod is not None:
            eg = [p for p in self.docs if p["metadata"]["namespace"] == client_pod.namespace
                  and selects(p["spec"].get("podSelector"), client_pod.labels) and "Egress" in p["spec"].get("policyTypes", [])]
            if eg and not any(self._port_ok(r.get("ports"), port, names) and self._peer_ok(r.get("to"), p["metadata"]["namespace"], pod, "10.1.9.9")
                              for p in eg for r in p["spec"].get("egress") or []):
                return False, f"egress of {c.name}: no rule allows {call.target} port {port}"
        return True, "allowed"
