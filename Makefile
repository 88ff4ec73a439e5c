# The platform's commands. `make run` and `make test` need nothing installed beforehand but Rust: scripts/deps.sh
# finds or starts PostgreSQL, NATS (JetStream) and Redis, installing them from Debian's packages when run as root.
# The .proto files are compiled by protox (pure Rust), so no protoc is needed.

# Builds go outside the work tree, so a fresh clone (as in CI) reuses what an earlier build compiled.
CARGO_TARGET_DIR ?= $(HOME)/.cache/pension/target
export CARGO_TARGET_DIR

.PHONY: help deps run test bench lint fmt build clean-deps

help:
	@echo "make run    start the whole platform locally and print where to open it"
	@echo "make test   run every test against real PostgreSQL, NATS and Redis"
	@echo "make bench  the benchmarks, in release mode: rendering the printed forms, the dashboards at the province's size"
	@echo "make lint   rustfmt and clippy, warnings as errors"
	@echo "make deps   only make sure PostgreSQL, NATS and Redis are up"

deps:
	@scripts/deps.sh start

build:
	cargo build --bin pension

run: deps build
	@PENSION_BIN=$(CARGO_TARGET_DIR)/debug/pension scripts/run.sh

test: deps
	@scripts/test.sh

bench: deps
	cargo bench -p printing --bench render
	cargo bench -p pension --bench dashboard

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features -- -D warnings

fmt:
	cargo fmt --all

clean-deps:
	@scripts/deps.sh stop
