#!/usr/bin/env bash
# Streaming throughput: a child writing 1 GiB to stdout, streamed through execd to
# `execctl run --stream` (which writes it to /dev/null), against the same bytes through a
# local pipe, alternating, on zeros (lz4 shrinks them: execctl accepts lz4) and on random
# bytes (incompressible), one run of the server with its default flags.
# usage: loadtest/bench_stream.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
size=$((1 << 30))
port=$((20000 + RANDOM % 20000))
random=$(mktemp)
"$build/execd" --listen="127.0.0.1:$port" --metrics_listen=127.0.0.1:0 >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$random"' EXIT
head -c "$size" /dev/urandom >"$random"
cat "$random" >/dev/null  # In the page cache for both sides.
until "$build/execctl" --target="127.0.0.1:$port" health >/dev/null 2>&1; do sleep 0.1; done

seconds() {  # Wall time of "$@" in seconds.
  local start end
  start=$(date +%s.%N)
  "$@"
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { print b - a }'
}
local_zero() { head -c "$size" /dev/zero | cat >/dev/null; }
execd_zero() { "$build/execctl" --target="127.0.0.1:$port" run --stream --timeout=10m -- head -c "$size" /dev/zero >/dev/null; }
local_random() { cat "$random" | cat >/dev/null; }
execd_random() { "$build/execctl" --target="127.0.0.1:$port" run --stream --timeout=10m -- cat "$random" >/dev/null; }

printf '%-7s %5s %10s %10s %6s\n' data round local execd ratio
for data in zero random; do
  for round in $(seq "$rounds"); do
    l=$(seconds "local_$data")
    e=$(seconds "execd_$data")
    printf '%-7s %5d %9.2fs %9.2fs %6.2f\n' "$data" "$round" "$l" "$e" "$(awk -v a="$l" -v b="$e" 'BEGIN { print a / b }')"
  done
done
