# factlens_server image (CPU): a build stage with the full toolchain, a slim runtime stage with only
# the shared libraries the server loads (scripts/setup.sh --profile runtime, checked against the
# binary by tests/deploy/test_deploy.py) and the embedded demo model.
#
#   docker build -t factlens:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 factlens:0.1.0            # serves the demo model
#   docker run --rm -p 50051:50051 -p 9090:9090 -v /models/gpt2:/models/gpt2:ro factlens:0.1.0 \
#       --model gpt2=/models/gpt2
#
# GPU images need a CUDA libtorch, which Debian does not package; they are not built yet.

FROM debian:12 AS build
ENV DEBIAN_FRONTEND=noninteractive
COPY scripts/setup.sh /src/scripts/setup.sh
RUN /src/scripts/setup.sh --profile build && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN FACTLENS_BUILD_DIR=/build /src/scripts/build.sh factlens_server \
    && install -D -m 0755 /build/server/factlens_server /out/usr/local/bin/factlens_server \
    && mkdir -p /out/opt/factlens/models \
    && cp -r /src/models/gpt2-facts-tiny /out/opt/factlens/models/

FROM debian:12 AS runtime
ENV DEBIAN_FRONTEND=noninteractive
COPY scripts/setup.sh /tmp/setup.sh
RUN /tmp/setup.sh --profile runtime && rm -rf /var/lib/apt/lists/* /tmp/setup.sh \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin factlens
COPY --from=build /out/ /
USER 10001
# gRPC API, then HTTP /metrics /healthz /readyz.
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/factlens_server", "--listen=0.0.0.0:50051", "--http_listen=0.0.0.0:9090"]
CMD ["--model=demo=/opt/factlens/models/gpt2-facts-tiny"]
