#!/usr/bin/env python3
"""fusion-host mergekit on the compute device against the CPU path, same binary, same configs.

    python3 tools/bench_mergekit_device.py [--work /tmp/mkdev] [--rounds 2]
        [--mergekit-cmd target/release/fusion-host-mergekit] [--device vulkan]
        [--methods linear,ties,dare_ties,slerp]

Generates once, under WORK/models, a base and two fine-tunes of a ~100 M-parameter Llama
(hidden 640, 12 layers, intermediate 1792, vocab 32000; bfloat16, sharded, as
tools/bench_mergekit.py makes its 1.1 B ones, whose generator this reuses), then runs each
method's config (bench_mergekit.py's, plus DARE-TIES) with `--device cpu` and with `--device
DEVICE`, alternating the order round by round, under `/usr/bin/time -v` (wall time, peak RSS).
The two outputs are compared tensor by tensor (max abs difference, share of differing entries).
Results: a table on stdout and WORK/results.json.

Python only drives the tool and makes the inputs: nothing here is needed by fusion-host.
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_mergekit as bm  # noqa: E402

bm.HIDDEN, bm.LAYERS, bm.INTER, bm.VOCAB, bm.HEADS, bm.KV_HEADS = 640, 12, 1792, 32000, 10, 10

CONFIGS = dict(bm.CONFIGS)
CONFIGS["dare_ties"] = """merge_method: dare_ties
base_model: {m}/base
dtype: bfloat16
models:
  - model: {m}/ft_a
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {m}/ft_b
    parameters: {{weight: 0.5, density: 0.5}}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/mkdev")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mergekit-cmd", default="target/release/fusion-host-mergekit")
    ap.add_argument("--device", default="vulkan")
    ap.add_argument("--methods", default="linear,ties,dare_ties,slerp")
    args = ap.parse_args()
    cmd = os.path.abspath(args.mergekit_cmd)
    models = os.path.join(args.work, "models")
    os.makedirs(models, exist_ok=True)
    bm.generate(models, shard_bytes=100_000_000)
    params = sum(bm._numel(s) for _, s in bm.tensor_shapes())
    print(f"{params / 1e6:.0f} M parameters per model; load average {os.getloadavg()}", flush=True)
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.5.mlp.down_proj.weight", "model.layers.11.input_layernorm.weight",
             "model.norm.weight", "lm_head.weight"]
    results = []
    for method in args.methods.split(","):
        cfg = os.path.join(args.work, f"{method}.yml")
        with open(cfg, "w") as f:
            f.write(CONFIGS[method].format(m=models))
        for r in range(args.rounds):
            order = ["cpu", args.device] if r % 2 == 0 else [args.device, "cpu"]
            outs = {}
            for dev in order:
                out = os.path.join(args.work, f"out_{method}_{dev}")
                shutil.rmtree(out, ignore_errors=True)
                log = os.path.join(args.work, f"{method}_{dev}_{r}.log")
                wall, rss = bm.run_timed([cmd, cfg, out, "--device", dev], args.work, log)
                results.append({"method": method, "round": r, "device": dev, "wall_s": round(wall, 2),
                                "peak_rss_mb": round(rss)})
                print(f"{method:10s} round {r} {dev:8s} {wall:7.2f} s {rss:6.0f} MB", flush=True)
                outs[dev] = out
            worst, rows = bm.compare(outs[args.device], outs["cpu"], names)
            share = max(row[5] for row in rows)
            results.append({"method": method, "round": r, "max_abs_diff": worst, "max_share_differing": share})
            print(f"{method:10s} round {r} device vs cpu: max abs diff {worst:.3g}, "
                  f"differing entries up to {100 * share:.3f} % of a tensor", flush=True)
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
