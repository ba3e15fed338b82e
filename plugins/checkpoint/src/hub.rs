//! Finding a hub model id in the local Hugging Face cache (`$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), in the layout Python's `huggingface_hub`
//! writes: `models--org--name/refs/<revision>` holds a commit hash, and
//! `models--org--name/snapshots/<hash>/` the files.

use std::path::PathBuf;

use fusion_plugin_api::{Error, Result};

/// The hub cache folder the environment points at.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// Whether `spec` looks like a hub model id (`org/name` or `name`, optionally `@revision`).
pub fn looks_like_hub_id(spec: &str) -> bool {
    let id = spec.split('@').next().unwrap_or(spec);
    !id.is_empty()
        && id.split('/').count() <= 2
        && !id.starts_with('.')
        && !id.starts_with('/')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// The snapshot folder of `id` (`org/name[@revision]`) in the local cache.
pub fn resolve_cached(spec: &str) -> Result<PathBuf> {
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (spec, "main"),
    };
    let cache = cache_dir().ok_or_else(|| {
        Error::io(format!(
            "`{spec}`: no Hugging Face cache folder (set HF_HOME or HF_HUB_CACHE)"
        ))
    })?;
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let not_cached = || {
        Error::io(format!(
            "model `{spec}` is neither a local path nor in the Hugging Face cache at {} \
             (downloading from the hub is not supported by this pool yet: fetch it with \
             `huggingface-cli download {id}` or give a local folder)",
            cache.display()
        ))
    };
    if !repo.is_dir() {
        return Err(not_cached());
    }
    let is_hash = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let hash = if is_hash {
        revision.to_string()
    } else {
        std::fs::read_to_string(repo.join("refs").join(revision))
            .map_err(|_| not_cached())?
            .trim()
            .to_string()
    };
    let snapshot = repo.join("snapshots").join(hash);
    if snapshot.is_dir() {
        Ok(snapshot)
    } else {
        Err(not_cached())
    }
}
