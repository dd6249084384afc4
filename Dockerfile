# The pipeline image: `docker run IMAGE <stage>`. Built in two stages: the release binary in
# the Rust image, then a slim Debian runtime with tini as PID 1.
#
# Dependency layer: BuildKit cache mounts keep cargo's registry and target dir between builds
# (in the builder's cache, outside any layer), so a build after a source change compiles only
# our crates. Build with BuildKit: `DOCKER_BUILDKIT=1 docker build -t pipeline .` (the default
# in Docker 23+). On machines without a registry, `docker/base-images.sh` makes the two base
# images locally under these same names (see docs/docker.md).
FROM rust:1.95-bookworm AS build
# The cargo profile: release for the image users run. CI builds the same Dockerfile with
# `--build-arg CARGO_PROFILE=dev` to keep a cold CI run short (docs/docker.md).
ARG CARGO_PROFILE=release
# The commit, for `pipeline --version` (the context has no .git).
ARG REVISION=unknown
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY pipeline ./pipeline
# A workspace member (the test-only CQL server): needed for the workspace, not in the image.
COPY cql-test-server ./cql-test-server
# The serving schema, compiled into the binary (`include_str!`).
COPY scylla ./scylla
RUN --mount=type=cache,id=pipeline-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=pipeline-target,target=/src/target \
    PIPELINE_GIT_COMMIT="$REVISION" cargo build --profile "$CARGO_PROFILE" --locked -p pipeline \
 && cp "target/$([ "$CARGO_PROFILE" = dev ] && echo debug || echo "$CARGO_PROFILE")/pipeline" /usr/local/bin/pipeline

FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CARGO_PROFILE=release
LABEL org.opencontainers.image.title="pipeline" \
      org.opencontainers.image.description="Lakehouse ETL: transactions -> Delta Lake -> daily aggregates and profiles -> ScyllaDB" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.github.pipeline.cargo-profile="${CARGO_PROFILE}"
# tini: PID 1 that forwards signals and reaps, so `docker stop` (SIGTERM) reaches the stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data pipeline \
 && mkdir /data && chown pipeline /data
COPY --from=build /usr/local/bin/pipeline /usr/local/bin/pipeline
COPY docker/entrypoint.sh /usr/local/bin/pipeline-entrypoint
USER pipeline
ENV PIPELINE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 9184
# The follow service's metrics endpoint (PIPELINE_METRICS_ADDR); any other container, which
# serves nothing, is healthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD ["pipeline", "health"]
ENTRYPOINT ["tini", "--", "pipeline-entrypoint"]
CMD ["--help"]
