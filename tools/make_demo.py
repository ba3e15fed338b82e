#!/usr/bin/env python3
"""Build the fusion-host demo assets: a tiny CLIP, per-task fine-tuned vision towers,
held-out test sets, and the expected evaluation results of the merges.

This reproduces, at toy scale and on the CPU, FusionBench's headline CLIP experiment:
a "pretrained" CLIP (contrastively trained here on captioned real images), one copy of
its vision tower fine-tuned per image-classification task with the text tower frozen
(the classifier is the zero-shot head built from the pretrained text tower with class
names and prompt templates), then simple averaging, task arithmetic and TIES-merging of
the fine-tuned vision towers, each scored zero-shot on every task.

Usage:  python tools/make_demo.py [--out demo] [--fashion-dir DIR] [--tokenizer-dir DIR]

Everything is deterministic (fixed seeds, 2 CPU threads). Python is only used to make
these assets; the product (Rust) never runs it. See demo/README.md (written by this
script) for the file layout.

Data (all real, shipped with packages; nothing is downloaded):
  * Fashion-MNIST, Debian package `dataset-fashion-mnist` (IDX files, gzipped).
  * scikit-learn's `load_digits` (1,797 8x8 handwritten digits), upscaled to 28x28.
Tasks (see TASKS below): two Fashion-MNIST class splits, two digit class splits, and two
"domain shift" tasks (colour-inverted Fashion-MNIST and colour-inverted digits, 10 classes
each) of which the pretraining saw only a handful of images, like SVHN/GTSRB are hard for
CLIP in FusionBench. Every test image comes from a source image that no training step
(pretraining or any fine-tuning) ever used.

The pretraining is deliberately small (few images per class, noisy captions) so that the
pretrained model is a weak zero-shot classifier; the fine-tuning learning rate is small so
that the fine-tuned towers stay near the pretrained weights, where merging works.
"""
import argparse
import copy
import gzip
import io
import json
import math
import os
import random
import shutil
import sys
import time

# 2 threads, and OpenMP workers that sleep rather than spin while waiting: on a shared, busy
# 2-core machine spinning workers make every step several times slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

T0 = time.time()
torch.set_num_threads(2)


from PIL import Image  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from transformers import (CLIPConfig, CLIPModel, CLIPVisionModel, CLIPImageProcessor,  # noqa: E402
                          AutoTokenizer)
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

# --------------------------------------------------------------------------------------
# Settings (the final, tuned design)
# --------------------------------------------------------------------------------------
SEED = 0
IMAGE_SIZE = 28
PATCH_SIZE = 7
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_act="quick_gelu", num_channels=3)
TEXT = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
PROJECTION_DIM = 64
LOGIT_SCALE_INIT = 2.6592  # ln(1/0.07), CLIP's init

# per_class / neg_per_class: pretraining images per class of the original / inverted domain;
# caption_noise: fraction of pretraining captions naming a random class of the same source
PRETRAIN = dict(per_class=10, neg_per_class=5, steps=400, batch=128, lr=1e-3, wd=0.1, warmup=40,
                caption_noise=0.2)
FINETUNE = dict(steps=200, batch=64, lr=5e-5, wd=0.0, warmup=20)
EVAL_BATCH = 128
TA_GRID = [round(0.1 * i, 1) for i in range(1, 11)]

FASHION_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot"]
DIGIT_NAMES = [str(i) for i in range(10)]

FASHION_TEMPLATES = ["a photo of a {}.", "a photo of the {}.", "a black and white photo of a {}.",
                     "a low resolution photo of a {}."]
FASHION_NEG_TEMPLATES = ["a negative photo of a {}.", "an inverted photo of the {}.",
                         "a photo of a {} on a white background."]
DIGIT_TEMPLATES = ['a photo of the number: "{}".']
DIGIT_NEG_TEMPLATES = ['a photo of the number: "{}".', 'a negative photo of the number: "{}".']

# name, source, domain, source labels (ordered -> task label), class names, templates, #test, #train
TASKS = [
    dict(name="fashion_tops", source="fashion", invert=False, labels=[0, 2, 3, 4, 6],
         templates=FASHION_TEMPLATES, n_test=512, n_train=6000),
    dict(name="fashion_other", source="fashion", invert=False, labels=[1, 5, 7, 8, 9],
         templates=FASHION_TEMPLATES, n_test=512, n_train=6000),
    dict(name="fashion_negative", source="fashion", invert=True, labels=list(range(10)),
         templates=FASHION_NEG_TEMPLATES, n_test=512, n_train=6000),
    dict(name="digits_low", source="digits", invert=False, labels=[0, 1, 2, 3, 4],
         templates=DIGIT_TEMPLATES, n_test=256, n_train=None),
    dict(name="digits_high", source="digits", invert=False, labels=[5, 6, 7, 8, 9],
         templates=DIGIT_TEMPLATES, n_test=256, n_train=None),
    dict(name="digits_negative", source="digits", invert=True, labels=list(range(10)),
         templates=DIGIT_NEG_TEMPLATES, n_test=256, n_train=None),
]
# pretraining captions (generic "web" captions; the tasks' own templates are among them)
PRETRAIN_TEMPLATES = {
    "fashion": ["a photo of a {}.", "a photo of the {}.", "a black and white photo of a {}.",
                "a low resolution photo of a {}.", "a picture of a {}.", "an image of the {}.", "{}"],
    "digits": ['a photo of the number: "{}".', "a photo of the digit {}.", "a handwritten {}.", "{}"],
    "fashion_neg": ["a negative photo of a {}.", "an inverted photo of the {}.", "a photo of a {}."],
    "digits_neg": ['a negative photo of the number: "{}".', 'a photo of the number: "{}".'],
}

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


def seed_all(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


def find_idx(d, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(os.path.join(d, stem))


def load_fashion(d):
    out = {}
    for split, pre in (("train", "train"), ("test", "t10k")):
        x = read_idx(find_idx(d, f"{pre}-images-idx3-ubyte"))
        y = read_idx(find_idx(d, f"{pre}-labels-idx1-ubyte")).astype(np.int64)
        out[split] = (x, y)
    return out


def load_digits28():
    from sklearn.datasets import load_digits
    dg = load_digits()
    imgs = []
    for im in dg.images:  # 8x8, values 0..16
        a = np.clip(im * (255.0 / 16.0), 0, 255).astype(np.uint8)
        # upscale 8x8 -> 20x20 (bicubic) and pad to 28x28, like MNIST's 20x20 box in a 28x28 frame
        big = Image.fromarray(a).resize((20, 20), Image.BICUBIC)
        canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        canvas.paste(big, (4, 4))
        imgs.append(np.asarray(canvas))
    return np.stack(imgs), dg.target.astype(np.int64)


def build_splits(fashion, digits):
    """Disjoint source indices: every test image is unseen by every training stage."""
    rng = np.random.RandomState(SEED)
    fx_tr, fy_tr = fashion["train"]
    fx_te, fy_te = fashion["test"]
    dx, dy = digits
    # fashion: test from t10k, train from the train split; each task gets its own images
    f_test_perm = rng.permutation(len(fy_te))
    f_train_perm = rng.permutation(len(fy_tr))
    # digits: 1,797 images; hold out the test images first, then split the rest into the
    # pool for the class-split tasks (digits_low/high) and the pool for digits_negative
    d_perm = rng.permutation(len(dy))
    used_test_f, used_train_f = set(), set()
    d_test_used = set()
    splits = {}
    for t in TASKS:
        labs = t["labels"]
        if t["source"] == "fashion":
            te = [i for i in f_test_perm if fy_te[i] in labs and i not in used_test_f][: t["n_test"]]
            used_test_f.update(te)
            tr = [i for i in f_train_perm if fy_tr[i] in labs and i not in used_train_f][: t["n_train"]]
            used_train_f.update(tr)
            splits[t["name"]] = dict(test=(fx_te[te], fy_te[te]), train=(fx_tr[tr], fy_tr[tr]))
        else:
            te = [i for i in d_perm if dy[i] in labs and i not in d_test_used][: t["n_test"]]
            d_test_used.update(te)
            splits[t["name"]] = dict(test=(dx[te], dy[te]))
    # digits training pools: the remaining images, half to the class-split tasks, half to
    # the inverted task (so no source image appears in two tasks)
    rest = [i for i in d_perm if i not in d_test_used]
    pool_a, pool_b = rest[0::2], rest[1::2]
    for t in TASKS:
        if t["source"] != "digits":
            continue
        pool = pool_b if t["invert"] else pool_a
        tr = [i for i in pool if dy[i] in t["labels"]]
        splits[t["name"]]["train"] = (dx[tr], dy[tr])
    # remap labels to task label ids and apply the domain transform
    for t in TASKS:
        m = {s: k for k, s in enumerate(t["labels"])}
        for part in ("train", "test"):
            x, y = splits[t["name"]][part]
            if t["invert"]:
                x = 255 - x
            splits[t["name"]][part] = (np.ascontiguousarray(x), np.array([m[int(v)] for v in y], dtype=np.int64))
    return splits


def to_pixels(x):
    """uint8 [N,28,28] grayscale -> CLIP-normalized float [N,3,28,28]. Equals CLIPImageProcessor on
    the stored PNGs (the resize to 28 and the center crop are identities for 28x28 images)."""
    a = torch.from_numpy(x.astype(np.float32) / 255.0)[:, None].expand(-1, 3, -1, -1)
    mean = torch.from_numpy(CLIP_MEAN)[None, :, None, None]
    std = torch.from_numpy(CLIP_STD)[None, :, None, None]
    return ((a - mean) / std).contiguous()


def class_names(t):
    return [(FASHION_NAMES if t["source"] == "fashion" else DIGIT_NAMES)[s] for s in t["labels"]]


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------
def make_clip():
    cfg = CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=PROJECTION_DIM,
                     logit_scale_init_value=LOGIT_SCALE_INIT)
    return CLIPModel(cfg)


def tokenize(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def text_embeds(clip, ids, mask):
    out = clip.text_model(input_ids=ids, attention_mask=mask)
    return F.normalize(clip.text_projection(out.pooler_output), dim=-1)


def image_embeds(clip, vision_model, px):
    out = vision_model(pixel_values=px)
    return F.normalize(clip.visual_projection(out.pooler_output), dim=-1)


@torch.no_grad()
def zeroshot_head(clip, tok, names, templates):
    """FusionBench's head: per class, normalized template embeddings, mean, renormalize."""
    rows = []
    for c in names:
        ids, mask = tokenize(tok, [tp.format(c) for tp in templates])
        e = text_embeds(clip, ids, mask).mean(0)
        rows.append(e / e.norm())
    return torch.stack(rows)


def lr_at(step, total, base, warmup):
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * p))


def pretrain(clip, tok, splits):
    """Contrastive (CLIP loss) training on a small captioned subset of the training images
    (many per class of the original domain, a few of the inverted one). Captions in a batch
    that name the same class count as positives."""
    seed_all(SEED + 1)
    cfg = PRETRAIN
    xs, img_keys, img_dom = [], [], []  # images, their (source, class), their caption domain
    rng = np.random.RandomState(SEED + 1)
    for t in TASKS:
        # a few images of the inverted domain, many of the original one
        x, y = splits[t["name"]]["train"]
        per = cfg["neg_per_class"] if t["invert"] else cfg["per_class"]
        dom = t["source"] + ("_neg" if t["invert"] else "")
        for k, s in enumerate(t["labels"]):
            idx = np.nonzero(y == k)[0][:per]
            xs.append(x[idx])
            img_keys += [(t["source"], s)] * len(idx)
            img_dom += [dom] * len(idx)
    x_all = to_pixels(np.concatenate(xs))
    # caption vocabulary: each (domain, class, template) once
    cap_texts, caps_of = [], {}
    for dom, tps in PRETRAIN_TEMPLATES.items():
        names = FASHION_NAMES if dom.startswith("fashion") else DIGIT_NAMES
        for s, c in enumerate(names):
            for tp in tps:
                caps_of.setdefault((dom, s), []).append(len(cap_texts))
                cap_texts.append(tp.format(c))
    class_keys = sorted(set(img_keys))
    key_id = {k: i for i, k in enumerate(class_keys)}
    img_key = np.array([key_id[k] for k in img_keys])
    cap_ids, cap_mask = tokenize(tok, cap_texts)
    n = len(img_key)
    log(f"pretraining on {n} images, {len(cap_texts)} distinct captions, {cfg['steps']} steps")
    params = [p for p in clip.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["wd"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-6)
    clip.train()
    for step in range(cfg["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg["steps"], cfg["lr"], cfg["warmup"])
        b = rng.randint(0, n, size=cfg["batch"])
        keys = img_key[b].copy()
        # noisy "web" captions: some images come with a caption of a random class of their source
        noisy = rng.rand(len(b)) < cfg["caption_noise"]
        for i in np.nonzero(noisy)[0]:
            src = class_keys[keys[i]][0]
            keys[i] = key_id[(src, rng.randint(10))]
        caps = []
        for i, k in enumerate(keys):
            c = caps_of[(img_dom[b[i]], class_keys[k][1])]
            caps.append(c[rng.randint(len(c))])
        # embed each distinct caption once
        uniq, inv = np.unique(np.array(caps), return_inverse=True)
        te = text_embeds(clip, cap_ids[uniq], cap_mask[uniq])[torch.from_numpy(inv.reshape(-1))]
        ie = image_embeds(clip, clip.vision_model, x_all[b])
        logits = clip.logit_scale.exp().clamp(max=100) * ie @ te.t()
        pos = torch.from_numpy((keys[:, None] == keys[None, :]).astype(np.float32))
        li = -(F.log_softmax(logits, 1) * (pos / pos.sum(1, keepdim=True))).sum(1).mean()
        lt = -(F.log_softmax(logits.t(), 1) * (pos / pos.sum(1, keepdim=True))).sum(1).mean()
        loss = 0.5 * (li + lt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == cfg["steps"] - 1:
            log(f"  pretrain step {step:4d} loss {loss.item():.4f} scale {clip.logit_scale.exp().item():.2f}")
    clip.eval()


def finetune(clip, tok, task, train):
    """Fine-tune a copy of the vision tower on one task with the frozen zero-shot head
    (text tower, projections and logit scale frozen), like FusionBench's checkpoints."""
    seed_all(SEED + 100 + [t["name"] for t in TASKS].index(task["name"]))
    cfg = FINETUNE
    head = zeroshot_head(clip, tok, class_names(task), task["templates"])
    vm = copy.deepcopy(clip.vision_model)
    vm.train()
    x, y = train
    px = to_pixels(x)
    yt = torch.from_numpy(y)
    opt = torch.optim.AdamW(vm.parameters(), lr=cfg["lr"], weight_decay=cfg["wd"])
    scale = clip.logit_scale.exp().detach()
    rng = np.random.RandomState(SEED + 200)
    for step in range(cfg["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg["steps"], cfg["lr"], cfg["warmup"])
        b = rng.randint(0, len(y), size=cfg["batch"])
        ie = image_embeds(clip, vm, px[b])
        loss = F.cross_entropy(scale * ie @ head.t(), yt[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    log(f"  finetuned {task['name']}: {cfg['steps']} steps on {len(y)} images, last loss {loss.item():.4f}")
    vm.eval()
    return vm


# --------------------------------------------------------------------------------------
# Merging (FusionBench's exact algorithms on CLIPVisionModel state dicts)
# --------------------------------------------------------------------------------------
def simple_average(sds):
    out = {k: v.clone() for k, v in sds[0].items()}
    for sd in sds[1:]:
        assert sd.keys() == out.keys()
        out = {k: out[k] + sd[k] for k in out}
    return {k: v / len(sds) for k, v in out.items()}


def task_arithmetic(pre, sds, lam):
    tau = {k: sds[0][k] - pre[k] for k in pre}
    for sd in sds[1:]:
        tau = {k: tau[k] + (sd[k] - pre[k]) for k in pre}
    tau = {k: (v.clone() if (lam == 0 or not v.is_floating_point()) else lam * v) for k, v in tau.items()}
    return {k: pre[k] + tau[k] for k in pre}


def ties_merging(pre, sds, lam=0.3, threshold=20, merge_func="sum", remove_keys=()):
    keys = sorted(k for k in pre if k not in remove_keys)

    def flat(sd):
        return torch.cat([sd[k].reshape(-1) for k in keys])

    flat_pre = flat(pre)
    tv = torch.vstack([flat(sd) for sd in sds]) - flat_pre
    # topk_values_mask
    K = threshold / 100 if threshold > 1 else threshold
    d = tv.shape[1]
    k = d - int(d * K)
    kth, _ = tv.abs().kthvalue(k, dim=1, keepdim=True)
    mask = tv.abs() >= kth
    trimmed = tv * mask
    # resolve_sign (zero signs -> majority)
    sign = torch.sign(trimmed.sum(dim=0))
    majority = torch.sign(sign.sum())
    sign[sign == 0] = majority
    # disjoint merge
    agree = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    sel = trimmed * agree
    if merge_func == "sum":
        merged = sel.sum(0)
    elif merge_func == "mean":
        merged = sel.sum(0) / torch.clamp((sel != 0).sum(0).float(), min=1)
    elif merge_func == "max":
        merged = sel.abs().max(0)[0] * sign
    else:
        raise ValueError(merge_func)
    theta = flat_pre + lam * merged
    out, off = {}, 0
    for kk in keys:
        n = pre[kk].numel()
        out[kk] = theta[off:off + n].view_as(pre[kk]).clone()
        off += n
    for kk in pre:
        if kk not in out:
            out[kk] = pre[kk].clone()
    return out


def check_merges_against_golden(golden_dir):
    """Self-test of the merge code against the fusion-bench golden outputs, when present."""
    from safetensors.torch import load_file
    if not os.path.isdir(golden_dir):
        log("merge golden not found, skipping self-test")
        return
    md = lambda n: load_file(os.path.join(golden_dir, "models", f"{n}.safetensors"))  # noqa: E731
    pre = md("_pretrained_")
    fts = [md(n) for n in ("task_a", "task_b", "task_c", "task_d")]
    cases = {"simple_average": simple_average(fts), "task_arithmetic": task_arithmetic(pre, fts, 0.3),
             "task_arithmetic_1.0": task_arithmetic(pre, fts, 1.0),
             "ties_merging_sum": ties_merging(pre, fts, 0.3, 20, "sum"),
             "ties_merging_mean": ties_merging(pre, fts, 0.7, 30, "mean"),
             "ties_merging_max": ties_merging(pre, fts, 0.5, 10, "max")}
    for name, got in cases.items():
        exp = load_file(os.path.join(golden_dir, "expected", f"{name}.safetensors"))
        err = max((got[k] - exp[k]).abs().max().item() for k in exp)
        assert err < 1e-5, (name, err)
    log("merge code matches the fusion-bench golden outputs (simple average, task arithmetic, TIES sum/mean/max)")


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------
def png_bytes(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_parquet(path, x, y, names):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    images = [{"bytes": png_bytes(a), "path": f"{i:05d}.png"} for i, a in enumerate(x)]
    features = {"image": {"_type": "Image"},
                "label": {"names": names, "_type": "ClassLabel"}}
    schema = pa.schema([pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
                        pa.field("label", pa.int64())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.Table.from_pydict({"image": images, "label": [int(v) for v in y]}, schema=schema)
    pq.write_table(table, path)


def read_parquet_images(path):
    t = pq.read_table(path).to_pylist()
    return [Image.open(io.BytesIO(r["image"]["bytes"])) for r in t], np.array([r["label"] for r in t])


def dir_size(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


# --------------------------------------------------------------------------------------
# Evaluation (reloaded from the written files, as a user of the assets would)
# --------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_all(out):
    mdir = os.path.join(out, "models")
    clip = CLIPModel.from_pretrained(os.path.join(mdir, "pretrained"), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(os.path.join(mdir, "pretrained"))
    proc = CLIPImageProcessor.from_pretrained(os.path.join(mdir, "pretrained"))
    with open(os.path.join(out, "tasks.yaml")) as f:
        tasks = yaml.safe_load(f)["tasks"]
    names = [t["name"] for t in tasks]
    heads, data = {}, {}
    for t in tasks:
        heads[t["name"]] = zeroshot_head(clip, tok, t["classnames"], t["templates"])
        imgs, labels = read_parquet_images(os.path.join(out, t["test"]))
        px = proc(images=[im.convert("RGB") for im in imgs], return_tensors="pt")["pixel_values"]
        data[t["name"]] = (px, torch.from_numpy(labels))
    pre_sd = {k: v.clone() for k, v in CLIPVisionModel.from_pretrained(
        os.path.join(mdir, "pretrained")).state_dict().items()}
    ft_sd = {n: {k: v.clone() for k, v in CLIPVisionModel.from_pretrained(os.path.join(mdir, n)).state_dict().items()}
             for n in names}
    vis = CLIPVisionModel(clip.config.vision_config).eval()
    scale = clip.logit_scale.exp()

    def score(sd):
        vis.load_state_dict(sd, strict=True)
        res = {}
        for n in names:
            px, y = data[n]
            correct, losses = 0, []
            for i in range(0, len(y), EVAL_BATCH):
                ie = image_embeds(clip, vis, px[i:i + EVAL_BATCH])
                logits = scale * ie @ heads[n].t()
                losses.append(F.cross_entropy(logits, y[i:i + EVAL_BATCH]).item())
                correct += (logits.argmax(1) == y[i:i + EVAL_BATCH]).sum().item()
            res[n] = {"accuracy": correct / len(y), "loss": float(np.mean(losses))}
        res["average"] = {"accuracy": float(np.mean([res[n]["accuracy"] for n in names])),
                          "loss": float(np.mean([res[n]["loss"] for n in names]))}
        return res

    ft_list = [ft_sd[n] for n in names]
    results = {"pretrained": score(pre_sd)}
    for n in names:
        results[f"finetuned/{n}"] = score(ft_sd[n])
    results["simple_average"] = score(simple_average(ft_list))
    results["task_arithmetic(0.3)"] = score(task_arithmetic(pre_sd, ft_list, 0.3))
    ta_sweep = {}
    for lam in TA_GRID:
        ta_sweep[lam] = score(task_arithmetic(pre_sd, ft_list, lam))
    best = max(TA_GRID, key=lambda l: (ta_sweep[l]["average"]["accuracy"], -l))
    results[f"task_arithmetic_best({best})"] = ta_sweep[best]
    results["ties_merging(0.3)"] = score(ties_merging(pre_sd, ft_list, 0.3, 20, "sum"))
    individual = {n: results[f"finetuned/{n}"][n] for n in names}
    results["individual"] = {**individual, "average": {
        "accuracy": float(np.mean([individual[n]["accuracy"] for n in names])),
        "loss": float(np.mean([individual[n]["loss"] for n in names]))}}
    return names, results, ta_sweep, best


def print_table(names, results):
    short = [n.replace("fashion_", "f_").replace("digits_", "d_") for n in names]
    head = f"{'model':28s}" + "".join(f"{s:>11s}" for s in short) + f"{'average':>10s}"
    lines = [head, "-" * len(head)]
    for m, r in results.items():
        lines.append(f"{m:28s}" + "".join(f"{100 * r[n]['accuracy']:11.1f}" for n in names)
                     + f"{100 * r['average']['accuracy']:10.1f}")
    print("\n".join(lines), flush=True)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "demo"))
    ap.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--tokenizer-dir", default=None,
                    help="folder with the CLIP tokenizer.json (default: shared/golden/clip-tiny/model)")
    ap.add_argument("--golden-dir", default=None, help="shared/golden (for the merge self-test)")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    shared = None
    for cand in (os.path.join(here, "..", "..", "shared"), "/work/shared"):
        if os.path.isdir(os.path.join(cand, "golden")):
            shared = os.path.abspath(cand)
            break
    tok_dir = args.tokenizer_dir or (shared and os.path.join(shared, "golden", "clip-tiny", "model"))
    golden_dir = args.golden_dir or (shared and os.path.join(shared, "golden"))
    if golden_dir:
        check_merges_against_golden(os.path.join(golden_dir, "merge-tiny"))

    if os.path.isdir(out):
        shutil.rmtree(out)
    mdir = os.path.join(out, "models")
    os.makedirs(os.path.join(mdir, "pretrained"))

    seed_all(SEED)
    fashion = load_fashion(args.fashion_dir)
    digits = load_digits28()
    splits = build_splits(fashion, digits)
    for t in TASKS:
        s = splits[t["name"]]
        log(f"task {t['name']}: {len(s['train'][1])} train / {len(s['test'][1])} test, classes {class_names(t)}")

    # tokenizer: the real CLIP BPE (vocab 49408)
    pre_dir = os.path.join(mdir, "pretrained")
    tok_files = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    for f in tok_files:
        if tok_dir and os.path.exists(os.path.join(tok_dir, f)):
            shutil.copy(os.path.join(tok_dir, f), os.path.join(pre_dir, f))
    tok = AutoTokenizer.from_pretrained(pre_dir)
    assert len(tok) == 49408, len(tok)

    seed_all(SEED)
    clip = make_clip()
    pretrain(clip, tok, splits)
    clip.save_pretrained(pre_dir, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(pre_dir)

    for t in TASKS:
        vm = finetune(clip, tok, t, splits[t["name"]]["train"])  # a CLIPVisionModel (transformers >= 5)
        assert isinstance(vm, CLIPVisionModel)
        vm.save_pretrained(os.path.join(mdir, t["name"]), safe_serialization=True)

    # test sets + task list
    tasks_yaml = []
    for t in TASKS:
        x, y = splits[t["name"]]["test"]
        rel = f"data/{t['name']}/data/test-00000-of-00001.parquet"
        write_parquet(os.path.join(out, rel), x, y, class_names(t))
        tasks_yaml.append({"name": t["name"], "test": rel, "model": f"models/{t['name']}",
                           "num_test": int(len(y)), "classnames": list(class_names(t)),
                           "templates": list(t["templates"])})  # copies: no YAML anchors/aliases
    with open(os.path.join(out, "tasks.yaml"), "w") as f:
        yaml.safe_dump({"pretrained": "models/pretrained", "tasks": tasks_yaml}, f, sort_keys=False, width=200)
    log("wrote models and data; evaluating")

    names, results, sweep, best = evaluate_all(out)
    table = print_table(names, results)
    ta_line = "task arithmetic sweep (avg acc): " + ", ".join(
        f"{l}: {100 * sweep[l]['average']['accuracy']:.1f}" for l in TA_GRID)
    print(ta_line)
    expected = {
        "description": "Zero-shot evaluation of the demo models (transformers CLIPModel, torch float32, CPU). "
                       "Logits = logit_scale.exp() * cos(image_embeds, zero-shot head); head = per class mean of "
                       "L2-normalized template text embeddings (tokenizer padding=True), renormalized; text tower, "
                       "projections and logit_scale from models/pretrained. Images: CLIPImageProcessor on the PNGs "
                       "(convert RGB). accuracy = correct/total; loss = mean over batches of 128 (no shuffle) of the "
                       "batch-mean cross-entropy (every test set is a multiple of 128, so this is the plain mean). "
                       "Merges act on the CLIPVisionModel state dicts in tasks.yaml order.",
        "tasks": names,
        "methods": {
            "pretrained": {"model": "models/pretrained (vision tower)"},
            "finetuned/<task>": {"model": "models/<task>"},
            "simple_average": {"_target_": "fusion_bench.method.SimpleAverageAlgorithm"},
            "task_arithmetic(0.3)": {"_target_": "fusion_bench.method.TaskArithmeticAlgorithm", "scaling_factor": 0.3},
            f"task_arithmetic_best({best})": {"_target_": "fusion_bench.method.TaskArithmeticAlgorithm",
                                              "scaling_factor": best, "note": "best average accuracy over 0.1..1.0"},
            "ties_merging(0.3)": {"_target_": "fusion_bench.method.TiesMergingAlgorithm", "scaling_factor": 0.3,
                                  "threshold": 20, "remove_keys": [], "merge_func": "sum"},
            "individual": {"note": "each fine-tuned model on its own task"},
        },
        "results": results,
        "task_arithmetic_sweep": {str(l): sweep[l] for l in TA_GRID},
        "settings": {"seed": SEED, "vision": VISION, "text": TEXT, "projection_dim": PROJECTION_DIM,
                     "pretrain": PRETRAIN, "finetune": FINETUNE, "eval_batch": EVAL_BATCH},
    }
    with open(os.path.join(out, "expected_results.json"), "w") as f:
        json.dump(expected, f, indent=1)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme(names, table, ta_line))
    size = dir_size(out)
    log(f"demo/ size: {size / 1e6:.2f} MB ({size} bytes); total time {time.time() - T0:.0f}s")


def readme(names, table, ta_line):
    return f"""# fusion-host demo assets

Made by `tools/make_demo.py` (deterministic, CPU). A toy re-run of FusionBench's headline CLIP
experiment: a tiny CLIP "pretrained" contrastively on captioned Fashion-MNIST and scikit-learn
digits, its vision tower fine-tuned per task with the frozen zero-shot head, then merged.

- `models/pretrained/`: full `CLIPModel` (config.json, model.safetensors), the CLIP BPE
  tokenizer (tokenizer.json, tokenizer_config.json) and preprocessor_config.json.
- `models/<task>/`: fine-tuned `CLIPVisionModel` (config.json, model.safetensors).
- `data/<task>/data/test-00000-of-00001.parquet`: held-out test set, columns `image`
  (struct bytes=PNG, path) and `label` (int64), as HF `datasets` stores images.
- `tasks.yaml`: tasks in merge order: class names (by label), prompt templates, paths.
- `expected_results.json`: per-task accuracy and loss of every model and merge.

Tasks: {", ".join(names)}.

```
{table}
{ta_line}
```
"""


if __name__ == "__main__":
    main()
