#!/usr/bin/python3
"""The simplest server a user could write instead of execd: a baseline, not a competitor.

Python grpcio's thread-pool server, each Execute a `subprocess.run`. Implements Ping and
unary Execute of execd.v1.Executor (argv, env, inherit_env, cwd, stdin, limits.timeout;
termination, exit_code, signal, stdout, stderr and timings.total in the response, as execd
fills them for a plain command); every other RPC is UNIMPLEMENTED.

usage: server.py --stubs DIR [--port 50052] [--workers 16]
  DIR holds the stubs made by loadtest/py_baseline/gen_stubs.sh DIR. With --port 0 the
  server picks a free port; the line it prints on stderr when ready names it.
"""
import argparse
import os
import signal
import subprocess
import sys
import time
from concurrent import futures

import grpc


def make_servicer(pb2, pb2_grpc):
    class Executor(pb2_grpc.ExecutorServicer):
        def Ping(self, request, context):
            return pb2.PingResponse(payload=request.payload)

        def Execute(self, request, context):
            start = time.monotonic_ns()
            if not request.argv:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "argv: must not be empty")
            env = {k: os.environ[k] for k in request.inherit_env if k in os.environ}
            env.update(request.env)
            timeout = request.limits.timeout.ToNanoseconds() / 1e9 or None
            response = pb2.ExecuteResponse()
            try:
                done = subprocess.run(list(request.argv), input=request.stdin, capture_output=True,
                                      env=env, cwd=request.cwd or None, timeout=timeout)
            except FileNotFoundError as e:
                context.abort(grpc.StatusCode.NOT_FOUND, str(e))
            except PermissionError as e:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
            except subprocess.TimeoutExpired as e:  # run() has killed the child with SIGKILL
                response.termination = pb2.TIMED_OUT
                response.signal = signal.SIGKILL
                response.stdout, response.stderr = e.stdout or b"", e.stderr or b""
            else:
                if done.returncode >= 0:
                    response.termination = pb2.EXITED
                    response.exit_code = done.returncode
                else:
                    response.termination = pb2.SIGNALED
                    response.signal = -done.returncode
                response.stdout, response.stderr = done.stdout, done.stderr
            response.timings.total.FromNanoseconds(time.monotonic_ns() - start)
            return response

    return Executor()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stubs", required=True, help="directory made by gen_stubs.sh")
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=16, help="thread pool size")
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    from execd.v1 import execd_pb2, execd_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    execd_pb2_grpc.add_ExecutorServicer_to_server(make_servicer(execd_pb2, execd_pb2_grpc), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")  # --port 0: any free port
    server.start()
    print(f"py_baseline: listening on {args.host}:{port}, {args.workers} workers",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(grace=1))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
