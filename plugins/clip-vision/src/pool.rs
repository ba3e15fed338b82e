//! `fusion_bench.modelpool.CLIPVisionModelPool`: CLIP vision towers by name.

use std::borrow::Cow;

use fusion_plugin_api::prelude::*;
use serde_json::Value;

/// The tensors of a CLIP vision tower (`CLIPVisionModel`): everything under `vision_model.`.
/// A full `CLIPModel` checkpoint (FusionBench's `_pretrained_: openai/clip-vit-base-patch32`)
/// is served through this filter, so every model of the pool has the same tensor names.
pub const VISION_PREFIX: &str = "vision_model.";

/// `models:` maps names to checkpoint folders or hub ids (`org/name[@revision]`, fetched through
/// the host's Hugging Face hub); `_pretrained_` is the base. `processor` and `platform` are
/// accepted as in FusionBench.
pub struct ClipVisionModelPool {
    models: Vec<(String, String)>,
}

impl FromConfig for ClipVisionModelPool {
    fn from_config(config: &Config) -> Result<Self> {
        let models = match config.value().get("models") {
            Some(Value::Object(m)) if !m.is_empty() => m
                .iter()
                .map(|(k, v)| Ok((k.clone(), fusion_checkpoint::model_source(k, v)?)))
                .collect::<Result<Vec<_>>>()?,
            _ => {
                return Err(Error::config(format!(
                    "`{}`: `models` must map names to checkpoints",
                    config.target()
                )))
            }
        };
        if let Some(platform) = config.get::<String>("platform")? {
            if !matches!(platform.as_str(), "hf" | "huggingface") {
                return Err(Error::unsupported(format!(
                    "`{}`: platform `{platform}` is not supported (only Hugging Face checkpoints)",
                    config.target()
                )));
            }
        }
        Ok(Self { models })
    }
}

impl ModelPool for ClipVisionModelPool {
    fn all_model_names(&self) -> Result<Vec<String>> {
        Ok(self.models.iter().map(|(n, _)| n.clone()).collect())
    }

    fn load_model(&self, name: &str) -> Result<Model> {
        let (_, source) = self.models.iter().find(|(n, _)| n == name).ok_or_else(|| {
            Error::config(format!(
                "the model pool has no model `{name}` (it has: {})",
                self.models
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let inner = fusion_checkpoint::open_model(source)
            .map_err(|e| e.context(format!("model `{name}`")))?;
        let all = inner.names()?;
        let mut names: Vec<(String, String)> = all
            .iter()
            .filter(|n| n.starts_with(VISION_PREFIX))
            .map(|n| (n.clone(), n.clone()))
            .collect();
        if names.is_empty() {
            // A CLIPVisionModel saved without its base-model prefix (transformers 5 does this):
            // `embeddings.*`, `encoder.*`, `pre_layrnorm.*`, `post_layernorm.*`. Serve it under
            // the prefixed names so every model of the pool agrees.
            let bare = |n: &str| {
                [
                    "embeddings.",
                    "encoder.",
                    "pre_layrnorm.",
                    "post_layernorm.",
                ]
                .iter()
                .any(|p| n.starts_with(p))
            };
            if !all.is_empty() && all.iter().all(|n| bare(n)) {
                names = all
                    .iter()
                    .map(|n| (format!("{VISION_PREFIX}{n}"), n.clone()))
                    .collect();
            }
        }
        if names.is_empty() {
            return Err(Error::model(format!(
                "model `{name}` ({source}) has no `{VISION_PREFIX}*` tensors: not a CLIP checkpoint"
            )));
        }
        Ok(Model::new(VisionTower { inner, names }))
    }
}

/// The vision part of a checkpoint: (served name, name in the checkpoint).
struct VisionTower {
    inner: Model,
    names: Vec<(String, String)>,
}

impl VisionTower {
    fn source(&self, name: &str) -> Result<&str> {
        self.names
            .iter()
            .find(|(served, _)| served == name)
            .map(|(_, src)| src.as_str())
            .ok_or_else(|| Error::model(format!("the vision tower has no tensor `{name}`")))
    }
}

impl StateDict for VisionTower {
    fn names(&self) -> Result<Vec<String>> {
        Ok(self.names.iter().map(|(n, _)| n.clone()).collect())
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.inner.info(self.source(name)?)
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.inner.data(self.source(name)?)
    }
    fn file_names(&self) -> Result<Vec<String>> {
        self.inner.file_names()
    }
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.inner.file(name)
    }
}
