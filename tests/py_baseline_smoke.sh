#!/usr/bin/env bash
# The Python baseline of loadtest/bench_python_baseline.sh still works: stubs generate from
# our proto with Debian's protoc and grpc_python_plugin, the server starts, execd-loadtest's
# Execute requests all succeed against it, and execctl gets `echo hi`'s output back.
# No timing assertions. Needs python3-grpcio and python3-protobuf (deploy/install-deps.sh).
# usage: py_baseline_smoke.sh SOURCE_DIR EXECD_LOADTEST EXECCTL
set -euo pipefail
src=$1 loadtest=$2 execctl=$3
python=${PYTHON:-/usr/bin/python3}  # Debian's, where python3-grpcio is installed
if ! err=$("$python" -c 'import grpc, google.protobuf' 2>&1); then
  echo "FAIL: $python cannot import grpc and google.protobuf (deploy/install-deps.sh installs"
  echo "python3-grpcio and python3-protobuf): $err"
  exit 1
fi
tmp=$(mktemp -d)
server=""
stop() {
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap stop EXIT

"$src/loadtest/py_baseline/gen_stubs.sh" "$tmp/stubs"
"$python" "$src/loadtest/py_baseline/server.py" --stubs="$tmp/stubs" --port=0 --workers=4 \
  2>"$tmp/server.log" &
server=$!
target=""
for _ in $(seq 100); do
  target=$(sed -nE 's/.*listening on ([0-9.]+:[0-9]+).*/\1/p' "$tmp/server.log")
  [[ -n "$target" ]] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$target" ]]; then
  echo "FAIL: the Python server did not start:"; cat "$tmp/server.log"; exit 1
fi

# execd-loadtest exits non-zero on any failed request; and all 20 must have been sent.
"$loadtest" --target="$target" --requests=20 --concurrency=2 --json -- /bin/true >"$tmp/run" ||
  { cat "$tmp/run"; echo "FAIL: execd-loadtest reported errors"; exit 1; }
cat "$tmp/run"
if ! grep -q '"requests":20[,}]' "$tmp/run" || ! grep -q '"errors":0[,}]' "$tmp/run"; then
  echo "FAIL: not all 20 requests succeeded"; exit 1
fi
out=$("$execctl" --target="$target" run -- echo hi) || { echo "FAIL: execctl run -- echo hi failed"; exit 1; }
[[ "$out" == "hi" ]] || { echo "FAIL: echo hi gave '$out'"; exit 1; }
echo "PASS: 20/20 Execute, echo hi -> hi, against the Python server on $target"
