#!/usr/bin/env bash
# Where hs's latency tail goes: records the scheduler (`perf sched record -a`)
# around one `hs-bench latency` run, then lists every wait of an hs thread
# that was runnable but not running for more than 0.5 ms in the measured
# seconds, by what held its CPU just before it ran (`<idle>`: nothing did;
# the vCPU itself was not running). README's p99.9 paragraph is one run.
#
#   benches/stalls.sh             # about 10 s; needs perf (Debian: linux-perf) and root
#   WARMUP=2 SECS=3 benches/stalls.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WARMUP=${WARMUP:-2}
SECS=${SECS:-3}
command -v perf >/dev/null || { echo "stalls: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release -q -p tools --bin hs-bench)
work=$(mktemp -d "${TMPDIR:-/tmp}/hs-stalls.XXXXXX")
trap 'rm -rf "$work"' EXIT

perf sched record -a -o "$work/sched.data" -- \
  "$ROOT/target/release/hs-bench" latency --runs 1 --warmup-secs "$WARMUP" --secs "$SECS" --dir "$work" --json \
  2>/dev/null | tail -n 1 | grep -o '"p99_us":[0-9.]*\|"p999_us":[0-9.]*'
perf sched timehist -i "$work/sched.data" 2>/dev/null | awk 'NR > 3' >"$work/timehist"
# Columns: time, [cpu], task, wait ms, scheduling delay ms, run ms. The task
# that ran last on a CPU before a delayed hs thread is what held it (an hs
# thread that ran under 0.1 ms there was not the cause: "after a short hs run").
awk -v warm="$WARMUP" '
  NR == 1 { t0 = $1 }
  {
    cpu = $2; delay = $5 + 0
    if ($3 ~ /^hs-/ && delay > 0.5 && $1 - t0 > warm) {
      held = prev[cpu]; sub(/\[.*/, "", held)
      if (held ~ /^hs-/ && prevrun[cpu] + 0 < 0.1) held = "after a short hs run"
      n++; by[held]++
    }
    prev[cpu] = $3; prevrun[cpu] = $6
  }
  END {
    printf "%d waits of hs threads over 0.5 ms, by what held the CPU:\n", n
    for (k in by) printf "  %4d  %s\n", by[k], k
  }' "$work/timehist"
