#!/usr/bin/env bash
# Cache-hit throughput against Ping at the same concurrency, one server, alternating rounds;
# per concurrency, each round's ratio and the ratio of the rounds' sums.
# usage: loadtest/bench_cache.sh [BUILD_DIR] [ROUNDS] [CONCURRENCIES] [DURATION]
#   CONCURRENCIES: one number or a comma-separated list, e.g. 2,4,8,16,32
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
concurrencies=${3:-8}
duration=${4:-5s}
port=$((20000 + RANDOM % 20000))
"$build/execd" --listen="127.0.0.1:$port" --metrics_listen=127.0.0.1:0 --log_requests=false >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
until "$build/execctl" --target="127.0.0.1:$port" health >/dev/null 2>&1; do sleep 0.1; done
rate() { "$build/execd-loadtest" --target="127.0.0.1:$port" --concurrency="$concurrency" \
  --duration="$duration" "$@" 2>&1 | awk '/^throughput:/ { print $2 }'; }
for concurrency in ${concurrencies//,/ }; do
  echo "== concurrency $concurrency"
  printf '%5s %12s %12s %6s\n' round ping cache_hit ratio
  ping_sum=0 hit_sum=0
  for round in $(seq "$rounds"); do
    p=$(rate --ping)
    c=$(rate --cache -- /bin/echo hello)
    printf '%5d %12s %12s %6.2f\n' "$round" "$p" "$c" "$(awk -v a="$c" -v b="$p" 'BEGIN { print a / b }')"
    ping_sum=$(awk -v s="$ping_sum" -v x="$p" 'BEGIN { print s + x }')
    hit_sum=$(awk -v s="$hit_sum" -v x="$c" 'BEGIN { print s + x }')
  done
  awk -v h="$hit_sum" -v p="$ping_sum" 'BEGIN { printf "  all rounds: %.3f\n", h / p }'
done
