//! Throughput of a random-weight ViT-B/32 vision tower on the GPU runtime. Ignored by default
//! (it takes minutes on a software adapter); run it with
//! `cargo test -p fusion-clip --release --test gpu_throughput -- --ignored --nocapture`
//! (`FUSION_DEVICE` picks the adapter, lavapipe by default; `CLIP_BENCH_BATCHES=1,32` the
//! batch sizes).

use std::time::Instant;

mod common;

use fusion_clip::arch::vision_param_names;
use fusion_clip::gpu::GpuClipVision;
use fusion_clip::{CheckpointConfig, ClipVisionConfig, Tensor, WeightStore};
use fusion_gpu::RuntimeOptions;
use fusion_plugin_api::Compute;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Every tensor of a `CLIPVisionModel` with `cfg`'s shapes, small random values.
fn random_vision_store(cfg: &ClipVisionConfig) -> WeightStore {
    let mut rng = StdRng::seed_from_u64(1);
    let tensors = vision_param_names(cfg).into_iter().map(|(name, shape)| {
        let len = shape.iter().product();
        let data = (0..len).map(|_| rng.random_range(-0.03f32..0.03)).collect();
        (name, Tensor::new(shape, data).unwrap())
    });
    WeightStore::from_tensors("random ViT-B/32", tensors)
}

#[test]
#[ignore = "minutes on a software adapter; run explicitly to measure images/s"]
fn vit_b32_images_per_second() {
    let rt = common::open(RuntimeOptions::default());
    let cfg = ClipVisionConfig::default(); // ViT-B/32: 768 wide, 12 layers, 224 px, patch 32.
    let started = Instant::now();
    let store = random_vision_store(&cfg);
    let c: &dyn Compute = &rt;
    let vision = GpuClipVision::load(c, &store, &CheckpointConfig::Vision(cfg.clone())).unwrap();
    println!(
        "weights generated and uploaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let batches: Vec<usize> = std::env::var("CLIP_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,32".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    println!("device: {}", c.device_name());
    let mut rng = StdRng::seed_from_u64(2);
    let mut pixels_of = |batch: usize| {
        let n = batch * 3 * 224 * 224;
        Tensor::new(
            vec![batch, 3, 224, 224],
            (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
        )
        .unwrap()
    };
    // Warm-up: compiles the pipelines (they do not depend on the batch size).
    let warm = Instant::now();
    vision.pooled(&pixels_of(1)).unwrap();
    println!(
        "warm-up pass (batch 1): {:.2} s",
        warm.elapsed().as_secs_f64()
    );
    for batch in batches {
        let pixels = pixels_of(batch);
        let runs = if batch <= 4 { 3 } else { 1 };
        let start = Instant::now();
        for _ in 0..runs {
            let out = vision.pooled(&pixels).unwrap();
            assert!(out.data().iter().all(|v| v.is_finite()));
        }
        let secs = start.elapsed().as_secs_f64() / runs as f64;
        println!(
            "batch {batch}: {:.3} s per pass, {:.3} images/s",
            secs,
            batch as f64 / secs
        );
    }
}

#[test]
#[ignore = "timing only; run explicitly"]
fn vit_b32_fc1_matmul_timing() {
    use fusion_kernels::nn as ops;
    let mut options = RuntimeOptions::default();
    if let Ok(v) = std::env::var("CLIP_BENCH_MAX_INVOCATIONS") {
        options.clamp.max_invocations_per_workgroup = Some(v.parse().unwrap());
    }
    let rt = common::open(options);
    let c: &dyn Compute = &rt;
    let (m, k, n) = (50, 768, 3072);
    let x = ops::from_f32(c, &[m, k], &vec![0.5; m * k]).unwrap();
    let w = ops::from_f32(c, &[n, k], &vec![0.25; n * k]).unwrap();
    let y = ops::zeros(c, &[m, n]).unwrap();
    ops::linear(c, x.id(), w.id(), None, y.id(), m).unwrap();
    c.synchronize().unwrap();
    let runs = 5;
    let start = Instant::now();
    for _ in 0..runs {
        ops::linear(c, x.id(), w.id(), None, y.id(), m).unwrap();
    }
    c.synchronize().unwrap();
    let secs = start.elapsed().as_secs_f64() / runs as f64;
    println!(
        "fc1 {m}x{k} . {n}x{k}^T: {:.1} ms, {:.2} GFLOP/s",
        secs * 1e3,
        2.0 * (m * k * n) as f64 / secs / 1e9
    );
}
