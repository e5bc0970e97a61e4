#!/usr/bin/env python3
"""Lists the functions longer than a limit outside tests (`make lint` runs it): exit 1 when any is.

    python3 scripts/fn-length.py [LIMIT]     # default 80 lines, signature and closing brace included

Reads every tracked `.rs` file except tests: files under a `tests/` folder, `tests.rs` modules and
`#[cfg(test)] mod ... { }` blocks. A function runs from its `fn` line to the first line that closes
it at the same indentation (rustfmt's layout, which `make lint` checks first).
"""
from __future__ import annotations

import re
import subprocess
import sys

FN = re.compile(r"^(\s*)(?:pub(?:\([a-z]+\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")
TEST_MOD = re.compile(r"^(\s*)(?:pub(?:\([a-z]+\))?\s+)?mod\s+\w+\s*\{\s*$")


def closing(lines: list[str], start: int, indent: str) -> int | None:
    """Index of the first line from `start` that is `indent` + "}"."""
    return next((k for k in range(start, len(lines)) if lines[k] == indent + "}"), None)


def long_functions(path: str, limit: int) -> list[tuple[int, int, str]]:
    lines = open(path, encoding="utf-8").read().split("\n")
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]" and i + 1 < len(lines) and (m := TEST_MOD.match(lines[i + 1])):
            i = (closing(lines, i + 2, m.group(1)) or len(lines)) + 1
            continue
        if m := FN.match(lines[i]):
            body = next((j for j in range(i, len(lines)) if "{" in lines[j] or lines[j].rstrip().endswith(";")), None)
            if body is not None and "{" in lines[body] and not lines[body].rstrip().endswith("}"):
                end = closing(lines, body + 1, m.group(1))
                if end is not None and end - i + 1 > limit:
                    found.append((i + 1, end - i + 1, m.group(2)))
        i += 1
    return found


def main() -> int:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    files = subprocess.run(["git", "ls-files", "*.rs"], capture_output=True, text=True, check=True).stdout.split()
    over = []
    for path in files:
        parts = path.split("/")
        if "tests" in parts[:-1] or parts[-1] == "tests.rs":
            continue
        over += [(n, f"{path}:{line}", name) for line, n, name in long_functions(path, limit)]
    for n, where, name in sorted(over, reverse=True):
        print(f"{where}: fn {name} is {n} lines (at most {limit} outside tests)")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
