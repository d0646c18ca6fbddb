#!/usr/bin/env bash
# Generates the Python gRPC stubs of proto/factlens/v1/factlens.proto (and of grpc.health.v1 and
# grpc.reflection.v1alpha, staged as grpc_health/ and grpc_reflection/ so they do not shadow the
# real grpc package) into OUT_DIR. Usage: scripts/gen_python_stubs.sh OUT_DIR
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: gen_python_stubs.sh OUT_DIR}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out" "$stage/grpc_health/v1" "$stage/grpc_reflection/v1alpha"
cp /usr/share/grpc-proto/grpc/health/v1/health.proto "$stage/grpc_health/v1/"
cp /usr/share/grpc-proto/grpc/reflection/v1alpha/reflection.proto "$stage/grpc_reflection/v1alpha/"
protoc -I "$root/proto" -I "$stage" --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin \
  factlens/v1/factlens.proto grpc_health/v1/health.proto grpc_reflection/v1alpha/reflection.proto
for d in factlens/v1 grpc_health grpc_health/v1 grpc_reflection grpc_reflection/v1alpha; do
  touch "$out/$d/__init__.py"
done
