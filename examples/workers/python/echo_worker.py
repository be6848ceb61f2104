#!/usr/bin/env python3
"""An example persistent worker for execd, and the one its tests and README use.

Arguments of a request (the caller's argv):
  exit N    answers with exit code N and no output
  crash     exits the process with status 3 without answering (a crashed worker)
  hang      never answers
  garbage   writes 11 bytes 0xff straight to fd 1, then answers: the library has made fd 1
            a copy of stderr, so they land there and the frames are unharmed
  pid       answers with the worker's pid on stdout
  print     calls print("hello from print"): the library puts it in the response stdout
  anything else: exit code 0, stdout = stdin + b"|" + the arguments joined by spaces
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import execd_worker  # pylint: disable=wrong-import-position


def handle(arguments: list[str], stdin: bytes) -> tuple[int, bytes, bytes]:
    command = arguments[0] if arguments else ""
    if command == "exit":
        return int(arguments[1]), b"", b""
    if command == "crash":
        os._exit(3)  # pylint: disable=protected-access
    if command == "hang":
        while True:
            time.sleep(3600)
    if command == "garbage":
        os.write(1, b"\xff" * 11)  # Straight to fd 1, as a child process would write.
        return 0, b"", b""
    if command == "pid":
        return 0, str(os.getpid()).encode(), b""
    if command == "print":
        print("hello from print")
        return 0, b"", b""
    return 0, stdin + b"|" + " ".join(arguments).encode("utf-8", "surrogateescape"), b""


if __name__ == "__main__":
    execd_worker.serve(handle)
