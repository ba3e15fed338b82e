//! Finding datasets in the local Hugging Face hub cache (the layout `huggingface_hub` writes):
//!
//! ```text
//! <cache>/datasets--<org>--<name>/refs/<revision>          holds a commit hash
//! <cache>/datasets--<org>--<name>/snapshots/<commit>/...  the repository's files (often symlinks into blobs/)
//! ```
//!
//! Nothing here touches the network: a dataset must already be in the cache.

use std::path::{Path, PathBuf};

use crate::DatasetError;

/// The hub cache folder, resolved from the environment as `huggingface_hub` does:
/// `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE` (legacy), else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
/// `None` only when none of these variables is set (not even `HOME`).
pub fn hub_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| var("HF_HOME").map(|home| home.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// A dataset id on the hub, with an optional revision: `org/name`, `org/name@revision`,
/// `hf://datasets/org/name@revision`, or a legacy id without an organisation (`mnist`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name` (or `name`).
    pub repo: String,
    /// The revision: a branch, a tag, a commit hash, or `refs/convert/parquet`. `None` means `main`.
    pub revision: Option<String>,
}

impl HubId {
    /// Parses a hub id. Returns `None` when the text cannot be one (it looks like a file path).
    pub fn parse(source: &str) -> Option<HubId> {
        let text = source.strip_prefix("hf://datasets/").unwrap_or(source);
        let (repo, revision) = match text.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() => (repo, Some(rev.to_string())),
            Some(_) => return None,
            None => (text, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let valid_part = |p: &&str| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.is_empty() || parts.len() > 2 || !parts.iter().all(valid_part) {
            return None;
        }
        Some(HubId {
            repo: repo.to_string(),
            revision,
        })
    }

    /// The folder name the cache uses for this repository: `datasets--org--name`.
    pub fn cache_folder(&self) -> String {
        format!("datasets--{}", self.repo.replace('/', "--"))
    }

    /// The revision, `main` when none was given.
    pub fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{}", self.repo, rev),
            None => write!(f, "{}", self.repo),
        }
    }
}

/// Resolves a hub id to its snapshot folder in the cache `cache`.
///
/// The revision is looked up as a ref (`refs/<revision>`, which holds a commit hash), then as a
/// snapshot folder name (a full commit hash), then as an unambiguous prefix of one (at least 7
/// characters). `refs/convert/parquet` works as a revision because the cache stores it as
/// `refs/refs/convert/parquet`; `convert/parquet` is accepted as a short form of it.
pub fn resolve_snapshot(id: &HubId, cache: &Path) -> Result<PathBuf, DatasetError> {
    let repo_dir = cache.join(id.cache_folder());
    if !repo_dir.is_dir() {
        return Err(DatasetError::SourceNotFound {
            source_name: id.to_string(),
            cache: cache.to_path_buf(),
            repo_folder: id.cache_folder(),
        });
    }
    let revision = id.revision_or_main();
    let snapshots_dir = repo_dir.join("snapshots");
    let mut ref_candidates = vec![repo_dir.join("refs").join(revision)];
    if !revision.starts_with("refs/") {
        ref_candidates.push(repo_dir.join("refs").join("refs").join(revision));
    }
    for ref_file in &ref_candidates {
        if ref_file.is_file() {
            let hash = std::fs::read_to_string(ref_file)
                .map_err(|e| DatasetError::io(ref_file, e))?
                .trim()
                .to_string();
            let snapshot = snapshots_dir.join(&hash);
            if !hash.is_empty() && snapshot.is_dir() {
                return Ok(snapshot);
            }
        }
    }
    let valid_name = !revision.is_empty() && !revision.contains(['/', '\\']) && revision != "..";
    if valid_name && snapshots_dir.join(revision).is_dir() {
        return Ok(snapshots_dir.join(revision));
    }
    let snapshots = list_dir_names(&snapshots_dir);
    if valid_name && revision.len() >= 7 {
        let matching: Vec<&String> = snapshots
            .iter()
            .filter(|s| s.starts_with(revision))
            .collect();
        if let [only] = matching.as_slice() {
            return Ok(snapshots_dir.join(only));
        }
    }
    let mut refs = Vec::new();
    collect_refs(&repo_dir.join("refs"), "", &mut refs);
    refs.sort();
    Err(DatasetError::RevisionNotFound {
        repo: id.repo.clone(),
        revision: revision.to_string(),
        repo_dir,
        refs,
        snapshots,
    })
}

/// Sorted names of the sub-folders of `dir` (empty when it cannot be read).
fn list_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Collects the ref names under `refs/` (nested refs such as `refs/convert/parquet` included).
fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let path = entry.path();
        if path.is_dir() {
            collect_refs(&path, &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids() {
        let id = HubId::parse("tanganke/eurosat@abc123").unwrap();
        assert_eq!(id.repo, "tanganke/eurosat");
        assert_eq!(id.revision.as_deref(), Some("abc123"));
        assert_eq!(id.cache_folder(), "datasets--tanganke--eurosat");
        let id = HubId::parse("hf://datasets/ylecun/mnist@refs/convert/parquet").unwrap();
        assert_eq!(id.repo, "ylecun/mnist");
        assert_eq!(id.revision.as_deref(), Some("refs/convert/parquet"));
        assert_eq!(
            HubId::parse("mnist").unwrap().cache_folder(),
            "datasets--mnist"
        );
        assert!(HubId::parse("/abs/path").is_none());
        assert!(HubId::parse("a/b/c").is_none());
        assert!(HubId::parse("../x").is_none());
        assert!(HubId::parse("org/name@").is_none());
    }
}
