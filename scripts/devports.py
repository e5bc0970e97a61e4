#!/usr/bin/env python3
"""Ports for a private `sharemesh dev`, from the topology (mesh/src/topology.rs, as the chart reads
it: helm/sharemesh/files/topology.json): one port per service, consecutive from a free base in the
topology's order (the edge first), plus one for nats and one for metrics.

    python3 scripts/devports.py LOW HIGH   # prints "BASE NATS METRICS" (free, BASE in [LOW, HIGH))
    python3 scripts/devports.py --services BASE   # prints each service's port when dev starts at BASE

readme-test.py, observability-check.py and fuzz-edge.sh use it.
"""
from __future__ import annotations

import json
import os
import random
import socket
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = json.load(open(os.path.join(ROOT, "helm", "sharemesh", "files", "topology.json")))["contexts"]
# The table's ports (the README's): the edge's is the first; dev shifts them all to its base.
FIRST_PORT = min(c["port"] for c in TOPOLOGY)


def offsets() -> dict[str, int]:
    """Each service's port offset from dev's base (the edge: 0)."""
    return {c["name"]: c["port"] - FIRST_PORT for c in TOPOLOGY}


def service_ports(base: int) -> list[int]:
    """Every service's port when dev starts at `base`."""
    return sorted(base + o for o in offsets().values())


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_dev_ports(low: int = 20000, high: int = 45000) -> tuple[int, int, int]:
    """(base, nats, metrics): every service port from a base in [low, high) and two more, free now;
    away from the defaults (50050.., 14222, 9090) where `make run` may be running."""
    span = max(offsets().values()) + 1
    for _ in range(500):
        base = random.randrange(low, high)
        nats, metrics = base + span + 4, base + span + 5
        if all(_free(p) for p in service_ports(base) + [nats, metrics]):
            return base, nats, metrics
    raise SystemExit(f"devports: no {span} consecutive free ports (and two more) in [{low}, {high})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--services"]:
        print(" ".join(map(str, service_ports(int(sys.argv[2])))))
    else:
        print(*free_dev_ports(*map(int, sys.argv[1:3])))
