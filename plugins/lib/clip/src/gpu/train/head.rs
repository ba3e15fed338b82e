//! FusionBench's zero-shot head on the device and the loss: forward and backward through
//! tower, head and loss ([`loss_and_gradients`]), as [`crate::autograd::loss_and_gradients`]
//! on the CPU.

use fusion_kernels::nn::{self, Gemm};
use fusion_plugin_api::{Compute, DeviceTensor};

use super::tower::{self, zeros_like, DeviceParams, Ops};
use crate::autograd::Objective;
use crate::error::{ClipError, Result};

/// The zero-shot classification head (`compute_logits` of FusionBench's
/// `CLIPClassificationMixin`) on the device: `logits = exp(logit_scale) · normalize(pooled Wpᵀ)
/// · Tᵀ` with `visual_projection.weight` `Wp` and fixed class text embeddings `T`.
pub struct DeviceHead<'c> {
    projection: DeviceTensor<'c>,
    text_embeds: DeviceTensor<'c>,
    hidden: usize,
    proj_dim: usize,
    classes: usize,
    logit_scale_exp: f32,
}

impl<'c> DeviceHead<'c> {
    /// `projection: [proj_dim, hidden]`, `text_embeds: [classes, proj_dim]` (used as given:
    /// FusionBench normalizes them when it builds the head), `logit_scale_exp =
    /// exp(logit_scale)`; the same arguments as [`crate::autograd::ZeroShotHead::new`].
    pub fn new(
        c: &'c dyn Compute,
        projection: &[f32],
        hidden: usize,
        text_embeds: &[f32],
        classes: usize,
        logit_scale_exp: f32,
    ) -> Result<Self> {
        const OP: &str = "DeviceHead::new";
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
        if text_embeds.len() != classes * proj_dim {
            return Err(ClipError::input(
                OP,
                format!(
                    "text_embeds holds {} values, [{classes}, {proj_dim}] needs {}",
                    text_embeds.len(),
                    classes * proj_dim
                ),
            ));
        }
        Ok(Self {
            projection: nn::from_f32(c, &[proj_dim, hidden], projection)?,
            text_embeds: nn::from_f32(c, &[classes, proj_dim], text_embeds)?,
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
}

/// The result of [`loss_and_gradients`]: loss and logits read back, gradients on the device.
pub struct DeviceGradients<'c> {
    /// The loss.
    pub loss: f32,
    /// The logits, `[batch, classes]`.
    pub logits: Vec<f32>,
    /// The gradient of every tower weight (read with [`super::download_params`], or reduce
    /// to `∂L/∂λ` with [`super::DeviceLayerWiseMerge::lambda_gradients`]).
    pub weights: DeviceParams<'c>,
    /// The gradient of `visual_projection.weight`, `[proj_dim, hidden]`.
    pub projection: DeviceTensor<'c>,
}

/// The pooled output (`[batch, D]`, transformers' `pooler_output`) of `pixels: [batch, C, S,
/// S]` from the training forward pass (the activations it keeps are dropped).
pub fn pooled_output(
    c: &dyn Compute,
    params: &DeviceParams<'_>,
    pixels: &[f32],
    batch: usize,
) -> Result<Vec<f32>> {
    let ops = Ops::new(c, batch * params.config.num_positions())?;
    let (pooled, _tape) = tower::forward(&ops, params, pixels, batch)?;
    Ok(nn::read_f32(c, pooled.id())?)
}

/// Forward and backward through tower, head and loss on the device: the loss on `pixels:
/// [batch, C, S, S]` and its gradient with respect to every tower weight and the visual
/// projection.
pub fn loss_and_gradients<'c>(
    c: &'c dyn Compute,
    params: &DeviceParams<'_>,
    head: &DeviceHead<'_>,
    pixels: &[f32],
    batch: usize,
    objective: Objective<'_>,
) -> Result<DeviceGradients<'c>> {
    const OP: &str = "gpu::train::loss_and_gradients";
    let cfg = &params.config;
    if head.hidden != cfg.hidden_size {
        return Err(ClipError::input(
            OP,
            format!(
                "the head projects width {}, the tower's is {}",
                head.hidden, cfg.hidden_size
            ),
        ));
    }
    let want = batch * cfg.num_channels * cfg.image_size * cfg.image_size;
    if batch == 0 || pixels.len() != want {
        return Err(ClipError::input(
            OP,
            format!(
                "{} pixel values for {batch} images of [{}, {s}, {s}] (need {want}, at least one image)",
                pixels.len(),
                cfg.num_channels,
                s = cfg.image_size
            ),
        ));
    }
    let ops = Ops::new(c, batch * cfg.num_positions())?;
    let (pooled, tape) = tower::forward(&ops, params, pixels, batch)?;
    let (hidden, proj, classes, scale) = (
        head.hidden,
        head.proj_dim,
        head.classes,
        head.logit_scale_exp,
    );

    // Head forward: embeds = pooled Wpᵀ, normalized, logits = scale · normalized Tᵀ.
    let embeds = ops.zeros(&[batch, proj])?;
    ops.linear(
        pooled.id(),
        head.projection.id(),
        None,
        embeds.id(),
        (batch, hidden, proj),
    )?;
    let normalized = ops.zeros(&[batch, proj])?;
    let norms = ops.zeros(&[batch])?;
    nn::l2_normalize_rows(c, embeds.id(), normalized.id(), norms.id(), batch, proj)?;
    drop(embeds);
    let logits = ops.zeros(&[batch, classes])?;
    let sim = Gemm {
        alpha: scale,
        ..Gemm::dense(batch, classes, proj, false, true)
    };
    ops.gemm(normalized.id(), head.text_embeds.id(), logits.id(), &sim)?;

    let dlogits = ops.zeros(&[batch, classes])?;
    let loss = match objective {
        Objective::Entropy { eps } => {
            nn::entropy_loss(c, logits.id(), dlogits.id(), batch, classes, eps)?
        }
        Objective::CrossEntropy { labels } => {
            nn::cross_entropy(c, logits.id(), labels, dlogits.id(), batch, classes)?
        }
    };
    let logits_host = nn::read_f32(c, logits.id())?;
    drop(logits);

    // Head backward: ∂normalized = scale · ∂logits T, through the normalization, then the
    // projection's weight gradient and ∂pooled.
    let d_embeds = ops.zeros(&[batch, proj])?;
    let dsim = Gemm {
        alpha: scale,
        ..Gemm::dense(batch, proj, classes, false, false)
    };
    ops.gemm(dlogits.id(), head.text_embeds.id(), d_embeds.id(), &dsim)?;
    nn::l2_normalize_backward(c, normalized.id(), norms.id(), d_embeds.id(), batch, proj)?;
    let d_projection = ops.zeros(&[proj, hidden])?;
    ops.gemm(
        d_embeds.id(),
        pooled.id(),
        d_projection.id(),
        &Gemm::dense(proj, hidden, batch, true, false),
    )?;
    let d_pooled = ops.zeros(&[batch, hidden])?;
    ops.gemm(
        d_embeds.id(),
        head.projection.id(),
        d_pooled.id(),
        &Gemm::dense(batch, hidden, proj, false, false),
    )?;

    let mut weights = zeros_like(c, params)?;
    tower::backward(&ops, params, &tape, d_pooled.id(), &mut weights)?;
    Ok(DeviceGradients {
        loss,
        logits: logits_host,
        weights,
        projection: d_projection,
    })
}
