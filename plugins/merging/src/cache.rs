//! Tensors kept on the device between the passes of a multi-pass merge.
//!
//! TIES visits every task vector several times (two or four radix passes for the thresholds,
//! the sign election, the merge of each tensor). Streaming re-reads and re-uploads the
//! checkpoints each time, which on a real GPU costs far more than the kernels: the bytes cross
//! the bus each time. On a GPU with memory to spare the cache keeps each tensor's task vectors (and
//! the base tensor) after their first upload, up to a byte budget; what does not fit streams as
//! before. It also keeps each key's elected sum `S` from the sign-election pass for the merge,
//! which then needs one pass over the models instead of two: one tensor kept saves reading
//! every model's tensor of that key once more; or, better, the key's merged tensor, computed
//! in the sign-election pass itself, which then saves the whole merge pass. A key's entries are released as soon as its
//! merged tensor has been computed, and all of them when the merged model is dropped.
//!
//! Budget: `FUSION_DEVICE_CACHE` (bytes, or with a K/M/G suffix; `0` turns the cache off), else
//! [`DEFAULT_BUDGET`] on a hardware adapter, and on a software one [`SOFTWARE_SUMS_BUDGET`] for
//! elected sums and merged tensors only (lavapipe and friends keep "device" buffers in host
//! memory, where keeping task vectors would raise the RSS that streaming keeps low for the
//! price of a memcpy saved; an elected sum or a merged tensor saves a pass over all the models).

use std::collections::HashMap;
use std::sync::Mutex;

use fusion_plugin_api::{Compute, Context, Error, GpuTensor, Result};

use crate::device::Gpu;

/// Device bytes the cache may hold on a hardware adapter when `FUSION_DEVICE_CACHE` is unset:
/// nine CLIP ViT-B/32 task vectors (3.2 GB) fit, and a 6 GB card keeps room to work.
pub(crate) const DEFAULT_BUDGET: u64 = 4 << 30;

/// Bytes of elected sums and merged tensors kept on a software adapter when
/// `FUSION_DEVICE_CACHE` is unset: those of a CLIP ViT-B/32 (350 MB in f32) fit, and the process
/// stays well under 1.5 GB.
pub(crate) const SOFTWARE_SUMS_BUDGET: u64 = 512 << 20;

/// Which tensor of a key an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    /// The base model's tensor, as uploaded.
    Base,
    /// Model `i`'s task vector (f32).
    TaskVector(usize),
    /// The TIES elected sum `S` of the key (f32).
    ElectedSum,
    /// The key's merged tensor, computed before the merge asked for it (TIES merges a key in
    /// its sign-election pass, where it has every model's tensor at hand).
    Merged,
}

/// Device tensors kept across passes, under a byte budget (see the module docs).
pub(crate) struct DeviceCache {
    ctx: Context,
    budget: u64,
    /// Whether base tensors and task vectors are kept (elected sums always are, within budget).
    inputs: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    used: u64,
    entries: HashMap<(String, Slot), (GpuTensor, u64)>,
}

impl DeviceCache {
    /// A cache for one merge on `c` (the device of `ctx`), with the budget of the environment.
    pub(crate) fn new(ctx: &Context, c: &dyn Compute, algorithm: &str) -> Result<Self> {
        let software = fusion_kernels::is_software_adapter(&c.device_name());
        let (budget, inputs) = match std::env::var("FUSION_DEVICE_CACHE") {
            Ok(v) if !v.trim().is_empty() && v.trim() != "auto" => {
                let b = parse_bytes(&v)
                    .map_err(|e| Error::config(format!("FUSION_DEVICE_CACHE: {e}")))?;
                (b, b > 0)
            }
            _ if software => (SOFTWARE_SUMS_BUDGET, false),
            _ => (DEFAULT_BUDGET, true),
        };
        if inputs {
            tracing::info!(
                budget_mib = budget >> 20,
                device = %c.device_name(),
                "{algorithm}: keeping task vectors on the device between passes (FUSION_DEVICE_CACHE)"
            );
        }
        Ok(DeviceCache {
            ctx: ctx.clone(),
            budget,
            inputs,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached tensor of (`name`, `slot`), or `make()`'s, which the cache keeps when the
    /// budget allows. Either way the caller gets a view that does not release a cached tensor.
    pub(crate) fn get_or_make<'c>(
        &self,
        c: &'c dyn Compute,
        name: &str,
        slot: Slot,
        make: impl FnOnce() -> Result<Gpu<'c>>,
    ) -> Result<Gpu<'c>> {
        if let Some(t) = self.get(name, slot) {
            return Ok(Gpu::borrowed(c, t));
        }
        let t = make()?;
        if !self.keeps(slot) {
            return Ok(t);
        }
        let (dtype, shape) = c.describe(t.id())?;
        let bytes = dtype.size() as u64 * shape.iter().map(|&d| d as u64).product::<u64>();
        let mut s = self.lock();
        if s.used + bytes > self.budget {
            return Ok(t);
        }
        s.used += bytes;
        let id = t.into_raw();
        s.entries.insert((name.to_string(), slot), (id, bytes));
        Ok(Gpu::borrowed(c, id))
    }

    /// Whether the cache is off (`FUSION_DEVICE_CACHE=0`): the merge then streams strictly, a
    /// tensor or two of one key at a time, however many models there are.
    pub(crate) fn off(&self) -> bool {
        self.budget == 0
    }

    /// Whether base tensors and task vectors may be kept (see the module docs).
    pub(crate) fn keeps_inputs(&self) -> bool {
        self.inputs
    }

    /// Whether entries of `slot`'s kind may be kept.
    fn keeps(&self, slot: Slot) -> bool {
        self.budget > 0 && (self.inputs || matches!(slot, Slot::ElectedSum | Slot::Merged))
    }

    /// Whether an entry of `slot`'s kind and `bytes` would be kept now.
    pub(crate) fn has_room(&self, slot: Slot, bytes: u64) -> bool {
        self.keeps(slot) && self.lock().used + bytes <= self.budget
    }

    /// Keep `t` as (`name`, `slot`) if the budget allows; else it is released.
    pub(crate) fn put(&self, c: &dyn Compute, name: &str, slot: Slot, t: Gpu<'_>) -> Result<()> {
        self.get_or_make(c, name, slot, || Ok(t)).map(drop)
    }

    /// Remove (`name`, `slot`) from the cache and hand it over (the caller releases it).
    pub(crate) fn take(&self, name: &str, slot: Slot) -> Option<GpuTensor> {
        let mut s = self.lock();
        let (t, bytes) = s.entries.remove(&(name.to_string(), slot))?;
        s.used -= bytes;
        Some(t)
    }

    /// The cached tensor of (`name`, `slot`), if any (owned by the cache).
    pub(crate) fn get(&self, name: &str, slot: Slot) -> Option<GpuTensor> {
        self.lock()
            .entries
            .get(&(name.to_string(), slot))
            .map(|&(t, _)| t)
    }

    /// Release every entry of tensor `name` (its merge is done).
    pub(crate) fn evict(&self, c: &dyn Compute, name: &str) {
        let mut s = self.lock();
        let keys: Vec<_> = s
            .entries
            .keys()
            .filter(|(n, _)| n == name)
            .cloned()
            .collect();
        for k in keys {
            if let Some((t, bytes)) = s.entries.remove(&k) {
                s.used -= bytes;
                c.release(t);
            }
        }
    }

    /// (entries, bytes held).
    pub(crate) fn usage(&self) -> (usize, u64) {
        let s = self.lock();
        (s.entries.len(), s.used)
    }
}

impl Drop for DeviceCache {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if s.entries.is_empty() {
            return;
        }
        if let Ok(c) = self.ctx.compute() {
            for (_, (t, _)) in s.entries.drain() {
                c.release(t);
            }
        }
    }
}

/// `"4G"`, `"512M"`, `"1.5GiB"`, `"0"`, `"123456"` → bytes (K/M/G/T are powers of 1024).
pub(crate) fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let lower = lower.trim_end_matches("ib").trim_end_matches('b');
    let (num, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        Some('t') => (&lower[..lower.len() - 1], 40),
        _ => (lower, 0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{t}` is not a size (bytes, or a number with K, M, G or T)"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!(
            "`{t}` is not a size (bytes, or a number with K, M, G or T)"
        ));
    }
    Ok((v * (1u64 << shift) as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("123456"), Ok(123_456));
        assert_eq!(parse_bytes("4G"), Ok(4 << 30));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes(" 2 kb "), Ok(2048));
        assert!(parse_bytes("lots")
            .unwrap_err()
            .contains("`lots` is not a size"));
        assert!(parse_bytes("-1G").is_err());
    }
}
