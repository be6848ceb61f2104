#!/usr/bin/env bash
# Does heavy output hold up other callers? A Ping caller (concurrency 1) measured alone;
# while eight callers each ask execd once a second for 8 MiB of compressible output (seq,
# with accept_compression LZ4); and while the same eight commands a second run locally
# (execd-loadtest --local, output to /dev/null: what the children cost by themselves).
# Alternating, against one execd on its default flags. Prints each round's Ping p50/p99
# and the median ratios of the loaded p99s to the idle one.
# usage: loadtest/bench_ping_under_output.sh [BUILD_DIR] [ROUNDS] [SECONDS]
set -euo pipefail
build=${1:-build}
rounds=${2:-5}
seconds=${3:-5}
log=$(mktemp)
"$build/execd" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --log_requests=false 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
until grep -q ' port=' "$log"; do sleep 0.1; done
target=127.0.0.1:$(grep -o ' port=[0-9]*' "$log" | head -1 | cut -d= -f2)
lt="$build/execd-loadtest --target=$target"
# 1,100,000 lines of seq: 7.7 MB of text that lz4 shrinks to about a third.
command=(/usr/bin/seq 1 1100000)

ping_json() { $lt --ping --concurrency=1 --duration="${seconds}s" --json; }
field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/"; }
# Pings while `$@` (a load) runs: prints "p50 p99 load_req/s".
ping_while() {
  local out j
  out=$(mktemp)
  "$@" --concurrency=8 --rate=8 --duration="$((seconds + 1))s" --json -- "${command[@]}" >"$out" &
  local load=$!
  j=$(ping_json)
  wait $load
  echo "$(field p50_ms <<<"$j") $(field p99_ms <<<"$j") $(field requests_per_second <"$out")"
  rm -f "$out"
}

printf '%-7s %5s %10s %10s %9s\n' load round ping_p50 ping_p99 load_req/s
idle=() local_p99=() execd_p99=()
for round in $(seq "$rounds"); do
  j=$(ping_json)
  idle+=("$(field p99_ms <<<"$j")")
  printf '%-7s %5d %9.3fms %9.3fms %9s\n' idle "$round" "$(field p50_ms <<<"$j")" "${idle[-1]}" -
  read -r p50 p99 rps < <(ping_while $lt --local)
  local_p99+=("$p99")
  printf '%-7s %5d %9.3fms %9.3fms %9.3f\n' local "$round" "$p50" "$p99" "$rps"
  read -r p50 p99 rps < <(ping_while $lt --accept_lz4 --max_output_bytes=16777216)
  execd_p99+=("$p99")
  printf '%-7s %5d %9.3fms %9.3fms %9.3f\n' execd "$round" "$p50" "$p99" "$rps"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mi=$(median "${idle[@]}") ml=$(median "${local_p99[@]}") me=$(median "${execd_p99[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
echo "median Ping p99: idle ${mi} ms; with the commands run locally ${ml} ms ($(ratio "$ml" "$mi") x);" \
  "through execd ${me} ms ($(ratio "$me" "$mi") x, target <= 1.5)"
