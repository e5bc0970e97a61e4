#!/usr/bin/env python3
"""Share of perf samples whose call stack contains each pattern (inclusive time).

    perf record -F 499 -g --call-graph dwarf,16384 -p <pid> -o perf.data -- sleep 8
    perf script -i perf.data -F comm,tid,ip,sym > stacks.txt
    python3 scripts/perf-share.py stacks.txt 'sqlite3_step' 'sqlite3_exec' 'futex' 'hyper' 'h2::'

Prints one line per pattern (a Python regex matched against every frame's symbol), then the
samples per thread name (`tokio-rt-worker`, `sqlx-sqlite-wor`, ...). A sample counts once per
pattern however many of its frames match, so the shares of overlapping patterns do not add up.
See bench/README.md, "Where the time goes".
"""

import collections
import re
import sys


def stacks(path):
    """Yields (thread name, [frame symbols, innermost first]) per sample of `perf script`."""
    frames, comm = [], None
    with open(path, errors="replace") if path != "-" else sys.stdin as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if frames:
                    yield comm, frames
                frames = []
            elif not line[0].isspace():
                comm = line.split()[0]
            else:
                parts = line.strip().split(None, 1)
                frames.append(parts[1] if len(parts) > 1 else parts[0])
    if frames:
        yield comm, frames


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    samples = list(stacks(sys.argv[1]))
    if not samples:
        print("no samples", file=sys.stderr)
        return 1
    print(f"samples {len(samples)}")
    for pattern in sys.argv[2:]:
        r = re.compile(pattern)
        n = sum(1 for _, frames in samples if any(r.search(f) for f in frames))
        print(f"{100 * n / len(samples):6.2f}%  {pattern}")
    threads = collections.Counter(comm for comm, _ in samples)
    print("threads: " + ", ".join(f"{name} {100 * n / len(samples):.0f}%" for name, n in threads.most_common(8)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
