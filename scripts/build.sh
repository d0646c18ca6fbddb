#!/usr/bin/env bash
# Configures and builds factlens in ./build (persistent, ccache-backed). Extra arguments are passed
# to the build as target names, e.g. scripts/build.sh factlens_predict.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FACTLENS_BUILD_DIR:-$root/build}"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# libtorch comes from the venv scripts/setup.sh fills (FACTLENS_VENV, default ./.venv).
torch_python=(-DFACTLENS_TORCH_PYTHON="${FACTLENS_VENV:-$root/.venv}/bin/python")
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${torch_python[@]}"
fi
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$build" -j"$(nproc)" "${targets[@]}"
