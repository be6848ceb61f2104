#!/usr/bin/env bash
# Builds the executor and its tests with clang's ThreadSanitizer and runs them: the
# lock-free deque and the parking protocol are exactly the code TSan exists for.
# usage: executor_tsan_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$1 out=$2
cxx=$(command -v clang++ || true)
if [[ -z "$cxx" ]]; then
  echo "SKIPPED: clang++ not installed (deploy/install-deps.sh installs it)"
  exit 77
fi
mkdir -p "$out"
# shellcheck disable=SC2046  # pkg-config prints several words on purpose.
"$cxx" -std=c++20 -O1 -g -fsanitize=thread -I"$src" \
  "$src/core/executor.cc" "$src/tests/core/executor_test.cc" \
  -lgmock -lgtest -lgtest_main $(pkg-config --libs absl_synchronization absl_time) -pthread \
  -o "$out/executor_tsan_test"
TSAN_OPTIONS="halt_on_error=1 exitcode=66" "$out/executor_tsan_test"
