#!/usr/bin/env bash
# Pool benchmarks for BENCHMARKS.md, each a ratio against a baseline measured in this run:
#   1. a trivial Python program: cold spawn through execd vs a PREWARMED pool (p50 latency),
#      with and without exit_report (answered on prewarm.py's exit report, not its reaping),
#      open loop at a fixed rate (latency from each request's scheduled time) and closed loop
#      and the floor under both: the same program spawned locally (no execd), and a
#      PREWARMED pool of /bin/cat (no interpreter to wake, almost nothing to tear down)
#   2. a persistent worker (C++ test worker and the Python example) vs the Ping RPC
#      (throughput at the same concurrency)
# usage: loadtest/bench_pools.sh [BUILD_DIR] [DURATION]   (from the repository root)
set -euo pipefail
build=${1:-build}
duration=${2:-10s}
port=$((20000 + RANDOM % 20000))
target=127.0.0.1:$port
config=$(mktemp)
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -f "$config"' EXIT
cat >"$config" <<CONFIG
pool { name: "python" kind: PREWARMED argv: "/usr/bin/python3"
       argv: "$PWD/examples/workers/python/prewarm.py" min_idle: 8 max_size: 16 }
pool { name: "python-report" kind: PREWARMED argv: "/usr/bin/python3" exit_report: true
       argv: "$PWD/examples/workers/python/prewarm.py" min_idle: 8 max_size: 16 }
pool { name: "cat" kind: PREWARMED argv: "/bin/cat" min_idle: 8 max_size: 16 }
pool { name: "cxx" kind: PERSISTENT argv: "$PWD/$build/execd-test-worker"
       min_idle: 8 max_size: 8 }
pool { name: "py" kind: PERSISTENT argv: "/usr/bin/python3"
       argv: "$PWD/examples/workers/python/echo_worker.py" min_idle: 8 max_size: 8 }
CONFIG
"$build/execd" --listen="$target" --metrics_listen=127.0.0.1:0 --log_requests=false --pools_config="$config" &
server=$!
for _ in $(seq 100); do "$build/execctl" --target="$target" health >/dev/null 2>&1 && break; sleep 0.1; done
lt() { "$build/execd-loadtest" --target="$target" --duration="$duration" "$@"; }
program='print(1)'
echo "== Python print(1): cold spawn vs PREWARMED pool (without, with exit_report) vs Ping,"
echo "   open loop (concurrency 2; 4 at 80 req/s, where a cold start's 10 ms would"
echo "   otherwise find both callers busy now and then)"
for point in 10:2 20:2 40:2 80:4; do
  rate=${point%:*} conc=${point#*:}
  lt --concurrency=$conc --rate=$rate -- /usr/bin/python3 -c "$program"
  lt --concurrency=$conc --rate=$rate --pool=python --stdin_text="$program"
  lt --concurrency=$conc --rate=$rate --pool=python-report --stdin_text="$program"
  lt --concurrency=$conc --rate=$rate --ping
done
echo "== the floor, open loop (concurrency 2): local spawns, no execd; a pre-warmed /bin/cat"
for rate in 10 40; do
  lt --concurrency=2 --rate=$rate --local -- /usr/bin/python3 -c "$program"
  lt --concurrency=2 --rate=$rate --local -- /bin/cat /dev/null
  lt --concurrency=2 --rate=$rate --pool=cat --stdin_text=1
done
echo "== the same, closed loop (concurrency 1): the pool must spawn one process per request"
lt --concurrency=1 -- /usr/bin/python3 -c "$program"
lt --concurrency=1 --pool=python --stdin_text="$program"
lt --concurrency=1 --pool=python-report --stdin_text="$program"
echo "== persistent workers vs Ping (concurrency 8)"
lt --concurrency=8 --ping
lt --concurrency=8 --pool=cxx -- echo
lt --concurrency=8 --pool=py -- echo
lt --concurrency=8 --ping
"$build/execctl" --target="$target" status
