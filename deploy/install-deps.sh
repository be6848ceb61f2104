#!/usr/bin/env bash
# Installs the Debian 12 packages execd needs. Idempotent: when every package is already
# installed it touches nothing (no apt-get update, no network).
#   deploy/install-deps.sh            build, test and tool dependencies (developers, CI)
#   deploy/install-deps.sh --runtime  only what the execd binary needs to run (container image)
# It leaves no daemon running: see "policy-rc.d" below.
set -euo pipefail

build_packages=(
  g++ cmake make pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev liblz4-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  lz4 clang python3
  openssl  # the tests make their TLS certificates with it
  python3-grpcio python3-protobuf
  prometheus  # a real Prometheus (and promtool) for the metrics tests; they start their own
  gnuplot-nox  # loadtest/bench_tuner.sh's plot of the limit over time
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

# policy-rc.d: a package's postinst starts its service (prometheus's does) through invoke-rc.d
# or deb-systemd-invoke, and both first ask /usr/sbin/policy-rc.d; exit code 101 means "action
# forbidden". While apt-get runs, ours forbids every start, so installing starts no daemon on
# any init system. A policy-rc.d that was there before (Docker images ship one) is kept aside
# and put back as it was; ours is removed. At no moment is there no policy in place: ours is
# renamed over the old one and the old one renamed back.
policy=/usr/sbin/policy-rc.d
saved=$policy.install-deps-saved  # the pre-existing one, while ours is in place
marker="# written by execd deploy/install-deps.sh while apt-get runs"
restore_policy() {
  if [[ -e "$saved" || -L "$saved" ]]; then
    $sudo mv -f "$saved" "$policy"
  elif grep -qxF "$marker" "$policy" 2>/dev/null; then
    $sudo rm -f "$policy"
  fi
}
trap restore_policy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
# A $saved left by a run that was killed (SIGKILL) is the original: keep it, do not save ours.
if [[ ! -e "$saved" && ! -L "$saved" ]] && [[ -e "$policy" || -L "$policy" ]] &&
   ! grep -qxF "$marker" "$policy" 2>/dev/null; then
  $sudo cp -a "$policy" "$saved"
fi
printf '#!/bin/sh\n%s\nexit 101\n' "$marker" | $sudo tee "$policy.install-deps-new" >/dev/null
$sudo chmod 0755 "$policy.install-deps-new"
$sudo mv -f "$policy.install-deps-new" "$policy"

echo "install-deps: installing ${missing[*]}"
# --no-install-recommends: prometheus recommends prometheus-node-exporter and more, not wanted.
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
# The tests start their own Prometheus on a free port: the package's service would only take
# port 9090 after the next boot, so it is not enabled for boot either.
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
  $sudo update-rc.d prometheus disable >/dev/null 2>&1 || true
  if command -v deb-systemd-helper >/dev/null; then
    $sudo deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
  fi
fi
