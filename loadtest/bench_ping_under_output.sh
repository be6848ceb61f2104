#!/usr/bin/env bash
# Does heavy output hold up other callers? A Ping caller (concurrency 1) measured alone and
# while eight callers each ask once a second for 8 MiB of compressible output (seq, with
# accept_compression LZ4), alternating, against one execd on its default flags.
# Prints each round's Ping p50/p99 and the median ratio loaded p99 / idle p99.
# usage: loadtest/bench_ping_under_output.sh [BUILD_DIR] [ROUNDS] [SECONDS]
set -euo pipefail
build=${1:-build}
rounds=${2:-5}
seconds=${3:-5}
log=$(mktemp)
"$build/execd" --listen=127.0.0.1:0 --log_requests=false 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
until grep -q ' port=' "$log"; do sleep 0.1; done
target=127.0.0.1:$(grep -o ' port=[0-9]*' "$log" | head -1 | cut -d= -f2)
lt="$build/execd-loadtest --target=$target"

ping_json() { $lt --ping --concurrency=1 --duration="${seconds}s" --json; }
field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/"; }

printf '%-6s %5s %10s %10s %12s\n' load round ping_p50 ping_p99 output_req/s
idle=() loaded=()
for round in $(seq "$rounds"); do
  j=$(ping_json)
  idle+=("$(field p99_ms <<<"$j")")
  printf '%-6s %5d %9.3fms %9.3fms %12s\n' idle "$round" "$(field p50_ms <<<"$j")" "${idle[-1]}" -
  out=$(mktemp)
  # 1,100,000 lines of seq: 8.0 MiB of text that lz4 shrinks to about a third.
  $lt --concurrency=8 --rate=8 --accept_lz4 --max_output_bytes=16777216 \
    --duration="$((seconds + 1))s" --json -- /usr/bin/seq 1 1100000 >"$out" &
  heavy=$!
  j=$(ping_json)
  wait $heavy
  loaded+=("$(field p99_ms <<<"$j")")
  printf '%-6s %5d %9.3fms %9.3fms %12s\n' loaded "$round" "$(field p50_ms <<<"$j")" "${loaded[-1]}" \
    "$(field requests_per_second <"$out")"
  rm -f "$out"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mi=$(median "${idle[@]}") ml=$(median "${loaded[@]}")
echo "median Ping p99: idle ${mi} ms, loaded ${ml} ms, ratio $(awk -v a="$ml" -v b="$mi" 'BEGIN{printf "%.2f", a/b}') (target <= 1.5)"
