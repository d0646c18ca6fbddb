#!/usr/bin/env bash
# Builds the factlens images without a registry (issue 14): debootstraps a Debian 12 base from
# deb.debian.org, imports it as localhost/debian:12 (the Dockerfile's `FROM debian:12`), and builds
# the Dockerfile's two targets with buildah:
#   localhost/factlens:0.1.0      (--target runtime, the CPU image)
#   localhost/factlens-gpu:0.1.0  (--target gpu: the same layers plus the NVIDIA Container Toolkit's
#                                  environment)
# Then scripts/check_image.sh checks the CPU image (podman run + the Python client, or, where
# podman cannot start containers, chroot checks of the image's root file system).
#
#   scripts/build_images.sh                  # the working tree, as it is
#   scripts/build_images.sh --commit HEAD    # the sources of a commit, with this checkout's image
#                                            # recipe (Dockerfile, .dockerignore, scripts/setup.sh)
#   scripts/build_images.sh --no-check       # build only
#
# Needs root (or sudo), debootstrap, buildah and podman (apt-get install debootstrap buildah podman),
# ~25 GB free under FACTLENS_IMAGE_WORK (default /var/tmp/factlens-images), and network access to
# deb.debian.org and PyPI (nothing else: the CUDA toolkit and libraries come from PyPI wheels).
# Every heavy step runs under `nice -n 19`; the build stage compiles with `nproc` jobs
# (scripts/build.sh). Buildah's layer cache makes a second run after a source change rebuild only
# from `COPY . /src` on. Times and sizes go to stdout and to $FACTLENS_IMAGE_WORK/build-images.log.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${FACTLENS_IMAGE_WORK:-/var/tmp/factlens-images}"
tag="${FACTLENS_IMAGE_TAG:-0.1.0}"
commit=""
check=1
while [ $# -gt 0 ]; do
  case "$1" in
    --commit) commit="${2:?--commit needs a revision}"; shift 2 ;;
    --no-check) check=0; shift ;;
    *) echo "build_images: unknown argument $1" >&2; exit 2 ;;
  esac
done
SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo -E); fi
for tool in debootstrap buildah podman; do
  command -v "$tool" >/dev/null || { echo "build_images: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
# OCI runtime options for RUN steps and containers. The defaults suit hosts like the project's
# machine: crun refuses its cgroup v1/v2 hybrid layout ("cgroups in hybrid mode not supported, drop
# all controllers from cgroupv2"), so runc; and without CAP_SYS_RESOURCE, runc cannot apply podman's
# default rlimits ("error setting rlimit type 7: operation not permitted"), so explicit lower ones.
# Set FACTLENS_OCI_OPTS= (empty) on an ordinary host.
read -r -a oci_opts <<<"${FACTLENS_OCI_OPTS-"--runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096"}"
mkdir -p "$work"
log="$work/build-images.log"
# A host whose HTTPS goes through an intercepting proxy names the proxy's CA in /etc/pip.conf
# (`cert = ...`); pip inside the build then needs that CA too. Mounted for RUN steps only (buildah's
# build-time volumes), never part of an image.
# ccache's directory on the host, mounted into the build's RUN steps: a rebuild after a change in an
# earlier layer (scripts/setup.sh) recompiles from the cache.
mkdir -p "$work/ccache"
build_volumes=(-v "$work/ccache:/root/.cache/ccache")
host_cert="$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' /etc/pip.conf 2>/dev/null | head -1)"
if [ -n "$host_cert" ] && [ -f "$host_cert" ]; then
  printf '[global]\ncert = /run/factlens-host-ca.crt\n' > "$work/pip.conf"
  build_volumes+=(-v "$work/pip.conf:/etc/pip.conf:ro" -v "$host_cert:/run/factlens-host-ca.crt:ro")
fi
say() { echo "build_images: $*" | tee -a "$log"; }
now() { date +%s; }

# 1. The base: Debian 12 minbase with the same suites as a stock debian:12 image (updates and
#    security), imported as localhost/debian:12 once.
if ! "${SUDO[@]}" podman image exists localhost/debian:12; then
  t0=$(now)
  rootfs="$work/rootfs"
  if [ ! -x "$rootfs/usr/bin/apt-get" ]; then
    "${SUDO[@]}" rm -rf "$rootfs"
    "${SUDO[@]}" nice -n 19 debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian
  fi
  "${SUDO[@]}" tee "$rootfs/etc/apt/sources.list" >/dev/null <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  "${SUDO[@]}" chroot "$rootfs" apt-get clean
  "${SUDO[@]}" rm -rf "$rootfs/var/lib/apt/lists/"*
  "${SUDO[@]}" tar -C "$rootfs" --numeric-owner -c . \
    | "${SUDO[@]}" podman import --change 'CMD ["bash"]' - localhost/debian:12 >/dev/null
  say "base localhost/debian:12 (debootstrap --variant=minbase bookworm) in $(( $(now) - t0 )) s"
fi

# 2. The build context: the working tree (what git tracks or would track), or a commit's sources
#    with this checkout's image recipe on top.
context="$work/context"
"${SUDO[@]}" rm -rf "$context"
mkdir -p "$context"
if [ -n "$commit" ]; then
  git -C "$root" archive "$commit" | tar -x -C "$context"
  for recipe in Dockerfile .dockerignore scripts/setup.sh; do cp "$root/$recipe" "$context/$recipe"; done
  source_desc="$(git -C "$root" rev-parse --short "$commit") + this checkout's Dockerfile and scripts/setup.sh"
else
  (cd "$root" && git ls-files -z --cached --others --exclude-standard \
     | while IFS= read -r -d '' f; do if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi; done \
     | xargs -0 tar -c --no-recursion) | tar -x -C "$context"
  source_desc="the working tree of $root"
fi
say "context: $source_desc"

# 3. The images. The gpu target reuses the runtime target's layers.
build() {  # build TARGET IMAGE
  local t0 size
  t0=$(now)
  "${SUDO[@]}" nice -n 19 buildah bud "${oci_opts[@]}" "${build_volumes[@]}" --layers --pull=never --target "$1" -t "$2" -f "$context/Dockerfile" \
    "$context" 2>&1 | tee -a "$log"
  size=$("${SUDO[@]}" podman image inspect --format '{{.Size}}' "$2")
  say "$2 (--target $1) built in $(( $(now) - t0 )) s; $(( size / 1000000 )) MB"
}
build runtime "localhost/factlens:$tag"
build gpu "localhost/factlens-gpu:$tag"
"${SUDO[@]}" podman images --filter reference='localhost/factlens*' | tee -a "$log"

# 4. Both images checked, started and called (scripts/check_image.sh; on a host without a GPU the
#    GPU image runs on the CPU, as the CPU image does).
if [ "$check" = 1 ]; then
  for image in "localhost/factlens:$tag" "localhost/factlens-gpu:$tag"; do
    FACTLENS_OCI_OPTS="${oci_opts[*]}" "$root/scripts/check_image.sh" "$image" 2>&1 | tee -a "$log"
  done
fi
