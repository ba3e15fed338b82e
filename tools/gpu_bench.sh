#!/usr/bin/env bash
# On a machine with a GPU (Vulkan driver installed), in a checkout of this repo: the GPU test
# binaries with FUSION_DEVICE=gpu, the CLIP throughput benchmark beside PyTorch on CUDA, and the
# merge benchmark beside FusionBench and mergekit (CPU and CUDA), then TIES and task arithmetic
# with and without the device cache. This is how BENCHMARKS.md's H100 sections were made.
#
#   bash tools/gpu_bench.sh PACK.tar.xz OUTDIR [SITE]
#
# PACK.tar.xz comes from tools/gpu_pack.sh. SITE is a folder with fusion-bench and mergekit
# installed (pip install --target SITE); torch, transformers, numpy and safetensors must be
# importable by python3.
set -uo pipefail
pack=${1:?usage: tools/gpu_bench.sh PACK.tar.xz OUTDIR [SITE]}
out=${2:?usage: tools/gpu_bench.sh PACK.tar.xz OUTDIR [SITE]}
site=${3:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" /tmp/gpu-pack
tar xJf "$pack" -C /tmp/gpu-pack
D=/tmp/gpu-pack/dev
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
"$D/fusion-host" devices | tee "$out/devices.txt"
# Test binaries look for their data under the path they were built at (CARGO_MANIFEST_DIR):
# put the checkout there, or link it (the H100 runs did `ln -s "$PWD" /work/main`).
for t in kernels:shaders runtime:host/gpu merging:plugins/merging gpu_golden:plugins/lib/clip gpu_kernels:plugins/lib/clip; do
    echo "== ${t%%:*}"
    (cd "$repo/${t#*:}" && FUSION_DEVICE=gpu "$D/tests/${t%%:*}" 2>&1 | grep -E "test result|FAILED|panicked")
done | tee "$out/gpu-tests.txt"
cp "$repo/BENCHMARKS.md" "$out/clip.md"
python3 "$repo/tools/bench_clip.py" --device gpu --bin "$D/bench_clip" --skip-build \
    --benchmarks "$out/clip.md" --batches 1,32,128 --iters 20,10,5 --warmup 2 > "$out/clip-log.txt" 2>&1
grep "^|" "$out/clip-log.txt"
tools=fusion-host
if [ -n "$site" ]; then
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    tools=fusion-host,fusionbench,mergekit-pytorch,mergekit-pytorch-cuda
fi
export FUSION_CONFIG_PATH=$repo/configs PYTHONUNBUFFERED=1
python3 "$repo/tools/bench_merge.py" --fusion-host "$D/fusion-host" --fh-device gpu --work /tmp/fb \
    --out "$out/merge.md" ${site:+--venv "$site"} --tools "$tools" --mem-limit-gib 100 --timeout 300 \
    > "$out/merge-log.txt" 2>&1
grep -- "-> rc" "$out/merge-log.txt"
cd /tmp/fb/full || exit 1
for m in ties_merging task_arithmetic ties_merging task_arithmetic; do
    for cache in 0 auto; do
        FUSION_DEVICE_CACHE=$cache /usr/bin/time -f "$m FUSION_DEVICE_CACHE=$cache: %e s, peak RSS %M KB" \
            "$D/fusion-host" --device gpu --config-path /tmp/fb/full/configs/fusion-host modelpool=bench_ta8 \
            method=$m taskpool=dummy merged_model_save_path=/tmp/fb/x-$cache report_save_path=null \
            > "/tmp/fb/log-$m-$cache.txt" 2>&1
        tail -1 "/tmp/fb/log-$m-$cache.txt"
    done
done | tee "$out/cache-timings.txt"
