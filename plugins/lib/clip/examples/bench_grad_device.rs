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
use fusion_clip::{Activation, ClipVisionConfig};
use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use fusion_plugin_api::Compute;
use serde_json::json;

const USAGE: &str =
    "usage: bench_grad_device [--shape b32|tiny] [--batch N] [--iters N] [--warmup N]";

fn fail(msg: &str) -> ! {
    eprintln!("bench_grad_device: {msg}\n{USAGE}");
    std::process::exit(2)
}

/// Deterministic uniform values with standard deviation `std`.
fn uniform(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let half_width = std * 3f32.sqrt();
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * half_width
        })
        .collect()
}

fn main() {
    let mut shape = "b32".to_string();
    let (mut batch, mut iters, mut warmup) = (32usize, 3usize, 1usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        let count = |v: String| -> usize {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("'{v}' is not a count")))
        };
        match flag.as_str() {
            "--shape" => shape = value(),
            "--batch" => batch = count(value()),
            "--iters" => iters = count(value()),
            "--warmup" => warmup = count(value()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown argument '{other}'")),
        }
    }
    if batch == 0 || iters == 0 {
        fail("--batch and --iters must be positive");
    }
    let (cfg, proj, classes) = match shape.as_str() {
        "b32" => (ClipVisionConfig::default(), 512, 10),
        "tiny" => (
            ClipVisionConfig {
                hidden_size: 64,
                intermediate_size: 256,
                projection_dim: 24,
                num_hidden_layers: 3,
                num_attention_heads: 4,
                num_channels: 3,
                image_size: 32,
                patch_size: 8,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
            },
            24,
            5,
        ),
        other => fail(&format!("unknown shape '{other}'")),
    };
    let mut seed = 0;
    let params = VisionParams::from_fn(&cfg, |name, shape| {
        seed += 1;
        let n = shape.iter().product();
        Ok(if name.contains("norm") {
            vec![if name.ends_with("weight") { 1.0 } else { 0.0 }; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            uniform(n, seed, 0.02)
        })
    })
    .unwrap_or_else(|e| fail(&e.to_string()));
    let d = cfg.hidden_size;
    let mut text = uniform(classes * proj, 7, 1.0);
    for row in text.chunks_mut(proj) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    let choice: DeviceChoice = match std::env::var("FUSION_DEVICE") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| fail(&format!("FUSION_DEVICE: {e}"))),
        Err(_) => DeviceChoice::Cpu,
    };
    let rt = Runtime::new(&choice, RuntimeOptions::default())
        .unwrap_or_else(|e| fail(&format!("no adapter for {choice}: {e}")));
    let c: &dyn Compute = &rt;
    let head = DeviceHead::new(c, &uniform(proj * d, 8, 0.02), d, &text, classes, 100.0)
        .unwrap_or_else(|e| fail(&e.to_string()));
    let s = cfg.image_size;
    let pixels = uniform(batch * cfg.num_channels * s * s, 9, 1.0);
    let dev = upload_params(c, &params).unwrap_or_else(|e| fail(&e.to_string()));
    let step = || {
        let g = loss_and_gradients(
            c,
            &dev,
            &head,
            &pixels,
            batch,
            Objective::Entropy { eps: 1e-8 },
        )
        .unwrap_or_else(|e| fail(&e.to_string()));
        // The patch-embedding gradient is written last: reading it waits for the backward.
        fusion_kernels::nn::read_f32(c, g.weights.patch_embedding.id())
            .unwrap_or_else(|e| fail(&e.to_string()));
        g
    };
    for _ in 0..warmup {
        step();
    }
    // Two task vectors for the dL/dλ reduction (values do not matter for speed).
    let mut seed = 100;
    let tvs: Vec<VisionParams> = (0..2)
        .map(|_| {
            VisionParams::from_fn(&cfg, |_, shape| {
                seed += 1;
                Ok(uniform(shape.iter().product(), seed, 0.001))
            })
            .unwrap_or_else(|e| fail(&e.to_string()))
        })
        .collect();
    let merge =
        DeviceLayerWiseMerge::upload(c, &params, &tvs).unwrap_or_else(|e| fail(&e.to_string()));
    let mut seconds = Vec::with_capacity(iters);
    let mut forward_seconds = Vec::with_capacity(iters);
    let mut lambda_seconds = Vec::with_capacity(iters);
    let mut loss = 0.0;
    for _ in 0..iters {
        let t = Instant::now();
        let pooled =
            pooled_output(c, &dev, &pixels, batch).unwrap_or_else(|e| fail(&e.to_string()));
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
    let best = seconds.iter().copied().fold(f64::INFINITY, f64::min);
    let best_fwd = forward_seconds
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    println!(
        "{}",
        json!({
            "event": "result",
            "impl": format!("fusion-clip gpu::train (wgsl, {})", c.device_name()),
            "shape": shape,
            "batch": batch,
            "threads": rayon::current_num_threads(),
            "seconds": seconds,
            "forward_seconds": forward_seconds,
            "lambda_seconds": lambda_seconds,
            "images_per_s": batch as f64 / best,
            "forward_images_per_s": batch as f64 / best_fwd,
            "loss": loss,
        })
    );
}
