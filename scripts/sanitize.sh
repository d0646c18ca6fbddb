#!/usr/bin/env bash
# The unit and service tests, and the request fuzzer, under AddressSanitizer + UndefinedBehaviorSanitizer.
# Builds them with g++ -fsanitize=address,undefined (every UB check fatal) into a separate,
# persistent, ccache-backed folder (default ./build-asan; libtorch, gRPC and the other libraries
# are not instrumented, factlens' own code and the tests are), runs every GoogleTest binary, then
# fuzz_requests (tests/fuzz/request_fuzz.cc) for --fuzz_seconds. Exit status 0 only if every test
# passes and no sanitizer reports anything. Needs what scripts/setup.sh installs. Not part of
# scripts/test.sh (the instrumented build alone takes most of CI's time budget); docs/reliability.md
# has the latest figures.
# Usage: scripts/sanitize.sh [--fuzz_seconds N] [--build-dir DIR] [--jobs N] [--all]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build-asan"
fuzz_seconds=600
jobs="$(nproc)"
all=0
while [ $# -gt 0 ]; do
  case "$1" in
    --fuzz_seconds) fuzz_seconds="$2"; shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --all) all=1; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "sanitize.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# The unit and service tests. The numeric suites (model_test, method_test, ranking_test: parity
# with HF, fairseq and numpy) run the same factlens code on bigger tensors; add them with --all.
tests=(parsers_test text_input_test service_test metrics_test http_endpoint_test
       tokenizer_unit_test tokenizer_golden_test tokenizer_fairseq_test tokenizer_sentencepiece_test)
numeric_tests=(model_test method_test ranking_test)
[ "$all" = 1 ] && tests+=("${numeric_tests[@]}")
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
mkdir -p "$build"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFACTLENS_TORCH_PYTHON="${FACTLENS_VENV:-$root/.venv}/bin/python" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
start=$(date +%s)
cmake --build "$build" -j"$jobs" --target "${tests[@]}" fuzz_requests
echo "sanitize.sh: built in $(( $(date +%s) - start )) s"

# Leaks: LeakSanitizer runs at exit; the suppressions name only what libraries outside factlens
# keep for the process's lifetime (tests/sanitizers/lsan.supp says which and why).
# allocator_may_return_null: an allocation too large to serve fails as it does without ASan (the
# tests of out-of-memory handling ask for one), instead of aborting the process.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:abort_on_error=0:allocator_may_return_null=1"
export LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
status=0
for t in "${tests[@]}"; do
  exe="$(find "$build" -name "$t" -type f -perm -u+x | head -1)"
  start=$(date +%s)
  # The tests read the source tree (models, fixtures) relative to FACTLENS_SOURCE_DIR, compiled in.
  if (cd "$build" && "$exe" >"$build/$t.log" 2>&1); then
    echo "sanitize.sh: $t passed in $(( $(date +%s) - start )) s, $(grep -c "^\[       OK \]" "$build/$t.log") cases"
  else
    echo "sanitize.sh: $t FAILED; last lines of $build/$t.log:" >&2
    tail -40 "$build/$t.log" >&2
    status=1
  fi
done
if (cd "$build" && "$build/tests/fuzz_requests" --seconds "$fuzz_seconds" --seed "$RANDOM" \
      >"$build/fuzz_requests.log" 2>&1); then
  cat "$build/fuzz_requests.log"
else
  echo "sanitize.sh: fuzz_requests FAILED; last lines of $build/fuzz_requests.log:" >&2
  tail -40 "$build/fuzz_requests.log" >&2
  status=1
fi
exit $status
