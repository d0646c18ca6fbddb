#!/usr/bin/env bash
# Checks a built factlens image (issue 14), by default localhost/factlens:0.1.0 from
# scripts/build_images.sh:
#   1. its root file system, by chroot (no container runtime needed): every shared library of
#      factlens_server resolves inside the image root with the image's own environment, the default
#      model path exists, and the entrypoint, run as the image's user, prints its flags on --help;
#   2. the image started with podman (its own ENTRYPOINT, no arguments: the demo model on the
#      image's default ports, published on free loopback ports): /readyz, then the Python client's
#      LocateFact("The capital of France is" -> " Paris"), then `podman stop` must drain and exit 0.
#      Where podman cannot start containers, the exact error is printed, and the same server is
#      started from the image root under chroot + unshare instead and called the same way.
#
#   scripts/check_image.sh [IMAGE]
#
# Environment: FACTLENS_OCI_OPTS (podman run options; default: runc with explicit rlimits, see
# scripts/build_images.sh), FACTLENS_PYTHONPATH (the client package: default build/python, else
# build-t/python). Needs root (podman image mount, chroot). Exit status 0 only if every check passed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
image="${1:-localhost/factlens:0.1.0}"
read -r -a oci_opts <<<"${FACTLENS_OCI_OPTS-"--runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096"}"
pythonpath="${FACTLENS_PYTHONPATH:-}"
if [ -z "$pythonpath" ]; then
  for d in "$root/build/python" "$root/build-t/python"; do
    if [ -d "$d/factlens" ]; then pythonpath="$d"; break; fi
  done
fi
failures=0
ok() { echo "check_image: ok   $*"; }
bad() { echo "check_image: FAIL $*"; failures=$((failures + 1)); }
now_ms() { date +%s%3N; }

# The image's configuration: user, environment, entrypoint.
user=$(podman image inspect --format '{{.Config.User}}' "$image") || { echo "no image $image" >&2; exit 2; }
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')
entrypoint=$(podman image inspect --format '{{range .Config.Entrypoint}}{{.}} {{end}}' "$image")
server=${entrypoint%% *}
echo "check_image: $image: user $user, entrypoint $entrypoint"
echo "check_image: size $(( $(podman image inspect --format '{{.Size}}' "$image") / 1000000 )) MB"

# 1. The root file system, by chroot.
rootfs=$(podman image mount "$image") || { echo "podman image mount failed" >&2; exit 2; }
trap 'podman image unmount "$image" >/dev/null' EXIT
in_root() {  # in_root USER COMMAND...: COMMAND in the image root with the image's environment only,
             # in mount and PID namespaces of its own with /proc mounted, as in a container (the
             # binaries find their default model through /proc/self/exe)
  local u="$1"; shift
  exec unshare --mount --pid --fork --kill-child --mount-proc="$rootfs/proc" \
    env -i "${image_env[@]}" chroot --userspec="$u:$u" "$rootfs" "$@"
}
missing=$(in_root 0 /usr/bin/ldd "$server" 2>&1 | grep -c "not found")
count=$(in_root 0 /usr/bin/ldd "$server" 2>&1 | grep -c "=>")
if [ "$missing" -eq 0 ] && [ "$count" -gt 20 ]; then
  ok "ldd $server in the image root: $count libraries, none missing"
else
  bad "ldd $server in the image root: $missing of $count not found:"
  in_root 0 /usr/bin/ldd "$server" | grep "not found"
fi
model_dir=/usr/local/share/factlens/models/gpt2-facts-tiny
if [ -f "$rootfs$model_dir/config.json" ] && [ -f "$rootfs$model_dir/model.safetensors" ]; then
  ok "default model $model_dir present"
else
  bad "default model $model_dir missing"
fi
read -r -a entry_argv <<<"$entrypoint"
help=$(in_root "$user" "${entry_argv[@]}" --help 2>&1); code=$?
if [ "$code" -eq 0 ] && grep -q -- "--listen" <<<"$help" && grep -q "$model_dir" <<<"$help"; then
  ok "entrypoint --help as user $user: exit 0, lists --listen and the default model"
else
  bad "entrypoint --help as user $user: exit $code"; echo "$help" | tail -5
fi

# 2. The image running, called by the Python client.
call_client() {  # call_client GRPC_ADDRESS
  if [ -z "$pythonpath" ]; then bad "no Python client package (build/python): scripts/build.sh python_client"; return; fi
  local t0 out
  t0=$(now_ms)
  out=$(PYTHONPATH="$pythonpath" /usr/bin/python3 - "$1" <<'PY' 2>&1
import sys
from factlens import Client
with Client(sys.argv[1], timeout=120) as c:
    print("models:", [m.name for m in c.list_models()])
    report = c.locate_fact("The capital of France is", " Paris")
    print("LocateFact:", repr(report))
PY
  )
  local code=$?
  echo "$out" | sed 's/^/    /'
  if [ "$code" -eq 0 ] && grep -q "gpt2-facts-tiny" <<<"$out"; then
    ok "Python client ListModels + LocateFact against $1 in $(( $(now_ms) - t0 )) ms"
  else
    bad "Python client against $1: exit $code"
  fi
}
wait_ready() {  # wait_ready HTTP_BASE SECONDS
  local deadline=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1/readyz")" = 200 ] && return 0
    sleep 0.2
  done
  return 1
}

name="factlens-check-$$"
t0=$(now_ms)
if err=$(podman run -d --name "$name" "${oci_opts[@]}" -p 127.0.0.1::50051 -p 127.0.0.1::9090 "$image" 2>&1); then
  grpc=$(podman port "$name" 50051/tcp); http=$(podman port "$name" 9090/tcp)
  if wait_ready "http://$http" 120; then
    ok "podman run $image: /readyz 200 after $(( $(now_ms) - t0 )) ms (gRPC $grpc, HTTP $http)"
    call_client "$grpc"
    metrics=$(curl -s "http://$http/metrics")
    if grep -q '^factlens_requests_total{rpc="LocateFact",model="gpt2-facts-tiny",code="OK"} 1$' <<<"$metrics"; then
      ok "/metrics counts the LocateFact"
    else
      bad "/metrics lacks the LocateFact"
    fi
  else
    bad "podman run $image: not ready in 120 s"; podman logs "$name" | tail -20
  fi
  podman stop -t 40 "$name" >/dev/null
  code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  [ "$code" = 0 ] && ok "podman stop: drained and exited 0" || { bad "podman stop: exit $code"; podman logs "$name" | tail -5; }
  podman rm -f "$name" >/dev/null
else
  echo "check_image: podman cannot start a container here:"
  echo "$err" | sed 's/^/    /'
  podman rm -f "$name" >/dev/null 2>&1
  bad "podman run (the chroot run below stands in for it)"
  # The same entrypoint from the image root, in its own mount and PID namespaces, on free ports.
  ports=$(/usr/bin/python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]; print(*[x.getsockname()[1] for x in s])')
  read -r gport hport <<<"$ports"
  (in_root "$user" "$server" --listen=127.0.0.1:$gport --http_listen=127.0.0.1:$hport) &
  pid=$!  # unshare; its child, PID 1 of the new PID namespace, is the server
  if wait_ready "http://127.0.0.1:$hport" 120; then
    ok "chroot run: /readyz 200 after $(( $(now_ms) - t0 )) ms"
    call_client "127.0.0.1:$gport"
  else
    bad "chroot run: not ready in 120 s"
  fi
  server_pid=$(ps -o pid= --ppid "$pid" | tr -d ' ')
  [ -n "$server_pid" ] && kill -TERM "$server_pid"
  wait "$pid"; code=$?
  [ "$code" = 0 ] && ok "chroot run: SIGTERM, drained and exited 0" || bad "chroot run: exit $code"
fi

echo "check_image: $failures failure(s)"
[ "$failures" -eq 0 ]
