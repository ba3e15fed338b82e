#!/usr/bin/env python3
"""Forward + backward throughput of a CLIP vision tower on the CPU: fusion-clip's autograd
(the `bench_grad` example) beside PyTorch autograd, in one run, alternating.

Both compute the gradient of every vision-tower weight of layer-wise AdaMerging's loss
(FusionBench's zero-shot head: visual projection, L2 normalization, scaled cosine against fixed
class text embeddings, entropy of the softmax) on random pixels, float32. Weights are random
(matrices std 0.02, biases 0, layer norms 1/0; speed does not depend on the values). PyTorch:
transformers.CLIPVisionModel (default attention implementation), parameters requiring grad,
`loss.backward()`; timed from the forward to the end of the backward.

Usage (from the repo root, after `cargo build --release --locked --workspace --example bench_grad`;
the dev profile keeps overflow checks and debug assertions, which cost the Rust side about 2x):
  python3 tools/bench_grad.py [--shape b32|tiny] [--batch 32] [--iters 3] [--rounds 2]
      [--bin target/release/examples/bench_grad]
Prints one JSON line per run and a Markdown table (images/s, best of the iterations, per round).
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shape_config(shape):
    from transformers import CLIPVisionConfig
    if shape == "b32":
        return CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=224, patch_size=32,
                                hidden_act="quick_gelu"), 512, 10
    return CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                            num_attention_heads=4, image_size=32, patch_size=8,
                            hidden_act="quick_gelu"), 24, 5


def torch_run(shape, batch, iters, warmup):
    import torch
    from transformers import CLIPVisionModel
    torch.manual_seed(0)
    cfg, proj_dim, classes = shape_config(shape)
    model = CLIPVisionModel(cfg).float().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.fill_(1.0 if n.endswith("weight") else 0.0)
            elif n.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0, 0.02)
    proj = torch.randn(proj_dim, cfg.hidden_size) * 0.02
    text = torch.nn.functional.normalize(torch.randn(classes, proj_dim), dim=-1)
    pixels = torch.randn(batch, 3, cfg.image_size, cfg.image_size)

    def step():
        for p in model.parameters():
            p.grad = None
        pooled = model(pixel_values=pixels).pooler_output
        emb = torch.nn.functional.normalize(pooled @ proj.T, dim=-1)
        p = torch.softmax(100.0 * emb @ text.T, dim=-1)
        loss = -(p * torch.log(p + 1e-8)).sum(-1).mean()
        loss.backward()
        return loss.item()

    for _ in range(warmup):
        step()
    secs, fwd = [], []
    for _ in range(iters):
        t = time.perf_counter()
        with torch.no_grad():
            model(pixel_values=pixels).pooler_output.sum().item()
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        loss = step()
        secs.append(time.perf_counter() - t)
    return {"event": "result", "impl": f"torch {torch.__version__}", "shape": shape, "batch": batch,
            "threads": torch.get_num_threads(), "seconds": secs, "forward_seconds": fwd,
            "images_per_s": batch / min(secs), "forward_images_per_s": batch / min(fwd), "loss": loss}


def rust_run(binary, shape, batch, iters, warmup):
    out = subprocess.run([binary, "--shape", shape, "--batch", str(batch), "--iters", str(iters),
                          "--warmup", str(warmup)], check=True, capture_output=True, text=True)
    return [json.loads(l) for l in out.stdout.splitlines() if '"result"' in l][-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["b32", "tiny"], default="b32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "examples", "bench_grad"))
    a = ap.parse_args()
    if not os.path.exists(a.bin):
        sys.exit(f"bench_grad: no binary at {a.bin}; run `cargo build --release --locked --workspace --example bench_grad`")
    rows = []
    for r in range(a.rounds):
        for name, fn in (("fusion-clip", lambda: rust_run(a.bin, a.shape, a.batch, a.iters, a.warmup)),
                         ("torch", lambda: torch_run(a.shape, a.batch, a.iters, a.warmup))):
            res = fn()
            res["round"] = r
            print(json.dumps(res), flush=True)
            rows.append(res)
    print(f"\n| round | implementation | shape | batch | threads | fwd+bwd images/s | forward images/s |")
    print("|---|---|---|---|---|---|---|")
    for res in rows:
        print(f"| {res['round']} | {res['impl']} | {res['shape']} | {res['batch']} | {res['threads']} | "
              f"{res['images_per_s']:.2f} | {res['forward_images_per_s']:.2f} |")


if __name__ == "__main__":
    main()
