//! Whole checkpoints: `CLIPModel` (both towers, both projections, `logit_scale`) and
//! `CLIPVisionModel` (the vision tower alone, which is what FusionBench merges).

use std::path::Path;

use super::nn::Linear;
use super::text::ClipTextTransformer;
use super::vision::ClipVisionTransformer;
use crate::arch::CLIP_HEAD_TENSORS;
use crate::config::{config_path, CheckpointConfig, ClipConfig};
use crate::error::{ClipError, Result};
use crate::output::{ClipOutput, VisionOutput};
use crate::tensor::{l2_normalize_rows, matmul_transposed, Tensor};
use crate::tokenizer::TokenBatch;
use crate::weights::WeightStore;

/// A full CLIP model (`CLIPModel`).
#[derive(Clone, Debug)]
pub struct ClipModel {
    config: ClipConfig,
    text_model: ClipTextTransformer,
    vision_model: ClipVisionTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    logit_scale: f32,
}

impl ClipModel {
    /// Loads a `CLIPModel` checkpoint directory (`config.json` with `model_type: clip`, and
    /// safetensors weights). Every tensor in the checkpoint must be used.
    pub fn from_pretrained_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = config_path(dir);
        let config = match CheckpointConfig::from_file(&path)? {
            CheckpointConfig::Clip(c) => c,
            CheckpointConfig::Vision(_) => {
                return Err(ClipError::Config {
                    path,
                    message: "this is a CLIPVisionModel checkpoint (model_type clip_vision_model); a full CLIPModel (model_type clip) is needed for the text tower and projections".into(),
                })
            }
        };
        let store = WeightStore::open_dir(dir)?;
        Self::load(&store, &config)
    }

    /// Loads from an opened store with `CLIPModel` names; every tensor in it must be used.
    pub fn load(store: &WeightStore, config: &ClipConfig) -> Result<Self> {
        let root = store.root();
        let proj = config.projection_dim;
        let model = Self {
            config: config.clone(),
            text_model: ClipTextTransformer::load(&root.pp("text_model"), &config.text_config)?,
            vision_model: ClipVisionTransformer::load(
                &root.pp("vision_model"),
                &config.vision_config,
            )?,
            visual_projection: Linear::load_no_bias(
                &root.pp("visual_projection"),
                config.vision_config.hidden_size,
                proj,
            )?,
            text_projection: Linear::load_no_bias(
                &root.pp("text_projection"),
                config.text_config.hidden_size,
                proj,
            )?,
            // A 0-d parameter in transformers; stored as shape [].
            logit_scale: store.get("logit_scale", &[])?.data()[0],
        };
        store.check_all_used(|_| true)?;
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The text tower.
    pub fn text_model(&self) -> &ClipTextTransformer {
        &self.text_model
    }

    /// The vision tower.
    pub fn vision_model(&self) -> &ClipVisionTransformer {
        &self.vision_model
    }

    /// `visual_projection` (no bias), `[projection_dim, vision hidden]`.
    pub fn visual_projection(&self) -> &Linear {
        &self.visual_projection
    }

    /// `text_projection` (no bias), `[projection_dim, text hidden]`.
    pub fn text_projection(&self) -> &Linear {
        &self.text_projection
    }

    /// The stored (log) logit scale; logits are multiplied by its exponential.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// Swaps in another vision tower (a merged model), returning the old one. This is how
    /// FusionBench evaluates a merged `CLIPVisionModel` with the pretrained text tower and
    /// projections. The new tower must have the same width, so `visual_projection` still fits.
    pub fn replace_vision_model(
        &mut self,
        vision_model: ClipVisionTransformer,
    ) -> Result<ClipVisionTransformer> {
        let (new, old) = (
            vision_model.config().hidden_size,
            self.visual_projection.in_dim(),
        );
        if new != old {
            return Err(ClipError::input(
                "ClipModel::replace_vision_model",
                format!(
                    "the new vision tower has hidden_size {new}, visual_projection expects {old}"
                ),
            ));
        }
        self.config.vision_config = vision_model.config().clone();
        Ok(std::mem::replace(&mut self.vision_model, vision_model))
    }

    /// `visual_projection(pooler_output)`, not normalized (`get_image_features`).
    pub fn get_image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let out = self.vision_model.forward(pixel_values, false)?;
        self.visual_projection.forward(&out.pooler_output)
    }

    /// `text_projection(pooler_output)`, not normalized (`get_text_features`).
    pub fn get_text_features(&self, tokens: &TokenBatch) -> Result<Tensor> {
        let out = self.text_model.forward(tokens)?;
        self.text_projection.forward(&out.pooler_output)
    }

    /// Both towers, normalized embeddings and the scaled cosine similarities.
    pub fn forward(&self, pixel_values: &Tensor, tokens: &TokenBatch) -> Result<ClipOutput> {
        let vision_output = self.vision_model.forward(pixel_values, false)?;
        let text_output = self.text_model.forward(tokens)?;
        let image_embeds = l2_normalize_rows(
            &self
                .visual_projection
                .forward(&vision_output.pooler_output)?,
        );
        let text_embeds =
            l2_normalize_rows(&self.text_projection.forward(&text_output.pooler_output)?);
        let scale = self.logit_scale.exp();
        Ok(ClipOutput {
            logits_per_image: matmul_transposed(&image_embeds, &text_embeds, scale)?,
            logits_per_text: matmul_transposed(&text_embeds, &image_embeds, scale)?,
            text_embeds,
            image_embeds,
            text_output,
            vision_output,
        })
    }
}

/// A vision tower on its own (`CLIPVisionModel`).
#[derive(Clone, Debug)]
pub struct ClipVisionModel {
    vision_model: ClipVisionTransformer,
}

impl ClipVisionModel {
    /// Loads the vision tower of a checkpoint directory: a `CLIPVisionModel` checkpoint
    /// (`model_type: clip_vision_model`, all tensors under `vision_model.`) or a full
    /// `CLIPModel` one, whose text tower and projections are then skipped. Every other tensor
    /// must be used.
    pub fn from_pretrained_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = CheckpointConfig::from_file(config_path(dir))?;
        let store = WeightStore::open_dir(dir)?;
        Self::load(&store, &config)
    }

    /// Loads the tower from an opened store (see [`ClipVisionModel::from_pretrained_dir`]).
    pub fn load(store: &WeightStore, config: &CheckpointConfig) -> Result<Self> {
        let vision_model =
            ClipVisionTransformer::load(&store.root().pp("vision_model"), config.vision_config())?;
        match config {
            CheckpointConfig::Vision(_) => store.check_all_used(|_| true)?,
            CheckpointConfig::Clip(_) => store.check_all_used(|name| {
                !name.starts_with("text_model.") && !CLIP_HEAD_TENSORS.contains(&name)
            })?,
        }
        Ok(Self { vision_model })
    }

    /// The tower.
    pub fn vision_model(&self) -> &ClipVisionTransformer {
        &self.vision_model
    }

    /// The tower, by value (to put into a [`ClipModel`]).
    pub fn into_vision_model(self) -> ClipVisionTransformer {
        self.vision_model
    }

    /// Runs the tower (see [`ClipVisionTransformer::forward`]).
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        output_hidden_states: bool,
    ) -> Result<VisionOutput> {
        self.vision_model
            .forward(pixel_values, output_hidden_states)
    }
}
