#!/usr/bin/env bash
# The README's two commands must be the ones CI and new users run: the test command in
# .ci/run appears verbatim in README.md, and both commands call deploy/install-deps.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
test_cmd=$(grep -A1 '^# README test command' "$root/.ci/run" | tail -n 1)
[[ -n "$test_cmd" ]] || { echo "no test command found in .ci/run"; exit 1; }
grep -qxF "$test_cmd" "$root/README.md" || { echo "README.md lacks the CI test command: $test_cmd"; exit 1; }
server_cmd=$(grep -m1 'build/execd$' "$root/README.md" || true)
[[ "$server_cmd" == deploy/install-deps.sh* ]] || { echo "README.md lacks the server command starting with deploy/install-deps.sh"; exit 1; }
echo "README commands match .ci/run"
