//! A whole `CLIPModel` on the GPU, or its text side alone (text tower, both projections and
//! `logit_scale`) for scoring vision towers loaded separately.

use fusion_plugin_api::Compute;

use crate::config::{CheckpointConfig, ClipConfig};
use crate::error::{ClipError, Result};
use crate::gpu::backend::{Backend, BackendChoice, Epilogue, LinearW, OnHost, WeightSource};
use crate::gpu::native::Native;
use crate::gpu::text::GpuClipText;
use crate::gpu::vision::{passes, GpuClipVision};
use crate::output::ClipOutput;
use crate::tensor::{l2_normalize_rows, matmul_transposed, Tensor};
use crate::tokenizer::TokenBatch;
use crate::weights::WeightStore;

/// `CLIPModel` with its weights on the compute device; the vision tower is optional, so a task
/// pool can keep the text side (zero-shot heads, projections, logit scale) and score any number
/// of merged vision towers ([`GpuClipVision`]) with [`GpuClipModel::encode_images_with`].
///
/// The towers' pooled outputs (`[batch, hidden]`, a few KiB per image) are read back and
/// projected on the host with the native op API ([`Native`]); their L2 normalization and the
/// logits (a few thousand values) are computed on the host ([`l2_normalize_rows`],
/// [`matmul_transposed`]).
pub struct GpuClipModel<'c> {
    config: ClipConfig,
    text: GpuClipText<'c>,
    vision: Option<GpuClipVision<'c>>,
    visual_projection: LinearW<Native>,
    text_projection: LinearW<Native>,
    logit_scale: f32,
}

impl<'c> GpuClipModel<'c> {
    /// Loads a full `CLIPModel` from a checkpoint's weights; every tensor must be present
    /// with the shape the config implies, and used.
    pub fn load(c: &'c dyn Compute, store: &WeightStore, config: &ClipConfig) -> Result<Self> {
        Self::load_with(c, store, config, BackendChoice::Auto)
    }

    /// [`GpuClipModel::load`] on the backend `choice` names.
    pub fn load_with(
        c: &'c dyn Compute,
        store: &WeightStore,
        config: &ClipConfig,
        choice: BackendChoice,
    ) -> Result<Self> {
        Self::load_towers(c, store, config, choice, true)
    }

    /// Loads the text tower, both projections and `logit_scale` of a `CLIPModel` checkpoint,
    /// leaving out the vision tower (its `vision_model.*` tensors are not read). Every other
    /// tensor must be present, well shaped and used.
    pub fn load_text_only(
        c: &'c dyn Compute,
        store: &WeightStore,
        config: &ClipConfig,
    ) -> Result<Self> {
        Self::load_text_only_with(c, store, config, BackendChoice::Auto)
    }

    /// [`GpuClipModel::load_text_only`] on the backend `choice` names.
    pub fn load_text_only_with(
        c: &'c dyn Compute,
        store: &WeightStore,
        config: &ClipConfig,
        choice: BackendChoice,
    ) -> Result<Self> {
        Self::load_towers(c, store, config, choice, false)
    }

    /// The text tower, the vision tower when `with_vision` (else its tensors are out of
    /// scope), the projections and `logit_scale`; every tensor in scope must be used.
    fn load_towers(
        c: &'c dyn Compute,
        store: &WeightStore,
        config: &ClipConfig,
        choice: BackendChoice,
        with_vision: bool,
    ) -> Result<Self> {
        let text = GpuClipText::load_with(c, store, &config.text_config, choice)?;
        let clip = CheckpointConfig::Clip(config.clone());
        let vision = with_vision
            .then(|| GpuClipVision::load_with(c, store, &clip, choice))
            .transpose()?;
        let model = Self::with_head(store, config, text, vision)?;
        store.check_all_used(|name| with_vision || !name.starts_with("vision_model."))?;
        Ok(model)
    }

    /// The model around its towers: reads both projections (no bias) and `logit_scale` (a
    /// 0-d parameter in transformers, stored as shape `[]`) to host memory.
    fn with_head(
        store: &WeightStore,
        config: &ClipConfig,
        text: GpuClipText<'c>,
        vision: Option<GpuClipVision<'c>>,
    ) -> Result<Self> {
        let src = OnHost(store);
        let proj = config.projection_dim;
        let projection = |name: &str, in_dim: usize| -> Result<LinearW<Native>> {
            Ok(LinearW {
                weight: src.get(&format!("{name}.weight"), &[proj, in_dim])?,
                bias: None,
                in_dim,
                out_dim: proj,
            })
        };
        Ok(Self {
            config: config.clone(),
            text,
            vision,
            visual_projection: projection("visual_projection", config.vision_config.hidden_size)?,
            text_projection: projection("text_projection", config.text_config.hidden_size)?,
            logit_scale: store.get("logit_scale", &[])?.data()[0],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The text tower.
    pub fn text_model(&self) -> &GpuClipText<'c> {
        &self.text
    }

    /// The vision tower, unless loaded text-only.
    pub fn vision_model(&self) -> Option<&GpuClipVision<'c>> {
        self.vision.as_ref()
    }

    /// The stored (log) logit scale; logits are multiplied by its exponential.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// L2-normalized projected text features, `[texts, projection_dim]` (the zero-shot
    /// classification head when the texts are class prompts).
    pub fn encode_texts(&self, tokens: &TokenBatch) -> Result<Tensor> {
        self.text.check_tokens(tokens)?;
        let (batch, seq) = (tokens.batch_size, tokens.seq_len);
        let proj = self.config.projection_dim;
        let mut out = Vec::with_capacity(batch * proj);
        for pass in passes(batch, self.text.max_batch(seq)?) {
            let pooled = self.text.run(tokens, pass, false)?.pooled;
            out.extend(project(&self.text_projection, &pooled, pass.1)?);
        }
        Ok(l2_normalize_rows(&Tensor::new(vec![batch, proj], out)?))
    }

    /// L2-normalized projected image features of this model's own vision tower.
    pub fn encode_images(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let vision = self.vision.as_ref().ok_or_else(|| {
            ClipError::input(
                "GpuClipModel::encode_images",
                "this model was loaded without its vision tower; use encode_images_with",
            )
        })?;
        self.encode_images_with(vision, pixel_values)
    }

    /// L2-normalized projected image features of `vision` (e.g. a merged tower), through this
    /// model's `visual_projection`: `[images, projection_dim]`. Both must live on the same
    /// device (tensor ids of one compute runtime), as they do when built from the same
    /// `Context::compute` handle.
    pub fn encode_images_with(
        &self,
        vision: &GpuClipVision<'_>,
        pixel_values: &Tensor,
    ) -> Result<Tensor> {
        let width = vision.config().hidden_size;
        let expected = self.config.vision_config.hidden_size;
        if width != expected {
            return Err(ClipError::input(
                "GpuClipModel::encode_images_with",
                format!("the vision tower has hidden_size {width}, visual_projection expects {expected}"),
            ));
        }
        let batch = vision.check_pixels(pixel_values)?;
        let proj = self.config.projection_dim;
        let mut out = Vec::with_capacity(batch * proj);
        for pass in passes(batch, vision.max_batch()?) {
            let pooled = vision.run_pooled(pixel_values, pass)?;
            out.extend(project(&self.visual_projection, &pooled, pass.1)?);
        }
        Ok(l2_normalize_rows(&Tensor::new(vec![batch, proj], out)?))
    }

    /// `exp(logit_scale) * image_embeds @ text_embeds.T`, `[images, texts]`.
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        matmul_transposed(image_embeds, text_embeds, self.logit_scale.exp())
    }

    /// Both towers with every output read back, as transformers' `CLIPModel.forward` (the
    /// vision tower's hidden states are not collected).
    pub fn forward(&self, pixel_values: &Tensor, tokens: &TokenBatch) -> Result<ClipOutput> {
        let vision = self.vision.as_ref().ok_or_else(|| {
            ClipError::input(
                "GpuClipModel::forward",
                "this model was loaded without its vision tower",
            )
        })?;
        let vision_output = vision.forward(pixel_values, false)?;
        let text_output = self.text.forward(tokens)?;
        let image_embeds = l2_normalize_rows(
            &self.project_host(&self.visual_projection, &vision_output.pooler_output)?,
        );
        let text_embeds = l2_normalize_rows(
            &self.project_host(&self.text_projection, &text_output.pooler_output)?,
        );
        Ok(ClipOutput {
            logits_per_image: self.logits(&image_embeds, &text_embeds)?,
            logits_per_text: self.logits(&text_embeds, &image_embeds)?,
            text_embeds,
            image_embeds,
            text_output,
            vision_output,
        })
    }

    /// `projection(pooled)` for pooled outputs already on the host (the full forward pass
    /// reads them back anyway).
    fn project_host(&self, projection: &LinearW<Native>, pooled: &Tensor) -> Result<Tensor> {
        let rows = pooled.shape().first().copied().unwrap_or(0);
        let values = project(projection, pooled.data(), rows)?;
        Tensor::new(vec![rows, projection.out_dim], values)
    }
}

/// `projection(pooled)` on the host for `rows` pooled outputs.
fn project(projection: &LinearW<Native>, pooled: &[f32], rows: usize) -> Result<Vec<f32>> {
    let pooled = pooled.to_vec();
    let mut out = Native.zeros(&[rows, projection.out_dim])?;
    Native.linear(&pooled, projection, &mut out, rows, Epilogue::None)?;
    Ok(out)
}
