//! The vision tower (`CLIPVisionTransformer`), written once over the op API; the public type
//! holds it on the backend [`BackendChoice`] picks for the compute handle.

use fusion_plugin_api::{Compute, Model};

use crate::arch::{position_ids_buffer, EncoderDims, VisionParams, CLIP_HEAD_TENSORS};
use crate::config::{CheckpointConfig, ClipVisionConfig};
use crate::error::{ClipError, Result};
use crate::gpu::backend::{
    on_engine, Backend, BackendChoice, Engine, NormW, PatchW, Tower, WeightSource,
};
use crate::gpu::encoder::{dense_norm, Encoder, EncoderMask};
use crate::output::VisionOutput;
use crate::tensor::Tensor;
use crate::weights::WeightStore;
use fusion_kernels::nn::{PatchGeometry, RowLayout};

/// A CLIP vision tower whose weights live on the compute device, or, on a CPU adapter, in host
/// memory for the native path ([`BackendChoice`]).
///
/// Load it from a checkpoint ([`GpuClipVision::load`]) or from a merged model handed over as a
/// plugin-api [`Model`] ([`GpuClipVision::from_model`]).
/// The `*_with` variants take the backend explicitly. Its weights are released when it is
/// dropped.
pub struct GpuClipVision<'c> {
    c: &'c dyn Compute,
    config: ClipVisionConfig,
    engine: Engine<'c, Vision>,
    /// Weights taken from a model on the device, not read back and uploaded.
    weights_on_device: usize,
}

/// The vision tower as a [`Tower`] family.
pub(crate) struct Vision;

impl Tower for Vision {
    type On<B: Backend> = VisionTower<B>;
    type Config = ClipVisionConfig;

    /// Builds the tower from `src` through the parameter table ([`VisionParams::build`]); the
    /// persisted `position_ids` buffer is accepted and checked.
    fn load<B: Backend>(
        src: &impl WeightSource<B>,
        cfg: &ClipVisionConfig,
    ) -> Result<VisionTower<B>> {
        let (name, shape) = position_ids_buffer("vision_model", cfg.num_positions());
        src.store().skip_buffer(&name, &shape)?;
        // An upscaled (SMILE) model keeps a linear's own weights under `pretrained_model.`.
        let p = VisionParams::build(cfg, |name, shape| {
            src.get(&crate::gpu::moe::stored_name(src.store(), name), shape)
        })?;
        let dims = EncoderDims::from(cfg);
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(VisionTower {
            config: cfg.clone(),
            patch: PatchW {
                weight: p.patch_embedding,
                class: p.class_embedding,
                position: p.position_embedding,
                dim: d,
            },
            pre_layrnorm: NormW::new(p.pre_layrnorm, d, eps),
            encoder: Encoder::new(src, "vision_model.encoder", p.layers, &dims)?,
            post_layernorm: NormW::new(p.post_layernorm, d, eps),
        })
    }
}

/// The tower over one backend.
pub(crate) struct VisionTower<B: Backend> {
    config: ClipVisionConfig,
    patch: PatchW<B>,
    pre_layrnorm: NormW<B>,
    encoder: Encoder<B>,
    post_layernorm: NormW<B>,
}

/// What one pass over a slice of the batch produced, read back.
pub(crate) struct VisionPass {
    /// `post_layernorm` of the class tokens, `[batch, D]`.
    pub(crate) pooled: Vec<f32>,
    /// The last hidden state, `[batch, positions, D]`, when asked for.
    pub(crate) last: Option<Vec<f32>>,
}

impl<B: Backend> VisionTower<B> {
    fn max_batch(&self, b: &B) -> Result<usize> {
        let cfg = &self.config;
        let seq = cfg.num_positions();
        let per_image = (cfg.num_channels * cfg.image_size * cfg.image_size)
            .max(seq * cfg.hidden_size)
            .max(self.encoder.elements_per_sequence(seq)) as u64;
        b.max_items("GpuClipVision", per_image, "image")
    }

    /// One pass over images `start..start + len`; with `states`, every hidden state of the
    /// pass is read back into it; with `last`, the last hidden state too.
    pub(crate) fn run(
        &self,
        b: &B,
        pixel_values: &Tensor,
        (start, len): (usize, usize),
        mut states: Option<&mut Vec<Vec<f32>>>,
        last: bool,
    ) -> Result<VisionPass> {
        let cfg = &self.config;
        let geometry = PatchGeometry {
            batch: len,
            channels: cfg.num_channels,
            image: cfg.image_size,
            patch: cfg.patch_size,
        };
        let (d, seq) = (cfg.hidden_size, cfg.num_positions());
        let per_image = cfg.num_channels * cfg.image_size * cfg.image_size;
        let pixels = &pixel_values.data()[start * per_image..(start + len) * per_image];
        let mut embeddings = b.zeros(&[len, seq, d])?;
        b.patch_embed(pixels, &self.patch, &mut embeddings, geometry)?;
        let mut x = b.zeros(&[len, seq, d])?;
        dense_norm(b, &self.pre_layrnorm, &embeddings, &mut x, len * seq)?;
        drop(embeddings);
        if let Some(s) = states.as_deref_mut() {
            s.push(b.read(&x)?);
        }
        let mask = EncoderMask {
            causal: false,
            key_padding: None,
        };
        self.encoder.forward(b, &mut x, len, seq, mask, |h| {
            if let Some(s) = states.as_deref_mut() {
                s.push(b.read(h)?);
            }
            Ok(())
        })?;
        let mut pooled = b.zeros(&[len, d])?;
        // post_layernorm of each image's class token (row 0 of its block) only.
        let class_rows = RowLayout {
            rows: len,
            cols: d,
            in_offset: 0,
            in_stride: seq * d,
            out_stride: d,
        };
        b.layer_norm(&x, &self.post_layernorm, &mut pooled, class_rows)?;
        Ok(VisionPass {
            pooled: b.read(&pooled)?,
            last: if last { Some(b.read(&x)?) } else { None },
        })
    }
}

impl<'c> GpuClipVision<'c> {
    /// Loads the tower from a checkpoint's weights, strictly: every `vision_model.*` tensor
    /// must be present with the shape the config implies, and none may be left unused (a
    /// `CLIPModel` checkpoint's text tower and projections are out of scope and skipped).
    pub fn load(
        c: &'c dyn Compute,
        store: &WeightStore,
        config: &CheckpointConfig,
    ) -> Result<Self> {
        Self::load_with(c, store, config, BackendChoice::Auto)
    }

    /// [`GpuClipVision::load`] on the backend `choice` names.
    pub fn load_with(
        c: &'c dyn Compute,
        store: &WeightStore,
        config: &CheckpointConfig,
        choice: BackendChoice,
    ) -> Result<Self> {
        let vision = config.vision_config();
        let (engine, weights_on_device) = Engine::load(c, store, vision, choice)?;
        match config {
            CheckpointConfig::Vision(_) => store.check_all_used(|_| true)?,
            CheckpointConfig::Clip(_) => store.check_all_used(|name| {
                !name.starts_with("text_model.") && !CLIP_HEAD_TENSORS.contains(&name)
            })?,
        }
        Ok(Self {
            c,
            config: vision.clone(),
            engine,
            weights_on_device,
        })
    }

    /// Loads a merged vision tower handed over as a plugin-api [`Model`] (a state dict of
    /// `vision_model.*` tensors, as a `CLIPVisionModel` checkpoint holds), read lazily tensor by
    /// tensor; a missing, mis-shaped or extra tensor is an error naming it.
    ///
    /// On the WGSL backend each weight is taken where it lives: a tensor the model holds on
    /// the compute device ([`Model::device_tensor`], a merge computed there) stays there
    /// ([`GpuClipVision::weights_on_device`] counts them); the others are read as bytes and
    /// uploaded. The native backend computes in host memory and reads every tensor's bytes.
    pub fn from_model(
        c: &'c dyn Compute,
        model: &Model,
        config: &ClipVisionConfig,
    ) -> Result<Self> {
        Self::from_model_with(c, model, config, BackendChoice::Auto)
    }

    /// [`GpuClipVision::from_model`] on the backend `choice` names.
    pub fn from_model_with(
        c: &'c dyn Compute,
        model: &Model,
        config: &ClipVisionConfig,
        choice: BackendChoice,
    ) -> Result<Self> {
        let store = WeightStore::from_model("merged vision model", model)?;
        Self::load_with(c, &store, &CheckpointConfig::Vision(config.clone()), choice)
    }

    /// How many weights were taken from a model already on the compute device
    /// ([`GpuClipVision::from_model`] on the WGSL backend) rather than read to host memory and
    /// uploaded: every merged weight when the merge ran on the same device, 0 otherwise.
    pub fn weights_on_device(&self) -> usize {
        self.weights_on_device
    }

    /// The configuration.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The compute handle the model was loaded for.
    pub fn compute(&self) -> &'c dyn Compute {
        self.c
    }

    /// The backend the tower runs on (`"wgsl"` or `"native"`).
    pub fn backend(&self) -> &'static str {
        on_engine!(&self.engine, |b, _t| b.label())
    }

    /// The most images one pass can take: on the WGSL backend every activation of a pass must
    /// fit one storage binding (and 32-bit indices). Larger batches are split into passes of
    /// this size.
    pub fn max_batch(&self) -> Result<usize> {
        on_engine!(&self.engine, |b, t| t.max_batch(b))
    }

    /// Runs the tower on `pixel_values: [batch, C, image_size, image_size]`, reading back the
    /// last hidden state, the pooled output and, when asked, every hidden state (as
    /// transformers' `output_hidden_states=True`: the encoder input, then each layer's output).
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
        for pass in passes(batch, self.max_batch()?) {
            let mut layer_states = Vec::new();
            let out = on_engine!(&self.engine, |b, t| t.run(
                b,
                pixel_values,
                pass,
                output_hidden_states.then_some(&mut layer_states),
                true,
            ))?;
            last.extend(out.last.unwrap_or_default());
            pooled.extend(out.pooled);
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
        for pass in passes(batch, self.max_batch()?) {
            pooled.extend(self.run_pooled(pixel_values, pass)?);
        }
        Tensor::new(vec![batch, d], pooled)
    }

    /// The pooled output of images `start..start + len`, `[len, D]` values.
    pub(crate) fn run_pooled(
        &self,
        pixel_values: &Tensor,
        pass: (usize, usize),
    ) -> Result<Vec<f32>> {
        let out = on_engine!(&self.engine, |b, t| t.run(
            b,
            pixel_values,
            pass,
            None,
            false
        ))?;
        Ok(out.pooled)
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
}

/// `(start, len)` of each pass over `total` items, at most `max` per pass.
pub(crate) fn passes(total: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let max = max.max(1);
    (0..total.div_ceil(max)).map(move |i| (i * max, max.min(total - i * max)))
}
