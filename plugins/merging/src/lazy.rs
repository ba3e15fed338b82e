//! The merged model as a lazy state dict: each tensor is computed on the device when the host
//! asks for it (to save or to evaluate it), so memory holds a few tensors, whatever the size or
//! number of the models.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use fusion_plugin_api::{
    Compute, Context, DType, Error, GpuTensor, Model, Result, StateDict, TensorInfo,
};

use crate::device::{download, Gpu};
use crate::inputs::Inputs;

/// How one tensor of the merged model is computed.
pub(crate) trait TensorMerge: Send + Sync + 'static {
    /// Merge the float tensor `name` (the reference's `info`) into a device tensor of
    /// `kernel_dtype(info.dtype)`. Every device tensor it creates besides the result must be
    /// released before it returns.
    fn merge<'c>(&self, c: &'c dyn Compute, name: &str, info: &TensorInfo) -> Result<Gpu<'c>>;

    /// Whether `name` is copied from the reference unchanged (excluded keys).
    fn copies(&self, _name: &str) -> bool {
        false
    }
}

/// A merged model computed tensor by tensor; non-float tensors (such as integer position ids)
/// and tensors the merge excludes are copied from the reference model.
pub(crate) struct Merged<M> {
    ctx: Context,
    inputs: Inputs,
    merge: M,
    /// The tensor names, in order (for the look-ahead).
    names: OnceLock<Vec<String>>,
    /// The next tensor's merge, started before the current one is read back (see
    /// [`StateDict::data`]).
    ahead: Mutex<Option<(String, GpuTensor)>>,
    /// Where in `names` the last merged tensor asked for stands (`None` outside), once one was.
    previous: Mutex<Option<Option<usize>>>,
    /// What to do about NaN and ±Inf in a merged tensor.
    nonfinite: NonFinite,
    /// The merged tensors found holding non-finite values: (count, size).
    found: Mutex<BTreeMap<String, (u64, usize)>>,
    /// Counts queued on the device and not read back yet.
    pending: Mutex<Pending>,
    /// Where in `names` the last tensor asked for stands, for [`Merged::data`]'s read-backs.
    checked_at: Mutex<Option<Option<usize>>>,
}

/// Non-finite counts of merged tensors queued on the device, read back together: a save asks
/// for the tensors in order, and one read back at the end (or every [`COUNT_SLOTS`] chunks)
/// costs far less than one per tensor.
#[derive(Default)]
struct Pending {
    /// [`COUNT_SLOTS`] u32 counters, zeroed when made.
    counts: Option<GpuTensor>,
    used: usize,
    /// (name, size, first slot, slots) per tensor counted into `counts`.
    tensors: Vec<(String, usize, usize, usize)>,
}

/// Counters per read back (one per chunk of a tensor; a tensor is one chunk up to 2^25
/// elements or more).
const COUNT_SLOTS: usize = 4096;

/// The environment variable that sets what a non-finite merged value does.
pub(crate) const NONFINITE_VAR: &str = "FUSION_NONFINITE";

/// What to do about NaN and ±Inf values in a merged tensor (`FUSION_NONFINITE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonFinite {
    /// Log a warning naming the tensor and the count (the default).
    Warn,
    /// Fail: the tensor is not returned, so nothing is saved or evaluated.
    Error,
    /// Do not count.
    Off,
}

impl NonFinite {
    /// From `FUSION_NONFINITE` (`warn`, `error`, `off`; unset means `warn`).
    pub(crate) fn from_env() -> Result<NonFinite> {
        match std::env::var(NONFINITE_VAR) {
            Err(_) => Ok(NonFinite::Warn),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "warn" => Ok(NonFinite::Warn),
                "error" => Ok(NonFinite::Error),
                "off" => Ok(NonFinite::Off),
                other => Err(Error::config(format!(
                    "{NONFINITE_VAR}=`{other}`: expected warn, error or off"
                ))),
            },
        }
    }
}

/// How many tensors are named one by one in warnings; the rest are summed up at the end.
const NAMED_WARNINGS: usize = 8;

impl<M: TensorMerge> Merged<M> {
    /// Wrap `merge` as a [`Model`]. `ctx` must have a compute device (checked by the caller
    /// before any work). A pool with no tensor to merge (every tensor an integer one, empty or
    /// excluded) is an error: the result would be a copy of the reference model, which no one
    /// asking for a merge wants to get without a word. (FusionBench merges parameters, which are
    /// float; integer buffers stay the pretrained model's, as here.)
    pub(crate) fn model(ctx: &Context, inputs: Inputs, merge: M) -> Result<Model> {
        let nonfinite = NonFinite::from_env()?;
        let names = inputs.names()?;
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        let mut any = false;
        for name in &names {
            let info = inputs.info(name)?;
            if info.dtype.is_float() && info.numel() > 0 && !merge.copies(name) {
                any = true;
                break;
            }
            *kinds.entry(info.dtype.to_string()).or_default() += 1;
        }
        if !any {
            let kinds: Vec<String> = kinds.iter().map(|(d, n)| format!("{n} {d}")).collect();
            return Err(Error::model(format!(
                "nothing to merge: none of the {} tensors of `{}` is a non-empty float tensor the \
                 method merges ({}); the result would only be a copy of `{}`",
                names.len(),
                inputs.reference.name,
                if kinds.is_empty() {
                    "no tensors".to_string()
                } else {
                    kinds.join(", ")
                },
                inputs.reference.name
            )));
        }
        Ok(Model::new(Merged {
            ctx: ctx.clone(),
            inputs,
            merge,
            names: OnceLock::new(),
            ahead: Mutex::new(None),
            previous: Mutex::new(None),
            nonfinite,
            found: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(Pending::default()),
            checked_at: Mutex::new(None),
        }))
    }

    /// Queue the count of NaN and ±Inf values of the merged `name` on the device (one more
    /// read of it there), unless `FUSION_NONFINITE=off`; [`Merged::read_counts`] reads it.
    fn queue_count(&self, c: &dyn Compute, name: &str, out: &Gpu<'_>, numel: usize) -> Result<()> {
        if self.nonfinite == NonFinite::Off {
            return Ok(());
        }
        let slots = fusion_kernels::count_nonfinite_slots(c, out.id())?;
        if slots == 0 {
            return Ok(());
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.used + slots > COUNT_SLOTS {
            self.read_pending(c, &mut pending)?;
        }
        let counts = match pending.counts {
            Some(t) => t,
            None => {
                let t = c.create(DType::U32, &[COUNT_SLOTS.max(slots)], None)?;
                pending.counts = Some(t);
                pending.used = 0;
                t
            }
        };
        fusion_kernels::count_nonfinite_into(c, out.id(), counts, pending.used)?;
        let first = pending.used;
        pending
            .tensors
            .push((name.to_string(), numel, first, slots));
        pending.used += slots;
        Ok(())
    }

    /// Read back the queued counts and warn or fail as `FUSION_NONFINITE` says.
    fn read_counts(&self, c: &dyn Compute) -> Result<()> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.read_pending(c, &mut pending)
    }

    fn read_pending(&self, c: &dyn Compute, pending: &mut Pending) -> Result<()> {
        let Some(counts) = pending.counts.take() else {
            return Ok(());
        };
        let tensors = std::mem::take(&mut pending.tensors);
        pending.used = 0;
        let bytes = c.read(counts);
        c.release(counts);
        let bytes = bytes?;
        let bad: Vec<(String, u64, usize)> = tensors
            .into_iter()
            .filter_map(|(name, numel, first, slots)| {
                let n = fusion_kernels::sum_counts(&bytes[first * 4..(first + slots) * 4]);
                (n > 0).then_some((name, n, numel))
            })
            .collect();
        let Some((name, count, numel)) = bad.first() else {
            return Ok(());
        };
        if self.nonfinite == NonFinite::Error {
            let others = if bad.len() > 1 {
                format!("; {} more merged tensors hold some too", bad.len() - 1)
            } else {
                String::new()
            };
            return Err(Error::model(format!(
                "merged tensor `{name}`: {count} of {numel} values are NaN or infinite{others} \
                 ({NONFINITE_VAR}=error stops here; check the inputs and the method's \
                 parameters, e.g. a scaling factor)"
            )));
        }
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        for (name, count, numel) in bad {
            if found.insert(name.clone(), (count, numel)).is_none() && found.len() <= NAMED_WARNINGS
            {
                tracing::warn!(
                    "merged tensor `{name}`: {count} of {numel} values are NaN or infinite \
                     (set {NONFINITE_VAR}=error to fail instead)"
                );
            }
        }
        Ok(())
    }

    /// Whether the counts queued so far must be read now, after `name` was asked for: at the
    /// last tensor, and whenever tensors are not asked for in order (an evaluation), so that
    /// every tensor a reader got was checked before it asks for the next one out of order or
    /// finishes.
    fn must_read_counts(&self, name: &str) -> bool {
        let names = self
            .names
            .get_or_init(|| self.inputs.names().unwrap_or_default());
        let at = names.iter().position(|n| n == name);
        let previous = self
            .checked_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(at);
        let in_order = match (previous, at) {
            (None, Some(0)) => true,
            (Some(Some(p)), Some(i)) => p + 1 == i,
            _ => false,
        };
        !in_order || at.is_none_or(|i| i + 1 == names.len())
    }

    /// Whether `name` (of `info`) is merged on the device rather than copied.
    fn merges(&self, name: &str, info: &TensorInfo) -> bool {
        info.dtype.is_float() && info.numel() > 0 && !self.merge.copies(name)
    }

    /// The merge of `name`: the one started ahead if it is this tensor, else a new one.
    fn merged<'c>(&self, c: &'c dyn Compute, name: &str, info: &TensorInfo) -> Result<Gpu<'c>> {
        let ahead = self.ahead.lock().unwrap_or_else(|e| e.into_inner()).take();
        match ahead {
            Some((n, t)) if n == name => return Ok(Gpu::adopt(c, t)),
            Some((_, t)) => c.release(t),
            None => {}
        }
        self.merge
            .merge(c, name, info)
            .map_err(|e| e.context(format!("merging tensor `{name}`")))
    }

    /// Start the merge of the tensor after `name` when the tensors are asked for in order (as a
    /// save asks for them), so that the device computes it while the host reads `name` back and
    /// saves it; a reader that asks in another order (an evaluation) gets no merge twice. A
    /// failure is left for when that tensor is asked for.
    fn start_next(&self, c: &dyn Compute, name: &str) {
        let names = self
            .names
            .get_or_init(|| self.inputs.names().unwrap_or_default());
        let at = names.iter().position(|n| n == name);
        let previous = self
            .previous
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(at);
        let in_order = matches!((previous, at), (Some(Some(p)), Some(i)) if p + 1 == i);
        let Some(next) = at.and_then(|i| names.get(i + 1)).filter(|_| in_order) else {
            return;
        };
        let Ok(info) = self.inputs.info(next) else {
            return;
        };
        if !self.merges(next, &info) {
            return;
        }
        if let Ok(t) = self.merge.merge(c, next, &info) {
            *self.ahead.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((next.clone(), t.into_raw()));
        }
    }
}

impl<M> Drop for Merged<M> {
    fn drop(&mut self) {
        if let Ok(c) = self.ctx.compute() {
            let pending = std::mem::take(self.pending.get_mut().unwrap_or_else(|e| e.into_inner()));
            if let Some(t) = pending.counts {
                c.release(t);
            }
        }
        let found = self.found.get_mut().unwrap_or_else(|e| e.into_inner());
        if found.len() > NAMED_WARNINGS {
            let values: u64 = found.values().map(|(n, _)| n).sum();
            let rest: Vec<&str> = found
                .keys()
                .skip(NAMED_WARNINGS)
                .take(20)
                .map(String::as_str)
                .collect();
            tracing::warn!(
                "{} merged tensors in all hold {values} NaN or infinite values; besides those \
                 named above: {}{}",
                found.len(),
                rest.join(", "),
                if found.len() > NAMED_WARNINGS + rest.len() {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        let ahead = self
            .ahead
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some((_, t)), Ok(c)) = (ahead, self.ctx.compute()) {
            c.release(t);
        }
    }
}

impl<M: TensorMerge> StateDict for Merged<M> {
    fn names(&self) -> Result<Vec<String>> {
        self.inputs.names()
    }

    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.inputs.info(name)
    }

    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let info = self.inputs.info(name)?;
        if !self.merges(name, &info) {
            let bytes = self.inputs.reference.model.data(name)?.into_owned();
            // A copied tensor may be the last one a save asks for.
            if self.must_read_counts(name) && self.nonfinite != NonFinite::Off {
                self.read_counts(self.ctx.compute()?)?;
            }
            return Ok(Cow::Owned(bytes));
        }
        let c = self.ctx.compute()?;
        let out = self.merged(c, name, &info)?;
        self.queue_count(c, name, &out, info.numel())?;
        self.start_next(c, name);
        let bytes = download(c, &out, info.dtype)?;
        if self.must_read_counts(name) {
            self.read_counts(c)?;
        }
        Ok(Cow::Owned(bytes))
    }

    fn file_names(&self) -> Result<Vec<String>> {
        self.inputs.reference.model.file_names()
    }

    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.inputs.reference.model.file(name)
    }

    /// The merged tensor where it was computed, for a task pool on the same device: no
    /// read-back, no upload. Copied tensors (integer ones, excluded keys) are not on the device
    /// and are read with [`StateDict::data`]. The non-finite check runs as for `data`.
    fn device_tensor(&self, name: &str) -> Result<Option<GpuTensor>> {
        let info = self.inputs.info(name)?;
        if !self.merges(name, &info) {
            return Ok(None);
        }
        let c = self.ctx.compute()?;
        let out = self.merged(c, name, &info)?;
        self.queue_count(c, name, &out, info.numel())?;
        if self.must_read_counts(name) {
            self.read_counts(c)?;
        }
        Ok(Some(out.into_raw()))
    }
}
