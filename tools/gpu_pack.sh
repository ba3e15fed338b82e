#!/usr/bin/env bash
# Build what tools/gpu_bench.sh runs on a GPU machine that has no Rust toolchain: the release
# host and plugins, the bench_clip example and the GPU test binaries, stripped, in one tarball.
#
#   bash tools/gpu_pack.sh OUT.tar.xz
#
# Copy OUT.tar.xz and this checkout to the GPU machine (same CPU architecture, glibc at least
# the build machine's), then run tools/gpu_bench.sh there.
set -euo pipefail
out=${1:?usage: tools/gpu_pack.sh OUT.tar.xz}
cd "$(dirname "$0")/.."
cargo build --release --workspace
cargo build --release -p fusion-clip --example bench_clip
stage=$(mktemp -d)
mkdir -p "$stage/dev/tests"
# test binary name -> the crate folder it runs in (tests find their data from there)
cargo test --release --no-run -p fusion-kernels -p fusion-gpu -p fusion-merging -p fusion-clip 2>&1 \
    | sed -n 's/.*Executable tests\/\(kernels\|runtime\|merging\/main\|gpu_golden\|gpu_kernels\)\.rs (\(.*\))/\2/p' \
    | while read -r bin; do n=$(basename "$bin"); strip -o "$stage/dev/tests/${n%-*}" "$bin"; done
strip -o "$stage/dev/fusion-host" target/release/fusion-host
for so in target/release/libfusion_*.so; do strip -o "$stage/dev/$(basename "$so")" "$so"; done
strip -o "$stage/dev/bench_clip" target/release/examples/bench_clip
tar cf - -C "$stage" dev | xz -T0 -6 > "$out"
rm -rf "$stage"
ls -l "$out"
