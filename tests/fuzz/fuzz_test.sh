#!/usr/bin/env bash
# libFuzzer targets for the input execd takes from outside, built with clang (ASan, UBSan)
# outside the main build, the generated protobuf code included.
# usage: fuzz_test.sh build SOURCE_DIR BUILD_DIR
#        fuzz_test.sh run SOURCE_DIR BUILD_DIR TARGET [SECONDS]
# `run` fuzzes TARGET for SECONDS (default 20) from its checked-in corpus
# (tests/fuzz/corpus/TARGET); new inputs go to BUILD_DIR/corpus/TARGET, crashes to
# BUILD_DIR/artifacts/TARGET/.
set -euo pipefail
mode=$1 src=$(cd "$2" && pwd) out=$3
cxx=$(command -v clang++ || true)
if [[ -z "$cxx" ]]; then
  echo "SKIPPED: clang++ not installed (deploy/install-deps.sh installs it)"
  exit 77
fi
targets=(worker_frames execute_request pools_config authz_policy lz4)

build() {
  mkdir -p "$out/gen" "$out/obj"
  protoc --proto_path="$src/protos" --cpp_out="$out/gen" \
    execd/v1/execd.proto execd/v1/pools.proto execd/v1/policy.proto execd/worker/v1/worker.proto
  local flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer "-fsanitize=address,undefined"
               -fno-sanitize-recover=all -I"$src" -I"$out/gen")
  # Our code and the generated code get coverage; the fuzzer's main comes at link time.
  local sources=(
    "$out/gen/execd/v1/execd.pb.cc" "$out/gen/execd/v1/pools.pb.cc"
    "$out/gen/execd/v1/policy.pb.cc" "$out/gen/execd/worker/v1/worker.pb.cc"
    "$src/core/authz.cc" "$src/core/command.cc" "$src/core/compress.cc"
    "$src/core/errno_status.cc" "$src/core/validate.cc" "$src/core/worker_frame.cc"
    "$src/server/authz_config.cc" "$src/server/convert.cc" "$src/server/pools_config.cc")
  for t in "${targets[@]}"; do sources+=("$src/tests/fuzz/${t}_fuzzer.cc"); done
  # Two compilers at once: CI has two cores.
  local running=() f
  for f in "${sources[@]}"; do
    if (( ${#running[@]} == 2 )); then
      wait "${running[0]}"
      running=("${running[1]}")
    fi
    "$cxx" -c "${flags[@]}" -fsanitize=fuzzer-no-link "$f" -o "$out/obj/$(basename "$f" .cc).o" &
    running+=($!)
  done
  for f in "${running[@]}"; do wait "$f"; done
  local common=()
  for f in "${sources[@]}"; do
    [[ $f == *_fuzzer.cc ]] || common+=("$out/obj/$(basename "$f" .cc).o")
  done
  for t in "${targets[@]}"; do
    # shellcheck disable=SC2046  # pkg-config prints several words on purpose.
    "$cxx" "${flags[@]}" -fsanitize=fuzzer "$out/obj/${t}_fuzzer.o" "${common[@]}" \
      $(pkg-config --libs protobuf grpc++ liblz4 absl_status absl_statusor absl_strings \
        absl_str_format absl_synchronization absl_time absl_hash absl_raw_hash_set) \
      -pthread -o "$out/fuzz_$t"
  done
}

run() {
  local t=$1 seconds=${2:-20}
  [[ -x "$out/fuzz_$t" ]] || { echo "fuzz_$t not built: run '$0 build $src $out' first"; exit 1; }
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
  local dict=()
  [[ -f "$src/tests/fuzz/$t.dict" ]] && dict=(-dict="$src/tests/fuzz/$t.dict")
  # -timeout: one input taking seconds is a hang; -rss_limit_mb also caps single mallocs.
  "$out/fuzz_$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    "${dict[@]}" -artifact_prefix="$out/artifacts/$t/" "$out/corpus/$t" "$src/tests/fuzz/corpus/$t"
}

case $mode in
  build) build ;;
  run) run "$4" "${5:-20}" ;;
  *) echo "usage: $0 build|run SOURCE_DIR BUILD_DIR [TARGET [SECONDS]]"; exit 2 ;;
esac
