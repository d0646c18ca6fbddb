#!/usr/bin/env bash
# The README's test command: installs what is missing, builds everything, runs every test
# (unit, HF parity, demo models, bounded fuzzing). Exit status 0 only if all pass.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
cd "${FACTLENS_BUILD_DIR:-$root/build}"
ctest --output-on-failure -j"$(nproc)" --timeout 900
