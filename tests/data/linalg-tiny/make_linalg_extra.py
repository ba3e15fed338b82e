"""Golden fixtures for the methods that return several models (TALL masks, EMR merging) and the
task-vector analysis (cosine similarity), produced by the reference implementation: the
fusion-bench package from PyPI, torch float32 on CPU, on the linalg-tiny pool already in
`models/` (made by make_linalg_golden.py; this script does not change it).

Usage: python make_linalg_extra.py DIR     (DIR: this folder)

Same shape as make_linalg_golden.py: for each case the FusionBench method config, the models it
takes in order, and what fusion-bench returned, written to DIR/expected/ and listed in
DIR/cases_extra.yaml:
- a dict of models (TALL returns {"models": {name: model}, "metadata": None}; EMR returns one
  modulated model whose per-task models are its backbone with each task's modulator applied):
  one safetensors file per model, `expected/CASE/NAME.safetensors`, and `report_shape`, the
  report FusionBench's program builds for it with each model's report replaced by its name;
- the cosine-similarity analysis: the CSV file TaskVectorCosSimilarity writes.
"""
import copy, os, sys

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from fusion_bench.modelpool import BaseModelPool as _BaseModelPool
from fusion_bench.utils import state_dict_arithmetic
from fusion_bench.utils.instantiate_utils import instantiate

# fusion-bench 0.2.33's TallMaskTaskArithmeticAlgorithm fails as published: it compares the
# pretrained `state_dict(keep_vars=True)` (nn.Parameter values) with task vectors (plain tensors),
# and the key checker refuses the type difference ("Tensor type mismatch ... expected Parameter,
# got Tensor") before any arithmetic. The check sees the parameters' tensors here; the
# arithmetic is fusion-bench's, untouched.
_validate = state_dict_arithmetic._validate_state_dict_same_keys


def _validate_tensors(state_dicts):
    return _validate([{k: v.detach() if isinstance(v, nn.Parameter) else v for k, v in sd.items()}
                      for sd in state_dicts])


state_dict_arithmetic._validate_state_dict_same_keys = _validate_tensors


class BaseModelPool(_BaseModelPool):
    """As in make_linalg_golden.py: each load of a pre-instantiated model returns a copy."""

    def load_model(self, model_name_or_config, *args, **kwargs):
        model = super().load_model(model_name_or_config, *args, **kwargs)
        return copy.deepcopy(model) if isinstance(model, nn.Module) else model


class Tiny(nn.Module):
    """make_linalg_golden.py's module."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 24)
        self.q_proj = nn.Linear(24, 24)
        self.fc1 = nn.Linear(24, 64)
        self.fc2 = nn.Linear(64, 24)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 7, bias=False)


def report_shape(program, result):
    """What FusionBench's program reports for `result`, each model's report being its name."""

    class NameTaskPool:
        def __init__(self, names):
            self.names = names

        def evaluate(self, model):
            return self.names[id(model)]

    names = {}

    def walk(x, path):
        if isinstance(x, nn.Module):
            names[id(x)] = "/".join(path)
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, path + [str(k)])
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, path + [f"[{i}]"])

    walk(result, [])

    class Program:
        evaluate_merged_model = program.evaluate_merged_model

    return Program().evaluate_merged_model(NameTaskPool(names), result)


def main():
    out = sys.argv[1]
    names = ["task_a", "task_b", "task_c", "task_d"]
    models = {}
    for n in ["_pretrained_"] + names:
        m = Tiny()
        m.load_state_dict(load_file(os.path.join(out, "models", f"{n}.safetensors")))
        models[n] = m

    def pool(only=None):
        return BaseModelPool(models={n: copy.deepcopy(models[n]) for n in ["_pretrained_"] + (only or names)})

    from fusion_bench.programs.fabric_fusion_program import FabricModelFusionProgram

    def save_models(case, named):
        os.makedirs(os.path.join(out, "expected", case), exist_ok=True)
        files = {}
        for name, m in named.items():
            state = {k: v.detach().float().contiguous().clone() for k, v in m.state_dict().items()}
            path = f"expected/{case}/{name}.safetensors"
            save_file(state, os.path.join(out, path))
            files[name] = path
        return files

    manifest = {"reference": "fusion-bench (PyPI) algorithms run on torch float32, CPU",
                "pool": ["_pretrained_"] + names, "cases": {}}

    # TALL masks: {"models": {name: model}, "metadata": None}
    for case, lam in [("tall_mask", 0.6), ("tall_mask_0.3", 0.3)]:
        cfg = {"_target_": "fusion_bench.method.tall_mask.TallMaskTaskArithmeticAlgorithm",
               "tall_mask_lambda": lam, "debug": 0, "verbose": 0}
        result = instantiate(copy.deepcopy(cfg), _recursive_=False).run(pool())
        files = save_models(case, result["models"])
        shape = report_shape(FabricModelFusionProgram, result)
        manifest["cases"][case] = {"method": cfg, "models": ["_pretrained_"] + names, "expected": files,
                                   "report_shape": shape}
        print("ok", case, shape)

    # EMR: one modulated model; model i is the backbone with task i's modulator applied.
    for case, only in [("emr_merging", None), ("emr_merging_3", ["task_b", "task_c", "task_d"])]:
        cfg = {"_target_": "fusion_bench.method.emr_merging.EMRMerging"}
        emr = instantiate(copy.deepcopy(cfg), _recursive_=False).run(pool(only))
        per_task = {}
        for name in only or names:
            emr.set_task(name)
            per_task[name] = copy.deepcopy(emr.backbone)
        files = save_models(case, per_task)
        manifest["cases"][case] = {"method": cfg, "models": ["_pretrained_"] + (only or names), "expected": files}
        print("ok", case)

    # Cosine similarity of the task vectors: FusionBench's own CSV.
    cfg = {"_target_": "fusion_bench.method.TaskVectorCosSimilarity", "plot_heatmap": False,
           "trainable_only": True, "max_points_per_model": None, "output_path": os.path.join(out, "expected")}
    instantiate(copy.deepcopy(cfg), _recursive_=False).run(pool())
    manifest["cases"]["task_vector_cos_similarity"] = {
        "method": {**cfg, "output_path": None}, "models": ["_pretrained_"] + names,
        "expected": "expected/task_vector_cos_similarity.csv"}
    print("ok task_vector_cos_similarity")

    with open(os.path.join(out, "cases_extra.yaml"), "w") as f:
        yaml.safe_dump(manifest, f, sort_keys=False)


if __name__ == "__main__":
    main()
