//! Forward + backward throughput of `fusion_clip::autograd` on a random-weight CLIP vision
//! tower with FusionBench's zero-shot head and AdaMerging's entropy loss: the gradient of every
//! tower weight per step. Printed as JSON lines (one `"event": "result"` line per run);
//! `tools/bench_grad.py` runs it beside PyTorch.
//!
//! ```text
//! cargo build --release --locked --workspace --example bench_grad
//! target/release/examples/bench_grad [--shape b32|tiny] [--batch 32] [--iters 3] [--warmup 1]
//! ```
//!
//! `b32` is the ViT-B/32 vision tower (hidden 768, 12 layers, 12 heads, MLP 3072, image 224,
//! patch 32, quick_gelu; projection 512, 10 classes); `tiny` is the golden tiny CLIP's (hidden
//! 64, 3 layers, 4 heads, MLP 256, image 32, patch 8; projection 24, 5 classes). Weights are
//! deterministic: matrices and embeddings uniform with standard deviation 0.02, biases 0,
//! layer norms 1/0 (speed does not depend on the values).

use std::time::Instant;

use fusion_clip::autograd::{loss_and_gradients, Objective, ZeroShotHead};
use serde_json::json;

#[path = "common/bench_grad.rs"]
mod common;

use common::uniform;

const USAGE: &str = "usage: bench_grad [--shape b32|tiny] [--batch N] [--iters N] [--warmup N]";

fn fail(msg: &str) -> ! {
    eprintln!("bench_grad: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn main() {
    let Some(s) = common::setup(USAGE, fail) else {
        return;
    };
    let d = s.cfg.hidden_size;
    let head = ZeroShotHead::new(uniform(s.proj * d, 8, 0.02), d, s.text, s.classes, 100.0)
        .unwrap_or_else(|e| fail(&e.to_string()));
    let step = || {
        loss_and_gradients(
            &s.params,
            &head,
            &s.pixels,
            s.batch,
            Objective::Entropy { eps: 1e-8 },
        )
        .unwrap_or_else(|e| fail(&e.to_string()))
    };
    for _ in 0..s.warmup {
        step();
    }
    let mut seconds = Vec::with_capacity(s.iters);
    let mut forward_seconds = Vec::with_capacity(s.iters);
    let mut loss = 0.0;
    for _ in 0..s.iters {
        let t = Instant::now();
        let (pooled, _) = s
            .params
            .forward(&s.pixels, s.batch)
            .unwrap_or_else(|e| fail(&e.to_string()));
        std::hint::black_box(pooled);
        forward_seconds.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        loss = step().loss;
        seconds.push(t.elapsed().as_secs_f64());
    }
    let (best, best_fwd) = (common::fastest(&seconds), common::fastest(&forward_seconds));
    println!(
        "{}",
        json!({
            "event": "result",
            "impl": "fusion-clip autograd",
            "shape": s.shape,
            "batch": s.batch,
            "threads": rayon::current_num_threads(),
            "seconds": seconds,
            "forward_seconds": forward_seconds,
            "images_per_s": s.batch as f64 / best,
            "forward_images_per_s": s.batch as f64 / best_fwd,
            "loss": loss,
        })
    );
}
