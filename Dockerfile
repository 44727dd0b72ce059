# syntax=docker/dockerfile:1
#
# Flotilla image: one image, three binaries (flotilla-producer, flotilla-worker, flotilla CLI).
# The container's command picks the role; the default is the producer.
#
#   docker build -t flotilla:dev .
#   docker run --rm flotilla:dev flotilla-worker --help
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) -> builder (cook the
# dependencies in their own cached layer, then build the workspace) -> runtime (slim, non-root).

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
# The crates only need a C compiler (aws-lc-sys builds with cc), which the rust image has.
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /src

# Computes recipe.json: the manifests and lock file, nothing that changes with the source.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
# The test-only `chaos` binary (crate flotilla-tests) is not built.
RUN cargo build --release --locked -p flotilla-producer -p flotilla-worker --bins \
 && mkdir -p /out \
 && cp target/release/flotilla-producer target/release/flotilla-worker target/release/flotilla /out/

# Runtime: Debian slim rather than distroless so that compose healthchecks (curl) and the
# Kubernetes `preStop: exec sleep` hook work without a shell-less workaround.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: https webhooks (reqwest/rustls verify against the system trust store);
# curl: container healthchecks only.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 flotilla \
 && useradd --system --uid 10001 --gid flotilla --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin flotilla \
 && mkdir -p /etc/flotilla
COPY --from=builder /out/ /usr/local/bin/

LABEL org.opencontainers.image.title="flotilla" \
      org.opencontainers.image.description="Flotilla job queue for AI inference: producer, worker and CLI" \
      org.opencontainers.image.licenses="Apache-2.0"

# Numeric ids so that Kubernetes `runAsNonRoot` can verify them. Nothing is written at run
# time: the root filesystem can be mounted read-only.
USER 10001:10001
# producer API, worker admin (/healthz, /readyz), demo webhook receiver
EXPOSE 8080 9090 8099
# FLOTILLA_CONFIG is set by compose / Kubernetes, which mount the TOML at /etc/flotilla/.
CMD ["flotilla-producer"]
