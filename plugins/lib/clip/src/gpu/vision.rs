//! The vision tower (`CLIPVisionTransformer`), written once over the op API; the public type
//! holds it on the backend [`BackendChoice`] picks for the compute handle.

use fusion_plugin_api::{Compute, Model};

use crate::config::{CheckpointConfig, ClipVisionConfig};
use crate::encoder::EncoderDims;
use crate::error::{ClipError, Result};
use crate::gpu::backend::{
    load_norm, upload_norm, upload_tensor, Backend, BackendChoice, BackendKind, NormW, PatchW,
    StoreOnDevice, WeightSource, Wgsl,
};
use crate::gpu::encoder::{dense_norm, Encoder, EncoderMask};
use crate::gpu::native::Native;
use crate::model::ClipVisionModel;
use crate::tensor::Tensor;
use crate::vision::{ClipVisionTransformer, VisionOutput};
use crate::weights::WeightStore;
use fusion_kernels::nn::{PatchGeometry, RowLayout};

/// A CLIP vision tower whose weights live on the compute device, or, on a CPU adapter, in host
/// memory for the native path ([`BackendChoice`]).
///
/// Load it from a checkpoint ([`GpuClipVision::load`]), from a merged model handed over as a
/// plugin-api [`Model`] ([`GpuClipVision::from_model`]), or from a CPU tower
/// ([`GpuClipVision::from_cpu`]); the `*_with` variants take the backend explicitly. Its
/// weights are released when it is dropped.
pub struct GpuClipVision<'c> {
    c: &'c dyn Compute,
    config: ClipVisionConfig,
    engine: VisionEngine<'c>,
    /// Weights taken from a model on the device, not read back and uploaded.
    weights_on_device: usize,
}

enum VisionEngine<'c> {
    Wgsl(Wgsl<'c>, VisionTower<Wgsl<'c>>),
    Native(Native, VisionTower<Native>),
}

/// Runs `$body` with `$b` the backend and `$t` the tower, whichever backend holds it.
macro_rules! with_tower {
    ($engine:expr, |$b:ident, $t:ident| $body:expr) => {
        match $engine {
            VisionEngine::Wgsl($b, $t) => $body,
            VisionEngine::Native($b, $t) => $body,
        }
    };
}

/// The tower over one backend.
struct VisionTower<B: Backend> {
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
    fn upload(b: &B, tower: &ClipVisionTransformer) -> Result<Self> {
        let cfg = tower.config().clone();
        let e = tower.embeddings();
        let (d, cpp) = (
            cfg.hidden_size,
            cfg.num_channels * cfg.patch_size * cfg.patch_size,
        );
        let patch = PatchW {
            weight: b.upload(
                "vision_model.embeddings.patch_embedding.weight",
                &[d, cpp],
                e.patch_embedding().data(),
            )?,
            class: upload_tensor(
                b,
                "vision_model.embeddings.class_embedding",
                e.class_embedding(),
            )?,
            position: upload_tensor(
                b,
                "vision_model.embeddings.position_embedding.weight",
                e.position_embedding().weight(),
            )?,
            dim: d,
        };
        let [pre, post] = tower.layer_norms();
        let dims = encoder_dims(&cfg);
        Ok(Self {
            patch,
            pre_layrnorm: upload_norm(b, "vision_model.pre_layrnorm", pre)?,
            encoder: Encoder::upload(b, "vision_model.encoder", tower.encoder(), &dims)?,
            post_layernorm: upload_norm(b, "vision_model.post_layernorm", post)?,
            config: cfg,
        })
    }

    /// Builds the tower straight from `src` by checkpoint name, in the order
    /// [`ClipVisionTransformer::load`] reads (the `position_ids` buffer is the caller's).
    fn load(src: &impl WeightSource<B>, cfg: &ClipVisionConfig) -> Result<Self> {
        let (d, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let e = "vision_model.embeddings";
        let class = src.get(&format!("{e}.class_embedding"), &[d])?;
        let weight = src.get(&format!("{e}.patch_embedding.weight"), &[d, c, p, p])?;
        let position = src.get(
            &format!("{e}.position_embedding.weight"),
            &[cfg.num_positions(), d],
        )?;
        let eps = cfg.layer_norm_eps;
        let pre_layrnorm = load_norm(src, "vision_model.pre_layrnorm", d, eps)?;
        let encoder = Encoder::load(src, "vision_model.encoder", &encoder_dims(cfg))?;
        let post_layernorm = load_norm(src, "vision_model.post_layernorm", d, eps)?;
        Ok(Self {
            config: cfg.clone(),
            patch: PatchW {
                weight,
                class,
                position,
                dim: d,
            },
            pre_layrnorm,
            encoder,
            post_layernorm,
        })
    }

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
    fn run(
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
    /// Loads the tower from a checkpoint's weights with the strict checks of
    /// [`ClipVisionModel::load`]: every `vision_model.*` tensor must be present with the shape
    /// the config implies, and none may be left unused (a `CLIPModel` checkpoint's text tower
    /// and projections are out of scope and skipped).
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
        let model = ClipVisionModel::load(store, config)?;
        Self::from_cpu_with(c, model.vision_model(), choice)
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
        let b = match choice.resolve(c)? {
            BackendKind::Wgsl => Wgsl { c },
            BackendKind::Native => {
                let config = CheckpointConfig::Vision(config.clone());
                return Self::load_with(c, &store, &config, BackendChoice::Native);
            }
        };
        // The checks of ClipVisionModel::load, in its order.
        store
            .root()
            .pp("vision_model")
            .pp("embeddings")
            .skip_buffer("position_ids", &[1, config.num_positions()])?;
        let src = StoreOnDevice::new(b, &store);
        let tower = VisionTower::load(&src, config)?;
        store.check_all_used(|_| true)?;
        Ok(Self {
            c,
            config: config.clone(),
            engine: VisionEngine::Wgsl(b, tower),
            weights_on_device: src.on_device(),
        })
    }

    /// Uploads the weights of a CPU tower.
    pub fn from_cpu(c: &'c dyn Compute, tower: &ClipVisionTransformer) -> Result<Self> {
        Self::from_cpu_with(c, tower, BackendChoice::Auto)
    }

    /// [`GpuClipVision::from_cpu`] on the backend `choice` names.
    pub fn from_cpu_with(
        c: &'c dyn Compute,
        tower: &ClipVisionTransformer,
        choice: BackendChoice,
    ) -> Result<Self> {
        let engine = match choice.resolve(c)? {
            BackendKind::Wgsl => {
                let b = Wgsl { c };
                VisionEngine::Wgsl(b, VisionTower::upload(&b, tower)?)
            }
            BackendKind::Native => {
                VisionEngine::Native(Native, VisionTower::upload(&Native, tower)?)
            }
        };
        Ok(Self {
            c,
            config: tower.config().clone(),
            engine,
            weights_on_device: 0,
        })
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
        with_tower!(&self.engine, |b, _t| b.label())
    }

    /// The most images one pass can take: on the WGSL backend every activation of a pass must
    /// fit one storage binding (and 32-bit indices). Larger batches are split into passes of
    /// this size.
    pub fn max_batch(&self) -> Result<usize> {
        with_tower!(&self.engine, |b, t| t.max_batch(b))
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
            let out = with_tower!(&self.engine, |b, t| t.run(
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
        let out = with_tower!(&self.engine, |b, t| t.run(
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

/// The encoder's dimensions from the tower's config.
fn encoder_dims(cfg: &ClipVisionConfig) -> EncoderDims {
    EncoderDims {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_heads: cfg.num_attention_heads,
        num_layers: cfg.num_hidden_layers,
        activation: cfg.hidden_act,
        layer_norm_eps: cfg.layer_norm_eps,
    }
}

/// `(start, len)` of each pass over `total` items, at most `max` per pass.
pub(crate) fn passes(total: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let max = max.max(1);
    (0..total.div_ceil(max)).map(move |i| (i * max, max.min(total - i * max)))
}
