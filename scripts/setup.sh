#!/usr/bin/env bash
# Installs every Debian 12 package factlens needs to build, test and run, and libtorch: PyTorch's
# own, from the pinned PyPI torch wheel (a CUDA 13.0 build that also runs on a CPU), into .venv.
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
  libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libpcre2-8-0
  python3-venv
)
BUILD_PACKAGES=(
  cmake g++ pkg-config ccache ninja-build
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev libre2-dev libpcre2-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev libsentencepiece-dev
)
TEST_PACKAGES=(
  curl
  python3-grpcio python3-protobuf python3-numpy python3-pandas python3-matplotlib python3-tqdm
  python3-yaml python3-venv python3-setuptools python3-pip python3-wheel prometheus chromium openssl
  python3-nbclient python3-nbformat python3-ipykernel
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

# libtorch. The torch wheel's own dependencies are ~2.6 GB of nvidia-* wheels (CUDA runtime, cuBLAS,
# cuDNN, NCCL, ...) and Python packages factlens does not use. A machine that builds has the CUDA
# 13.0 toolkit (building against a CUDA libtorch needs nvcc and its headers), which already holds all
# but three of those libraries: there the wheel goes in with --no-deps plus those three (README,
# "libtorch": sizes and times). The runtime profile (an image without the toolkit) takes the
# libraries from the wheels instead, at the versions torch 2.11.0 pins.
TORCH_VERSION=2.11.0   # CUDA 13.0, cuDNN 9.19: the toolkit's major version must match
TORCH_EXTRA_LIBS=(nvidia-cufile==1.15.1.6 nvidia-nvshmem-cu13==3.4.5 nvidia-cusparselt-cu13==0.8.0)
TORCH_CUDA_LIBS=(
  nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.1.0.3 nvidia-cudnn-cu13==9.19.0.56
  nvidia-cufft==12.0.0.61 nvidia-curand==10.4.0.35 nvidia-cusolver==12.0.4.66
  nvidia-cusparse==12.6.3.3 nvidia-nvjitlink==13.0.88 nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-cupti==13.0.85 nvidia-nvtx==13.0.85 nvidia-nccl-cu13==2.28.9
)
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${FACTLENS_VENV:-$root/.venv}"
libraries=("${TORCH_EXTRA_LIBS[@]}")
if [ "$profile" = runtime ]; then
  libraries+=("${TORCH_CUDA_LIBS[@]}")
elif ! command -v nvcc >/dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: the CUDA 13 toolkit (nvcc) is missing; building against libtorch $TORCH_VERSION" \
       "needs it (docs/gpu.md)" >&2
  exit 1
fi
installed=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' \
            2>/dev/null || true)
if [ "$installed" != "$TORCH_VERSION" ]; then
  echo "setup: installing torch==$TORCH_VERSION (libtorch) into $venv"
  python3_bin=/usr/bin/python3
  [ -x "$python3_bin" ] || python3_bin=python3
  "$python3_bin" -m venv "$venv"
  "$venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check --no-deps \
    "torch==$TORCH_VERSION" "${libraries[@]}"
fi
echo "setup: libtorch $TORCH_VERSION in $venv"
