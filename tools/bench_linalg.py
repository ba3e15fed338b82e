#!/usr/bin/env python3
"""SVD-based merging benchmark: fusion-host vs FusionBench, TSV-M and ISO-CTS, end to end.

    python3 tools/bench_linalg.py --rounds 2 --out /tmp/linalg.md

The nine random-weight CLIP ViT-B/32 vision checkpoints of the merge benchmark
(`tools/bench_merge.py --generate-only --work /tmp/fbdata` makes them; this script does too when
they are missing) are merged with FusionBench's `TaskSingularVectorMerging` (config
`task_singular_vector/TaskSingularVectorMerging`: alpha 1) and `ISO_CTS_Merge`
(`isotropic_merging/iso_cts`: scaling factor 1, common space fraction 0.8), by fusion-host and
by FusionBench's CLI (the pip-installed `fusion_bench`, on the CPU), each under
`/usr/bin/time -v` (wall time, peak RSS). Rounds alternate which tool runs first, so that a
drift of the shared machine's load falls on both. The merged weights of the two tools are
compared (largest difference relative to the largest task-vector entry of that tensor).

The helpers (checkpoint generation, timing, RSS sampling) are those of `tools/bench_merge.py`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_merge as bm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "tsvm": ("task_singular_vector/TaskSingularVectorMerging", "TSV-M"),
    "iso_cts": ("isotropic_merging/iso_cts", "ISO-CTS"),
}


def configs(work: Path) -> dict:
    """fusion-host's and FusionBench's model-pool configs over the generated checkpoints."""
    dirs = bm.model_dirs(work, False)
    root = work / "full" / "configs-linalg"
    shutil.rmtree(root, ignore_errors=True)
    fh = root / "fusion-host"
    (fh / "modelpool").mkdir(parents=True)
    lines = ["_target_: fusion_bench.modelpool.BaseModelPool", "models:"]
    lines += [f"  {m}: {p}" for m, p in dirs.items()]
    (fh / "modelpool" / "bench_ta8.yaml").write_text("\n".join(lines) + "\n")
    fb = root / "fusionbench"
    (fb / "modelpool" / "CLIPVisionModelPool").mkdir(parents=True)
    lines = ["_target_: fusion_bench.modelpool.CLIPVisionModelPool", "_recursive_: False",
             "processor: null", "platform: hf", "models:"]
    lines += [f"  {m}: {p}" for m, p in dirs.items()]
    (fb / "modelpool" / "CLIPVisionModelPool" / "bench_ta8.yaml").write_text("\n".join(lines) + "\n")
    return {"fusion-host": fh, "fusionbench": fb}


def command(tool: str, method: str, cfg: dict, out: Path, args) -> list[str]:
    target = METHODS[method][0]
    if tool == "fusion-host":
        return [args.fusion_host, "--device", args.fh_device, "--config-path", str(cfg["fusion-host"]),
                "modelpool=bench_ta8", f"method={target}", "taskpool=dummy",
                f"merged_model_save_path={out}", f"report_save_path={out.parent / 'report.json'}"]
    return [args.fusion_bench, "--config-dir", str(cfg["fusionbench"]), f"method={target}",
            "modelpool=CLIPVisionModelPool/bench_ta8", "taskpool=dummy", "fabric.accelerator=cpu",
            f"merged_model_save_path={out}", f"report_save_path={out.parent / 'report.json'}"]


def compare(a: Path, b: Path, base: Path) -> dict:
    """Largest |a − b| over each tensor, relative to that tensor's largest |a − base|."""
    import numpy as np
    from safetensors.numpy import load_file

    def load(folder: Path) -> dict:
        out = {}
        for f in bm.out_weights(folder):
            out.update(load_file(str(f)))
        return out

    x, y, z = load(a), load(b), load(base)
    y = {k[len(bm.PREFIX):] if k.startswith(bm.PREFIX) and k not in x else k: v for k, v in y.items()}
    worst, worst_key, missing = 0.0, None, []
    for k, v in x.items():
        if k not in y:
            missing.append(k)
            continue
        scale = float(np.max(np.abs(v.astype(np.float64) - z[k]))) or 1.0
        d = float(np.max(np.abs(v.astype(np.float64) - y[k]))) / scale
        if d > worst:
            worst, worst_key = d, k
    return {"max_rel_diff": worst, "worst_tensor": worst_key, "missing": missing[:5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fbdata"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--methods", default="tsvm,iso_cts")
    ap.add_argument("--tools", default="fusion-host,fusionbench",
                    help="the tools of a round, in order; a tool may appear twice (fusion-host,fusionbench,fusion-host "
                         "brackets a long FusionBench run between two of fusion-host's); rounds alternate the order")
    ap.add_argument("--fusion-host", default=str(REPO / "target" / "release" / "fusion-host"))
    ap.add_argument("--fh-device", default="cpu")
    ap.add_argument("--fusion-bench", default=shutil.which("fusion_bench") or "fusion_bench")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--out", type=Path, default=None, help="markdown table (also printed)")
    args = ap.parse_args()
    bm.MEM_LIMIT_GIB = 0  # RSS is measured, not capped
    bm.generate(args.work, False)
    cfg = configs(args.work)
    runs = args.work / "full" / "runs-linalg"
    dirs = bm.model_dirs(args.work, False)
    inputs = [d / "model.safetensors" for d in dirs.values()]
    env = bm.base_env()
    env.setdefault("FUSION_CONFIG_PATH", str(REPO / "configs"))
    methods = [m for m in args.methods.split(",") if m]
    tools = [t for t in args.tools.split(",") if t]
    results = {"started": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "load_start": bm.loadavg(),
               "machine": bm.machine(), "runs": []}
    for r in range(args.rounds):
        order = tools if r % 2 == 0 else tools[::-1]
        for method in methods:
            for slot, tool in enumerate(order):
                out = runs / f"{tool}-{method}" / "merged"
                shutil.rmtree(out.parent, ignore_errors=True)
                out.parent.mkdir(parents=True)
                rec = bm.run_tool(f"{tool}-{method}-r{r + 1}-{slot + 1}", command(tool, method, cfg, out, args), out.parent,
                                  env, args.timeout, runs / "logs", inputs)
                rec.update(tool=tool, method=method, round=r + 1)
                rec.pop("log_tail", None) if rec["ok"] else None
                results["runs"].append(rec)
            pair = list(dict.fromkeys(tools))
            if len(pair) == 2 and all((runs / f"{t}-{method}" / "merged").exists() for t in pair):
                results.setdefault("agreement", {})[method] = compare(
                    runs / f"{pair[0]}-{method}" / "merged", runs / f"{pair[1]}-{method}" / "merged",
                    dirs["_pretrained_"])
    results["load_end"] = bm.loadavg()
    (args.work / "results-linalg.json").write_text(json.dumps(results, indent=2))
    lines = [f"Started {results['started']}, load average {results['load_start']} at the start, "
             f"{results['load_end']} at the end; {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"{results['machine']['ram']}.", "",
             "| method | round | tool | wall s | CPU s (user + sys) | peak RSS MiB | anonymous / file-backed MiB | load before |",
             "|---|---|---|---|---|---|---|---|"]
    for rec in results["runs"]:
        lines.append(f"| {METHODS[rec['method']][1]} | {rec['round']} | {rec['tool']} | "
                     f"{rec['wall_s']:.1f}{'' if rec['ok'] else ' (failed: rc ' + str(rec['rc']) + ')'} | "
                     f"{rec.get('user_s', 0) + rec.get('sys_s', 0):.0f} | {rec.get('peak_rss_kb', 0) / 1024:.0f} | "
                     f"{rec.get('rss_anon_peak_kb', 0) / 1024:.0f} / {rec.get('rss_file_peak_kb', 0) / 1024:.0f} | "
                     f"{rec['load_before']} |")
    for method, agr in results.get("agreement", {}).items():
        lines.append("")
        lines.append(f"{METHODS[method][1]}: largest difference between the two tools' merged weights, relative to "
                     f"the tensor's largest task-vector entry: {agr['max_rel_diff']:.2e} (`{agr['worst_tensor']}`)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
