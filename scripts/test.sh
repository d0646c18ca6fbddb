#!/usr/bin/env bash
# The README's test command: installs what is missing, builds everything, runs every test
# (unit, HF parity, demo models, bounded fuzzing). Exit status 0 only if all pass.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
cd "${FACTLENS_BUILD_DIR:-$root/build}"
status=0
ctest --output-on-failure -j"$(nproc)" --timeout 900 || status=$?
if ! nvidia-smi -L >/dev/null 2>&1; then
  gpu_tests=$(ctest -N -L gpu | grep -c "Test *#" || true)
  echo "test: the $gpu_tests tests of the gpu label were skipped, not run: no GPU is visible here" \
       "(docs/gpu.md: scripts/gpu_check.sh runs them on a GPU machine)"
fi
exit $status
