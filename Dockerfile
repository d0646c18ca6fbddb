# factlens_server images, one Dockerfile with two targets:
#   runtime (the CPU image, also the base of the GPU image) and gpu (the same libraries and binaries,
#   plus the NVIDIA Container Toolkit's environment, so that `--gpus`/`nvidia.com/gpu` hosts inject
#   the driver). libtorch is PyPI's torch 2.11.0, a CUDA 13.0 build (the project builds only against
#   it, docs/gpu.md), so both images carry the CUDA libraries as PyPI wheels; a CPU-only libtorch is
#   not on PyPI. The CPU image runs on any x86-64 host; on a GPU host it serves
#   --model NAME=DIR,device=cuda as well once the toolkit injects the driver.
#
# Stages: a build stage with the full toolchain (Debian's packages; the CUDA 13.0 toolkit assembled
# from NVIDIA's PyPI wheels by scripts/setup.sh, since NVIDIA's apt repository is not reachable from
# every build host; PyPI's torch 2.11.0), and a runtime stage with only the shared libraries the
# server loads (scripts/setup.sh --profile runtime: Debian's runtime packages, the torch wheel and
# the CUDA libraries as PyPI wheels, no toolkit; checked against the binary by
# tests/deploy/test_deploy.py) and the build's install tree (cmake --install, prefix /usr/local):
# bin/factlens_{server,locate,predict} and the demo models in share/factlens/models/. The binaries
# find the demo model relative to their own path, so without --model (also when `docker run`
# arguments replace the CMD) the server serves gpt2-facts-tiny; tests/deploy/test_install.py checks
# that layout.
#
#   docker build --target runtime -t factlens:0.1.0 .
#   docker build --target gpu -t factlens-gpu:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 factlens:0.1.0            # serves the demo model
#   docker run --rm -p 50051:50051 -p 9090:9090 factlens:0.1.0 --threads=2  # the demo model too
#   docker run --rm --gpus all -p 50051:50051 -p 9090:9090 -v /models/gpt2:/models/gpt2:ro \
#       factlens-gpu:0.1.0 --model gpt2=/models/gpt2,device=cuda
#
# scripts/build_images.sh builds both with buildah from a debootstrapped Debian 12 base (no
# registry needed); deploy/README.md has its measured times and sizes.

FROM debian:12 AS build
ENV DEBIAN_FRONTEND=noninteractive FACTLENS_VENV=/opt/factlens/venv
COPY scripts/setup.sh /src/scripts/setup.sh
# Debian's build packages, the CUDA 13.0 toolkit from PyPI wheels (/usr/local/cuda-13.0), torch.
RUN FACTLENS_CUDA_FROM_WHEELS=1 /src/scripts/setup.sh --profile build && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN FACTLENS_BUILD_DIR=/build /src/scripts/build.sh factlens_server factlens_locate factlens_predict \
    && DESTDIR=/out cmake --install /build --prefix /usr/local

FROM debian:12 AS runtime
# The installed binaries' RUNPATH names the venv's torch/lib (the same path in both stages); the CUDA
# libraries they link directly (cudart) are in the wheels' folder, which only libtorch's own RUNPATH
# names.
ENV DEBIAN_FRONTEND=noninteractive FACTLENS_VENV=/opt/factlens/venv \
    LD_LIBRARY_PATH=/opt/factlens/venv/lib/python3.11/site-packages/nvidia/cu13/lib
COPY scripts/setup.sh /tmp/setup.sh
RUN /tmp/setup.sh --profile runtime && rm -rf /var/lib/apt/lists/* /tmp/setup.sh \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin factlens
# The install tree: /usr/local/bin/factlens_*, /usr/local/share/factlens/models/*.
COPY --from=build /out/ /
USER 10001
# gRPC API, then HTTP /metrics /healthz /readyz.
EXPOSE 50051 9090
# No CMD: without --model the server serves the installed demo model (gpt2-facts-tiny), whatever
# other arguments `docker run` passes.
ENTRYPOINT ["/usr/local/bin/factlens_server", "--listen=0.0.0.0:50051", "--http_listen=0.0.0.0:9090"]

# The GPU image: the runtime stage plus what the NVIDIA Container Toolkit reads to mount the driver
# (libcuda) and the devices into the container; Kubernetes' device plugin sets the visible devices
# per container from its nvidia.com/gpu limit.
FROM runtime AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
