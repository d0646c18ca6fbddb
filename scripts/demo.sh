#!/usr/bin/env bash
# The README's main command: installs what is missing, builds, starts factlens_server on the
# embedded demo model (models/gpt2-facts-tiny), runs the sample Python client's LocateFact for
# "The capital of France is" -> " Paris", prints the report, and stops the server.
# Optional arguments: PROMPT TARGET (e.g. "The capital of Japan is" " Tokyo").
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FACTLENS_BUILD_DIR:-$root/build}"
prompt="${1:-The capital of France is}"
target="${2:- Paris}"
"$root/scripts/setup.sh"
"$root/scripts/build.sh" factlens_server python_client

workdir="$(mktemp -d)"
"$build/server/factlens_server" --listen 127.0.0.1:0 --http_listen 127.0.0.1:0 \
  --port_file "$workdir/ports" >"$workdir/server.log" 2>&1 &
server_pid=$!
cleanup() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  rm -rf "$workdir"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
  [ -s "$workdir/ports" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$workdir/server.log"; exit 1; }
  sleep 0.1
done
[ -s "$workdir/ports" ] || { echo "demo: server did not become ready" >&2; cat "$workdir/server.log"; exit 1; }
read -r grpc_port http_port <"$workdir/ports"
echo "demo: factlens_server ready on 127.0.0.1:$grpc_port (metrics on :$http_port)"
echo "demo: python3 -m factlens locate \"$prompt\" \"$target\""
echo
PYTHONPATH="$build/python" /usr/bin/python3 -m factlens --server "127.0.0.1:$grpc_port" locate "$prompt" "$target"
