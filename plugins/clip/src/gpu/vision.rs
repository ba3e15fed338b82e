//! The vision tower on the GPU (`CLIPVisionTransformer`).

use fusion_plugin_api::{Compute, GpuTensor, Model};

use crate::config::{CheckpointConfig, ClipVisionConfig};
use crate::encoder::EncoderDims;
use crate::error::{ClipError, Result};
use crate::gpu::encoder::{EncoderMask, GpuEncoder, GpuLayerNorm, Uploaded};
use crate::gpu::ops::{self, GpuBuffer, Matmul, Operand, PatchGeometry, RowLayout};
use crate::model::ClipVisionModel;
use crate::tensor::Tensor;
use crate::vision::{ClipVisionTransformer, VisionOutput};
use crate::weights::WeightStore;

/// A CLIP vision tower whose weights live on the compute device.
///
/// Load it from a checkpoint ([`GpuClipVision::load`]), from a merged model handed over as a
/// plugin-api [`Model`] ([`GpuClipVision::from_model`]), or from a CPU tower
/// ([`GpuClipVision::from_cpu`]). Its weights are released when it is dropped.
pub struct GpuClipVision<'c> {
    c: &'c dyn Compute,
    config: ClipVisionConfig,
    /// Owns (and on drop releases) every tensor below.
    _weights: Uploaded<'c>,
    class_embedding: GpuTensor,
    /// The conv weight `[D, C, P, P]`, used as `[D, C * P * P]`.
    patch_embedding: GpuTensor,
    position_embedding: GpuTensor,
    pre_layrnorm: GpuLayerNorm,
    encoder: GpuEncoder,
    post_layernorm: GpuLayerNorm,
}

/// What one pass over a slice of the batch produced on the device.
pub(crate) struct VisionPass<'c> {
    /// `post_layernorm` of the class tokens, `[batch, D]`.
    pub(crate) pooled: GpuBuffer<'c>,
    /// The last hidden state, `[batch, positions, D]`.
    pub(crate) last: GpuBuffer<'c>,
}

impl<'c> GpuClipVision<'c> {
    /// Loads the tower from a checkpoint's weights with the strict checks of
    /// [`ClipVisionModel::load`]: every `vision_model.*` tensor must be present with the shape
    /// the config implies, and none may be left unused (a `CLIPModel` checkpoint's text tower
    /// and projections are out of scope and skipped).
    pub fn load(
        c: &'c dyn Compute,
        store: &WeightStore,
        config: &CheckpointConfig,
    ) -> Result<Self> {
        let model = ClipVisionModel::load(store, config)?;
        Self::from_cpu(c, model.vision_model())
    }

    /// Loads a merged vision tower handed over as a plugin-api [`Model`] (a state dict of
    /// `vision_model.*` tensors, as a `CLIPVisionModel` checkpoint holds), read lazily tensor by
    /// tensor; a missing, mis-shaped or extra tensor is an error naming it.
    pub fn from_model(
        c: &'c dyn Compute,
        model: &Model,
        config: &ClipVisionConfig,
    ) -> Result<Self> {
        let store = WeightStore::from_model("merged vision model", model)?;
        Self::load(c, &store, &CheckpointConfig::Vision(config.clone()))
    }

    /// Uploads the weights of a CPU tower.
    pub fn from_cpu(c: &'c dyn Compute, tower: &ClipVisionTransformer) -> Result<Self> {
        let cfg = tower.config().clone();
        let mut up = Uploaded::new(c);
        let e = tower.embeddings();
        let (d, cpp) = (
            cfg.hidden_size,
            cfg.num_channels * cfg.patch_size * cfg.patch_size,
        );
        let class_embedding = up.tensor(
            "vision_model.embeddings.class_embedding",
            e.class_embedding(),
        )?;
        let patch_embedding = up.raw(
            "vision_model.embeddings.patch_embedding.weight",
            &[d, cpp],
            e.patch_embedding().data(),
        )?;
        let position_embedding = up.tensor(
            "vision_model.embeddings.position_embedding.weight",
            e.position_embedding().weight(),
        )?;
        let [pre, post] = tower.layer_norms();
        let pre_layrnorm = up.layer_norm("vision_model.pre_layrnorm", pre)?;
        let dims = EncoderDims {
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_heads: cfg.num_attention_heads,
            num_layers: cfg.num_hidden_layers,
            activation: cfg.hidden_act,
            layer_norm_eps: cfg.layer_norm_eps,
        };
        let encoder = GpuEncoder::upload(&mut up, "vision_model.encoder", tower.encoder(), &dims)?;
        let post_layernorm = up.layer_norm("vision_model.post_layernorm", post)?;
        Ok(Self {
            c,
            config: cfg,
            _weights: up,
            class_embedding,
            patch_embedding,
            position_embedding,
            pre_layrnorm,
            encoder,
            post_layernorm,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The compute handle the weights live on.
    pub fn compute(&self) -> &'c dyn Compute {
        self.c
    }

    /// The most images one pass can take: every activation of a pass must fit one storage
    /// binding (and 32-bit indices). Larger batches are split into passes of this size.
    pub fn max_batch(&self) -> Result<usize> {
        let cfg = &self.config;
        let seq = cfg.num_positions();
        let per_image = (cfg.num_channels * cfg.image_size * cfg.image_size)
            .max(seq * cfg.hidden_size)
            .max(self.encoder.elements_per_sequence(seq)) as u64;
        max_items(self.c, "GpuClipVision", per_image, "image")
    }

    /// Runs the tower on `pixel_values: [batch, C, image_size, image_size]`, reading back the
    /// last hidden state, the pooled output and, when asked, every hidden state (as
    /// [`ClipVisionTransformer::forward`]).
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        output_hidden_states: bool,
    ) -> Result<VisionOutput> {
        let batch = self.check_pixels(pixel_values)?;
        let (seq, d) = (self.config.num_positions(), self.config.hidden_size);
        let mut last = Vec::with_capacity(batch * seq * d);
        let mut pooled = Vec::with_capacity(batch * d);
        let layers = self.config.num_hidden_layers;
        let mut states: Vec<Vec<f32>> =
            vec![Vec::new(); if output_hidden_states { layers + 1 } else { 0 }];
        for (start, len) in passes(batch, self.max_batch()?) {
            let mut layer_states = Vec::new();
            let pass = self.run(
                pixel_values,
                start,
                len,
                output_hidden_states.then_some(&mut layer_states),
            )?;
            last.extend(pass.last.to_vec()?);
            pooled.extend(pass.pooled.to_vec()?);
            for (all, mine) in states.iter_mut().zip(layer_states) {
                all.extend(mine);
            }
        }
        Ok(VisionOutput {
            last_hidden_state: Tensor::new(vec![batch, seq, d], last)?,
            pooler_output: Tensor::new(vec![batch, d], pooled)?,
            hidden_states: output_hidden_states
                .then(|| {
                    states
                        .into_iter()
                        .map(|s| Tensor::new(vec![batch, seq, d], s))
                        .collect::<Result<Vec<_>>>()
                })
                .transpose()?,
        })
    }

    /// The pooled output only (`post_layernorm` of the class token), `[batch, D]`.
    pub fn pooled(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let batch = self.check_pixels(pixel_values)?;
        let d = self.config.hidden_size;
        let mut pooled = Vec::with_capacity(batch * d);
        for (start, len) in passes(batch, self.max_batch()?) {
            pooled.extend(self.run(pixel_values, start, len, None)?.pooled.to_vec()?);
        }
        Tensor::new(vec![batch, d], pooled)
    }

    /// Checks `pixel_values` against the config; returns the batch size.
    pub(crate) fn check_pixels(&self, pixel_values: &Tensor) -> Result<usize> {
        let (c, s) = (self.config.num_channels, self.config.image_size);
        match pixel_values.shape() {
            &[batch, pc, ph, pw] if (pc, ph, pw) == (c, s, s) => Ok(batch),
            shape => Err(ClipError::input(
                "GpuClipVision::forward",
                format!("pixel_values {shape:?} do not match the config: expected [batch, {c}, {s}, {s}]"),
            )),
        }
    }

    /// One pass over images `start..start + len` of `pixel_values`; with `states`, every hidden
    /// state of the pass is read back into it.
    pub(crate) fn run(
        &self,
        pixel_values: &Tensor,
        start: usize,
        len: usize,
        mut states: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<VisionPass<'c>> {
        let c = self.c;
        let cfg = &self.config;
        let geometry = PatchGeometry {
            batch: len,
            channels: cfg.num_channels,
            image: cfg.image_size,
            patch: cfg.patch_size,
        };
        let (d, seq) = (cfg.hidden_size, cfg.num_positions());
        let per_image = cfg.num_channels * cfg.image_size * cfg.image_size;
        let grid2 = geometry.grid() * geometry.grid();
        let pixels = GpuBuffer::from_f32(
            c,
            &[len, cfg.num_channels, cfg.image_size, cfg.image_size],
            &pixel_values.data()[start * per_image..(start + len) * per_image],
        )?;
        let patches = GpuBuffer::zeros(c, &[geometry.patches(), geometry.patch_len()])?;
        ops::im2col(c, pixels.id(), patches.id(), geometry)?;
        drop(pixels);

        // The patch embeddings go straight into rows 1.. of each image's block of the hidden
        // states; class_position then fills row 0 and adds the position embeddings.
        let embeddings = GpuBuffer::zeros(c, &[len, seq, d])?;
        let conv = Matmul {
            m: grid2,
            n: d,
            k: geometry.patch_len(),
            batch0: len,
            batch1: 1,
            alpha: 1.0,
            a: Operand::batched(0, geometry.patch_len(), grid2 * geometry.patch_len(), 0),
            b: Operand::rows(geometry.patch_len()),
            b_transposed: true,
            c: Operand::batched(d, d, seq * d, 0),
        };
        ops::matmul(
            c,
            patches.id(),
            self.patch_embedding,
            None,
            embeddings.id(),
            &conv,
        )?;
        drop(patches);
        ops::class_position(
            c,
            embeddings.id(),
            self.class_embedding,
            self.position_embedding,
            len,
            seq,
            d,
        )?;

        let x = GpuBuffer::zeros(c, &[len, seq, d])?;
        self.pre_layrnorm
            .dense(c, embeddings.id(), x.id(), len * seq)?;
        drop(embeddings);
        if let Some(s) = states.as_deref_mut() {
            s.push(x.to_vec()?);
        }
        self.encoder
            .forward(c, x.id(), len, seq, EncoderMask::default(), |h| {
                if let Some(s) = states.as_deref_mut() {
                    s.push(ops::read_f32(c, h)?);
                }
                Ok(())
            })?;

        let pooled = GpuBuffer::zeros(c, &[len, d])?;
        // post_layernorm of each image's class token (row 0 of its block) only.
        let class_rows = RowLayout {
            rows: len,
            cols: d,
            in_offset: 0,
            in_stride: seq * d,
            out_stride: d,
        };
        self.post_layernorm
            .forward(c, x.id(), pooled.id(), class_rows)?;
        Ok(VisionPass { pooled, last: x })
    }
}

/// `(start, len)` of each pass over `total` items, at most `max` per pass.
pub(crate) fn passes(total: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let max = max.max(1);
    (0..total.div_ceil(max)).map(move |i| (i * max, max.min(total - i * max)))
}

/// How many items of `per_item` f32 elements fit one storage binding; an error when not even
/// one does.
pub(crate) fn max_items(c: &dyn Compute, op: &str, per_item: u64, what: &str) -> Result<usize> {
    let limits = c.checked_limits().map_err(ClipError::compute(op))?;
    let by_binding = limits.max_storage_binding_size / (4 * per_item.max(1));
    let by_index = u64::from(u32::MAX) / per_item.max(1);
    let n = by_binding.min(by_index);
    if n == 0 {
        return Err(ClipError::DeviceLimit {
            op: op.to_string(),
            message: format!(
                "one {what} needs activations of {} bytes, more than the device's max storage binding size of {} bytes",
                4 * per_item,
                limits.max_storage_binding_size
            ),
        });
    }
    Ok(n as usize)
}
