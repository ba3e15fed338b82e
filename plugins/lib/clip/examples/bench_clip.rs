//! Throughput of a random-weight CLIP ViT-B/32 vision tower (`GpuClipVision`) on the wgpu
//! runtime, printed as JSON lines (one `"event": "result"` line per batch size).
//!
//! ```text
//! cargo run --release -p fusion-clip --example bench_clip -- \
//!     [--device auto|cpu|gpu|NAME] [--backend auto|wgsl|native] [--batches 1,32,128] \
//!     [--iters N | --iters 3,2,1] [--warmup N] [--warmup-each]
//! ```
//!
//! The tower is `CLIPVisionModel`-shaped (hidden 768, 12 layers, 12 heads, MLP 3072, image 224,
//! patch 32, quick_gelu). Weights are deterministic: every matrix and embedding normal(0, 0.02)
//! from a seeded generator, linear biases 0, layer norms weight 1 / bias 0. They are built in
//! memory as a `WeightStore`, loaded as the CPU model and uploaded once. `--warmup` untimed
//! passes (default 1) run before the first batch size (compiling every pipeline; they do not
//! depend on the batch size), or before each with `--warmup-each`; then come the timed passes
//! of `GpuClipVision::pooled` on random pixels;
//! `pooled` reads the `[batch, 768]` result back, so the timed work is complete.
//!
//! `--backend` picks the implementation of the op API ([`BackendChoice`]): `auto` (the
//! default) is the native CPU path on a CPU adapter such as lavapipe and the WGSL kernels
//! elsewhere; `wgsl` forces the kernels. Each result line gives images/s and the achieved
//! GFLOP/s (multiply-adds of the matrix products counted as 2 FLOPs).
//!
//! `--load N` measures loading instead (issue 15, the merged model stays on the device): N
//! alternating rounds of `GpuClipVision::from_model` on the WGSL backend from a model whose
//! tensors are already on the device, as a merge computed there leaves them, either read back
//! through `data` and uploaded again (`"arm": "read_back"`, the path before
//! `Model::device_tensor`) or taken where they are (`"arm": "on_device"`); one `"event": "load"`
//! line per load.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fusion_clip::arch::vision_param_names;
use fusion_clip::gpu::{BackendChoice, GpuClipVision};
use fusion_clip::{CheckpointConfig, ClipVisionConfig, Tensor, WeightStore};
use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use fusion_plugin_api::{Compute, DType, GpuTensor, Model, StateDict, TensorInfo};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

const USAGE: &str = "usage: bench_clip [--device auto|cpu|gpu|NAME] [--backend auto|wgsl|native] [--batches 1,32,128] \
                     [--iters N | --iters N1,N2,...] [--warmup N] [--warmup-each] [--load N]";

struct Args {
    device: DeviceChoice,
    backend: BackendChoice,
    batches: Vec<usize>,
    /// One count for every batch size, or one per batch size.
    iters: Vec<usize>,
    warmup: usize,
    /// Warm up before every batch size, not only before the first.
    warmup_each: bool,
    /// Rounds of the load measurement (0: measure throughput).
    load: usize,
}

fn parse_list(flag: &str, s: &str) -> Vec<usize> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            t.trim()
                .parse()
                .unwrap_or_else(|_| fail(&format!("{flag}: '{t}' is not a count")))
        })
        .collect()
}

fn fail(msg: &str) -> ! {
    eprintln!("bench_clip: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        device: DeviceChoice::Auto,
        backend: BackendChoice::Auto,
        batches: vec![1, 32, 128],
        iters: vec![3],
        warmup: 1,
        warmup_each: false,
        load: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        if name == "-h" || name == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if name == "--warmup-each" {
            args.warmup_each = true;
            continue;
        }
        let value = inline
            .or_else(|| it.next())
            .unwrap_or_else(|| fail(&format!("{name} needs a value")));
        match name.as_str() {
            "--device" => {
                args.device = value
                    .parse()
                    .unwrap_or_else(|e| fail(&format!("--device: {e}")))
            }
            "--backend" => {
                args.backend = BackendChoice::parse(&value)
                    .unwrap_or_else(|e| fail(&format!("--backend: {e}")))
            }
            "--batches" => args.batches = parse_list("--batches", &value),
            "--load" => {
                args.load = value
                    .parse()
                    .unwrap_or_else(|_| fail("--load: not a count"))
            }
            "--iters" => args.iters = parse_list("--iters", &value),
            "--warmup" => {
                args.warmup = value
                    .parse()
                    .unwrap_or_else(|_| fail("--warmup: not a count"))
            }
            _ => fail(&format!("unknown option {name}")),
        }
    }
    if args.batches.is_empty() || args.batches.contains(&0) {
        fail("--batches must list positive batch sizes");
    }
    if args.iters.is_empty()
        || args.iters.contains(&0)
        || (args.iters.len() != 1 && args.iters.len() != args.batches.len())
    {
        fail("--iters takes one positive count, or one per batch size");
    }
    args
}

/// Standard normal samples by Box-Muller (keeps the example free of `rand_distr`).
fn normal(rng: &mut StdRng, std: f32) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random::<f32>();
    std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Every tensor of a `CLIPVisionModel` with `cfg`'s shapes (the crate's parameter table):
/// matrices and embeddings normal(0, 0.02), linear biases 0, layer norms 1 / 0.
fn random_vision_store(cfg: &ClipVisionConfig, seed: u64) -> WeightStore {
    let mut rng = StdRng::seed_from_u64(seed);
    let tensors: Vec<(String, Tensor)> = vision_param_names(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let len: usize = shape.iter().product();
            let norm = ["layrnorm.", "layernorm.", "layer_norm1.", "layer_norm2."]
                .iter()
                .any(|n| name.contains(n));
            let data: Vec<f32> = if norm && name.ends_with(".weight") {
                vec![1.0; len]
            } else if name.ends_with(".bias") {
                vec![0.0; len]
            } else {
                (0..len).map(|_| normal(&mut rng, 0.02)).collect()
            };
            (name, Tensor::new(shape, data).expect("shape matches data"))
        })
        .collect();
    WeightStore::from_tensors("random CLIP ViT-B/32 vision tower", tensors)
}

/// FLOPs of one image through the tower: every matrix product (patch embedding, q/k/v, scores,
/// scores x values, output projection, MLP), a multiply-add counted as 2.
fn flops_per_image(cfg: &ClipVisionConfig) -> f64 {
    let (d, i, s) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.num_positions() as f64,
    );
    let patches = s - 1.0;
    let patch_len = (cfg.num_channels * cfg.patch_size * cfg.patch_size) as f64;
    let per_layer = 2.0 * s * d * 3.0 * d + 4.0 * s * s * d + 2.0 * s * d * d + 4.0 * s * d * i;
    2.0 * patches * patch_len * d + cfg.num_hidden_layers as f64 * per_layer
}

fn main() {
    let args = parse_args();
    let cfg = ClipVisionConfig::default(); // ViT-B/32: 768 wide, 12 layers, 12 heads, 224 px, patch 32.
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads
        ),
        (768, 12, 12)
    );
    assert_eq!(
        (cfg.intermediate_size, cfg.image_size, cfg.patch_size),
        (3072, 224, 32)
    );

    let t0 = Instant::now();
    let rt = Runtime::new(&args.device, RuntimeOptions::default())
        .unwrap_or_else(|e| fail(&format!("no adapter for --device {}: {e}", args.device)));
    let rt = Arc::new(rt);
    let c: &dyn Compute = &*rt;
    let runtime_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let store = random_vision_store(&cfg, 0);
    let build_s = t1.elapsed().as_secs_f64();
    if args.load > 0 {
        bench_load(&rt, &store, &cfg, args.load);
        return;
    }
    let t2 = Instant::now();
    let vision = GpuClipVision::load_with(
        c,
        &store,
        &CheckpointConfig::Vision(cfg.clone()),
        args.backend,
    )
    .unwrap_or_else(|e| fail(&format!("loading the tower: {e}")));
    drop(store);
    c.synchronize().expect("synchronize after upload");
    let upload_s = t2.elapsed().as_secs_f64();
    let max_batch = vision.max_batch().ok();
    println!(
        "{}",
        json!({
            "event": "setup",
            "device": c.device_name(),
            "device_choice": args.device.to_string(),
            "backend": vision.backend(),
            "gflop_per_image": flops_per_image(&cfg) / 1e9,
            "model": "CLIP ViT-B/32 vision tower (random weights, f32)",
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "intermediate_size": cfg.intermediate_size,
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "max_batch_per_pass": max_batch,
            "runtime_init_s": runtime_s,
            "weights_build_s": build_s,
            "load_upload_s": upload_s,
        })
    );

    let mut rng = StdRng::seed_from_u64(1);
    for (k, &batch) in args.batches.iter().enumerate() {
        let iters = if args.iters.len() == 1 {
            args.iters[0]
        } else {
            args.iters[k]
        };
        let n = batch * cfg.num_channels * cfg.image_size * cfg.image_size;
        let pixels = Tensor::new(
            vec![batch, cfg.num_channels, cfg.image_size, cfg.image_size],
            (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
        )
        .expect("pixel shape");
        let tw = Instant::now();
        let warmups = if k == 0 || args.warmup_each {
            args.warmup
        } else {
            0
        };
        for _ in 0..warmups {
            vision.pooled(&pixels).expect("warm-up pass");
        }
        let warmup_s = tw.elapsed().as_secs_f64();
        let mut times = Vec::with_capacity(iters);
        let mut checksum = 0.0f64;
        for _ in 0..iters {
            let t = Instant::now();
            let out = vision.pooled(&pixels).expect("timed pass");
            times.push(t.elapsed().as_secs_f64());
            assert_eq!(out.shape(), &[batch, cfg.hidden_size]);
            assert!(
                out.data().iter().all(|v| v.is_finite()),
                "non-finite output"
            );
            checksum = out.data().iter().map(|&v| v as f64).sum();
        }
        let total: f64 = times.iter().sum();
        let mean = total / iters as f64;
        let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
        println!(
            "{}",
            json!({
                "event": "result",
                "backend": vision.backend(),
                "device": c.device_name(),
                "batch": batch,
                "warmup": warmups,
                "iters": iters,
                "warmup_s": warmup_s,
                "seconds_per_iter": mean,
                "min_seconds_per_iter": min,
                "times_s": times,
                "images_per_s": batch as f64 / mean,
                "gflop_per_s": flops_per_image(&cfg) * batch as f64 / mean / 1e9,
                "pooled_checksum": checksum,
            })
        );
    }
}

/// A model whose tensors are on the device, as the merging plugin's lazy model has them after
/// merging there: `device_tensor` hands each one over (when `on_device`), `data` reads it back.
struct Resident {
    rt: Arc<Runtime>,
    names: Vec<String>,
    tensors: Mutex<HashMap<String, (TensorInfo, GpuTensor)>>,
    on_device: bool,
}

impl Resident {
    fn new(rt: &Arc<Runtime>, store: &WeightStore, on_device: bool) -> Self {
        let names: Vec<String> = store.names().map(str::to_string).collect();
        let mut tensors = HashMap::new();
        for name in &names {
            let shape = store.shape(name).expect("listed").to_vec();
            let t = store.get(name, &shape).expect("in the store");
            let id = rt
                .create(DType::F32, &shape, Some(bytemuck::cast_slice(t.data())))
                .expect("upload");
            let info = TensorInfo {
                dtype: DType::F32,
                shape,
            };
            tensors.insert(name.clone(), (info, id));
        }
        Self {
            rt: rt.clone(),
            names,
            tensors: Mutex::new(tensors),
            on_device,
        }
    }

    fn tensor(&self, name: &str) -> fusion_plugin_api::Result<(TensorInfo, GpuTensor)> {
        self.tensors
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| fusion_plugin_api::Error::model(format!("no tensor `{name}`")))
    }
}

impl StateDict for Resident {
    fn names(&self) -> fusion_plugin_api::Result<Vec<String>> {
        Ok(self.names.clone())
    }
    fn info(&self, name: &str) -> fusion_plugin_api::Result<TensorInfo> {
        Ok(self.tensor(name)?.0)
    }
    fn data(&self, name: &str) -> fusion_plugin_api::Result<Cow<'_, [u8]>> {
        Ok(Cow::Owned(self.rt.read(self.tensor(name)?.1)?))
    }
    fn device_tensor(&self, name: &str) -> fusion_plugin_api::Result<Option<GpuTensor>> {
        if !self.on_device {
            return Ok(None);
        }
        // Handed over: the caller owns it from now on.
        Ok(self.tensors.lock().unwrap().remove(name).map(|(_, t)| t))
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        for (_, (_, t)) in self.tensors.get_mut().unwrap().drain() {
            self.rt.release(t);
        }
    }
}

/// `rounds` alternating loads of the tower from device-resident weights, read back or taken
/// where they are.
fn bench_load(rt: &Arc<Runtime>, store: &WeightStore, cfg: &ClipVisionConfig, rounds: usize) {
    let c: &dyn Compute = &**rt;
    for round in 0..rounds {
        for (arm, on_device) in [("read_back", false), ("on_device", true)] {
            let model = Model::new(Resident::new(rt, store, on_device));
            c.synchronize().expect("synchronize");
            let t = Instant::now();
            let vision = GpuClipVision::from_model_with(c, &model, cfg, BackendChoice::Wgsl)
                .unwrap_or_else(|e| fail(&format!("loading the tower: {e}")));
            c.synchronize().expect("synchronize after loading");
            let seconds = t.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({
                    "event": "load",
                    "device": c.device_name(),
                    "round": round,
                    "arm": arm,
                    "weights_on_device": vision.weights_on_device(),
                    "seconds": seconds,
                })
            );
        }
    }
}
