#!/usr/bin/env python3
"""A pre-warmed Python process for a PREWARMED pool.

execd starts it ahead of demand: it imports the modules named on its command line (so a
request does not pay for them), warms up the compiler, says "ready" (with exit_report),
then blocks reading its stdin. A request's stdin is the program; it runs as __main__
(sys.path[0] is the working directory, as for `python3 -`), and the process exits with
the program's exit status once its non-daemon threads ended and its atexit functions
ran, skipping the rest of interpreter finalisation (the program's output is flushed
first), which costs more than the program itself for short scripts.

pool config:
  pool { name: "python" kind: PREWARMED
         argv: "/usr/bin/python3" argv: "examples/workers/python/prewarm.py"
         argv: "json" argv: "re"          # modules to import ahead of time
         exit_report: true                # answered before the process is torn down
         min_idle: 2 max_size: 16 }
"""
import atexit  # Here, not after the program: importing it then costs the answer ~0.1 ms.
import importlib
import os
import sys

# traceback is imported only when a program fails: it pulls in 25 modules, and every one
# adds pages that the process must unmap when it exits, on the request's time.

for module in sys.argv[1:]:
    importlib.import_module(module)

# A pool with exit_report gives this process a descriptor for its program's exit status
# (EXECD_EXIT_FD): reported there, execd answers without waiting for the kernel to tear
# this process down, which takes longer than a short program runs. The program sees
# neither: the variable is removed, and the descriptor moves off 3 (its number as in a
# plain `python3 -`, where the program's first open gets 3) and is not inherited.
# Only this process reports (not a child the program forked that ends through this
# script too), and only to the descriptor it was given: the program may close it, and its
# number may then go to a file of the program's.
def _identity(fd):
    """Which process holds `fd`, and which file it is."""
    st = os.fstat(fd)
    return os.getpid(), st.st_dev, st.st_ino


EXIT_FD = None
if "EXECD_EXIT_FD" in os.environ:
    import resource  # pylint: disable=wrong-import-position

    _given = int(os.environ.pop("EXECD_EXIT_FD"))
    EXIT_FD = os.dup(_given)  # Not inheritable, as Python makes every new descriptor.
    os.close(_given)
    _EXIT_FD_ID = _identity(EXIT_FD)


def _exit_fd_is_ours():
    try:
        return _identity(EXIT_FD) == _EXIT_FD_ID
    except OSError:  # The program closed it.
        return False

# Warm up what the first program would otherwise pay for: CPython builds its compiler's
# state on the first compile() (about 0.7 ms, against 7 us for each one after), and
# sys.stdout sets up its encoder on its first write. Nothing here prints or runs the
# caller's code.
_WARM_UP = """
import sys
def f(x, *args, **kwargs):
    return [y for y in range(x) if y % 2], {k: v for k, v in kwargs.items()}, f"{x!r:>4}"
class C:
    pass
try:
    f(3, a=1)
except Exception as e:
    raise
finally:
    pass
"""
exec(compile(_WARM_UP, "<warm-up>", "exec"), {"__name__": "__warm_up__"})
sys.stdout.write("")
sys.stdout.flush()
# Warmed up: execd hands this process a request only from now on.
if EXIT_FD is not None:
    os.write(EXIT_FD, b"ready\n")

source = sys.stdin.buffer.read()
sys.argv = ["-"]  # As `python3 -` would show it.
sys.path[0] = ""  # As `python3 -` has it: the working directory, not this script's.
code = 0
try:
    exec(compile(source, "<stdin>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as e:
    if e.code is None:
        code = 0
    elif isinstance(e.code, int):
        code = e.code
    else:
        print(e.code, file=sys.stderr)
        code = 1
except BaseException:  # The program's own error: reported as python would, exit 1.
    import traceback  # pylint: disable=import-outside-toplevel
    traceback.print_exc()
    code = 1
# What interpreter finalisation would do that the program can see, in its order: wait
# for the program's non-daemon threads, then run its atexit functions.
if "threading" in sys.modules:
    import threading  # pylint: disable=import-outside-toplevel

    while True:
        others = [t for t in threading.enumerate()
                  if t is not threading.main_thread() and not t.daemon and t.is_alive()]
        if not others:
            break
        for thread in others:
            thread.join()
if atexit._ncallbacks():  # pylint: disable=protected-access
    atexit._run_exitfuncs()  # pylint: disable=protected-access
# The report is made up before the output is flushed, so that the output, its end and
# the report follow one another with no other work between them.
report = None
if EXIT_FD is not None and _exit_fd_is_ours():
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = b"exit %d %d %d %d\n" % (
        code & 0xFF,
        (own.ru_utime + waited.ru_utime) * 1e6,
        (own.ru_stime + waited.ru_stime) * 1e6,
        max(own.ru_maxrss, waited.ru_maxrss))  # KiB
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:  # pylint: disable=broad-except  # e.g. the program closed it.
        pass
if report is not None:
    # The output ends here (execd answers once both pipes and the report are in); a
    # process the program left holding them keeps the answer waiting for the exit.
    for fd in (1, 2):
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.write(EXIT_FD, report)
    except OSError:  # execd is gone, or stopped listening: the exit tells the same.
        pass
os._exit(code & 0xFF)
