//! CLIP's architecture, written down once: the encoder's dimensions and attention shape from
//! a tower's config, and the parameter table of both towers (checkpoint names, shapes, and the
//! order of transformers' `named_parameters()`), as structs generic over where a tensor lives.
//!
//! The op-API towers ([`crate::gpu`], run by the native and WGSL backends) load their weights
//! through [`VisionParams::build`] and [`TextParams::build`] with device buffers; the autograd
//! tower ([`crate::autograd`]) is the same [`VisionParams`] over host vectors, so the names,
//! shapes and layer structure it differentiates are the ones inference runs. The plain f32
//! model of the `oracle` feature loads by name on its own: it is the independent reference
//! both are tested against.

use crate::config::{Activation, ClipTextConfig, ClipVisionConfig};
use crate::error::{ClipError, Result};

/// Dimensions shared by every layer of one tower.
#[derive(Clone, Copy, Debug)]
pub struct EncoderDims {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of attention heads.
    pub num_heads: usize,
    /// Number of layers.
    pub num_layers: usize,
    /// The MLP activation.
    pub activation: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
}

impl EncoderDims {
    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// The attention call of one encoder pass over `batch` sequences of `seq` tokens: q is
    /// scaled by `head_dim^-0.5` after its projection, as transformers does.
    pub fn attention(&self, batch: usize, seq: usize, causal: bool) -> AttentionShape {
        let head_dim = self.head_dim();
        AttentionShape {
            batch,
            seq,
            heads: self.num_heads,
            head_dim,
            scale: (head_dim as f32).powf(-0.5),
            causal,
        }
    }
}

impl From<&ClipVisionConfig> for EncoderDims {
    fn from(c: &ClipVisionConfig) -> Self {
        Self {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_heads: c.num_attention_heads,
            num_layers: c.num_hidden_layers,
            activation: c.hidden_act,
            layer_norm_eps: c.layer_norm_eps,
        }
    }
}

impl From<&ClipTextConfig> for EncoderDims {
    fn from(c: &ClipTextConfig) -> Self {
        Self {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_heads: c.num_attention_heads,
            num_layers: c.num_hidden_layers,
            activation: c.hidden_act,
            layer_norm_eps: c.layer_norm_eps,
        }
    }
}

/// Shape of one attention call over `qkv: [batch * seq, 3 * heads * head_dim]` (q, then k, then
/// v, each `[.., heads * head_dim]`), writing `context: [batch * seq, heads * head_dim]`:
/// `softmax(scale · q kᵀ + mask) v` per sequence and head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Scale of `q kᵀ` (transformers scales q by `head_dim^-0.5`).
    pub scale: f32,
    /// Hide keys after the query (the text tower).
    pub causal: bool,
}

impl AttentionShape {
    /// The hidden width, `heads * head_dim`.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Top-level `CLIPModel` tensors outside the two towers.
pub const CLIP_HEAD_TENSORS: [&str; 3] = [
    "visual_projection.weight",
    "text_projection.weight",
    "logit_scale",
];

/// Weight and bias of one `nn.Linear` (`[out, in]`, `[out]`).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearParams<T = Vec<f32>> {
    /// `[out, in]`.
    pub weight: T,
    /// `[out]`.
    pub bias: T,
}

/// Scale and shift of one `nn.LayerNorm`.
#[derive(Clone, Debug, PartialEq)]
pub struct NormParams<T = Vec<f32>> {
    /// `[dim]`.
    pub weight: T,
    /// `[dim]`.
    pub bias: T,
}

/// One pre-LN encoder layer's weights (`CLIPEncoderLayer`): `x + out_proj(attn(ln1(x)))`,
/// then `x + fc2(act(fc1(ln2(x))))`. Fields in transformers' parameter order.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams<T = Vec<f32>> {
    /// `self_attn.k_proj`.
    pub k_proj: LinearParams<T>,
    /// `self_attn.v_proj`.
    pub v_proj: LinearParams<T>,
    /// `self_attn.q_proj`.
    pub q_proj: LinearParams<T>,
    /// `self_attn.out_proj`.
    pub out_proj: LinearParams<T>,
    /// `layer_norm1`.
    pub layer_norm1: NormParams<T>,
    /// `mlp.fc1`.
    pub fc1: LinearParams<T>,
    /// `mlp.fc2`.
    pub fc2: LinearParams<T>,
    /// `layer_norm2`.
    pub layer_norm2: NormParams<T>,
}

/// Every weight of a vision tower (`CLIPVisionTransformer`, names under `vision_model.`): as
/// plain f32 vectors (the default, what autograd differentiates; the same type holds a
/// gradient), or as tensors of an op-API backend. [`vision_param_names`] lists them in the
/// order of transformers' `CLIPVisionModel.named_parameters()`, the order of the columns of
/// FusionBench's layer-wise merge weights.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionParams<T = Vec<f32>> {
    /// The tower's configuration.
    pub config: ClipVisionConfig,
    /// `embeddings.class_embedding`, `[D]`.
    pub class_embedding: T,
    /// `embeddings.patch_embedding.weight`, `[D, C, P, P]`.
    pub patch_embedding: T,
    /// `embeddings.position_embedding.weight`, `[positions, D]`.
    pub position_embedding: T,
    /// `pre_layrnorm` (transformers' spelling).
    pub pre_layrnorm: NormParams<T>,
    /// `encoder.layers.*`.
    pub layers: Vec<LayerParams<T>>,
    /// `post_layernorm`.
    pub post_layernorm: NormParams<T>,
}

/// Every weight of a text tower (`CLIPTextTransformer`, names under `text_model.`), in
/// transformers' parameter order.
#[derive(Clone, Debug, PartialEq)]
pub struct TextParams<T = Vec<f32>> {
    /// The tower's configuration.
    pub config: ClipTextConfig,
    /// `embeddings.token_embedding.weight`, `[vocab_size, D]`.
    pub token_embedding: T,
    /// `embeddings.position_embedding.weight`, `[max_position_embeddings, D]`.
    pub position_embedding: T,
    /// `encoder.layers.*`.
    pub layers: Vec<LayerParams<T>>,
    /// `final_layer_norm`.
    pub final_layer_norm: NormParams<T>,
}

/// Where [`VisionParams::build`] and [`TextParams::build`] take each tensor: called with its
/// checkpoint name and shape, in transformers' parameter order.
pub trait GetParam<T>: FnMut(&str, &[usize]) -> Result<T> {}
impl<T, F: FnMut(&str, &[usize]) -> Result<T>> GetParam<T> for F {}

/// The 16 parameters of layer `$l` in transformers' order, borrowed with `$r` (`&` or `&mut`):
/// one listing for both borrows.
macro_rules! layer_params {
    ($l:expr, $($r:tt)+) => {{
        let l = $l;
        [
            $($r)+ l.k_proj.weight,
            $($r)+ l.k_proj.bias,
            $($r)+ l.v_proj.weight,
            $($r)+ l.v_proj.bias,
            $($r)+ l.q_proj.weight,
            $($r)+ l.q_proj.bias,
            $($r)+ l.out_proj.weight,
            $($r)+ l.out_proj.bias,
            $($r)+ l.layer_norm1.weight,
            $($r)+ l.layer_norm1.bias,
            $($r)+ l.fc1.weight,
            $($r)+ l.fc1.bias,
            $($r)+ l.fc2.weight,
            $($r)+ l.fc2.bias,
            $($r)+ l.layer_norm2.weight,
            $($r)+ l.layer_norm2.bias,
        ]
    }};
}

/// Every parameter of tower `$v` in transformers' order, borrowed with `$r`.
macro_rules! vision_params {
    ($v:expr, $($r:tt)+) => {{
        let v = $v;
        let mut out = vec![
            $($r)+ v.class_embedding,
            $($r)+ v.patch_embedding,
            $($r)+ v.position_embedding,
            $($r)+ v.pre_layrnorm.weight,
            $($r)+ v.pre_layrnorm.bias,
        ];
        for l in $($r)+ v.layers {
            out.extend(layer_params!(l, $($r)+));
        }
        out.extend([$($r)+ v.post_layernorm.weight, $($r)+ v.post_layernorm.bias]);
        out
    }};
}

impl<T> LinearParams<T> {
    fn build(
        get: &mut impl GetParam<T>,
        name: &str,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: get(&format!("{name}.weight"), &[out_dim, in_dim])?,
            bias: get(&format!("{name}.bias"), &[out_dim])?,
        })
    }
}

impl<T> NormParams<T> {
    fn build(get: &mut impl GetParam<T>, name: &str, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: get(&format!("{name}.weight"), &[dim])?,
            bias: get(&format!("{name}.bias"), &[dim])?,
        })
    }
}

impl<T> LayerParams<T> {
    /// Layer `prefix` (e.g. `vision_model.encoder.layers.0`). Struct fields are evaluated in
    /// the order written, which is transformers' parameter order.
    fn build(get: &mut impl GetParam<T>, prefix: &str, dims: &EncoderDims) -> Result<Self> {
        let (d, i) = (dims.hidden_size, dims.intermediate_size);
        let attn = format!("{prefix}.self_attn");
        Ok(Self {
            k_proj: LinearParams::build(get, &format!("{attn}.k_proj"), d, d)?,
            v_proj: LinearParams::build(get, &format!("{attn}.v_proj"), d, d)?,
            q_proj: LinearParams::build(get, &format!("{attn}.q_proj"), d, d)?,
            out_proj: LinearParams::build(get, &format!("{attn}.out_proj"), d, d)?,
            layer_norm1: NormParams::build(get, &format!("{prefix}.layer_norm1"), d)?,
            fc1: LinearParams::build(get, &format!("{prefix}.mlp.fc1"), d, i)?,
            fc2: LinearParams::build(get, &format!("{prefix}.mlp.fc2"), i, d)?,
            layer_norm2: NormParams::build(get, &format!("{prefix}.layer_norm2"), d)?,
        })
    }

    /// The parameters in transformers' order, borrowed.
    pub fn params(&self) -> [&T; 16] {
        layer_params!(self, &)
    }

    /// The parameters in transformers' order, mutably.
    pub fn params_mut(&mut self) -> [&mut T; 16] {
        layer_params!(self, &mut)
    }
}

fn encoder_layers<T>(
    get: &mut impl GetParam<T>,
    root: &str,
    dims: &EncoderDims,
) -> Result<Vec<LayerParams<T>>> {
    (0..dims.num_layers)
        .map(|l| LayerParams::build(get, &format!("{root}.encoder.layers.{l}"), dims))
        .collect()
}

/// Fails unless the heads divide the width (every tower) and the patches tile the image.
fn check_vision_config(cfg: &ClipVisionConfig) -> Result<()> {
    let bad = |message: String| Err(ClipError::input("VisionParams", message));
    if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return bad(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        ));
    }
    if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
        return bad(format!(
            "patch_size {} does not divide image_size {}",
            cfg.patch_size, cfg.image_size
        ));
    }
    Ok(())
}

impl<T> VisionParams<T> {
    /// The tower from `get(name, shape)` called for every parameter, in transformers' order.
    pub fn build(cfg: &ClipVisionConfig, mut get: impl GetParam<T>) -> Result<Self> {
        check_vision_config(cfg)?;
        let (d, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let root = "vision_model";
        let e = format!("{root}.embeddings");
        let get = &mut get;
        Ok(Self {
            config: cfg.clone(),
            class_embedding: get(&format!("{e}.class_embedding"), &[d])?,
            patch_embedding: get(&format!("{e}.patch_embedding.weight"), &[d, c, p, p])?,
            position_embedding: get(
                &format!("{e}.position_embedding.weight"),
                &[cfg.num_positions(), d],
            )?,
            pre_layrnorm: NormParams::build(get, &format!("{root}.pre_layrnorm"), d)?,
            layers: encoder_layers(get, root, &cfg.into())?,
            post_layernorm: NormParams::build(get, &format!("{root}.post_layernorm"), d)?,
        })
    }

    /// The parameters in transformers' order, borrowed.
    pub fn params(&self) -> Vec<&T> {
        vision_params!(self, &)
    }

    /// The parameters in transformers' order, mutably.
    pub fn params_mut(&mut self) -> Vec<&mut T> {
        vision_params!(self, &mut)
    }

    /// The checkpoint names and shapes of the parameters, in transformers' order.
    pub fn names(&self) -> Vec<(String, Vec<usize>)> {
        vision_param_names(&self.config)
    }
}

/// The checkpoint names and shapes of a vision tower's parameters, in transformers' order.
pub fn vision_param_names(cfg: &ClipVisionConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    // Only a config the table cannot describe fails, and then there is nothing to list.
    let _ = VisionParams::build(cfg, |name, shape| {
        out.push((name.to_string(), shape.to_vec()));
        Ok(())
    });
    out
}

impl<T> TextParams<T> {
    /// The tower from `get(name, shape)` called for every parameter, in transformers' order.
    pub fn build(cfg: &ClipTextConfig, mut get: impl GetParam<T>) -> Result<Self> {
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(ClipError::input(
                "TextParams",
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            ));
        }
        let d = cfg.hidden_size;
        let root = "text_model";
        let e = format!("{root}.embeddings");
        let get = &mut get;
        Ok(Self {
            config: cfg.clone(),
            token_embedding: get(&format!("{e}.token_embedding.weight"), &[cfg.vocab_size, d])?,
            position_embedding: get(
                &format!("{e}.position_embedding.weight"),
                &[cfg.max_position_embeddings, d],
            )?,
            layers: encoder_layers(get, root, &cfg.into())?,
            final_layer_norm: NormParams::build(get, &format!("{root}.final_layer_norm"), d)?,
        })
    }
}

/// The persisted `position_ids` buffer of a tower's embeddings (older checkpoints save the
/// `arange` transformers recomputes): name and shape, for
/// [`WeightStore::skip_buffer`](crate::WeightStore::skip_buffer).
pub fn position_ids_buffer(root: &str, positions: usize) -> (String, [usize; 2]) {
    (format!("{root}.embeddings.position_ids"), [1, positions])
}

/// Where a text sequence is pooled, exactly as transformers picks it: with the legacy
/// `eos_token_id == 2` (configs written before transformers PR #24773; also when the config has
/// `eos_token_id: null`) the first position of the largest id (`<|endoftext|>` has the largest
/// id of CLIP's vocabulary); otherwise the first position equal to `eos_token_id`, or 0 when
/// there is none (torch's argmax of an all-zero row).
pub fn pooling_position(eos_token_id: Option<i64>, ids: &[u32]) -> usize {
    match eos_token_id {
        Some(2) | None => first_argmax(ids.iter().copied()),
        Some(eos) => ids.iter().position(|&id| i64::from(id) == eos).unwrap_or(0),
    }
}

/// Index of the first maximum (torch's `argmax` tie rule).
fn first_argmax(values: impl Iterator<Item = u32>) -> usize {
    let mut best: Option<(usize, u32)> = None;
    for (i, v) in values.enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(first_argmax([1u32, 5, 3, 5].into_iter()), 1);
        assert_eq!(first_argmax(std::iter::empty()), 0);
    }

    /// The table the loaders build from and the order `params()` walks agree, name by name.
    #[test]
    fn names_follow_the_parameter_walk() {
        let cfg = ClipVisionConfig {
            num_hidden_layers: 2,
            ..ClipVisionConfig::default()
        };
        let names = vision_param_names(&cfg);
        let built = VisionParams::build(&cfg, |name, _| Ok(name.to_string())).unwrap();
        let walked: Vec<&String> = built.params();
        assert_eq!(walked.len(), names.len());
        for ((name, _), w) in names.iter().zip(walked) {
            assert_eq!(name, w);
        }
        assert_eq!(names.len(), 5 + 2 * 16 + 2);
        assert_eq!(
            names[5].0,
            "vision_model.encoder.layers.0.self_attn.k_proj.weight"
        );
    }
}
