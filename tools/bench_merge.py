#!/usr/bin/env python3
"""Merge benchmark: fusion-host vs FusionBench vs mergekit on CLIP ViT-B/32 vision checkpoints.

    python3 tools/bench_merge.py --out /tmp/merge.md            # the full-size benchmark
    python3 tools/bench_merge.py --small --out /tmp/small.md    # smoke test (2-layer ViT)
    python3 tools/bench_merge.py --setup                        # create the peers' virtualenv

What it does, in one run on the same files:

1. Generates nine random-weight CLIP ViT-B/32 *vision* checkpoints in Hugging Face layout
   (`config.json` of openai/clip-vit-base-patch32's vision config, `model.safetensors`, float32,
   ~350 MB each): `_pretrained_` and eight "fine-tuned" ones (base + small noise), named after
   FusionBench's TA8 tasks, into `--work` (default /tmp/fusion-bench-data; reused if present).
   Tensor names are those of the Hub's CLIP vision checkpoints (`vision_model.` prefix, as
   transformers 4.x saves CLIPVisionModel and as tanganke/clip-vit-base-patch32_* are stored);
   names and shapes are checked against `transformers.CLIPVisionModel` when transformers is
   importable (transformers 5 names them without the prefix and loads both).
2. Times end-to-end (load, merge, save) task arithmetic (lambda 0.3) and TIES-merging (lambda 0.3,
   threshold 20, merge sum) with fusion-host, FusionBench's CLI and mergekit, each under
   `/usr/bin/time -v` (wall time and peak RSS).
3. Measures the floor on the same bytes: the nine files read from a (per-file evicted) page
   cache, the same warm, the files mapped and copied out (how fusion-host reads them), and a
   memcpy of the nine checkpoints' bytes in memory.
4. Checks the merged models against each other and against a NumPy re-implementation of
   FusionBench's formulas, and writes BENCHMARKS.md.

The script needs numpy and safetensors; if the running interpreter lacks them it re-executes
itself with the virtualenv's (`--venv`, default /tmp/benchvenv). Raw results also go to
`<work>/results-<size>.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import mmap
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path(os.environ.get("BENCH_VENV", "/tmp/benchvenv"))
TASKS = ["sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"]
PREFIX = "vision_model."
LAMBDA = 0.3
TIES_THRESHOLD = 20
GEN_VERSION = 1  # bump when the generated data changes


# ------------------------------------------------------------------------------------------
# interpreter / environment


def ensure_deps(args) -> None:
    """Re-exec under the benchmark venv when numpy/safetensors are missing here."""
    try:
        import numpy  # noqa: F401
        import safetensors  # noqa: F401

        return
    except ImportError:
        pass
    py = Path(args.venv) / "bin" / "python"
    if py.exists() and not os.environ.get("BENCH_REEXEC"):
        os.environ["BENCH_REEXEC"] = "1"
        os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.exit(f"bench_merge: numpy and safetensors are needed; run `python3 {sys.argv[0]} --setup` first "
             f"(creates {args.venv}) or pass --venv")


def setup_venv(venv: Path) -> None:
    if not (venv / "bin" / "python").exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    subprocess.check_call(pip + ["install", "--upgrade", "pip"])
    subprocess.check_call(pip + ["install", "-r", str(REPO / "tools" / "bench" / "requirements.txt")])
    if not Path("/usr/bin/time").exists():
        subprocess.call(["apt-get", "install", "-y", "time"])


def log(msg: str) -> None:
    print(f"[bench {dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def sh(cmd, **kw) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return f"({e})"


# ------------------------------------------------------------------------------------------
# checkpoints


def vision_config(layers: int) -> dict:
    """openai/clip-vit-base-patch32's vision config as a CLIPVisionModel config.json."""
    return {
        "architectures": ["CLIPVisionModel"],
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "image_size": 224,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": 12,
        "num_channels": 3,
        "num_hidden_layers": layers,
        "patch_size": 32,
        "projection_dim": 512,
        "torch_dtype": "float32",
        "transformers_version": "4.40.0",
    }


def clip_vision_spec(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of CLIPVisionModel ViT-B/32 in state_dict order."""
    d, ff, p, npos = 768, 3072, 32, (224 // 32) ** 2 + 1
    spec = [
        ("embeddings.class_embedding", (d,)),
        ("embeddings.patch_embedding.weight", (d, 3, p, p)),
        ("embeddings.position_embedding.weight", (npos, d)),
        ("pre_layrnorm.weight", (d,)),
        ("pre_layrnorm.bias", (d,)),
    ]
    for i in range(layers):
        L = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            spec += [(L + f"self_attn.{proj}.weight", (d, d)), (L + f"self_attn.{proj}.bias", (d,))]
        spec += [
            (L + "layer_norm1.weight", (d,)),
            (L + "layer_norm1.bias", (d,)),
            (L + "mlp.fc1.weight", (ff, d)),
            (L + "mlp.fc1.bias", (ff,)),
            (L + "mlp.fc2.weight", (d, ff)),
            (L + "mlp.fc2.bias", (d,)),
            (L + "layer_norm2.weight", (d,)),
            (L + "layer_norm2.bias", (d,)),
        ]
    spec += [("post_layernorm.weight", (d,)), ("post_layernorm.bias", (d,))]
    return [(PREFIX + n, s) for n, s in spec]


def check_spec_against_transformers(layers: int) -> str:
    """Compare the spec with transformers.CLIPVisionModel (meta device). Returns a note."""
    try:
        import torch
        from transformers import CLIPVisionConfig, CLIPVisionModel
        import transformers
    except Exception as e:  # noqa: BLE001
        return f"not checked (transformers not importable: {e})"
    cfg = {k: v for k, v in vision_config(layers).items() if k not in ("architectures", "torch_dtype", "transformers_version")}
    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig(**cfg))
    theirs = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    ours = [(n[len(PREFIX):], s) for n, s in clip_vision_spec(layers)]
    theirs_unprefixed = [(k[len(PREFIX):] if k.startswith(PREFIX) else k, s) for k, s in theirs]
    if sorted(theirs_unprefixed) != sorted(ours):
        missing = set(theirs_unprefixed) ^ set(ours)
        raise SystemExit(f"bench_merge: generated tensor spec differs from transformers {transformers.__version__}: {sorted(missing)[:10]}")
    prefixed = theirs[0][0].startswith(PREFIX)
    return (f"checked against transformers {transformers.__version__} CLIPVisionModel: same {len(ours)} tensors and shapes"
            + ("" if prefixed else f" (it names them without the `{PREFIX}` prefix and loads the prefixed layout)"))


def generate(work: Path, small: bool) -> dict:
    import numpy as np
    from safetensors.numpy import save_file

    layers = 2 if small else 12
    spec = clip_vision_spec(layers)
    root = work / ("small" if small else "full")
    models = root / "models"
    stamp = root / "generated.json"
    want = {"version": GEN_VERSION, "layers": layers, "models": ["_pretrained_", *TASKS]}
    if stamp.exists() and json.loads(stamp.read_text()).get("spec") == want:
        log(f"reusing checkpoints in {models}")
        return json.loads(stamp.read_text())
    shutil.rmtree(root, ignore_errors=True)
    models.mkdir(parents=True)
    note = check_spec_against_transformers(layers)
    log(note)
    t0 = time.perf_counter()

    def rng(model_idx: int, tensor_idx: int):
        return np.random.default_rng([20241123, model_idx, tensor_idx])

    base = {}
    for ti, (name, shape) in enumerate(spec):
        r = rng(0, ti)
        if "layer_norm" in name or "layrnorm" in name:
            x = (1.0 if name.endswith("weight") else 0.0) + 0.02 * r.standard_normal(shape, dtype=np.float32)
        else:
            x = 0.02 * r.standard_normal(shape, dtype=np.float32)
        base[name] = x.astype(np.float32)
    for mi, mname in enumerate(["_pretrained_", *TASKS]):
        d = models / mname
        d.mkdir()
        (d / "config.json").write_text(json.dumps(vision_config(layers), indent=2) + "\n")
        if mi == 0:
            sd = base
        else:
            sd = {}
            for ti, (name, shape) in enumerate(spec):
                # a fine-tune: small dense noise, a few entries moved more (heavier tail)
                r = rng(mi, ti)
                noise = r.standard_normal(shape, dtype=np.float32)
                noise *= np.float32(1e-3 * (0.5 + mi / 8))
                sd[name] = base[name] + noise
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        log(f"  wrote {d / 'model.safetensors'} ({(d / 'model.safetensors').stat().st_size / 1e6:.1f} MB)")
    info = {
        "spec": want,
        "transformers_check": note,
        "n_tensors": len(spec),
        "n_params": int(sum(int(np.prod(s)) for _, s in spec)),
        "file_bytes": (models / "_pretrained_" / "model.safetensors").stat().st_size,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    stamp.write_text(json.dumps(info, indent=2))
    return info


def model_dirs(work: Path, small: bool) -> dict[str, Path]:
    models = work / ("small" if small else "full") / "models"
    return {m: models / m for m in ["_pretrained_", *TASKS]}


# ------------------------------------------------------------------------------------------
# configs for the three tools


def write_configs(work: Path, small: bool) -> dict:
    root = work / ("small" if small else "full")
    dirs = model_dirs(work, small)
    cfg = root / "configs"
    shutil.rmtree(cfg, ignore_errors=True)

    # fusion-host: --config-path <cfg>/fusion-host; modelpool=bench_ta8
    fh = cfg / "fusion-host"
    (fh / "modelpool").mkdir(parents=True)
    (fh / "method").mkdir(parents=True)
    lines = ["_target_: fusion_bench.modelpool.BaseModelPool", "models:"]
    lines += [f"  {m}: {p}" for m, p in dirs.items()]
    (fh / "modelpool" / "bench_ta8.yaml").write_text("\n".join(lines) + "\n")
    (fh / "method" / "task_arithmetic.yaml").write_text(
        f"_target_: fusion_bench.method.TaskArithmeticAlgorithm\nscaling_factor: {LAMBDA}\n")
    (fh / "method" / "ties_merging.yaml").write_text(
        f"_target_: fusion_bench.method.TiesMergingAlgorithm\nscaling_factor: {LAMBDA}\n"
        f"threshold: {TIES_THRESHOLD}\nremove_keys: []\nmerge_func: sum\n")

    # FusionBench: --config-dir <cfg>/fusionbench; modelpool=CLIPVisionModelPool/bench_ta8
    fb = cfg / "fusionbench"
    (fb / "modelpool" / "CLIPVisionModelPool").mkdir(parents=True)
    lines = ["_target_: fusion_bench.modelpool.CLIPVisionModelPool", "_recursive_: False",
             "processor: null", "platform: hf", "models:"]
    lines += [f"  {m}: {p}" for m, p in dirs.items()]
    (fb / "modelpool" / "CLIPVisionModelPool" / "bench_ta8.yaml").write_text("\n".join(lines) + "\n")

    # mergekit: FusionBench's lambda -> per-model weight, normalize false
    mk = cfg / "mergekit"
    mk.mkdir(parents=True)

    def mk_yaml(method: str, extra: str, raw: bool = False) -> str:
        # raw (mergekit-pytorch): each model is a .safetensors file, not a model folder
        ref = (lambda m: dirs[m] / "model.safetensors") if raw else (lambda m: dirs[m])
        out = [f"merge_method: {method}", f"base_model: {ref('_pretrained_')}", "models:"]
        for t in TASKS:
            out += [f"  - model: {ref(t)}", "    parameters:", f"      weight: {LAMBDA}"]
            if extra:
                out += [f"      {extra}"]
        out += ["parameters:", "  normalize: false", "dtype: float32", "out_dtype: float32"]
        return "\n".join(out) + "\n"

    (mk / "task_arithmetic.yml").write_text(mk_yaml("task_arithmetic", ""))
    # FusionBench's threshold 20 (keep the top 20 %) -> mergekit's density 0.2
    (mk / "ties.yml").write_text(mk_yaml("ties", f"density: {TIES_THRESHOLD / 100}"))
    (mk / "task_arithmetic-raw.yml").write_text(mk_yaml("task_arithmetic", "", raw=True))
    (mk / "ties-raw.yml").write_text(mk_yaml("ties", f"density: {TIES_THRESHOLD / 100}", raw=True))
    return {"fusion-host": fh, "fusionbench": fb, "mergekit": mk}


# ------------------------------------------------------------------------------------------
# running


def parse_time_v(text: str) -> dict:
    out = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["peak_rss_kb"] = int(m.group(1))
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if m:
        parts = [float(x) for x in m.group(1).split(":")]
        secs = 0.0
        for x in parts:
            secs = secs * 60 + x
        out["elapsed_s_time"] = secs
    for key, label in (("user_s", "User time (seconds)"), ("sys_s", "System time (seconds)"),
                       ("cpu_pct", "Percent of CPU this job got"), ("major_faults", "Major (requiring I/O) page faults"),
                       ("minor_faults", "Minor (reclaiming a frame) page faults"), ("exit_status", "Exit status"),
                       ("voluntary_cs", "Voluntary context switches"), ("involuntary_cs", "Involuntary context switches"),
                       ("fs_inputs", "File system inputs"), ("fs_outputs", "File system outputs")):
        m = re.search(re.escape(label) + r": ([\d.]+)", text)
        if m:
            out[key] = float(m.group(1))
    return out


def warm_cache(paths) -> None:
    """Read every input once so that every tool starts from the same (warm) page cache."""
    buf = bytearray(64 << 20)
    mv = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(mv):
                pass


MEM_LIMIT_GIB = 18.0


def _limit_memory() -> None:
    """Cap the run's private writable memory (RLIMIT_DATA) so that a tool that needs more than the
    shared 24 GB machine can spare fails alone instead of pushing others out (OOM)."""
    import resource

    lim = int(MEM_LIMIT_GIB * (1 << 30))
    resource.setrlimit(resource.RLIMIT_DATA, (lim, lim))


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        try:
            kids = [int(x) for x in Path(f"/proc/{q}/task/{q}/children").read_text().split()]
        except (OSError, ValueError):
            kids = []
        out += kids
        todo += kids
    return out


class RssSampler:
    """Peaks of RssAnon and RssFile (from /proc/PID/status) of a process tree, polled every 0.2 s:
    `Maximum resident set size` counts file-backed pages too (memory-mapped inputs), this
    tells them apart."""

    def __init__(self, root_pid: int):
        import threading

        self.root, self.peak = root_pid, {"anon": 0, "file": 0, "total": 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            anon = file_ = 0
            for pid in _descendants(self.root):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("RssAnon:"):
                            anon += int(line.split()[1])
                        elif line.startswith("RssFile:"):
                            file_ += int(line.split()[1])
                except (OSError, ValueError):
                    pass
            self.peak["anon"] = max(self.peak["anon"], anon)
            self.peak["file"] = max(self.peak["file"], file_)
            self.peak["total"] = max(self.peak["total"], anon + file_)
            self.stop.wait(0.2)

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join()
        return {"rss_anon_peak_kb": self.peak["anon"], "rss_file_peak_kb": self.peak["file"]}


def run_tool(name: str, cmd: list[str], cwd: Path, env: dict, timeout: int, logdir: Path, inputs) -> dict:
    logdir.mkdir(parents=True, exist_ok=True)
    tfile = logdir / f"{name}.time"
    out_log = logdir / f"{name}.log"
    warm_cache(inputs)
    full = ["/usr/bin/time", "-v", "-o", str(tfile), *cmd]
    rec = {"cmd": " ".join(cmd), "cwd": str(cwd), "load_before": loadavg(), "log": str(out_log)}
    log(f"run {name}: {' '.join(cmd)}  (load {rec['load_before']})")
    t0 = time.perf_counter()
    with open(out_log, "w") as lf:
        # own process group, so that a timeout ends the tool too, not only /usr/bin/time
        p = subprocess.Popen(full, cwd=cwd, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=_limit_memory if MEM_LIMIT_GIB > 0 else None)
        sampler = RssSampler(p.pid)
        try:
            rec["rc"] = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            rec["rc"] = "timeout"
    rec["wall_s"] = round(time.perf_counter() - t0, 3)
    rec.update(sampler.finish())
    rec["load_after"] = loadavg()
    if tfile.exists():
        rec.update(parse_time_v(tfile.read_text()))
    rec["ok"] = rec["rc"] == 0
    tail = out_log.read_text(errors="replace")[-6000:] if out_log.exists() else ""
    rec["log_tail"] = tail
    log(f"  -> rc={rec['rc']} wall={rec['wall_s']}s peak_rss={rec.get('peak_rss_kb', 0) / 1024:.0f} MiB")
    return rec


def base_env() -> dict:
    env = dict(os.environ)
    env.pop("BENCH_REEXEC", None)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"})
    return env


def fusion_host_binary(args) -> Path:
    return Path(args.fusion_host) if args.fusion_host else REPO / "target" / "release" / "fusion-host"


def fusion_host_status(binary: Path, env: dict, plugin_dir: str | None = None) -> dict:
    st = {"binary": str(binary)}
    if not binary.exists():
        st["error"] = f"{binary} does not exist (build with `cargo build --release` in {REPO})"
        return st
    st["built"] = f"{dt.datetime.fromtimestamp(binary.stat().st_mtime, dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    st["sha256"] = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    extra = ["--plugin-dir", plugin_dir] if plugin_dir else []
    p = subprocess.run([str(binary), *extra, "plugins"], capture_output=True, text=True, env=env, timeout=120)
    st["plugins"] = p.stdout + p.stderr
    st["has_task_arithmetic"] = bool(re.search(r"\btask_arithmetic\b", st["plugins"]))
    st["has_ties_merging"] = bool(re.search(r"\bties_merging\b", st["plugins"]))
    st["version"] = sh([str(binary), "--version"], env=env)
    st["devices"] = sh([str(binary), "devices"], env=env)
    return st


def out_weights(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    idx = folder / "model.safetensors.index.json"
    if idx.exists():
        files = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        return [folder / f for f in files]
    return sorted(folder.glob("*.safetensors"))


def fmt_repeats(rec: dict) -> str:
    """` (median of N: a–b s)` for a repeated tool, else nothing."""
    w = rec.get("repeats_wall_s")
    if not w or len(w) < 2:
        return ""
    return f" (median of {len(w)}: {min(w):.2f}–{max(w):.2f} s)"


def run_all(args, small: bool, cfgs: dict, results: dict) -> None:
    root = args.work / ("small" if small else "full")
    runs = root / "runs"
    dirs = model_dirs(args.work, small)
    inputs = [d / "model.safetensors" for d in dirs.values()]
    env = base_env()
    venv_bin = Path(args.venv) / "bin"
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results.setdefault("runs", {})

    def record(tool, method, rec):
        results["runs"].setdefault(tool, {})[method] = rec
        save_results(args, small, results)
        results["load_end"] = loadavg()
        write_report(args, small, results)  # a partial report survives an interrupted run

    for tool in tools:
        for method in methods:
            out = runs / f"{tool}-{method}" / "merged"
            shutil.rmtree(out.parent, ignore_errors=True)
            out.parent.mkdir(parents=True)
            cwd = out.parent
            if tool == "fusion-host":
                fh = fusion_host_binary(args)
                st = results.get("fusion_host_status") or {}
                if not st.get("has_ties_merging") and args.wait_for_fh > 0:
                    # the release build may still be running: wait for the binary and the plugin
                    t_end = time.time() + args.wait_for_fh
                    while time.time() < t_end:
                        st = fusion_host_status(fh, base_env(), args.fh_plugin_dir)
                        if st.get("has_task_arithmetic") and st.get("has_ties_merging"):
                            break
                        log(f"waiting for {fh} with task_arithmetic/ties_merging ({st.get('error') or 'plugin not listed yet'})")
                        time.sleep(30)
                    results["fusion_host_status"] = st
                key = "has_task_arithmetic" if method == "ta" else "has_ties_merging"
                if not st.get(key):
                    record(tool, method, {"ok": False, "skipped": True,
                                          "error": st.get("error") or f"`fusion-host plugins` lists no {'task_arithmetic' if method == 'ta' else 'ties_merging'} yet"})
                    continue
                target = "task_arithmetic" if method == "ta" else "ties_merging"
                cmd = [str(fh), "--device", args.fh_device, *(["--plugin-dir", args.fh_plugin_dir] if args.fh_plugin_dir else []),
                       "--config-path", str(cfgs["fusion-host"]),
                       "modelpool=bench_ta8", f"method={target}", "taskpool=dummy",
                       f"merged_model_save_path={out}", f"report_save_path={cwd / 'report.json'}"]
                e = dict(env)
                e.setdefault("FUSION_CONFIG_PATH", str(REPO / "configs"))
                # fusion-host's runs are short and this VM's speed drifts: repeat them and keep
                # the run of median wall time (with every run's time beside it).
                recs = []
                for r in range(max(1, args.fh_repeats)):
                    if r:
                        shutil.rmtree(out, ignore_errors=True)
                    # each run its own log, so that the run shown keeps its log
                    name = f"{tool}-{method}" + (f"-{r + 1}" if r else "")
                    recs.append(run_tool(name, cmd, cwd, e, args.timeout, runs / "logs", inputs))
                    if not recs[-1]["ok"]:
                        break
                rec = sorted(recs, key=lambda x: x["wall_s"])[len(recs) // 2] if all(x["ok"] for x in recs) else recs[-1]
                if len(recs) > 1:
                    rec = dict(rec, repeats_wall_s=[x["wall_s"] for x in recs])
            elif tool == "fusionbench":
                exe = venv_bin / "fusion_bench"
                target = "task_arithmetic" if method == "ta" else "ties_merging"
                cmd = [str(exe), "--config-dir", str(cfgs["fusionbench"]),
                       f"method={target}", f"method.scaling_factor={LAMBDA}",
                       "modelpool=CLIPVisionModelPool/bench_ta8", "taskpool=dummy",
                       "fabric.accelerator=cpu", f"merged_model_save_path={out}",
                       f"report_save_path={cwd / 'report.json'}"]
                if method == "ties":
                    cmd[5:5] = [f"method.threshold={TIES_THRESHOLD}", "method.merge_func=sum"]
                rec = run_tool(f"{tool}-{method}", cmd, cwd, env, args.timeout, runs / "logs", inputs)
            elif tool == "mergekit":
                exe = venv_bin / "mergekit-yaml"
                yml = cfgs["mergekit"] / ("task_arithmetic.yml" if method == "ta" else "ties.yml")
                cmd = [str(exe), str(yml), str(out), "--device", "cpu", "--lazy-unpickle",
                       "--no-copy-tokenizer", *args.mergekit_flags.split()]
                rec = run_tool(f"{tool}-{method}", cmd, cwd, env, args.timeout, runs / "logs", inputs)
            elif tool in ("mergekit-pytorch", "mergekit-pytorch-cuda"):
                # -cuda: the same tool with its tensors on the GPU (`--device cuda`)
                cuda = tool.endswith("-cuda")
                exe = venv_bin / "mergekit-pytorch"
                yml = cfgs["mergekit"] / ("task_arithmetic-raw.yml" if method == "ta" else "ties-raw.yml")
                cmd = [str(exe), str(yml), str(out), "--device", "cuda" if cuda else "cpu", "--lazy-unpickle",
                       "--no-copy-tokenizer", *args.mergekit_flags.split()]
                e = dict(env)
                if cuda:
                    e.pop("CUDA_VISIBLE_DEVICES", None)
                rec = run_tool(f"{tool}-{method}", cmd, cwd, e, args.timeout, runs / "logs", inputs)
            else:
                raise SystemExit(f"unknown tool {tool}")
            rec["output"] = str(out)
            rec["output_files"] = [str(p) for p in out_weights(out)] if out.exists() else []
            if rec["ok"] and not rec["output_files"]:
                rec["ok"] = False
                rec["error"] = "exit 0 but no safetensors written"
                rec["short_error"] = "exit 0, no weights written"
                if tool == "mergekit" and "No JSON architecture found" in rec.get("log_tail", ""):
                    rec["error"] = (
                        "mergekit-yaml exited 0 but wrote no weights (only config.json, README.md, mergekit_config.yml). "
                        "It has no JSON architecture for CLIPVisionModel, so `architecture/auto.py` infers the layout from "
                        "a transformers meta-device model; transformers 5 names CLIPVisionModel's tensors without the "
                        "`vision_model.` prefix the Hub checkpoints carry, so no planned tensor exists in the files and the "
                        "task graph is empty. `--allow-crimes` does not apply (no architecture mix). The same configs on "
                        "a copy with the prefix stripped do merge; `mergekit-pytorch` (raw state-dict mode) is used instead")
            if rec["ok"] is False and rec.get("rc") not in (0, None) and "error" not in rec:
                tail = rec.get("log_tail", "")
                if "MemoryError" in tail or "DefaultCPUAllocator" in tail or "Cannot allocate memory" in tail \
                        or "bad_alloc" in tail or rec.get("rc") in (-9, 137):
                    rec["error"] = f"ran out of memory under the {MEM_LIMIT_GIB:g} GiB RLIMIT_DATA cap"
                    rec["short_error"] = f"out of memory (> {MEM_LIMIT_GIB:g} GiB cap)"
            if rec.get("rc") == "timeout":
                rec["short_error"] = f"timed out after {args.timeout} s"
            record(tool, method, rec)


# ------------------------------------------------------------------------------------------
# floor


def floor(args, small: bool) -> dict:
    import numpy as np

    paths = [d / "model.safetensors" for d in model_dirs(args.work, small).values()]
    sizes = [p.stat().st_size for p in paths]
    total = sum(sizes)
    res = {"files": len(paths), "bytes": total, "load_before": loadavg()}

    def fincore_pct() -> str:
        out = sh(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", *map(str, paths)])
        try:
            res_b = sum(int(l.split()[0]) for l in out.splitlines())
            return f"{100 * res_b / total:.0f}%"
        except Exception:  # noqa: BLE001
            return "?"

    bufs = [np.empty(s, dtype=np.uint8) for s in sizes]
    for b in bufs:
        b.fill(0)  # fault the pages in: the copy below measures the copy, not page faults
    # cold-ish: evict these files' pages (not the whole cache: the machine is shared)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    res["cache_before_cold_read"] = fincore_pct()

    def read_all() -> float:
        t0 = time.perf_counter()
        for p, b in zip(paths, bufs):
            with open(p, "rb", buffering=0) as f:
                mv = memoryview(b)
                n = 0
                while n < len(b):
                    k = f.readinto(mv[n:])
                    if not k:
                        break
                    n += k
        return time.perf_counter() - t0

    res["cold_read_s"] = round(read_all(), 3)
    res["cache_after_cold_read"] = fincore_pct()
    res["warm_read_s"] = round(min(read_all() for _ in range(2)), 3)
    dst = np.empty(max(sizes), dtype=np.uint8)
    dst.fill(0)
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        for b in bufs:
            np.copyto(dst[: len(b)], b)
        t = time.perf_counter() - t0
        best = t if best is None else min(best, t)
    res["memcpy_s"] = round(best, 3)

    # What fusion-host's reader does: map each file (page cache warm) and copy its bytes out,
    # which faults the mapped pages in; best of 3.
    def mmap_copy_all() -> float:
        t0 = time.perf_counter()
        for p in paths:
            with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                src = np.frombuffer(m, dtype=np.uint8)
                np.copyto(dst[: len(src)], src)
                del src
        return time.perf_counter() - t0

    res["mmap_copy_s"] = round(min(mmap_copy_all() for _ in range(3)), 3)
    # writing one merged checkpoint's worth (page cache, no fsync)
    outp = args.work / ("small" if small else "full") / "floor-write.bin"
    t0 = time.perf_counter()
    with open(outp, "wb") as f:
        f.write(memoryview(bufs[0]))
    res["write_one_s"] = round(time.perf_counter() - t0, 3)
    outp.unlink()
    res["load_after"] = loadavg()
    for k in ("cold_read_s", "warm_read_s", "mmap_copy_s", "memcpy_s"):
        res[k.replace("_s", "_gbps")] = round(total / res[k] / 1e9, 2) if res[k] else None
    del bufs
    return res


# ------------------------------------------------------------------------------------------
# numerical agreement


def load_merged(paths: list[str]) -> dict:
    from safetensors.numpy import load_file

    out = {}
    for p in paths:
        for k, v in load_file(p).items():
            out[k[len(PREFIX):] if k.startswith(PREFIX) else k] = v
    return out


def reference(args, small: bool, method: str) -> dict:
    """FusionBench's task arithmetic / TIES (sum) in NumPy, float32, FusionBench's order."""
    import numpy as np
    from safetensors.numpy import load_file

    dirs = model_dirs(args.work, small)
    base = {k[len(PREFIX):]: v for k, v in load_file(str(dirs["_pretrained_"] / "model.safetensors")).items()}
    keys = sorted(base)  # state_dict_to_vector sorts the keys
    if method == "ta":
        tau = None
        for t in TASKS:
            sd = load_file(str(dirs[t] / "model.safetensors"))
            d = {k: sd[PREFIX + k] - base[k] for k in keys}
            if tau is None:
                tau = d
            else:
                for k in keys:
                    tau[k] += d[k]
        return {k: base[k] + tau[k] * np.float32(LAMBDA) for k in keys}
    # TIES
    flat_ptm = np.concatenate([base[k].reshape(-1) for k in keys])
    D = flat_ptm.size
    K = TIES_THRESHOLD / 100 if TIES_THRESHOLD > 1 else TIES_THRESHOLD
    kk = D - int(D * K)  # torch kthvalue is 1-based
    tv = np.empty((len(TASKS), D), dtype=np.float32)
    for i, t in enumerate(TASKS):
        sd = load_file(str(dirs[t] / "model.safetensors"))
        tv[i] = np.concatenate([sd[PREFIX + k].reshape(-1) for k in keys])
        tv[i] -= flat_ptm
        a = np.abs(tv[i])
        kth = np.partition(a, kk - 1)[kk - 1]
        tv[i][a < kth] = 0.0
        del a
    s = np.sign(tv.sum(axis=0, dtype=np.float32))
    majority = np.sign(s.sum())
    s[s == 0] = majority
    agree = np.where(s > 0, tv > 0, tv < 0)
    merged = np.where(agree, tv, np.float32(0)).sum(axis=0, dtype=np.float32)
    del tv, agree
    theta = flat_ptm + np.float32(LAMBDA) * merged
    out, off = {}, 0
    for k in keys:
        n = base[k].size
        out[k] = theta[off:off + n].reshape(base[k].shape)
        off += n
    return out


def compare(a: dict, b: dict) -> dict:
    import numpy as np

    if set(a) != set(b):
        return {"error": f"different tensor names: only in first {sorted(set(a) - set(b))[:3]}, only in second {sorted(set(b) - set(a))[:3]}"}
    worst, worst_key, n_diff, n = 0.0, None, 0, 0
    per = {}
    for k in sorted(a):
        if a[k].shape != b[k].shape:
            return {"error": f"{k}: shape {a[k].shape} vs {b[k].shape}"}
        d = np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))
        m = float(d.max()) if d.size else 0.0
        n_diff += int((d > 1e-6).sum())
        n += d.size
        if m >= worst:
            worst, worst_key = m, k
        per[k] = m
    picks = ["embeddings.class_embedding", "encoder.layers.0.self_attn.q_proj.weight",
             "encoder.layers.1.mlp.fc1.weight", "post_layernorm.weight"]
    return {"max_abs": worst, "worst_tensor": worst_key, "elements_over_1e-6": n_diff, "elements": n,
            "tensors": {k: per[k] for k in picks if k in per}}


def agreement(args, small: bool, results: dict) -> dict:
    runs = results.get("runs", {})
    out = {}
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        log(f"agreement for {method}: NumPy reference")
        ref = reference(args, small, method)
        merged = {}
        for tool in runs:
            rec = runs[tool].get(method) or {}
            if rec.get("ok") and rec.get("output_files"):
                try:
                    merged[tool] = load_merged(rec["output_files"])
                except Exception as e:  # noqa: BLE001
                    out.setdefault(method, {})[f"{tool} (unreadable)"] = {"error": str(e)}
        res = out.setdefault(method, {})
        for tool, sd in merged.items():
            res[f"{tool} vs numpy-reference"] = compare(sd, ref)
        names = list(merged)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                res[f"{names[i]} vs {names[j]}"] = compare(merged[names[i]], merged[names[j]])
        del ref, merged
    return out


# ------------------------------------------------------------------------------------------
# report


def save_results(args, small: bool, results: dict) -> None:
    p = args.work / f"results-{'small' if small else 'full'}.json"
    p.write_text(json.dumps(results, indent=2, default=str))


def versions(args) -> dict:
    py = str(Path(args.venv) / "bin" / "python")
    code = ("import importlib.metadata as m\n"
            "for p in ['fusion-bench','mergekit','torch','transformers','safetensors','numpy','lightning','hydra-core']:\n"
            "    try: print(p, m.version(p))\n"
            "    except Exception as e: print(p, 'missing')\n")
    v = {}
    for line in sh([py, "-c", code]).splitlines():
        parts = line.split()
        if len(parts) == 2:
            v[parts[0]] = parts[1]
    v["python (venv)"] = sh([py, "--version"])
    v["rustc"] = sh(["rustc", "--version"])
    v["mesa / vulkan"] = sh(["bash", "-c", "dpkg-query -W -f='${Package} ${Version}\\n' mesa-vulkan-drivers 2>/dev/null"])
    return v


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except Exception:  # noqa: BLE001
        pass
    osname = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram": mem, "os": osname, "kernel": platform.release(),
            "disk": sh(["bash", "-c", "df -h /tmp | tail -1"]),
            "gpu": sh(["bash", "-c", "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null"])}


def fmt_s(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def fmt_rss(rec) -> str:
    kb = rec.get("peak_rss_kb")
    return "—" if kb is None else f"{kb / 1024:.0f} MiB"


def fh_phases(run_dir: Path) -> str:
    """Where fusion-host's time went, from the timestamps of its log file (outputs/**/fusion-host.log)."""
    logs = sorted(run_dir.glob("outputs/**/fusion-host.log"))
    if not logs:
        return ""
    marks = []
    for line in logs[-1].read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\dT[\d:.]+)Z", line)
        if not m:
            continue
        when = dt.datetime.fromisoformat(m.group(1)[:26])
        for needle, label in (("run started", "start"), ("compute device ready", "device ready"),
                              ("trimmed and elected", "TIES thresholds + sign election done"),
                              ("merged model saved", "merged model computed and saved")):
            if needle in line:
                marks.append((label, when))
    if len(marks) < 2:
        return ""
    t0 = marks[0][1]
    parts, prev = [], t0
    for label, when in marks[1:]:
        parts.append(f"{label} at +{(when - t0).total_seconds():.1f} s (+{(when - prev).total_seconds():.1f} s)")
        prev = when
    return "; ".join(parts)


def split_rss(rec) -> str:
    if not rec.get("rss_anon_peak_kb") and not rec.get("rss_file_peak_kb"):
        return "—"
    return f"{rec.get('rss_anon_peak_kb', 0) / 1024:.0f} / {rec.get('rss_file_peak_kb', 0) / 1024:.0f} MiB"


def profiler_table(text: str) -> str:
    i = text.rfind("Profiler summary")
    if i < 0:
        return ""
    lines = text[i:].splitlines()
    out = []
    for line in lines:
        out.append(line)
        if line.startswith("Total"):
            break
    return "\n".join(out)


def write_report(args, small: bool, results: dict) -> None:
    runs = results.get("runs", {})
    fl = results.get("floor", {})
    gen = results.get("generated", {})
    m = results.get("machine", {})
    v = results.get("versions", {})
    fh = results.get("fusion_host_status", {})
    L = []
    A = L.append
    A("# Merge benchmark: fusion-host vs FusionBench vs mergekit")
    A("")
    A(f"Generated by `python3 tools/bench_merge.py {' '.join(results.get('argv', []))}` on "
      f"{results.get('started', '?')} (UTC); raw numbers in `{args.work}/results-{'small' if small else 'full'}.json`.")
    A("")
    A("## Data")
    A("")
    layers = gen.get("spec", {}).get("layers")
    A(f"Nine random-weight CLIP ViT-B/32 vision checkpoints ({'**small smoke-test variant, ' + str(layers) + ' layers**' if small else '12 layers, the real size'}), "
      f"Hugging Face layout (`config.json` = openai/clip-vit-base-patch32's vision config, model_type `clip_vision_model`, "
      f"architectures `CLIPVisionModel`; `model.safetensors`, float32): `_pretrained_` (N(0, 0.02) weights, LayerNorm around 1/0) "
      f"and eight fine-tuned ones named after FusionBench's TA8 tasks (base + dense Gaussian noise, σ = 0.56e-3 … 1.5e-3).")
    if gen:
        A(f"{gen.get('n_tensors')} tensors, {gen.get('n_params'):,} parameters, {gen.get('file_bytes', 0) / 1e6:.1f} MB per file, "
          f"{9 * gen.get('file_bytes', 0) / 1e9:.2f} GB in all. Tensor names use the Hub's `vision_model.` prefix; "
          f"{gen.get('transformers_check', '')}.")
    A(f"Work folder: `{args.work}`. Before every timed run all nine files are read once, so every tool starts with them in the page cache.")
    A("")
    A("## Machine")
    A("")
    A(f"- CPU: {m.get('cpu')} — {m.get('cores')} cores visible; RAM {m.get('ram')}; GPU: {m.get('gpu') or 'none'}")
    A(f"- OS: {m.get('os')}, kernel {m.get('kernel')}")
    A(f"- wgpu adapter for fusion-host `--device {args.fh_device}`: see `fusion-host devices` below")
    A(f"- load average (1/5/15 min) at start: {results.get('load_start')}; at end: {results.get('load_end')}. "
      + ("" if not args.shared_machine else "The machine was shared with other engineers' builds: timings are noisy."))
    A("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    A(f"- fusion-host: `{fh.get('binary')}` {fh.get('version', '')} (release profile, built {fh.get('built', '?')}, "
      f"sha256 {fh.get('sha256', '?')}…, from the working tree of {REPO} at commit {sh(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'])}"
      + (" plus uncommitted work" if sh(['git', '-C', str(REPO), 'status', '--porcelain', '--untracked-files=no']).strip() else "")
      + ", the merging plugin included)")
    if fh.get("devices"):
        A("")
        A("```")
        A(fh["devices"].strip()[:1500])
        A("```")
    A("")
    A("## Results")
    A("")
    A(f"Every run is capped at {MEM_LIMIT_GIB:g} GiB of private writable memory (`RLIMIT_DATA`; the machine is shared); "
      "a tool that needs more fails with an allocation error rather than invoking the OOM killer.")
    A("")
    A("End to end (process start to exit: load, merge, save), `/usr/bin/time -v`: one run each of the peers; "
      "fusion-host's runs, seconds long, are repeated (`--fh-repeats`) and the run of median wall time is shown, "
      "with every run's range. "
      "Peak RSS is the process's maximum resident set size (`time -v`), which counts touched pages of memory-mapped "
      "input files; the next column splits it into the peaks of `RssAnon` (the process's own memory) and `RssFile` "
      "(page-cache pages of mapped files, which the kernel can drop and re-read) sampled from /proc every 0.2 s.")
    A("")
    A("| tool | method | seconds | peak RSS | of which anonymous / file-backed (sampled) | user+sys CPU s | CPU % | voluntary ctx switches | load before → after | status |")
    A("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    names = {"ta": "task arithmetic (λ 0.3)", "ties": "TIES (λ 0.3, top 20 %, sum)"}
    for tool in runs:
        for method, rec in runs[tool].items():
            cpu = (rec.get("user_s") or 0) + (rec.get("sys_s") or 0) if "user_s" in rec else None
            if rec.get("skipped"):
                status = "not run: " + rec.get("error", "")
            elif rec.get("ok"):
                status = "ok"
            elif rec.get("short_error"):
                status = f"**failed**: {rec['short_error']} (see notes)"
            else:
                status = f"**failed** (rc {rec.get('rc')}; see notes)"
            A(f"| {tool} | {names.get(method, method)} | {(fmt_s(rec.get('wall_s')) + fmt_repeats(rec)) if not rec.get('skipped') else '—'} | "
              f"{fmt_rss(rec)} | {split_rss(rec)} | {fmt_s(cpu)} | {rec.get('cpu_pct', '—')} | {int(rec['voluntary_cs']) if 'voluntary_cs' in rec else '—'} | {rec.get('load_before', '')} → {rec.get('load_after', '')} | {status} |")
    A("")
    if fl:
        A("### Floor (the same nine files)")
        A("")
        A(f"| what | seconds | GB/s |")
        A("|---|---:|---:|")
        A(f"| read the nine files ({fl['bytes'] / 1e9:.2f} GB), cold-ish: their pages evicted with `posix_fadvise(DONTNEED)` "
          f"(page cache holding {fl.get('cache_before_cold_read')} of them before, {fl.get('cache_after_cold_read')} after) | {fmt_s(fl.get('cold_read_s'))} | {fl.get('cold_read_gbps')} |")
        A(f"| read the nine files, warm (page cache) | {fmt_s(fl.get('warm_read_s'))} | {fl.get('warm_read_gbps')} |")
        if fl.get("mmap_copy_s"):
            A(f"| map the nine files (warm) and copy their bytes out, faulting the mapped pages in, as fusion-host reads (best of 3) "
              f"| {fmt_s(fl.get('mmap_copy_s'))} | {fl.get('mmap_copy_gbps')} |")
        A(f"| memcpy of the nine checkpoints' bytes in memory (best of 3) | {fmt_s(fl.get('memcpy_s'))} | {fl.get('memcpy_gbps')} |")
        A(f"| write one checkpoint's bytes (page cache, no fsync) | {fmt_s(fl.get('write_one_s'))} | |")
        A("")
        A(f"Load average during the floor: {fl.get('load_before')} → {fl.get('load_after')}. The VM's disk sits on a host "
          "that may cache it too, so 'cold' is only as cold as the guest can make it.")
        A("")
    # targets
    A("### Targets")
    A("")
    A(targets_text(results))
    A("")
    ag = results.get("agreement")
    if ag:
        A("## Numerical agreement")
        A("")
        A("Merged tensors compared after stripping the `vision_model.` prefix (FusionBench saves through transformers 5, "
          "which drops it). `numpy-reference` is FusionBench's formula re-done in NumPy float32 "
          "(task arithmetic: Σ(θᵢ−θ₀) in task order, ×λ, +θ₀; TIES: keys sorted, one flat vector per task, "
          "global top-20 % by `kthvalue` with ties kept, sign of the sum with zeros set to the majority sign, disjoint sum, ×λ, +θ₀).")
        A("")
        A("| method | pair | max abs diff | worst tensor | elements differing > 1e-6 |")
        A("|---|---|---:|---|---:|")
        for method, pairs in ag.items():
            for pair, c in pairs.items():
                if "error" in c:
                    A(f"| {names.get(method, method)} | {pair} | error: {c['error']} | | |")
                else:
                    worst = f"`{c['worst_tensor']}`" if c["max_abs"] > 0 else "— (bit-identical)"
                    A(f"| {names.get(method, method)} | {pair} | {c['max_abs']:.3g} | {worst} | {c['elements_over_1e-6']:,} / {c['elements']:,} |")
        A("")
    A("## Commands")
    A("")
    A("Environment for every run: `HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 CUDA_VISIBLE_DEVICES=`; "
      "each command runs as `/usr/bin/time -v -o <file> <command>` in its own folder.")
    A("")
    A("```sh")
    for tool in runs:
        for method, rec in runs[tool].items():
            if rec.get("cmd"):
                A(f"# {tool}, {names.get(method, method)}")
                A(rec["cmd"])
    A("```")
    cfgroot = args.work / ("small" if small else "full") / "configs"
    A("")
    A(f"Configs (written by the script under `{cfgroot}`):")
    A("")
    for rel in ("fusion-host/modelpool/bench_ta8.yaml", "fusion-host/method/ties_merging.yaml",
                "fusionbench/modelpool/CLIPVisionModelPool/bench_ta8.yaml", "mergekit/ties.yml"):
        p = cfgroot / rel
        if p.exists():
            txt = p.read_text()
            if len(txt) > 1200:
                txt = txt[:1200] + "...\n"
            A(f"`{rel}`:")
            A("```yaml")
            A(txt.rstrip())
            A("```")
    A("")
    A("## Notes")
    A("")
    for tool in runs:
        for method, rec in runs[tool].items():
            if rec.get("skipped"):
                A(f"- **{tool} {names.get(method, method)}** not run: {rec.get('error')}")
            elif not rec.get("ok"):
                tail = "\n".join(l[-400:] for l in rec.get("log_tail", "").replace("\r", "\n").strip().splitlines()[-25:])
                A(f"- **{tool} {names.get(method, method)} failed** (rc {rec.get('rc')}, after {fmt_s(rec.get('wall_s'))} s)"
                  + (f": {rec['error']}" if rec.get("error") else "") + f". Last lines of `{rec.get('log')}`:")
                A("")
                A("```")
                A(tail[-3000:])
                A("```")
    for tool in runs:
        for method, rec in runs[tool].items():
            if tool == "fusion-host" and rec.get("ok"):
                ph = fh_phases(Path(rec.get("cwd", "")))
                if ph:
                    A(f"- fusion-host {names.get(method, method)}, from the timestamps in its log file: {ph}.")
                t = profiler_table(rec.get("log_tail", ""))
                if t:
                    A(f"- fusion-host's own profiler table, {names.get(method, method)}:")
                    A("")
                    A("```")
                    A(t)
                    A("```")
    if "ties" in runs.get("mergekit-pytorch", {}) or "ties" in runs.get("mergekit", {}):
        A("- mergekit's `ties` is not FusionBench's TIES: it keeps exactly `int(density·n)` entries of each task vector *per tensor* "
          "(`sparsify.magnitude`, a full `argsort` of every tensor), where FusionBench keeps the top 20 % *globally* over the "
          "flattened model (`kthvalue`, ties kept); it elects the sign of Σ wᵢ·trimmed δᵢ with a zero sum counted as + (FusionBench: "
          "the global majority sign), and sums the agreeing weighted entries (divided by Σ of their weights only with "
          "`normalize: true`). With `weight 0.3`, `density 0.2`, `normalize: false` the formula is the same apart from the "
          "per-tensor threshold, so a small fraction of entries near the threshold differs (see the agreement table).")
    for n in results.get("notes", []):
        A(f"- {n}")
    A("")
    Path(args.out).write_text("\n".join(L))
    log(f"wrote {args.out}")


def targets_text(results: dict) -> str:
    runs = results.get("runs", {})
    fl = results.get("floor", {})
    fh = runs.get("fusion-host", {})
    lines = []

    def t(tool, method):
        r = runs.get(tool, {}).get(method) or {}
        return r.get("wall_s") if r.get("ok") else None

    for method, factor in (("ta", 10), ("ties", 20)):
        ours = t("fusion-host", method)
        for peer in ("fusionbench", "mergekit"):
            theirs = t(peer, method)
            if peer == "mergekit" and theirs is None:
                # the fastest of mergekit's raw state-dict mode on CPU and on CUDA
                timed = [(t(p, method), p) for p in ("mergekit-pytorch", "mergekit-pytorch-cuda") if t(p, method)]
                if timed:
                    theirs, peer = min(timed)
            label = f"{'task arithmetic' if method == 'ta' else 'TIES'}: fusion-host ≥{factor}× faster than {peer}"
            if ours is None or theirs is None:
                lines.append(f"- {label}: **not measurable** ({'fusion-host' if ours is None else peer} has no successful run)")
            else:
                sp = theirs / ours
                lines.append(f"- {label}: {theirs:.2f} s / {ours:.2f} s = **{sp:.1f}×** — {'met' if sp >= factor else '**NOT met**'}")
    for method in ("ta", "ties"):
        r = fh.get(method) or {}
        if r.get("ok") and r.get("peak_rss_kb"):
            gib = r["peak_rss_kb"] / 1024 / 1024
            extra = ""
            if r.get("rss_anon_peak_kb"):
                anon = r["rss_anon_peak_kb"] / 1024 / 1024
                extra = (f"; its anonymous memory peaked at {anon:.2f} GiB, the rest being page-cache pages of the "
                         f"memory-mapped inputs ({r.get('rss_file_peak_kb', 0) / 1024 / 1024:.2f} GiB), which count in RSS "
                         f"while mapped — {'met' if anon < 1.5 else 'NOT met'} if only anonymous memory counts")
            lines.append(f"- peak RSS under 1.5 GB ({'task arithmetic' if method == 'ta' else 'TIES'}): {gib:.2f} GiB (`time -v`) — "
                         f"{'met' if gib < 1.5 else '**NOT met**'}{extra}")
        ours = t("fusion-host", method)
        if ours is not None and fl.get("memcpy_s"):
            ratio = ours / fl["memcpy_s"]
            lines.append(f"- within 3× of the memcpy floor ({'task arithmetic' if method == 'ta' else 'TIES'}): {ours:.2f} s / {fl['memcpy_s']:.2f} s = "
                         f"{ratio:.1f}× — {'met' if ratio <= 3 else '**NOT met**'} (vs the cold-ish read: {ours / fl['cold_read_s']:.1f}×"
                         + (f"; vs the mapped copy: {ours / fl['mmap_copy_s']:.1f}×" if fl.get("mmap_copy_s") else "") + ")")
    if not fh or all(not (r or {}).get("ok") for r in fh.values()):
        lines.append("- fusion-host targets: **not measurable** — no successful fusion-host run (see notes)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------


def wait_for_quiet(args) -> None:
    if args.max_load is None:
        return
    deadline = None
    if args.not_after:
        hh, mm = map(int, args.not_after.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if deadline < now - dt.timedelta(hours=12):
            deadline += dt.timedelta(days=1)
    while True:
        l1 = float(loadavg().split()[0])
        now = dt.datetime.now(dt.timezone.utc)
        if l1 < args.max_load:
            log(f"load {l1} < {args.max_load}: starting")
            return
        if deadline and now >= deadline:
            log(f"load {l1} still ≥ {args.max_load} but it is {now:%H:%M} UTC (≥ {args.not_after}): starting anyway")
            return
        log(f"load {l1} ≥ {args.max_load}; waiting (starting by {args.not_after} UTC at the latest)")
        time.sleep(30)


def main() -> None:
    global MEM_LIMIT_GIB
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/bench_merge.md",
                    help="the report (markdown); BENCHMARKS.md holds one such report per machine, spliced in by hand")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fusion-bench-data"), help="checkpoints, configs, outputs")
    ap.add_argument("--small", action="store_true", help="a 2-layer ViT pool: smoke test of the whole pipeline")
    ap.add_argument("--venv", default=str(DEFAULT_VENV), help="virtualenv with fusion-bench and mergekit")
    ap.add_argument("--setup", action="store_true", help="create --venv and install tools/bench/requirements.txt, then exit")
    ap.add_argument("--fusion-host", default=None, help="fusion-host binary (default target/release/fusion-host)")
    ap.add_argument("--fh-device", default="cpu", help="fusion-host --device (default cpu: lavapipe here)")
    ap.add_argument("--fh-plugin-dir", default=None, help="fusion-host --plugin-dir (default: next to the binary)")
    ap.add_argument("--wait-for-fh", type=int, default=0,
                    help="seconds to wait for the fusion-host binary and its merging plugin when they are missing")
    ap.add_argument("--tools", default="fusion-host,fusionbench,mergekit,mergekit-pytorch",
                    help="mergekit = mergekit-yaml (architecture-aware); mergekit-pytorch = its raw state-dict mode")
    ap.add_argument("--methods", default="ta,ties")
    ap.add_argument("--fh-repeats", type=int, default=3,
                    help="run fusion-host this many times per method and report the median run (default 3)")
    ap.add_argument("--mergekit-flags", default="", help="extra mergekit-yaml flags, e.g. --allow-crimes")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    ap.add_argument("--mem-limit-gib", type=float, default=MEM_LIMIT_GIB,
                    help="RLIMIT_DATA for every run (0: none); the machine is shared")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--no-agreement", action="store_true")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="rewrite --out from <work>/results-*.json, run nothing")
    ap.add_argument("--max-load", type=float, default=None, help="wait until the 1-min load average is below this ...")
    ap.add_argument("--not-after", default=None, help="... or until this UTC time (HH:MM), whichever comes first")
    ap.add_argument("--shared-machine", action="store_true", help="say in the report that other work shared the machine")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    args = ap.parse_args()
    if args.setup:
        setup_venv(Path(args.venv))
        return
    ensure_deps(args)
    MEM_LIMIT_GIB = args.mem_limit_gib
    if args.report_only:
        results = json.loads((args.work / f"results-{'small' if args.small else 'full'}.json").read_text())
        MEM_LIMIT_GIB = results.get("mem_limit_gib", MEM_LIMIT_GIB)
        samples = args.work / f"rss-{'small' if args.small else 'full'}.json"
        if samples.exists():  # from tools/bench/rss_sampler.py, for runs made before the built-in sampler
            for key, peaks in json.loads(samples.read_text()).items():
                tool, _, method = key.rpartition("-")
                rec = results.get("runs", {}).get(tool, {}).get(method)
                if rec is not None and "rss_anon_peak_kb" not in rec:
                    rec["rss_anon_peak_kb"] = peaks.get("RssAnon_peak_kb", 0)
                    rec["rss_file_peak_kb"] = peaks.get("RssFile_peak_kb", 0)
        results["notes"] = list(dict.fromkeys(results.get("notes", []) + args.note))
        write_report(args, args.small, results)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    small = args.small
    results = {"argv": sys.argv[1:], "notes": list(args.note), "mem_limit_gib": MEM_LIMIT_GIB}
    results["generated"] = generate(args.work, small)
    if args.generate_only:
        return
    cfgs = write_configs(args.work, small)
    wait_for_quiet(args)
    results["started"] = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}"
    results["load_start"] = loadavg()
    results["machine"] = machine()
    results["versions"] = versions(args)
    results["fusion_host_status"] = fusion_host_status(fusion_host_binary(args), base_env(), args.fh_plugin_dir)
    save_results(args, small, results)
    if not args.no_floor:
        log("floor")
        results["floor"] = floor(args, small)
        log(f"  {results['floor']}")
        save_results(args, small, results)
    st = results["fusion_host_status"]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if "fusion-host" in tools and not st.get("has_ties_merging") and args.wait_for_fh > 0:
        # not built yet: run the peers first and give the build until then
        tools = [t for t in tools if t != "fusion-host"] + ["fusion-host"]
        args.tools = ",".join(tools)
        results["notes"].append("fusion-host's release build was not ready when the run started; it ran after the peers.")
    run_all(args, small, cfgs, results)
    results["load_end"] = loadavg()
    if not args.no_agreement:
        results["agreement"] = agreement(args, small, results)
        save_results(args, small, results)
    write_report(args, small, results)


if __name__ == "__main__":
    main()
