#!/usr/bin/env bash
# Fails, naming what is there, unless DIR is empty: scripts/test.sh runs the whole suite with
# TMPDIR=DIR (a fresh directory of that run) and calls this after the last test, so a test that
# leaves a temporary file or directory behind in any outcome fails the run.
#
#   tests/check_temp_dir_empty.sh DIR
#
# Nothing is exempt. Everything the tests start writes its temporary files under $TMPDIR and is
# made to remove them (or is pointed at a directory of the test that the test removes): the test
# binaries (testing::ScopedTempDir), factlens_server (tests/python/server_process.py), Chromium
# (its profile and TMPDIR inside the test's own temporary directory), Prometheus (storage path in
# the test's directory), Jupyter and the kernel (JUPYTER_RUNTIME_DIR, IPYTHONDIR and TMPDIR in the
# test's directory), pip and setup.py (their own temporary directories, removed when they exit).
# (Seen in a full run: only those; pip's and venv's own tmp*/pip-* directories come and go.) Should
# a tool outside the project's control ever need an exemption, list its pattern here with the
# reason, rather than widening the check. A test that CTest kills at its timeout (SIGKILL, CMake
# 3.25) cannot clean up: what it left is named here too, next to the timeout.
set -euo pipefail
dir=${1:?usage: $0 DIR}
[[ -d $dir ]] || { echo "check_temp_dir_empty: $dir is not a directory" >&2; exit 2; }
left=$(find "$dir" -mindepth 1 -maxdepth 3 | LC_ALL=C sort)
if [[ -n $left ]]; then
  echo "FAIL: the tests left these behind in their TMPDIR ($dir); every test must remove its" \
       "temporary files in every outcome (C++: testing::ScopedTempDir in tests/file_util.h;" \
       "Python: tempfile.TemporaryDirectory / enterContext / try-finally):" >&2
  sed 's/^/  /' <<<"$left" >&2
  exit 1
fi
echo "test: the suite left nothing in its TMPDIR"
