"""Golden fixtures for SMILE upscaling (FusionBench's `smile_upscaling/smile_upscaling`,
`SmileUpscalingAlgorithm`), produced by the reference implementation: the fusion-bench package
from PyPI, torch float32 on the CPU, on tiny CLIP vision towers (transformers' CLIPVisionModel).

Usage: python make_smile_golden.py OUT_DIR SEED

Writes
- OUT_DIR/models/NAME/{config.json,model.safetensors}: the pool, `_pretrained_` and three
  fine-tuned towers (`task_a` .. `task_c`) carrying low-rank updates (distinct singular values,
  so the truncations are well defined) on every linear weight except layer 1's `out_proj`, which
  no model changes (fusion-bench keeps such a layer a plain linear), plus noise on biases and
  layer norms;
- OUT_DIR/inputs.safetensors: `pixel_values` [4, 3, 16, 16];
- OUT_DIR/expected/CASE.safetensors: the upscaled model's state dict as fusion-bench returns it
  (`SmileMoELinear` modules: `gate.weights`, `experts.N.{u,svh,bias}`, `pretrained_model.*`);
- OUT_DIR/expected/CASE.outputs.safetensors: the upscaled tower's `last_hidden_state` and
  `pooler_output` on `pixel_values`, and the routing of layer 0's fc1 on its input
  (`fc1_input` [tokens, 32]; `routing` [tokens, experts] after softmax, top-k and
  renormalization, zero where not selected);
- OUT_DIR/cases.yaml: each case's FusionBench method config (the YAML file's keys), the models.
"""
import copy, os, sys

import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from fusion_bench.method.smile_upscaling.smile_upscaling import SmileUpscalingAlgorithm
from fusion_bench.modelpool import BaseModelPool as _BaseModelPool
from fusion_bench.models.smile_moe.linear_from_module import SmileMoELinear
from fusion_bench.utils.instantiate_utils import instantiate


class BaseModelPool(_BaseModelPool):
    """fusion-bench's pool, except that each load of a pre-instantiated model returns a copy, as
    loading from a checkpoint does (SMILE rewrites `_pretrained_` and the fine-tuned models in
    place)."""

    def load_model(self, model_name_or_config, *args, **kwargs):
        model = super().load_model(model_name_or_config, *args, **kwargs)
        return copy.deepcopy(model) if isinstance(model, nn.Module) else model


_average_experts = SmileUpscalingAlgorithm._average_experts


def average_parametrized_leaves(self, pretrained_model, finetuned_models, name):
    """fusion-bench 0.2.33's `average_experts: true` fails on every CLIP model: it averages each
    leaf module, parameter-free ones (the activation) included, and `simple_average` refuses
    their empty state dicts. Skip those (there is nothing to average); the rest is unchanged."""
    if len(pretrained_model.get_submodule(name).state_dict()) == 0:
        return
    _average_experts(self, pretrained_model, finetuned_models, name)


SmileUpscalingAlgorithm._average_experts = average_parametrized_leaves


def low_rank(out_dim, in_dim, values, gen):
    """U diag(values) Vᵀ with random orthonormal U, V."""
    r = len(values)
    u, _ = torch.linalg.qr(torch.randn(out_dim, r, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(in_dim, r, generator=gen))
    return u @ torch.diag(torch.tensor(values)) @ v.T


def finetuned(base, seed):
    gen = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(base)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "layers.1.self_attn.out_proj" in name:
                continue  # untouched everywhere: stays a plain linear
            if p.dim() == 2 and name.endswith(".weight") and "embedding" not in name:
                o, i = p.shape
                p += low_rank(o, i, [1.6, 1.1, 0.8, 0.6, 0.25, 0.15], gen)
            else:
                p += 0.05 * torch.randn(p.shape, generator=gen)
    return m


def main():
    out, seed = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=16, patch_size=4,
                           hidden_act="quick_gelu", projection_dim=16)
    base = CLIPVisionModel(cfg).eval()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p += 0.1 * torch.randn(p.shape)
    names = ["task_a", "task_b", "task_c"]
    fts = {n: finetuned(base, seed + 1 + i).eval() for i, n in enumerate(names)}
    for n, m in [("_pretrained_", base)] + list(fts.items()):
        d = os.path.join(out, "models", n)
        m.save_pretrained(d, safe_serialization=True)
    os.makedirs(os.path.join(out, "expected"), exist_ok=True)
    pixel_values = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed + 100))
    save_file({"pixel_values": pixel_values}, os.path.join(out, "inputs.safetensors"))

    def pool(only=None):
        models = {"_pretrained_": copy.deepcopy(base)}
        for n in only or names:
            models[n] = copy.deepcopy(fts[n])
        return BaseModelPool(models=models)

    # The YAML file's keys; `upscaling_accelerator: null` (the file says cuda: no GPU here).
    yaml_cfg = {"_target_": "fusion_bench.method.SmileUpscalingAlgorithm", "device": "cpu",
                "upscaling_accelerator": None, "full_matrices": True, "gate_k": 1, "k": 128,
                "top_k": 1, "routing_use_diff": True, "average_experts": False, "model_path": None}
    cases = {
        # k 4 of the updates' 6 singular values (gap 0.6 / 0.25), gate from the leading one.
        "smile_k4": (dict(yaml_cfg, k=4), None),
        "smile_top2_avg": (dict(yaml_cfg, k=3, gate_k=2, top_k=2, average_experts=True), None),
        "smile_no_diff_routing": (dict(yaml_cfg, k=4, gate_k=2, top_k=2, routing_use_diff=False), None),
        # k above the tall/wide matrices' rank is a FusionBench error; full_matrices false
        # clamps it to the rank (every expert the whole update).
        "smile_full_rank": (dict(yaml_cfg, k=64, full_matrices=False), None),
        "smile_k_nonpositive": (dict(yaml_cfg, k=0, gate_k=1, top_k=1), ["task_a", "task_b"]),
        "smile_one_expert": (dict(yaml_cfg, k=2), ["task_b"]),
    }
    manifest = {"reference": "fusion-bench (PyPI) SmileUpscalingAlgorithm, torch float32, CPU",
                "seed": seed, "pool": ["_pretrained_"] + names, "cases": {}}
    for case, (mcfg, only) in cases.items():
        torch.manual_seed(seed)
        algo = instantiate(copy.deepcopy(mcfg), _recursive_=False)
        model = algo.run(pool(only)).eval()
        state = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(out, "expected", f"{case}.safetensors"))
        # The routing of layer 0's fc1, recorded by a hook on its gate.
        moe = model.vision_model.encoder.layers[0].mlp.fc1
        assert isinstance(moe, SmileMoELinear), type(moe)
        seen = {}

        def record(mod, inp, out):
            seen.setdefault("x", inp[0].detach().clone())  # returns None: the output stays

        moe.register_forward_hook(record)
        with torch.no_grad():
            o = model(pixel_values=pixel_values)
            x = seen["x"].reshape(-1, moe.in_features)
            logits = moe.gate(x)
            w = torch.softmax(logits, dim=1)
            w, sel = torch.topk(w, moe.top_k, dim=-1)
            w = w / w.sum(dim=-1, keepdim=True)
            routing = torch.zeros(x.shape[0], moe.num_experts).scatter(1, sel, w)
        save_file({"last_hidden_state": o.last_hidden_state.contiguous(),
                   "pooler_output": o.pooler_output.contiguous(),
                   "routing": routing.contiguous(),
                   "fc1_input": x.contiguous()},
                  os.path.join(out, "expected", f"{case}.outputs.safetensors"))
        manifest["cases"][case] = {"method": mcfg, "models": ["_pretrained_"] + (only or names),
                                   "expected": f"expected/{case}.safetensors",
                                   "outputs": f"expected/{case}.outputs.safetensors"}
        print("ok", case, "experts per token:", routing.gt(0).sum(1).float().mean().item(),
              "expert use:", routing.gt(0).sum(0).tolist())
    # What fusion-bench does with k above a non-square matrix's rank (full_matrices true).
    try:
        bad = instantiate(dict(yaml_cfg, k=40), _recursive_=False)
        m = bad.run(pool()).eval()
        m(pixel_values=pixel_values)
        manifest["k_above_rank"] = "runs"
    except Exception as e:  # noqa: BLE001
        manifest["k_above_rank"] = f"fails: {type(e).__name__}: {str(e)[:200]}"
    print("k above rank:", manifest["k_above_rank"])
    with open(os.path.join(out, "cases.yaml"), "w") as f:
        yaml.safe_dump(manifest, f, sort_keys=False)


if __name__ == "__main__":
    main()
