//! Datasets named by Hugging Face hub id, fetched through the host's hub
//! ([`fusion_plugin_api::hub`]): the repository is listed, the files of the requested split are
//! taken from the Hugging Face cache or downloaded into it (unless the run is offline), then read
//! from the cache's snapshot folder. The cache itself belongs to the host's `fusion-hub`.

use std::path::{Path, PathBuf};

use fusion_plugin_api::hub::{Hub, RepoKind};

use crate::{layout, DatasetError, DatasetSpec, ImageDataset, ParquetDataset};

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

fn hub_error(id: &HubId, e: fusion_plugin_api::Error) -> DatasetError {
    DatasetError::Hub {
        source_name: id.to_string(),
        message: e.message().to_string(),
    }
}

/// The snapshot folder holding `path`, which is repository file `name` in it.
fn snapshot_root(path: &Path, name: &str) -> PathBuf {
    path.ancestors()
        .nth(name.split('/').count())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.to_path_buf())
}

/// Opens `split` of hub dataset `id` through `hub`: only the parquet files of the split are
/// fetched. A repository without parquet files (image folders, IDX files) is fetched whole and
/// read as a local folder.
pub(crate) fn open(
    id: &HubId,
    hub: &dyn Hub,
    split: &str,
    spec: &DatasetSpec,
) -> Result<Box<dyn ImageDataset>, DatasetError> {
    let revision = id.revision.as_deref();
    let files = hub
        .list(RepoKind::Dataset, &id.repo, revision)
        .map_err(|e| hub_error(id, e))?;
    let fetch = |name: &str| {
        hub.file(RepoKind::Dataset, &id.repo, revision, name)
            .map_err(|e| hub_error(id, e))
    };
    let label = id.to_string();
    let parquet: Vec<layout::SplitFile> = files
        .iter()
        .filter_map(|f| layout::classify_repo_path(f))
        .collect();
    if parquet.is_empty() {
        let mut root = None;
        for name in files.iter().filter(|f| !f.starts_with('.')) {
            let path = fetch(name)?;
            root.get_or_insert_with(|| snapshot_root(&path, name));
        }
        let root = root.ok_or_else(|| DatasetError::Hub {
            source_name: label.clone(),
            message: format!(
                "dataset `{}` (revision `{}`) has no files",
                id.repo,
                id.revision_or_main()
            ),
        })?;
        return crate::open_local(&root, &label, split, spec);
    }
    let dataset = format!("{label} (on the hub)");
    let picked = layout::select_split(&parquet, &dataset, split)?;
    let mut paths = Vec::with_capacity(picked.len());
    for file in &picked {
        let rel = file.path.to_string_lossy().into_owned();
        paths.push((fetch(&rel)?, rel));
    }
    let root = snapshot_root(&paths[0].0, &paths[0].1);
    tracing::debug!(dataset = %label, split, files = paths.len(), root = %root.display(), "hub dataset");
    let paths: Vec<PathBuf> = paths.into_iter().map(|(p, _)| p).collect();
    Ok(Box::new(ParquetDataset::open(
        format!("'{label}' split '{split}'"),
        Some(&root),
        &paths,
        spec.image_column.as_deref(),
        spec.label_column.as_deref(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids() {
        let id = HubId::parse("tanganke/eurosat@abc123").unwrap();
        assert_eq!(id.repo, "tanganke/eurosat");
        assert_eq!(id.revision.as_deref(), Some("abc123"));
        let id = HubId::parse("hf://datasets/ylecun/mnist@refs/convert/parquet").unwrap();
        assert_eq!(id.repo, "ylecun/mnist");
        assert_eq!(id.revision.as_deref(), Some("refs/convert/parquet"));
        assert_eq!(HubId::parse("mnist").unwrap().repo, "mnist");
        assert!(HubId::parse("/abs/path").is_none());
        assert!(HubId::parse("a/b/c").is_none());
        assert!(HubId::parse("../x").is_none());
        assert!(HubId::parse("org/name@").is_none());
    }

    #[test]
    fn snapshot_roots() {
        assert_eq!(
            snapshot_root(Path::new("/c/snap/data/x.parquet"), "data/x.parquet"),
            PathBuf::from("/c/snap")
        );
        assert_eq!(
            snapshot_root(Path::new("/c/snap/x.parquet"), "x.parquet"),
            PathBuf::from("/c/snap")
        );
    }
}
