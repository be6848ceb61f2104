#!/usr/bin/env bash
# What serving metrics costs: Execute (/bin/true, concurrency 8) and Ping (concurrency 8)
# throughput against an execd whose /metrics is scraped every second, and against one with
# --metrics_listen= (no endpoint; it still records, as GetStatus returns the metrics). Both
# servers run throughout; the scraper runs only while its server is measured. Pairs are
# interleaved, the order alternating, and the medians of the per-pair ratios are printed.
# usage: loadtest/bench_metrics.sh [BUILD_DIR] [PAIRS] [SECONDS]
set -euo pipefail
build=${1:-build}
pairs=${2:-5}
seconds=${3:-3}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

start() {  # start NAME FLAGS...: an execd logging to $tmp/NAME.log
  local name=$1
  shift
  "$build/execd" --listen=127.0.0.1:0 --log_requests=false "$@" 2>"$tmp/$name.log" &
  pids+=($!)
  until grep -q 'event=listening' "$tmp/$name.log"; do sleep 0.05; done
}
port_of() { sed -nE 's/.*event=listening .* port=([0-9]+).*/\1/p' "$tmp/$1.log"; }
start on --metrics_listen=127.0.0.1:0
start off --metrics_listen=
on=$(port_of on)
off=$(port_of off)
metrics=$(sed -nE 's/.*metrics_port=([0-9]+).*/\1/p' "$tmp/on.log")
scrape=$(/usr/bin/python3 -c "import urllib.request
print(urllib.request.urlopen('http://127.0.0.1:$metrics/metrics').read().decode(), end='')")
echo "scrape size: $(wc -c <<<"$scrape") bytes, $(grep -vc '^#' <<<"$scrape") samples"

field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/"; }
# measure PORT KIND: req/s of one load; KIND is execute or ping.
measure() {
  local args=(--target="127.0.0.1:$1" --concurrency=8 --duration="${seconds}s" --json)
  if [[ $2 == ping ]]; then args+=(--ping); else args+=(-- /bin/true); fi
  "$build/execd-loadtest" "${args[@]}" | field requests_per_second
}
# measure_on KIND: as measure, while a scraper fetches /metrics once a second (one process
# throughout, as Prometheus is, not a curl started for each scrape).
measure_on() {
  /usr/bin/python3 -c "
import time, urllib.request
while True:
    urllib.request.urlopen('http://127.0.0.1:$metrics/metrics').read()
    time.sleep(1)" &
  local scraper=$!
  measure "$on" "$1"
  kill $scraper
  wait $scraper 2>/dev/null || true
}

printf '%-8s %4s %12s %12s %7s\n' kind pair scraped_req/s off_req/s ratio
for kind in execute ping; do
  ratios=()
  for pair in $(seq "$pairs"); do
    if ((pair % 2)); then
      a=$(measure_on $kind)
      b=$(measure "$off" $kind)
    else
      b=$(measure "$off" $kind)
      a=$(measure_on $kind)
    fi
    r=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }')
    ratios+=("$r")
    printf '%-8s %4d %12.1f %12.1f %7s\n' $kind "$pair" "$a" "$b" "$r"
  done
  median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END {
    print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  echo "$kind: median scraped/off throughput ratio $median (target >= 0.97)"
done
