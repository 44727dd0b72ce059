# Flotilla — the two commands of the README, and a few helpers.
.PHONY: demo test services lint fmt

## Run the main job on the bundled real data with the built-in models.
demo:
	scripts/demo.sh

## Start (or install) RabbitMQ and Redis if needed, then run the whole test suite.
test:
	scripts/test.sh

## Only make sure RabbitMQ and Redis answer.
services:
	scripts/services.sh

## Formatting and lints, as CI checks them.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all
