//! Reading checkpoints for fusion-host plugins: single `.safetensors` files and Hugging Face
//! checkpoint folders (one file or shards with an index), memory-mapped and read lazily, and
//! hub ids found in the local Hugging Face cache.
//!
//! A plain library (not a plugin), so several plugins and their tests can share it.

pub mod checkpoint;
pub mod hub;

pub use checkpoint::Checkpoint;

use std::path::Path;

use fusion_plugin_api::{Model, Result};

/// Open a checkpoint (a `.safetensors` file, a checkpoint folder, or a hub id in the local cache)
/// as a lazy [`Model`].
pub fn open_model(source: &str) -> Result<Model> {
    let path = resolve(source)?;
    Ok(Model::new(Checkpoint::open(&path, source)?))
}

/// The local path of a checkpoint source: the path itself when it exists, else the snapshot of
/// a hub id in the local cache.
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
    hub::resolve_cached(source)
}
