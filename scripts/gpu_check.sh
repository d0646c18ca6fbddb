#!/usr/bin/env bash
# The GPU check, in one call of at most 10 minutes on a machine with an NVIDIA GPU (docs/gpu.md):
# builds factlens against that machine's PyTorch (its libtorch, CUDA 13), runs the `gpu` CTest
# label, then the GPU benchmark, and writes everything into one output folder.
#
#   scripts/gpu_check.sh --fetch-debs   # on a Debian 12 machine with network: downloads the Debian
#                                       # packages the build needs into .gpu-debs/ (~25 MB)
#   scripts/gpu_check.sh [OUT_DIR]      # on the GPU machine (or FACTLENS_GPU_OUT=OUT_DIR)
#
# On the GPU machine the build's C++ dependencies (gRPC, protobuf, abseil, GoogleTest, ...) come from
# .gpu-debs/ when that folder exists (unpacked into a private prefix, nothing installed system-wide;
# for a machine such as the project's device machine, Ubuntu 24.04 without those -dev packages and
# without network), else from the system. libtorch comes from FACTLENS_TORCH_PYTHON's torch
# (default: python3's). Environment: FACTLENS_GPU_BENCH_ARGS (gpu_bench flags; default: Llama-7B
# first, the issue's target, then GPT-2 medium and Llama-13B, float16 then bfloat16, 2 repetitions),
# FACTLENS_GPU_BUDGET_SECONDS (default 540: the benchmark is cut short to end within it).
#
# Output folder: gpu_check.log (everything), machine.txt (nvidia-smi, versions), gpu_tests.xml
# (JUnit), gpu_bench.txt and gpu_bench.json. Exit status: the GPU tests' (the benchmark's, if they
# pass).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
debs="$root/.gpu-debs"

if [ "${1:-}" = "--fetch-debs" ]; then
  mkdir -p "$debs" && cd "$debs" || exit 1
  # STACK-NOTES' list plus what factlens links beyond the probe (PCRE2, sentencepiece).
  apt-get download libgrpc++-dev libgrpc++1.51 libgrpc-dev libgrpc29 protobuf-compiler-grpc \
    libprotobuf-dev libprotobuf32 libprotobuf-lite32 libprotoc32 libprotoc-dev protobuf-compiler \
    libabsl-dev libabsl20220623 libre2-dev libre2-9 libc-ares-dev libc-ares2 nlohmann-json3-dev \
    libgtest-dev libgmock-dev libbenchmark-dev \
    libbenchmark1debian grpc-proto zlib1g-dev libssl-dev pkgconf pkgconf-bin libpkgconf3 \
    libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libsentencepiece-dev \
    libsentencepiece0
  du -sh "$debs"
  exit $?
fi

out="${1:-${FACTLENS_GPU_OUT:-$root/gpu-check-out}}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
start=$(date +%s)
budget="${FACTLENS_GPU_BUDGET_SECONDS:-540}"
elapsed() { echo $(($(date +%s) - start)); }

{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  nvcc --version 2>&1 | tail -1
  "${FACTLENS_TORCH_PYTHON:-python3}" -c 'import torch; print("torch", torch.__version__)' 2>&1
  nproc
} | tee "$out/machine.txt"

prefix_path=""
if [ -d "$debs" ]; then
  P=/tmp/factlens-debs
  mkdir -p "$P"
  for f in "$debs"/*.deb; do dpkg -x "$f" "$P"; done
  export PATH="$P/usr/bin:$PATH"
  export LD_LIBRARY_PATH="$P/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PKG_CONFIG_PATH="$P/usr/lib/x86_64-linux-gnu/pkgconfig:$P/usr/share/pkgconfig"
  export PKG_CONFIG_SYSROOT_DIR="$P"
  prefix_path="-DCMAKE_PREFIX_PATH=$P/usr;$P/usr/lib/x86_64-linux-gnu/cmake"
  echo "gpu_check: build dependencies from $debs, unpacked into $P"
fi

build=/tmp/factlens-gpu-build
torch_python="${FACTLENS_TORCH_PYTHON:-$(command -v python3)}"
echo "gpu_check: configure ($(elapsed) s)"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DFACTLENS_TORCH_PYTHON="$torch_python" -DTORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
  ${prefix_path:+"$prefix_path"} || exit 3
echo "gpu_check: build ($(elapsed) s)"
cmake --build "$build" -j"$(nproc)" --target gpu_test gpu_bench || exit 3

echo "gpu_check: gpu tests ($(elapsed) s)"
(cd "$build" && ctest -L gpu --output-on-failure --timeout 300 --output-junit "$out/gpu_tests.xml")
tests=$?
# CTest exits 0 when every test was skipped (no GPU visible): say so, and fail.
if ! "$torch_python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible: the GPU tests were skipped, not run"
  tests=4
fi

left=$((budget - $(elapsed)))
echo "gpu_check: gpu_bench, ${left} s left ($(elapsed) s)"
bench=0
if [ "$left" -gt 30 ]; then
  # shellcheck disable=SC2086  # extra flags are meant to split
  timeout "$left" stdbuf -oL "$build/bench/gpu_bench" --json="$out/gpu_bench.json" \
    --commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    ${FACTLENS_GPU_BENCH_ARGS:---models=llama-7b,gpt2-medium,llama-13b --repetitions=2} |
    tee "$out/gpu_bench.txt"
  bench=$?
else
  echo "gpu_check: no time left for the benchmark"
  bench=5
fi
echo "gpu_check: done in $(elapsed) s (tests exit $tests, benchmark exit $bench)"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
