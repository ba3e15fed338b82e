//! Checkpoints named by Hugging Face hub id (`org/name`, `name`, `org/name@revision`), fetched
//! through the host's hub ([`fusion_plugin_api::hub`]): read from the Hugging Face cache, or
//! downloaded into it first when missing (unless the run is offline). The cache itself belongs to
//! the host's `fusion-hub`; nothing here reads it directly.

use std::path::{Path, PathBuf};

use fusion_plugin_api::hub::{self, Hub, RepoKind};
use fusion_plugin_api::{Error, Result};

/// The weights file of a single-file checkpoint.
const SINGLE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
const INDEX: &str = "model.safetensors.index.json";

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

/// `org/name@revision` as (`org/name`, `Some(revision)`); no `@` means the default branch.
pub fn split_revision(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (spec, None),
    }
}

/// Whether a top-level repository file is one `from_pretrained` reads besides the weights:
/// configuration, tokenizer and processor files.
fn is_auxiliary(name: &str) -> bool {
    !name.contains('/')
        && !name.starts_with('.')
        && [".json", ".txt", ".model"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// The snapshot folder of hub checkpoint `spec` (`org/name[@revision]`), with its configuration,
/// tokenizer and processor files and its safetensors weights (`model.safetensors`, or every
/// shard `model.safetensors.index.json` names), through the installed hub.
pub fn snapshot(spec: &str) -> Result<PathBuf> {
    snapshot_with(hub::current()?.as_ref(), spec)
}

/// [`snapshot`] through `hub`.
pub fn snapshot_with(hub: &dyn Hub, spec: &str) -> Result<PathBuf> {
    let (repo, revision) = split_revision(spec);
    let files = hub.list(RepoKind::Model, repo, revision)?;
    let has = |name: &str| files.iter().any(|f| f == name);
    let fetch = |name: &str| hub.file(RepoKind::Model, repo, revision, name);
    let mut wanted: Vec<String> = files.iter().filter(|f| is_auxiliary(f)).cloned().collect();
    if has(SINGLE) {
        wanted.push(SINGLE.to_string());
    } else if has(INDEX) {
        let index = fetch(INDEX)?;
        wanted.extend(shards(&index)?);
    } else {
        // Offline the listing is the cached snapshot, which may lack the weights (an earlier
        // download failed): asking for them names the real problem (not in the cache, not on
        // the hub) along with what the repository does have.
        match fetch(SINGLE) {
            Ok(_) => wanted.push(SINGLE.to_string()),
            Err(e) => {
                return Err(Error::new(
                    e.kind,
                    format!(
                        "{}; model `{spec}` lists neither {SINGLE} nor {INDEX} (its files: {}), \
                         and only safetensors checkpoints are read",
                        e.message(),
                        if files.is_empty() {
                            "none".to_string()
                        } else {
                            files.join(", ")
                        }
                    ),
                ))
            }
        }
    }
    wanted.sort();
    wanted.dedup();
    let mut folder: Option<PathBuf> = None;
    for name in &wanted {
        let path = fetch(name)?;
        let root = snapshot_root(&path, name);
        match &folder {
            None => folder = Some(root),
            Some(f) if *f != root => {
                return Err(Error::io(format!(
                    "model `{spec}`: its files came from two snapshots ({} and {}); the revision \
                     moved during the run, try again",
                    f.display(),
                    root.display()
                )))
            }
            Some(_) => {}
        }
    }
    folder.ok_or_else(|| Error::model(format!("model `{spec}`: the repository is empty")))
}

/// The shard files a `model.safetensors.index.json` names, sorted.
fn shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| Error::io(format!("cannot read {}: {e}", index.display())))?;
    let parsed: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(format!("{} is not valid JSON: {e}", index.display())))?;
    let map = parsed
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::model(format!("{} has no `weight_map` object", index.display())))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// The snapshot folder holding `path`, which is repository file `name` in it.
fn snapshot_root(path: &Path, name: &str) -> PathBuf {
    let depth = name.split('/').count();
    path.ancestors()
        .nth(depth)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A hub over fixed in-memory repositories, recording what was fetched.
    struct MapHub {
        dir: tempfile::TempDir,
        files: BTreeMap<&'static str, &'static str>,
        fetched: Mutex<Vec<String>>,
    }

    impl Hub for MapHub {
        fn file(&self, _: RepoKind, repo: &str, rev: Option<&str>, name: &str) -> Result<PathBuf> {
            let text = self
                .files
                .get(name)
                .ok_or_else(|| Error::io(format!("{repo}: no {name}")))?;
            let path = self.dir.path().join(rev.unwrap_or("main")).join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            self.fetched.lock().unwrap().push(name.to_string());
            Ok(path)
        }
        fn list(&self, _: RepoKind, _: &str, _: Option<&str>) -> Result<Vec<String>> {
            Ok(self.files.keys().map(|k| k.to_string()).collect())
        }
    }

    fn hub(files: &[(&'static str, &'static str)]) -> MapHub {
        MapHub {
            dir: tempfile::tempdir().unwrap(),
            files: files.iter().copied().collect(),
            fetched: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn fetches_configs_and_safetensors_weights_only() {
        let h = hub(&[
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("merges.txt", ""),
            ("model.safetensors", "w"),
            ("pytorch_model.bin", "w"),
            ("flax_model.msgpack", "w"),
            ("onnx/model.onnx", "w"),
            (".gitattributes", ""),
        ]);
        let dir = snapshot_with(&h, "org/name@v1").unwrap();
        assert_eq!(dir, h.dir.path().join("v1"));
        assert_eq!(
            *h.fetched.lock().unwrap(),
            vec![
                "config.json",
                "merges.txt",
                "model.safetensors",
                "tokenizer.json"
            ]
        );
    }

    #[test]
    fn sharded_checkpoints_fetch_the_shards_the_index_names() {
        let h = hub(&[
            ("config.json", "{}"),
            (
                INDEX,
                r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
            ),
            ("model-00001-of-00002.safetensors", "1"),
            ("model-00002-of-00002.safetensors", "2"),
        ]);
        snapshot_with(&h, "org/name").unwrap();
        let fetched = h.fetched.lock().unwrap().clone();
        for f in [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            INDEX,
        ] {
            assert!(fetched.contains(&f.to_string()), "{fetched:?}");
        }
    }

    #[test]
    fn a_repository_without_safetensors_is_named() {
        let h = hub(&[("config.json", "{}"), ("pytorch_model.bin", "w")]);
        let err = snapshot_with(&h, "org/old").unwrap_err();
        assert!(
            err.message().contains("org/old: no model.safetensors")
                && err.message().contains("model `org/old` lists neither")
                && err.message().contains("pytorch_model.bin"),
            "{err}"
        );
        assert_eq!(err.kind, fusion_plugin_api::ErrorKind::Io);
    }

    #[test]
    fn ids_and_revisions() {
        assert!(looks_like_hub_id("openai/clip-vit-base-patch32"));
        assert!(looks_like_hub_id("gpt2@v1"));
        assert!(!looks_like_hub_id("/abs/model"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert_eq!(split_revision("o/n@abc"), ("o/n", Some("abc")));
        assert_eq!(split_revision("o/n"), ("o/n", None));
    }
}
