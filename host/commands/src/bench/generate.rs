//! Generated checkpoints shaped like CLIP ViT-B/32's vision tower (`CLIPVisionModel`, as in
//! FusionBench's TA8 pool: 768 wide, 3072 MLP, 32-pixel patches of 224-pixel images), with
//! pseudo-random values: the merge and CLIP benchmarks need the shapes and the bytes, not
//! trained weights.

use std::path::Path;

use anyhow::Context as _;
use safetensors::{Dtype, View};

/// The width, MLP width, patch and image sizes of ViT-B/32.
const HIDDEN: usize = 768;
const MLP: usize = 3072;
const PATCH: usize = 32;
const IMAGE: usize = 224;

/// Every tensor of a `CLIPVisionModel` with `layers` encoder layers: (name, shape).
pub fn vit_b32_tensors(layers: usize) -> Vec<(String, Vec<usize>)> {
    let d = HIDDEN;
    let positions = (IMAGE / PATCH).pow(2) + 1;
    let mut t = vec![
        (
            "vision_model.embeddings.class_embedding".to_string(),
            vec![d],
        ),
        (
            "vision_model.embeddings.patch_embedding.weight".to_string(),
            vec![d, 3, PATCH, PATCH],
        ),
        (
            "vision_model.embeddings.position_embedding.weight".to_string(),
            vec![positions, d],
        ),
        ("vision_model.pre_layrnorm.weight".to_string(), vec![d]),
        ("vision_model.pre_layrnorm.bias".to_string(), vec![d]),
    ];
    for l in 0..layers {
        let p = format!("vision_model.encoder.layers.{l}");
        for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            t.push((format!("{p}.self_attn.{proj}.weight"), vec![d, d]));
            t.push((format!("{p}.self_attn.{proj}.bias"), vec![d]));
        }
        for ln in ["layer_norm1", "layer_norm2"] {
            t.push((format!("{p}.{ln}.weight"), vec![d]));
            t.push((format!("{p}.{ln}.bias"), vec![d]));
        }
        t.push((format!("{p}.mlp.fc1.weight"), vec![MLP, d]));
        t.push((format!("{p}.mlp.fc1.bias"), vec![MLP]));
        t.push((format!("{p}.mlp.fc2.weight"), vec![d, MLP]));
        t.push((format!("{p}.mlp.fc2.bias"), vec![d]));
    }
    t.push(("vision_model.post_layernorm.weight".to_string(), vec![d]));
    t.push(("vision_model.post_layernorm.bias".to_string(), vec![d]));
    t
}

/// The `config.json` of that model.
pub fn vit_b32_config(layers: usize) -> String {
    format!(
        r#"{{
  "architectures": ["CLIPVisionModel"],
  "model_type": "clip_vision_model",
  "hidden_act": "quick_gelu",
  "hidden_size": {HIDDEN},
  "image_size": {IMAGE},
  "intermediate_size": {MLP},
  "layer_norm_eps": 1e-05,
  "num_attention_heads": 12,
  "num_channels": 3,
  "num_hidden_layers": {layers},
  "patch_size": {PATCH},
  "projection_dim": 512,
  "dtype": "float32"
}}
"#
    )
}

/// xorshift64*: fast, deterministic, good enough for benchmark bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in `[-scale, scale)`.
    pub fn next_f32(&mut self, scale: f32) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    pub fn fill(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32(scale)).collect()
    }
}

struct Bytes(Vec<usize>, Vec<u8>);

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.1)
    }
    fn data_len(&self) -> usize {
        self.1.len()
    }
}

/// Write a ViT-B/32-shaped checkpoint with `layers` layers and values from `seed` into `dir`
/// (`model.safetensors` and `config.json`); returns the bytes of its weights.
pub fn write_checkpoint(dir: &Path, layers: usize, seed: u64) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = Rng::new(seed);
    let tensors: Vec<(String, Bytes)> = vit_b32_tensors(layers)
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let values = rng.fill(n, 0.05);
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, Bytes(shape, bytes))
        })
        .collect();
    let total = tensors.iter().map(|(_, b)| b.1.len() as u64).sum();
    let file = dir.join("model.safetensors");
    safetensors::serialize_to_file(tensors.iter().map(|(n, b)| (n.clone(), b)), None, &file)
        .with_context(|| format!("writing {}", file.display()))?;
    std::fs::write(dir.join("config.json"), vit_b32_config(layers))
        .with_context(|| format!("writing {}", dir.join("config.json").display()))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_layers_hold_vit_b32_vision_tower_parameter_count() {
        let params: usize = vit_b32_tensors(12)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // openai/clip-vit-base-patch32 as CLIPVisionModel (without the 768x512 projection).
        assert_eq!(params, 87_456_000);
        let mut rng = Rng::new(3);
        let v = rng.fill(10_000, 0.05);
        assert!(v.iter().all(|x| (-0.05..0.05).contains(x)));
        assert!(v.iter().any(|x| *x > 0.04) && v.iter().any(|x| *x < -0.04));
    }
}
