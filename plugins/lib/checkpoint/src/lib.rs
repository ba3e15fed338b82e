//! Reading and writing checkpoints for fusion-host and its plugins. Reading: single
//! `.safetensors` files and Hugging Face checkpoint folders (one file or shards with an index),
//! memory-mapped and read lazily, and Hugging Face hub ids (from the cache, downloaded into it
//! when missing, through the host's hub). Writing ([`save`]): a model saved as a checkpoint
//! folder or a single file, sharded, converted to another float dtype if asked, every file
//! written atomically (temporary name, then rename), with temporary files removed when the
//! process is interrupted.
//!
//! A plain library (not a plugin), so the host, several plugins and their tests can share it.

pub mod checkpoint;
pub mod hub;
mod interrupt;
pub mod save;

pub use checkpoint::Checkpoint;

use std::path::Path;

use fusion_plugin_api::{Model, Result};

/// Open a checkpoint (a `.safetensors` file, a checkpoint folder, or a hub id) as a lazy
/// [`Model`].
pub fn open_model(source: &str) -> Result<Model> {
    let path = resolve(source)?;
    Ok(Model::new(Checkpoint::open(&path, source)?))
}

/// The checkpoint source of a model-pool entry named `name`: a path or hub id given as a string,
/// or as a mapping with `pretrained_model_name_or_path` (or `path`, `model_name_or_path`), as
/// FusionBench's `_target_: ...from_pretrained` entries are.
pub fn model_source(name: &str, value: &serde_json::Value) -> Result<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Object(m) => [
            "pretrained_model_name_or_path",
            "path",
            "model_name_or_path",
        ]
        .iter()
        .find_map(|k| m.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .ok_or_else(|| {
            fusion_plugin_api::Error::config(format!(
                "modelpool: model `{name}` must give `pretrained_model_name_or_path` (or `path`)"
            ))
        }),
        other => Err(fusion_plugin_api::Error::config(format!(
            "modelpool: model `{name}` must be a path or hub id, got {other}"
        ))),
    }
}

/// The local path of a checkpoint source: the path itself when it exists, else the snapshot
/// folder of a hub id (`org/name[@revision]`), fetched through the host's hub.
pub fn resolve(source: &str) -> Result<std::path::PathBuf> {
    let path = Path::new(source);
    if path.exists() {
        return Ok(path.to_owned());
    }
    if source.ends_with(".safetensors") || !hub::looks_like_hub_id(source) {
        return Err(fusion_plugin_api::Error::io(format!(
            "checkpoint not found: {source}"
        )));
    }
    tracing::debug!(source, "not a local path: a Hugging Face hub id");
    hub::snapshot(source)
}
