"""Golden outputs of FusionBench's causal-LM methods on the tiny Llamas.

Runs fusion-bench's own classes (CausalLMPool, SimpleAverageForCausalLM, ..., MagnitudePruningForLlama)
on the cases of cases.json and saves, per case, the tensors listed in `saved_tensors` to
expected/CASE.safetensors (f32). Also writes the small fixtures the tests use:

- tokenizer/: a tiny word-level tokenizer (PreTrainedTokenizerFast.save_pretrained), which the
  CausalLMPool's `tokenizer` points at, so the tests can check that its files travel;
- models/mistral/: a tiny MistralForCausalLM with the Llamas' shapes (the "different
  architectures" test).

Run from anywhere with fusion-bench 0.2.x, torch and transformers installed:
    python tests/data/llm-tiny/make_llm_golden.py
Not needed by the product or by `cargo test` (the outputs are committed).
"""

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
MODELS = HERE.parent / "mergekit-tiny" / "models"
CONFIGS = ROOT / "configs" / "method"


def make_tokenizer(dest: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(40)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(dest)


def make_mistral(dest: Path):
    from transformers import MistralConfig, MistralForCausalLM

    base = json.loads((MODELS / "base" / "config.json").read_text())
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=base["vocab_size"],
        hidden_size=base["hidden_size"],
        intermediate_size=base["intermediate_size"],
        num_hidden_layers=base["num_hidden_layers"],
        num_attention_heads=base["num_attention_heads"],
        num_key_value_heads=base["num_key_value_heads"],
        head_dim=base["head_dim"],
        max_position_embeddings=base["max_position_embeddings"],
        tie_word_embeddings=False,
    )
    MistralForCausalLM(config).to(torch.float32).save_pretrained(dest)


def make_tied(src: Path, dest: Path):
    """A copy of a tiny Llama with tied embeddings (its lm_head dropped, as save_pretrained does)."""
    from transformers import AutoConfig, LlamaForCausalLM
    from safetensors.torch import load_file

    config = AutoConfig.from_pretrained(src)
    config.tie_word_embeddings = True
    model = LlamaForCausalLM(config).to(torch.float32)
    sd = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if k != "lm_head.weight"}
    model.load_state_dict(sd, strict=False)
    model.tie_weights()
    model.save_pretrained(dest)


def model_dir(name: str) -> Path:
    """A pool entry of cases.json: a tiny Llama's name, or a path under tests/data."""
    return HERE.parent / name if "/" in name else MODELS / name


def method_config(case):
    """The config file of the case's method with its params, as Hydra composes it (no save)."""
    cfg = OmegaConf.load(CONFIGS / f"{case['method']}.yaml")
    for k, v in case["params"].items():
        cfg[k] = v
    for key in ("model_save_path", "merged_model_save_path"):
        if key in cfg:
            cfg[key] = None
    return cfg


def weighted_average_for_llama(pool, cfg):
    """WeightedAverageForLLama's arithmetic, with its own helpers. Its `run` cannot be called on a
    CausalLMPool in fusion-bench 0.2.x: it passes `backbone_only` to `load_model`, which hands it
    to `LlamaForCausalLM.__init__` (TypeError). This follows the class's code otherwise, and its
    config's stated intent for `backbone_only: true` (the head stays the base model's)."""
    import numpy as np
    from fusion_bench.utils.state_dict_arithmetic import state_dict_add, state_dict_mul

    base = pool.load_model("_pretrained_" if pool.has_pretrained else pool.model_names[0])
    weights = np.asarray(list(cfg.weights))
    if cfg.normalize:
        weights = weights / np.sum(weights)
    merged = None
    for name, w in zip(pool.model_names, weights):
        model = pool.load_model(name)
        part = model.model if cfg.backbone_only else model
        sd = state_dict_mul(part.state_dict(), w)
        merged = sd if merged is None else state_dict_add(merged, sd)
    target = base.model if cfg.backbone_only else base
    target.load_state_dict(merged, strict=True)
    return base.state_dict()


def main():
    from fusion_bench.modelpool import CausalLMPool
    from fusion_bench.utils import instantiate

    make_tokenizer(HERE / "tokenizer")
    make_mistral(HERE / "models" / "mistral")
    make_tied(MODELS / "base", HERE / "models" / "tied_base")
    make_tied(MODELS / "chat", HERE / "models" / "tied_chat")
    spec = json.loads((HERE / "cases.json").read_text())
    out = HERE / "expected"
    out.mkdir(exist_ok=True)
    for case in spec["cases"]:
        pool = CausalLMPool(
            models={k: str(model_dir(v)) for k, v in case["models"].items()},
            tokenizer=str(HERE / "tokenizer"),
            model_kwargs={"torch_dtype": "float32"},
        )
        cfg = method_config(case)
        if case["method"] == "linear/weighted_average_for_llama":
            sd = weighted_average_for_llama(pool, cfg)
        else:
            sd = instantiate(cfg).run(pool).state_dict()
        # The tensors the checkpoints hold (a tied model's state dict also lists lm_head.weight).
        first = model_dir(next(iter(case["models"].values())))
        held = set(safe_open(str(first / "model.safetensors"), "pt").keys())
        tensors = {
            k: sd[k].detach().to(torch.float32).contiguous()
            for k in spec["saved_tensors"]
            if k in held
        }
        save_file(tensors, str(out / f"{case['name']}.safetensors"))
        print(case["name"], "ok")


if __name__ == "__main__":
    main()
