#!/usr/bin/env bash
# Make the Dockerfile's base images locally, under the names it uses, when no registry is
# reachable (these machines): `debian:bookworm-slim` from debootstrap (Debian's own mirror),
# and `rust:1.95-bookworm` from it plus Debian's C toolchain and this machine's Rust
# toolchain (the one rustup installed). With a registry, `docker build` pulls the real ones
# instead and this script is not needed. Each image is made only when missing.
set -euo pipefail
DOCKER=${DOCKER:-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${BASE_IMAGES_WORK:-/var/tmp/pipeline-base-images}
have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

if ! have debian:bookworm-slim; then
  echo "making debian:bookworm-slim with debootstrap from $MIRROR"
  rm -rf "$WORK/slim" && mkdir -p "$WORK"
  debootstrap --variant=minbase bookworm "$WORK/slim" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  rm -rf "$WORK"/slim/var/cache/apt/archives/*.deb "$WORK"/slim/var/lib/apt/lists/*
  tar -C "$WORK/slim" -c . | "$DOCKER" import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
fi

if ! have rust:1.95-bookworm; then
  toolchain=$(rustc --print sysroot)
  echo "making rust:1.95-bookworm from debian:bookworm-slim and $toolchain"
  ctx="$WORK/rust-context" && rm -rf "$ctx" && mkdir -p "$ctx/toolchain" "$ctx/ca"
  # This machine's own certificate authorities (a TLS-intercepting egress proxy signs with
  # them), so cargo in the builder reaches crates.io as cargo on the host does.
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  # The toolchain without its documentation (800 MB of HTML).
  (cd "$toolchain" && tar -c --exclude=./share/doc .) | tar -C "$ctx/toolchain" -x
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc g++ libc6-dev make pkg-config perl \
 && rm -rf /var/lib/apt/lists/*
COPY ca /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
COPY toolchain /usr/local/rustup/toolchains/1.95-x86_64-unknown-linux-gnu
RUN mkdir -p /usr/local/cargo/bin \
 && for b in cargo rustc rustdoc; do ln -s /usr/local/rustup/toolchains/1.95-x86_64-unknown-linux-gnu/bin/$b /usr/local/cargo/bin/$b; done
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DOCKERFILE
  DOCKER_BUILDKIT=1 "$DOCKER" build --network host -t rust:1.95-bookworm "$ctx" >"$WORK/rust-image.log" 2>&1 \
    || { tail -30 "$WORK/rust-image.log"; exit 1; }
  rm -rf "$ctx"
fi
echo "base images: $("$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}' | grep -E '^(debian:bookworm-slim|rust:1.95-bookworm)$' | tr '\n' ' ')"
