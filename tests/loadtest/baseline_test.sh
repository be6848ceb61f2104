#!/usr/bin/env bash
# execd-loadtest --baseline end to end, without timing assertions: against a real execd it
# prints every mode's medians and the targets, and the background loops it started are gone
# when it ends, normally or by SIGTERM; against a port where nothing listens it prints no
# throughput and exits non-zero.
# usage: baseline_test.sh EXECD_BIN LOADTEST_BIN
set -euo pipefail
execd=$1 loadtest=$2
dir=$(mktemp -d)
server=
cleanup() {
  if [[ -n "$server" ]]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  [[ -f "$dir/out" ]] && cat "$dir/out"
  exit 1
}
# Polls up to 10 s for a condition that must become true.
eventually() {
  for _ in $(seq 100); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}
gone() {
  local pid
  for pid in "$@"; do
    if kill -0 "$pid" 2>/dev/null; then return 1; fi
  done
}

# A free port: the server takes any (port 0) and logs the one it got.
"$execd" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --log_requests=false 2>"$dir/server.log" &
server=$!
listening() { grep -q 'event=listening' "$dir/server.log"; }
eventually listening || fail "execd did not start: $(cat "$dir/server.log")"
port=$(sed -nE 's/.*event=listening .* port=([0-9]+).*/\1/p' "$dir/server.log")
target=127.0.0.1:$port

echo "== --baseline with background loops in sessions of their own"
"$loadtest" --target="$target" --baseline --rounds=1 --duration=200ms --concurrency=2 \
  --background=cpu --background_session=own >"$dir/out" 2>&1 ||
  fail "--baseline exited with $?"
cat "$dir/out"
for line in '^baseline: command /bin/true, concurrency 2, channels 1, 1 rounds' \
  '^background: cpu x2, own sessions, nice 19, pids [0-9]+,[0-9]+$' \
  '^round 1 (local_spawn|local_setsid|ping|execute) +[0-9.]+ req/s' \
  '^local_spawn +[0-9.]+ ' '^local_setsid +[0-9.]+ ' '^ping +[0-9.]+ ' '^execute +[0-9.]+ ' \
  '^  execute p50 - \(local_spawn p50 \+ ping p50\) .* target <= 0.1 ms +(holds|misses)' \
  '^  execute p50 - \(local_setsid p50 \+ ping p50\) .* set for busy, concurrency 1'; do
  grep -qE "$line" "$dir/out" || fail "no line matching: $line"
done
[[ $(grep -c '^round 1 ' "$dir/out") == 4 ]] || fail "not four measurements in round 1"
read -r -a pids <<<"$(sed -nE 's/.* pids ([0-9,]+)$/\1/p' "$dir/out" | tr , ' ')"
[[ ${#pids[@]} == 2 ]] || fail "not two background pids"
gone "${pids[@]}" || fail "background loops ${pids[*]} outlived execd-loadtest"

echo "== --baseline --json"
"$loadtest" --target="$target" --baseline --rounds=1 --duration=100ms --concurrency=1 \
  --channels=2 --json >"$dir/out" 2>&1 || fail "--baseline --json exited with $?"
for key in '"local_spawn":{' '"local_setsid":{' '"ping":{' '"execute":{' '"channels":2' \
  '"name":"idle_p50_overhead_ms"' '"name":"busy_p99_vs_local"' '"errors":0'; do
  grep -qF "$key" "$dir/out" || fail "no $key in the JSON"
done

echo "== SIGTERM stops and reaps the loops (in the caller's session, niced)"
"$loadtest" --target="$target" --baseline --rounds=100 --duration=1s --concurrency=1 \
  --background=fork --background_session=same >"$dir/out" 2>&1 &
lt=$!
loops() {
  mapfile -t pids < <(ps --ppid "$lt" -o pid=,comm= | awk '$2 == "execd-loadtest" { print $1 }')
  ((${#pids[@]} == 2))
}
eventually loops || fail "no two background loops under execd-loadtest $lt"
for pid in "${pids[@]}"; do
  read -r ni sid < <(ps -o ni=,sid= -p "$pid") || fail "loop $pid vanished"
  [[ "$ni" == 19 ]] || fail "loop $pid runs at nice $ni"
  [[ "$sid" == $(ps -o sid= -p "$lt" | tr -d ' ') ]] || fail "loop $pid in session $sid"
done
kill -TERM "$lt"
status=0
wait "$lt" || status=$?
((status == 128 + 15)) || fail "execd-loadtest ended with $status after SIGTERM"
gone "${pids[@]}" || fail "background loops ${pids[*]} outlived execd-loadtest"

echo "== no server: no throughput, exit non-zero"
kill "$server"
wait "$server" 2>/dev/null || true
server=
status=0
"$loadtest" --target="$target" --requests=20 --concurrency=2 -- /bin/true >"$dir/out" 2>&1 ||
  status=$?
cat "$dir/out"
((status != 0)) || fail "exit 0 with no server"
grep -q '^throughput:' "$dir/out" && fail "throughput printed with no server"
grep -q '^no request succeeded: 20 failed$' "$dir/out" || fail "no count of failures"
grep -q '^first error: ' "$dir/out" || fail "no first error"
status=0
"$loadtest" --target="$target" --ping --requests=20 --json >"$dir/out" 2>&1 || status=$?
((status != 0)) || fail "--json: exit 0 with no server"
grep -q 'requests_per_second' "$dir/out" && fail "--json: throughput printed with no server"
echo "PASS"
