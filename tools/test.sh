#!/usr/bin/env bash
# The test command: build every crate (the host, the plugins) and run every test. The end-to-end
# tests start the built `fusion-host` with the built plugins, so the build comes first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --locked
cargo test --workspace --locked
