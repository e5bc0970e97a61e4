#!/usr/bin/env python3
"""Writes helm/sharemesh/values.schema.json: every object closed (additionalProperties: false;
free-form maps such as annotations say what their values must be).

The six services share most of their keys but not all (catalog has holdTtl, the edge has
service/ingress/httpRoute...), and JSON Schema cannot merge a shared definition with extra keys
while staying closed in the draft every Helm version understands (draft-07). So the schema is
generated: edit this file, run it, commit both. helm/tests/chart_test.py fails when the committed
schema differs from this output.

    python3 helm/tools/gen-schema.py           # rewrite the schema
    python3 helm/tools/gen-schema.py --check   # exit 1 if it is out of date
"""
from __future__ import annotations

import json
import os
import sys

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sharemesh", "values.schema.json")

# ----------------------------------------------------------------------------- building blocks
DURATION = {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$", "description": "a duration: 500ms, 5s, 2m, 1h"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT = {"type": "integer"}
POS_INT = {"type": "integer", "minimum": 1}
NAT_INT = {"type": "integer", "minimum": 0}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
ENV_MAP = {
    "type": "object",
    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
    "additionalProperties": {"type": ["string", "number", "boolean"]},
    "description": "extra environment variables, NAME: value",
}
QUANTITY = {"type": ["string", "number"]}


def obj(props: dict, required: list[str] | None = None, description: str | None = None) -> dict:
    out = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    if description:
        out["description"] = description
    return out


def enum(*values, **extra) -> dict:
    return {"enum": list(values), **extra}


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


# ----------------------------------------------------------------------------- Kubernetes shapes
LABEL_SELECTOR = obj({
    "matchLabels": STR_MAP,
    "matchExpressions": array(obj({
        "key": STR,
        "operator": enum("In", "NotIn", "Exists", "DoesNotExist"),
        "values": array(STR),
    }, ["key", "operator"])),
})
NETWORK_PEER = obj({
    "podSelector": LABEL_SELECTOR,
    "namespaceSelector": LABEL_SELECTOR,
    "ipBlock": obj({"cidr": STR, "except": array(STR)}, ["cidr"]),
})
EGRESS_RULE = obj({
    "to": array(NETWORK_PEER),
    "ports": array(obj({"port": {"type": ["integer", "string"]}, "endPort": INT,
                        "protocol": enum("TCP", "UDP", "SCTP")})),
})
PROFILE = obj({"type": STR, "localhostProfile": STR}, ["type"])
SE_LINUX = obj({"level": STR, "role": STR, "type": STR, "user": STR})
WINDOWS = obj({"gmsaCredentialSpecName": STR, "gmsaCredentialSpec": STR, "hostProcess": BOOL, "runAsUserName": STR})
POD_SECURITY = obj({
    "runAsNonRoot": BOOL, "runAsUser": NAT_INT, "runAsGroup": NAT_INT, "fsGroup": NAT_INT,
    "fsGroupChangePolicy": enum("OnRootMismatch", "Always"),
    "supplementalGroups": array(NAT_INT), "supplementalGroupsPolicy": enum("Merge", "Strict"),
    "seccompProfile": PROFILE, "appArmorProfile": PROFILE, "seLinuxOptions": SE_LINUX,
    "seLinuxChangePolicy": STR, "sysctls": array(obj({"name": STR, "value": STR}, ["name", "value"])),
    "windowsOptions": WINDOWS,
})
CONTAINER_SECURITY = obj({
    "allowPrivilegeEscalation": BOOL, "privileged": BOOL, "readOnlyRootFilesystem": BOOL,
    "runAsNonRoot": BOOL, "runAsUser": NAT_INT, "runAsGroup": NAT_INT, "procMount": STR,
    "capabilities": obj({"add": array(STR), "drop": array(STR)}),
    "seccompProfile": PROFILE, "appArmorProfile": PROFILE, "seLinuxOptions": SE_LINUX,
    "windowsOptions": WINDOWS,
})
TOLERATIONS = array(obj({
    "key": STR, "operator": enum("Exists", "Equal"), "value": STR,
    "effect": enum("", "NoSchedule", "PreferNoSchedule", "NoExecute"), "tolerationSeconds": INT,
}))
NODE_SELECTOR_REQ = obj({"key": STR, "operator": enum("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"),
                         "values": array(STR)}, ["key", "operator"])
NODE_SELECTOR_TERM = obj({"matchExpressions": array(NODE_SELECTOR_REQ), "matchFields": array(NODE_SELECTOR_REQ)})
POD_AFFINITY_TERM = obj({
    "labelSelector": LABEL_SELECTOR, "namespaceSelector": LABEL_SELECTOR, "namespaces": array(STR),
    "topologyKey": STR, "matchLabelKeys": array(STR), "mismatchLabelKeys": array(STR),
}, ["topologyKey"])
POD_AFFINITY = obj({
    "requiredDuringSchedulingIgnoredDuringExecution": array(POD_AFFINITY_TERM),
    "preferredDuringSchedulingIgnoredDuringExecution": array(obj(
        {"weight": POS_INT, "podAffinityTerm": POD_AFFINITY_TERM}, ["weight", "podAffinityTerm"])),
})
AFFINITY = obj({
    "nodeAffinity": obj({
        "requiredDuringSchedulingIgnoredDuringExecution": obj({"nodeSelectorTerms": array(NODE_SELECTOR_TERM)},
                                                              ["nodeSelectorTerms"]),
        "preferredDuringSchedulingIgnoredDuringExecution": array(obj(
            {"weight": POS_INT, "preference": NODE_SELECTOR_TERM}, ["weight", "preference"])),
    }),
    "podAffinity": POD_AFFINITY,
    "podAntiAffinity": POD_AFFINITY,
})


RESOURCES = obj({
    "requests": {"type": "object", "additionalProperties": QUANTITY},
    "limits": {"type": "object", "additionalProperties": QUANTITY},
    "claims": array(obj({"name": STR, "request": STR}, ["name"])),
})
IMAGE = obj({
    "repository": {"type": "string", "minLength": 1},
    "tag": STR,
    "pullPolicy": enum("Always", "IfNotPresent", "Never"),
}, ["repository", "tag", "pullPolicy"])
PERSISTENCE = obj({"size": QUANTITY, "storageClassName": STR}, ["size"])
SCHEDULING = {"nodeSelector": STR_MAP, "tolerations": TOLERATIONS, "affinity": AFFINITY}
AUTOSCALING = obj({
    "enabled": {"type": ["boolean", "null"], "description": "null = on for PostgreSQL (and the edge), off for SQLite"},
    "minReplicas": POS_INT,
    "maxReplicas": POS_INT,
    "targetCPUUtilizationPercentage": {"type": "integer", "minimum": 1, "maximum": 100},
}, ["minReplicas", "maxReplicas", "targetCPUUtilizationPercentage"])
REPLICAS = {"type": ["integer", "null"], "minimum": 1, "description": "null = 2 on PostgreSQL, 1 on SQLite"}


def service(extra: dict | None = None, stateful: bool = True) -> dict:
    props = {
        "enabled": BOOL,
        "replicas": REPLICAS,
        "autoscaling": AUTOSCALING,
        "maxUnavailable": {"type": ["integer", "string"]},
        "resources": RESOURCES,
        "extraEnv": ENV_MAP,
        "podAnnotations": STR_MAP,
        **SCHEDULING,
    }
    if stateful:
        props |= {
            "storage": enum("", "sqlite", "postgres", description='"" uses storage.default'),
            "databaseUrl": {"type": "string", "pattern": "^(|postgres(ql)?://.+)$"},
            "persistence": PERSISTENCE,
        }
    props |= extra or {}
    return obj(props, ["enabled"])


EDGE_EXTRA = {
    "service": obj({
        "type": enum("ClusterIP", "NodePort", "LoadBalancer"),
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "appProtocol": STR,
        "nodePort": {"type": ["integer", "null"], "minimum": 30000, "maximum": 32767},
        "annotations": STR_MAP,
        "loadBalancerSourceRanges": {"type": "array", "items": STR},
        "externalTrafficPolicy": enum("", "Cluster", "Local"),
    }, ["type", "port"]),
    "ingress": obj({
        "enabled": BOOL,
        "className": STR,
        "annotations": STR_MAP,
        "hosts": {"type": "array", "items": obj({
            "host": STR,
            "paths": {"type": "array", "items": obj({
                "path": STR,
                "pathType": enum("Prefix", "Exact", "ImplementationSpecific"),
            }, ["path", "pathType"])},
        }, ["host", "paths"])},
        "tls": {"type": "array", "items": obj({"secretName": STR, "hosts": {"type": "array", "items": STR}})},
    }, ["enabled"]),
    "httpRoute": obj({
        "enabled": BOOL,
        "annotations": STR_MAP,
        "parentRefs": {"type": "array", "items": obj({"name": STR, "namespace": STR, "sectionName": STR}, ["name"])},
        "hostnames": {"type": "array", "items": STR},
    }, ["enabled"]),
}

# The services and which of them keep data: the topology written once in mesh/src/topology.rs,
# as the chart reads it (files/topology.json).
TOPOLOGY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sharemesh", "files", "topology.json")
TOPOLOGY = json.load(open(TOPOLOGY_PATH))["contexts"]
CONTEXTS = [c["name"] for c in TOPOLOGY if c["keepsData"]]
# The keys some services have on top of the shared ones.
SERVICE_EXTRA = {
    "catalog": {"holdTtl": DURATION},
    "reservation": {
        "autoConfirmKinds": {"type": "string", "pattern": "^(none|(CAR|TALENT)(,(CAR|TALENT))*)$"},
        "sagaStale": DURATION,
    },
    "payment": {"limitMinor": POS_INT},
    "edge": EDGE_EXTRA,
}


def sqlite_single_replica(ctx: str) -> dict:
    """A context on SQLite (its own storage, or storage.default when its storage is empty) takes
    no replicas but 1 and no autoscaling: SQLite has a single writer."""
    on_sqlite = {"anyOf": [
        {"properties": {"services": {"properties": {ctx: {"properties": {"storage": {"const": "sqlite"}},
                                                          "required": ["storage"]}}}}},
        {"properties": {"storage": {"properties": {"default": {"const": "sqlite"}}},
                        "services": {"properties": {ctx: {"properties": {"storage": {"enum": ["", None]}}}}}}},
    ]}
    single = {"properties": {"services": {"properties": {ctx: {"properties": {
        "replicas": {"type": ["integer", "null"], "maximum": 1,
                     "description": f"{ctx} keeps SQLite (one writer): replicas must be 1 or unset; use services.{ctx}.storage=postgres to scale"},
        "autoscaling": {"properties": {"enabled": {"enum": [None, False], "description": f"{ctx} keeps SQLite: no autoscaling"}}},
    }}}}}}
    return {"if": on_sqlite, "then": single}


RETRY_CONDITIONS = {"type": "string", "pattern": r"^[a-z0-9-]+(,[a-z0-9-]+)*$"}

# A secret value: empty (generated once and kept) or at least 16 bytes.
SECRET_16 = {"type": "string", "anyOf": [{"maxLength": 0}, {"minLength": 16}],
             "description": "empty (generated) or at least 16 bytes"}
# SHAREMESH_OIDC_ROLE_MAP: provider-role=sharemesh-role pairs; the target is customer, host or
# admin - never service (that role belongs to the calls between services; the services refuse it).
_ROLE_PAIR = r"\s*[^=,\s][^=,]*=\s*(customer|host|admin)\s*"
ROLE_MAP = rf"^{_ROLE_PAIR}(,{_ROLE_PAIR})*$"


def oidc_needs_issuer() -> dict:
    """auth.jwksUri and auth.audience only with auth.issuer (the services refuse them without it);
    auth.jwtSecret only without it (the services refuse both modes at once)."""
    hs256 = {"properties": {"auth": {"properties": {"issuer": {"const": ""}}}}}
    return {
        "if": hs256,
        "then": {"properties": {"auth": {"properties": {
            "jwksUri": {"maxLength": 0, "description": "auth.jwksUri needs auth.issuer"},
            "audience": {"maxLength": 0, "description": "auth.audience needs auth.issuer"},
            "istioRequestAuthentication": {"const": False, "description": "needs auth.issuer"},
        }}}},
        "else": {"properties": {"auth": {"properties": {
            "jwtSecret": {"maxLength": 0, "description": "HS256 mode only: leave it empty with auth.issuer"},
        }}}},
    }

# ----------------------------------------------------------------------------- the values
SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "sharemesh chart values",
    **obj({
        "mesh": obj({
            "provider": enum("none", "istio", "linkerd"),
            "circuitBreaker": obj({
                "consecutiveErrors": POS_INT,
                "interval": DURATION,
                "baseEjectionTime": DURATION,
                "maxEjectionTime": DURATION,
                "maxEjectionPercent": {"type": "integer", "minimum": 0, "maximum": 100},
                "jitterRatio": {"type": ["string", "number"], "pattern": r"^[0-9]+(\.[0-9]+)?$", "minimum": 0},
                "maxConnections": POS_INT,
                "maxPendingRequests": POS_INT,
                "maxRequests": POS_INT,
                "maxRequestsPerConnection": NAT_INT,
            }, ["consecutiveErrors", "interval", "baseEjectionTime", "maxEjectionPercent",
                "maxPendingRequests", "maxRequests", "maxRequestsPerConnection"]),
            "timeout": DURATION,
            "retries": obj({
                "attempts": {"type": "integer", "minimum": 0, "maximum": 5},
                "perTryTimeout": DURATION,
                "internal": enum("app", "mesh", description="which layer retries idempotent calls between sharemesh services"),
                "retryOn": RETRY_CONDITIONS,
                "grpcStatuses": {"type": "string", "pattern": r"^((cancelled|deadline-exceeded|internal|unavailable)(,(cancelled|deadline-exceeded|internal|unavailable))*)?$",
                                 "description": "Linkerd gRPC retry conditions; resource-exhausted (load shedding) is refused"},
                "httpStatuses": {"type": "string", "pattern": r"^([0-9]{3}(-[0-9]{3})?(,[0-9]{3}(-[0-9]{3})?)*)?$"},
                "maxAttemptsPerCall": POS_INT,
            }),
            "skipOutboundPorts": {"type": "string", "pattern": r"^([0-9]+(,[0-9]+)*)?$"},
            "authorizationPolicies": BOOL,
            "istio": obj({
                "namespace": STR,
                "trustDomain": STR,
                "mtlsMode": enum("STRICT", "PERMISSIVE"),
                "edgeMtlsMode": enum("STRICT", "PERMISSIVE"),
            }),
            "linkerd": obj({
                "namespace": STR,
                "defaultInboundPolicy": enum("all-unauthenticated", "all-authenticated", "cluster-unauthenticated",
                                             "cluster-authenticated", "deny", "audit"),
                "probeNetworks": {"type": "array", "items": obj({"cidr": STR, "except": {"type": "array", "items": STR}}, ["cidr"])},
            }),
        }, ["provider", "circuitBreaker"]),
        "storage": obj({"default": enum("sqlite", "postgres")}, ["default"]),
        "networkPolicies": obj({
            "enabled": BOOL,
            "edgeFrom": array(NETWORK_PEER),
            "metricsFrom": array(NETWORK_PEER),
            "otlpPort": {"type": "integer", "minimum": 1, "maximum": 65535},
            "extraEgress": array(EGRESS_RULE),
            "identityProvider": obj({
                "ports": array({"type": "integer", "minimum": 1, "maximum": 65535}),
                "to": array(NETWORK_PEER),
            }),
        }),
        "clusterDomain": STR,
        "nameOverride": STR,
        "fullnameOverride": STR,
        "image": IMAGE,
        "imagePullSecrets": {"type": "array", "items": obj({"name": STR}, ["name"])},
        "podSecurityContext": POD_SECURITY,
        "containerSecurityContext": CONTAINER_SECURITY,
        "terminationGracePeriodSeconds": POS_INT,
        "topologySpread": obj({
            "enabled": BOOL,
            "maxSkew": POS_INT,
            "whenUnsatisfiable": enum("ScheduleAnyway", "DoNotSchedule"),
            "topologyKeys": {"type": "array", "items": STR},
        }),
        "metricsAnnotations": BOOL,
        "config": obj({
            "log": STR,
            "logFormat": enum("json", "text"),
            "otlpEndpoint": STR,
            "drainDelay": DURATION,
            "shutdownGrace": DURATION,
            "outboxPoll": DURATION,
            "outboxRetention": {"type": "string", "pattern": r"^(0|[0-9]+(ms|s|m|h))$", "description": "how long a published event's outbox row is kept: a duration such as 24h, or 0 to keep them forever"},
            "inboxMaxDeliver": POS_INT,
            "inboxBackoff": DURATION,
            "client": obj({
                "timeout": DURATION,
                "retries": NAT_INT,
                "retryBudget": {"type": ["string", "number"]},
                "breakerFailures": POS_INT,
                "breakerOpen": DURATION,
                "concurrency": POS_INT,
            }),
            "extraEnv": ENV_MAP,
        }),
        "auth": obj({
            "jwtSecret": SECRET_16,
            "jwtIssuer": STR,
            "serviceSecret": SECRET_16,
            "issuer": {"type": "string", "pattern": r"^(|https?://[^\s]+)$",
                       "description": "empty (HS256 mode) or the identity provider's https:// issuer URL"},
            "jwksUri": {"type": "string", "pattern": r"^(|https?://[^\s]+|file:///[^\s]*|/[^\s]*)$",
                        "description": "empty (from the issuer's discovery document), https://, http://, file:/// or an absolute path"},
            "audience": STR,
            "rolesClaim": {"type": "string", "pattern": r"^[^.\s]+(\.[^.\s]+)*$", "description": "a dotted claim path"},
            "roleMap": {"type": "string", "pattern": ROLE_MAP,
                        "description": "provider-role=sharemesh-role pairs, comma-separated; the sharemesh roles are customer, host and admin (never service)"},
            "subjectClaim": {"type": "string", "minLength": 1},
            "leeway": DURATION,
            "refresh": DURATION,
            "refetch": DURATION,
            "istioRequestAuthentication": BOOL,
        }),
        "secrets": obj({"existingSecret": STR}),
        "database": obj({"pool": {"type": "integer", "minimum": 1, "maximum": 1000,
                                  "description": "SHAREMESH_DB_POOL: pooled connections per process"}}, ["pool"]),
        "services": obj({c["name"]: service(SERVICE_EXTRA.get(c["name"], {}), stateful=c["keepsData"]) for c in TOPOLOGY},
                        [c["name"] for c in TOPOLOGY]),
        "postgresql": obj({
            "mode": enum("internal", "external"),
            "auth": obj({
                "username": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
                "password": STR,
                "adminUsername": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
                "adminPassword": STR,
            }),
            "external": obj({"host": STR, "port": {"type": "integer", "minimum": 1, "maximum": 65535}, "params": STR}),
            "maxConnections": {"type": "integer", "minimum": 20, "maximum": 10000,
                               "description": "the in-chart server's max_connections"},
            "connectionMargin": {"type": "integer", "minimum": 3,
                                 "description": "connections kept free beyond the services' worst case (at least superuser_reserved_connections, 3)"},
            "image": IMAGE,
            "persistence": PERSISTENCE,
            "resources": RESOURCES,
            **SCHEDULING,
        }),
        "nats": obj({
            "external": obj({"url": {"type": "string", "pattern": r"^(|(nats|tls)://[^,\s]+(\s*,\s*(nats|tls)://[^,\s]+)*)$",
                                     "description": "nats://host:port, or a comma-separated list"}}),
            "replicas": enum(1, 3, description="1, or 3 for a JetStream cluster"),
            "image": IMAGE,
            "jetstream": obj({
                "syncInterval": {"type": "string", "pattern": r"^(always|[0-9]+(ms|s|m|h))$",
                                 "description": "always, or a duration (the acknowledged data an OS crash can lose)"},
                "maxFileStore": {"type": "string", "pattern": r"^([0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?)?$"},
            }),
            "streams": obj({
                "replicas": {"type": ["integer", "null"], "minimum": 1, "maximum": 5},
                "maxAge": {"type": "string", "pattern": r"^(0|[0-9]+(s|m|h))$", "description": "0 (forever) or a duration of at least 1m"},
                "maxBytes": {"type": ["integer", "null"], "minimum": 0},
            }),
            "persistence": PERSISTENCE,
            "resources": RESOURCES,
            **SCHEDULING,
        }),
        "tests": obj({"enabled": BOOL, "image": IMAGE}),
        "observability": obj({
            "dashboard": obj({"enabled": BOOL, "labels": STR_MAP, "annotations": STR_MAP}),
            "prometheusRule": obj({
                "enabled": BOOL,
                "labels": STR_MAP,
                "for": DURATION,
                "errorRatio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "p99Seconds": {"type": "number", "exclusiveMinimum": 0},
                "outboxBacklog": POS_INT,
                "consumerPending": POS_INT,
            }),
            "serviceMonitor": obj({"enabled": BOOL, "labels": STR_MAP, "interval": DURATION}),
        }),
    }),
    "allOf": [sqlite_single_replica(ctx) for ctx in CONTEXTS] + [oidc_needs_issuer()],
}


def render() -> str:
    return json.dumps(SCHEMA, indent=2) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        try:
            current = open(SCHEMA_PATH).read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print(f"{os.path.relpath(SCHEMA_PATH)} is out of date: run python3 helm/tools/gen-schema.py")
            return 1
        return 0
    with open(SCHEMA_PATH, "w") as fh:
        fh.write(text)
    print(f"wrote {os.path.relpath(SCHEMA_PATH)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
