# Flotilla — the two commands of the README, and a few helpers.
.PHONY: demo test chaos drill bench validate-deploy services lint fmt

## Run the main job on the bundled real data with the built-in models.
demo:
	scripts/demo.sh

## Start (or install) RabbitMQ and Redis if needed, then run the whole test suite.
test:
	scripts/test.sh

## Fault injection: 2000 jobs while workers, the broker and Redis are killed and restarted.
chaos:
	scripts/services.sh
	cargo build --workspace --locked
	target/debug/chaos

## A rolling update of 3 workers under 1000 jobs: every job once, every worker exits 0.
drill:
	scripts/services.sh
	cargo build --workspace --locked
	target/debug/drill

## Benchmark (release build): the fleet against the raw broker + Redis ceiling, 3 interleaved
## rounds; writes target/bench/report.json and report.md. Flags: make bench BENCH_ARGS='--help'.
bench:
	scripts/services.sh
	cargo build --release --locked -p flotilla-bench -p flotilla-producer -p flotilla-worker
	target/release/flotilla-bench $(BENCH_ARGS)

## Static checks of the Dockerfile's companions: docker-compose config, kustomize overlays
## against the Kubernetes schemas.
validate-deploy:
	scripts/validate-deploy.sh

## Only make sure RabbitMQ and Redis answer.
services:
	scripts/services.sh

## Formatting and lints, as CI checks them.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all
