#!/usr/bin/env bash
# ExecuteBatch of N /bin/true through execd against `xargs -P$(nproc)` running the same
# commands locally, alternating, in one run.
# usage: loadtest/bench_batch.sh [BUILD_DIR] [N] [ROUNDS]
set -euo pipefail
build=${1:-build}
n=${2:-1000}
rounds=${3:-3}
p=$(nproc)
port=$((20000 + RANDOM % 20000))
target=127.0.0.1:$port
"$build/execd" --listen="$target" --metrics_listen=127.0.0.1:0 --log_requests=false &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT
for _ in $(seq 100); do "$build/execctl" --target="$target" health >/dev/null 2>&1 && break; sleep 0.1; done
for round in $(seq "$rounds"); do
  start=$(date +%s.%N)
  seq "$n" | xargs -P"$p" -I{} /bin/true  # One /bin/true per line.
  local_s=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }')
  for parallel in "$p" 8; do
    batch=$("$build/execd-loadtest" --target="$target" --batch="$n" --concurrency="$parallel" \
      --json -- /bin/true)
    echo "round $round: xargs -P$p ${local_s}s; ExecuteBatch max_parallel=$parallel $batch"
  done
done
