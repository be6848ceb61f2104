#!/usr/bin/python3
"""execd's metrics as a real Prometheus (Debian's package) sees them.

A fresh execd is scraped every second. After a known load (execd-loadtest: N successful
Execute calls, then M that fail with NOT_FOUND):
  - increase(execd_requests_total{rpc="Execute",code="OK"}[...]) over the load equals the load
    generator's count of successes within 5%, and the NOT_FOUND series holds M;
  - histogram_quantile(0.5, ...) of the total stage is within 25% of the median total_ms of
    the same calls' request log lines;
  - promtool check metrics finds nothing wrong with a scrape;
  - every family of the README's Metrics table is in the scrape.

usage: /usr/bin/python3 tests/metrics/prometheus_test.py EXECD EXECD_LOADTEST README
(ctest: prometheus_metrics). Fails, rather than skips, when prometheus/promtool are missing:
deploy/install-deps.sh installs them, and CI runs it.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prom_harness as ph  # noqa: E402

SUCCESSES = 400
FAILURES = 20


def fail(message, server_log=None):
    print(f"FAIL: {message}", file=sys.stderr)
    if server_log is not None:
        with open(server_log) as f:
            tail = f.read()[-4000:]
        print(f"--- execd's log (tail) ---\n{tail}", file=sys.stderr)
    sys.exit(1)


class Execd:
    """execd on free ports, its log (request lines included) in a file."""

    def __init__(self, binary, workdir):
        self.log_path = os.path.join(workdir, "execd.log")
        self.log = open(self.log_path, "w")
        # A pool, so that the pool families have series.
        pools = os.path.join(workdir, "pools.textproto")
        with open(pools, "w") as f:
            f.write('pool { name: "cat" kind: PREWARMED argv: "/bin/cat" min_idle: 1 '
                    'max_size: 1 }\n')
        # The tuner on, so that its families have series too.
        self.proc = subprocess.Popen(
            [binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
             f"--pools_config={pools}", "--tuner"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(self.log_path) as f:
                m = re.search(r"event=listening .* port=(\d+) metrics_port=(\d+)", f.read())
            if m:
                self.port, self.metrics_port = int(m.group(1)), int(m.group(2))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        fail("execd did not log event=listening within 20 s", self.log_path)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def load(loadtest, port, requests, argv):
    """Runs execd-loadtest; returns its JSON summary."""
    out = subprocess.run(
        [loadtest, f"--target=127.0.0.1:{port}", f"--requests={requests}", "--concurrency=4",
         "--json", "--"] + argv, capture_output=True, text=True, timeout=120)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        fail(f"execd-loadtest printed no JSON (exit {out.returncode}): {out.stdout}{out.stderr}")


def readme_families(readme):
    """The metric names the README's Metrics section lists (`execd_...` or `process_...` in
    its table's first column)."""
    names = []
    with open(readme) as f:
        text = f.read()
    section = text.split("\n## Metrics", 1)
    if len(section) < 2:
        fail("README.md has no '## Metrics' section")
    for line in section[1].split("\n## ", 1)[0].splitlines():
        m = re.match(r"^\| `((?:execd|process)_[a-z_]+)", line)
        if m:
            names.append(m.group(1))
    return names


def main():
    if len(sys.argv) != 4:
        fail(f"usage: {sys.argv[0]} EXECD EXECD_LOADTEST README")
    execd_bin, loadtest_bin, readme = sys.argv[1:]
    missing = ph.missing_tools()
    if missing:
        fail(missing)
    with tempfile.TemporaryDirectory(prefix="prometheus_test.") as workdir:
        execd = Execd(execd_bin, workdir)
        try:
            run(execd, loadtest_bin, readme)
        finally:
            execd.stop()
    print("PASS")


def run(execd, loadtest_bin, readme):
    metrics_url = f"http://127.0.0.1:{execd.metrics_port}/metrics"
    with ph.Prometheus([f"127.0.0.1:{execd.metrics_port}"]) as prom:
        prom.wait_for_target_up(timeout=20)
        # A sample from before the load: the OK series exists at 0 from start-up.
        prom.wait_for_scrape_after(time.time(), timeout=10)

        ok = load(loadtest_bin, execd.port, SUCCESSES, ["/bin/true"])
        if ok["succeeded"] != SUCCESSES or ok["errors"] != 0:
            fail(f"the load did not all succeed: {ok}", execd.log_path)
        bad = load(loadtest_bin, execd.port, FAILURES, ["/no/such/program"])
        if bad["errors"] != FAILURES:
            fail(f"the failing load did not all fail: {bad}", execd.log_path)

        [target] = prom.wait_for_scrape_after(time.time(), timeout=10)
        # The query is evaluated at the instant of that scrape's sample: the window then ends
        # on a sample and starts before the first, which is 0, so Prometheus extrapolates
        # nothing and increase() is the counter's growth.
        at = ph.parse_rfc3339(target["lastScrape"])
        window = "5m"
        increase = prom.query_value(
            f'increase(execd_requests_total{{rpc="Execute",code="OK"}}[{window}])', at)
        print(f"increase(execd_requests_total{{Execute,OK}}) = {increase:.1f}, "
              f"load generator: {ok['succeeded']}")
        if abs(increase - ok["succeeded"]) > 0.05 * ok["succeeded"]:
            fail(f"increase {increase} is not within 5% of {ok['succeeded']}")
        not_found = prom.query_value(
            'execd_requests_total{rpc="Execute",code="NOT_FOUND"}', at)
        if not_found != FAILURES:
            fail(f"execd_requests_total{{NOT_FOUND}} is {not_found}, want {FAILURES}")

        p50 = prom.query_value(
            'histogram_quantile(0.5, sum by (le) (increase('
            f'execd_request_duration_seconds_bucket{{rpc="Execute",stage="total"}}[{window}])))',
            at) * 1000
        with open(execd.log_path) as f:
            totals = [float(m.group(1)) for m in
                      re.finditer(r" rpc=Execute .* total_ms=([0-9.]+)", f.read())]
        if len(totals) != SUCCESSES + FAILURES:
            fail(f"{len(totals)} Execute lines in the request log, want "
                 f"{SUCCESSES + FAILURES}", execd.log_path)
        median = statistics.median(totals)
        print(f"histogram_quantile(0.5) = {p50:.3f} ms, request log median = {median:.3f} ms")
        if abs(p50 - median) > 0.25 * median:
            fail(f"the histogram's median {p50:.3f} ms is not within 25% of the log's "
                 f"{median:.3f} ms")

        text = ph.scrape(metrics_url)
        clean, said = ph.promtool_check_metrics(text)
        if not clean or said:
            fail(f"promtool check metrics: {said}")
        print("promtool check metrics: nothing to report")

        listed = readme_families(readme)
        scraped = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
        if len(listed) < 20:
            fail(f"the README's Metrics section lists only {len(listed)} families")
        absent = [n for n in listed if n not in scraped]
        if absent:
            fail(f"families the README lists but a scrape lacks: {absent}")
        unlisted = sorted(n for n in scraped
                          if n.startswith(("execd_", "process_")) and n not in listed)
        if unlisted:
            fail(f"families the scrape has but the README does not list: {unlisted}")
        print(f"the scrape has all {len(listed)} families the README lists, and no others")


if __name__ == "__main__":
    main()
