#!/usr/bin/env bash
# The test command: build every crate (the host, the plugins) and run every test. The end-to-end
# tests start the built `fusion-host` with the built plugins, so the build comes first.
#
# One build of every target (`--all-targets`) gives the binaries, plugins and test binaries the
# same dependency features, so the tests reuse what the build made instead of compiling a second
# copy; incremental state is off, as nothing here is rebuilt (it only takes disk).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo build --workspace --all-targets --locked
cargo test --workspace --locked
