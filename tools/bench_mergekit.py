#!/usr/bin/env python3
"""fusion-host mergekit against mergekit-yaml on three generated 1B-class Llama checkpoints.

    python3 tools/bench_mergekit.py [--work /tmp/mkbench] [--rounds 2] [--slow-rounds 1]
        [--fusion-host target/release/fusion-host] [--mergekit /tmp/mkvenv/bin/mergekit-yaml]
        [--methods linear,ties,slerp] [--layers 22] [--vocab 32000]

Generates once, under WORK/models, a base and two fine-tunes of a Llama (hidden 2048, 22 layers (TinyLlama's shape),
intermediate 5632, vocab 32000, ~1.1 B parameters; bfloat16, safetensors sharded at 1 GB with
an index, config.json): random normal weights from a fixed seed, each fine-tune the base plus a
small perturbation (`--layers`, `--vocab`: a smaller or larger model of the same width, where
the disk is short or to show that the memory does not grow with the vocabulary). Then, for each method, writes one YAML config and runs it with both tools
from the same file, alternating the order round by round (round 0 runs fusion-host first,
round 1 mergekit first, ...), under `/usr/bin/time -v` for the wall time, the CPU time (user +
system) and the peak resident set size. mergekit-yaml runs on the CPU (its default: no `--cuda`) with `--lazy-unpickle`
(mergekit's advice for lower memory; it matters for pickled `.bin` checkpoints) and, for
comparison, without it. The outputs of each method are compared tensor by tensor (max abs
difference, in float32) on a few tensors. Results: a table on stdout and WORK/results.json.

Python only drives the tools and makes the inputs: nothing here is needed by fusion-host.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

HIDDEN = 2048
LAYERS = 22
INTER = 5632
VOCAB = 32000
HEADS = 32
KV_HEADS = 4


def llama_config():
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def tensor_shapes():
    head_dim = HIDDEN // HEADS
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.k_proj.weight", (KV_HEADS * head_dim, HIDDEN)),
            (p + "self_attn.v_proj.weight", (KV_HEADS * head_dim, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
            (p + "mlp.gate_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTER)),
        ]
    out += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return out


def generate(models_dir, shard_bytes=1_000_000_000):
    """Write base, ft_a and ft_b (bf16, sharded) unless they are there already."""
    import torch
    from safetensors.torch import save_file

    names = ["base", "ft_a", "ft_b"]
    if all(os.path.exists(os.path.join(models_dir, n, "model.safetensors.index.json")) for n in names):
        return names
    shapes = tensor_shapes()
    params = sum(_numel(s) for _, s in shapes)
    print(f"generating 3 Llama checkpoints of {params / 1e9:.2f} B parameters under {models_dir}", flush=True)
    for k, name in enumerate(names):
        folder = os.path.join(models_dir, name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(llama_config(), f, indent=2)
        shard, size, shards, weight_map = {}, 0, [], {}

        def flush():
            nonlocal shard, size
            if shard:
                shards.append(shard)
                fname = f"part-{len(shards)}.safetensors"
                save_file(shard, os.path.join(folder, fname), metadata={"format": "pt"})
                for t in shard:
                    weight_map[t] = fname
                shard, size = {}, 0

        for j, (tname, shape) in enumerate(shapes):
            g = torch.Generator().manual_seed(1000 + j)  # the base: same for every model
            if len(shape) == 1:
                x = torch.ones(shape) + 0.1 * torch.randn(shape, generator=g)
            else:
                x = torch.randn(shape, generator=g) * 0.02
            if k > 0:
                g2 = torch.Generator().manual_seed(7919 * k + j)
                x = x + torch.randn(shape, generator=g2) * 0.004
            x = x.to(torch.bfloat16).contiguous()
            nbytes = x.numel() * 2
            if size + nbytes > shard_bytes:
                flush()
            shard[tname] = x
            size += nbytes
        flush()
        # Rename to the transformers pattern now that the shard count is known.
        total = len(shards)
        final_map = {}
        for i in range(1, total + 1):
            old = os.path.join(folder, f"part-{i}.safetensors")
            new_name = f"model-{i:05d}-of-{total:05d}.safetensors"
            os.rename(old, os.path.join(folder, new_name))
            for t, f in weight_map.items():
                if f == f"part-{i}.safetensors":
                    final_map[t] = new_name
        index = {"metadata": {"total_size": params * 2}, "weight_map": final_map}
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
        print(f"  {name}: {total} shards", flush=True)
    return names


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


CONFIGS = {
    "linear": """merge_method: linear
dtype: bfloat16
models:
  - model: {m}/base
    parameters: {{weight: 0.4}}
  - model: {m}/ft_a
    parameters: {{weight: 0.3}}
  - model: {m}/ft_b
    parameters: {{weight: 0.3}}
""",
    "ties": """merge_method: ties
base_model: {m}/base
dtype: bfloat16
parameters:
  normalize: true
models:
  - model: {m}/ft_a
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {m}/ft_b
    parameters: {{weight: 0.5, density: 0.5}}
""",
    "slerp": """merge_method: slerp
base_model: {m}/ft_a
dtype: bfloat16
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
models:
  - model: {m}/ft_a
  - model: {m}/ft_b
""",
}


def run_timed(cmd, cwd, log, env=None):
    """Run `cmd` under /usr/bin/time -v; return (wall seconds, peak RSS in MB, CPU seconds)."""
    with open(log, "w") as f:
        start = time.monotonic()
        p = subprocess.run(["/usr/bin/time", "-v"] + cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                           env=None if env is None else {**os.environ, **env})
        wall = time.monotonic() - start
    text = open(log).read()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {p.returncode}); see {log}:\n{text[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", text).group(1)) for k in ("User", "System"))
    return wall, rss_kb / 1024, cpu


def compare(out_a, out_b, names):
    import torch
    from safetensors import safe_open

    def locate(folder):
        idx = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(idx):
            wm = json.load(open(idx))["weight_map"]
            return lambda t: os.path.join(folder, wm[t])
        return lambda t: os.path.join(folder, "model.safetensors")

    la, lb = locate(out_a), locate(out_b)
    worst = 0.0
    rows = []
    for t in names:
        with safe_open(la(t), "pt") as fa, safe_open(lb(t), "pt") as fb:
            a, b = fa.get_tensor(t), fb.get_tensor(t)
        assert a.shape == b.shape, (t, a.shape, b.shape)
        d = (a.float() - b.float()).abs()
        scale = b.float().abs().max().item()
        rows.append((t, str(a.dtype), str(b.dtype), d.max().item(), scale, (d > 0).float().mean().item()))
        worst = max(worst, d.max().item())
    return worst, rows


def main():
    global LAYERS, VOCAB
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/mkbench")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--slow-rounds", type=int, default=1,
                    help="rounds of the methods mergekit takes minutes over (ties)")
    ap.add_argument("--fusion-host", default="target/release/fusion-host")
    ap.add_argument("--mergekit", default="/tmp/mkvenv/bin/mergekit-yaml")
    ap.add_argument("--methods", default="linear,ties,slerp")
    ap.add_argument("--fh-whole", default="",
                    help="methods also run by fusion-host with its whole-tensor path (FUSION_MERGEKIT_BLOCK_MB=0)")
    ap.add_argument("--layers", type=int, default=LAYERS, help="decoder layers of the generated models")
    ap.add_argument("--vocab", type=int, default=VOCAB, help="vocabulary of the generated models")
    ap.add_argument("--eager-methods", default="linear,slerp",
                    help="methods also run by mergekit without --lazy-unpickle")
    args = ap.parse_args()
    LAYERS, VOCAB = args.layers, args.vocab

    fh = os.path.abspath(args.fusion_host)
    work = os.path.abspath(args.work)
    models = os.path.join(work, "models")
    os.makedirs(models, exist_ok=True)
    generate(models)

    tools = {
        "fusion-host": lambda cfg, out: [fh, "mergekit", cfg, out, "--quiet"],
        "mergekit --lazy-unpickle": lambda cfg, out: [args.mergekit, cfg, out, "--lazy-unpickle", "--allow-crimes"],
        "mergekit": lambda cfg, out: [args.mergekit, cfg, out, "--allow-crimes"],
        "fusion-host whole-tensor": lambda cfg, out: [fh, "mergekit", cfg, out, "--quiet"],
    }
    envs = {"fusion-host whole-tensor": {"FUSION_MERGEKIT_BLOCK_MB": "0"}}
    whole = set(filter(None, args.fh_whole.split(",")))
    eager = set(filter(None, args.eager_methods.split(",")))
    env_info = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_at_start": os.getloadavg(),
        "layers": LAYERS,
        "vocab": VOCAB,
        "params_b": round(sum(_numel(s) for _, s in tensor_shapes()) / 1e9, 3),
    }
    print(json.dumps(env_info), flush=True)
    try:
        env_info["mergekit"] = subprocess.run(
            [os.path.join(os.path.dirname(args.mergekit), "python"), "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
            capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    results = {"env": env_info, "runs": [], "agreement": {}}
    for method in args.methods.split(","):
        cfg = os.path.join(work, f"{method}.yaml")
        with open(cfg, "w") as f:
            f.write(CONFIGS[method].format(m=models))
        order = [t for t in tools if (t != "mergekit" or method in eager)
                 and (t != "fusion-host whole-tensor" or method in whole)]
        rounds = args.slow_rounds if method == "ties" else args.rounds
        for r in range(rounds):
            seq = order if r % 2 == 0 else order[::-1]
            for tool in seq:
                out = os.path.join(work, "out", method, tool.replace(" ", "_").replace("-", ""))
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                load = os.getloadavg()[0]
                wall, rss, cpu = run_timed(tools[tool](cfg, out), work, out + ".log", envs.get(tool))
                print(f"{method:7} round {r} {tool:26} {wall:8.1f} s  CPU {cpu:8.1f} s  peak RSS {rss:7.0f} MB  (load {load:.1f})", flush=True)
                results["runs"].append({"method": method, "round": r, "tool": tool, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss, "load1": load,
                                        "cmd": " ".join(tools[tool](cfg, out))})
        outs = {t: os.path.join(work, "out", method, t.replace(" ", "_").replace("-", "")) for t in order}
        probe = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 f"model.layers.{min(7, LAYERS - 1)}.mlp.down_proj.weight", f"model.layers.{LAYERS - 1}.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"]
        worst, rows = compare(outs["fusion-host"], outs["mergekit --lazy-unpickle"], probe)
        results["agreement"][method] = {"max_abs_diff": worst, "tensors": rows}
        for t, da, db, d, scale, frac in rows:
            print(f"    {t:45} {da}/{db} max|diff| {d:.3g} (max|x| {scale:.3g}, {frac * 100:.3f}% differ)")
        if "fusion-host whole-tensor" in outs:
            worst, rows = compare(outs["fusion-host"], outs["fusion-host whole-tensor"], probe)
            results["agreement"][method + " blocks vs whole-tensor"] = {"max_abs_diff": worst, "tensors": rows}
            print(f"    fusion-host blocks vs whole-tensor: max|diff| {worst:.3g} over {len(rows)} tensors")
        # Free the disk: the outputs are 2.2 GB each.
        for o in outs.values():
            shutil.rmtree(o, ignore_errors=True)

    print("\nsummary (best of rounds):")
    summary = {}
    for method in args.methods.split(","):
        row = {}
        for tool in tools:
            runs = [x for x in results["runs"] if x["method"] == method and x["tool"] == tool]
            if runs:
                row[tool] = (min(x["wall_s"] for x in runs), max(x["peak_rss_mb"] for x in runs))
        summary[method] = row
        fhw = row["fusion-host"][0]
        cells = "  ".join(f"{t}: {w:.1f} s / {m:.0f} MB" for t, (w, m) in row.items())
        mk = min(w for t, (w, _) in row.items() if t.startswith("mergekit"))
        print(f"{method:7} {cells}  speed-up {mk / fhw:.1f}x")
    results["summary"] = summary
    results["env"]["load_at_end"] = os.getloadavg()
    print("load average at the end:", os.getloadavg())
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
