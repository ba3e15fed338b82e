//! Weights of a Hugging Face checkpoint: memory-mapped safetensors files (single or sharded)
//! with strict bookkeeping, so that a missing, mis-shaped or unused tensor is an error naming it.
//!
//! [`VarBuilder`] mirrors candle's: model code descends the weight names with
//! `vb.pp("encoder").pp("layers").pp(i)` and asks for each tensor with the shape its config
//! implies. The store remembers every name that was asked for, and
//! [`WeightStore::check_all_used`] turns leftovers into an error: a checkpoint with more layers
//! than its config, or a renamed tensor, must not load silently.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fusion_plugin_api::{DType, Model};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{ClipError, Result};
use crate::tensor::Tensor;

/// Name of a single-file checkpoint's weights.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// Name of a sharded checkpoint's index.
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
}

enum Source {
    /// Bytes `[start, end)` of `files[file]`, stored as `dtype`.
    Mapped {
        file: usize,
        dtype: Dtype,
        start: usize,
        end: usize,
    },
    /// A tensor handed over in memory (e.g. a freshly merged model).
    Owned(Tensor),
    /// A tensor of the store's plugin-api model, read (and converted to f32) when asked for.
    Model(DType),
}

struct Entry {
    shape: Vec<usize>,
    source: Source,
}

/// All tensors of one checkpoint, by name.
pub struct WeightStore {
    checkpoint: PathBuf,
    files: Vec<MappedFile>,
    entries: BTreeMap<String, Entry>,
    /// The state dict behind [`Source::Model`] entries.
    model: Option<Model>,
    // A Mutex rather than a RefCell so the store stays `Sync`; loading is single-threaded, so
    // it is never contended.
    used: Mutex<BTreeSet<String>>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl WeightStore {
    /// Opens the weights of a checkpoint directory: `model.safetensors.index.json` with its
    /// shards when present, else `model.safetensors`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let index_path = dir.join(SAFETENSORS_INDEX_FILE);
        if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| ClipError::Io {
                path: index_path.clone(),
                source,
            })?;
            let index: ShardIndex =
                serde_json::from_str(&text).map_err(|source| ClipError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            // The shards in order of first appearance, each once.
            let mut shards: Vec<PathBuf> = Vec::new();
            for file in index.weight_map.values() {
                let path = dir.join(file);
                if !shards.contains(&path) {
                    shards.push(path);
                }
            }
            return Self::open_files(dir, &shards);
        }
        let single = dir.join(SAFETENSORS_FILE);
        if single.is_file() {
            return Self::open_files(dir, &[single]);
        }
        Err(ClipError::Io {
            path: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX_FILE} found (only safetensors checkpoints are supported)"),
            ),
        })
    }

    /// Opens the given safetensors files as one checkpoint; `checkpoint` names it in errors.
    pub fn open_files(checkpoint: impl AsRef<Path>, files: &[PathBuf]) -> Result<Self> {
        let mut store = Self {
            checkpoint: checkpoint.as_ref().to_path_buf(),
            files: Vec::new(),
            entries: BTreeMap::new(),
            model: None,
            used: Mutex::new(BTreeSet::new()),
        };
        for path in files {
            store.add_file(path)?;
        }
        Ok(store)
    }

    /// Wraps in-memory tensors (e.g. a merged state dict) so models can load from them exactly
    /// as from a file; `description` names the source in errors.
    pub fn from_tensors(
        description: impl AsRef<Path>,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Self {
        let entries = tensors
            .into_iter()
            .map(|(name, t)| {
                let entry = Entry {
                    shape: t.shape().to_vec(),
                    source: Source::Owned(t),
                };
                (name, entry)
            })
            .collect();
        Self {
            checkpoint: description.as_ref().to_path_buf(),
            files: Vec::new(),
            entries,
            model: None,
            used: Mutex::new(BTreeSet::new()),
        }
    }

    /// Wraps a plugin-api [`Model`] (a lazy state dict, e.g. a merged model handed over by
    /// another plugin) so models load from it exactly as from a checkpoint: names and shapes are
    /// listed now, each tensor is read and converted to f32 only when a model asks for it, and
    /// the same missing / mis-shaped / unused checks apply. `description` names it in errors.
    pub fn from_model(description: impl AsRef<Path>, model: &Model) -> Result<Self> {
        let checkpoint = description.as_ref().to_path_buf();
        let err = |name: &str| {
            let checkpoint = checkpoint.clone();
            let name = name.to_string();
            move |cause| ClipError::StateDict {
                name,
                model: checkpoint,
                cause,
            }
        };
        let mut entries = BTreeMap::new();
        for name in model.names().map_err(err("<names>"))? {
            let info = model.info(&name).map_err(err(&name))?;
            let entry = Entry {
                shape: info.shape,
                source: Source::Model(info.dtype),
            };
            entries.insert(name, entry);
        }
        Ok(Self {
            checkpoint,
            files: Vec::new(),
            entries,
            model: Some(model.clone()),
            used: Mutex::new(BTreeSet::new()),
        })
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|source| ClipError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is read-only, and checkpoint files are not modified while a model
        // loads from them; this is how safetensors is meant to be read (candle and the Python
        // library do the same). Copying multi-GiB checkpoints into memory instead would defeat
        // lazy, tensor-by-tensor loading.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ClipError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |source| ClipError::Safetensors {
            file: path.to_path_buf(),
            source,
        };
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(bad)?;
        // `read_metadata` checks offsets against the buffer; `deserialize` would re-parse the
        // header, so compute the data start ourselves: 8-byte length, then the JSON header.
        let data_start = 8 + header_len;
        let file_index = self.files.len();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            if let Some(previous) = self.entries.get(&name) {
                let first = match &previous.source {
                    Source::Mapped { file, .. } => self.files[*file].path.clone(),
                    Source::Owned(_) | Source::Model(_) => self.checkpoint.clone(),
                };
                return Err(ClipError::DuplicateTensor {
                    name,
                    first,
                    second: path.to_path_buf(),
                });
            }
            self.entries.insert(
                name,
                Entry {
                    shape: info.shape.clone(),
                    source: Source::Mapped {
                        file: file_index,
                        dtype: info.dtype,
                        start: data_start + start,
                        end: data_start + end,
                    },
                },
            );
        }
        self.files.push(MappedFile {
            path: path.to_path_buf(),
            mmap,
        });
        Ok(())
    }

    /// The checkpoint this store reads (directory, file, or description).
    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The stored shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// An auxiliary file of the checkpoint (such as `config.json`): the model's own for a store
    /// over a plugin-api [`Model`], the file beside the weights otherwise; `None` when absent.
    pub fn aux_file(&self, name: &str) -> Option<Vec<u8>> {
        match &self.model {
            Some(m) => m.file(name).ok(),
            None if self.checkpoint.is_dir() => std::fs::read(self.checkpoint.join(name)).ok(),
            None => std::fs::read(self.checkpoint.parent()?.join(name)).ok(),
        }
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// A builder at the root of the name hierarchy.
    pub fn root(&self) -> VarBuilder<'_> {
        VarBuilder {
            store: self,
            prefix: String::new(),
        }
    }

    /// Reads a tensor as f32 (converting f16/bf16), checking its shape, and records it as used.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let entry = self.entry(name, expected)?;
        let tensor = match &entry.source {
            Source::Owned(t) => t.clone(),
            Source::Model(dtype) => {
                if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                    return Err(ClipError::UnsupportedDtype {
                        name: name.to_string(),
                        dtype: dtype.to_string(),
                        file: self.checkpoint.clone(),
                    });
                }
                let model = self
                    .model
                    .as_ref()
                    .expect("Model entries come with their model");
                let (data, _) = model.to_f32(name).map_err(|cause| ClipError::StateDict {
                    name: name.to_string(),
                    model: self.checkpoint.clone(),
                    cause,
                })?;
                Tensor::new(entry.shape.clone(), data)?
            }
            Source::Mapped {
                file,
                dtype,
                start,
                end,
            } => {
                let bytes = &self.files[*file].mmap[*start..*end];
                let data =
                    decode_f32(bytes, *dtype).ok_or_else(|| ClipError::UnsupportedDtype {
                        name: name.to_string(),
                        dtype: format!("{dtype:?}"),
                        file: self.files[*file].path.clone(),
                    })?;
                Tensor::new(entry.shape.clone(), data)?
            }
        };
        self.mark_used(name);
        Ok(tensor)
    }

    /// The entry `name`, checked to exist with the `expected` shape.
    fn entry(&self, name: &str, expected: &[usize]) -> Result<&Entry> {
        let Some(entry) = self.entries.get(name) else {
            return Err(ClipError::MissingTensor {
                name: name.to_string(),
                expected: expected.to_vec(),
                checkpoint: self.checkpoint.clone(),
            });
        };
        if entry.shape != expected {
            return Err(ClipError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: entry.shape.clone(),
                file: self.file_of(entry).to_path_buf(),
            });
        }
        Ok(entry)
    }

    /// For a store over a plugin-api [`Model`] ([`WeightStore::from_model`]): the model of
    /// float tensor `name`, after the checks of [`WeightStore::get`], so that a device loader
    /// can ask it for the tensor on the device ([`Model::device_tensor`]) and call
    /// [`WeightStore::mark_used`] when it got it. `None` for other stores and non-float tensors
    /// (read those with `get`).
    pub(crate) fn model_tensor(&self, name: &str, expected: &[usize]) -> Result<Option<&Model>> {
        let entry = self.entry(name, expected)?;
        Ok(match (&entry.source, &self.model) {
            (Source::Model(DType::F32 | DType::F16 | DType::BF16), Some(model)) => Some(model),
            _ => None,
        })
    }

    /// Accepts a tensor the model does not need (a persisted buffer such as
    /// `embeddings.position_ids`, which older transformers saved and newer ones recompute),
    /// checking its shape when present. Absent is fine.
    pub fn skip_buffer(&self, name: &str, expected: &[usize]) -> Result<()> {
        if let Some(entry) = self.entries.get(name) {
            if entry.shape != expected {
                return Err(ClipError::ShapeMismatch {
                    name: name.to_string(),
                    expected: expected.to_vec(),
                    actual: entry.shape.clone(),
                    file: self.file_of(entry).to_path_buf(),
                });
            }
            self.mark_used(name);
        }
        Ok(())
    }

    /// Fails with [`ClipError::UnexpectedTensors`] when a tensor selected by `in_scope` was
    /// never read: the part of the checkpoint being loaded must be used completely.
    pub fn check_all_used(&self, in_scope: impl Fn(&str) -> bool) -> Result<()> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let unused: Vec<(String, Vec<usize>)> = self
            .entries
            .iter()
            .filter(|(name, _)| in_scope(name) && !used.contains(*name))
            .map(|(name, e)| (name.clone(), e.shape.clone()))
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(ClipError::UnexpectedTensors {
                checkpoint: self.checkpoint.clone(),
                tensors: unused,
            })
        }
    }

    /// Records `name` as used (for [`WeightStore::check_all_used`]).
    pub(crate) fn mark_used(&self, name: &str) {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
    }

    fn file_of(&self, entry: &Entry) -> &Path {
        match &entry.source {
            Source::Mapped { file, .. } => &self.files[*file].path,
            Source::Owned(_) | Source::Model(_) => &self.checkpoint,
        }
    }
}

/// Little-endian f32/f16/bf16 bytes to f32; `None` for other dtypes. Byte-wise, because a
/// tensor's offset in a mapped file need not be 4-byte aligned.
fn decode_f32(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    let data = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(data)
}

/// A position in the weight-name hierarchy, like candle's `VarBuilder`: `pp` descends one
/// level, `get` reads a tensor under the current prefix.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    store: &'a WeightStore,
    prefix: String,
}

impl<'a> VarBuilder<'a> {
    /// Descends into `name` (`vb.pp("encoder").pp("layers").pp(3)`).
    pub fn pp(&self, name: impl Display) -> VarBuilder<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        VarBuilder {
            store: self.store,
            prefix,
        }
    }

    /// The full name of `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The current prefix (empty at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The store this builder reads from.
    pub fn store(&self) -> &'a WeightStore {
        self.store
    }

    /// Reads `prefix.name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.store.get(&self.path(name), shape)
    }

    /// Accepts an optional persisted buffer `prefix.name` (see [`WeightStore::skip_buffer`]).
    pub fn skip_buffer(&self, name: &str, shape: &[usize]) -> Result<()> {
        self.store.skip_buffer(&self.path(name), shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_half_precisions() {
        let f16 = half::f16::from_f32(1.5).to_le_bytes();
        assert_eq!(decode_f32(&f16, Dtype::F16), Some(vec![1.5]));
        let bf16 = half::bf16::from_f32(-2.0).to_le_bytes();
        assert_eq!(decode_f32(&bf16, Dtype::BF16), Some(vec![-2.0]));
        assert_eq!(decode_f32(&[0; 8], Dtype::I64), None);
    }

    #[test]
    fn in_memory_store_tracks_usage() {
        let t = |n: usize| Tensor::zeros(vec![n]);
        let store = WeightStore::from_tensors(
            "merged",
            [("a.x".to_string(), t(2)), ("a.y".to_string(), t(3))],
        );
        let vb = store.root().pp("a");
        assert_eq!(vb.get("x", &[2]).unwrap().shape(), &[2]);
        let err = vb.get("x", &[3]).unwrap_err().to_string();
        assert!(
            err.contains("a.x") && err.contains("[2]") && err.contains("[3]"),
            "{err}"
        );
        let err = store.check_all_used(|_| true).unwrap_err().to_string();
        assert!(err.contains("a.y") && !err.contains("a.x"), "{err}");
        store.check_all_used(|n| n != "a.y").unwrap();
    }
}
