#!/usr/bin/env bash
# Which processes used the CPUs, per second, machine-wide: `perf record -a` for SECONDS, then a
# line per second with the busiest process names (`swapper` is idle). Used for docs/benchmarks.md
# ("The machine"): start it together with a benchmark run.
#   scripts/profile/cpu-by-process.sh SECONDS > cpu.txt
set -eu
secs=${1:?usage: $0 SECONDS}
data=$(mktemp)
trap 'rm -f "$data"' EXIT
perf record -a -F 499 -o "$data" -- sleep "$secs" >/dev/null 2>&1
perf script -F comm,time -i "$data" 2>/dev/null | python3 -c '
import collections, sys
per = collections.defaultdict(collections.Counter)
t0 = None
for line in sys.stdin:
    parts = line.split()
    if len(parts) < 2: continue
    t = float(parts[-1].rstrip(":"))
    t0 = t if t0 is None else t0
    per[int(t - t0)][" ".join(parts[:-1])] += 1
for s in sorted(per):
    total = sum(per[s].values())
    print(s, " ".join(f"{c}={100 * n // total}%" for c, n in per[s].most_common(4)))
'
