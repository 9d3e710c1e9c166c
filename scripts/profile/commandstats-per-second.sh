#!/usr/bin/env bash
# Calls per Redis command, summed over the given nodes, once a second (one line per second:
# `unix_time cmdstat_get=N cmdstat_evalsha=N ...`, cumulative; subtract consecutive lines for a
# rate). Used for docs/benchmarks.md ("Work per operation"): start it, run the benchmark, stop it.
#   scripts/profile/commandstats-per-second.sh PORT [PORT ...] > calls.txt
set -eu
[ $# -ge 1 ] || { echo "usage: $0 PORT [PORT ...]" >&2; exit 2; }
while true; do
  t=$(date +%s.%N)
  for p in "$@"; do redis-cli -p "$p" info commandstats; done | tr -d '\r' |
    awk -F'[:=,]' -v t="$t" '/^cmdstat_/{c[$1]+=$3} END{printf "%s", t; for(k in c) printf " %s=%d", k, c[k]; print ""}'
  sleep 1
done
