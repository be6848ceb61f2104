#!/usr/bin/python3
"""Self-test of prom_harness: a real Prometheus (Debian's package) scraping itself as job
"execd". Checks the target comes up, `up` and `increase(...)` queries, a recording rule from
rule_files, query errors, bounded waits that run out, start failures, and promtool's lint of
Prometheus's own /metrics (which passes) and of a scrape with known problems (which does not).

usage: /usr/bin/python3 tests/metrics/prom_harness_test.py   (ctest: prom_harness)
Fails, rather than skips, when prometheus/promtool are missing: deploy/install-deps.sh installs
them, and CI runs it.
"""
import contextlib
import io
import math
import os
import socket
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prom_harness as ph  # noqa: E402

RULES = """groups:
  - name: harness
    rules:
      - record: harness:up:sum
        expr: sum(up{job="execd"})
"""


class SelfScrapeTest(unittest.TestCase):
    prom = None  # the Prometheus of main(), scraping itself

    def setUp(self):
        self.prom.wait_for_target_up(timeout=20)

    def test_1_target_is_prometheus_itself(self):
        [target] = self.prom.wait_for_target_up(timeout=20)
        self.assertEqual(target["scrapeUrl"], self.prom.url + "/metrics")
        self.assertEqual(target["labels"]["job"], "execd")

    def test_2_up_query(self):
        result = self.prom.query('up{job="execd"} == 1')
        self.assertEqual(len(result), 1, result)
        self.assertEqual(result[0]["metric"]["instance"], f"127.0.0.1:{self.prom.port}")
        self.assertEqual(result[0]["value"][1], "1")
        self.assertEqual(self.prom.query_value('up{job="execd"}'), 1.0)

    def test_3_increase_after_a_later_scrape(self):
        t = time.time()
        self.prom.wait_for_scrape_after(t, timeout=10)
        now = time.time()
        # Two samples at least (the scrape that made the target up, and one after t).
        result = self.prom.query("increase(prometheus_http_requests_total[30s])", time=now)
        self.assertTrue(result, "no series for increase(prometheus_http_requests_total[30s])")
        for row in result:
            self.assertTrue(ph.is_number(row["value"][1]), row)
        total = self.prom.query_value("sum(increase(prometheus_http_requests_total[30s]))",
                                      time=now)
        self.assertTrue(math.isfinite(total) and total >= 0, total)
        # The same through query_range: a value at every step where both samples are in range.
        series = self.prom.query_range('up{job="execd"}', start=t - 2, end=now, step=0.5)
        self.assertEqual(len(series), 1, series)
        self.assertTrue(all(v == "1" for _, v in series[0]["values"]), series)

    def test_4_recording_rule_from_rule_files(self):
        value = self.prom.wait_until(
            "the recording rule harness:up:sum to be 1",
            lambda: (self.prom.query("harness:up:sum") or None), timeout=10)
        self.assertEqual(value[0]["value"][1], "1")

    def test_5_query_error_names_prometheus_error(self):
        with self.assertRaises(ph.HarnessError) as cm:
            self.prom.query("sum(")
        self.assertIn("parse error", str(cm.exception))

    def test_6_waits_are_bounded_and_say_what_they_waited_for(self):
        start = time.monotonic()
        with self.assertRaises(ph.HarnessError) as cm:
            self.prom.wait_for_scrape_after(time.time() + 3600, timeout=0.3)
        self.assertLess(time.monotonic() - start, 5)
        msg = str(cm.exception)
        self.assertIn("timed out after 0.3 s waiting for a successful scrape", msg)
        self.assertIn("lastScrape=", msg)

    def test_7_promtool_passes_prometheus_own_metrics(self):
        text = ph.scrape(self.prom.url + "/metrics", timeout=10)
        self.assertIn("prometheus_http_requests_total", text)
        ok, output = ph.promtool_check_metrics(text)
        print(f"\n  promtool check metrics on prometheus's own /metrics: ok={ok}, "
              f"output={output!r}", file=sys.stderr)
        self.assertTrue(ok, f"promtool check metrics reported: {output}")


class HarnessWithoutServerTest(unittest.TestCase):
    def test_promtool_reports_problems(self):
        ok, output = ph.promtool_check_metrics("# TYPE foo counter\nfoo 1\n")
        self.assertFalse(ok)
        self.assertIn('foo counter metrics should have "_total" suffix', output)
        self.assertIn("no help text", output)

    def test_parse_rfc3339(self):
        self.assertEqual(ph.parse_rfc3339("1970-01-01T00:00:01.5Z"), 1.5)
        self.assertEqual(ph.parse_rfc3339("1970-01-01T01:00:02.250000000+01:00"), 2.25)
        self.assertEqual(ph.parse_rfc3339("0001-01-01T00:00:00Z"), float("-inf"))

    def test_start_failure_prints_log_and_cleans_up(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as bad:
            bad.write(RULES.replace('sum(up{job="execd"})', '"sum("'))
            bad.flush()
            prom = ph.Prometheus(["127.0.0.1:1"], rule_files=[bad.name])
            err = io.StringIO()
            with contextlib.redirect_stderr(err), self.assertRaises(ph.HarnessError) as cm:
                with prom:
                    self.fail("prometheus started with a broken rule file")
        self.assertIn("exited with status", str(cm.exception))
        self.assertIn("parse error", err.getvalue())  # the log was printed
        self.assertIsNotNone(prom.proc.poll())  # not running
        self.assertFalse(os.path.exists(os.path.dirname(prom.log_path)))  # temp dir removed

    def test_port_taken_before_prometheus_binds_it_picks_another(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            ports = [taken.getsockname()[1]]
            real_free_port = ph.free_port
            ph.free_port = lambda: ports.pop() if ports else real_free_port()
            try:
                with ph.Prometheus(["127.0.0.1:1"]) as prom:
                    self.assertNotEqual(prom.port, taken.getsockname()[1])
                    self.assertIn("address already in use", prom.log_tail().lower())
            finally:
                ph.free_port = real_free_port


def main():
    start = time.monotonic()
    problem = ph.missing_tools()
    if problem:
        print(f"FAIL: {problem}")
        return 1
    with tempfile.NamedTemporaryFile("w", suffix=".rules.yml") as rules:
        rules.write(RULES)
        rules.flush()
        with ph.Prometheus(lambda port: [f"127.0.0.1:{port}"], rule_files=[rules.name]) as prom:
            print(f"prometheus ready at {prom.url} after {time.monotonic() - start:.2f} s",
                  flush=True)
            SelfScrapeTest.prom = prom
            loader = unittest.TestLoader()
            suite = unittest.TestSuite([loader.loadTestsFromTestCase(SelfScrapeTest),
                                        loader.loadTestsFromTestCase(HarnessWithoutServerTest)])
            result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
            if not result.wasSuccessful():
                prom.print_log()
    print(f"prom_harness_test: {time.monotonic() - start:.2f} s in all")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
