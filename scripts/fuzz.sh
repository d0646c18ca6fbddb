#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan + UBSan, torch-free) and runs each for a bounded time
# on its seed corpus (tests/fuzz/corpus/<target>, tests/tokenizer/fuzz_corpus for the tokenizer).
# Usage: scripts/fuzz.sh [--seconds N] [--build-dir DIR] [target...]
# Exit status is non-zero if any target crashes, leaks or fails to build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds=30
build="$root/build-fuzz"
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

mkdir -p "$build"
cmake -S "$root" -B "$build" -DFACTLENS_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j"$(nproc)" >"$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }

if [ ${#targets[@]} -eq 0 ]; then
  while IFS= read -r exe; do targets+=("$(basename "$exe")"); done \
    < <(find "$build" -maxdepth 3 -type f -perm -u+x -name 'fuzz_*' | sort)
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz.sh: no fuzz targets were built" >&2; exit 1; }

status=0
for target in "${targets[@]}"; do
  exe="$(find "$build" -maxdepth 3 -type f -name "$target" | head -1)"
  corpus_seed="$root/tests/fuzz/corpus/$target"
  [ -d "$corpus_seed" ] || corpus_seed="$root/tests/${target#fuzz_}/fuzz_corpus"
  work="$build/corpus/$target"
  mkdir -p "$work"
  seeds=()
  [ -d "$corpus_seed" ] && seeds+=("$corpus_seed")
  echo "fuzz.sh: $target for ${seconds}s"
  if ! (cd "$build" && "$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "$work" "${seeds[@]}" >"$build/$target.log" 2>&1); then
    echo "fuzz.sh: $target FAILED; last lines of $build/$target.log:" >&2
    tail -40 "$build/$target.log" >&2
    status=1
  else
    grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$build/$target.log" | tail -2
  fi
done
exit $status
