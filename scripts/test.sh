#!/usr/bin/env bash
# `make test`: every test of the workspace, with cargo-nextest when it is installed (each test in its own process,
# all binaries in parallel) and `cargo test` otherwise.
set -euo pipefail

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --all-features --no-fail-fast --failure-output final "$@"
fi
exec cargo test --workspace --all-features --no-fail-fast "$@"
