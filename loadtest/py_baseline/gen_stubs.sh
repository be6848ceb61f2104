#!/usr/bin/env bash
# Generates the Python messages and gRPC stubs of execd.v1 into OUT_DIR, with Debian's protoc
# and grpc_python_plugin (protobuf-compiler, protobuf-compiler-grpc), so they match Debian's
# python3-protobuf and python3-grpcio. Generated files are never committed.
# usage: loadtest/py_baseline/gen_stubs.sh OUT_DIR
set -euo pipefail
out=${1:?usage: $0 OUT_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
plugin=$(command -v grpc_python_plugin) || {
  echo "gen_stubs: grpc_python_plugin not found (apt-get install protobuf-compiler-grpc)" >&2
  exit 1
}
mkdir -p "$out"
# execd.proto alone: the service; google/protobuf/duration.proto comes with protoc.
protoc -I "$root/protos" --python_out="$out" --grpc_out="$out" \
  --plugin=protoc-gen-grpc="$plugin" "$root/protos/execd/v1/execd.proto"
