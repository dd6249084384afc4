# Multi-stage: build with the full Rust toolchain, run from a small Debian image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY pipeline ./pipeline
# A workspace member (test-only CQL server); not built into the image.
COPY cql-test-server ./cql-test-server
RUN cargo build --release --locked -p pipeline

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 pipeline \
 && mkdir /data && chown pipeline /data
COPY --from=build /src/target/release/pipeline /usr/local/bin/pipeline
USER pipeline
ENV PIPELINE_DATA_DIR=/data
VOLUME ["/data"]
ENTRYPOINT ["pipeline"]
CMD ["--help"]
