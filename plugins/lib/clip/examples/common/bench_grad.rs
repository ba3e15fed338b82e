//! The set-up `bench_grad` and `bench_grad_device` share: their command line, the
//! random-weight CLIP vision tower, the zero-shot head's text embeddings and the pixels.

use fusion_clip::autograd::VisionParams;
use fusion_clip::{Activation, ClipVisionConfig};

/// A parsed command line and the tower, text embeddings and pixels it asks for.
pub struct Setup {
    pub shape: String,
    pub batch: usize,
    pub iters: usize,
    pub warmup: usize,
    pub cfg: ClipVisionConfig,
    pub proj: usize,
    pub classes: usize,
    pub params: VisionParams,
    /// The `classes` unit-norm text embeddings, `proj` wide.
    pub text: Vec<f32>,
    pub pixels: Vec<f32>,
}

/// The shortest of `seconds` (infinity for none).
pub fn fastest(seconds: &[f64]) -> f64 {
    seconds.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Deterministic uniform values with standard deviation `std`.
pub fn uniform(n: usize, seed: u64, std: f32) -> Vec<f32> {
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

/// Parses the command line (`usage` is printed for `--help`, then `None` is returned) and
/// builds the tower; `fail` reports a bad argument or error and exits.
pub fn setup(usage: &str, fail: fn(&str) -> !) -> Option<Setup> {
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
                println!("{usage}");
                return None;
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
    let mut text = uniform(classes * proj, 7, 1.0);
    for row in text.chunks_mut(proj) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    let s = cfg.image_size;
    let pixels = uniform(batch * cfg.num_channels * s * s, 9, 1.0);
    Some(Setup {
        shape,
        batch,
        iters,
        warmup,
        cfg,
        proj,
        classes,
        params,
        text,
        pixels,
    })
}
