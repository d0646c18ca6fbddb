# factlens_server image: a build stage with the full toolchain (Debian's packages, NVIDIA's CUDA 13.0
# toolkit, PyPI's torch 2.11.0 whose libtorch is a CUDA build), a runtime stage with only the shared
# libraries the server loads (scripts/setup.sh --profile runtime: Debian's runtime packages, the torch
# wheel and the CUDA libraries as PyPI wheels, no toolkit; checked against the binary by
# tests/deploy/test_deploy.py) and the build's install tree (cmake --install, prefix /usr/local):
# bin/factlens_{server,locate,predict} and the demo models in share/factlens/models/. The binaries
# find the demo model relative to their own path, so without --model (also when `docker run`
# arguments replace the CMD) the server serves gpt2-facts-tiny; tests/deploy/test_install.py checks
# that layout. The same image serves on CPU and, on hosts with the NVIDIA Container Toolkit, on GPUs
# (--model NAME=DIR,device=cuda).
#
#   docker build -t factlens:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 factlens:0.1.0            # serves the demo model
#   docker run --rm -p 50051:50051 -p 9090:9090 factlens:0.1.0 --threads=2  # the demo model too
#   docker run --rm -p 50051:50051 -p 9090:9090 -v /models/gpt2:/models/gpt2:ro factlens:0.1.0 \
#       --model gpt2=/models/gpt2
#
# Not built yet on the project's machines (no Docker engine there), so the NVIDIA package names below
# are unverified: see deploy/README.md.

FROM debian:12 AS build
ENV DEBIAN_FRONTEND=noninteractive FACTLENS_VENV=/opt/factlens/venv
# NVIDIA's CUDA 13.0 compiler and headers (libtorch's CMake config needs them).
ADD https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb /tmp/
RUN dpkg -i /tmp/cuda-keyring_1.1-1_all.deb && apt-get update -q \
    && apt-get install -y -q --no-install-recommends cuda-nvcc-13-0 cuda-cudart-dev-13-0 \
       libcublas-dev-13-0 libcusparse-dev-13-0 libcufft-dev-13-0 libcurand-dev-13-0 \
       libcusolver-dev-13-0 cuda-nvrtc-dev-13-0 cuda-nvtx-13-0 cuda-cupti-dev-13-0 \
       libnvjitlink-dev-13-0 libcudnn9-dev-cuda-13 libnccl-dev \
    && rm -rf /var/lib/apt/lists/*
COPY scripts/setup.sh /src/scripts/setup.sh
RUN /src/scripts/setup.sh --profile build && rm -rf /var/lib/apt/lists/*
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
