#!/usr/bin/env bash
# lz4 throughput of execd's compressor against `lz4 -b1` on the same real output, one run.
# usage: loadtest/bench_lz4.sh [BUILD_DIR]
set -euo pipefail
build=${1:-build}
sample=$(mktemp)
trap 'rm -f "$sample"' EXIT
ls -lR /usr/include >"$sample" 2>/dev/null || true
echo "sample: $(wc -c <"$sample") bytes of ls -lR /usr/include"
for round in 1 2; do
  echo "== round $round: lz4 -b1"
  lz4 -b1 -i3 "$sample" 2>&1 | tr '\r' '\n' | grep 'MB/s ,' | tail -1
  echo "== round $round: execd (google-benchmark)"
  EXECD_LZ4_SAMPLE="$sample" "$build/tests/lz4_bench" --benchmark_min_time=1 \
    --benchmark_filter='BM_Compress|BM_Decompress' 2>/dev/null | grep BM_
done
EXECD_LZ4_SAMPLE="$sample" "$build/tests/lz4_bench" --benchmark_filter=BreakEven 2>/dev/null | grep BM_
