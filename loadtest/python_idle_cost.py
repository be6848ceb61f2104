#!/usr/bin/env python3
"""What a short burst of interpreter work costs after the process sat idle (BENCHMARKS.md,
worker pools): the CPU time of compile("print(1)") run back to back, and after sleeps of
0.1 ms to 0.3 s, as a pre-warmed process waits for its request. Prints, per pause, the
p50, min and max in microseconds over 20 tries.

usage: python3 loadtest/python_idle_cost.py
"""
import time


def run(pause):
    r = []
    for _ in range(20):
        if pause:
            time.sleep(pause)
        a = time.thread_time_ns()
        compile("print(1)", "<stdin>", "exec")
        b = time.thread_time_ns()
        r.append((b - a) // 1000)
    r.sort()
    return r[len(r) // 2], r[0], r[-1]


print("pause_s p50_us min_us max_us")
for p in (0, 0.0001, 0.001, 0.01, 0.1, 0.3):
    print(p, *run(p))
