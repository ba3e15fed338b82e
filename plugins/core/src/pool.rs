//! FusionBench's generic `BaseModelPool`.

use fusion_plugin_api::prelude::*;
use serde_json::Value;

use fusion_checkpoint::Checkpoint;

/// `fusion_bench.modelpool.BaseModelPool`: `models:` maps names to checkpoints.
///
/// A model entry is a path to a `.safetensors` file, a path to a Hugging Face checkpoint folder,
/// a hub id (`org/name[@revision]`, from the Hugging Face cache or downloaded into it through the
/// host's hub), or a mapping with `pretrained_model_name_or_path` (or `path`) holding one of
/// those, as FusionBench's `_target_: ...from_pretrained` entries do. A list of entries is named `"0"`, `"1"`, ...
pub struct BaseModelPool {
    models: Vec<(String, String)>,
}

impl FromConfig for BaseModelPool {
    fn from_config(config: &Config) -> Result<Self> {
        let models = match config.value().get("models") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| Ok((k.clone(), fusion_checkpoint::model_source(k, v)?)))
                .collect::<Result<Vec<_>>>()?,
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    Ok((
                        i.to_string(),
                        fusion_checkpoint::model_source(&i.to_string(), v)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(Value::Null) | None => {
                return Err(Error::config(format!(
                    "`{}`: `models` is required",
                    config.target()
                )))
            }
            Some(other) => {
                return Err(Error::config(format!(
                    "`{}`: `models` must be a mapping of names to checkpoints, got {other}",
                    config.target()
                )))
            }
        };
        if models.is_empty() {
            return Err(Error::config(format!(
                "`{}`: `models` is empty",
                config.target()
            )));
        }
        Ok(BaseModelPool { models })
    }
}

impl ModelPool for BaseModelPool {
    fn all_model_names(&self) -> Result<Vec<String>> {
        Ok(self.models.iter().map(|(n, _)| n.clone()).collect())
    }

    fn load_model(&self, name: &str) -> Result<Model> {
        let (_, source) = self.models.iter().find(|(n, _)| n == name).ok_or_else(|| {
            let known: Vec<&str> = self.models.iter().map(|(n, _)| n.as_str()).collect();
            Error::config(format!(
                "the model pool has no model `{name}` (it has: {})",
                known.join(", ")
            ))
        })?;
        let path =
            fusion_checkpoint::resolve(source).map_err(|e| e.context(format!("model `{name}`")))?;
        let checkpoint =
            Checkpoint::open(&path, source).map_err(|e| e.context(format!("model `{name}`")))?;
        tracing::debug!(model = name, path = %path.display(), "opened checkpoint");
        Ok(Model::new(checkpoint))
    }
}
