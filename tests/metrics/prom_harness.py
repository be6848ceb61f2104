"""A real Prometheus (Debian 12's `prometheus` package) for execd's metrics tests.

Run with /usr/bin/python3; standard library only. Every wait is bounded and, when it runs out,
raises HarnessError naming what it waited for. Prometheus's log goes to a file, printed to
stderr when the `with` is left by an exception (a test runner that catches failures itself
calls print_log()).

    with Prometheus(["127.0.0.1:9464"]) as prom:    # scrapes every 1 s, job "execd"
        prom.wait_for_target_up(timeout=15)
        ...load execd...
        t = time.time()
        prom.wait_for_scrape_after(t, timeout=15)   # a scrape that began after the load ended
        rows = prom.query('sum(rate(some_metric_total[30s]))')

    ok, output = promtool_check_metrics(scrape("http://127.0.0.1:9464/metrics"))

Prometheus is started on a free loopback port with its own temporary config and TSDB, and is
stopped (SIGTERM, then SIGKILL) and its directory removed on leaving the `with`.

Timing: Prometheus is ready in well under a second, but its service discovery hands targets to
the scraper only after a fixed 5 s throttle (no flag changes it in 2.42), so the first scrape,
and so wait_for_target_up, comes about 5-6 s after start. After that, scrapes are 1 s apart.
"""
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
INSTALL_HINT = "deploy/install-deps.sh installs Debian's prometheus package, which has both"

# Everything here is on loopback: never go through an http_proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HarnessError(RuntimeError):
    """A wait ran out, Prometheus failed, or a query was rejected."""


def missing_tools():
    """None when prometheus and promtool are on PATH, else a message saying what to run."""
    missing = [t for t in (PROMETHEUS, PROMTOOL) if shutil.which(t) is None]
    if not missing:
        return None
    return f"{' and '.join(missing)} not found on PATH; {INSTALL_HINT}"


def free_port():
    """A loopback TCP port that was free a moment ago (the caller must cope with losing it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url, timeout=10.0):
    """GET url (a /metrics endpoint) and return its body as text; raises on HTTP errors."""
    with _opener.open(url, timeout=timeout) as resp:
        return resp.read().decode("utf-8")


def promtool_check_metrics(text, timeout=30.0):
    """Pipes a scrape into `promtool check metrics`. Returns (ok, output): ok is True when
    promtool exited 0 (no lint problems), output is what it printed (stdout then stderr)."""
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


_RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_rfc3339(s):
    """Prometheus's API timestamps (RFC 3339, nanoseconds, any offset) as Unix seconds."""
    m = _RFC3339.match(s)
    if not m:
        raise HarnessError(f"unexpected timestamp from Prometheus: {s!r}")
    year, mon, day, hh, mm, ss = (int(g) for g in m.groups()[:6])
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    tz = m.group(8)
    offset = 0 if tz == "Z" else (1 if tz[0] == "+" else -1) * (
        int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    if year < 1970:  # Go's zero time: never scraped yet
        return float("-inf")
    base = datetime(year, mon, day, hh, mm, ss, tzinfo=timezone.utc).timestamp()
    return base - offset + frac


def _yaml_str(s):
    return json.dumps(str(s))  # a JSON string is a valid YAML scalar


class Prometheus:
    """A Prometheus process scraping `targets` as job "execd" every 1 s (timeout 1 s).

    targets: list of "host:port", or a callable taking Prometheus's own port and returning that
      list (so it can scrape itself: `lambda port: [f"127.0.0.1:{port}"]`).
    rule_files: paths of rule files to load (evaluated every 1 s).
    start_timeout: bound on waiting for /-/ready.
    Attributes once started: port, url ("http://127.0.0.1:PORT"), dir, log_path, proc.
    """

    JOB = "execd"

    def __init__(self, targets, rule_files=(), start_timeout=30.0, metrics_path="/metrics"):
        self._targets = targets
        self.rule_files = [os.path.abspath(p) for p in rule_files]
        self.start_timeout = start_timeout
        self.metrics_path = metrics_path
        self.targets = []
        self.port = None
        self.url = None
        self.dir = None
        self.log_path = None
        self.proc = None
        self._log = None

    # ---- lifecycle ----

    def __enter__(self):
        problem = missing_tools()
        if problem:
            raise HarnessError(problem)
        self.dir = tempfile.mkdtemp(prefix="prom_harness.")
        self.log_path = os.path.join(self.dir, "prometheus.log")
        try:
            # The port is free when picked, but something may take it before Prometheus binds
            # it: then Prometheus exits at once, and we pick another, a bounded number of times.
            for attempt in range(3):
                if self._start(free_port()):
                    return self
                if "address already in use" not in self.log_tail().lower() or attempt == 2:
                    raise HarnessError(f"prometheus exited with status {self.proc.returncode} "
                                       f"before it was ready (its log follows)")
                self._reap()
        except BaseException:
            self._cleanup(print_log=True)
            raise
        raise AssertionError("unreachable")

    def __exit__(self, exc_type, exc, tb):
        self._cleanup(print_log=exc_type is not None)
        return False

    def _start(self, port):
        """Starts Prometheus on port; True once ready, False if it exited first."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        targets = self._targets(port) if callable(self._targets) else self._targets
        self.targets = [str(t) for t in targets]
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write(self._config_text())
        data = os.path.join(self.dir, "data")
        shutil.rmtree(data, ignore_errors=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                return "exited"
            try:
                with _opener.open(self.url + "/-/ready", timeout=1.0) as resp:
                    return resp.status == 200 or None
            except (urllib.error.URLError, OSError):
                return None  # not listening yet, or 503 while starting

        return self.wait_until(f"prometheus to answer {self.url}/-/ready", ready,
                               self.start_timeout, check_alive=False) is True

    def _reap(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _cleanup(self, print_log):
        try:
            self._reap()
        finally:
            if print_log:
                self.print_log()
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def _config_text(self):
        lines = [
            "global:",
            "  scrape_interval: 1s",
            "  scrape_timeout: 1s",
            "  evaluation_interval: 1s",
        ]
        if self.rule_files:
            lines.append("rule_files:")
            lines += [f"  - {_yaml_str(p)}" for p in self.rule_files]
        lines += [
            "scrape_configs:",
            f"  - job_name: {_yaml_str(self.JOB)}",
            "    scrape_interval: 1s",
            "    scrape_timeout: 1s",
            f"    metrics_path: {_yaml_str(self.metrics_path)}",
            "    static_configs:",
            "      - targets: [" + ", ".join(_yaml_str(t) for t in self.targets) + "]",
        ]
        return "\n".join(lines) + "\n"

    # ---- logs ----

    def log_tail(self, lines=40):
        """The last `lines` lines of Prometheus's log ("" if there is none)."""
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def print_log(self, file=None):
        """Prints Prometheus's whole log (for a failing test), to stderr by default."""
        file = file or sys.stderr
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            print(f"---- prometheus log ({self.log_path}) ----\n{text}---- end of log ----",
                  file=file, flush=True)

    # ---- waiting ----

    def wait_until(self, what, poll, timeout, interval=0.05, check_alive=True):
        """Calls poll() every `interval` s until it returns something other than None (or
        other than a (None, why_not_yet) pair, whose `why` goes into the timeout message), and
        returns that. Raises HarnessError naming `what` once `timeout` s have passed, or at once
        if Prometheus has exited. For tests' own waits, e.g. on a query's value:
            prom.wait_until("x to reach 3", lambda: prom.query_value("x") >= 3 or None, 15)"""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if check_alive and self.proc.poll() is not None:
                raise HarnessError(f"prometheus exited with status {self.proc.returncode} "
                                   f"while waiting for {what}")
            result = poll()
            if isinstance(result, tuple) and len(result) == 2 and result[0] is None:
                last = result[1]  # (None, why-not-yet): remember for the timeout message
                result = None
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                detail = f"; last seen: {last}" if last else ""
                raise HarnessError(f"timed out after {timeout:g} s waiting for {what}{detail}")
            time.sleep(interval)

    def _get_json(self, path, params=None, timeout=10.0):
        """GET an API path; returns its "data", raising HarnessError with Prometheus's error
        text when the request is rejected."""
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with _opener.open(url, timeout=timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raw = e.read().decode("utf-8", "replace")
            try:
                err = json.loads(raw)
                msg = f"{err.get('errorType')}: {err.get('error')}"
            except ValueError:
                msg = raw
            raise HarnessError(f"GET {path} {params or ''} failed (HTTP {e.code}): {msg}") from None
        if body.get("status") != "success":
            raise HarnessError(f"GET {path} {params or ''} failed: "
                               f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def active_targets(self):
        """The "activeTargets" of /api/v1/targets for job "execd"."""
        data = self._get_json("/api/v1/targets", {"state": "active"})
        return [t for t in data["activeTargets"] if t["labels"].get("job") == self.JOB]

    def _targets_where(self, ok, describe):
        """(None, why) until every configured target is active and ok(target); then the list."""
        active = {t["labels"].get("instance"): t for t in self.active_targets()}
        absent = [t for t in self.targets if t not in active]
        if absent:
            return None, f"not yet discovered: {absent}"
        bad = [active[t] for t in self.targets if not ok(active[t])]
        if bad:
            return None, "; ".join(describe(t) for t in bad)
        return [active[t] for t in self.targets]

    def wait_for_target_up(self, timeout=15.0):
        """Waits until every target has health "up" (a scrape of it succeeded); returns the
        targets as /api/v1/targets shows them. The first scrape comes ~5-6 s after start."""
        return self.wait_until(
            f"every target of job {self.JOB} {self.targets} to be up",
            lambda: self._targets_where(
                lambda t: t["health"] == "up",
                lambda t: f"{t['labels']['instance']} health={t['health']} "
                          f"lastError={t.get('lastError')!r}"),
            timeout)

    def wait_for_scrape_after(self, t, timeout=15.0):
        """Waits until every target's lastScrape (when its latest scrape began) is later than
        wall time t (time.time()), and that scrape succeeded; so a query over a window ending
        now sees a sample taken after t. Returns the targets."""
        return self.wait_until(
            f"a successful scrape of every target of job {self.JOB} {self.targets} that began "
            f"after {datetime.fromtimestamp(t, timezone.utc).isoformat()}",
            lambda: self._targets_where(
                lambda x: parse_rfc3339(x["lastScrape"]) > t and x["health"] == "up",
                lambda x: f"{x['labels']['instance']} lastScrape={x['lastScrape']} "
                          f"health={x['health']} lastError={x.get('lastError')!r}"),
            timeout)

    # ---- queries ----

    def query(self, expr, time=None):
        """Instant query; returns data.result (for a vector: [{"metric": {...}, "value":
        [ts, "value"]}, ...]; for a scalar: [ts, "value"]). Raises HarnessError with
        Prometheus's error text if the query is rejected."""
        params = {"query": expr}
        if time is not None:
            params["time"] = f"{time:.3f}"
        return self._get_json("/api/v1/query", params)["result"]

    def query_value(self, expr, time=None):
        """An instant query that must give exactly one sample (one series, or a scalar); its
        value as a float."""
        result = self.query(expr, time)
        if result and not isinstance(result[0], dict):  # scalar or string: [ts, "v"]
            return float(result[1])
        if len(result) != 1:
            raise HarnessError(f"query {expr!r} gave {len(result)} series, wanted 1: {result}")
        return float(result[0]["value"][1])

    def query_range(self, expr, start, end, step=1.0):
        """Range query over [start, end] (Unix seconds) every `step` s; returns data.result
        ([{"metric": {...}, "values": [[ts, "value"], ...]}, ...])."""
        return self._get_json("/api/v1/query_range", {
            "query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        )["result"]


def is_number(s):
    """True for a sample value string that parses as a finite float."""
    try:
        return math.isfinite(float(s))
    except (TypeError, ValueError):
        return False
