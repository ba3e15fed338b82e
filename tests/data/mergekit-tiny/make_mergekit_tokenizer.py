"""Golden cases for fusion-host's mergekit tokenizer handling, `modules:` configs and named chat
templates, made by mergekit-yaml (mergekit 0.1.5 from PyPI, in its own venv) on the tiny models
of this folder.

Usage (from this folder): /tmp/mkvenv/bin/python make_mergekit_tokenizer.py

Writes three tiny Llama checkpoints with tokenizers of different vocabularies (weights taken
from models/base, models/math and models/code, with embedding rows added for their added
tokens):

- models/tok_base: a word-level tokenizer of 96 tokens (`<unk>`, `<s>`, `</s>`, `w3` ... `w95`,
  with `foo` at id 50); no chat template.
- models/tok_a: the same with `bar` in place of `foo` and the special token `<|im_start|>` added
  at id 96 (97 embedding rows); the chatml chat template.
- models/tok_b: tok_base's vocabulary plus `<|im_start|>` (96) and `<|im_end|>` (97) (98 rows);
  the chatml chat template.

So a merged vocabulary has a token only one model has (`bar`, `<|im_end|>`), a token two models
have but not the base (`<|im_start|>`: averaged) and a token a model lacks (`foo` in tok_a: the
base's row). Then configs/tok_CASE.yaml and expected/tok_CASE/ (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, chat_template.jinja where written) and cases_tokenizer.yaml.

mergekit numbers the tokens a union adds in the iteration order of a hash map (and of a Python
set of models), which changes from run to run; the tests compare embedding rows by token, not by
id.
"""
import json, os, shutil, subprocess, sys

import torch
import yaml
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def vocab(swap_foo=None):
    v = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, 96):
        v[f"w{i}"] = i
    del v["w50"]
    v[swap_foo or "foo"] = 50
    return v


def make_model(name, weights_from, swap_foo, added, template, seed):
    folder = os.path.join("models", name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    tok = Tokenizer(models.WordLevel(vocab(swap_foo), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if added:
        fast.add_special_tokens({"additional_special_tokens": added})
    if template:
        fast.chat_template = template
    fast.save_pretrained(folder)
    rows = 96 + len(added)
    config = json.load(open(os.path.join("models", weights_from, "config.json")))
    config["vocab_size"] = rows
    json.dump(config, open(os.path.join(folder, "config.json"), "w"), indent=2)
    w = load_file(os.path.join("models", weights_from, "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        extra = torch.randn((len(added), w[k].shape[1]), generator=g) * 0.05
        w[k] = torch.cat([w[k], extra]).contiguous()
    save_file(w, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


M = lambda n: f"models/{n}"
CASES = {
    "union_linear": {"merge_method": "linear", "base_model": M("tok_base"), "tokenizer_source": "union",
                     "models": [{"model": M("tok_base"), "parameters": {"weight": 0.5}},
                                {"model": M("tok_a"), "parameters": {"weight": 0.3}},
                                {"model": M("tok_b"), "parameters": {"weight": 0.2}}]},
    "union_ties_chatml": {"merge_method": "ties", "base_model": M("tok_base"), "tokenizer": {"source": "union"},
                          "chat_template": "chatml",
                          "models": [{"model": M("tok_a"), "parameters": {"weight": 0.6, "density": 0.5}},
                                     {"model": M("tok_b"), "parameters": {"weight": 0.4, "density": 0.7}}]},
    "source_model": {"merge_method": "task_arithmetic", "base_model": M("tok_base"), "tokenizer_source": M("tok_b"),
                     "models": [{"model": M("tok_a"), "parameters": {"weight": 0.7}},
                                {"model": M("tok_b"), "parameters": {"weight": 0.5}}]},
    "union_tokens_pad": {"merge_method": "linear", "base_model": M("tok_base"),
                         "tokenizer": {"source": "union", "pad_to_multiple_of": 8, "tokens": {
                             "<|im_start|>": {"source": {"kind": "model_token", "model": M("tok_base"), "token": "<s>"}},
                             "foo": {"source": {"kind": "zero"}, "force": True},
                             "<|im_end|>": {"source": M("tok_b")},
                             "w7": {"source": M("tok_a"), "force": True}}},
                         "models": [{"model": M("tok_base"), "parameters": {"weight": 0.4}},
                                    {"model": M("tok_a"), "parameters": {"weight": 0.3}},
                                    {"model": M("tok_b"), "parameters": {"weight": 0.3}}]},
    "chat_template_llama3": {"merge_method": "slerp", "base_model": M("tok_a"), "tokenizer_source": "base",
                             "chat_template": "llama3", "parameters": {"t": 0.3},
                             "models": [{"model": M("tok_a")}, {"model": M("tok_b")}]},
    "modules_task_arithmetic": {"merge_method": "task_arithmetic", "base_model": M("base"),
                                "parameters": {"lambda": 0.8},
                                "modules": {"default": {
                                    "parameters": {"normalize": True, "weight": 0.25},
                                    "models": [{"model": M("math"), "parameters": {"weight": 0.7}},
                                               {"model": M("code")}]}}},
    "modules_slices": {"merge_method": "linear",
                       "modules": {"default": {
                           "parameters": {"weight": [0.2, 0.8]},
                           "slices": [{"sources": [{"model": M("math"), "layer_range": [0, 3]},
                                                   {"model": M("chat"), "layer_range": [1, 4], "parameters": {"weight": 0.5}}]},
                                      {"sources": [{"model": M("code"), "layer_range": [3, 4]},
                                                   {"model": M("math"), "layer_range": [3, 4]}]}]}}},
}


def main():
    out = os.getcwd()
    make_model("tok_base", "base", None, [], None, 1)
    make_model("tok_a", "math", "bar", ["<|im_start|>"], CHATML, 2)
    make_model("tok_b", "code", None, ["<|im_start|>", "<|im_end|>"], CHATML, 3)
    exe = os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")
    keep = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    ok = {}
    for case, cfg in CASES.items():
        cfg = {"dtype": "float32", **cfg}
        name = f"tok_{case}"
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
            print("FAILED", case, r.stderr[-1500:])
            shutil.rmtree(dst, ignore_errors=True)
            os.remove(path)
            continue
        for f in os.listdir(dst):
            if f not in keep:
                os.remove(os.path.join(dst, f))
        ok[name] = {"config": f"configs/{name}.yaml", "expected": f"expected/{name}"}
        print("ok", case, sorted(os.listdir(dst)))
    with open(os.path.join(out, "cases_tokenizer.yaml"), "w") as f:
        yaml.safe_dump({"reference": "mergekit 0.1.5 (PyPI) mergekit-yaml, CPU; run configs from this folder",
                        "cases": ok}, f, sort_keys=False)


if __name__ == "__main__":
    main()
