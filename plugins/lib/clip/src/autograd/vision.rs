//! The CLIP vision tower (`CLIPVisionTransformer`) with an explicit layer-by-layer backward
//! pass, the zero-shot classification head FusionBench's CLIP algorithms put on it, and the
//! layer-wise task-arithmetic merge `θ_l = θ0_l + Σ_i λ_{i,l} τ_{i,l}` whose coefficients
//! layer-wise AdaMerging trains.
//!
//! The forward pass keeps what the backward pass needs (a tape of activations per layer); the
//! backward pass walks the layers in reverse and returns the gradient of every weight, in a
//! [`VisionParams`] of the same shapes. The gradient with respect to the merge coefficients
//! follows from the weight gradients: `∂L/∂λ_{i,l} = ⟨∂L/∂θ_l, τ_{i,l}⟩`.

use super::activation::{activation_backward, activation_forward};
use super::attention::Attention;
use super::check_len;
use super::embed::PatchEmbed;
use super::loss::{cross_entropy, entropy, l2_normalize_backward, l2_normalize_forward};
use super::matmul::{Linear, MatMul};
use super::norm::{LayerNorm, LayerNormSaved};
use crate::config::ClipVisionConfig;
use crate::error::{ClipError, Result};
use crate::vision::ClipVisionTransformer;
use crate::weights::WeightStore;

/// Weight and bias of one `nn.Linear` (`[out, in]`, `[out]`).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearParams {
    /// `[out, in]`.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// Scale and shift of one `nn.LayerNorm`.
#[derive(Clone, Debug, PartialEq)]
pub struct NormParams {
    /// `[dim]`.
    pub weight: Vec<f32>,
    /// `[dim]`.
    pub bias: Vec<f32>,
}

/// One encoder layer's weights (`CLIPEncoderLayer`).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams {
    /// `self_attn.k_proj`.
    pub k_proj: LinearParams,
    /// `self_attn.v_proj`.
    pub v_proj: LinearParams,
    /// `self_attn.q_proj`.
    pub q_proj: LinearParams,
    /// `self_attn.out_proj`.
    pub out_proj: LinearParams,
    /// `layer_norm1`.
    pub layer_norm1: NormParams,
    /// `mlp.fc1`.
    pub fc1: LinearParams,
    /// `mlp.fc2`.
    pub fc2: LinearParams,
    /// `layer_norm2`.
    pub layer_norm2: NormParams,
}

/// Every weight of a vision tower as plain f32 vectors, or (same type) the gradient of a loss
/// with respect to each of them. [`VisionParams::names`] lists them in the order of
/// transformers' `CLIPVisionModel.named_parameters()`, the order of the columns of
/// FusionBench's layer-wise merge weights.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionParams {
    /// The tower's configuration.
    pub config: ClipVisionConfig,
    /// `embeddings.class_embedding`, `[D]`.
    pub class_embedding: Vec<f32>,
    /// `embeddings.patch_embedding.weight`, `[D, C, P, P]`.
    pub patch_embedding: Vec<f32>,
    /// `embeddings.position_embedding.weight`, `[positions, D]`.
    pub position_embedding: Vec<f32>,
    /// `pre_layrnorm` (transformers' spelling).
    pub pre_layrnorm: NormParams,
    /// `encoder.layers.*`.
    pub layers: Vec<LayerParams>,
    /// `post_layernorm`.
    pub post_layernorm: NormParams,
}

/// Every parameter of `$v` in transformers' order, borrowed with `$r` (`&` or `&mut`).
macro_rules! params_in_order {
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
            out.extend([
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
            ]);
        }
        out.extend([$($r)+ v.post_layernorm.weight, $($r)+ v.post_layernorm.bias]);
        out
    }};
}

/// The checkpoint names and shapes of a tower's parameters, in transformers' order.
pub fn vision_param_names(cfg: &ClipVisionConfig) -> Vec<(String, Vec<usize>)> {
    let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (c, p, n) = (cfg.num_channels, cfg.patch_size, cfg.num_positions());
    let root = "vision_model";
    let mut out = vec![
        (format!("{root}.embeddings.class_embedding"), vec![d]),
        (
            format!("{root}.embeddings.patch_embedding.weight"),
            vec![d, c, p, p],
        ),
        (
            format!("{root}.embeddings.position_embedding.weight"),
            vec![n, d],
        ),
        (format!("{root}.pre_layrnorm.weight"), vec![d]),
        (format!("{root}.pre_layrnorm.bias"), vec![d]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let pre = format!("{root}.encoder.layers.{l}");
        for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            out.push((format!("{pre}.self_attn.{proj}.weight"), vec![d, d]));
            out.push((format!("{pre}.self_attn.{proj}.bias"), vec![d]));
        }
        out.extend([
            (format!("{pre}.layer_norm1.weight"), vec![d]),
            (format!("{pre}.layer_norm1.bias"), vec![d]),
            (format!("{pre}.mlp.fc1.weight"), vec![i, d]),
            (format!("{pre}.mlp.fc1.bias"), vec![i]),
            (format!("{pre}.mlp.fc2.weight"), vec![d, i]),
            (format!("{pre}.mlp.fc2.bias"), vec![d]),
            (format!("{pre}.layer_norm2.weight"), vec![d]),
            (format!("{pre}.layer_norm2.bias"), vec![d]),
        ]);
    }
    out.push((format!("{root}.post_layernorm.weight"), vec![d]));
    out.push((format!("{root}.post_layernorm.bias"), vec![d]));
    out
}

fn check_config(cfg: &ClipVisionConfig) -> Result<()> {
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

impl VisionParams {
    /// A tower of zeros (the starting point of a gradient).
    pub fn zeros(cfg: &ClipVisionConfig) -> Result<Self> {
        Self::from_fn(cfg, |_, shape| Ok(vec![0.0; shape.iter().product()]))
    }

    /// Builds a tower from `get(name, shape)` called for every parameter (names as in
    /// [`vision_param_names`]); a vector of the wrong length is an error naming the tensor.
    pub fn from_fn(
        cfg: &ClipVisionConfig,
        mut get: impl FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        check_config(cfg)?;
        let norm = || NormParams {
            weight: Vec::new(),
            bias: Vec::new(),
        };
        let lin = || LinearParams {
            weight: Vec::new(),
            bias: Vec::new(),
        };
        let mut out = Self {
            config: cfg.clone(),
            class_embedding: Vec::new(),
            patch_embedding: Vec::new(),
            position_embedding: Vec::new(),
            pre_layrnorm: norm(),
            layers: (0..cfg.num_hidden_layers)
                .map(|_| LayerParams {
                    k_proj: lin(),
                    v_proj: lin(),
                    q_proj: lin(),
                    out_proj: lin(),
                    layer_norm1: norm(),
                    fc1: lin(),
                    fc2: lin(),
                    layer_norm2: norm(),
                })
                .collect(),
            post_layernorm: norm(),
        };
        let names = vision_param_names(cfg);
        for ((name, shape), slot) in names.iter().zip(out.params_mut()) {
            let data = get(name, shape)?;
            let want: usize = shape.iter().product();
            if data.len() != want {
                return Err(ClipError::input(
                    "VisionParams::from_fn",
                    format!(
                        "`{name}` has {} values, shape {shape:?} needs {want}",
                        data.len()
                    ),
                ));
            }
            *slot = data;
        }
        Ok(out)
    }

    /// Reads the tower's weights (`vision_model.*`) from a checkpoint, converting f16/bf16.
    pub fn from_store(store: &WeightStore, cfg: &ClipVisionConfig) -> Result<Self> {
        Self::from_fn(cfg, |name, shape| Ok(store.get(name, shape)?.into_data()))
    }

    /// Copies the weights of a loaded CPU tower.
    pub fn from_transformer(model: &ClipVisionTransformer) -> Result<Self> {
        let cfg = model.config();
        let emb = model.embeddings();
        let [pre, post] = model.layer_norms();
        let norm = |n: &crate::nn::LayerNorm| NormParams {
            weight: n.weight().data().to_vec(),
            bias: n.bias().data().to_vec(),
        };
        let lin = |l: &crate::nn::Linear| LinearParams {
            weight: l.weight().data().to_vec(),
            bias: l
                .bias()
                .map_or_else(|| vec![0.0; l.out_dim()], |b| b.data().to_vec()),
        };
        check_config(cfg)?;
        Ok(Self {
            config: cfg.clone(),
            class_embedding: emb.class_embedding().data().to_vec(),
            patch_embedding: emb.patch_embedding().data().to_vec(),
            position_embedding: emb.position_embedding().weight().data().to_vec(),
            pre_layrnorm: norm(pre),
            layers: model
                .encoder()
                .layers()
                .iter()
                .map(|layer| {
                    let [q, k, v, o] = layer.self_attn().projections();
                    let [fc1, fc2] = layer.mlp().layers();
                    let [ln1, ln2] = layer.layer_norms();
                    LayerParams {
                        k_proj: lin(k),
                        v_proj: lin(v),
                        q_proj: lin(q),
                        out_proj: lin(o),
                        layer_norm1: norm(ln1),
                        fc1: lin(fc1),
                        fc2: lin(fc2),
                        layer_norm2: norm(ln2),
                    }
                })
                .collect(),
            post_layernorm: norm(post),
        })
    }

    /// Names and shapes of the parameters, in transformers' order.
    pub fn names(&self) -> Vec<(String, Vec<usize>)> {
        vision_param_names(&self.config)
    }

    /// The parameters in transformers' order.
    pub fn params(&self) -> Vec<&Vec<f32>> {
        params_in_order!(self, &)
    }

    /// The parameters in transformers' order, mutably.
    pub fn params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        params_in_order!(self, &mut)
    }

    /// The parameter called `name` (a checkpoint name such as
    /// `vision_model.encoder.layers.0.mlp.fc1.weight`).
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.names()
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| self.params()[i].as_slice())
    }

    fn dims(&self) -> Dims {
        let c = &self.config;
        Dims {
            d: c.hidden_size,
            inter: c.intermediate_size,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
        }
    }

    fn embed(&self, batch: usize) -> PatchEmbed {
        let c = &self.config;
        PatchEmbed {
            batch,
            channels: c.num_channels,
            image: c.image_size,
            patch: c.patch_size,
            dim: c.hidden_size,
        }
    }
}

#[derive(Clone, Copy)]
struct Dims {
    d: usize,
    inter: usize,
    heads: usize,
    eps: f64,
}

/// What the forward pass of one encoder layer keeps for the backward pass.
struct LayerTape {
    x: Vec<f32>,
    h1: Vec<f32>,
    s1: LayerNormSaved,
    /// `[Wq; Wk; Wv]` and their biases, `[3D, D]` and `[3D]`: one GEMM for the three.
    wqkv: Vec<f32>,
    qkv: Vec<f32>,
    probs: Vec<f32>,
    ctx: Vec<f32>,
    x_mid: Vec<f32>,
    h2: Vec<f32>,
    s2: LayerNormSaved,
    /// `fc1` output before the activation (the activation is recomputed in the backward pass).
    f: Vec<f32>,
}

/// The activations [`VisionParams::forward`] keeps for [`VisionParams::backward`].
pub struct VisionTape {
    batch: usize,
    patches: Vec<f32>,
    embeddings: Vec<f32>,
    pre: LayerNormSaved,
    layers: Vec<LayerTape>,
    class_tokens: Vec<f32>,
    post: LayerNormSaved,
}

impl VisionTape {
    /// Number of images.
    pub fn batch(&self) -> usize {
        self.batch
    }
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn concat(parts: [&[f32]; 3]) -> Vec<f32> {
    parts.concat()
}

impl VisionParams {
    fn attention(&self, batch: usize) -> Attention {
        let Dims { d, heads, .. } = self.dims();
        let hd = d / heads;
        Attention {
            batch,
            seq: self.config.num_positions(),
            heads,
            head_dim: hd,
            scale: (hd as f32).powf(-0.5),
            causal: false,
        }
    }

    /// The pooled output (`post_layernorm` of the class token, `[batch, D]`, transformers'
    /// `pooler_output`) of `pixels: [batch, C, S, S]`, and the tape for the backward pass.
    pub fn forward(&self, pixels: &[f32], batch: usize) -> Result<(Vec<f32>, VisionTape)> {
        let Dims { d, inter, eps, .. } = self.dims();
        let n = self.config.num_positions();
        let rows = batch * n;
        let act = self.config.hidden_act;
        let emb = self.embed(batch).forward(
            pixels,
            &self.patch_embedding,
            &self.class_embedding,
            &self.position_embedding,
        )?;
        let ln = LayerNorm { rows, cols: d, eps };
        let (mut x, pre) = ln.forward(
            &emb.embeddings,
            &self.pre_layrnorm.weight,
            &self.pre_layrnorm.bias,
        )?;
        let attn = self.attention(batch);
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let (h1, s1) = ln.forward(&x, &l.layer_norm1.weight, &l.layer_norm1.bias)?;
            let wqkv = concat([&l.q_proj.weight, &l.k_proj.weight, &l.v_proj.weight]);
            let bqkv = concat([&l.q_proj.bias, &l.k_proj.bias, &l.v_proj.bias]);
            let qkv = Linear {
                rows,
                in_dim: d,
                out_dim: 3 * d,
            }
            .forward(&h1, &wqkv, Some(&bqkv))?;
            let (ctx, probs) = attn.forward(&qkv, None)?;
            let a = Linear {
                rows,
                in_dim: d,
                out_dim: d,
            }
            .forward(&ctx, &l.out_proj.weight, Some(&l.out_proj.bias))?;
            let x_mid = add(&x, &a);
            let (h2, s2) = ln.forward(&x_mid, &l.layer_norm2.weight, &l.layer_norm2.bias)?;
            let f = Linear {
                rows,
                in_dim: d,
                out_dim: inter,
            }
            .forward(&h2, &l.fc1.weight, Some(&l.fc1.bias))?;
            let m = Linear {
                rows,
                in_dim: inter,
                out_dim: d,
            }
            .forward(
                &activation_forward(act, &f),
                &l.fc2.weight,
                Some(&l.fc2.bias),
            )?;
            let x_out = add(&x_mid, &m);
            layers.push(LayerTape {
                x: std::mem::replace(&mut x, x_out),
                h1,
                s1,
                wqkv,
                qkv,
                probs,
                ctx,
                x_mid,
                h2,
                s2,
                f,
            });
        }
        let class_tokens: Vec<f32> = (0..batch)
            .flat_map(|b| x[b * n * d..b * n * d + d].iter().copied())
            .collect();
        let (pooled, post) = LayerNorm {
            rows: batch,
            cols: d,
            eps,
        }
        .forward(
            &class_tokens,
            &self.post_layernorm.weight,
            &self.post_layernorm.bias,
        )?;
        Ok((
            pooled,
            VisionTape {
                batch,
                patches: emb.patches,
                embeddings: emb.embeddings,
                pre,
                layers,
                class_tokens,
                post,
            },
        ))
    }

    /// The gradient of every weight from `∂L/∂pooled` (`[batch, D]`) and the forward's tape.
    pub fn backward(&self, tape: &VisionTape, d_pooled: &[f32]) -> Result<VisionParams> {
        const OP: &str = "VisionParams::backward";
        let Dims { d, inter, eps, .. } = self.dims();
        let batch = tape.batch;
        let n = self.config.num_positions();
        let rows = batch * n;
        let act = self.config.hidden_act;
        check_len(OP, "d_pooled", d_pooled.len(), batch * d)?;
        if tape.layers.len() != self.layers.len() {
            return Err(ClipError::input(
                OP,
                format!(
                    "the tape holds {} layers, the tower has {}",
                    tape.layers.len(),
                    self.layers.len()
                ),
            ));
        }
        let mut grads = VisionParams::zeros(&self.config)?;
        let post = LayerNorm {
            rows: batch,
            cols: d,
            eps,
        }
        .backward(
            &tape.class_tokens,
            &self.post_layernorm.weight,
            &tape.post,
            d_pooled,
        )?;
        grads.post_layernorm = NormParams {
            weight: post.dw,
            bias: post.db,
        };
        let mut dx = vec![0.0f32; rows * d];
        for b in 0..batch {
            dx[b * n * d..b * n * d + d].copy_from_slice(&post.dx[b * d..(b + 1) * d]);
        }
        let ln = LayerNorm { rows, cols: d, eps };
        let attn = self.attention(batch);
        for ((l, t), g) in self
            .layers
            .iter()
            .zip(&tape.layers)
            .zip(grads.layers.iter_mut())
            .rev()
        {
            // x_out = x_mid + fc2(act(fc1(ln2(x_mid))))
            let fc2 = Linear {
                rows,
                in_dim: inter,
                out_dim: d,
            }
            .backward(&activation_forward(act, &t.f), &l.fc2.weight, &dx, true)?;
            let df = activation_backward(act, &t.f, &fc2.dx)?;
            let fc1 = Linear {
                rows,
                in_dim: d,
                out_dim: inter,
            }
            .backward(&t.h2, &l.fc1.weight, &df, true)?;
            let ln2 = ln.backward(&t.x_mid, &l.layer_norm2.weight, &t.s2, &fc1.dx)?;
            let d_mid = add(&dx, &ln2.dx);
            // x_mid = x + out_proj(attention(qkv(ln1(x))))
            let out = Linear {
                rows,
                in_dim: d,
                out_dim: d,
            }
            .backward(&t.ctx, &l.out_proj.weight, &d_mid, true)?;
            let datt = attn.backward(&t.qkv, &t.probs, &out.dx)?;
            let qkv = Linear {
                rows,
                in_dim: d,
                out_dim: 3 * d,
            }
            .backward(&t.h1, &t.wqkv, &datt.dqkv, true)?;
            let ln1 = ln.backward(&t.x, &l.layer_norm1.weight, &t.s1, &qkv.dx)?;
            dx = add(&d_mid, &ln1.dx);

            let split =
                |v: &[f32], part: usize, len: usize| v[part * len..(part + 1) * len].to_vec();
            for (part, slot) in [&mut g.q_proj, &mut g.k_proj, &mut g.v_proj]
                .into_iter()
                .enumerate()
            {
                *slot = LinearParams {
                    weight: split(&qkv.dw, part, d * d),
                    bias: split(&qkv.db, part, d),
                };
            }
            g.out_proj = LinearParams {
                weight: out.dw,
                bias: out.db,
            };
            g.layer_norm1 = NormParams {
                weight: ln1.dw,
                bias: ln1.db,
            };
            g.fc1 = LinearParams {
                weight: fc1.dw,
                bias: fc1.db,
            };
            g.fc2 = LinearParams {
                weight: fc2.dw,
                bias: fc2.db,
            };
            g.layer_norm2 = NormParams {
                weight: ln2.dw,
                bias: ln2.db,
            };
        }
        let pre = ln.backward(&tape.embeddings, &self.pre_layrnorm.weight, &tape.pre, &dx)?;
        grads.pre_layrnorm = NormParams {
            weight: pre.dw,
            bias: pre.db,
        };
        let emb =
            self.embed(batch)
                .backward(&tape.patches, &self.patch_embedding, &pre.dx, false)?;
        grads.patch_embedding = emb.weight;
        grads.class_embedding = emb.class;
        grads.position_embedding = emb.position;
        Ok(grads)
    }
}

/// FusionBench's zero-shot classification head on the pooled output (`compute_logits` of its
/// `CLIPClassificationMixin`): `logits = exp(logit_scale) · normalize(pooled Wpᵀ) · Tᵀ` with
/// the CLIP model's `visual_projection` `Wp` and fixed, normalized class text embeddings `T`.
#[derive(Clone, Debug)]
pub struct ZeroShotHead {
    projection: Vec<f32>,
    text_embeds: Vec<f32>,
    hidden: usize,
    proj_dim: usize,
    classes: usize,
    logit_scale_exp: f32,
}

/// What [`ZeroShotHead::forward`] keeps for its backward pass.
pub struct HeadTape {
    batch: usize,
    pooled: Vec<f32>,
    normalized: Vec<f32>,
    norms: Vec<f32>,
}

impl ZeroShotHead {
    /// `projection: [proj_dim, hidden]` (`visual_projection.weight`), `text_embeds:
    /// [classes, proj_dim]` (used as given: FusionBench normalizes them when it builds the
    /// head), `logit_scale_exp = exp(logit_scale)`.
    pub fn new(
        projection: Vec<f32>,
        hidden: usize,
        text_embeds: Vec<f32>,
        classes: usize,
        logit_scale_exp: f32,
    ) -> Result<Self> {
        const OP: &str = "ZeroShotHead::new";
        if hidden == 0 || classes == 0 || !projection.len().is_multiple_of(hidden) {
            return Err(ClipError::input(
                OP,
                format!(
                    "projection of {} values is not [proj_dim, {hidden}], or no classes ({classes})",
                    projection.len()
                ),
            ));
        }
        let proj_dim = projection.len() / hidden;
        check_len(OP, "text_embeds", text_embeds.len(), classes * proj_dim)?;
        Ok(Self {
            projection,
            text_embeds,
            hidden,
            proj_dim,
            classes,
            logit_scale_exp,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// `[batch, classes]` logits of `pooled: [batch, hidden]`.
    pub fn forward(&self, pooled: &[f32], batch: usize) -> Result<(Vec<f32>, HeadTape)> {
        check_len(
            "ZeroShotHead::forward",
            "pooled",
            pooled.len(),
            batch * self.hidden,
        )?;
        let embeds = Linear {
            rows: batch,
            in_dim: self.hidden,
            out_dim: self.proj_dim,
        }
        .forward(pooled, &self.projection, None)?;
        let (normalized, norms) = l2_normalize_forward(&embeds, self.proj_dim);
        let mut logits = self
            .similarity(batch)
            .forward(&normalized, &self.text_embeds)?;
        logits.iter_mut().for_each(|v| *v *= self.logit_scale_exp);
        Ok((
            logits,
            HeadTape {
                batch,
                pooled: pooled.to_vec(),
                normalized,
                norms,
            },
        ))
    }

    fn similarity(&self, batch: usize) -> MatMul {
        MatMul {
            batch: 1,
            m: batch,
            n: self.classes,
            k: self.proj_dim,
            trans_a: false,
            trans_b: true,
        }
    }

    /// `∂L/∂pooled` and `∂L/∂visual_projection` from `∂L/∂logits`.
    pub fn backward(&self, tape: &HeadTape, d_logits: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let batch = tape.batch;
        check_len(
            "ZeroShotHead::backward",
            "d_logits",
            d_logits.len(),
            batch * self.classes,
        )?;
        let scaled: Vec<f32> = d_logits.iter().map(|g| g * self.logit_scale_exp).collect();
        let sim = self
            .similarity(batch)
            .backward(&tape.normalized, &self.text_embeds, &scaled)?;
        let d_embeds =
            l2_normalize_backward(&tape.normalized, &tape.norms, &sim.da, self.proj_dim)?;
        let proj = Linear {
            rows: batch,
            in_dim: self.hidden,
            out_dim: self.proj_dim,
        }
        .backward(&tape.pooled, &self.projection, &d_embeds, true)?;
        Ok((proj.dx, proj.dw))
    }
}

/// The loss on the head's logits.
#[derive(Clone, Copy, Debug)]
pub enum Objective<'a> {
    /// AdaMerging's entropy of the prediction (no labels), with FusionBench's `eps = 1e-8`.
    Entropy {
        /// Added inside the logarithm.
        eps: f32,
    },
    /// Cross-entropy against `labels` (one per image).
    CrossEntropy {
        /// Class of each image.
        labels: &'a [u32],
    },
}

/// The result of [`loss_and_gradients`].
#[derive(Clone, Debug)]
pub struct Gradients {
    /// The loss.
    pub loss: f32,
    /// The logits, `[batch, classes]`.
    pub logits: Vec<f32>,
    /// The gradient of every tower weight.
    pub weights: VisionParams,
    /// The gradient of `visual_projection.weight` (FusionBench keeps it frozen).
    pub projection: Vec<f32>,
}

/// Forward and backward through tower and head: the loss on `pixels: [batch, C, S, S]` and its
/// gradient with respect to every weight.
pub fn loss_and_gradients(
    params: &VisionParams,
    head: &ZeroShotHead,
    pixels: &[f32],
    batch: usize,
    objective: Objective<'_>,
) -> Result<Gradients> {
    let (pooled, tape) = params.forward(pixels, batch)?;
    let (logits, head_tape) = head.forward(&pooled, batch)?;
    let lg = match objective {
        Objective::Entropy { eps } => entropy(&logits, head.classes, eps)?,
        Objective::CrossEntropy { labels } => cross_entropy(&logits, labels, head.classes)?,
    };
    let (d_pooled, projection) = head.backward(&head_tape, &lg.dlogits)?;
    let weights = params.backward(&tape, &d_pooled)?;
    Ok(Gradients {
        loss: lg.loss,
        logits,
        weights,
        projection,
    })
}

/// Layer-wise task arithmetic, `θ_l = θ0_l + Σ_i λ_{i,l} τ_{i,l}`, over every parameter tensor
/// `l` of the tower (FusionBench's `LayerWiseMergedModel` with `clamp_weights: false`, the
/// CLIP AdaMerging default). Coefficients are `[models, tensors]`, tensors in
/// [`VisionParams::names`] order.
#[derive(Clone, Debug)]
pub struct LayerWiseMerge {
    pretrained: VisionParams,
    task_vectors: Vec<VisionParams>,
}

impl LayerWiseMerge {
    /// From the pretrained tower and task vectors `τ_i = θ_i - θ0` of the same configuration.
    pub fn new(pretrained: VisionParams, task_vectors: Vec<VisionParams>) -> Result<Self> {
        if let Some(i) = task_vectors
            .iter()
            .position(|t| t.config != pretrained.config)
        {
            return Err(ClipError::input(
                "LayerWiseMerge::new",
                format!("task vector {i} has another configuration than the pretrained tower"),
            ));
        }
        Ok(Self {
            pretrained,
            task_vectors,
        })
    }

    /// From the pretrained tower and fine-tuned ones (`τ_i = θ_i - θ0`).
    pub fn from_finetuned(pretrained: VisionParams, finetuned: &[VisionParams]) -> Result<Self> {
        let task_vectors = finetuned
            .iter()
            .map(|ft| {
                let mut tv = ft.clone();
                for (t, p) in tv.params_mut().into_iter().zip(pretrained.params()) {
                    t.iter_mut().zip(p).for_each(|(a, b)| *a -= b);
                }
                tv
            })
            .collect();
        Self::new(pretrained, task_vectors)
    }

    /// Number of task vectors (rows of the coefficients).
    pub fn num_models(&self) -> usize {
        self.task_vectors.len()
    }

    /// Number of parameter tensors (columns of the coefficients).
    pub fn num_tensors(&self) -> usize {
        self.pretrained.params().len()
    }

    fn check(&self, op: &'static str, what: &str, len: usize) -> Result<()> {
        check_len(op, what, len, self.num_models() * self.num_tensors())
    }

    /// The merged tower for coefficients `lambdas: [models, tensors]`.
    pub fn merge(&self, lambdas: &[f32]) -> Result<VisionParams> {
        self.check("LayerWiseMerge::merge", "lambdas", lambdas.len())?;
        let t = self.num_tensors();
        let mut merged = self.pretrained.clone();
        for (i, tv) in self.task_vectors.iter().enumerate() {
            for (l, (m, tau)) in merged.params_mut().into_iter().zip(tv.params()).enumerate() {
                let lambda = lambdas[i * t + l];
                m.iter_mut().zip(tau).for_each(|(a, b)| *a += lambda * b);
            }
        }
        Ok(merged)
    }

    /// `∂L/∂λ_{i,l} = ⟨∂L/∂θ_l, τ_{i,l}⟩`, `[models, tensors]`, from the weight gradients at
    /// the merged tower (dot products summed in f64).
    pub fn lambda_gradients(&self, weight_grads: &VisionParams) -> Result<Vec<f32>> {
        if weight_grads.config != self.pretrained.config {
            return Err(ClipError::input(
                "LayerWiseMerge::lambda_gradients",
                "the gradients are of a tower with another configuration",
            ));
        }
        let grads = weight_grads.params();
        Ok(self
            .task_vectors
            .iter()
            .flat_map(|tv| {
                tv.params()
                    .into_iter()
                    .zip(&grads)
                    .map(|(tau, g)| {
                        tau.iter()
                            .zip(g.iter())
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum::<f64>() as f32
                    })
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}
