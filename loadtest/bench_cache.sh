#!/usr/bin/env bash
# Cache-hit throughput against Ping at the same concurrency, one server, alternating rounds.
# usage: loadtest/bench_cache.sh [BUILD_DIR] [ROUNDS] [CONCURRENCY] [DURATION]
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
concurrency=${3:-8}
duration=${4:-5s}
port=$((20000 + RANDOM % 20000))
"$build/execd" --listen="127.0.0.1:$port" --log_requests=false >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
until "$build/execctl" --target="127.0.0.1:$port" health >/dev/null 2>&1; do sleep 0.1; done
rate() { "$build/execd-loadtest" --target="127.0.0.1:$port" --concurrency="$concurrency" \
  --duration="$duration" "$@" 2>&1 | awk '/^throughput:/ { print $2 }'; }
printf '%5s %12s %12s %6s\n' round ping cache_hit ratio
for round in $(seq "$rounds"); do
  p=$(rate --ping)
  c=$(rate --cache -- /bin/echo hello)
  printf '%5d %12s %12s %6.2f\n' "$round" "$p" "$c" "$(awk -v a="$c" -v b="$p" 'BEGIN { print a / b }')"
done
