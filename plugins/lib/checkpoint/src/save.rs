//! Writing a model as a Hugging Face checkpoint: `config.json` and the other files the
//! model carries, safetensors weights sharded past a size limit with
//! `model.safetensors.index.json`. Tensors are streamed one at a time (a lazily merged model is
//! computed while it is written). The model is written *into* the target folder, as
//! `save_pretrained` does: each file under a temporary name beside its final one, renamed into
//! place once all are written, replacing only the files of those names (see [`save_model`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use fusion_plugin_api::{bytes_to_f32, f32_to_bytes, DType, Model, StateDict, TensorInfo};
use serde_json::{json, Value};

use crate::interrupt::{self, TempPath};

/// A mistake in what the caller asked for (a path, a save option): a configuration error, which
/// the host answers with exit code 2.
fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(fusion_plugin_api::Error::config(message))
}

/// An error from the model being saved, kept downcastable as the plugin-api error it is.
fn plugin(err: fusion_plugin_api::Error) -> anyhow::Error {
    anyhow::Error::new(err)
}

/// How to write the checkpoint (`merged_model_save_kwargs`).
#[derive(Debug, Clone, PartialEq)]
pub struct SaveOptions {
    /// Store float tensors in this dtype instead of the input dtype.
    pub dtype: Option<DType>,
    /// Start a new shard before a shard would exceed this many bytes.
    pub max_shard_size: u64,
    /// Fail, rather than warn, when a value overflows the dtype it is converted to
    /// (`FUSION_NONFINITE=error`).
    pub overflow_is_error: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        // transformers' `save_pretrained` default.
        Self {
            dtype: None,
            max_shard_size: 5_000_000_000,
            overflow_is_error: false,
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

/// The environment variable that says what a non-finite value does: `warn` (the default),
/// `error` or `off`. The merging plugin counts NaN and ±Inf in every merged tensor on the
/// device; the save checks the values that overflow a narrower dtype they are converted to.
pub const NONFINITE_VAR: &str = "FUSION_NONFINITE";

/// Whether `FUSION_NONFINITE` asks for an error (a value other than `warn`, `error`, `off` or
/// empty is a usage error).
pub fn nonfinite_is_error() -> anyhow::Result<bool> {
    let Ok(v) = std::env::var(NONFINITE_VAR) else {
        return Ok(false);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "warn" | "off" => Ok(false),
        "error" => Ok(true),
        other => Err(usage(format!(
            "{NONFINITE_VAR}=`{other}`: expected warn, error or off"
        ))),
    }
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
    /// How many tensors were converted to another dtype (`SaveOptions::dtype`).
    pub converted: usize,
}

/// The model just saved as `summary` says, read back from what was written: its tensors
/// memory-mapped from the checkpoint, its tensor names and carried files from `model` (a
/// single `.safetensors` file holds no `config.json`). A lazily merged model computes each
/// tensor when asked; evaluating this instead of `model` after a save reads the written bytes
/// rather than merging every tensor a second time.
///
/// None when the save converted a tensor to another dtype: the written values then differ from
/// the model's, and whoever evaluates should read `model` itself.
pub fn reopen_saved(model: &Model, summary: &SaveSummary) -> anyhow::Result<Option<Model>> {
    if summary.converted > 0 {
        return Ok(None);
    }
    let source = summary.path.to_string_lossy().to_string();
    let weights = crate::Checkpoint::open(&summary.path, &source)
        .map_err(plugin)
        .with_context(|| format!("reading back the model saved to {source}"))?;
    Ok(Some(Model::new(Reopened {
        weights,
        model: model.clone(),
    })))
}

/// See [`reopen_saved`].
struct Reopened {
    weights: crate::Checkpoint,
    model: Model,
}

impl StateDict for Reopened {
    fn names(&self) -> fusion_plugin_api::Result<Vec<String>> {
        self.model.names()
    }
    fn info(&self, name: &str) -> fusion_plugin_api::Result<TensorInfo> {
        self.weights.info(name)
    }
    fn data(&self, name: &str) -> fusion_plugin_api::Result<std::borrow::Cow<'_, [u8]>> {
        self.weights.data(name)
    }
    fn file_names(&self) -> fusion_plugin_api::Result<Vec<String>> {
        self.model.file_names()
    }
    fn file(&self, name: &str) -> fusion_plugin_api::Result<Vec<u8>> {
        self.model.file(name)
    }
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
    overflow_is_error: bool,
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
    let bytes = f32_to_bytes(&values, target).map_err(plugin)?;
    let (overflow, largest) = overflows(&values, &bytes, target);
    if overflow > 0 {
        let message = format!(
            "tensor `{name}`: {overflow} of {} values are too large for {} (largest magnitude \
             {largest:e}) and become infinite when converted",
            values.len(),
            target.name()
        );
        if overflow_is_error {
            bail!("{message} ({NONFINITE_VAR}=error stops here; save in a wider dtype)");
        }
        tracing::warn!("{message} (set {NONFINITE_VAR}=error to fail instead)");
    }
    Ok(bytes)
}

/// How many finite `values` became infinite in `converted` (their `target` encoding), and the
/// largest magnitude among them.
fn overflows(values: &[f32], converted: &[u8], target: DType) -> (usize, f32) {
    let exponent: u16 = match target {
        DType::F16 => 0x7c00,
        DType::BF16 => 0x7f80,
        _ => return (0, 0.0),
    };
    let mut count = 0;
    let mut largest = 0f32;
    for (v, h) in values.iter().zip(converted.chunks_exact(2)) {
        let h = u16::from_le_bytes([h[0], h[1]]);
        if v.is_finite() && h & exponent == exponent {
            count += 1;
            largest = largest.max(v.abs());
        }
    }
    (count, largest)
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
    overflow_is_error: bool,
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
                    let bytes = tensor_bytes(model, name, src, info.dtype, overflow_is_error)?;
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

/// The temporary name of `dest` while it is written: `.NAME.partial-PID`, in the same folder
/// (so that the final rename stays on one file system).
fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{TEMP_TAG}{}", std::process::id()))
}

const TEMP_TAG: &str = "partial-";

/// The process id in a temporary name of ours (`.NAME.partial-PID`), if `name` is one.
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (stem, pid) = rest.rsplit_once(&format!(".{TEMP_TAG}"))?;
    if stem.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with this id runs (on this machine).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// Remove temporary files of ours in `dir` (for the final names `wanted` accepts) whose
/// process is gone: what a run killed mid-save (SIGKILL, a power cut) left. Files only; a
/// folder of that name (an older fusion-host wrote whole models under such names) is left
/// alone, as are files of live processes. Best effort.
pub fn remove_stale_temps(dir: &Path, wanted: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = temp_owner(name) else {
            continue;
        };
        let stem = &name[1..name.len() - TEMP_TAG.len() - pid.to_string().len() - 1];
        if !wanted(stem) || alive(pid) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => tracing::info!(
                path = %entry.path().display(),
                "removed the temporary file of an interrupted save (process {pid} is gone)"
            ),
            Err(e) => {
                tracing::debug!(path = %entry.path().display(), error = %e, "could not remove a stale temporary file")
            }
        }
    }
}

/// One file written under its temporary name, renamed into place by [`commit`]; removed when
/// dropped uncommitted (an error, a panic), and by the signal handler meanwhile.
pub(crate) struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
    _registered: TempPath,
}

impl Staged {
    fn new(dest: &Path) -> Staged {
        let tmp = temp_path(dest);
        Staged {
            _registered: TempPath::register(&tmp),
            tmp,
            dest: dest.to_owned(),
            committed: false,
        }
    }

    /// Stage `contents` for `dest`, flushed to disk.
    pub(crate) fn bytes(dest: &Path, contents: &[u8]) -> anyhow::Result<Staged> {
        let staged = Staged::new(dest);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&staged.tmp)?;
            f.write_all(contents)?;
            f.sync_all()
        };
        write().with_context(|| format!("writing {}", staged.tmp.display()))?;
        Ok(staged)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Rename every staged file into place (each replaces the file of its name, nothing else is
/// touched), with SIGINT and SIGTERM held back until all are in place, then flush the folders'
/// entries to disk.
pub(crate) fn commit(staged: &mut [Staged]) -> anyhow::Result<()> {
    interrupt::commit(|| -> anyhow::Result<()> {
        for s in staged.iter_mut() {
            std::fs::rename(&s.tmp, &s.dest)
                .with_context(|| format!("renaming into {}", s.dest.display()))?;
            s.committed = true;
        }
        Ok(())
    })?;
    let mut dirs: Vec<&Path> = staged.iter().filter_map(|s| s.dest.parent()).collect();
    dirs.dedup();
    for dir in dirs {
        sync_dir(dir);
    }
    Ok(())
}

/// Flush a folder's entries (the renames) to disk; best effort (not every system allows it).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::debug!(dir = %dir.display(), error = %e, "could not flush the folder");
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Write `contents` to the file `path` atomically (temporary name in the same folder, flushed,
/// renamed), creating its folder. A `path` that is a folder is an error naming it.
pub fn write_file_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!(
            "{} is a folder; give the path of a file to write",
            path.display()
        );
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_string());
    remove_stale_temps(parent.unwrap_or(Path::new(".")), |stem| {
        Some(stem) == name.as_deref()
    });
    commit(&mut [Staged::bytes(path, contents)?])
}

/// Whether `name` is one of the weight files a save writes: `model.safetensors`,
/// `model.safetensors.index.json` or a shard `model-NNNNN-of-NNNNN.safetensors`.
fn is_weight_name(name: &str) -> bool {
    if name == SINGLE || name == INDEX {
        return true;
    }
    let Some(rest) = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 14 && &rest[5..9] == "-of-" && b[..5].iter().chain(&b[9..]).all(u8::is_ascii_digit)
}

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

fn is_single_file(dest: &Path) -> bool {
    dest.extension().is_some_and(|e| e == "safetensors")
}

/// Check that the model can be saved at `dest` (`merged_model_save_path`) without replacing
/// something else: a folder path must not be a file, a `.safetensors` path must not be a
/// folder. Called before the merge, so that a wrong path costs no work, and again by
/// [`save_model`].
pub fn check_destination(dest: &Path) -> anyhow::Result<()> {
    if is_single_file(dest) {
        if dest.is_dir() {
            return Err(usage(format!(
                "merged_model_save_path {} is a folder, but a path ending in .safetensors names a \
                 single file; give the folder's path without the extension to save into it",
                dest.display()
            )));
        }
    } else if dest.exists() && !dest.is_dir() {
        return Err(usage(format!(
            "merged_model_save_path {} is a file, not a folder: the merged model is saved into a \
             folder (or into a single file when the path ends in .safetensors); choose another path",
            dest.display()
        )));
    }
    Ok(())
}

/// Save `model` to `dest`: into a checkpoint folder (created when missing), or a single file
/// when `dest` ends in `.safetensors`.
///
/// Into a folder, as `save_pretrained` does: the files the model consists of replace the files
/// of the same names, each written under a temporary name in the folder, flushed and renamed
/// into place only once every file is written (so an interrupted save leaves the folder as it
/// was). Weight files of an earlier save that this one does not write (shards of another
/// count, `model.safetensors` beside a new index or the reverse) are removed, since a loader
/// would read them; every other file in the folder is left as it is. A `dest` that is a file
/// (or, for `.safetensors`, a folder) is an error naming it.
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

    let converted = planned
        .iter()
        .zip(&source)
        .filter(|((_, to), from)| to.dtype != from.dtype)
        .count();
    check_destination(dest)?;
    if is_single_file(dest) {
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file_name = dest.file_name().map(|n| n.to_string_lossy().to_string());
        remove_stale_temps(parent.unwrap_or(Path::new(".")), |stem| {
            Some(stem) == file_name.as_deref()
        });
        let staged = Staged::new(dest);
        let bytes = write_shard(
            model,
            &staged.tmp,
            &planned,
            &source,
            opts.overflow_is_error,
        )?;
        commit(&mut [staged])?;
        return Ok(SaveSummary {
            path: dest.to_owned(),
            shards: 1,
            tensors: names.len(),
            bytes,
            converted,
        });
    }

    // The carried files first, so that a bad one fails the save before anything is written.
    let mut carried = Vec::new();
    for file in model.file_names().map_err(plugin)? {
        if is_weight_name(&file) || file.contains(['/', '\\']) || file.starts_with('.') {
            tracing::warn!("the merged model carries a file named `{file}`; it is not saved");
            continue;
        }
        let contents = model.file(&file).map_err(plugin)?;
        let contents = if file == "config.json" {
            with_dtype(&contents, &planned)
                .context("the merged model's `config.json` (carried from its reference model)")?
        } else {
            contents
        };
        carried.push((file, contents));
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

    // A folder made here and left empty by a failed save is removed again.
    let created = !dest.exists();
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let saved = save_into(model, dest, opts, &planned, &source, &groups, &carried);
    if saved.is_err() && created {
        let _ = std::fs::remove_dir(dest);
    }
    let total = saved?;
    Ok(SaveSummary {
        path: dest.to_owned(),
        shards: groups.len(),
        tensors: names.len(),
        bytes: total,
        converted,
    })
}

/// The folder part of [`save_model`]: stage every file in `dest`, then commit them.
fn save_into(
    model: &Model,
    dest: &Path,
    opts: &SaveOptions,
    planned: &[(String, TensorInfo)],
    source: &[TensorInfo],
    groups: &[Vec<usize>],
    carried: &[(String, Vec<u8>)],
) -> anyhow::Result<u64> {
    remove_stale_temps(dest, |_| true);
    let count = groups.len();
    let mut staged = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    let mut written = Vec::new();
    for (k, group) in groups.iter().enumerate() {
        let file = if count == 1 {
            SINGLE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", k + 1, count)
        };
        let tensors: Vec<(String, TensorInfo)> =
            group.iter().map(|&i| planned[i].clone()).collect();
        let src: Vec<TensorInfo> = group.iter().map(|&i| source[i].clone()).collect();
        let shard = Staged::new(&dest.join(&file));
        total += write_shard(model, &shard.tmp, &tensors, &src, opts.overflow_is_error)?;
        staged.push(shard);
        for (name, _) in &tensors {
            weight_map.insert(name.clone(), file.clone());
        }
        written.push(file);
    }
    if count > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        staged.push(Staged::bytes(
            &dest.join(INDEX),
            &serde_json::to_vec_pretty(&index)?,
        )?);
        written.push(INDEX.to_string());
    }
    for (file, contents) in carried {
        staged.push(Staged::bytes(&dest.join(file), contents)?);
    }
    commit(&mut staged)?;
    remove_other_weights(dest, &written);
    Ok(total)
}

/// Remove the weight files in `dir` that the save just done did not write (see
/// [`is_weight_name`]): shards of an earlier save with another count, or the single file
/// beside a new index and the reverse. Nothing else is touched.
fn remove_other_weights(dir: &Path, written: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !is_weight_name(&name)
            || written.contains(&name)
            || !entry.file_type().is_ok_and(|t| t.is_file())
        {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => tracing::info!(
                path = %entry.path().display(),
                "removed a weight file of an earlier save that this save replaces"
            ),
            Err(e) => tracing::warn!(
                path = %entry.path().display(),
                "could not remove a weight file of an earlier save: {e}"
            ),
        }
    }
}

/// Update `torch_dtype` in a carried `config.json` to what was written, as `save_pretrained`
/// does. A `config.json` that is not a JSON object is an error: copied as it is, it would make a
/// folder that looks complete but that no loader reads.
fn with_dtype(config: &[u8], planned: &[(String, TensorInfo)]) -> anyhow::Result<Vec<u8>> {
    let mut map = match serde_json::from_slice::<Value>(config) {
        Ok(Value::Object(map)) => map,
        Ok(other) => bail!("not a JSON object but {}", json_kind(&other)),
        Err(e) => bail!("not valid JSON: {e}"),
    };
    let Some(dtype) = planned.iter().map(|(_, i)| i.dtype).find(|d| d.is_float()) else {
        return Ok(config.to_vec());
    };
    let torch = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "float32",
    };
    map.insert("torch_dtype".into(), Value::String(torch.into()));
    Ok(serde_json::to_vec_pretty(&Value::Object(map))?)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
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
    fn overflow_on_conversion_is_counted() {
        let values = [1.0f32, 70000.0, -1e6, f32::INFINITY, 65504.0, 3e38];
        let f16 = f32_to_bytes(&values, DType::F16).unwrap();
        // 70000, -1e6 and 3e38 overflow; an input infinity is not an overflow; 65504 is f16's
        // largest value.
        assert_eq!(overflows(&values, &f16, DType::F16), (3, 3e38));
        let bf16 = f32_to_bytes(&values, DType::BF16).unwrap();
        assert_eq!(overflows(&values, &bf16, DType::BF16), (0, 0.0));
        let big = [3.4e38f32];
        let bf16 = f32_to_bytes(&big, DType::BF16).unwrap();
        assert_eq!(overflows(&big, &bf16, DType::BF16).0, 1);
    }

    /// A model that counts how often each tensor is computed.
    struct Counting {
        inner: fusion_plugin_api::MemoryStateDict,
        reads: std::sync::Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
    }

    impl StateDict for Counting {
        fn names(&self) -> fusion_plugin_api::Result<Vec<String>> {
            self.inner.names()
        }
        fn info(&self, name: &str) -> fusion_plugin_api::Result<TensorInfo> {
            self.inner.info(name)
        }
        fn data(&self, name: &str) -> fusion_plugin_api::Result<std::borrow::Cow<'_, [u8]>> {
            *self.reads.lock().unwrap().entry(name.into()).or_default() += 1;
            Ok(std::borrow::Cow::Owned(self.inner.data(name)?.into_owned()))
        }
        fn file_names(&self) -> fusion_plugin_api::Result<Vec<String>> {
            self.inner.file_names()
        }
        fn file(&self, name: &str) -> fusion_plugin_api::Result<Vec<u8>> {
            self.inner.file(name)
        }
    }

    #[test]
    fn a_saved_model_reads_back_without_computing_a_tensor_again() {
        let mut sd = fusion_plugin_api::MemoryStateDict::new();
        sd.insert_f32(
            "b.weight",
            vec![2, 3],
            &[1., 2., 3., 4., 5., 6.],
            DType::F32,
        )
        .unwrap();
        sd.insert_f32("a.bias", vec![3], &[-1., 0.5, 7.], DType::F16)
            .unwrap();
        sd.insert_file("config.json", br#"{"model_type": "x"}"#.to_vec());
        let expected = sd.clone();
        let reads = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let model = Model::new(Counting {
            inner: sd,
            reads: reads.clone(),
        });
        let dir = tempfile::tempdir().unwrap();
        for dest in [
            dir.path().join("folder"),
            dir.path().join("single.safetensors"),
        ] {
            reads.lock().unwrap().clear();
            let summary = save_model(&model, &dest, &SaveOptions::default()).unwrap();
            assert_eq!(summary.converted, 0);
            let saved = reopen_saved(&model, &summary)
                .unwrap()
                .expect("nothing was converted");
            assert_eq!(saved.names().unwrap(), vec!["b.weight", "a.bias"]);
            for name in saved.names().unwrap() {
                assert_eq!(saved.info(&name).unwrap(), expected.info(&name).unwrap());
                assert_eq!(saved.data(&name).unwrap(), expected.data(&name).unwrap());
            }
            // The carried files come from the model, also beside a single file.
            assert_eq!(saved.file_names().unwrap(), vec!["config.json"]);
            assert_eq!(
                saved.file("config.json").unwrap(),
                expected.file("config.json").unwrap()
            );
            // Saving computed each tensor once; reading the saved model computed none.
            let reads = reads.lock().unwrap().clone();
            assert_eq!(
                reads,
                BTreeMap::from([("a.bias".to_string(), 1), ("b.weight".to_string(), 1)]),
                "{}",
                dest.display()
            );
        }
        // Converted values differ from the model's: there is nothing to reopen.
        let opts = SaveOptions {
            dtype: Some(DType::BF16),
            ..SaveOptions::default()
        };
        let summary = save_model(&model, &dir.path().join("bf16"), &opts).unwrap();
        assert_eq!(summary.converted, 2);
        assert!(reopen_saved(&model, &summary).unwrap().is_none());
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
