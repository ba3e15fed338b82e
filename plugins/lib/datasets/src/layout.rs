//! Which parquet files of a dataset repository make up a split.
//!
//! Hugging Face lays splits out in several ways; all are recognised:
//!
//! | layout | example | config | split |
//! |---|---|---|---|
//! | `push_to_hub` | `data/test-00000-of-00001.parquet` | - | `test` |
//! | older `push_to_hub` | `data/test-00000-of-00001-5d2d4a3e.parquet` | - | `test` |
//! | configs | `cropped_digits/test-00000-of-00002.parquet` | `cropped_digits` | `test` |
//! | `refs/convert/parquet` | `default/test/0000.parquet` | `default` | `test` |
//! | split folders | `test/0000.parquet` | - | `test` |
//! | plain | `test.parquet` | - | `test` |
//!
//! Shards are read in shard order. When no file is classified as the split, files inside a
//! folder named like the split, then files named `<anything>-<split>` (the old
//! `refs/convert/parquet` layout, `default/<dataset>-test.parquet`) are tried.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::DatasetError;

/// Folders that hold data but name no config.
const NEUTRAL_DIRS: &[&str] = &["data"];

/// One parquet file of a repository, with the config and split its location says it holds.
#[derive(Debug, Clone)]
pub(crate) struct SplitFile {
    /// The file.
    pub path: PathBuf,
    /// The folders between the repository root and the file.
    pub dirs: Vec<String>,
    /// The config (`None` for the default one).
    pub config: Option<String>,
    /// The split.
    pub split: String,
    /// The shard number, for ordering.
    pub shard: u64,
    /// The file name, for ordering ties.
    pub file_name: String,
}

impl SplitFile {
    /// `config/split`, or `split` for the default config.
    pub fn qualified(&self) -> String {
        match &self.config {
            Some(c) => format!("{c}/{}", self.split),
            None => self.split.clone(),
        }
    }
}

/// Lists the parquet files under `root` (following symlinks, as hub snapshots use them;
/// skipping hidden folders such as `.git` and `.cache`).
pub(crate) fn find_parquet_files(root: &Path) -> Result<Vec<SplitFile>, DatasetError> {
    let mut out = Vec::new();
    walk(root, &mut Vec::new(), &mut out, 0)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    dirs: &mut Vec<String>,
    out: &mut Vec<SplitFile>,
    depth: usize,
) -> Result<(), DatasetError> {
    if depth > 8 {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| DatasetError::io(dir, e))?;
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            dirs.push(name);
            walk(&path, dirs, out, depth + 1)?;
            dirs.pop();
        } else if name.ends_with(".parquet") && path.is_file() {
            out.push(classify(path, dirs.clone(), name));
        }
    }
    Ok(())
}

/// Classifies a repository path such as `data/test-00000-of-00001.parquet` (from a hub listing);
/// `None` for files that are not parquet or lie in hidden folders. `path` is the repository path
/// until the file is fetched.
pub(crate) fn classify_repo_path(rel: &str) -> Option<SplitFile> {
    if !rel.ends_with(".parquet") || rel.split('/').any(|p| p.starts_with('.')) {
        return None;
    }
    let mut dirs: Vec<String> = rel.split('/').map(str::to_string).collect();
    let name = dirs.pop()?;
    Some(classify(PathBuf::from(rel), dirs, name))
}

/// Parses `<split>-00003-of-00010` (optionally followed by `-<hash>`) into the split and the
/// shard number.
fn parse_shard(stem: &str) -> Option<(String, u64)> {
    let tokens: Vec<&str> = stem.split('-').collect();
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    for i in 1..tokens.len().saturating_sub(2) {
        let trailing = tokens.len() - (i + 3);
        if tokens[i + 1] == "of" && digits(tokens[i]) && digits(tokens[i + 2]) && trailing <= 1 {
            return Some((tokens[..i].join("-"), tokens[i].parse().ok()?));
        }
    }
    None
}

fn classify(path: PathBuf, dirs: Vec<String>, file_name: String) -> SplitFile {
    let stem = file_name.trim_end_matches(".parquet");
    let (split, shard, config_dirs) = if let Some((split, shard)) = parse_shard(stem) {
        (split, shard, dirs.clone())
    } else if stem.bytes().all(|b| b.is_ascii_digit()) && !dirs.is_empty() {
        // refs/convert/parquet: <config>/<split>/0000.parquet
        let split = dirs[dirs.len() - 1].clone();
        (
            split,
            stem.parse().unwrap_or(0),
            dirs[..dirs.len() - 1].to_vec(),
        )
    } else {
        (stem.to_string(), 0, dirs.clone())
    };
    let config: Vec<&str> = config_dirs
        .iter()
        .map(String::as_str)
        .filter(|d| !NEUTRAL_DIRS.contains(d))
        .collect();
    SplitFile {
        path,
        dirs,
        config: (!config.is_empty()).then(|| config.join("/")),
        split,
        shard,
        file_name,
    }
}

/// The splits found, as `split` or `config/split`, sorted and without repeats.
pub(crate) fn available_splits(files: &[SplitFile]) -> Vec<String> {
    let set: BTreeSet<String> = files.iter().map(SplitFile::qualified).collect();
    set.into_iter().collect()
}

/// Picks the files of `split` (`split` or `config/split`), in shard order.
pub(crate) fn select_split(
    files: &[SplitFile],
    dataset: &str,
    split: &str,
) -> Result<Vec<SplitFile>, DatasetError> {
    let (config, bare) = match split.split_once('/') {
        Some((c, s)) => (Some(c), s),
        None => (None, split),
    };
    let config_ok = |f: &SplitFile| match config {
        Some(c) => f.config.as_deref() == Some(c) || f.dirs.iter().any(|d| d == c),
        None => true,
    };
    let strategies: [&dyn Fn(&SplitFile) -> bool; 3] = [
        &|f| f.split == bare,
        &|f| f.dirs.iter().any(|d| d == bare),
        &|f| f.split.ends_with(&format!("-{bare}")),
    ];
    let mut matches = Vec::new();
    for strategy in strategies {
        matches = files
            .iter()
            .filter(|f| config_ok(f) && strategy(f))
            .cloned()
            .collect();
        if !matches.is_empty() {
            break;
        }
    }
    if matches.is_empty() {
        return Err(DatasetError::SplitNotFound {
            dataset: dataset.to_string(),
            split: split.to_string(),
            available: available_splits(files),
        });
    }
    let configs: BTreeSet<Option<String>> = matches.iter().map(|f| f.config.clone()).collect();
    if config.is_none() && configs.len() > 1 {
        let preferred = [None, Some("default".to_string())]
            .into_iter()
            .find(|c| configs.contains(c));
        match preferred {
            Some(keep) => matches.retain(|f| f.config == keep),
            None => {
                return Err(DatasetError::AmbiguousSplit {
                    dataset: dataset.to_string(),
                    split: split.to_string(),
                    configs: configs.into_iter().flatten().collect(),
                })
            }
        }
    }
    matches.sort_by(|a, b| {
        (&a.config, &a.dirs, a.shard, &a.file_name).cmp(&(
            &b.config,
            &b.dirs,
            b.shard,
            &b.file_name,
        ))
    });
    Ok(matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rel: &str) -> SplitFile {
        let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
        let name = parts.pop().unwrap();
        classify(PathBuf::from(rel), parts, name)
    }

    #[test]
    fn classifies_hf_layouts() {
        let f = file("data/test-00000-of-00001.parquet");
        assert_eq!((f.config, f.split.as_str(), f.shard), (None, "test", 0));
        let f = file("data/gaussian_noise-00002-of-00003-5d2d4a3e8b2f5a6c.parquet");
        assert_eq!(
            (f.config, f.split.as_str(), f.shard),
            (None, "gaussian_noise", 2)
        );
        let f = file("cropped_digits/test-00001-of-00002.parquet");
        assert_eq!(f.config.as_deref(), Some("cropped_digits"));
        assert_eq!((f.split.as_str(), f.shard), ("test", 1));
        let f = file("default/test/0003.parquet");
        assert_eq!(f.config.as_deref(), Some("default"));
        assert_eq!((f.split.as_str(), f.shard), ("test", 3));
        let f = file("test.parquet");
        assert_eq!((f.config, f.split.as_str()), (None, "test"));
        let f = file("train-clean-00000-of-00001.parquet");
        assert_eq!(f.split, "train-clean");
    }

    #[test]
    fn orders_shards_numerically() {
        let files = vec![
            file("data/train-00010-of-00011.parquet"),
            file("data/train-00002-of-00011.parquet"),
            file("data/test-00000-of-00001.parquet"),
        ];
        let picked = select_split(&files, "d", "train").unwrap();
        let shards: Vec<u64> = picked.iter().map(|f| f.shard).collect();
        assert_eq!(shards, vec![2, 10]);
    }

    #[test]
    fn falls_back_to_old_convert_names() {
        let files = vec![file("default/eurosat-test.parquet")];
        assert_eq!(select_split(&files, "d", "test").unwrap().len(), 1);
    }
}
