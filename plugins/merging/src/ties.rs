//! `ties_merging` (FusionBench `TiesMergingAlgorithm`) and `dare_ties_merging`
//! (`DareTiesMerging`), streamed.
//!
//! FusionBench flattens every task vector into one row and keeps, per model, the entries with
//! `|τ| >=` the k-th value of the whole row; entries whose elected sign `sign(Σ trimmed)` is 0
//! take the majority sign of the whole model. Both are whole-model statistics, so `run` makes
//! passes over the models before the lazy merge:
//!
//! 1. thresholds: a radix select over the bits of `|τ|` (the kernel library's
//!    `radix_histogram`, four passes of one byte each), fed one tensor of one model at a time
//!    into one 256-bin histogram per model (2 KiB each, all in one device tensor), so nothing
//!    but a tensor and the histograms is on the device;
//! 2. majority sign: the elected signs counted over every tensor (`fusion_kernels::SignVotes`).
//!
//! The merge of a tensor then revisits its task vectors, one model at a time: the elected sum
//! `S = Σ trim(τᵢ)` (kept from step 2 when the cache's budget allows, else recomputed), then
//! the disjoint merge accumulated model by model (`fusion_kernels::TiesAccumulator`). The
//! device holds at most six tensors of one key, whatever the number of models, besides the
//! kept sums. The price is re-reading the inputs: 4 + 1 passes in `run`, 1 or 2 per tensor in
//! the merge. A plain task vector is never written out in these passes: the
//! kernels read the fine-tuned and base tensors and subtract themselves
//! (`radix_histogram_delta`, `ties_elect_delta`, `TiesAccumulator::add_delta`), with the same
//! f32 difference as `task_vector`. DARE task vectors are formed (counter-based random draws,
//! so every pass sees the same ones).
//!
//! On a hardware GPU the task vectors stay on the device between passes instead, up to a budget
//! (`crate::cache`, `FUSION_DEVICE_CACHE`): the first pass uploads them, later passes read them
//! there, and a key whose task vectors are all cached is elected and merged by the library's
//! multi-input launches (`ties_elected_sum`, `ties_merge`) in model order, which gives the same
//! f32 sums as the streamed path.

use std::collections::HashSet;

use fusion_kernels::{SignVotes, TiesAccumulator, TiesMerge};
use fusion_plugin_api::prelude::*;
use fusion_plugin_api::{Binding, GpuTensor, TensorInfo};

use crate::cache::{DeviceCache, Slot};
use crate::delta::Delta;
use crate::device::{kernel_dtype, upload, Gpu};
use crate::inputs::Inputs;
use crate::lazy::{Merged, TensorMerge};
use crate::params;
use crate::task_arithmetic::DareConfig;

/// TIES-merging: `scaling_factor` 0.3, `threshold` 20 (percent kept; values ≤ 1 are fractions),
/// `remove_keys` [] (kept at the pretrained values), `merge_func` `sum` (or `mean`, `max`).
pub struct TiesMerging {
    settings: TiesSettings,
}

/// DARE, then TIES-merging on the dropped task vectors: `sparsity_ratio` 0.5, `rescale` true,
/// `only_on_linear_weights` false, `seed`, `scaling_factor` 0.5, `threshold` 20,
/// `remove_keys` [], `merge_func` `sum`.
pub struct DareTiesMerging {
    settings: TiesSettings,
    dare: DareConfig,
}

#[derive(Clone, Debug)]
struct TiesSettings {
    scaling_factor: f64,
    threshold: f64,
    remove_keys: HashSet<String>,
    merge_func: TiesMerge,
}

impl TiesSettings {
    fn read(config: &Config, default_scaling: f64) -> Result<Self> {
        let threshold: f64 = config.get_or("threshold", 20.0)?;
        if !(0.0..=100.0).contains(&threshold) {
            return Err(Error::config(format!(
                "{}: `threshold` is the percentage of entries kept, in [0, 100]; got {threshold}",
                config.target()
            )));
        }
        let merge_func: String = config.get_or("merge_func", "sum".to_string())?;
        Ok(TiesSettings {
            scaling_factor: config.get_or("scaling_factor", default_scaling)?,
            threshold,
            remove_keys: config
                .get_or::<Vec<String>>("remove_keys", Vec::new())?
                .into_iter()
                .collect(),
            merge_func: merge_func
                .parse()
                .map_err(|e: Error| e.context(config.target()))?,
        })
    }
}

impl FromConfig for TiesMerging {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(TiesMerging {
            settings: TiesSettings::read(config, 0.3)?,
        })
    }
}

impl Algorithm for TiesMerging {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        run(pool, ctx, "ties_merging", &self.settings, Delta::Plain)
    }
}

impl FromConfig for DareTiesMerging {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(DareTiesMerging {
            settings: TiesSettings::read(config, 0.5)?,
            dare: DareConfig::read(config)?,
        })
    }
}

impl Algorithm for DareTiesMerging {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let name = "dare_ties_merging";
        params::compute(ctx, name)?;
        run(pool, ctx, name, &self.settings, self.dare.delta(ctx, name))
    }
}

fn run(
    pool: &dyn ModelPool,
    ctx: &Context,
    algorithm: &str,
    s: &TiesSettings,
    delta: Delta,
) -> Result<Model> {
    let c = params::compute(ctx, algorithm)?;
    let inputs = Inputs::open(pool, algorithm, true, 1)?;
    for key in &s.remove_keys {
        if inputs.info(key).is_err() {
            tracing::warn!(
                "{algorithm}: `remove_keys` names `{key}`, which the models do not have"
            );
        }
    }
    let mut keys = Vec::new();
    for name in inputs.names()? {
        let info = inputs.info(&name)?;
        if info.dtype.is_float() && info.numel() > 0 && !s.remove_keys.contains(&name) {
            keys.push((name, info));
        }
    }
    let cache = DeviceCache::new(ctx, c, algorithm)?;
    let source = Source {
        inputs: &inputs,
        delta,
        cache: &cache,
    };
    let sweep = Sweep {
        c,
        source: &source,
        keys: &keys,
    };
    let thresholds = sweep.thresholds(ctx, s.threshold)?;
    let majority = sweep.majority(ctx, &thresholds)?;
    let (entries, bytes) = cache.usage();
    tracing::info!(?thresholds, majority, merge_func = ?s.merge_func, cached_tensors = entries, cached_mib = bytes >> 20, "{algorithm}: trimmed and elected");
    let merge = TiesTensor {
        inputs: inputs.clone(),
        thresholds,
        majority,
        merge: s.merge_func,
        lambda: s.scaling_factor as f32,
        delta,
        removed: s.remove_keys.clone(),
        cache,
    };
    Ok(Merged::model(ctx, inputs, merge))
}

/// Where a pass gets a key's tensors: the device cache, else the checkpoints (uploaded, and the
/// task vector computed).
struct Source<'a> {
    inputs: &'a Inputs,
    delta: Delta,
    cache: &'a DeviceCache,
}

impl Source<'_> {
    /// The base model's tensor `name`.
    fn base<'c>(&self, c: &'c dyn Compute, name: &str) -> Result<Gpu<'c>> {
        let b = self.inputs.base();
        self.cache
            .get_or_make(c, name, Slot::Base, || upload(c, &b.model, &b.name, name))
    }

    /// Model `i`'s task vector of `name`; `base` holds the base tensor once one was needed.
    fn task_vector<'c>(
        &self,
        c: &'c dyn Compute,
        base: &mut Option<Gpu<'c>>,
        i: usize,
        name: &str,
        info: &TensorInfo,
    ) -> Result<Gpu<'c>> {
        self.cache.get_or_make(c, name, Slot::TaskVector(i), || {
            let base = self.base_of(c, base, name)?;
            let m = &self.inputs.models[i];
            let x = upload(c, &m.model, &m.name, name)?;
            self.delta.compute(c, &x, base, &m.name, name, info)
        })
    }

    /// Model `i`'s task vector of `name` as a kernel takes it: formed (from the cache, or
    /// computed and offered to it), or, for a plain task vector that is not cached and when
    /// `may_defer` allows, as the fine-tuned tensor beside the base, for kernels that subtract
    /// themselves (saving a tensor written and read per model). `base` holds the base tensor
    /// once one was needed.
    fn operand<'c, 'b>(
        &self,
        c: &'c dyn Compute,
        base: &'b mut Option<Gpu<'c>>,
        i: usize,
        name: &str,
        info: &TensorInfo,
        may_defer: bool,
    ) -> Result<Operand<'c, 'b>> {
        let deferred = may_defer
            && matches!(self.delta, Delta::Plain)
            && self.cache.get(name, Slot::TaskVector(i)).is_none();
        if !deferred {
            return self
                .task_vector(c, base, i, name, info)
                .map(Operand::Formed);
        }
        let m = &self.inputs.models[i];
        let x = upload(c, &m.model, &m.name, name)?;
        Ok(Operand::Delta {
            x,
            base: self.base_of(c, base, name)?,
        })
    }

    /// Add model `i`'s task vector of `name` to the radix histogram `hist`.
    #[allow(clippy::too_many_arguments)]
    fn histogram<'c>(
        &self,
        c: &'c dyn Compute,
        base: &mut Option<Gpu<'c>>,
        i: usize,
        name: &str,
        info: &TensorInfo,
        hist: Binding,
        pass: RadixPass,
    ) -> Result<()> {
        let RadixPass {
            shift,
            prefix,
            mask,
            first,
        } = pass;
        // The first pass fills the cache (what does not fit then never will), so it forms the
        // task vectors.
        let fill_cache = first && self.cache.keeps_inputs();
        match self.operand(c, base, i, name, info, !fill_cache)? {
            Operand::Formed(tv) => {
                fusion_kernels::radix_histogram(c, hist, tv.id(), shift, prefix, mask)
            }
            Operand::Delta { x, base } => fusion_kernels::radix_histogram_delta(
                c,
                hist,
                x.id(),
                base.id(),
                shift,
                prefix,
                mask,
            ),
        }
    }

    /// Every model's task vector of `name` when the cache holds them all (views), so that one
    /// multi-input launch can take them together instead of one launch per model.
    fn all_cached<'c>(&self, c: &'c dyn Compute, name: &str) -> Option<Vec<Gpu<'c>>> {
        (0..self.inputs.models.len())
            .map(|i| {
                self.cache
                    .get(name, Slot::TaskVector(i))
                    .map(|t| Gpu::borrowed(c, t))
            })
            .collect()
    }

    /// The elected sum `S = Σᵢ trim(τᵢ)` of `name` (f32): kept in the cache by the
    /// sign-election pass when the budget allows, so that the merge finds it there.
    fn elected_sum<'c>(
        &self,
        c: &'c dyn Compute,
        base: &mut Option<Gpu<'c>>,
        name: &str,
        info: &TensorInfo,
        thresholds: &[f32],
    ) -> Result<Gpu<'c>> {
        self.cache.get_or_make(c, name, Slot::ElectedSum, || {
            self.compute_elected_sum(c, base, name, info, thresholds)
        })
    }

    /// [`Self::elected_sum`] computed, summed in model order either way.
    fn compute_elected_sum<'c>(
        &self,
        c: &'c dyn Compute,
        base: &mut Option<Gpu<'c>>,
        name: &str,
        info: &TensorInfo,
        thresholds: &[f32],
    ) -> Result<Gpu<'c>> {
        if let Some(tvs) = self.all_cached(c, name) {
            let ids: Vec<GpuTensor> = tvs.iter().map(Gpu::id).collect();
            let s = fusion_kernels::ties_elected_sum(c, &ids, thresholds)
                .map_err(|e| e.context(format!("tensor `{name}`")))?;
            return Ok(Gpu::adopt(c, s));
        }
        let s = Gpu::zeros(c, DType::F32, &info.shape)?;
        for (i, m) in self.inputs.models.iter().enumerate() {
            let ctx = |e: Error| e.context(format!("tensor `{name}` of `{}`", m.name));
            match self.operand(c, base, i, name, info, true)? {
                Operand::Formed(tv) => add_trimmed(c, &s, &tv, thresholds[i]),
                Operand::Delta { x, base } => fusion_kernels::ties_elect_delta(
                    c,
                    s.id(),
                    x.id(),
                    base.id(),
                    thresholds[i],
                    i > 0,
                ),
            }
            .map_err(ctx)?;
        }
        Ok(s)
    }

    /// The base tensor, fetched into `base` the first time.
    fn base_of<'b, 'c>(
        &self,
        c: &'c dyn Compute,
        base: &'b mut Option<Gpu<'c>>,
        name: &str,
    ) -> Result<&'b Gpu<'c>> {
        Ok(match base {
            Some(b) => b,
            None => base.insert(self.base(c, name)?),
        })
    }

    /// Model `i`'s step of the streamed disjoint merge of `name`.
    #[allow(clippy::too_many_arguments)]
    fn merge_step<'c>(
        &self,
        c: &'c dyn Compute,
        base: &mut Option<Gpu<'c>>,
        acc: &mut TiesAccumulator<'_>,
        s: &Gpu<'_>,
        i: usize,
        name: &str,
        info: &TensorInfo,
        threshold: f32,
    ) -> Result<()> {
        match self.operand(c, base, i, name, info, true)? {
            Operand::Formed(tv) => acc.add(s.id(), tv.id(), threshold),
            Operand::Delta { x, base } => acc.add_delta(s.id(), x.id(), base.id(), threshold),
        }
    }
}

/// A task vector as a kernel takes it (see [`Source::operand`]).
enum Operand<'c, 'b> {
    /// τ itself (a cache view or a fresh tensor).
    Formed(Gpu<'c>),
    /// θ and θ₀, for a kernel that computes τ = θ − θ₀ itself.
    Delta { x: Gpu<'c>, base: &'b Gpu<'c> },
}

/// One radix-select pass: the byte at `shift`, among entries matching `prefix` under `mask`;
/// `first` for the pass that may fill the device cache.
#[derive(Clone, Copy)]
struct RadixPass {
    shift: u32,
    prefix: u32,
    mask: u32,
    first: bool,
}

/// One pass over every kept tensor of every model.
struct Sweep<'a> {
    c: &'a dyn Compute,
    source: &'a Source<'a>,
    keys: &'a [(String, TensorInfo)],
}

impl Sweep<'_> {
    /// Each model's trim threshold: its task vector keeps `|τ| >= threshold`, the k-th largest
    /// magnitude over all kept tensors with FusionBench's k (see `topk_rank_from_top`).
    fn thresholds(&self, ctx: &Context, k_param: f64) -> Result<Vec<f32>> {
        let n = self.source.inputs.models.len();
        let d: u64 = self.keys.iter().map(|(_, i)| i.numel() as u64).sum();
        let Some(rank) = fusion_kernels::topk_rank_from_top(d, k_param) else {
            return Ok(vec![0.0; n]);
        };
        let progress = ctx.progress("TIES thresholds", 4 * self.keys.len() as u64);
        let mut prefix = vec![0u32; n];
        let mut mask = vec![0u32; n];
        let mut remaining = vec![rank; n];
        for shift in [24u32, 16, 8, 0] {
            // One tensor holds every model's histogram (2 KiB each, at aligned offsets).
            let stride = hist_stride(self.c);
            let hists = Gpu::zeros(self.c, DType::U32, &[n * stride as usize / 4])?;
            for (name, info) in self.keys {
                let mut base = None;
                for (i, m) in self.source.inputs.models.iter().enumerate() {
                    let slot = Binding::write(hists.id())
                        .range(i as u64 * stride, fusion_kernels::RADIX_HISTOGRAM_BYTES);
                    let pass = RadixPass {
                        shift,
                        prefix: prefix[i],
                        mask: mask[i],
                        first: shift == 24,
                    };
                    self.source
                        .histogram(self.c, &mut base, i, name, info, slot, pass)
                        .map_err(|e| e.context(format!("tensor `{name}` of `{}`", m.name)))?;
                }
                progress.advance(1);
            }
            let all = self.c.read(hists.id())?;
            for i in 0..n {
                let at = i * stride as usize;
                let bytes = &all[at..at + fusion_kernels::RADIX_HISTOGRAM_BYTES as usize];
                let words: Vec<u32> = bytes
                    .chunks_exact(4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                    .collect();
                let (bin, rest) = fusion_kernels::pick_bin(&words, remaining[i]).ok_or_else(|| {
                    Error::compute(format!(
                        "TIES threshold of `{}`: the histogram at shift {shift} counts fewer than {} entries",
                        self.source.inputs.models[i].name, remaining[i]
                    ))
                })?;
                prefix[i] |= bin << shift;
                mask[i] |= 0xff << shift;
                remaining[i] = rest;
            }
        }
        Ok(prefix.into_iter().map(f32::from_bits).collect())
    }

    /// The majority sign: `sign(Σ elected signs)` over every entry of the model.
    fn majority(&self, ctx: &Context, thresholds: &[f32]) -> Result<f32> {
        let c = self.c;
        let progress = ctx.progress("TIES sign election", self.keys.len() as u64);
        let votes = SignVotes::new(c)?;
        for (name, info) in self.keys {
            let s = self
                .source
                .elected_sum(c, &mut None, name, info, thresholds)?;
            // S is counted as it is: a threshold of 0 trims nothing.
            votes.add(&[s.id()], &[0.0])?;
            progress.advance(1);
        }
        votes.majority_sign()
    }
}

/// `S += trim(τ)` (the elected sum, model by model, as FusionBench's `sum(dim=0)`).
fn add_trimmed(c: &dyn Compute, s: &Gpu<'_>, tv: &Gpu<'_>, threshold: f32) -> Result<()> {
    let t = Gpu::adopt(
        c,
        fusion_kernels::ties_elected_sum(c, &[tv.id()], &[threshold])?,
    );
    fusion_kernels::accumulate(c, s.id(), &[(t.id(), 1.0)])
}

/// The distance between two models' histograms in the shared tensor: a multiple of the
/// device's storage offset alignment (WebGPU caps it at 256, so normally 2048).
fn hist_stride(c: &dyn Compute) -> u64 {
    fusion_kernels::RADIX_HISTOGRAM_BYTES.max(u64::from(c.limits().min_storage_offset_alignment))
}

/// The merge of one tensor with precomputed thresholds and majority sign.
struct TiesTensor {
    inputs: Inputs,
    thresholds: Vec<f32>,
    majority: f32,
    merge: TiesMerge,
    lambda: f32,
    delta: Delta,
    removed: HashSet<String>,
    cache: DeviceCache,
}

impl TiesTensor {
    fn source(&self) -> Source<'_> {
        Source {
            inputs: &self.inputs,
            delta: self.delta,
            cache: &self.cache,
        }
    }
}

impl TensorMerge for TiesTensor {
    fn copies(&self, name: &str) -> bool {
        self.removed.contains(name)
    }

    fn merge<'c>(&self, c: &'c dyn Compute, name: &str, info: &TensorInfo) -> Result<Gpu<'c>> {
        let out = self.merge_uncached(c, name, info);
        // The merged tensor was the last use of this key's entries.
        self.cache.evict(c, name);
        out
    }
}

impl TiesTensor {
    fn merge_uncached<'c>(
        &self,
        c: &'c dyn Compute,
        name: &str,
        info: &TensorInfo,
    ) -> Result<Gpu<'c>> {
        let source = self.source();
        let mut base = None;
        let merged = if let Some(tvs) = source.all_cached(c, name) {
            // Everything on the device: the library's multi-input merge, a few launches.
            let ids: Vec<GpuTensor> = tvs.iter().map(Gpu::id).collect();
            let merged = fusion_kernels::ties_merge(
                c,
                &ids,
                &self.thresholds,
                self.majority,
                self.merge,
                DType::F32,
            )?;
            Gpu::adopt(c, merged)
        } else {
            let s = source.elected_sum(c, &mut base, name, info, &self.thresholds)?;
            // Disjoint merge, one model at a time.
            let mut acc = TiesAccumulator::new(c, &info.shape, self.merge, self.majority)?;
            for (i, m) in self.inputs.models.iter().enumerate() {
                let threshold = self.thresholds[i];
                source
                    .merge_step(c, &mut base, &mut acc, &s, i, name, info, threshold)
                    .map_err(|e| e.context(format!("tensor `{name}` of `{}`", m.name)))?;
            }
            Gpu::adopt(c, acc.finish(s.id(), DType::F32)?)
        };
        let base = source.base_of(c, &mut base, name)?;
        let out = fusion_kernels::weighted_sum(
            c,
            &[(base.id(), 1.0), (merged.id(), self.lambda)],
            kernel_dtype(info.dtype),
        )?;
        Ok(Gpu::adopt(c, out))
    }
}
