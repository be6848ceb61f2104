#!/usr/bin/env bash
# execd against the simplest server a user could write instead: loadtest/py_baseline/server.py
# (Python grpcio, a thread pool, subprocess.run). Both servers run side by side for the whole
# run; each round measures Execute of /bin/true on each in turn: at concurrency 1 (p50, from
# N requests) and at concurrency 8 (throughput, for D seconds), then the same spawned locally
# by execd-loadtest --local (no server: the floor under both). Prints every round, the
# medians, and the two ratios of issue 19's target (execd/python throughput at c=8 >= 2,
# python/execd p50 at c=1 >= 1.5).
# usage: loadtest/bench_python_baseline.sh [BUILD_DIR] [ROUNDS] [N] [D] [PY_WORKERS]
#   (from the repository root; builds nothing; needs python3-grpcio and python3-protobuf)
set -euo pipefail
build=${1:-build}
rounds=${2:-5}
n=${3:-1000}
d=${4:-5s}
workers=${5:-16}
python=${PYTHON:-/usr/bin/python3}  # Debian's, where python3-grpcio is installed
loadtest=$build/execd-loadtest
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
execd_pid="" py_pid=""
cleanup() {
  for pid in $execd_pid $py_pid; do kill "$pid" 2>/dev/null || true; done
  for pid in $execd_pid $py_pid; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_ready() {  # target label
  for _ in $(seq 100); do
    "$loadtest" --target="$1" --ping --requests=1 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench: $2 did not answer Ping on $1" >&2
  exit 1
}

"$here/py_baseline/gen_stubs.sh" "$tmp/stubs"
execd_target=127.0.0.1:$(free_port)
"$build/execd" --listen="$execd_target" --metrics_listen=127.0.0.1:0 --log_requests=false 2>"$tmp/execd.log" &
execd_pid=$!
py_target=127.0.0.1:$(free_port)
"$python" "$here/py_baseline/server.py" --stubs="$tmp/stubs" --port="${py_target#*:}" \
  --workers="$workers" 2>"$tmp/python.log" &
py_pid=$!
wait_ready "$execd_target" execd
wait_ready "$py_target" "python server"
for t in "$execd_target" "$py_target"; do  # warm up both
  "$loadtest" --target="$t" --requests=200 --concurrency=8 -- /bin/true >/dev/null
done

field() { sed -E "s/.*\"$1\":([0-9.]+).*/\\1/"; }
measure() {  # label target|--local round
  local c1 c8 where=--target="$2"
  [[ "$2" == --local ]] && where=--local
  c1=$("$loadtest" "$where" --requests="$n" --concurrency=1 --json -- /bin/true) || true
  c8=$("$loadtest" "$where" --duration="$d" --concurrency=8 --json -- /bin/true) || true
  # A failed request still prints a report (and exits 1); no report is a usage error.
  if [[ -z "$c1" || -z "$c8" ]]; then
    echo "execd-loadtest printed no report: see its error above" >&2
    exit 1
  fi
  local errors=$(($(echo "$c1" | field errors) + $(echo "$c8" | field errors)))
  echo "$1 $3 $(echo "$c1" | field p50_ms) $(echo "$c8" | field requests_per_second)" \
    "$(echo "$c8" | field p50_ms) $(echo "$c8" | field p99_ms) $errors" | tee -a "$tmp/rows"
}

echo "execd $execd_target, python $py_target ($workers workers, $("$python" -c \
  'import grpc, google.protobuf as p; print("grpcio", grpc.__version__, "protobuf", p.__version__)'))"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
echo "label round c1_p50_ms c8_req_per_s c8_p50_ms c8_p99_ms errors"
for round in $(seq "$rounds"); do
  measure execd "$execd_target" "$round"
  measure python "$py_target" "$round"
  measure local --local "$round"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
col() { awk -v l="$1" -v c="$2" '$1==l {print $c}' "$tmp/rows" | median; }
for label in execd python local; do
  echo "median $label: c1 p50 $(col $label 3) ms, c8 $(col $label 4) req/s," \
    "c8 p50 $(col $label 5) ms, c8 p99 $(col $label 6) ms, errors $(col $label 7)"
done
awk -v ep="$(col execd 3)" -v pp="$(col python 3)" -v er="$(col execd 4)" -v pr="$(col python 4)" \
  'BEGIN {
    t = er / pr; l = pp / ep
    printf "execd/python throughput at c=8: %.2fx (target >= 2: %s)\n", t, (t >= 2 ? "met" : "NOT met")
    printf "python/execd p50 at c=1: %.2fx (target >= 1.5: %s)\n", l, (l >= 1.5 ? "met" : "NOT met")
  }'
