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
use crate::arch::EncoderDims;
pub use crate::arch::{vision_param_names, LayerParams, LinearParams, NormParams, VisionParams};
use crate::config::{Activation, ClipVisionConfig};
use crate::error::{ClipError, Result};
use crate::weights::WeightStore;

impl VisionParams {
    /// A tower of zeros (the starting point of a gradient).
    pub fn zeros(cfg: &ClipVisionConfig) -> Result<Self> {
        Self::from_fn(cfg, |_, shape| Ok(vec![0.0; shape.iter().product()]))
    }

    /// Builds a tower from `get(name, shape)` called for every parameter (names as in
    /// [`vision_param_names`], through the parameter table [`VisionParams::build`] the
    /// inference towers load with); a vector of the wrong length is an error naming the
    /// tensor.
    pub fn from_fn(
        cfg: &ClipVisionConfig,
        mut get: impl FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        Self::build(cfg, |name, shape| {
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
            Ok(data)
        })
    }

    /// Reads the tower's weights (`vision_model.*`) from a checkpoint, converting f16/bf16.
    pub fn from_store(store: &WeightStore, cfg: &ClipVisionConfig) -> Result<Self> {
        Self::from_fn(cfg, |name, shape| Ok(store.get(name, shape)?.into_data()))
    }

    /// Copies the weights of a loaded oracle tower.
    #[cfg(any(test, feature = "oracle"))]
    pub fn from_transformer(model: &crate::oracle::ClipVisionTransformer) -> Result<Self> {
        let cfg = model.config();
        let emb = model.embeddings();
        let [pre, post] = model.layer_norms();
        let norm = |n: &crate::oracle::LayerNorm| NormParams {
            weight: n.weight().data().to_vec(),
            bias: n.bias().data().to_vec(),
        };
        let lin = |l: &crate::oracle::Linear| LinearParams {
            weight: l.weight().data().to_vec(),
            bias: l
                .bias()
                .map_or_else(|| vec![0.0; l.out_dim()], |b| b.data().to_vec()),
        };
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

    /// The parameter called `name` (a checkpoint name such as
    /// `vision_model.encoder.layers.0.mlp.fc1.weight`).
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.names()
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| self.params()[i].as_slice())
    }

    fn dims(&self) -> EncoderDims {
        EncoderDims::from(&self.config)
    }

    /// Width, MLP width, layer-norm epsilon and activation.
    fn sizes(&self) -> (usize, usize, f64, Activation) {
        let e = self.dims();
        (
            e.hidden_size,
            e.intermediate_size,
            e.layer_norm_eps,
            e.activation,
        )
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
        self.dims()
            .attention(batch, self.config.num_positions(), false)
    }

    /// The pooled output (`post_layernorm` of the class token, `[batch, D]`, transformers'
    /// `pooler_output`) of `pixels: [batch, C, S, S]`, and the tape for the backward pass.
    pub fn forward(&self, pixels: &[f32], batch: usize) -> Result<(Vec<f32>, VisionTape)> {
        let (d, inter, eps, act) = self.sizes();
        let n = self.config.num_positions();
        let rows = batch * n;
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
        let (d, inter, eps, act) = self.sizes();
        let batch = tape.batch;
        let n = self.config.num_positions();
        let rows = batch * n;
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
