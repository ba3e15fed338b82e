//! Writing a merged model as a Hugging Face checkpoint: `config.json` and the other files the
//! model carries, safetensors weights sharded past a size limit with
//! `model.safetensors.index.json`. Tensors are streamed one at a time (a lazily merged model is
//! computed while it is written), and everything goes to a temporary name that is renamed into
//! place at the end, so an interrupted run never leaves something that looks complete.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use fusion_plugin_api::{bytes_to_f32, f32_to_bytes, DType, Model, TensorInfo};
use serde_json::{json, Value};

use crate::error::{plugin, usage};

/// How to write the checkpoint (`merged_model_save_kwargs`).
#[derive(Debug, Clone, PartialEq)]
pub struct SaveOptions {
    /// Store float tensors in this dtype instead of the input dtype.
    pub dtype: Option<DType>,
    /// Start a new shard before a shard would exceed this many bytes.
    pub max_shard_size: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        // transformers' `save_pretrained` default.
        Self {
            dtype: None,
            max_shard_size: 5_000_000_000,
        }
    }
}

/// Parse a size such as `5GB`, `500MB`, `2GiB` or a plain byte count.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_uppercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((num * mult) as u64)
}

impl SaveOptions {
    /// From `merged_model_save_kwargs` (null or a mapping). Recognised: `dtype` (also
    /// `torch_dtype`, `model_dtype`) and `max_shard_size`; other keys (e.g.
    /// `safe_serialization`) are accepted and ignored with a note.
    pub fn from_kwargs(kwargs: Option<&Value>) -> anyhow::Result<SaveOptions> {
        let mut opts = SaveOptions::default();
        let Some(kwargs) = kwargs.filter(|v| !v.is_null()) else {
            return Ok(opts);
        };
        let map = kwargs.as_object().ok_or_else(|| {
            usage(format!(
                "merged_model_save_kwargs must be a mapping, got {kwargs}"
            ))
        })?;
        for (k, v) in map {
            match k.as_str() {
                "dtype" | "torch_dtype" | "model_dtype" => {
                    if v.is_null() {
                        continue;
                    }
                    let name = v.as_str().unwrap_or_default();
                    let dtype = DType::parse(name).filter(|d| d.is_float()).ok_or_else(|| {
                        usage(format!(
                            "merged_model_save_kwargs.{k}: `{v}` is not a float dtype (float32, float16, bfloat16)"
                        ))
                    })?;
                    opts.dtype = Some(dtype);
                }
                "max_shard_size" => {
                    let size = match v {
                        Value::Number(n) => n.as_u64(),
                        Value::String(s) => parse_size(s),
                        _ => None,
                    };
                    opts.max_shard_size = size.filter(|s| *s > 0).ok_or_else(|| {
                        usage(format!(
                            "merged_model_save_kwargs.max_shard_size: cannot read `{v}` as a size"
                        ))
                    })?;
                }
                other => tracing::info!("merged_model_save_kwargs.{other} is ignored"),
            }
        }
        Ok(opts)
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct SaveSummary {
    pub path: PathBuf,
    pub shards: usize,
    pub tensors: usize,
    pub bytes: u64,
}

fn header_bytes(entries: &[(String, TensorInfo, u64, u64)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    for (name, info, start, end) in entries {
        header.insert(
            name.clone(),
            json!({"dtype": info.dtype.name(), "shape": info.shape, "data_offsets": [start, end]}),
        );
    }
    let mut bytes = serde_json::to_vec(&Value::Object(header)).expect("header serializes");
    // The data section starts 8-byte aligned, as the safetensors writers do.
    while bytes.len() % 8 != 0 {
        bytes.push(b' ');
    }
    bytes
}

/// The tensor bytes to write, converted to `target` when it differs.
fn tensor_bytes(
    model: &Model,
    name: &str,
    info: &TensorInfo,
    target: DType,
) -> anyhow::Result<Vec<u8>> {
    let data = model
        .data(name)
        .map_err(plugin)
        .with_context(|| format!("reading tensor `{name}`"))?;
    if data.len() != info.nbytes() {
        bail!(
            "tensor `{name}` has {} bytes, its dtype and shape need {}",
            data.len(),
            info.nbytes()
        );
    }
    if target == info.dtype {
        return Ok(data.into_owned());
    }
    let values = bytes_to_f32(&data, info.dtype).map_err(plugin)?;
    f32_to_bytes(&values, target).map_err(plugin)
}

/// Bytes written between two requests to start writing back (see [`Flusher`]).
const WRITEBACK_STEP: u64 = 64 << 20;

/// Write one safetensors shard. The tensors are produced here (a merged model computes each
/// on the device as it is asked for) and written by a second thread, so that computing tensor
/// k + 1 overlaps writing tensor k; the hand-over is a rendezvous, so at most two tensors are
/// in memory. The file is flushed to disk before this returns (the caller renames it into
/// place only then), with write-back started as the bytes go rather than all at the end.
fn write_shard(
    model: &Model,
    path: &Path,
    tensors: &[(String, TensorInfo)],
    source: &[TensorInfo],
) -> anyhow::Result<u64> {
    let mut entries = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (name, info) in tensors {
        let n = info.nbytes() as u64;
        entries.push((name.clone(), info.clone(), offset, offset + n));
        offset += n;
    }
    let header = header_bytes(&entries);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(0);
    std::thread::scope(|scope| {
        let expected = tensors.len();
        let writer = scope.spawn(move || -> anyhow::Result<()> {
            let mut flusher = Flusher::new(&file);
            let mut w = BufWriter::with_capacity(1 << 20, &file);
            w.write_all(&(header.len() as u64).to_le_bytes())?;
            w.write_all(&header)?;
            flusher.wrote(8 + header.len() as u64);
            let mut received = 0;
            for bytes in rx {
                w.write_all(&bytes)?;
                flusher.wrote(bytes.len() as u64);
                received += 1;
            }
            if received < expected {
                // The producer failed (its error is reported); the file is deleted unsynced.
                return Ok(());
            }
            w.flush()?;
            drop(w);
            file.sync_all()?;
            Ok(())
        });
        let produced =
            tensors
                .iter()
                .zip(source)
                .try_for_each(|((name, info), src)| -> anyhow::Result<()> {
                    let bytes = tensor_bytes(model, name, src, info.dtype)?;
                    // A closed channel means the writer failed: stop computing; its error is
                    // the one reported below.
                    tx.send(bytes)
                        .map_err(|_| anyhow::anyhow!("the writer thread stopped"))
                });
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
        written.with_context(|| format!("writing {}", path.display()))?;
        produced
    })?;
    Ok(offset)
}

/// Starts the kernel's write-back of a file every [`WRITEBACK_STEP`] bytes written
/// (`sync_file_range` on Linux), so that the final `fsync` waits for the tail only; elsewhere
/// it does nothing and `fsync` does all the work.
struct Flusher<'f> {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    file: &'f File,
    written: u64,
    started: u64,
}

impl<'f> Flusher<'f> {
    fn new(file: &'f File) -> Self {
        Flusher {
            file,
            written: 0,
            started: 0,
        }
    }

    /// `n` more bytes were handed to the file (some may still sit in a `BufWriter`: write-back
    /// of a range not yet written is a no-op, and a later request covers it).
    fn wrote(&mut self, n: u64) {
        self.written += n;
        if self.written - self.started >= WRITEBACK_STEP {
            self.start_writeback();
        }
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open descriptor; it only schedules I/O.
        let r = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.started as libc::off64_t,
                (self.written - self.started) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if r != 0 {
            tracing::debug!(
                "sync_file_range: {} (fsync will do the work)",
                std::io::Error::last_os_error()
            );
        }
        self.started = self.written;
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&mut self) {
        self.started = self.written;
    }
}

/// A sibling path for work in progress.
fn temp_sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Move `tmp` to `dest`, replacing what is there.
fn replace(tmp: &Path, dest: &Path) -> anyhow::Result<()> {
    if dest.exists() {
        let old = temp_sibling(dest, "old");
        std::fs::rename(dest, &old)
            .with_context(|| format!("moving the old {} aside", dest.display()))?;
        std::fs::rename(tmp, dest).with_context(|| format!("renaming into {}", dest.display()))?;
        let _ = if old.is_dir() {
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::remove_file(&old)
        };
    } else {
        std::fs::rename(tmp, dest).with_context(|| format!("renaming into {}", dest.display()))?;
    }
    Ok(())
}

/// Save `model` to `dest`: a checkpoint folder, or a single file when `dest` ends in
/// `.safetensors`.
pub fn save_model(model: &Model, dest: &Path, opts: &SaveOptions) -> anyhow::Result<SaveSummary> {
    let names = model.names().map_err(plugin)?;
    let mut source = Vec::with_capacity(names.len());
    let mut planned = Vec::with_capacity(names.len());
    for name in &names {
        let info = model
            .info(name)
            .map_err(plugin)
            .with_context(|| format!("tensor `{name}`"))?;
        let dtype = match opts.dtype {
            Some(d) if info.dtype.is_float() => d,
            _ => info.dtype,
        };
        planned.push((
            name.clone(),
            TensorInfo {
                dtype,
                shape: info.shape.clone(),
            },
        ));
        source.push(info);
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }

    if dest.extension().is_some_and(|e| e == "safetensors") {
        let tmp = temp_sibling(dest, "partial");
        let result = write_shard(model, &tmp, &planned, &source);
        let bytes = match result {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        replace(&tmp, dest)?;
        return Ok(SaveSummary {
            path: dest.to_owned(),
            shards: 1,
            tensors: names.len(),
            bytes,
        });
    }

    // Group tensors into shards in checkpoint order.
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut current = 0u64;
    for (i, (_, info)) in planned.iter().enumerate() {
        let n = info.nbytes() as u64;
        if current > 0 && current + n > opts.max_shard_size {
            groups.push(Vec::new());
            current = 0;
        }
        groups.last_mut().expect("one group").push(i);
        current += n;
    }

    let tmp = temp_sibling(dest, "partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let write_all = || -> anyhow::Result<u64> {
        let count = groups.len();
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (k, group) in groups.iter().enumerate() {
            let file = if count == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", k + 1, count)
            };
            let tensors: Vec<(String, TensorInfo)> =
                group.iter().map(|&i| planned[i].clone()).collect();
            let src: Vec<TensorInfo> = group.iter().map(|&i| source[i].clone()).collect();
            total += write_shard(model, &tmp.join(&file), &tensors, &src)?;
            for (name, _) in &tensors {
                weight_map.insert(name.clone(), file.clone());
            }
        }
        if count > 1 {
            let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            std::fs::write(
                tmp.join("model.safetensors.index.json"),
                serde_json::to_vec_pretty(&index)?,
            )?;
        }
        for file in model.file_names().map_err(plugin)? {
            let contents = model.file(&file).map_err(plugin)?;
            let contents = if file == "config.json" {
                with_dtype(&contents, &planned)
            } else {
                contents
            };
            std::fs::write(tmp.join(&file), contents).with_context(|| format!("writing {file}"))?;
        }
        Ok(total)
    };
    match write_all() {
        Ok(bytes) => {
            replace(&tmp, dest)?;
            Ok(SaveSummary {
                path: dest.to_owned(),
                shards: groups.len(),
                tensors: names.len(),
                bytes,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Update `torch_dtype` in a carried `config.json` to what was written, as `save_pretrained` does.
fn with_dtype(config: &[u8], planned: &[(String, TensorInfo)]) -> Vec<u8> {
    let Some(dtype) = planned.iter().map(|(_, i)| i.dtype).find(|d| d.is_float()) else {
        return config.to_vec();
    };
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(config) else {
        return config.to_vec();
    };
    let torch = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "float32",
    };
    map.insert("torch_dtype".into(), Value::String(torch.into()));
    serde_json::to_vec_pretty(&Value::Object(map)).unwrap_or_else(|_| config.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB"), Some(5_000_000_000));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("2GiB"), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("1234"), Some(1234));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn kwargs_pick_dtype_and_shard_size() {
        let v = json!({"dtype": "bfloat16", "max_shard_size": "1MB", "safe_serialization": true});
        let o = SaveOptions::from_kwargs(Some(&v)).unwrap();
        assert_eq!(o.dtype, Some(DType::BF16));
        assert_eq!(o.max_shard_size, 1_000_000);
        let bad = json!({"dtype": "int8"});
        assert!(SaveOptions::from_kwargs(Some(&bad))
            .unwrap_err()
            .to_string()
            .contains("int8"));
    }
}
