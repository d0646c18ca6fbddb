#!/usr/bin/env bash
# The README's main command: installs what is missing, builds, and asks the embedded demo model
# (models/gpt2-facts-tiny) for its next tokens after "The capital of France is".
# Extra arguments go to factlens_predict, e.g. --model models/llama-facts-tiny --prompt "...".
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh" factlens_predict
"${FACTLENS_BUILD_DIR:-$root/build}/tools/factlens_predict" "$@"
