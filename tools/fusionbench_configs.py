#!/usr/bin/env python3
"""Run FusionBench's own method configs through fusion-host and write docs/fusionbench-support.md.

Usage:  cargo build --workspace && python3 tools/fusionbench_configs.py
            [--host target/debug/fusion-host] [--version 0.2.33] [--wheel FILE] [--out FILE]

Downloads the fusion-bench wheel from PyPI (tools/fusionbench/wheel.py; nothing is installed or
imported) and, for every file under its `fusion_bench_config/method/`, runs fusion-host with
`--config-path <wheel>/fusion_bench_config` (FusionBench's tree, unchanged) and
`--config-dir configs` (ours, for the small `BaseModelPool/merge-tiny` pool, and
`CausalLMPool/llm-tiny` for the causal-LM methods):

1. `--cfg job -p method._target_` (and `-p method.name` for v0.1 configs): does it compose, and
   what does it name;
2. `dry_run=true`: does the target resolve to a loaded plugin component, or is it reported as a
   FusionBench component fusion-host does not support;
3. where it resolves, a real run on merge-tiny (`modelpool=BaseModelPool/merge-tiny
   taskpool=dummy`; methods that take exactly two models get task_a and task_b), outputs in a
   temporary folder.

It also runs every FusionBench command line of tests/data/fusionbench_config/expected.json (real
Hydra's `--cfg job` text, see tools/fusionbench/make_fixtures.py) on FusionBench's tree and on
ours and lists which compose identically. Python's standard library only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "fusionbench"))
import wheel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Components that merge exactly two models (FusionBench's configs give two weights / one t),
# by class name.
TWO_MODELS = {"SlerpMergeAlgorithm", "WeightedAverageAlgorithm", "LinearInterpolationAlgorithm"}
# Components that take `_pretrained_` and exactly one fine-tuned model (task_a).
ONE_MODEL = {"MagnitudeDiffPruningAlgorithm"}
ONE_MODEL_POOL = ["~modelpool.models.task_b", "~modelpool.models.task_c",
                  "~modelpool.models.task_d"]
TWO_MODEL_POOL = ["~modelpool.models._pretrained_", "~modelpool.models.task_c",
                  "~modelpool.models.task_d"]
# Configs that leave their component `???` for the command line, and what FusionBench's own
# configs fill in: regmean/regmean.yaml is the base of regmean/{clip,gpt2}_regmean.yaml; the
# v0.1 factory name of rankone_moe. (wemoe's files name theirs in a comment, read below.)
# Causal-LM components run on the tiny Llama pool `CausalLMPool/llm-tiny` (_pretrained_, math,
# code) instead; SLERP there takes _pretrained_ and math.
LLM = {"SimpleAverageForCausalLM", "TaskArithmeticForCausalLM", "TiesMergingForCausalLM",
       "WeightedAverageForLLama", "SlerpForCausalLM", "ExPOAlgorithmForLlama",
       "ExPOWithDareForLLama", "MagnitudePruningForLlama", "RandomPruningForLlama"}
LLM_POOL = ["modelpool=CausalLMPool/llm-tiny", "taskpool=dummy", "print_config=false"]
LLM_TWO_MODEL_POOL = ["~modelpool.models.code"]
FILL = {
    "regmean/regmean": ["fusion_bench.method.RegMeanAlgorithmForCLIP",
                        "fusion_bench.method.RegMeanAlgorithmForGPT2"],
    "rankone_moe/rankone_moe": ["rankone_moe"],
}


def run(host, args, cwd, env=None, timeout=600):
    e = dict(os.environ)
    e.pop("FUSION_CONFIG_PATH", None)
    e.update({"NO_COLOR": "1", "FUSION_LOG": "info"})
    e.update(env or {})
    p = subprocess.run([str(host), *args], cwd=cwd, env=e, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def error_of(stderr: str) -> str:
    """The `error: ...` paragraph, on one line."""
    i = stderr.find("error: ")
    text = stderr[i + len("error: "):] if i >= 0 else stderr
    return " ".join(text.split())


def md(s: str) -> str:
    return s.replace("|", "\\|")


def short(s: str, n: int = 220) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def method_row(host, fb, name, tmp):
    common = ["--config-path", str(fb), "--config-dir", str(ROOT / "configs"), f"method={name}"]
    row = {"config": name, "target": "", "status": "", "detail": ""}
    code, out, err = run(host, [*common, "--cfg", "job", "-p", "method._target_"], ROOT)
    if code == 0:
        row["target"] = f"`{out.strip()}`"
    else:
        code2, out2, err2 = run(host, [*common, "--cfg", "job", "-p", "method.name"], ROOT)
        if code2 == 0:
            row["target"] = f"`name: {out2.strip()}` (v0.1)"
        elif "not found in config" not in error_of(err):
            row["status"] = "fails to compose"
            row["detail"] = short(error_of(err))
            return row
        else:
            row["target"] = "(none)"
    pool = ["modelpool=BaseModelPool/merge-tiny", "taskpool=dummy", "print_config=false"]
    if row["target"] in ("`???`", "`name: ???` (v0.1)"):
        return incomplete_row(host, fb, name, row, common, pool)
    code, out, err = run(host, [*common, *pool, "dry_run=true"], ROOT)
    if code != 0:
        msg = error_of(err)
        if "is not supported by fusion-host" in msg:
            row["status"] = "composes; component not supported"
            row["detail"] = "exit 2: not supported"
            row["message"] = msg
        else:
            row["status"] = "composes; does not resolve"
            row["detail"] = short(msg)
        return row
    m = re.search(r"method: (\S+) \(plugin `([^`]+)`", err)
    comp, plugin = (m.group(1), m.group(2)) if m else ("?", "?")
    cls = comp.rsplit(".", 1)[-1]
    extra = (TWO_MODEL_POOL if cls in TWO_MODELS else
             ONE_MODEL_POOL if cls in ONE_MODEL else [])
    pool_name = "merge-tiny"
    if cls in LLM:
        pool, pool_name = LLM_POOL, "llm-tiny"
        extra = LLM_TWO_MODEL_POOL if cls == "SlerpForCausalLM" else []
    log_dir = Path(tmp) / name.replace("/", "_")
    code, out, err = run(host, [*common, *pool, *extra, f"path.log_dir={log_dir}",
                                "report_save_path=null"], ROOT)
    pool_note = (" (task_a + task_b)" if extra is TWO_MODEL_POOL else
                 " (_pretrained_ + math)" if extra is LLM_TWO_MODEL_POOL else
                 " (_pretrained_ + task_a)" if extra else "")
    if code == 0:
        try:
            merged = merged_summary(json.loads(out))
        except (ValueError, KeyError):
            merged = "report not parsed"
        row["status"] = "runs"
        row["detail"] = f"`{comp}` (plugin `{plugin}`) on {pool_name}{pool_note}: merged {merged}"
    else:
        row["status"] = "resolves; run fails"
        row["detail"] = short(f"`{comp}` (plugin `{plugin}`): {error_of(err)}")
    return row


def merged_summary(report) -> str:
    """What the dummy task pool's report says the method made: one model, or several (a dict or
    list of models reports a `model_info` per model, where the method's names put them)."""
    if "model_info" in report:
        info = report["model_info"]
        return f"{info.get('num_tensors', '?')} tensors, {info.get('all_params', '?')} parameters"
    found = []

    def walk(node, path):
        if isinstance(node, dict) and "model_info" in node:
            found.append(("/".join(path), node["model_info"]))
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [f"[{i}]"])

    walk(report, [])
    if not found:
        raise KeyError("model_info")
    info = found[0][1]
    return (f"{len(found)} models ({', '.join(f'`{p}`' for p, _ in found)}), each "
            f"{info.get('num_tensors', '?')} tensors, {info.get('all_params', '?')} parameters")


def incomplete_row(host, fb, name, row, common, pool):
    """A config whose `_target_` / `name` is `???`: report it, then judge the values FusionBench
    fills in."""
    key = "method._target_" if row["target"] == "`???`" else "method.name"
    text = (fb / "method" / f"{name}.yaml").read_text()
    m = re.search(r"^name:\s*\?\?\?\s*#\s*this can be\s+([\w\-]+)", text, re.M)
    values = [m.group(1)] if m else FILL.get(name, [])
    verdicts = []
    for v in values:
        code, _, err = run(host, [*common, *pool, "dry_run=true", f"{key}={v}"], ROOT)
        msg = error_of(err)
        verdicts.append((v, "resolves" if code == 0 else
                         "not supported" if "is not supported by fusion-host" in msg else msg))
    lead = f"FusionBench leaves `{key}` as `???` (fusion-host: \"missing mandatory value: {key}\")"
    if values and all(v == "not supported" for _, v in verdicts):
        row["status"] = "composes; component not supported"
        row["detail"] = (lead + "; with " + ", ".join(f"`{key}={v}`" for v, _ in verdicts)
                         + ": exit 2, not supported")
    else:
        row["status"] = "composes; incomplete"
        row["detail"] = short(lead + "".join(f"; `{key}={v}`: {d}" for v, d in verdicts))
    return row


def command_rows(host, fb_copy):
    """The reference command lines (fixture runs) on both trees against Hydra's text."""
    exp = json.loads((ROOT / "tests/data/fusionbench_config/expected.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for r in exp["runs"]:
            args = ["--config-name", r["config_name"], "--cfg", "job"]
            if r["package"]:
                args += ["-p", r["package"]]
            args += r["overrides"]
            verdict = {}
            for tree, path in (("fusionbench", fb_copy), ("ours", ROOT / "configs")):
                if tree not in r["trees"]:
                    verdict[tree] = "—"
                    continue
                code, out, _ = run(host, args, work, {"FUSION_CONFIG_PATH": str(path)})
                verdict[tree] = "identical" if code == 0 and out == r["yaml"] else "DIFFERS"
            cmd = " ".join(["fusion_bench"] + (["--config-name", r["config_name"]]
                                               if r["config_name"] != "fabric_model_fusion" else [])
                           + (["--cfg job -p " + r["package"]] if r["package"] else [])
                           + r["overrides"])
            rows.append((cmd, verdict["fusionbench"], verdict["ours"]))
    return exp, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default=str(ROOT / "target/debug/fusion-host"))
    ap.add_argument("--version", default=wheel.DEFAULT_VERSION)
    ap.add_argument("--wheel", help="an already downloaded fusion-bench .whl")
    ap.add_argument("--out", default=str(ROOT / "docs/fusionbench-support.md"))
    args = ap.parse_args()
    host = Path(args.host).resolve()
    if not host.is_file():
        raise SystemExit(f"{host} does not exist: build first (cargo build --workspace)")
    unpacked = wheel.fetch(args.version, args.wheel)
    version = wheel.version_of(unpacked)
    fb = unpacked / "fusion_bench_config"
    names = sorted(str(p.relative_to(fb / "method").with_suffix(""))
                   for p in (fb / "method").rglob("*.yaml"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names, 1):
            row = method_row(host, fb, name, tmp)
            print(f"[{i}/{len(names)}] {name}: {row['status']}", file=sys.stderr)
            rows.append(row)
    exp, cmds = command_rows(host, ROOT / "tests/data/fusionbench_config/configs")

    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    order = ["runs", "resolves; run fails", "composes; component not supported",
             "composes; incomplete", "composes; does not resolve", "fails to compose"]
    L = []
    A = L.append
    A("# FusionBench's own configs in fusion-host")
    A("")
    A(f"Generated by `python3 tools/fusionbench_configs.py` from fusion-bench {version} (PyPI "
      "wheel); do not edit by hand, rerun the script.")
    A("")
    A("fusion-host composes FusionBench's YAML files unchanged (`--config-path "
      "<wheel>/fusion_bench_config`). For each method config the script checks that it composes "
      "(`--cfg job`), resolves its `_target_` (or v0.1 `name:`) with `dry_run=true`, and, where "
      "a plugin implements the component, runs it on the tiny `BaseModelPool/merge-tiny` pool "
      "(causal-LM methods: the tiny Llamas of `CausalLMPool/llm-tiny`) "
      "from our `configs/` (`--config-dir configs`, `taskpool=dummy`). A component fusion-host "
      "does not implement fails with exit code 2 and a message saying the FusionBench component "
      "is not supported, listing the supported ones.")
    example = next((r for r in rows if r.get("message")), None)
    if example:
        A("")
        A(f"For example, `fusion-host --config-path <wheel>/fusion_bench_config "
          f"method={example['config']} dry_run=true` (exit code 2):")
        A("")
        A("```")
        A("error: " + example["message"])
        A("```")
    A("")
    A("## Summary")
    A("")
    A(f"{len(rows)} method configs under `fusion_bench_config/method/`:")
    A("")
    for k in order:
        if counts.get(k):
            A(f"- {k}: {counts[k]}")
    A("")
    A("## Method configs")
    A("")
    A("| method config | `_target_` | status | detail |")
    A("|---|---|---|---|")
    for r in rows:
        A(f"| `{r['config']}` | {md(r['target'])} | {r['status']} | {md(r['detail'])} |")
    A("")
    A("## FusionBench command lines: `--cfg job` compared with Hydra")
    A("")
    A("The command lines of FusionBench's documentation (and the pools and task pools fusion-host "
      "mirrors), composed by real Hydra "
      f"{exp['hydra_version']} on FusionBench's tree "
      "(`tools/fusionbench/make_fixtures.py` → `tests/data/fusionbench_config/expected.json`), "
      "against `fusion-host --cfg job` on FusionBench's files "
      "(`tests/data/fusionbench_config/configs`) and on our `configs/`. "
      "`tests/fusionbench_configs.rs` checks the same.")
    A("")
    A("| command | FusionBench's tree | our `configs/` |")
    A("|---|---|---|")
    for cmd, a, b in cmds:
        A(f"| `{md(cmd)}` | {a} | {b} |")
    A("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(L))
    print(f"wrote {out}: " + ", ".join(f"{k} {counts[k]}" for k in order if counts.get(k)),
          file=sys.stderr)
    bad = [c for c in cmds if "DIFFERS" in c[1:]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
