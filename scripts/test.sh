#!/usr/bin/env bash
# `make test`: services, build, then the whole test suite against the real RabbitMQ and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# The end-to-end tests spawn the binaries from target/: build them first.
cargo build --workspace --locked
# Doc examples first, so the runner's summary below is the last thing printed.
cargo test --doc --workspace --locked --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "cargo-nextest not found; using cargo test (cargo install cargo-nextest for the nicer runner)" >&2
  cargo test --workspace --locked --no-fail-fast
fi
