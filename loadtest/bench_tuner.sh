#!/usr/bin/env bash
# The concurrency tuner against static limits, open loop (execd-loadtest --open_loop: each
# request sent at its scheduled time, latency from then). Each workload runs a sweep of
# static limits with the tuner's run in the middle of it, each run on a fresh execd:
#   cpu    a dash busy loop calibrated at the start to ~15 ms of CPU (a stable cost, and dash
#          starts in well under a millisecond). A closed-loop sweep finds the best static
#          throughput; then open loop at 90% of it for each static limit and for the tuner
#          from 32 (too high on 2 cores).
#   sleep  `sleep 0.2` at 150/s: static limits, and the tuner for 90 s from
#          --max_concurrency=8 --tuner_max=64; when the limit first reaches 30, the sheds,
#          and the figures from 30 s on apart from the ramp.
#   mixed  half of each at once: two loadtests against one server, the cpu command at 45% of
#          the best throughput and `sleep 0.2` at 75/s.
#   shift  cpu then sleep, and sleep then cpu: two consecutive loadtests against one tuner
#          server, the second started as the first's schedule ends, timelines concatenated
#          (--timeline_offset); how long after the shift the new workload's throughput is
#          back at 95% of the best static limit's for it, and shift.png (gnuplot) of limit,
#          throughput (all replies) and p99 over time.
#   noise  cpu with a one-core busy loop (the hog) from 25% to 65% of the run: direction
#          changes of the limit a minute at steady state, its minimum, and the time to 95%
#          of the best throughput after the hog stops.
# Throughput counts the successes that ended in a window (per second); percentiles are of the
# successes scheduled in it; errors (sheds, failures, calls cancelled after the drain) apart.
# Prints a table and the targets' verdicts; leaves the servers' logs, every run's JSON,
# timeline and request log, and shift.png in OUT_DIR (default: a new temporary directory).
# usage: loadtest/bench_tuner.sh BUILD_DIR [OUT_DIR]
# environment (defaults give about 20 minutes on 2 cores):
#   BENCH_SCALE=1            multiplies every duration below (0.1 checks the plumbing)
#   BENCH_SECONDS=30         each static open-loop run (cpu, sleep, mixed)
#   BENCH_WARMUP=5           left out of each static run's figures
#   BENCH_TUNER_SECONDS=60   the tuner's cpu and mixed runs; BENCH_TUNER_WARMUP=20 left out
#   BENCH_SLEEP_SECONDS=90   the tuner's sleep run; BENCH_SLEEP_WARMUP=30 (the ramp)
#   BENCH_CLOSED_SECONDS=8   each closed-loop run of the cpu sweep
#   BENCH_SHIFT_SECONDS=40   each side of a shift
#   BENCH_NOISE_SECONDS=120  the noise run
#   BENCH_DRAIN=10           seconds a run waits for late replies before cancelling them
#   BENCH_WORKLOADS="cpu sleep mixed shift noise"
#   BENCH_TUNER=on           off: execd without the tuner; the tuner's runs become static
#                            runs at its starting limit (checks the plumbing)
#   BENCH_CPU_MS=15          the cpu command's CPU time
set -euo pipefail

build=${1:?usage: loadtest/bench_tuner.sh BUILD_DIR [OUT_DIR]}
out=${2:-$(mktemp -d "${TMPDIR:-/tmp}/bench_tuner.XXXXXX")}
mkdir -p "$out"
scale=${BENCH_SCALE:-1}
workloads=" ${BENCH_WORKLOADS:-cpu sleep mixed shift noise} "
tuner_mode=${BENCH_TUNER:-on}
cpu_ms=${BENCH_CPU_MS:-15}
python=/usr/bin/python3
cores=$(nproc)
sleep_cmd=(/bin/sleep 0.2)

die() {
  echo "bench_tuner: $*" >&2
  exit 1
}
[[ -x $build/execd && -x $build/execd-loadtest ]] ||
  die "no $build/execd or $build/execd-loadtest: build them first"
[[ $tuner_mode == on || $tuner_mode == off ]] || die "BENCH_TUNER must be on or off"
tuner_flag=false
flags=$("$build/execd" --helpfull 2>&1 || true)
if grep -q -- '--tuner (' <<<"$flags"; then tuner_flag=true; fi
if [[ $tuner_mode == on && $tuner_flag == false ]]; then
  die "$build/execd has no --tuner flag (BENCH_TUNER=off runs the static limits alone)"
fi

# seconds NAME DEFAULT: the duration, scaled, whole seconds, at least 1.
seconds() {
  local v=${!1:-$2}
  awk -v v="$v" -v s="$scale" 'BEGIN { r = int(v * s + 0.5); print (r < 1 ? 1 : r) }'
}
static_s=$(seconds BENCH_SECONDS 30)
warm_s=$(seconds BENCH_WARMUP 5)
tuner_s=$(seconds BENCH_TUNER_SECONDS 60)
tuner_warm_s=$(seconds BENCH_TUNER_WARMUP 20)
sleep_s=$(seconds BENCH_SLEEP_SECONDS 90)
sleep_warm_s=$(seconds BENCH_SLEEP_WARMUP 30)
closed_s=$(seconds BENCH_CLOSED_SECONDS 8)
shift_s=$(seconds BENCH_SHIFT_SECONDS 40)
noise_s=$(seconds BENCH_NOISE_SECONDS 120)
drain_s=${BENCH_DRAIN:-10}

server_pid="" hog_pid="" loads=()
cleanup() {
  for pid in $server_pid $hog_pid "${loads[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

results=$out/results.txt
: >"$results"
say() { echo "$*" | tee -a "$results"; }
calc() { awk "BEGIN { print $* }"; }
# at_least A B: whether A >= B, both numbers ("-", no figure, is never).
at_least() {
  awk -v a="$1" -v b="$2" 'BEGIN { n = "^[0-9]+([.][0-9]*)?$"
    exit !(a ~ n && b ~ n && a + 0 >= b + 0) }'
}
# within SECONDS LIMIT: whether SECONDS (or "never") is at most LIMIT.
within() { [[ $1 != never ]] && at_least "$2" "$1"; }
# in_seconds SECONDS: "12s", or "never".
in_seconds() { if [[ $1 == never ]]; then echo never; else echo "${1}s"; fi; }

# ---- servers ----
# start_server NAME FLAGS...: a fresh execd on a free port; sets $port. Static runs pin the
# limit with --tuner=false, so that they stay static whatever the tuner's default.
start_server() {
  local name=$1 log=$out/$1.server.log
  shift
  "$build/execd" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --log_requests=false \
    --drain_timeout=2s "$@" 2>"$log" &
  server_pid=$!
  for _ in $(seq 200); do
    grep -q 'event=listening' "$log" && break
    kill -0 "$server_pid" 2>/dev/null || die "execd $name ($*) exited at start: $(tail -5 "$log")"
    sleep 0.05
  done
  grep -q 'event=listening' "$log" || die "execd $name ($*) did not listen within 10 s"
  port=$(sed -nE 's/.*event=listening .* port=([0-9]+).*/\1/p' "$log" | head -1)
}
stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
static_flags() {
  echo "--max_concurrency=$1"
  if [[ $tuner_flag == true ]]; then echo --tuner=false; fi
}
# tuner_flags START MAX: the tuner from START, or START pinned without the tuner.
tuner_flags() {
  if [[ $tuner_mode == on ]]; then
    echo "--max_concurrency=$1" --tuner "--tuner_max=$2"
  else
    static_flags "$1"
  fi
}
tuner_label() {
  if [[ $tuner_mode == on ]]; then echo "tuner from $1"; else echo "start $1 (no tuner)"; fi
}

# ---- load ----
field() { sed -nE "s/.*\"$1\":([0-9.]+).*/\1/p" "$2"; }
# check_run NAME STATUS: the loadtest's exit status is 1 when any request failed (sheds are
# expected of some limits); no success at all, or any other status, ends the benchmark.
check_run() {
  local json=$out/$1.json
  [[ $2 == 0 || $2 == 1 ]] || die "loadtest $1 failed (exit $2): $(tail -3 "$out/$1.err")"
  local ok
  ok=$(field succeeded "$json")
  [[ -n $ok && $ok != 0 ]] ||
    die "loadtest $1: no request succeeded; $(sed -nE 's/.*"first_error":"(.*)"\}/\1/p' "$json")"
}
# open_load NAME RATE SECONDS OFFSET -- COMMAND...: an open-loop run against $port, in the
# background (its pid in $load); finish_load NAME waits for it and checks it.
open_load() {
  local name=$1 rate=$2 secs=$3 offset=$4
  shift 5
  "$build/execd-loadtest" --target="127.0.0.1:$port" --open_loop --rate="$rate" \
    --duration="${secs}s" --channels=4 --drain_timeout="${drain_s}s" \
    --timeline="$out/$name.timeline.csv" --request_log="$out/$name.requests.csv" \
    --timeline_offset="${offset}s" --json -- "$@" >"$out/$name.json" 2>"$out/$name.err" &
  load=$!
  loads+=("$load")
}
finish_load() {  # NAME [PID]: waits for the load (default: $load) and checks it
  local pid=${2:-$load} status=0 kept=() p
  wait "$pid" || status=$?
  for p in "${loads[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
  loads=("${kept[@]}")
  check_run "$1" "$status"
}
# cpu_load, sleep_load NAME SECONDS [OFFSET]: the workload's open loop, in the background;
# cpu_run, sleep_run: the same, waited for.
cpu_load() { open_load "$1" "$cpu_rate" "$2" "${3:-0}" -- "${cpu_cmd[@]}"; }
sleep_load() { open_load "$1" 150 "$2" "${3:-0}" -- "${sleep_cmd[@]}"; }
cpu_run() {
  cpu_load "$@"
  finish_load "$1"
}
sleep_run() {
  sleep_load "$@"
  finish_load "$1"
}
closed_run() {  # NAME CONCURRENCY SECONDS -- COMMAND...: prints the throughput
  local name=$1 conc=$2 secs=$3 status=0
  shift 4
  "$build/execd-loadtest" --target="127.0.0.1:$port" --concurrency="$conc" \
    --duration="${secs}s" --json -- "$@" >"$out/$name.json" 2>"$out/$name.err" || status=$?
  check_run "$name" "$status"
  field requests_per_second "$out/$name.json"
}

# ---- figures ----
# stats A B FILE...: "offered throughput p50 p99 errors" over [A, B) seconds of request logs:
# offered and errors of the requests scheduled in it, throughput of the successes that
# ended in it (per second), percentiles (ms, nearest rank) of the successes scheduled in it.
stats() {
  local a=$1 b=$2
  shift 2
  if ((b <= a)); then
    echo "- - - - -"
    return
  fi
  local counts pct
  counts=$(awk -F, -v a="$a" -v b="$b" 'FNR > 1 {
      if ($1 >= a && $1 < b) { n++; if (!$3) err++ }
      end = $1 + $2 / 1000
      if ($3 && end >= a && end < b) done++ }
    END { printf "%.1f %.1f %d", n / (b - a), done / (b - a), err }' "$@")
  pct=$(awk -F, -v a="$a" -v b="$b" 'FNR > 1 && $3 && $1 >= a && $1 < b { print $2 }' "$@" |
    sort -g | awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "- -"; exit }
      print v[int(0.50 * (NR - 1) + 0.5) + 1], v[int(0.99 * (NR - 1) + 0.5) + 1] }')
  set -- $counts
  echo "$1 $2 ${pct% *} ${pct#* } $3"
}
# limit_column TIMELINE A B: the limit samples in [A, B), one a line.
limit_column() {
  awk -F, -v a="$2" -v b="$3" 'NR > 1 && $1 >= a && $1 < b && $7 != "" { print $7 }' "$1"
}
median() { sort -g | awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : "-" }'; }
# first_reach TIMELINE VALUE: the first t_s whose limit is >= VALUE, or "never".
first_reach() {
  awk -F, -v v="$2" 'NR > 1 && $7 != "" && $7 >= v { print $1; found = 1; exit }
    END { if (!found) print "never" }' "$1"
}
# direction_changes TIMELINE A B: reversals of the limit's direction in [A, B), a minute.
direction_changes() {
  if (($3 <= $2)); then
    echo -
    return
  fi
  limit_column "$@" | awk -v span="$(($3 - $2))" '
    { if (NR > 1 && $1 != last) { d = $1 > last ? 1 : -1; if (dir && d != dir) n++; dir = d }
      last = $1 }
    END { printf "%.1f", n * 60 / span }'
}
# utc_seconds: now, in seconds of the UTC day (the server log's ts= has no date arithmetic
# in awk).
utc_seconds() { date -u +'%H %M %S.%N' | awk '{ printf "%.3f", $1 * 3600 + $2 * 60 + $3 }'; }
# tuner_moves LOG START A B: "reversals-a-minute lowest" of the tuner's moves (event=tuner
# lines: from=, to=) logged in [A, B) seconds after START (utc_seconds): exact, where the
# timeline's 1 s samples can miss a move and its reversal within a second.
tuner_moves() {
  awk -v start="$2" -v a="$3" -v b="$4" '/event=tuner / {
      match($0, /T[0-9:.]+Z/); split(substr($0, RSTART + 1, RLENGTH - 2), h, ":")
      t = h[1] * 3600 + h[2] * 60 + h[3] - start
      if (t < -43200) t += 86400
      if (t < a || t >= b) next
      match($0, / from=[0-9]+/); from = substr($0, RSTART + 6, RLENGTH - 6) + 0
      match($0, / to=[0-9]+/); to = substr($0, RSTART + 4, RLENGTH - 4) + 0
      d = to > from ? 1 : -1; if (dir && d != dir) n++; dir = d
      if (low == "" || to < low) low = to }
    END { printf "%.1f %s", n * 60 / (b - a), low == "" ? "-" : low }' "$1"
}
# merge_timelines FIRST SECOND: one timeline of two runs against one server, SECOND offset
# to start where FIRST's schedule ends: in the seconds both cover (FIRST's late replies),
# counts add up, percentiles come from SECOND (FIRST scheduled nothing then), the limit
# from either.
merge_timelines() {
  awk -F, -v OFS=, 'FNR == 1 { if (NR == 1) print; next }
    !($1 in seen) { seen[$1] = 1; order[++n] = $1; for (i = 2; i <= 8; i++) v[$1, i] = $i; next }
    { v[$1, 2] += $2; v[$1, 3] += $3; v[$1, 4] += $4; v[$1, 8] += $8
      if ($3 > 0) { v[$1, 5] = $5; v[$1, 6] = $6 }
      if (v[$1, 7] == "") v[$1, 7] = $7 }
    END { for (k = 1; k <= n; k++) { t = order[k]
      print t, v[t, 2], v[t, 3], v[t, 4], v[t, 5], v[t, 6], v[t, 7], v[t, 8] } }' "$1" "$2"
}
# recovery TIMELINE FROM BAR: seconds from FROM until the first 3 s whose mean throughput
# (completed) is >= BAR, or "never".
recovery() {
  awk -F, -v from="$2" -v bar="$3" 'NR > 1 { t[NR] = $1; c[NR] = $8; n = NR }
    END { for (i = 2; i + 2 <= n; i++) if (t[i] >= from && (c[i] + c[i+1] + c[i+2]) / 3 >= bar) {
            print t[i] - from; exit }
          print "never" }' "$1"
}

# section TITLE: a workload's heading and the table's.
section() {
  say "== $*"
  printf '%-7s %-24s %9s %9s %9s %9s %7s %6s  %s\n' workload config offered/s tput/s p50_ms \
    p99_ms errors limit note | tee -a "$results"
}
# row WORKLOAD CONFIG "STATS" LIMIT [NOTE]
row() {
  set -- "$1" "$2" $3 "$4" "${5:-}"
  printf '%-7s %-24s %9s %9s %9s %9s %7s %6s  %s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" \
    "$9" | tee -a "$results"
}
# best_static STATS_FILE: the line of the static limit with the lowest p99 among those that
# kept up (throughput >= 97% of offered), else of the highest throughput.
best_static() {
  awk '{ keep = $3 >= 0.97 * $2 }
    keep && (!kbest || $5 < kp99) { kbest = $0; kp99 = $5 }
    !best || $3 > tput { best = $0; tput = $3 }
    END { print kbest ? kbest : best }' "$1"
}
verdict() {  # TEXT CONDITION...: one target's line, PASS or FAIL
  local text=$1
  shift
  if "$@"; then say "  PASS $text"; else say "  FAIL $text"; fi
}
decisions() { grep -c 'event=tuner ' "$out/$1.server.log" || true; }

say "output: $out"
say "scale $scale: static ${static_s}s (warm-up ${warm_s}s), tuner ${tuner_s}s (warm-up" \
  "${tuner_warm_s}s), sleep tuner ${sleep_s}s (ramp ${sleep_warm_s}s), shift 2x${shift_s}s," \
  "noise ${noise_s}s; tuner $tuner_mode; $cores cores"

# ---- the cpu command ----
needs_cpu=false
for w in cpu mixed shift noise; do [[ $workloads == *" $w "* ]] && needs_cpu=true; done
if [[ $needs_cpu == true ]]; then
  # CPU time (children's rusage) of dash busy loops of two lengths, spawned the way execd
  # does (vfork-style, no page tables copied): a line through them gives the iterations
  # for BENCH_CPU_MS.
  calibration=$("$python" - "$cpu_ms" <<'PY'
import os, resource, sys
target = float(sys.argv[1])
def cpu_ms(n, runs=15):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        pid = os.posix_spawn("/usr/bin/dash", ["dash", "-c",
            "i=0; while [ $i -lt %d ]; do i=$((i+1)); done" % n], os.environ)
        os.waitpid(pid, 0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000 / runs
lo, hi = 2000, 20000
a, b = cpu_ms(lo), cpu_ms(hi)
per = max((b - a) / (hi - lo), 1e-6)
n = max(int(lo + (target - a) / per), 1)
print(n, "%.1f" % cpu_ms(n))
PY
  ) || die "calibrating the cpu command failed"
  read -r iterations measured <<<"$calibration"
  cpu_cmd=(/usr/bin/dash -c "i=0; while [ \$i -lt $iterations ]; do i=\$((i+1)); done")
  say "cpu command: dash busy loop of $iterations iterations, ${measured} ms of CPU measured" \
    "(target $cpu_ms)"

  section "cpu: closed-loop sweep of static limits (concurrency 2 x limit, ${closed_s}s each)"
  best_closed=0
  for limit in 1 2 3 4 6 8 16; do
    start_server "cpu-closed-$limit" $(static_flags "$limit")
    tput=$(closed_run "cpu-closed-$limit" $((2 * limit)) "$closed_s" -- "${cpu_cmd[@]}")
    stop_server
    json=$out/cpu-closed-$limit.json
    row cpu "closed, static $limit" "- $(printf '%.1f %.3f %.3f %d' "$tput" \
      "$(field p50_ms "$json")" "$(field p99_ms "$json")" "$(field errors "$json")")" "$limit"
    if at_least "$tput" "$best_closed"; then best_closed=$tput; fi
  done
  cpu_rate=$(calc "0.9 * $best_closed")
  say "cpu: best closed-loop throughput $best_closed/s; open loop at 90%: $cpu_rate/s"
fi

# run_workload NAME SECONDS: the workload's load(s) against $port; its request logs are
# $out/NAME*.requests.csv.
run_workload() {
  local name=$1 secs=$2
  case ${name%%-*} in
    cpu) cpu_run "$name" "$secs" ;;
    sleep) sleep_run "$name" "$secs" ;;
    mixed)
      open_load "$name.cpu" "$(calc "$cpu_rate / 2")" "$secs" 0 -- "${cpu_cmd[@]}"
      local cpu_load=$load
      open_load "$name.sleep" 75 "$secs" 0 -- "${sleep_cmd[@]}"
      finish_load "$name.cpu" "$cpu_load"
      finish_load "$name.sleep"
      ;;
  esac
}
# The request logs and the first timeline of run NAME (a mixed run has one per half; the
# limit column is the server's, the same in both).
logs_of() {
  local f
  for f in "$out/$1.requests.csv" "$out/$1".*.requests.csv; do
    if [[ -f $f ]]; then echo "$f"; fi
  done
}
timeline_of() { logs_of "$1" | head -1 | sed 's/requests\.csv$/timeline.csv/'; }

# sweep WORKLOAD LIMITS TUNER_START TUNER_MAX TUNER_SECONDS TUNER_WARMUP: a run for each
# static limit, with the tuner's in the middle of the list; writes $out/WORKLOAD.static (one
# "limit offered tput p50 p99 errors" line a limit), $out/WORKLOAD.tuner ("offered tput p50
# p99 errors limit" after the warm-up) and $out/WORKLOAD.ramp (the same, before it), and
# sets $best to the best static limit's line.
sweep() {
  local w=$1 limits=($2) start=$3 max=$4 tsecs=$5 twarm=$6
  local half=$((${#limits[@]} / 2)) s
  : >"$out/$w.static"
  for limit in "${limits[@]:0:half}" tuner "${limits[@]:half}"; do
    if [[ $limit == tuner ]]; then
      start_server "$w-tuner" $(tuner_flags "$start" "$max")
      run_workload "$w-tuner" "$tsecs"
      stop_server
      local tl
      tl=$(timeline_of "$w-tuner")
      s=$(stats "$twarm" "$tsecs" $(logs_of "$w-tuner"))
      local lim
      lim=$(limit_column "$tl" "$twarm" "$tsecs" | median)
      echo "$s $lim" >"$out/$w.tuner"
      row "$w" "$(tuner_label "$start"), ${twarm}s+" "$s" "$lim" "decisions=$(decisions "$w-tuner")"
      s=$(stats 0 "$twarm" $(logs_of "$w-tuner"))
      row "$w" "  ramp 0-${twarm}s" "$s" "$(limit_column "$tl" 0 "$twarm" | median)"
      echo "$s" >"$out/$w.ramp"
    else
      start_server "$w-static-$limit" $(static_flags "$limit")
      run_workload "$w-static-$limit" "$static_s"
      stop_server
      s=$(stats "$warm_s" "$static_s" $(logs_of "$w-static-$limit"))
      echo "$limit $s" >>"$out/$w.static"
      row "$w" "static $limit" "$s" "$limit"
    fi
  done
  best=$(best_static "$out/$w.static")
  say "$w: best static limit ${best%% *} (offered, tput, p50, p99, errors: ${best#* })"
}
# fields of a "offered tput p50 p99 errors" line
tput_of() { awk '{ print $2 }' <<<"$1"; }
p99_of() { awk '{ print $4 }' <<<"$1"; }

if [[ $workloads == *" cpu "* ]]; then
  section "cpu: open loop at $cpu_rate/s, static limits and the tuner"
  sweep cpu "1 2 3 4 6 8 16" 32 64 "$tuner_s" "$tuner_warm_s"
  b=${best#* } t=$(cat "$out/cpu.tuner")
  verdict "cpu: tuner throughput $(tput_of "$t") >= 0.95 x best static $(tput_of "$b")" \
    at_least "$(tput_of "$t")" "$(calc "0.95 * $(tput_of "$b")")"
  verdict "cpu: tuner p99 $(p99_of "$t") ms <= 1.6 x best static $(p99_of "$b") ms" \
    at_least "$(calc "1.6 * $(p99_of "$b")")" "$(p99_of "$t")"
  cpu_best_tput=$(tput_of "$b")
fi

if [[ $workloads == *" sleep "* ]]; then
  section "sleep: sleep 0.2 at 150/s, static limits and the tuner (${sleep_s}s from 8)"
  sweep sleep "8 16 32 48 64" 8 64 "$sleep_s" "$sleep_warm_s"
  b=${best#* } t=$(cat "$out/sleep.tuner")
  reach=$(first_reach "$out/sleep-tuner.timeline.csv" 30)
  shed=$(awk -F, 'NR > 1 { e += $4 } END { print e + 0 }' "$out/sleep-tuner.timeline.csv")
  say "sleep: the limit first reached 30 at $(in_seconds "$reach");" \
    "errors over the whole run: $shed"
  verdict "sleep: limit reaches 30 within 5 s (at $(in_seconds "$reach"))" \
    within "$reach" 5
  verdict "sleep: nothing shed ($shed errors)" test "$shed" -eq 0
  verdict "sleep: tuner throughput from ${sleep_warm_s}s $(tput_of "$t") >= 0.97 x offered 150" \
    at_least "$(tput_of "$t")" "$(calc "0.97 * 150")"
  verdict "sleep: tuner p99 $(p99_of "$t") ms <= 1.2 x best static $(p99_of "$b") ms" \
    at_least "$(calc "1.2 * $(p99_of "$b")")" "$(p99_of "$t")"
  sleep_best_tput=$(tput_of "$b")
fi

if [[ $workloads == *" mixed "* ]]; then
  section "mixed: the cpu command at $(calc "$cpu_rate / 2")/s and sleep 0.2 at 75/s at once"
  sweep mixed "4 8 16 32 48" 8 64 "$tuner_s" "$tuner_warm_s"
  for part in cpu sleep; do
    say "mixed: the tuner's $part half, ${tuner_warm_s}s+: $(stats "$tuner_warm_s" "$tuner_s" \
      "$out/mixed-tuner.$part.requests.csv") (offered tput p50 p99 errors)"
  done
fi

# plot_shift: shift.png of both shifts, a column each: limit, throughput, p99.
plot_shift() {
  if ! command -v gnuplot >/dev/null; then
    say "gnuplot not found: no shift.png (apt-get install gnuplot-nox)"
    return
  fi
  local panels="" dir
  for dir in cpu-sleep sleep-cpu; do
    [[ -f $out/shift-$dir.timeline.csv ]] || continue
    panels+="data = '$out/shift-$dir.timeline.csv'; at = $(cat "$out/shift-$dir.at")
      set xrange [0:$(tail -1 "$out/shift-$dir.timeline.csv" | cut -d, -f1)]
      set title '$dir: limit'; set arrow 1 from at, graph 0 to at, graph 1 nohead dt 2
      unset logscale y; plot data using 1:7 with steps lw 2 notitle
      set title '$dir: throughput (completed/s) and offered (sent/s)'
      plot data using 1:8 with lines lw 2 notitle, data using 1:2 with lines dt 3 notitle
      set title '$dir: p99 (ms, of requests scheduled that second)'; set logscale y
      plot data using 1:6 with lines lw 2 notitle
      "
  done
  if ! gnuplot 2>"$out/gnuplot.err" <<GP; then
set terminal pngcairo size 1400,1000
set output '$out/shift.png'
set datafile separator comma
set key off
set xlabel 't (s)'
set multiplot layout 3,2 columnsfirst
$panels
unset multiplot
GP
    say "gnuplot failed, no shift.png: $(tail -3 "$out/gnuplot.err")"
    return
  fi
  say "shift plot: $out/shift.png"
}

if [[ $workloads == *" shift "* ]]; then
  section "shift: ${shift_s}s of each workload against one $(tuner_label 8) server"
  for dir in cpu-sleep sleep-cpu; do
    first=${dir%-*} second=${dir#*-}
    start_server "shift-$dir" $(tuner_flags 8 64)
    # The second load starts as the first one's schedule ends, while its late replies are
    # still due: the server sees the workload change, not a pause.
    "${first}_load" "shift-$dir.1" "$shift_s"
    first_load=$load
    sleep "$shift_s"
    at=$shift_s
    "${second}_load" "shift-$dir.2" "$shift_s" "$at"
    finish_load "shift-$dir.1" "$first_load"
    finish_load "shift-$dir.2"
    stop_server
    echo "$at" >"$out/shift-$dir.at"
    merge_timelines "$out/shift-$dir.1.timeline.csv" "$out/shift-$dir.2.timeline.csv" \
      >"$out/shift-$dir.timeline.csv"
    # The bar: 95% of the best static limit's throughput for the new workload, measured in
    # this run's sweep, else of its offered rate.
    bar=${sleep_best_tput:-150}
    if [[ $second == cpu ]]; then bar=${cpu_best_tput:-$cpu_rate}; fi
    bar=$(calc "0.95 * $bar")
    back=$(recovery "$out/shift-$dir.2.timeline.csv" "$at" "$bar")
    row shift "$dir, $second side" \
      "$(stats "$at" "$((at + shift_s))" "$out/shift-$dir.2.requests.csv")" \
      "$(limit_column "$out/shift-$dir.timeline.csv" "$at" "$((at + shift_s))" | median)" \
      "back >= $bar/s after $(in_seconds "$back"); decisions=$(decisions "shift-$dir")"
    if [[ $dir == cpu-sleep ]]; then target=15; else target=10; fi
    text="shift $dir: throughput back >= 95% of best within ${target}s"
    verdict "$text (after $(in_seconds "$back"))" within "$back" "$target"
  done
  plot_shift
fi

if [[ $workloads == *" noise "* ]]; then
  hog_from=$((noise_s / 4)) hog_to=$((noise_s * 65 / 100))
  section "noise: the cpu command at $cpu_rate/s for ${noise_s}s, a one-core hog from" \
    "${hog_from}s to ${hog_to}s"
  start_server noise $(tuner_flags 8 64)
  noise_start=$(utc_seconds)
  open_load noise "$cpu_rate" "$noise_s" 0 -- "${cpu_cmd[@]}"
  noise_load=$load
  sleep "$hog_from"
  sh -c 'while :; do :; done' &
  hog_pid=$!
  sleep "$((hog_to - hog_from))"
  kill "$hog_pid"
  wait "$hog_pid" 2>/dev/null || true
  hog_pid=""
  finish_load noise "$noise_load"
  stop_server
  tl=$out/noise.timeline.csv
  settle=$(seconds BENCH_NOISE_SETTLE 10)
  # Reversals a minute in each steady window: the tuner's logged moves, or without the
  # tuner the limit's 1 s samples; the lowest limit over the whole run likewise.
  windows=("$settle $hog_from" "$((hog_from + settle)) $hog_to" "$((hog_to + settle)) $noise_s")
  changes=()
  for window in "${windows[@]}"; do
    if [[ $tuner_mode == on ]]; then
      read -r c _ <<<"$(tuner_moves "$out/noise.server.log" "$noise_start" $window)"
    else
      c=$(direction_changes "$tl" $window)
    fi
    changes+=("$c")
  done
  before=${changes[0]} during=${changes[1]} after=${changes[2]}
  low=$(limit_column "$tl" 0 "$noise_s" | sort -g | head -1)
  if [[ $tuner_mode == on ]]; then
    read -r _ logged_low <<<"$(tuner_moves "$out/noise.server.log" "$noise_start" 0 "$noise_s")"
    if [[ $logged_low != - ]] && ((logged_low < low)); then low=$logged_low; fi
  fi
  bar=$(calc "0.95 * ${cpu_best_tput:-$cpu_rate}")
  back=$(recovery "$tl" "$hog_to" "$bar")
  row noise "before the hog" "$(stats "$settle" "$hog_from" "$out/noise.requests.csv")" \
    "$(limit_column "$tl" "$settle" "$hog_from" | median)" "changes/min $before"
  row noise "with the hog" "$(stats "$((hog_from + settle))" "$hog_to" "$out/noise.requests.csv")" \
    "$(limit_column "$tl" "$((hog_from + settle))" "$hog_to" | median)" "changes/min $during"
  row noise "after the hog" "$(stats "$((hog_to + settle))" "$noise_s" "$out/noise.requests.csv")" \
    "$(limit_column "$tl" "$((hog_to + settle))" "$noise_s" | median)" \
    "changes/min $after; back >= $bar/s $(in_seconds "$back") after the hog"
  verdict "noise: at most 4 direction changes a minute at steady state ($before, $during, $after)" \
    awk -v a="$before" -v b="$during" -v c="$after" 'BEGIN { exit !(a <= 4 && b <= 4 && c <= 4) }'
  verdict "noise: never below the floor $cores (lowest $low)" test "${low:-0}" -ge "$cores"
  text="noise: >= 95% of best throughput within 15 s after the hog stops"
  verdict "$text (after $(in_seconds "$back"))" within "$back" 15
fi
say "done: $out"
