"""Golden fixtures for the continual merging methods (OPCM and its continual baselines), produced
by the reference implementation: the fusion-bench package from PyPI, torch float32 on the CPU,
on the linalg-tiny models that make_linalg_golden.py wrote (models/*.safetensors here).

Usage: python make_linalg_continual.py DIR [--new]     (DIR: this folder; --new: only the cases
added for issue 17 item 2, appended to DIR/continual.yaml)

Writes DIR/continual/CASE/step_K.safetensors (the merged model after step K, as FusionBench's
`save_on_every_step` saves it; the last step is what the method returns) and
DIR/continual.yaml: for each case the FusionBench method config, the pool's models in order,
the order the method processed them in (after `shuffle_order` with its `seed`), and the files.

The methods save each step into their log folder; here `save_merged_model` is replaced by a
function that keeps a copy of the state dict, and the CLIP-only attributes the continual
baselines read (`self._program.taskpool._test_datasets`) are given a stand-in, with
`evaluate_on_every_step: false` so that nothing is evaluated.
"""
import copy, os, sys, types

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from fusion_bench.modelpool import BaseModelPool as _BaseModelPool
from fusion_bench.utils.instantiate_utils import instantiate


class BaseModelPool(_BaseModelPool):
    """Each load returns a copy, as loading from a checkpoint does (see make_linalg_golden.py)."""

    def load_model(self, model_name_or_config, *args, **kwargs):
        model = super().load_model(model_name_or_config, *args, **kwargs)
        return copy.deepcopy(model) if isinstance(model, nn.Module) else model


class Tiny(nn.Module):
    """The module of make_linalg_golden.py."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 24)
        self.q_proj = nn.Linear(24, 24)
        self.fc1 = nn.Linear(24, 64)
        self.fc2 = nn.Linear(64, 24)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 7, bias=False)


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        # RanDeS seeds its contexts with Python's string hash, salted per process unless
        # PYTHONHASHSEED is set; 0 is the setting fusion-host reproduces.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    out = sys.argv[1]
    names = ["task_a", "task_b", "task_c", "task_d"]
    if "--only" in sys.argv[2:]:
        ONLY.update(sys.argv[sys.argv.index("--only") + 1].split(","))
    if "--new" in sys.argv[2:]:
        # only the cases added for issue 17 item 2 (DOP for CLIP, RanDeS rotation, dense and
        # LoRA), appended to the existing continual.yaml; nothing else is rewritten
        with open(os.path.join(out, "continual.yaml")) as f:
            manifest = yaml.safe_load(f)
        new_cases(out, names, manifest)
        with open(os.path.join(out, "continual.yaml"), "w") as f:
            yaml.safe_dump(manifest, f, sort_keys=False)
        return

    def load(name):
        m = Tiny()
        m.load_state_dict(load_file(os.path.join(out, "models", f"{name}.safetensors")))
        return m

    models = {n: load(n) for n in ["_pretrained_"] + names}

    def pool():
        return BaseModelPool(models={n: copy.deepcopy(m) for n, m in models.items()})

    opcm = "fusion_bench.method.opcm.opcm_general.OPCM"
    cta = "fusion_bench.method.opcm.task_arithmetic.ContinualTaskArithmeticForCLIP"
    cties = "fusion_bench.method.opcm.ties_merging.ContinualTiesMergingForCLIP"
    cwa = "fusion_bench.method.opcm.weight_average.ContinualWeightAverageForCLIP"
    common = {"save_on_every_step": True, "evaluate_on_every_step": False}
    cases = {
        "opcm": {"_target_": opcm, "alpha": 0.5, "shuffle_order": False, "seed": None,
                 "num_ray_actors": 0, **common},
        "opcm_shuffled": {"_target_": opcm, "alpha": 0.5, "shuffle_order": True, "seed": 42,
                          "num_ray_actors": 0, **common},
        "opcm_alpha_0.8": {"_target_": opcm, "alpha": 0.8, "shuffle_order": True, "seed": 7,
                           "num_ray_actors": 0, **common},
        "continual_task_arithmetic": {"_target_": cta, "scaling_factor": 0.3, "shuffle_order": True,
                                      "seed": 42, **common},
        "continual_ties_merging": {"_target_": cties, "scaling_factor": 0.5, "threshold": 20,
                                   "remove_keys": [], "merge_func": "sum", "shuffle_order": True,
                                   "seed": 3, **common},
        "continual_ties_merging_mean": {"_target_": cties, "scaling_factor": 0.7, "threshold": 40,
                                        "remove_keys": [], "merge_func": "mean",
                                        "shuffle_order": False, "seed": None, **common},
        "continual_weight_average": {"_target_": cwa, "shuffle_order": True, "seed": 2026, **common},
    }
    dop = "fusion_bench.method.dop.dop_general.DOPMerging"
    dop_common = {"save_on_every_step": True, "evaluate_on_every_step": False, "num_ray_actors": 0}
    # DOP shuffles with Python's generator as the program seeded it (it does not seed itself):
    # `program_seed` is that seed.
    cases.update({
        "dop": {"_target_": dop, "seed": None, "shuffle_order": True, "lr": 1e-4, "num_steps": 200,
                "mgda": True, "alpha": 0.8, "ema": True, "ema_beta": 0.999, "svd_epsilon": 0.99999,
                "svd_proj_space": "uv", **dop_common},
        "dop_weighted_u": {"_target_": dop, "seed": None, "shuffle_order": False, "lr": 3e-4,
                           "num_steps": 60, "mgda": False, "alpha": 0.3, "ema": True,
                           "ema_beta": 0.999, "svd_epsilon": 0.9, "svd_proj_space": "u",
                           "exclude_keys": ["fc2"], **dop_common},
        "dop_mgda_v": {"_target_": dop, "seed": None, "shuffle_order": False, "lr": 2e-4,
                       "num_steps": 50, "mgda": True, "alpha": 0.5, "ema": False, "ema_beta": 0.99,
                       "svd_epsilon": 0.95, "svd_proj_space": "v", **dop_common},
    })
    program_seed = {"dop": 5}
    manifest = {"reference": "fusion-bench (PyPI) continual methods run on torch float32, CPU",
                "pool": ["_pretrained_"] + names, "cases": {}}
    for case, cfg in cases.items():
        torch.manual_seed(0)
        algo = instantiate(copy.deepcopy(cfg), _recursive_=False)
        steps = []

        def save_merged_model(self, merged_model, step):
            steps.append((step, {k: v.detach().float().contiguous().clone()
                                 for k, v in merged_model.state_dict().items()}))

        algo.save_merged_model = types.MethodType(save_merged_model, algo)
        if cfg["_target_"] == dop:
            # DOP saves nothing; keep the model after each step as it is made
            inner = algo._layer_wise_optimize
            real_load = None

            def layer_wise(*a, **k):
                out = inner(*a, **k)
                save_merged_model(algo, out, len(steps))
                return out

            algo._layer_wise_optimize = layer_wise
            p0 = pool()
            steps.append((0, {k: v.detach().float().contiguous().clone()
                              for k, v in p0.load_model(names[0]).state_dict().items()}))
        if case in program_seed:
            __import__("random").seed(program_seed[case])
        algo._program = types.SimpleNamespace(
            taskpool=types.SimpleNamespace(_test_datasets={n: None for n in names}))
        p = pool()
        # the order the method merges in: it shuffles the pool's own list of names
        order = []
        real_shuffle = __import__("random").shuffle

        def shuffle(x, *a, **k):
            real_shuffle(x, *a, **k)
            order[:] = list(x)

        import random as _random
        _random.shuffle = shuffle
        try:
            merged = algo.run(p)
        finally:
            _random.shuffle = real_shuffle
        if not order:
            order = list(p.model_names)
        if cfg["_target_"] == dop and order[0] != names[0]:
            # step 0 is the first model taken
            steps[0] = (0, {k: v.detach().float().contiguous().clone()
                            for k, v in p.load_model(order[0]).state_dict().items()})
        final = {k: v.detach().float().contiguous() for k, v in merged.state_dict().items()}
        assert [s for s, _ in steps] == list(range(len(names))), [s for s, _ in steps]
        for k, v in steps[-1][1].items():
            assert torch.equal(v, final[k]), (case, k)
        os.makedirs(os.path.join(out, "continual", case), exist_ok=True)
        files = []
        for step, state in steps:
            f = f"continual/{case}/step_{step}.safetensors"
            save_file(state, os.path.join(out, f))
            files.append(f)
        manifest["cases"][case] = {"method": cfg, "models": ["_pretrained_"] + names, "order": order,
                                   "program_seed": program_seed.get(case), "steps": files}
        print("ok", case, order)
    doge_cases(out, models, names, manifest)
    randes_cases(out, names, manifest)
    new_cases(out, names, manifest)
    with open(os.path.join(out, "continual.yaml"), "w") as f:
        yaml.safe_dump(manifest, f, sort_keys=False)


RENAME = {"embed": "embeddings.token_embedding", "q_proj": "encoder.layers.0.self_attn.q_proj",
          "fc1": "encoder.layers.0.mlp.fc1", "fc2": "encoder.layers.0.mlp.fc2",
          "norm": "encoder.layers.0.layer_norm1", "head": "head"}


class Enc(nn.Module):
    """The tiny module under CLIP-like names (DOGE_TA acts on `encoder` weights only)."""

    def __init__(self):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.token_embedding = nn.Embedding(40, 24)
        layer = nn.Module()
        layer.self_attn = nn.Module()
        layer.self_attn.q_proj = nn.Linear(24, 24)
        layer.mlp = nn.Module()
        layer.mlp.fc1 = nn.Linear(24, 64)
        layer.mlp.fc2 = nn.Linear(64, 24)
        layer.layer_norm1 = nn.LayerNorm(24)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([layer])
        self.head = nn.Linear(24, 7, bias=False)


def doge_cases(out, models, names, manifest):
    """DOGE_TA on the models renamed (doge/models/NAME.safetensors)."""
    os.makedirs(os.path.join(out, "doge", "models"), exist_ok=True)
    enc = {}
    for n, m in models.items():
        sd = {}
        for k, v in m.state_dict().items():
            mod, param = k.rsplit(".", 1)
            sd[f"{RENAME[mod]}.{param}"] = v.detach().clone().contiguous()
        save_file(sd, os.path.join(out, "doge", "models", f"{n}.safetensors"))
        e = Enc()
        e.load_state_dict(sd)
        enc[n] = e
    target = "fusion_bench.method.DOGE_TA_Algorithm"
    cases = {
        "doge_ta": ({"_target_": target, "subspace": 6, "K": 30, "lamda": 0.07}, names),
        "doge_ta_three": ({"_target_": target, "subspace": 8, "K": 50, "lamda": 0.1}, names[:3]),
    }
    for case, (cfg, only) in cases.items():
        torch.manual_seed(0)
        algo = instantiate(copy.deepcopy(cfg), _recursive_=False)
        pool = BaseModelPool(models={n: copy.deepcopy(enc[n]) for n in ["_pretrained_"] + only})
        merged = algo.run(pool)
        state = {k: v.detach().float().contiguous().clone() for k, v in merged.state_dict().items()}
        f = f"doge/{case}.safetensors"
        save_file(state, os.path.join(out, f))
        manifest["cases"][case] = {"method": cfg, "models_dir": "doge/models",
                                   "models": ["_pretrained_"] + only, "steps": [f]}
        print("ok", case)


def randes_cases(out, names, manifest):
    """RanDeS on the renamed models (their `mlp` and `attn` tensors are the targets); one file
    per retrieved model."""
    enc = {}
    for n in ["_pretrained_"] + names:
        e = Enc()
        e.load_state_dict(load_file(os.path.join(out, "doge", "models", f"{n}.safetensors")))
        enc[n] = e
    base = {"mode": "random_binary_diagonal_matrix", "target_layer": ["mlp_w", "attn_w"],
            "random_seed": 42, "different_across_layers": True, "joint_matrix_mode": "flatten_hstack",
            "rank": 1, "random_components": False, "shift_layers": 0, "absorber": "None", "debug": 0,
            "ms_mode": "average", "verbose": 0, "dropout_rate": 1}
    # fusion-bench 0.2.33's superposed task arithmetic adds its retrieved task vectors (tensors) to
    # `pretrained_model.state_dict(keep_vars=True)` (Parameters), which its own state_dict_add
    # refuses (TypeError: Tensor type mismatch); the same addition on detached values:
    import fusion_bench.method.randes.task_arithmetic as randes_ta
    _add = randes_ta.state_dict_add
    randes_ta.state_dict_add = lambda a, b, *x, **k: _add({n: v.detach() for n, v in a.items()}, b, *x, **k)
    soup = "fusion_bench.method.randes.SuperposedModelSoupAlgorithm"
    ta = "fusion_bench.method.randes.SuperposedTaskArithmeticAlgorithm"
    cases = {
        # superposed_model_soup.yaml with the example's `method.mode=identity_matrix`
        "randes_soup_identity": {"_target_": soup, **base, "mode": "identity_matrix"},
        # every 2nd MLP weight: fc2 (checkpoints keep no module order, so fusion-host counts in
        # the file's order; here both orders agree)
        "randes_soup_binary_absorber": {"_target_": soup, **base, "absorber": "average",
                                        "ms_mode": "original", "dropout_rate": 2,
                                        "target_layer": ["mlp_w"]},
        "randes_soup_pretrained_gaussian": {"_target_": soup, **base, "absorber": "pretrained",
                                            "mode": "random_diagonal_matrix", "random_seed": 5,
                                            "target_layer": ["mlp", "attn_w"]},
        "randes_ta_binary": {"_target_": ta, **base, "scaling_factor": 0.5, "model_path": None},
        "randes_ta_gaussian_mlp": {"_target_": ta, **base, "mode": "random_diagonal_matrix",
                                   "different_across_layers": False, "target_layer": ["mlp_w"],
                                   "scaling_factor": 0.8, "model_path": None},
    }
    for case, cfg in cases.items():
        algo = instantiate(copy.deepcopy(cfg), _recursive_=False)
        pool = BaseModelPool(models={n: copy.deepcopy(enc[n]) for n in ["_pretrained_"] + names})
        result = algo.run(pool)
        files = {}
        os.makedirs(os.path.join(out, "randes", case), exist_ok=True)
        for n, m in result["models"].items():
            state = {k: v.detach().float().contiguous().clone() for k, v in m.state_dict().items()}
            f = f"randes/{case}/{n}.safetensors"
            save_file(state, os.path.join(out, f))
            files[n] = f
        manifest["cases"][case] = {"method": cfg, "models_dir": "doge/models",
                                   "models": ["_pretrained_"] + names, "retrieved": files}
        print("ok", case)


# `--only CASE,...` with `--new`: regenerate just those of the new cases
ONLY = set()


def new_cases(out, names, manifest):
    dop_clip_cases(out, names, manifest)
    randes_more_cases(out, names, manifest)
    randes_lora_cases(out, names, manifest)
    randes_shift_cases(out, names[:3], manifest)


class Layers3(nn.Module):
    """Three CLIP-like encoder layers, 8 wide (for RanDeS' `shift_layers`)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        layers = []
        for _ in range(3):
            layer = nn.Module()
            layer.self_attn = nn.Module()
            layer.self_attn.q_proj = nn.Linear(8, 8)
            layer.mlp = nn.Module()
            layer.mlp.fc1 = nn.Linear(8, 12)
            layer.mlp.fc2 = nn.Linear(12, 8)
            layer.layer_norm1 = nn.LayerNorm(8)
            layers.append(layer)
        self.encoder.layers = nn.ModuleList(layers)
        self.head = nn.Linear(8, 3)


def randes_shift_cases(out, names, manifest):
    """RanDeS with `shift_layers` (each model's target layers moved to other layer numbers
    before the superposition and back after it) on three-layer models written here
    (randes/layers3/NAME.safetensors: `_pretrained_` and three models, torch seed 23)."""
    models_dir = os.path.join(out, "randes", "layers3")
    os.makedirs(models_dir, exist_ok=True)
    g = torch.Generator().manual_seed(23)
    mods = {}
    base = Layers3()
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    for n in ["_pretrained_"] + names:
        m = copy.deepcopy(base)
        if n != "_pretrained_":
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
        sd = {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}
        save_file(sd, os.path.join(models_dir, f"{n}.safetensors"))
        m2 = Layers3()
        m2.load_state_dict(load_file(os.path.join(models_dir, f"{n}.safetensors")))
        mods[n] = m2
    import fusion_bench.method.randes.task_arithmetic as randes_ta
    _add = randes_ta.state_dict_add
    randes_ta.state_dict_add = lambda a, b, *x, **k: _add({n: v.detach() for n, v in a.items()}, b, *x, **k)
    soup = "fusion_bench.method.randes.SuperposedModelSoupAlgorithm"
    ta = "fusion_bench.method.randes.SuperposedTaskArithmeticAlgorithm"
    cases = {
        "randes_ta_shift_1": {"_target_": ta, **RANDES_BASE, "shift_layers": 1,
                              "scaling_factor": 0.5, "model_path": None},
        "randes_soup_shift_random": {"_target_": soup, **RANDES_BASE, "shift_layers": -1,
                                     "mode": "random_diagonal_matrix", "random_seed": 4,
                                     "target_layer": ["mlp_w"]},
        "randes_ta_shift_2_rotation": {"_target_": ta, **RANDES_BASE, "shift_layers": 2,
                                       "mode": "random_rotation_matrix",
                                       "different_across_layers": False, "scaling_factor": 0.4,
                                       "model_path": None},
    }
    all_names = ["_pretrained_"] + names
    for case, cfg in cases.items():
        if ONLY and case not in ONLY:
            continue
        pool = BaseModelPool(models={n: copy.deepcopy(mods[n]) for n in all_names})
        run_randes(out, case, cfg, pool, manifest, "randes/layers3", all_names)
    randes_ta.state_dict_add = _add


def dop_clip_cases(out, names, manifest):
    """ContinualDOPForCLIP (`dop/dop`) on the plain models: it seeds itself (`seed`) before the
    shuffle and saves every step through `save_merged_model`, replaced by a copy into memory."""
    def load(name):
        m = Tiny()
        m.load_state_dict(load_file(os.path.join(out, "models", f"{name}.safetensors")))
        return m

    models = {n: load(n) for n in ["_pretrained_"] + names}
    target = "fusion_bench.method.dop.dop.ContinualDOPForCLIP"
    cases = {
        # dop.yaml's settings, seeded
        "dop_clip": {"_target_": target, "seed": 7, "shuffle_order": True,
                     "save_on_every_step": True, "evaluate_on_every_step": False, "lr": 1e-4,
                     "num_steps": 200, "mgda": True, "alpha": 0.8, "ema": True,
                     "ema_beta": 0.999, "svd_epsilon": 0.99999, "svd_proj_space": "uv"},
        # the class's default ema_beta (0.99) with MGDA, on U. Not its default svd_epsilon 1:
        # there the last singular direction is kept or dropped by the rounding of torch's f32
        # sum (cumsum / sum reaching exactly 1.0 or not), which differs between builds
        "dop_clip_ema_default_u": {"_target_": target, "seed": 3, "shuffle_order": True,
                                   "save_on_every_step": True, "evaluate_on_every_step": False,
                                   "lr": 5e-4, "num_steps": 50, "alpha": 0.6,
                                   "svd_epsilon": 0.97, "svd_proj_space": "u"},
    }
    for case, cfg in cases.items():
        if ONLY and case not in ONLY:
            continue
        torch.manual_seed(0)
        algo = instantiate(copy.deepcopy(cfg), _recursive_=False)
        steps = []

        def save_merged_model(self, merged_model, step):
            steps.append((step, {k: v.detach().float().contiguous().clone()
                                 for k, v in merged_model.state_dict().items()}))

        algo.save_merged_model = types.MethodType(save_merged_model, algo)
        p = BaseModelPool(models={n: copy.deepcopy(m) for n, m in models.items()})
        order = []
        import random as _random
        real_shuffle = _random.shuffle

        def shuffle(x, *a, **k):
            real_shuffle(x, *a, **k)
            order[:] = list(x)

        _random.shuffle = shuffle
        try:
            merged = algo.run(p)
        finally:
            _random.shuffle = real_shuffle
        final = {k: v.detach().float().contiguous() for k, v in merged.state_dict().items()}
        assert [s for s, _ in steps] == list(range(len(names))), [s for s, _ in steps]
        for k, v in steps[-1][1].items():
            assert torch.equal(v, final[k]), (case, k)
        os.makedirs(os.path.join(out, "continual", case), exist_ok=True)
        files = []
        for step, state in steps:
            f = f"continual/{case}/step_{step}.safetensors"
            save_file(state, os.path.join(out, f))
            files.append(f)
        manifest["cases"][case] = {"method": cfg, "models": ["_pretrained_"] + names,
                                   "order": order, "program_seed": None, "steps": files}
        print("ok", case, order)


def randes_enc(out, names):
    enc = {}
    for n in ["_pretrained_"] + names:
        e = Enc()
        e.load_state_dict(load_file(os.path.join(out, "doge", "models", f"{n}.safetensors")))
        enc[n] = e
    return enc


RANDES_BASE = {"mode": "random_binary_diagonal_matrix", "target_layer": ["mlp_w", "attn_w"],
               "random_seed": 42, "different_across_layers": True,
               "joint_matrix_mode": "flatten_hstack", "rank": 1, "random_components": False,
               "shift_layers": 0, "absorber": "None", "debug": 0, "ms_mode": "average",
               "verbose": 0, "dropout_rate": 1}


class NoCuda:
    """FusionBench inverts the dense contexts with `torch.linalg.pinv(context.to("cuda"))`,
    which fails without a GPU; inside this block `.to("cuda")` leaves a tensor on the CPU (the
    pseudo-inverse is then torch's CPU one)."""

    def __enter__(self):
        self.real = torch.Tensor.to
        real = self.real

        def to(t, *a, **k):
            if a and a[0] == "cuda":
                return t
            return real(t, *a, **k)

        torch.Tensor.to = to

    def __exit__(self, *exc):
        torch.Tensor.to = self.real


def run_randes(out, case, cfg, pool, manifest, models_dir, pool_names):
    algo = instantiate(copy.deepcopy(cfg), _recursive_=False)
    with NoCuda():
        result = algo.run(pool)
    files = {}
    os.makedirs(os.path.join(out, "randes", case), exist_ok=True)
    for n, m in result["models"].items():
        state = {k: v.detach().float().contiguous().clone() for k, v in m.state_dict().items()}
        f = f"randes/{case}/{n}.safetensors"
        save_file(state, os.path.join(out, f))
        files[n] = f
    manifest["cases"][case] = {"method": cfg, "models_dir": models_dir, "models": pool_names,
                               "retrieved": files}
    print("ok", case)


def randes_more_cases(out, names, manifest):
    """RanDeS with rotation contexts (scipy's ortho_group; FusionBench fails with
    `different_across_layers: true`, whose seed is a float scipy refuses) and dense Gaussian
    contexts (retrieved by torch.linalg.pinv, on the CPU here)."""
    import fusion_bench.method.randes.task_arithmetic as randes_ta
    _add = randes_ta.state_dict_add
    randes_ta.state_dict_add = lambda a, b, *x, **k: _add({n: v.detach() for n, v in a.items()}, b, *x, **k)
    enc = randes_enc(out, names)
    soup = "fusion_bench.method.randes.SuperposedModelSoupAlgorithm"
    ta = "fusion_bench.method.randes.SuperposedTaskArithmeticAlgorithm"
    cases = {
        "randes_ta_rotation": {"_target_": ta, **RANDES_BASE, "mode": "random_rotation_matrix",
                               "different_across_layers": False, "scaling_factor": 0.5,
                               "model_path": None},
        # biases among the targets (a vector times the rotation)
        "randes_soup_rotation_pretrained": {"_target_": soup, **RANDES_BASE,
                                            "mode": "random_rotation_matrix",
                                            "different_across_layers": False, "random_seed": 9,
                                            "absorber": "pretrained", "target_layer": ["mlp", "attn"]},
        "randes_ta_dense": {"_target_": ta, **RANDES_BASE, "mode": "random_dense_matrix",
                            "scaling_factor": 0.3, "model_path": None},
    }
    all_names = ["_pretrained_"] + names
    for case, cfg in cases.items():
        if ONLY and case not in ONLY:
            continue
        pool = BaseModelPool(models={n: copy.deepcopy(enc[n]) for n in all_names})
        run_randes(out, case, cfg, pool, manifest, "doge/models", all_names)
    # The dense contexts' f32 pseudo-inverses are off by about cond(C)·ε(f32), which shows in the
    # retrieved models (up to ~2e-4 relative here); the same case with torch.linalg.pinv in
    # float64 (rounded to f32) is what an exact pseudo-inverse gives.
    case = "randes_ta_dense_pinv_f64"
    if not ONLY or case in ONLY:
        real = torch.linalg.pinv
        torch.linalg.pinv = lambda x, *a, **k: real(x.double(), *a, **k).float()
        try:
            pool = BaseModelPool(models={n: copy.deepcopy(enc[n]) for n in all_names})
            run_randes(out, case, cases["randes_ta_dense"], pool, manifest, "doge/models",
                       all_names)
        finally:
            torch.linalg.pinv = real
        manifest["cases"][case]["note"] = "torch.linalg.pinv computed in float64"
    randes_ta.state_dict_add = _add


LORA_MODULES = {"encoder.layers.0.self_attn.q_proj": (24, 24), "encoder.layers.0.mlp.fc1": (24, 64),
                "encoder.layers.0.mlp.fc2": (64, 24)}


def randes_lora_cases(out, names, manifest):
    """SuperposedTaskArithmeticLoRAAlgorithm on rank-4 LoRA adapters of the renamed models'
    linear layers (randes/lora/NAME.safetensors, PEFT's names, drawn here with torch seed 17),
    `_pretrained_` from doge/models. The adapters are given to FusionBench as state dicts, as its
    pool's `load_model` returns a LoRA checkpoint."""
    lora_dir = os.path.join(out, "randes", "lora")
    os.makedirs(lora_dir, exist_ok=True)
    g = torch.Generator().manual_seed(17)
    adapters = {}
    for n in names:
        sd = {}
        for mod, (fan_in, fan_out) in LORA_MODULES.items():
            sd[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(4, fan_in, generator=g) * 0.2
            sd[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(fan_out, 4, generator=g) * 0.2
        save_file(sd, os.path.join(lora_dir, f"{n}.safetensors"))
        # as the checkpoint loads: the file's order
        adapters[n] = load_file(os.path.join(lora_dir, f"{n}.safetensors"))
    enc = randes_enc(out, names)

    class LoraPool(BaseModelPool):
        def load_model(self, name, *a, **k):
            if isinstance(name, str) and name in adapters:
                return {key: v.clone() for key, v in adapters[name].items()}
            return super().load_model(name, *a, **k)

    target = "fusion_bench.method.randes.SuperposedTaskArithmeticLoRAAlgorithm"
    cases = {
        # superposed_task_arithmetic_lora.yaml plus the two parameters it lacks
        "randes_lora_binary": {"_target_": target, **RANDES_BASE, "scaling_factor": 0.5,
                               "model_path": None},
        # attention LoRA summed over the adapters, MLP LoRA rotated
        "randes_lora_rotation_mlp": {"_target_": target, **RANDES_BASE,
                                     "mode": "random_rotation_matrix",
                                     "different_across_layers": False, "target_layer": ["mlp_w"],
                                     "scaling_factor": 0.7, "model_path": None},
    }
    all_names = ["_pretrained_"] + names
    for case, cfg in cases.items():
        if ONLY and case not in ONLY:
            continue
        pool = LoraPool(models={"_pretrained_": copy.deepcopy(enc["_pretrained_"]),
                                **{n: nn.Identity() for n in names}})
        run_randes(out, case, cfg, pool, manifest, "randes/lora", all_names)
        manifest["cases"][case]["pretrained"] = "doge/models/_pretrained_.safetensors"


if __name__ == "__main__":
    main()
