#!/usr/bin/env bash
# Cold-path A/B: two execd builds, alternating, in one run: each round starts each build's
# server in turn and measures Execute of /bin/true at concurrency 1 (p50, from N requests)
# and at concurrency 8 (throughput, for D seconds). Prints every round and the medians,
# and the ratios B/A (throughput; A/B for latency, so above 1 means B is better).
# usage: loadtest/ab_cold_path.sh A_BUILD_DIR B_BUILD_DIR [ROUNDS] [N] [D]
set -euo pipefail
a=$1
b=$2
rounds=${3:-5}
n=${4:-1000}
d=${5:-5s}
loadtest=$b/execd-loadtest
out=$(mktemp)
trap 'rm -f "$out"' EXIT

measure() {  # build label round
  local port=$((20000 + RANDOM % 20000))
  "$1/execd" --listen=127.0.0.1:$port --metrics_listen=127.0.0.1:0 --log_requests=false 2>/dev/null &
  local server=$!
  for _ in $(seq 100); do
    "$loadtest" --target=127.0.0.1:$port --ping --requests=1 >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$loadtest" --target=127.0.0.1:$port --requests=200 --concurrency=1 -- /bin/true >/dev/null
  local c1 c8
  c1=$("$loadtest" --target=127.0.0.1:$port --requests="$n" --concurrency=1 --json -- /bin/true)
  c8=$("$loadtest" --target=127.0.0.1:$port --duration="$d" --concurrency=8 --json -- /bin/true)
  kill "$server"
  wait "$server" 2>/dev/null || true
  local p50 rps p99
  p50=$(echo "$c1" | sed -E 's/.*"p50_ms":([0-9.]+).*/\1/')
  rps=$(echo "$c8" | sed -E 's/.*"requests_per_second":([0-9.]+).*/\1/')
  p99=$(echo "$c8" | sed -E 's/.*"p99_ms":([0-9.]+).*/\1/')
  echo "$2 $3 $p50 $rps $p99" | tee -a "$out"
}

echo "label round c1_p50_ms c8_req_per_s c8_p99_ms"
for round in $(seq "$rounds"); do
  measure "$a" A "$round"
  measure "$b" B "$round"
done
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
for label in A B; do
  p50=$(awk -v l=$label '$1==l {print $3}' "$out" | median)
  rps=$(awk -v l=$label '$1==l {print $4}' "$out" | median)
  p99=$(awk -v l=$label '$1==l {print $5}' "$out" | median)
  echo "median $label: c1 p50 ${p50} ms, c8 ${rps} req/s, c8 p99 ${p99} ms"
  eval "${label}_p50=$p50 ${label}_rps=$rps"
done
awk -v ap="$A_p50" -v bp="$B_p50" -v ar="$A_rps" -v br="$B_rps" 'BEGIN {
  printf "B against A: c1 p50 %.3f (A/B), c8 throughput %.3f (B/A)\n", ap / bp, br / ar }'
