"""Golden gradients for fusion-clip's autograd, computed by PyTorch autograd on the tiny CLIP.

Usage: python tools/make_grad_golden.py [CLIP_TINY_DIR] [OUT_DIR]
  (defaults: plugins/lib/clip/tests/data/clip-tiny, plugins/lib/clip/tests/data/grad)

The quantity is layer-wise AdaMerging's (FusionBench `LayerWiseMergedModel` with
`clamp_weights: false`, `CLIPClassificationMixin.compute_logits`, `entropy_loss`):

  theta_l = theta0_l + sum_i lambda[i, l] * tau_i_l      (l: every vision parameter tensor)
  pooled  = CLIPVisionTransformer(theta)(pixel_values).pooler_output
  logits  = exp(logit_scale) * normalize(visual_projection(pooled)) @ text_embeds.T
  loss    = mean_rows(-sum_j p_j log(p_j + 1e-8)),  p = softmax(logits)

theta0 is the tiny checkpoint's vision tower; the two task vectors tau_0, tau_1 are not stored
but generated from a 32-bit integer hash that the Rust test reproduces exactly:

  h = (i * 0x9E3779B1 + l * 0x85EBCA77 + j * 0xC2B2AE3D + 0x27D4EB2F) mod 2^32
  h ^= h >> 15; h *= 0x2C1B3C6D; h ^= h >> 12; h *= 0x297A2D39; h ^= h >> 15   (mod 2^32)
  tau_i_l[j] = float32(0.01) * float32((h >> 8) / 2^23 - 1)

for task i, parameter index l (transformers' `named_parameters()` order) and flat index j.
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.func import functional_call
from transformers import CLIPModel, CLIPTokenizerFast

M32 = np.uint64(0xFFFFFFFF)
CLASSES = ["t-shirt", "trouser", "ankle boot", "sneaker", "flower"]
LABELS = [4, 4, 0, 1, 2, 3]  # for the cross-entropy check only


def task_vector(i: int, l: int, n: int) -> np.ndarray:
    j = np.arange(n, dtype=np.uint64)
    h = (np.uint64(i) * np.uint64(0x9E3779B1) + np.uint64(l) * np.uint64(0x85EBCA77)
         + j * np.uint64(0xC2B2AE3D) + np.uint64(0x27D4EB2F)) & M32
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & M32
    h ^= h >> np.uint64(12)
    h = (h * np.uint64(0x297A2D39)) & M32
    h ^= h >> np.uint64(15)
    u = ((h >> np.uint64(8)).astype(np.float64) / 2.0**23 - 1.0).astype(np.float32)
    return np.float32(0.01) * u


def entropy_loss(logits, eps=1e-8):
    # fusion_bench.method.adamerging.entropy_loss
    p = torch.softmax(logits, dim=-1)
    return -torch.sum(p * torch.log(p + eps), dim=-1).mean()


def main():
    tiny = sys.argv[1] if len(sys.argv) > 1 else "plugins/lib/clip/tests/data/clip-tiny"
    out = sys.argv[2] if len(sys.argv) > 2 else "plugins/lib/clip/tests/data/grad"
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)  # deterministic reductions
    model = CLIPModel.from_pretrained(os.path.join(tiny, "model"), dtype=torch.float32).eval()
    tok = CLIPTokenizerFast.from_pretrained(os.path.join(tiny, "model"))
    pixels = load_file(os.path.join(tiny, "golden.safetensors"))["pixel_values"]

    with torch.no_grad():
        t = tok([f"a photo of a {c}." for c in CLASSES], padding=True, return_tensors="pt")
        text = model.get_text_features(**t)
        text = text / text.norm(p=2, dim=-1, keepdim=True)
    scale = model.logit_scale.detach().exp()

    vision = model.vision_model
    names = [n for n, _ in vision.named_parameters()]
    theta0 = {n: p.detach().clone() for n, p in vision.named_parameters()}
    taus = [{n: torch.from_numpy(task_vector(i, l, theta0[n].numel())).reshape(theta0[n].shape)
             for l, n in enumerate(names)} for i in range(2)]
    lam0 = torch.tensor([[0.3 + 0.02 * ((l * 5 + i * 3) % 11) - 0.1 * i for l in range(len(names))]
                         for i in range(2)], dtype=torch.float32)

    def run(loss_fn):
        lam = lam0.clone().requires_grad_(True)
        merged = {}
        for l, n in enumerate(names):
            w = theta0[n]
            for i in range(2):
                w = w + taus[i][n] * lam[i, l]
            w.retain_grad()
            merged[n] = w
        proj = model.visual_projection.weight.detach().clone().requires_grad_(True)
        pooled = functional_call(vision, merged, (pixels,)).pooler_output
        emb = pooled @ proj.T
        emb = emb / emb.norm(p=2, dim=-1, keepdim=True)
        logits = scale * emb @ text.T
        loss = loss_fn(logits)
        loss.backward()
        return loss.detach(), logits.detach(), lam.grad.detach(), {n: merged[n].grad for n in names}, proj.grad

    loss, logits, dlam, dtheta, dproj = run(entropy_loss)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    ce_loss, _, ce_dlam, _, _ = run(lambda z: torch.nn.functional.cross_entropy(z, labels))

    tensors = {
        "pixel_values": pixels.contiguous(),
        "text_embeds": text.contiguous(),
        "lambdas": lam0.contiguous(),
        "entropy.loss": loss.reshape(1),
        "entropy.logits": logits.contiguous(),
        "entropy.grad.lambdas": dlam.contiguous(),
        "entropy.grad.visual_projection.weight": dproj.contiguous(),
        "labels": labels,
        "cross_entropy.loss": ce_loss.reshape(1),
        "cross_entropy.grad.lambdas": ce_dlam.contiguous(),
    }
    for n in names:
        tensors[f"entropy.grad.vision_model.{n}"] = dtheta[n].contiguous()
    save_file(tensors, os.path.join(out, "grad.safetensors"))
    meta = {
        "reference": f"torch {torch.__version__} autograd, transformers CLIPModel (clip-tiny), float32, CPU",
        "classes": CLASSES,
        "prompt": "a photo of a {}.",
        "labels": LABELS,
        "param_names": [f"vision_model.{n}" for n in names],
        "entropy_loss": loss.item(),
        "cross_entropy_loss": ce_loss.item(),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
    }
    with open(os.path.join(out, "grad.json"), "w") as f:
        json.dump(meta, f, indent=1)
    size = os.path.getsize(os.path.join(out, "grad.safetensors"))
    print(f"wrote {len(tensors)} tensors ({size} bytes) to {out}; entropy {loss.item():.6f}, "
          f"cross-entropy {ce_loss.item():.6f}")


if __name__ == "__main__":
    main()
