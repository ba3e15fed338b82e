"""More golden cases for fusion-host's mergekit, made by mergekit-yaml on the models of this
folder (made by make_mergekit_golden.py): parameter variants the first set does not reach
(row-wise and per-row SLERP, filter-wise Model Stock, multislerp without a base, breadcrumbs
without consensus, TIES without normalisation, filters and gradients on per-model weights,
task arithmetic over slices, scaled passthrough with a repeated layer) and bfloat16 compute.

Usage (from this folder, with mergekit installed): python make_mergekit_extra.py

Writes configs/extra_CASE.yaml, expected/extra_CASE/ (config.json, model.safetensors) and
cases_extra.yaml. Deterministic cases only: DARE/DELLA masks come from torch's RNG.
"""
import os, shutil, subprocess, sys

import yaml

M = lambda n: f"models/{n}"
CASES = {
    "breadcrumbs": {"merge_method": "breadcrumbs", "base_model": M("base"), "parameters": {"lambda": 0.9},
                    "models": [{"model": M("math"), "parameters": {"weight": 0.5, "density": 0.6, "gamma": 0.1}},
                               {"model": M("code"), "parameters": {"weight": 0.3, "density": 0.6, "gamma": 0.1}},
                               {"model": M("chat"), "parameters": {"weight": 0.2, "density": 0.5, "gamma": 0.05}}]},
    "dare_ties_full_density": {"merge_method": "dare_ties", "base_model": M("base"),
                               "models": [{"model": M("math"), "parameters": {"weight": 0.8}},
                                          {"model": M("code"), "parameters": {"weight": 0.6}},
                                          {"model": M("chat"), "parameters": {"weight": 0.4}}]},
    "ties_unnormalized": {"merge_method": "ties", "base_model": M("base"), "parameters": {"normalize": False, "lambda": 1.5},
                          "models": [{"model": M("math"), "parameters": {"weight": 0.9, "density": 0.3}},
                                     {"model": M("code"), "parameters": {"weight": 0.5, "density": 0.7}}]},
    "ties_bf16": {"merge_method": "ties", "base_model": M("base"), "dtype": "bfloat16",
                  "models": [{"model": M("math"), "parameters": {"weight": 1.0, "density": 0.4}},
                             {"model": M("code"), "parameters": {"weight": 0.7, "density": 0.6}}]},
    "linear_bf16": {"merge_method": "linear", "dtype": "bfloat16",
                    "models": [{"model": M("math"), "parameters": {"weight": 0.6}},
                               {"model": M("code"), "parameters": {"weight": 0.4}}]},
    "nuslerp_row_wise": {"merge_method": "nuslerp", "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
                         "models": [{"model": M("math"), "parameters": {"weight": 0.3}},
                                    {"model": M("code"), "parameters": {"weight": 0.7}}]},
    "nuslerp_rows_with_base": {"merge_method": "nuslerp", "base_model": M("base"), "parameters": {"nuslerp_flatten": False},
                               "models": [{"model": M("math"), "parameters": {"weight": 0.5}},
                                          {"model": M("chat"), "parameters": {"weight": 0.5}}]},
    "model_stock_filter_wise": {"merge_method": "model_stock", "base_model": M("base"), "parameters": {"filter_wise": True},
                                "models": [{"model": M("math")}, {"model": M("code")}, {"model": M("chat")}]},
    "multislerp_no_base": {"merge_method": "multislerp", "parameters": {"normalize_weights": False},
                           "models": [{"model": M("math"), "parameters": {"weight": 0.2}},
                                      {"model": M("code"), "parameters": {"weight": 0.5}},
                                      {"model": M("chat"), "parameters": {"weight": 0.3}}]},
    "task_arithmetic_filters": {"merge_method": "task_arithmetic", "base_model": M("base"),
                                "parameters": {"normalize": True, "lambda": [0.5, 1.0]},
                                "models": [{"model": M("math"), "parameters": {"weight": [{"filter": "mlp", "value": [1.0, 0.2]}, {"value": 0.6}]}},
                                           {"model": M("code"), "parameters": {"weight": [{"filter": "self_attn", "value": 0.1}, {"value": [0.3, 0.9]}]}}]},
    "task_arithmetic_slices": {"merge_method": "task_arithmetic", "base_model": M("base"), "slices": [
        {"sources": [{"model": M("math"), "layer_range": [0, 2], "parameters": {"weight": 0.5}},
                     {"model": M("base"), "layer_range": [0, 2]}]},
        {"sources": [{"model": M("code"), "layer_range": [2, 4], "parameters": {"weight": 0.7}},
                     {"model": M("base"), "layer_range": [2, 4]}], "parameters": {"lambda": 2.0}}]},
    "passthrough_scaled_repeat": {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": M("chat"), "layer_range": [0, 2], "parameters": {"scale": 0.5}}]},
        {"sources": [{"model": M("chat"), "layer_range": [1, 4]}]}]},
    "karcher_defaults": {"merge_method": "karcher", "models": [{"model": M("math")}, {"model": M("chat")}]},
}


def main():
    out = os.getcwd()
    exe = os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")
    ok = {}
    for case, cfg in CASES.items():
        cfg = {"dtype": "float32", **cfg}
        name = f"extra_{case}"
        path = os.path.join(out, "configs", f"{name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        absolute = os.path.join(out, "configs", f".{name}.abs.yaml")
        with open(absolute, "w") as f:
            f.write(yaml.safe_dump(cfg, sort_keys=False).replace("models/", out + "/models/"))
        dst = os.path.join(out, "expected", name)
        shutil.rmtree(dst, ignore_errors=True)
        r = subprocess.run([exe, absolute, dst, "--allow-crimes", "--quiet"], cwd=out, capture_output=True,
                           text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        os.remove(absolute)
        if r.returncode != 0:
            print("FAILED", case, r.stderr[-600:])
            shutil.rmtree(dst, ignore_errors=True)
            os.remove(path)
            continue
        for f in os.listdir(dst):
            if not (f.endswith(".safetensors") or f in ("config.json", "model.safetensors.index.json")):
                os.remove(os.path.join(dst, f))
        ok[name] = {"config": f"configs/{name}.yaml", "expected": f"expected/{name}"}
        print("ok", case)
    with open(os.path.join(out, "cases_extra.yaml"), "w") as f:
        yaml.safe_dump({"reference": "mergekit 0.1.5 (PyPI) mergekit-yaml, CPU; run configs from this folder",
                        "cases": ok}, f, sort_keys=False)


if __name__ == "__main__":
    main()
