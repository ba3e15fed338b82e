//! `config.json` of Hugging Face CLIP checkpoints, parsed with serde.
//!
//! Field names and defaults are those of transformers' `CLIPTextConfig`, `CLIPVisionConfig` and
//! `CLIPConfig` (`configuration_clip.py`): a field missing from the file takes the value
//! transformers would give it, so a checkpoint means the same thing here as there.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ClipError, Result};

/// The activation between `fc1` and `fc2` of every MLP (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: OpenAI's CLIP checkpoints.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`: many non-OpenAI CLIP checkpoints.
    #[serde(rename = "gelu")]
    Gelu,
}

impl From<Activation> for fusion_kernels::nn::Activation {
    fn from(a: Activation) -> Self {
        match a {
            Activation::QuickGelu => fusion_kernels::nn::Activation::QuickGelu,
            Activation::Gelu => fusion_kernels::nn::Activation::Gelu,
        }
    }
}

impl Activation {
    /// Applies the activation to one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
            // In f64 so the reference is exact to f32 rounding; erf has no stable std version.
            Activation::Gelu => {
                let x = f64::from(x);
                (0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
            }
        }
    }
}

/// The text tower's configuration (`CLIPTextConfig`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Number of token embeddings.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Projection width of a bare text model; a `CLIPModel` uses the top-level value instead.
    pub projection_dim: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Number of position embeddings: the longest token sequence the model takes.
    pub max_position_embeddings: usize,
    /// The MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
    /// Padding token id (informational: padding is masked by `attention_mask`).
    pub pad_token_id: Option<i64>,
    /// Start-of-text token id.
    pub bos_token_id: Option<i64>,
    /// End-of-text token id; decides how the pooled output is picked (see
    /// [`crate::ClipTextTransformer`]).
    pub eos_token_id: Option<i64>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
        }
    }
}

/// The vision tower's configuration (`CLIPVisionConfig`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Projection width of a bare vision model; a `CLIPModel` uses the top-level value instead.
    pub projection_dim: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Channels of the input image.
    pub num_channels: usize,
    /// Height and width of the (square) input image.
    pub image_size: usize,
    /// Height and width of a patch; must divide `image_size`.
    pub patch_size: usize,
    /// The MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per side of the image.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of positions: one per patch plus the class token.
    pub fn num_positions(&self) -> usize {
        self.patches_per_side() * self.patches_per_side() + 1
    }
}

/// A full `CLIPModel` configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    /// The text tower.
    pub text_config: ClipTextConfig,
    /// The vision tower.
    pub vision_config: ClipVisionConfig,
    /// Output width of `visual_projection` and `text_projection`.
    pub projection_dim: usize,
    /// Initial value of `logit_scale` (informational: the checkpoint's `logit_scale` is used).
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }
}

/// What a checkpoint's `config.json` describes, decided by its `model_type`.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckpointConfig {
    /// `model_type: clip`: a `CLIPModel` with both towers and both projections.
    Clip(ClipConfig),
    /// `model_type: clip_vision_model`: a bare `CLIPVisionModel` (the fine-tuned checkpoints that
    /// FusionBench merges).
    Vision(ClipVisionConfig),
}

impl CheckpointConfig {
    /// Reads and parses `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ClipError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Reads the `config.json` carried by a plugin-api [`fusion_plugin_api::Model`] (model
    /// pools attach it as an auxiliary file).
    pub fn from_model(model: &fusion_plugin_api::Model) -> Result<Self> {
        let path = Path::new("<model>/config.json");
        let bytes = model.file("config.json").map_err(|e| ClipError::Config {
            path: path.to_path_buf(),
            message: format!("the model carries no config.json: {e}"),
        })?;
        let text = String::from_utf8(bytes).map_err(|e| ClipError::Config {
            path: path.to_path_buf(),
            message: format!("not UTF-8: {e}"),
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a `config.json`; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json_err = |source| ClipError::Json {
            path: path.to_path_buf(),
            source,
        };
        let value: Value = serde_json::from_str(text).map_err(json_err)?;
        let model_type = value.get("model_type").and_then(Value::as_str);
        let config = match model_type {
            Some("clip") => {
                let value = merge_legacy_sub_configs(value);
                CheckpointConfig::Clip(serde_json::from_value(value).map_err(json_err)?)
            }
            Some("clip_vision_model") => {
                CheckpointConfig::Vision(serde_json::from_value(value).map_err(json_err)?)
            }
            other => {
                return Err(ClipError::Config {
                    path: path.to_path_buf(),
                    message: format!(
                        "model_type is {}, expected \"clip\" or \"clip_vision_model\"",
                        other.map_or("missing".to_string(), |t| format!("{t:?}"))
                    ),
                })
            }
        };
        config.validate(path)?;
        Ok(config)
    }

    /// The vision tower's configuration, present in both kinds.
    pub fn vision_config(&self) -> &ClipVisionConfig {
        match self {
            CheckpointConfig::Clip(c) => &c.vision_config,
            CheckpointConfig::Vision(c) => c,
        }
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let err = |message: String| ClipError::Config {
            path: path.to_path_buf(),
            message,
        };
        let v = self.vision_config();
        check_heads("vision_config", v.hidden_size, v.num_attention_heads).map_err(err)?;
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(err(format!(
                "vision_config.patch_size {} does not divide image_size {}",
                v.patch_size, v.image_size
            )));
        }
        if let CheckpointConfig::Clip(c) = self {
            let t = &c.text_config;
            check_heads("text_config", t.hidden_size, t.num_attention_heads).map_err(err)?;
            if t.max_position_embeddings == 0 {
                return Err(err("text_config.max_position_embeddings is 0".into()));
            }
        }
        Ok(())
    }
}

fn check_heads(which: &str, hidden_size: usize, heads: usize) -> std::result::Result<(), String> {
    if heads == 0 || !hidden_size.is_multiple_of(heads) {
        return Err(format!(
            "{which}.num_attention_heads {heads} does not divide hidden_size {hidden_size}"
        ));
    }
    Ok(())
}

/// Configs written by transformers 4.2x may carry `text_config_dict` / `vision_config_dict`
/// beside `text_config` / `vision_config`; transformers lets the `_dict` keys win, so do we.
fn merge_legacy_sub_configs(mut value: Value) -> Value {
    for tower in ["text_config", "vision_config"] {
        let legacy_key = format!("{tower}_dict");
        let Some(Value::Object(legacy)) = value.get(&legacy_key).cloned() else {
            continue;
        };
        let Some(root) = value.as_object_mut() else {
            break;
        };
        let entry = root
            .entry(tower.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(target) = entry {
            for (k, v) in legacy {
                target.insert(k, v);
            }
        }
    }
    value
}

/// The `config.json` path of a checkpoint directory (the oracle's `from_pretrained_dir`).
#[cfg(any(test, feature = "oracle"))]
pub(crate) fn config_path(dir: &Path) -> std::path::PathBuf {
    dir.join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_torch() {
        // torch.nn.functional.gelu / transformers' QuickGELUActivation at a few points.
        let close = |a: f32, b: f64| (f64::from(a) - b).abs() < 1e-7;
        assert!(close(Activation::Gelu.apply(1.0), 0.841_344_746_068_542_9));
        assert!(close(
            Activation::Gelu.apply(-1.0),
            -0.158_655_253_931_457_07
        ));
        assert!(close(Activation::Gelu.apply(0.0), 0.0));
        assert!(close(
            Activation::QuickGelu.apply(1.0),
            1.0 / (1.0 + (-1.702f64).exp())
        ));
    }

    #[test]
    fn legacy_sub_config_dicts_override() {
        let json = r#"{"model_type": "clip", "projection_dim": 512,
            "text_config": {"hidden_size": 1, "eos_token_id": 2},
            "text_config_dict": {"hidden_size": 512, "num_attention_heads": 8},
            "vision_config_dict": {"hidden_size": 768, "hidden_act": "gelu"}}"#;
        let CheckpointConfig::Clip(c) =
            CheckpointConfig::from_json_str(json, "config.json").unwrap()
        else {
            panic!("expected a CLIPModel config");
        };
        assert_eq!(c.text_config.hidden_size, 512);
        assert_eq!(c.text_config.eos_token_id, Some(2));
        assert_eq!(c.vision_config.hidden_act, Activation::Gelu);
        assert_eq!(c.vision_config.image_size, 224);
    }

    #[test]
    fn bare_vision_config_and_errors() {
        let json = r#"{"model_type": "clip_vision_model", "hidden_size": 96, "num_attention_heads": 6,
            "image_size": 48, "patch_size": 16}"#;
        let cfg = CheckpointConfig::from_json_str(json, "config.json").unwrap();
        assert_eq!(cfg.vision_config().num_positions(), 10);

        let err =
            CheckpointConfig::from_json_str(r#"{"model_type": "bert"}"#, "c.json").unwrap_err();
        assert!(err.to_string().contains("\"bert\""), "{err}");
        let err = CheckpointConfig::from_json_str(
            r#"{"model_type": "clip_vision_model", "hidden_act": "relu"}"#,
            "c.json",
        )
        .unwrap_err();
        assert!(err.to_string().contains("relu"), "{err}");
        let err = CheckpointConfig::from_json_str(
            r#"{"model_type": "clip_vision_model", "hidden_size": 10, "num_attention_heads": 3}"#,
            "c.json",
        )
        .unwrap_err();
        assert!(err.to_string().contains("num_attention_heads 3"), "{err}");
    }
}
