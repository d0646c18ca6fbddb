#!/usr/bin/env bash
# Runs the CTest suite of an existing build under other CPU kernels and thread counts, to show that
# no numeric assertion depends on the machine (issue: "any x86-64 CPU"). Not part of the default
# suite (each setting is a full run, ~6 minutes on 2 cores). Prints, per setting, the pass count
# and the largest pruned-vs-exhaustive score difference the ranking tests measured; each setting's
# full CTest output stays in BUILD_DIR/kernel_matrix/SETTING.log.
#
#   tests/kernel_matrix.sh [BUILD_DIR] [SETTING...]      (default: every setting below)
#
# Settings (PyTorch's libtorch does its CPU matrix products with MKL, some through oneDNN):
#   default        the CPU's own kernels as MKL/oneDNN dispatch them
#   threads2       OMP_NUM_THREADS=2 MKL_NUM_THREADS=2, one test at a time
#   mkl-avx2       MKL_ENABLE_INSTRUCTIONS=AVX2 (no AVX-512 kernels, whatever the CPU has)
#   mkl-sse42      MKL_ENABLE_INSTRUCTIONS=SSE4_2
#   mkl-compatible MKL_CBWR=COMPATIBLE (MKL's conditional numerical reproducibility, generic path)
#   onednn-sse41   ONEDNN_MAX_CPU_ISA=SSE41 (oneDNN's oldest kernels)
#   onednn-avx2    ONEDNN_MAX_CPU_ISA=AVX2
# Every other setting runs one test per core with one thread each, as scripts/test.sh does.
# The fuzz test (clang/libFuzzer on the torch-free parsers) does no matrix products and is left out.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
shift || true
settings=("$@")
[ "${#settings[@]}" -gt 0 ] || settings=(default threads2 mkl-avx2 mkl-sse42 mkl-compatible onednn-sse41 onednn-avx2)
status=0
for s in "${settings[@]}"; do
  env_args=() exclude="fuzz" jobs="$(nproc)" threads=(OMP_NUM_THREADS=1 MKL_NUM_THREADS=1)
  case "$s" in
    default) ;;
    # One test at a time: two OpenMP pools of 2 threads on 2 cores spin-wait for each other.
    threads2) threads=(OMP_NUM_THREADS=2 MKL_NUM_THREADS=2); jobs=1 ;;
    mkl-avx2) env_args=(MKL_ENABLE_INSTRUCTIONS=AVX2) ;;
    mkl-sse42) env_args=(MKL_ENABLE_INSTRUCTIONS=SSE4_2) ;;
    mkl-compatible) env_args=(MKL_CBWR=COMPATIBLE) ;;
    onednn-sse41) env_args=(ONEDNN_MAX_CPU_ISA=SSE41) ;;
    onednn-avx2) env_args=(ONEDNN_MAX_CPU_ISA=AVX2) ;;
    *) echo "kernel_matrix: unknown setting '$s'" >&2; exit 2 ;;
  esac
  start=$(date +%s)
  log="$build/kernel_matrix/$s.log"
  mkdir -p "$build/kernel_matrix"
  (cd "$build" && env "${threads[@]}" "${env_args[@]}" ctest -j"$jobs" --timeout 900 -E "$exclude" >"$log" 2>&1)
  rc=$?
  [ $rc -eq 0 ] || status=1
  summary=$(grep -E "tests passed|tests failed" "$log" | tail -1)
  largest=$(grep -ho "largest |pruned - exhaustive| score difference [0-9.e+-]*" "$build/Testing/Temporary/LastTest.log" |
            awk '{print $NF}' | sort -g | tail -1)
  echo "$s (${threads[*]} ${env_args[*]}): $summary; largest |pruned - exhaustive| ${largest:-n/a}; $(( $(date +%s) - start )) s"
done
exit $status
