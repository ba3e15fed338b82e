#!/usr/bin/env python3
"""CLIP ViT-B/32 vision tower throughput: fusion-clip's GpuClipVision (wgpu) vs PyTorch eager.

Runs, in one go,
  1. the `bench_clip` example of fusion-clip (random-weight tower on the wgpu runtime), and
  2. `transformers.CLIPVisionModel` on PyTorch (float32, eager attention, `torch.inference_mode()`,
     CUDA if available else CPU) with the same config and the same weight init scheme
     (normal(0, 0.02) matrices/embeddings, zero biases, layer norms 1/0; values differ, speed
     does not depend on them),
at the same batch sizes, with warm-up + timed iterations, prints a table and appends (or
replaces) the `## CLIP vision tower throughput` section at the end of BENCHMARKS.md.

Usage (from the repo root):
  python tools/bench_clip.py [--batches 1,32,128] [--iters 3,2,1] [--warmup 1]
      [--device cpu] [--bin PATH] [--skip-build] [--skip-torch] [--skip-wgpu]
      [--no-write] [--benchmarks BENCHMARKS.md] [--note TEXT]

Needs torch and transformers in the interpreter running it, e.g.
  python3 -m venv /tmp/clipbenchvenv && /tmp/clipbenchvenv/bin/pip install torch transformers
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADING = "## CLIP vision tower throughput"
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", "/work/targets/clipbench")


def parse_counts(s: str) -> list[int]:
    out = [int(t) for t in s.split(",") if t.strip()]
    if not out or any(v <= 0 for v in out):
        raise argparse.ArgumentTypeError(f"expected positive counts, got {s!r}")
    return out


def machine_info() -> dict:
    info = {"cores": os.cpu_count(), "cpu": platform.processor() or "?", "ram_gib": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    info["os"] = f"{platform.system()} {platform.release()}"
    return info


def loadavg() -> str:
    try:
        a = os.getloadavg()
        return f"{a[0]:.2f} / {a[1]:.2f} / {a[2]:.2f}"
    except OSError:
        return "?"


def run_wgpu(args, cmds: list[str], backend: str = "auto", batches=None, iters=None) -> tuple[dict | None, list[dict], str]:
    batches = batches or args.batches
    iters = iters or args.iters
    build = [
        "cargo", "build", "--release", "-p", "fusion-clip", "--example", "bench_clip",
    ]
    env = dict(os.environ, CARGO_TARGET_DIR=TARGET_DIR)
    binary = Path(args.bin) if args.bin else Path(TARGET_DIR) / "release" / "examples" / "bench_clip"
    if not args.skip_build and not getattr(args, "_built", False):
        args._built = True
        cmds.append(f"CARGO_TARGET_DIR={TARGET_DIR} {shlex.join(build)}")
        print("+", cmds[-1], flush=True)
        subprocess.run(build, cwd=REPO, env=env, check=True)
    cmd = [
        str(binary), "--device", args.device, "--backend", backend,
        "--batches", ",".join(map(str, batches)),
        "--iters", ",".join(map(str, iters)),
        "--warmup", str(args.warmup),
    ]
    cmds.append(shlex.join(cmd))
    print("+", cmds[-1], flush=True)
    setup, results = None, []
    la_before = loadavg()
    # Stream the JSON lines so a partial run (timeout, Ctrl-C) still records what finished.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    timer = None
    if args.wgpu_timeout:
        import threading

        def stop():
            print(f"wgpu run stopped after {args.wgpu_timeout:.0f} s", file=sys.stderr, flush=True)
            proc.kill()

        timer = threading.Timer(args.wgpu_timeout, stop)
        timer.start()
    try:
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            print("  ", line, flush=True)
            rec = json.loads(line)
            if rec.get("event") == "setup":
                setup = rec
            elif rec.get("event") == "result":
                rec["loadavg"] = loadavg()
                results.append(rec)
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        print("wgpu run interrupted; recording the batch sizes that finished", file=sys.stderr)
    finally:
        if timer:
            timer.cancel()
    return setup, results, la_before


def run_torch(args, cmds: list[str]) -> tuple[dict, list[dict]]:
    import torch
    import transformers
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cmds.append(f"(in-process) {shlex.join([sys.executable] + sys.argv)}: transformers.CLIPVisionModel")
    device = "cuda" if torch.cuda.is_available() and args.torch_device != "cpu" else "cpu"
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, projection_dim=512, attn_implementation="eager",
    )
    model = CLIPVisionModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model = model.to(device=device, dtype=torch.float32).eval()
    info = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
        "attn": getattr(model.config, "_attn_implementation", "eager"),
    }
    results = []
    gen = torch.Generator().manual_seed(1)
    for k, batch in enumerate(args.batches):
        iters = args.iters[0] if len(args.iters) == 1 else args.iters[k]
        pixels = (torch.rand(batch, 3, 224, 224, generator=gen) * 4 - 2).to(device)
        with torch.inference_mode():
            tw = time.perf_counter()
            for _ in range(args.warmup):
                model(pixel_values=pixels).pooler_output.cpu()
            warm = time.perf_counter() - tw
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                out = model(pixel_values=pixels).pooler_output.cpu()  # .cpu() waits for CUDA
                times.append(time.perf_counter() - t)
        mean = sum(times) / iters
        rec = {
            "backend": "PyTorch eager", "batch": batch, "iters": iters, "warmup_s": warm,
            "seconds_per_iter": mean, "min_seconds_per_iter": min(times), "times_s": times,
            "images_per_s": batch / mean, "loadavg": loadavg(),
            "finite": bool(torch.isfinite(out).all()),
        }
        print("  ", json.dumps(rec), flush=True)
        results.append(rec)
    return info, results


def table(batches, wgpu: list[dict], torch_res: list[dict], wgpu_name: str, torch_name: str) -> str:
    w = {r["batch"]: r for r in wgpu}
    t = {r["batch"]: r for r in torch_res}
    rows = [
        f"| batch | fusion-clip wgpu ({wgpu_name}) images/s | s/iter (iters) | "
        f"PyTorch eager f32 ({torch_name}) images/s | s/iter (iters) | wgpu / PyTorch |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for b in batches:
        wr, tr = w.get(b), t.get(b)
        def cells(r):
            if r is None:
                return "not run", "—"
            return f"{r['images_per_s']:.3f}", f"{r['seconds_per_iter']:.2f} ({r['iters']})"
        wi, ws = cells(wr)
        ti, ts = cells(tr)
        ratio = f"{wr['images_per_s'] / tr['images_per_s']:.3f}×" if wr and tr else "—"
        rows.append(f"| {b} | {wi} | {ws} | {ti} | {ts} | {ratio} |")
    return "\n".join(rows)


def write_section(path: Path, section: str) -> None:
    # Re-read right before writing: another section may have been added meanwhile.
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    idx = text.find(HEADING)
    if idx >= 0:
        # Replace our section (up to the next level-2 heading, if any).
        nxt = re.search(r"^## ", text[idx + len(HEADING):], flags=re.M)
        end = idx + len(HEADING) + nxt.start() if nxt else len(text)
        text = text[:idx] + section.rstrip() + "\n" + ("\n" + text[end:] if nxt else "")
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.write_text(text)



GFLOP_PER_IMAGE = None  # from the bench_clip setup line


def alternate(args) -> int:
    """`--rounds N`: fusion-clip (each of `--backends`) and PyTorch in turn, N rounds, so drift
    of a shared machine hits both; the table gives the mean over rounds and every round."""
    started = dt.datetime.now(dt.timezone.utc)
    cmds: list[str] = []
    mach = machine_info()
    la_start = loadavg()
    backends = [b for b in args.backends.split(",") if b]
    runs: dict[tuple[str, int], list[dict]] = {}
    setup = None
    tinfo = {}
    for rnd in range(args.rounds):
        for backend in backends:
            batches = args.wgsl_batches if backend == "wgsl" and args.wgsl_batches else args.batches
            iters = args.wgsl_iters if backend == "wgsl" and args.wgsl_iters else args.iters
            if backend == "wgsl" and rnd >= args.wgsl_rounds:
                continue
            st, res, _ = run_wgpu(args, cmds, backend, batches, iters)
            setup = setup or st
            for r in res:
                r["round"] = rnd
                runs.setdefault((r["backend"], r["batch"]), []).append(r)
        if not args.skip_torch:
            tinfo, tres = run_torch(args, cmds)
            for r in tres:
                r["round"] = rnd
                runs.setdefault(("pytorch", r["batch"]), []).append(r)
    la_end = loadavg()
    gf = setup["gflop_per_image"] if setup else None

    def cell(key):
        rs = runs.get(key)
        if not rs:
            return "not run", None
        ips = [r["images_per_s"] for r in rs]
        mean = sum(ips) / len(ips)
        per = ", ".join(f"{v:.2f}" for v in ips)
        g = f"; {mean * gf:.1f} GFLOP/s" if gf else ""
        return f"{mean:.3f} ({per}{g})", mean

    names = {"native": "fusion-clip native", "wgsl": "fusion-clip WGSL on lavapipe", "pytorch": "PyTorch eager"}
    cols = backends + (["pytorch"] if not args.skip_torch else [])
    head = "| batch | " + " | ".join(f"{names.get(c, c)} images/s (each round; GFLOP/s)" for c in cols)
    ratios = [c for c in backends] if not args.skip_torch else []
    head += "".join(f" | {names.get(c, c)} / PyTorch" for c in ratios) + " |"
    rows = [head, "|---:" * (1 + len(cols) + len(ratios)) + "|"]
    for b in args.batches:
        cells = {c: cell((c, b)) for c in cols}
        line = f"| {b} | " + " | ".join(cells[c][0] for c in cols)
        for c in ratios:
            x, t = cells[c][1], cells["pytorch"][1]
            line += f" | {x / t:.3f}×" if x and t else " | —"
        rows.append(line + " |")
    tab = "\n".join(rows)
    print()
    print(tab)
    run_cmd = shlex.join([sys.executable, "tools/bench_clip.py"] + sys.argv[1:])
    lines = [
        f"Run {started:%Y-%m-%d %H:%M} UTC, {args.rounds} alternating round(s): in each, the `bench_clip` "
        f"example once per backend ({', '.join(backends)}), then PyTorch, at batch sizes "
        f"{', '.join(map(str, args.batches))} (iterations per batch {','.join(map(str, args.iters))}, "
        f"{args.warmup} warm-up pass(es)). GFLOP/s count the matrix products' multiply-adds as 2 FLOPs "
        f"({gf:.2f} GFLOP per image)." if gf else "",
        "",
        tab,
        "",
        f"- Machine: {mach['cores']} cores ({mach['cpu']}), {mach['ram_gib']} GiB RAM, {mach['os']}; "
        f"wgpu adapter `{setup['device'] if setup else '?'}`; torch {tinfo.get('torch', '—')}, transformers "
        f"{tinfo.get('transformers', '—')} ({tinfo.get('device', '—')}, attention `{tinfo.get('attn', '—')}`).",
        f"- Load average (1/5/15 min): {la_start} at start, {la_end} at end.",
        *[f"- {n}" for n in args.note],
        "",
        "```sh",
        run_cmd,
        *[f"# ran: {c}" for c in cmds],
        "```",
    ]
    section = "\n".join(lines) + "\n"
    print("\n" + section)
    if args.section_out:
        Path(args.section_out).write_text(section)
    Path(args.section_out or "/tmp/bench_clip_runs.json").with_suffix(".json").write_text(
        json.dumps({f"{k[0]}@{k[1]}": v for k, v in runs.items()}, indent=1))
    return 0

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=parse_counts, default=[1, 32, 128])
    ap.add_argument("--iters", type=parse_counts, default=[3, 2, 1],
                    help="one count, or one per batch size (default 3,2,1)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="bench_clip --device (auto|cpu|gpu|NAME)")
    ap.add_argument("--torch-device", default="auto", help="auto (CUDA if available) or cpu")
    ap.add_argument("--bin", help="prebuilt bench_clip binary")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-wgpu", action="store_true")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--wgpu-timeout", type=float, default=None, help="seconds before giving up on the wgpu run")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--benchmarks", default=str(REPO / "BENCHMARKS.md"))
    ap.add_argument("--note", action="append", default=[], help="extra note line for the section")
    ap.add_argument("--rounds", type=int, default=0,
                    help="alternate fusion-clip backends and PyTorch this many rounds (prints a section)")
    ap.add_argument("--backends", default="native,wgsl", help="with --rounds: bench_clip --backend values")
    ap.add_argument("--wgsl-batches", type=parse_counts, default=None, help="with --rounds: batch sizes of the wgsl runs")
    ap.add_argument("--wgsl-iters", type=parse_counts, default=None, help="with --rounds: iterations of the wgsl runs")
    ap.add_argument("--wgsl-rounds", type=int, default=1, help="with --rounds: rounds that include the (slow) wgsl run")
    ap.add_argument("--section-out", default=None, help="with --rounds: write the section here")
    args = ap.parse_args()
    if args.rounds:
        return alternate(args)
    if len(args.iters) not in (1, len(args.batches)):
        ap.error("--iters takes one count or one per batch size")

    started = dt.datetime.now(dt.timezone.utc)
    cmds: list[str] = []
    mach = machine_info()
    la_start = loadavg()
    setup, wres, la_wgpu = (None, [], "?") if args.skip_wgpu else run_wgpu(args, cmds)
    tinfo, tres = ({}, []) if args.skip_torch else run_torch(args, cmds)
    la_end = loadavg()

    wname = setup["device"] if setup else "not run"
    tname = tinfo.get("device", "not run")
    tab = table(args.batches, wres, tres, wname, tname)
    print()
    print(tab)

    run_cmd = shlex.join([sys.executable, "tools/bench_clip.py"] + sys.argv[1:])
    lines = [
        HEADING,
        "",
        f"Random-weight CLIP ViT-B/32 vision tower (`CLIPVisionModel`: hidden 768, 12 layers, 12 heads, "
        f"MLP 3072, image 224, patch 32, quick_gelu, float32), pooled output of random pixel batches. "
        f"Warm-up: fusion-clip {args.warmup} pass(es) before the first batch size only (pipelines do "
        f"not depend on the batch size; a warm-up per batch would double lavapipe's run time), PyTorch "
        f"{args.warmup} pass(es) per batch size; then the timed passes; images/s = batch / mean "
        f"seconds per pass. fusion-clip: `GpuClipVision::pooled` (reads the result back). PyTorch: "
        f"`transformers.CLIPVisionModel`, eager attention, `torch.inference_mode()`, result copied to the host.",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC.",
        "",
        tab,
        "",
        "- Machine: "
        f"{mach['cores']} cores ({mach['cpu']}), {mach['ram_gib']} GiB RAM, {mach['os']}"
        + ("; PyTorch saw no CUDA GPU." if tname.startswith("CPU") else "."),
        f"- Versions: wgpu adapter `{wname}`; torch {tinfo.get('torch', '—')}, "
        f"transformers {tinfo.get('transformers', '—')} (PyTorch device: {tname}, attention `{tinfo.get('attn', '—')}`); "
        f"Python {platform.python_version()}.",
        f"- Load average (1/5/15 min): {la_start} at start, {la_end} at end"
        + ("; per batch: " + ", ".join(f"wgpu b{r['batch']} {r['loadavg']}" for r in wres)
           + (", " if wres and tres else "")
           + ", ".join(f"torch b{r['batch']} {r['loadavg']}" for r in tres) if (wres or tres) else "")
        + ".",
    ]
    if setup:
        lines.append(
            f"- fusion-clip setup: weights built in {setup['weights_build_s']:.1f} s, CPU load + upload "
            f"{setup['load_upload_s']:.1f} s; at most {setup['max_batch_per_pass']} images per pass on this adapter."
        )
    missing = [b for b in args.batches if b not in {r['batch'] for r in wres}] if not args.skip_wgpu else []
    if missing:
        why = (f"it was stopped by `--wgpu-timeout {args.wgpu_timeout:.0f}` s" if args.wgpu_timeout
               else "the run was interrupted")
        lines.append(f"- The wgpu run did not finish batch size(s) {', '.join(map(str, missing))}: {why}.")
    lines += [
        "- lavapipe/llvmpipe is Mesa's software Vulkan driver: these wgpu numbers measure WGSL kernels "
        "compiled for a software rasterizer on the CPU cores, not a GPU, and PyTorch's CPU kernels (oneDNN/MKL "
        "GEMMs) are expected to beat them by a wide margin. The project's target, at least PyTorch eager "
        "float32 throughput on a real GPU, can only be checked on a machine with a GPU "
        "(`--device gpu`, with PyTorch on CUDA).",
        *[f"- {n}" for n in args.note],
        "",
        "Commands (repo root):",
        "",
        "```sh",
        run_cmd,
        *[f"# ran: {c}" for c in cmds],
        "```",
    ]
    section = "\n".join(lines) + "\n"
    if not args.no_write:
        write_section(Path(args.benchmarks), section)
        print(f"\nwrote section to {args.benchmarks}")
    else:
        print("\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
