#!/usr/bin/env bash
# Installs every Debian 12 package factlens needs to build, test and run.
# Idempotent and non-interactive; run as root (or with sudo available).
set -euo pipefail

SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo -E); fi

# Usage: scripts/setup.sh [--profile full|build|runtime]
#   full (default): everything to build, test and run (what the README commands need);
#   build: only what configuring and compiling needs (the Dockerfile's build stage);
#   runtime: only the shared libraries factlens_server loads (the Dockerfile's runtime stage;
#            tests/deploy checks this list against the server binary).
profile=full
if [ "${1:-}" = "--profile" ]; then profile="${2:?--profile needs full, build or runtime}"; fi

RUNTIME_PACKAGES=(
  libtorch1.13 libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libcivetweb1 libpcre2-8-0
  libblis4-pthread
)
BUILD_PACKAGES=(
  cmake g++ pkg-config ccache ninja-build
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libtorch-dev libabsl-dev libre2-dev libpcre2-dev nlohmann-json3-dev libcivetweb-dev civetweb
  libgtest-dev libgmock-dev libbenchmark-dev libsentencepiece-dev
  libblis4-pthread
)
TEST_PACKAGES=(
  curl
  python3-grpcio python3-protobuf python3-numpy python3-pandas python3-matplotlib python3-tqdm
  python3-yaml python3-venv python3-setuptools python3-pip python3-wheel prometheus chromium openssl
  clang-14 libclang-rt-14-dev clang-format
)
case "$profile" in
  full) PACKAGES=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  build) PACKAGES=("${BUILD_PACKAGES[@]}") ;;
  runtime) PACKAGES=("${RUNTIME_PACKAGES[@]}") ;;
  *) echo "setup: unknown profile '$profile' (full, build or runtime)" >&2; exit 2 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${#missing[@]} packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PACKAGES[@]} packages of profile $profile already installed"
fi

# BLAS: Debian's libtorch does fp32 matmuls through libblas.so.3. The default provider is the
# netlib reference BLAS (2.7 GFLOP/s here); BLIS is ~118 GFLOP/s on 2 cores (see README, "BLAS").
BLIS=/usr/lib/x86_64-linux-gnu/blis-pthread/libblas.so.3
if [ -e "$BLIS" ]; then
  "${SUDO[@]}" update-alternatives --set libblas.so.3-x86_64-linux-gnu "$BLIS" >/dev/null
  echo "setup: libblas.so.3 -> $(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu)"
fi
