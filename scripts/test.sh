#!/usr/bin/env bash
# `make test`: every test of the workspace, with cargo-nextest when it is installed (each test in its own process,
# all binaries in parallel) and `cargo test` otherwise.
set -euo pipefail

# grpcurl, when scripts/deps.sh installed it privately, for the test that runs docs/agency-api.md.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$PATH:$root/.deps/tools/bin"

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --all-features --no-fail-fast --failure-output final "$@"
fi
exec cargo test --workspace --all-features --no-fail-fast "$@"
