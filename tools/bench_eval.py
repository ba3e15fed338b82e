#!/usr/bin/env python3
"""One CLIP task pool evaluated end to end by FusionBench and by fusion-host, from the same files.

Usage (repo root; fusion-host built in release):
  python3 tools/bench_eval.py [--work /tmp/evalbench] [--images 256] [--batch-size 32]
      [--num-workers 2] [--rounds 2] [--host target/release/fusion-host] [--skip-fusionbench]

Builds, in --work:
  clip-b32/   a CLIPModel with ViT-B/32's vision tower (hidden 768, 12 layers, 12 heads, MLP 3072,
              224 px, patch 32) and CLIP's text tower shape (512 wide, 12 layers, 8 heads), random
              weights (torch seed 0), the demo's CLIP BPE tokenizer, a CLIPImageProcessor at 224 px;
  mnist/      a `datasets` parquet folder (data/test-00000-of-00001.parquet: image bytes + label)
              holding the first --images digit images of the demo's digits_low and digits_high test
              sets, labels 0-9, so the task is named `mnist` and both tools find its class names
              and prompt template by that name;
  configs/    modelpool/bench.yaml (CLIPVisionModelPool, the model as `_pretrained_`) and
              taskpool/bench.yaml (CLIPVisionModelTaskPool: the one task, batch size, workers).
Then runs `method=dummy modelpool=bench taskpool=bench` with `--config-dir <work>/configs`, by
`fusion_bench` (FusionBench 0.2.33, CPU) and by fusion-host (`--device cpu`), alternating, for
--rounds rounds, and prints wall times, CPU seconds (user + system, with children), the load
average, accuracy and loss of each run as JSON lines and a table with both speed ratios.
Needs torch, transformers<5, datasets<4.1, fusion-bench==0.2.33 and pyarrow in this interpreter.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_model(out: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPModel

    if (out / "model.safetensors").is_file():
        return
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                         hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=32,
                           hidden_act="quick_gelu"),
        projection_dim=512,
    )
    CLIPModel(cfg).eval().save_pretrained(out, safe_serialization=True)
    demo = REPO / "demo" / "models" / "pretrained"
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(demo / name, out / name)
    pre = json.loads((demo / "preprocessor_config.json").read_text())
    pre["size"] = {"shortest_edge": 224}
    pre["crop_size"] = {"height": 224, "width": 224}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))


def build_data(out: Path, images: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = out / "data" / "test-00000-of-00001.parquet"
    if target.is_file() and pq.read_metadata(target).num_rows == images:
        return
    rows = []
    for part in ["digits_low", "digits_high"]:
        src = REPO / "demo" / "data" / part / "data" / "test-00000-of-00001.parquet"
        t = pq.read_table(src).to_pylist()
        rows.extend(t)
    # Interleave the two halves so the first N hold every digit.
    half = len(rows) // 2
    mixed = [r for pair in zip(rows[:half], rows[half:]) for r in pair]
    picked = mixed[:images]
    if len(picked) < images:
        raise SystemExit(f"the demo has only {len(picked)} digit test images")
    target.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(picked, schema=pq.read_schema(
        REPO / "demo" / "data" / "digits_low" / "data" / "test-00000-of-00001.parquet"))
    pq.write_table(table, target)


def write_configs(work: Path, batch_size: int, num_workers: int) -> Path:
    cfg = work / "configs"
    (cfg / "modelpool").mkdir(parents=True, exist_ok=True)
    (cfg / "taskpool").mkdir(parents=True, exist_ok=True)
    model = work / "clip-b32"
    (cfg / "modelpool" / "bench.yaml").write_text(f"""\
_target_: fusion_bench.modelpool.CLIPVisionModelPool
_recursive_: false
processor: {model}
models:
  _pretrained_: {model}
platform: hf
""")
    (cfg / "taskpool" / "bench.yaml").write_text(f"""\
_target_: fusion_bench.taskpool.CLIPVisionModelTaskPool
_recursive_: false
test_datasets:
  mnist:
    _target_: datasets.load_dataset
    path: {work / 'mnist'}
    split: test
base_model: {model}
clip_model:
  _target_: transformers.CLIPModel.from_pretrained
  pretrained_model_name_or_path: {model}
processor:
  _target_: transformers.CLIPProcessor.from_pretrained
  pretrained_model_name_or_path: {model}
data_processor: ${{.processor}}
dataloader_kwargs:
  batch_size: {batch_size}
  num_workers: {num_workers}
  pin_memory: false
  drop_last: false
  shuffle: false
layer_wise_feature_save_path: null
layer_wise_feature_first_token_only: true
layer_wise_feature_max_num: 1000
""")
    return cfg


def find_report(obj):
    """The `mnist` entry of a report (FusionBench nests it per model)."""
    if isinstance(obj, dict):
        if "mnist" in obj and isinstance(obj["mnist"], dict) and "accuracy" in obj["mnist"]:
            return obj["mnist"]
        for v in obj.values():
            r = find_report(v)
            if r:
                return r
    if isinstance(obj, list):
        for v in obj:
            r = find_report(v)
            if r:
                return r
    return None


def run(cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, int, float, list[float]]:
    """Wall seconds, exit code, CPU seconds (user + system, the command and its children) and
    the 1-minute load average before and after. On a shared machine the CPU seconds say what
    the command cost when its wall time says mostly how busy the other processes were."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = [os.getloadavg()[0]]
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    secs = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load.append(os.getloadavg()[0])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return secs, rc, cpu, load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/evalbench")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--host", default=str(REPO / "target" / "release" / "fusion-host"))
    ap.add_argument("--skip-fusionbench", action="store_true")
    ap.add_argument("--skip-host", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    build_model(work / "clip-b32")
    build_data(work / "mnist", args.images)
    cfg = write_configs(work, args.batch_size, args.num_workers)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    common = ["method=dummy", "modelpool=bench", "taskpool=bench"]
    results = []
    for rnd in range(args.rounds):
        if not args.skip_fusionbench:
            out = work / f"fb-{rnd}"
            shutil.rmtree(out, ignore_errors=True)
            report = out / "report.json"
            cmd = ["fusion_bench", "--config-dir", str(cfg), *common,
                   f"report_save_path={report}", f"path.log_dir={out}", "fabric.accelerator=cpu"]
            secs, rc, cpu, load = run(cmd, work, env, work / f"fb-{rnd}.log")
            rep = find_report(json.loads(report.read_text())) if report.is_file() else None
            rec = {"tool": "FusionBench", "round": rnd, "seconds": secs, "cpu_seconds": cpu,
                   "load1": load, "rc": rc, "mnist": rep, "cmd": " ".join(cmd)}
            print(json.dumps(rec), flush=True)
            results.append(rec)
        if not args.skip_host:
            report = work / f"host-{rnd}.json"
            cmd = [args.host, "--device", "cpu", "--config-dir", str(cfg), *common,
                   "print_config=false", f"report_save_path={report}"]
            secs, rc, cpu, load = run(cmd, REPO, env, work / f"host-{rnd}.log")
            rep = find_report(json.loads(report.read_text())) if report.is_file() else None
            rec = {"tool": "fusion-host", "round": rnd, "seconds": secs, "cpu_seconds": cpu,
                   "load1": load, "rc": rc, "mnist": rep, "cmd": " ".join(cmd)}
            print(json.dumps(rec), flush=True)
            results.append(rec)
    print()
    print("| tool | wall s (each round) | mean wall s | CPU s (each round) | mean CPU s | accuracy | loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    means = {}
    for tool in ["FusionBench", "fusion-host"]:
        rs = [r for r in results if r["tool"] == tool and r["rc"] == 0]
        if not rs:
            continue
        mean = sum(r["seconds"] for r in rs) / len(rs)
        cpu = sum(r["cpu_seconds"] for r in rs) / len(rs)
        means[tool] = (mean, cpu)
        m = rs[-1]["mnist"] or {}
        each = ", ".join(f"{r['seconds']:.1f}" for r in rs)
        each_cpu = ", ".join(f"{r['cpu_seconds']:.1f}" for r in rs)
        print(f"| {tool} | {each} | {mean:.1f} | {each_cpu} | {cpu:.1f} | "
              f"{m.get('accuracy', float('nan')):.4f} | {m.get('loss', float('nan')):.7f} |")
    if len(means) == 2:
        (fw, fc), (hw, hc) = means["FusionBench"], means["fusion-host"]
        print()
        print(f"fusion-host / FusionBench speed: {fw / hw:.2f}x by mean wall time, "
              f"{fc / hc:.2f}x by mean CPU time")
        for rnd in range(args.rounds):
            pair = {r["tool"]: r for r in results if r["round"] == rnd and r["rc"] == 0}
            if len(pair) == 2:
                print(f"round {rnd}: {pair['FusionBench']['seconds'] / pair['fusion-host']['seconds']:.2f}x "
                      f"wall, {pair['FusionBench']['cpu_seconds'] / pair['fusion-host']['cpu_seconds']:.2f}x CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
