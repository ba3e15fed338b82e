//! The vision tower: `CLIPVisionEmbeddings` and `CLIPVisionTransformer` of transformers'
//! `modeling_clip.py`, weights under `vision_model.`.

use super::encoder::{AttentionMask, ClipEncoder};
use super::nn::{Embedding, LayerNorm};
use crate::arch::EncoderDims;
use crate::config::ClipVisionConfig;
use crate::error::{ClipError, Result};
use crate::output::VisionOutput;
use crate::tensor::{dot, Tensor};
use crate::weights::VarBuilder;

/// Patch, class and position embeddings (`CLIPVisionEmbeddings`).
#[derive(Clone, Debug)]
pub struct ClipVisionEmbeddings {
    class_embedding: Tensor,
    /// `Conv2d(C, D, kernel = stride = patch, bias = False)`, weight `[D, C, P, P]`; applied
    /// as a matrix product with each patch flattened in `(c, y, x)` order.
    patch_embedding: Tensor,
    position_embedding: Embedding,
    num_channels: usize,
    patch_size: usize,
    image_size: usize,
}

impl ClipVisionEmbeddings {
    /// Loads `class_embedding`, `patch_embedding.weight`, `position_embedding.weight`.
    pub fn load(vb: &VarBuilder<'_>, cfg: &ClipVisionConfig) -> Result<Self> {
        let (d, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let n = cfg.num_positions();
        // Older checkpoints persist the `position_ids` buffer; it is always `arange`, so it is
        // accepted (shape-checked) and recomputed, as transformers does.
        vb.skip_buffer("position_ids", &[1, n])?;
        Ok(Self {
            class_embedding: vb.get("class_embedding", &[d])?,
            patch_embedding: vb.pp("patch_embedding").get("weight", &[d, c, p, p])?,
            position_embedding: Embedding::load(&vb.pp("position_embedding"), n, d)?,
            num_channels: c,
            patch_size: p,
            image_size: cfg.image_size,
        })
    }

    /// The class token embedding, `[D]`.
    pub fn class_embedding(&self) -> &Tensor {
        &self.class_embedding
    }

    /// The patch-embedding convolution weight, `[D, C, P, P]`.
    pub fn patch_embedding(&self) -> &Tensor {
        &self.patch_embedding
    }

    /// The position embeddings, `[num_patches + 1, D]`.
    pub fn position_embedding(&self) -> &Embedding {
        &self.position_embedding
    }

    /// `pixel_values: [batch, C, image_size, image_size]` to `[batch, num_patches + 1, D]`:
    /// the class token first, then the patches in row-major order.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (c, p, s) = (self.num_channels, self.patch_size, self.image_size);
        let &[batch, pc, ph, pw] = pixel_values.shape() else {
            return Err(ClipError::input(
                "ClipVisionEmbeddings::forward",
                format!(
                    "expected pixel_values [batch, channels, height, width], got {:?}",
                    pixel_values.shape()
                ),
            ));
        };
        if (pc, ph, pw) != (c, s, s) {
            return Err(ClipError::input(
                "ClipVisionEmbeddings::forward",
                format!(
                    "pixel_values {:?} do not match the config: expected [batch, {c}, {s}, {s}]",
                    pixel_values.shape()
                ),
            ));
        }
        let d = self.class_embedding.elem_count();
        let per_side = s / p;
        let positions = per_side * per_side + 1;
        let patch_len = c * p * p;
        let px = pixel_values.data();
        let w = self.patch_embedding.data();
        let mut out = vec![0.0f32; batch * positions * d];
        let mut patch = vec![0.0f32; patch_len];
        for b in 0..batch {
            let image = &px[b * c * s * s..(b + 1) * c * s * s];
            let rows = &mut out[b * positions * d..(b + 1) * positions * d];
            rows[..d].copy_from_slice(self.class_embedding.data());
            for py in 0..per_side {
                for pxi in 0..per_side {
                    // Gather the patch in the weight's (c, y, x) order.
                    for ch in 0..c {
                        for y in 0..p {
                            let src = ch * s * s + (py * p + y) * s + pxi * p;
                            patch[(ch * p + y) * p..][..p].copy_from_slice(&image[src..src + p]);
                        }
                    }
                    let pos = 1 + py * per_side + pxi;
                    for (o, v) in rows[pos * d..(pos + 1) * d].iter_mut().enumerate() {
                        *v = dot(&patch, &w[o * patch_len..(o + 1) * patch_len]);
                    }
                }
            }
            for pos in 0..positions {
                let pe = self.position_embedding.row(pos)?;
                rows[pos * d..(pos + 1) * d]
                    .iter_mut()
                    .zip(pe)
                    .for_each(|(v, e)| *v += e);
            }
        }
        Tensor::new(vec![batch, positions, d], out)
    }
}

/// The vision transformer (`CLIPVisionTransformer`), weights under `vision_model.`.
#[derive(Clone, Debug)]
pub struct ClipVisionTransformer {
    config: ClipVisionConfig,
    embeddings: ClipVisionEmbeddings,
    pre_layrnorm: LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: LayerNorm,
}

impl ClipVisionTransformer {
    /// Loads the tower from `vb`, which points at its root (usually `vision_model`).
    pub fn load(vb: &VarBuilder<'_>, cfg: &ClipVisionConfig) -> Result<Self> {
        let dims = EncoderDims::from(cfg);
        Ok(Self {
            config: cfg.clone(),
            embeddings: ClipVisionEmbeddings::load(&vb.pp("embeddings"), cfg)?,
            // "layrnorm" is transformers' spelling, kept in every CLIP checkpoint.
            pre_layrnorm: LayerNorm::load(
                &vb.pp("pre_layrnorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
            encoder: ClipEncoder::load(&vb.pp("encoder"), &dims)?,
            post_layernorm: LayerNorm::load(
                &vb.pp("post_layernorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// The configuration the tower was loaded with.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The embeddings.
    pub fn embeddings(&self) -> &ClipVisionEmbeddings {
        &self.embeddings
    }

    /// The encoder.
    pub fn encoder(&self) -> &ClipEncoder {
        &self.encoder
    }

    /// `pre_layrnorm` and `post_layernorm`.
    pub fn layer_norms(&self) -> [&LayerNorm; 2] {
        [&self.pre_layrnorm, &self.post_layernorm]
    }

    /// Runs the tower on `pixel_values: [batch, C, image_size, image_size]`.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        output_hidden_states: bool,
    ) -> Result<VisionOutput> {
        let embeddings = self.embeddings.forward(pixel_values)?;
        let x = self.pre_layrnorm.forward(&embeddings)?;
        let enc = self
            .encoder
            .forward(x, AttentionMask::default(), output_hidden_states)?;
        let &[batch, positions, d] = enc.last_hidden_state.shape() else {
            unreachable!("the encoder keeps [batch, seq, hidden]");
        };
        let class_tokens: Vec<f32> = (0..batch)
            .flat_map(|b| {
                enc.last_hidden_state.data()[b * positions * d..][..d]
                    .iter()
                    .copied()
            })
            .collect();
        let pooled = self
            .post_layernorm
            .forward(&Tensor::new(vec![batch, d], class_tokens)?)?;
        Ok(VisionOutput {
            last_hidden_state: enc.last_hidden_state,
            pooler_output: pooled,
            hidden_states: enc.hidden_states,
        })
    }
}
