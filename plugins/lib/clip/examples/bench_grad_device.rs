//! Forward + backward throughput of `fusion_clip::gpu::train` (the vision tower's training
//! pass on the compute device, WGSL kernels through wgpu) on the random-weight CLIP vision tower
//! of the `bench_grad` example (same weights, head, pixels and loss: FusionBench's zero-shot head
//! and AdaMerging's entropy), the gradient of every tower weight per step, left on the device;
//! the step ends when the last gradient is read back. Also times `∂L/∂λ` of a layer-wise merge
//! with two task vectors reduced on the device (`lambda_seconds`). Printed as JSON lines like
//! `bench_grad`, so `tools/bench_grad.py --bin` runs it beside PyTorch.
//!
//! ```text
//! cargo build --locked --workspace --examples
//! target/debug/examples/bench_grad_device [--shape b32|tiny] [--batch 32] [--iters 3] [--warmup 1]
//! ```
//!
//! The adapter is `FUSION_DEVICE` (as the tests), else the CPU one (Mesa lavapipe).

use std::time::Instant;

use fusion_clip::autograd::{Objective, VisionParams};
use fusion_clip::gpu::train::{
    loss_and_gradients, pooled_output, upload_params, DeviceHead, DeviceLayerWiseMerge,
};
use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use fusion_plugin_api::Compute;
use serde_json::json;

#[path = "common/bench_grad.rs"]
mod common;

use common::uniform;

const USAGE: &str =
    "usage: bench_grad_device [--shape b32|tiny] [--batch N] [--iters N] [--warmup N]";

fn fail(msg: &str) -> ! {
    eprintln!("bench_grad_device: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn main() {
    let Some(s) = common::setup(USAGE, fail) else {
        return;
    };
    let d = s.cfg.hidden_size;
    let choice: DeviceChoice = match std::env::var("FUSION_DEVICE") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| fail(&format!("FUSION_DEVICE: {e}"))),
        Err(_) => DeviceChoice::Cpu,
    };
    let rt = Runtime::new(&choice, RuntimeOptions::default())
        .unwrap_or_else(|e| fail(&format!("no adapter for {choice}: {e}")));
    let c: &dyn Compute = &rt;
    let head = DeviceHead::new(
        c,
        &uniform(s.proj * d, 8, 0.02),
        d,
        &s.text,
        s.classes,
        100.0,
    )
    .unwrap_or_else(|e| fail(&e.to_string()));
    let dev = upload_params(c, &s.params).unwrap_or_else(|e| fail(&e.to_string()));
    let step = || {
        let g = loss_and_gradients(
            c,
            &dev,
            &head,
            &s.pixels,
            s.batch,
            Objective::Entropy { eps: 1e-8 },
        )
        .unwrap_or_else(|e| fail(&e.to_string()));
        // The patch-embedding gradient is written last: reading it waits for the backward.
        fusion_kernels::nn::read_f32(c, g.weights.patch_embedding.id())
            .unwrap_or_else(|e| fail(&e.to_string()));
        g
    };
    for _ in 0..s.warmup {
        step();
    }
    // Two task vectors for the dL/dλ reduction (values do not matter for speed).
    let mut seed = 100;
    let tvs: Vec<VisionParams> = (0..2)
        .map(|_| {
            VisionParams::from_fn(&s.cfg, |_, shape| {
                seed += 1;
                Ok(uniform(shape.iter().product(), seed, 0.001))
            })
            .unwrap_or_else(|e| fail(&e.to_string()))
        })
        .collect();
    let merge =
        DeviceLayerWiseMerge::upload(c, &s.params, &tvs).unwrap_or_else(|e| fail(&e.to_string()));
    let mut seconds = Vec::with_capacity(s.iters);
    let mut forward_seconds = Vec::with_capacity(s.iters);
    let mut lambda_seconds = Vec::with_capacity(s.iters);
    let mut loss = 0.0;
    for _ in 0..s.iters {
        let t = Instant::now();
        let pooled =
            pooled_output(c, &dev, &s.pixels, s.batch).unwrap_or_else(|e| fail(&e.to_string()));
        std::hint::black_box(pooled);
        forward_seconds.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let g = step();
        seconds.push(t.elapsed().as_secs_f64());
        loss = g.loss;
        let t = Instant::now();
        let dl = merge
            .lambda_gradients(&g.weights)
            .unwrap_or_else(|e| fail(&e.to_string()));
        std::hint::black_box(dl);
        lambda_seconds.push(t.elapsed().as_secs_f64());
    }
    let (best, best_fwd) = (common::fastest(&seconds), common::fastest(&forward_seconds));
    println!(
        "{}",
        json!({
            "event": "result",
            "impl": format!("fusion-clip gpu::train (wgsl, {})", c.device_name()),
            "shape": s.shape,
            "batch": s.batch,
            "threads": rayon::current_num_threads(),
            "seconds": seconds,
            "forward_seconds": forward_seconds,
            "lambda_seconds": lambda_seconds,
            "images_per_s": s.batch as f64 / best,
            "forward_images_per_s": s.batch as f64 / best_fwd,
            "loss": loss,
        })
    );
}
