//! Reading checkpoints lazily: single safetensors files and Hugging Face checkpoint folders
//! (`model.safetensors`, or shards listed in `model.safetensors.index.json`), memory-mapped.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use fusion_plugin_api::{DType, Error, Result, StateDict, TensorInfo};
use memmap2::Mmap;
use safetensors::SafeTensors;

/// One memory-mapped safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Byte offset of the data section in the file.
    data_start: usize,
    tensors: HashMap<String, (TensorInfo, (usize, usize))>,
    /// Names in file (offset) order.
    order: Vec<String>,
    /// The byte range (in the map) of the tensor read last; its pages are handed back to the
    /// page cache when another tensor of this shard is read (see [`Shard::bytes`]).
    last: std::sync::Mutex<Option<(usize, usize)>>,
}

fn dtype_from_safetensors(d: safetensors::Dtype, path: &Path, name: &str) -> Result<DType> {
    use safetensors::Dtype as S;
    Ok(match d {
        S::BOOL => DType::Bool,
        S::U8 => DType::U8,
        S::I8 => DType::I8,
        S::I16 => DType::I16,
        S::U16 => DType::U16,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::I32 => DType::I32,
        S::U32 => DType::U32,
        S::F32 => DType::F32,
        S::I64 => DType::I64,
        S::U64 => DType::U64,
        S::F64 => DType::F64,
        other => {
            return Err(Error::model(format!(
                "{}: tensor `{name}` has dtype {other:?}, which fusion-host does not support",
                path.display()
            )))
        }
    })
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path)
            .map_err(|e| Error::io(format!("cannot open checkpoint {}: {e}", path.display())))?;
        // SAFETY: the file is only read. Like every mmap-based loader (safetensors, candle) we
        // rely on nobody truncating it while the run is in progress.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::io(format!("cannot map checkpoint {}: {e}", path.display())))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| {
            Error::model(format!(
                "{} is not a valid safetensors file (truncated or corrupt?): {e}",
                path.display()
            ))
        })?;
        let mut tensors = HashMap::new();
        let order = metadata.offset_keys();
        for name in &order {
            let info = metadata
                .info(name)
                .expect("offset_keys lists known tensors");
            let dtype = dtype_from_safetensors(info.dtype, path, name)?;
            tensors.insert(
                name.clone(),
                (
                    TensorInfo {
                        dtype,
                        shape: info.shape.clone(),
                    },
                    info.data_offsets,
                ),
            );
        }
        Ok(Shard {
            path: path.to_owned(),
            map,
            data_start: 8 + header_len,
            tensors,
            order,
            last: std::sync::Mutex::new(None),
        })
    }

    /// The bytes of tensor `name`, borrowed from the map.
    ///
    /// Algorithms stream: they read one tensor of a model, use it, then read the next. Pages of
    /// a mapped file stay in the process's resident set once touched, so a pass over nine 350 MB
    /// checkpoints would end with 3 GB resident although only a few tensors are in use. Reading
    /// a tensor therefore releases the pages of the one read before it from this mapping
    /// (`MADV_DONTNEED`): they stay in the page cache, and touching them again (a slice still
    /// held, a second pass) maps them back from it, with the same bytes.
    fn bytes(&self, name: &str) -> Option<&[u8]> {
        let (_, (start, end)) = self.tensors.get(name)?;
        let range = (self.data_start + start, self.data_start + end);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prev) = last.replace(range) {
            if prev != range {
                self.release(prev);
            }
        }
        Some(&self.map[range.0..range.1])
    }

    /// Drop the whole pages inside `[start, end)` from this process's mapping.
    #[cfg(unix)]
    fn release(&self, (start, end): (usize, usize)) {
        // Whole 64 KiB blocks: a multiple of every common page size (4, 16, 64 KiB).
        const PAGE: usize = 65536;
        let (lo, hi) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
        if hi <= lo {
            return;
        }
        // SAFETY: the map is a read-only, shared mapping of a file that is only read (see
        // `Shard::open`). MADV_DONTNEED on such pages only unmaps them from this process: a
        // later access, through a slice handed out before or a new one, faults them back in
        // from the page cache with the file's (unchanged) contents. Nothing is written.
        let r = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
        };
        if let Err(e) = r {
            tracing::debug!(path = %self.path.display(), "madvise(DONTNEED) failed: {e}");
        }
    }

    #[cfg(not(unix))]
    fn release(&self, _range: (usize, usize)) {}
}

/// A checkpoint opened lazily from disk.
pub struct Checkpoint {
    /// What the user gave (for messages).
    source: String,
    shards: Vec<Shard>,
    /// Tensor name -> shard index, in checkpoint order.
    index: Vec<(String, usize)>,
    lookup: HashMap<String, usize>,
    files: BTreeMap<String, PathBuf>,
}

/// Files of a checkpoint folder that are weights (not carried as auxiliary files).
fn is_weight_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".bin")
        || name.ends_with(".pt")
        || name.ends_with(".pth")
        || name.ends_with(".ckpt")
        || name.ends_with(".index.json")
        || name.starts_with('.')
}

/// A checkpoint's `config.json` must be a JSON object: the merged model carries it, and a broken
/// one would make a saved folder that looks complete but that no loader reads.
fn check_config(path: &Path, source: &str) -> Result<()> {
    let text = std::fs::read(path)
        .map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))?;
    match serde_json::from_slice::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(Error::model(format!(
            "{} (of `{source}`) is not a JSON object",
            path.display()
        ))),
        Err(e) => Err(Error::model(format!(
            "{} (of `{source}`) is not valid JSON: {e}",
            path.display()
        ))),
    }
}

impl Checkpoint {
    /// Open a `.safetensors` file or a Hugging Face checkpoint folder.
    pub fn open(path: &Path, source: &str) -> Result<Checkpoint> {
        if path.is_dir() {
            Self::open_folder(path, source)
        } else if path.is_file() {
            Self::from_shards(source, vec![Shard::open(path)?], BTreeMap::new())
        } else {
            Err(Error::io(format!(
                "checkpoint not found: {} (for `{source}`)",
                path.display()
            )))
        }
    }

    fn open_folder(dir: &Path, source: &str) -> Result<Checkpoint> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let shards = if index.is_file() {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| Error::io(format!("cannot read {}: {e}", index.display())))?;
            let parsed: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::model(format!("{} is not valid JSON: {e}", index.display())))?;
            let map = parsed
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::model(format!("{} has no `weight_map` object", index.display()))
                })?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            files.sort();
            files.dedup();
            let shards = files
                .iter()
                .map(|f| Shard::open(&dir.join(f)))
                .collect::<Result<Vec<_>>>()?;
            // Every tensor the index names must be in the shard it points at.
            for (name, file) in map {
                let file = file.as_str().unwrap_or_default();
                let shard = shards.iter().find(|s| s.path.ends_with(file));
                if !shard.is_some_and(|s| s.tensors.contains_key(name)) {
                    return Err(Error::model(format!(
                        "{}: tensor `{name}` is listed in shard `{file}` but is not in it",
                        index.display()
                    )));
                }
            }
            shards
        } else if single.is_file() {
            vec![Shard::open(&single)?]
        } else {
            return Err(Error::model(format!(
                "{} holds neither model.safetensors nor model.safetensors.index.json (for `{source}`)",
                dir.display()
            )));
        };
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("cannot list {}: {e}", dir.display())))?
        {
            let entry =
                entry.map_err(|e| Error::io(format!("cannot list {}: {e}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.path().is_file() && !is_weight_file(&name) {
                files.insert(name, entry.path());
            }
        }
        if let Some(config) = files.get("config.json") {
            check_config(config, source)?;
        }
        Self::from_shards(source, shards, files)
    }

    fn from_shards(
        source: &str,
        shards: Vec<Shard>,
        files: BTreeMap<String, PathBuf>,
    ) -> Result<Checkpoint> {
        let mut index = Vec::new();
        let mut lookup = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in &shard.order {
                if lookup.insert(name.clone(), i).is_some() {
                    return Err(Error::model(format!(
                        "tensor `{name}` appears in more than one shard of `{source}`"
                    )));
                }
                index.push((name.clone(), i));
            }
        }
        Ok(Checkpoint {
            source: source.to_string(),
            shards,
            index,
            lookup,
            files,
        })
    }

    fn shard(&self, name: &str) -> Result<&Shard> {
        self.lookup
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| Error::model(format!("model `{}` has no tensor `{name}`", self.source)))
    }
}

impl Checkpoint {
    /// Drop from this process's resident set the whole pages of `bytes`, a stretch of a tensor
    /// that [`StateDict::data`] handed out and that the caller is done with for now: a reader
    /// that passes over a large tensor in blocks keeps its memory to a block, not the tensor. A
    /// later access maps the pages back from the page cache, with the same bytes. Bytes outside
    /// this checkpoint's mapped files are left alone.
    pub fn release(&self, bytes: &[u8]) {
        let (p, len) = (bytes.as_ptr() as usize, bytes.len());
        for shard in &self.shards {
            let base = shard.map.as_ptr() as usize;
            if p >= base && p + len <= base + shard.map.len() {
                shard.release((p - base, p - base + len));
                return;
            }
        }
    }
}

impl StateDict for Checkpoint {
    fn names(&self) -> Result<Vec<String>> {
        Ok(self.index.iter().map(|(n, _)| n.clone()).collect())
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        Ok(self.shard(name)?.tensors[name].0.clone())
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let shard = self.shard(name)?;
        Ok(Cow::Borrowed(shard.bytes(name).expect("looked up above")))
    }
    fn file_names(&self) -> Result<Vec<String>> {
        Ok(self.files.keys().cloned().collect())
    }
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        let path = self
            .files
            .get(name)
            .ok_or_else(|| Error::model(format!("model `{}` has no file `{name}`", self.source)))?;
        std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn values(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes())
            .collect()
    }

    #[test]
    fn bytes_stay_right_after_the_pages_behind_the_cursor_are_released() {
        // Three tensors of 1 MiB: reading one releases the whole 64 KiB blocks of the previous.
        let n = 1 << 18;
        let raw: Vec<(String, Vec<u8>)> = (0..3)
            .map(|i| (format!("t{i}"), values(n, i as u32)))
            .collect();
        let views: Vec<(String, TensorView<'_>)> = raw
            .iter()
            .map(|(name, b)| {
                (
                    name.clone(),
                    TensorView::new(safetensors::Dtype::F32, vec![n], b).unwrap(),
                )
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let ck = Checkpoint::open(&path, "test").unwrap();

        let held = ck.data("t0").unwrap();
        assert_eq!(&*held, &raw[0].1[..]);
        // Reading t1 releases t0's pages; the slice still held reads the file's bytes again.
        assert_eq!(&*ck.data("t1").unwrap(), &raw[1].1[..]);
        assert_eq!(&*held, &raw[0].1[..]);
        // A second pass, out of order.
        for i in [2, 0, 1, 1, 2, 0] {
            assert_eq!(&*ck.data(&format!("t{i}")).unwrap(), &raw[i].1[..], "t{i}");
        }
        // A reader in blocks releases the stretches it has read; bytes not in the maps are
        // left alone.
        let t2 = ck.data("t2").unwrap();
        for block in t2.chunks(100_000) {
            ck.release(block);
        }
        ck.release(&raw[1].1);
        assert_eq!(&*t2, &raw[2].1[..]);
        assert_eq!(&*ck.data("t2").unwrap(), &raw[2].1[..]);
        assert_eq!(&*ck.data("t1").unwrap(), &raw[1].1[..]);
    }
}
