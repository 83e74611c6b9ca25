#!/usr/bin/env bash
# hs and Redis replication, measured side by side in one run on this machine.
#
#   benches/compare.sh            # full run (a few minutes)
#   QUICK=1 benches/compare.sh    # smaller volumes, one run each (about a minute)
#
# What it does:
#   1. installs redis-server and redis-tools (Debian packages) if missing;
#   2. builds hs-bench (release);
#   3. Redis 7 master + replica on 127.0.0.1 (free ports, no persistence, diskless
#      sync without delay, no RDB compression, no replica output-buffer limit):
#      - throughput: redis-benchmark SET, -d SIZE, pipelined (-P), timed from its
#        start until the replica's offset equals the master's (published → applied);
#      - catch-up: the master filled with VOLUME bytes of values, then REPLICAOF from
#        an empty replica, timed until master_link_status:up and offsets equal;
#   4. hs-bench for the same sizes and volume (master and slave as two processes):
#      one loopback TCP stream first (the ceiling of any stream, in this run);
#      each size with `--apply kv` (the slave keeps a map, as a Redis replica:
#      the headline rows) and `--apply count` (the second row); then, as extra
#      rows, RETENTION_SIZES with `--apply kv` on logs already at their
#      retention (RETENTION kept, WARM published and compacted first), where
#      segment rolls recycle retired segments as a long-running node's do;
#   5. the side-by-side table (markdown, ratio hs / Redis; hs's median with the
#      worst run beside it), benches/results/*.json and the SVG plots, through
#      `hs-bench report`.
# Every process it starts is killed by its pid on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/benches/results}
SIZES=${SIZES:-"64 256 1024 4096"}
if [[ -n "${QUICK:-}" ]]; then
  RUNS=${RUNS:-1}; SECS=${SECS:-1.5}; VOLUME=${VOLUME:-256MiB}; LIMIT_VOLUME=${LIMIT_VOLUME:-64MiB}; RECOVERY_VOLUME=${RECOVERY_VOLUME:-256MiB}
else
  RUNS=${RUNS:-3}; SECS=${SECS:-3}; VOLUME=${VOLUME:-1GiB}; LIMIT_VOLUME=${LIMIT_VOLUME:-256MiB}; RECOVERY_VOLUME=${RECOVERY_VOLUME:-1GiB}
fi
RATE=${RATE:-100000}              # latency scenario: records per second
RETENTION_SIZES=${RETENTION_SIZES:-"64 1024"}   # replicate at retention: value sizes
RETENTION=${RETENTION:-1GiB}      # ... each log's retention (16 segments of 64 MiB; a slave lagging
                                  #     past twice it would be resynced and the row fail)
WARM=${WARM:-1280MiB}             # ... published and compacted before measuring (retires 4-5 segments)
LIMIT=${LIMIT:-100MB}             # catch-up rate-limit scenario
PIPELINE=${PIPELINE:-64}          # redis-benchmark -P
CLIENTS=${CLIENTS:-50}            # redis-benchmark -c
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

log() { printf '== %s\n' "$*" >&2; }

# ---- 1. Redis installed?
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null || ! command -v redis-cli >/dev/null; then
  log "installing redis-server and redis-tools (apt-get)"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
fi

# ---- 2. hs-bench
log "building hs-bench (release, target $CARGO_TARGET_DIR)"
(cd "$ROOT" && cargo build --release -q -p tools --bin hs-bench)
HSB=$CARGO_TARGET_DIR/release/hs-bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hs-compare.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "no free port found" >&2; exit 1
}

now_ns() { date +%s%N; }
median() { sort -g | awk '{a[NR]=$1} END { if (NR == 0) print "null"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

P1=$(free_port); P2=$(free_port); while [[ $P2 == "$P1" ]]; do P2=$(free_port); done
REDIS_OPTS=(--bind 127.0.0.1 --protected-mode no --save "" --appendonly no --daemonize no
  --repl-diskless-sync yes --repl-diskless-sync-delay 0 --rdbcompression no
  --client-output-buffer-limit "replica 0 0 0" --repl-backlog-size 256mb --enable-debug-command local)
mkdir -p "$WORK/m" "$WORK/r"
redis-server --port "$P1" --dir "$WORK/m" --logfile "$WORK/m.log" "${REDIS_OPTS[@]}" & PIDS+=($!)
redis-server --port "$P2" --dir "$WORK/r" --logfile "$WORK/r.log" "${REDIS_OPTS[@]}" --replicaof 127.0.0.1 "$P1" & PIDS+=($!)
RM() { redis-cli -h 127.0.0.1 -p "$P1" "$@"; }
RR() { redis-cli -h 127.0.0.1 -p "$P2" "$@"; }
field() { tr -d '\r' | awk -F: -v k="$1" '$1 == k { print $2 }'; }

for _ in $(seq 1 200); do RM ping >/dev/null 2>&1 && RR ping >/dev/null 2>&1 && break; sleep 0.05; done
REDIS_VERSION=$(RM info server | field redis_version)
log "Redis $REDIS_VERSION master :$P1, replica :$P2"

# Waits until the replica's link is up and its offset equals the master's; prints the time (ns) it happened.
wait_synced() {
  local deadline=$(( $(date +%s) + ${1:-300} )) mo ro up
  while :; do
    mo=$(RM info replication | field master_repl_offset)
    up=$(RR info replication | field master_link_status)
    ro=$(RR info replication | field slave_repl_offset)
    if [[ $up == up && -n $ro && $ro == "$mo" ]]; then now_ns; return; fi
    if (( $(date +%s) > deadline )); then echo "replica did not sync within ${1:-300}s" >&2; exit 1; fi
    sleep 0.005
  done
}
wait_synced 30 >/dev/null

REDIS_JSON=$WORK/redis.jsonl; HS_JSON=$WORK/hs.jsonl
: > "$REDIS_JSON"; : > "$HS_JSON"

# ---- 3a. Redis throughput
for size in $SIZES; do
  # About SECS seconds of redis-benchmark on this machine: ~1M SET/s at 64 B, fewer when large.
  n=$(awk -v s="$size" -v t="$SECS" 'BEGIN { r = (s <= 256) ? 700000 : (s <= 1024) ? 250000 : 80000; printf "%d", r * t }')
  rec=(); bench=()
  for run in $(seq 1 "$RUNS"); do
    RM flushall >/dev/null; wait_synced 60 >/dev/null
    t0=$(now_ns)
    rps=$(redis-benchmark -h 127.0.0.1 -p "$P1" -t set -n "$n" -d "$size" -r 10000 -P "$PIPELINE" -c "$CLIENTS" --csv 2>/dev/null \
          | tr -d '"' | awk -F, '$1 == "SET" { print $2 }')
    t1=$(wait_synced 120)
    r=$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / ((b - a) / 1e9) }')
    log "redis replicate $size B run $run: $n SETs, benchmark $rps/s, published → applied $r/s"
    rec+=("$r"); bench+=("$rps")
  done
  mr=$(printf '%s\n' "${rec[@]}" | median); mb=$(printf '%s\n' "${bench[@]}" | median)
  echo "{\"scenario\":\"replicate\",\"system\":\"redis\",\"record_size\":$size,\"records\":$n,\"records_per_s\":$mr,\"bytes_per_s\":$(awk -v r="$mr" -v s="$size" 'BEGIN{printf "%.0f", r*s}'),\"master_records_per_s\":$mb,\"pipeline\":$PIPELINE,\"clients\":$CLIENTS,\"runs\":$RUNS}" >> "$REDIS_JSON"
done

# ---- 3b. Redis catch-up: fill the master, then attach an empty replica.
vol_bytes=$(awk -v v="$VOLUME" 'BEGIN {
  n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
  m = (u == "GiB") ? 1073741824 : (u == "MiB") ? 1048576 : (u == "GB") ? 1e9 : (u == "MB") ? 1e6 : 1; printf "%.0f", n * m }')
keys=$((vol_bytes / 1024))
cu=()
for run in $(seq 1 "$RUNS"); do
  RR replicaof no one >/dev/null; RR flushall >/dev/null
  RM flushall >/dev/null
  RM debug populate "$keys" key 1024 >/dev/null
  t0=$(now_ns)
  RR replicaof 127.0.0.1 "$P1" >/dev/null
  t1=$(wait_synced 600)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  got=$(RR dbsize)
  if [[ $got != "$keys" ]]; then echo "replica has $got keys after catch-up, expected $keys" >&2; exit 1; fi
  log "redis catch-up of $VOLUME ($keys keys of 1 KiB) run $run: ${secs}s"
  cu+=("$secs")
done
cs=$(printf '%s\n' "${cu[@]}" | median)
echo "{\"scenario\":\"catchup\",\"system\":\"redis\",\"record_size\":1024,\"records\":$keys,\"volume_bytes\":$((keys * 1024)),\"secs\":$cs,\"bytes_per_s\":$(awk -v k="$keys" -v s="$cs" 'BEGIN{printf "%.0f", k*1024/s}'),\"records_per_s\":$(awk -v k="$keys" -v s="$cs" 'BEGIN{printf "%.0f", k/s}'),\"runs\":$RUNS}" >> "$REDIS_JSON"
RM flushall >/dev/null; RR flushall >/dev/null 2>&1 || true

# Redis is done: stop it before hs runs, so the two never share the machine.
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
PIDS=()

# ---- 4. hs
log "loopback TCP, one stream"
"$HSB" loopback --secs "$SECS" --runs "$RUNS" --json | tail -n 1 >> "$HS_JSON"
for size in $SIZES; do
  for apply in kv count; do
    log "hs replicate $size B, --apply $apply"
    "$HSB" replicate --record-size "$size" --apply "$apply" --secs "$SECS" --runs "$RUNS" --dir "$WORK" --json | tail -n 1 >> "$HS_JSON"
  done
done
for size in $RETENTION_SIZES; do
  log "hs replicate $size B, --apply kv, at retention ($RETENTION kept, $WARM first)"
  "$HSB" replicate --record-size "$size" --apply kv --secs "$SECS" --runs "$RUNS" --dir "$WORK" \
    --retention-bytes "$RETENTION" --warm-bytes "$WARM" --json | tail -n 1 >> "$HS_JSON"
done
log "hs latency 64 B at $RATE rec/s"
"$HSB" latency --record-size 64 --rate "$RATE" --secs "$SECS" --runs "$RUNS" --dir "$WORK" --json | tail -n 1 >> "$HS_JSON"
log "hs catch-up of $VOLUME"
"$HSB" catchup --volume "$VOLUME" --runs "$RUNS" --dir "$WORK" --json | tail -n 1 >> "$HS_JSON"
log "hs catch-up of $LIMIT_VOLUME limited to $LIMIT/s"
"$HSB" catchup --volume "$LIMIT_VOLUME" --rate-limit "$LIMIT" --runs "$RUNS" --dir "$WORK" --json | tail -n 1 >> "$HS_JSON"
log "hs recovery of $RECOVERY_VOLUME"
"$HSB" recovery --volume "$RECOVERY_VOLUME" --runs "$RUNS" --dir "$WORK" --json | tail -n 1 >> "$HS_JSON"

# ---- 5. the table, JSON and plots
mkdir -p "$OUT"
cp "$HS_JSON" "$OUT/hs.jsonl"; cp "$REDIS_JSON" "$OUT/redis.jsonl"
NOTE="$(date -u +%Y-%m-%d), $(nproc) cores, Redis $REDIS_VERSION; median of $RUNS run(s), hs's worst run in brackets; redis-benchmark -P $PIPELINE -c $CLIENTS; value sizes as redis-benchmark -d, 16-byte keys"
echo
"$HSB" report --hs "$OUT/hs.jsonl" --redis "$OUT/redis.jsonl" --out "$OUT" --note "$NOTE"
