#!/usr/bin/env bash
# Installs the Debian 12 packages execd needs. Idempotent: when every package is already
# installed it touches nothing (no apt-get update, no network).
#   deploy/install-deps.sh            build, test and tool dependencies (developers, CI)
#   deploy/install-deps.sh --runtime  only what the execd binary needs to run (container image)
set -euo pipefail

build_packages=(
  g++ cmake make pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev liblz4-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  lz4 clang python3
  python3-grpcio python3-protobuf
)
runtime_packages=(
  libgrpc++1.51 libprotobuf32 libabsl20220623 liblz4-1 libssl3 tini ca-certificates
)

case "${1:-}" in
  --runtime) packages=("${runtime_packages[@]}") ;;
  "") packages=("${build_packages[@]}") ;;
  *) echo "usage: $0 [--runtime]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root (missing: ${missing[*]})" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
