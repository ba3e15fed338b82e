//! `ties_merging` (FusionBench `TiesMergingAlgorithm`) and `dare_ties_merging`
//! (`DareTiesMerging`), streamed.
//!
//! FusionBench flattens every task vector into one row and keeps, per model, the entries with
//! `|τ| >=` the k-th value of the whole row; entries whose elected sign `sign(Σ trimmed)` is 0
//! take the majority sign of the whole model. Both are whole-model statistics, so `run` makes
//! passes over the models before the lazy merge:
//!
//! 1. thresholds: where the task vectors are plain and up to eight models share the device
//!    (the usual case on a software adapter), one pass over a range of `|τ|`'s bits guessed
//!    from a host-side sample of each task vector (`crate::bracket`), which settles each
//!    model's k-th value exactly when the guess holds; otherwise, and for any model whose guess
//!    missed, a radix select over the bits of `|τ|` (the kernel library's `radix_histogram`,
//!    two passes: the top 12 bits, then the low 19 of the entries in the chosen bin), fed one
//!    tensor of one model at a time into one histogram per model (32 KiB, then 4 MiB, all in
//!    one device tensor);
//! 2. sign election: the elected signs counted over every tensor (`fusion_kernels::SignVotes`)
//!    for the majority sign.
//!
//! The sign-election pass reads each key's tensors of every model anyway, so it merges the key
//! there too, from the same uploads: the elected sum `S = Σ trim(τᵢ)`, then the disjoint merge
//! with majority sign +1, kept in the device cache until the merged model asks for the tensor.
//! The majority only matters where `S = 0`; the merge counts the entries another majority
//! would change (`count_undecided`), and a key with any is merged again later if the majority
//! turns out not to be +1. That makes two reads of the models in all (three where the guessed
//! ranges do not apply). Where the task vectors are plain and the device binds twelve storage
//! buffers (up to eight models), a key takes fused launches there
//! (`fusion_kernels::ties_elect_merge_delta`: where every tensor is f32, one launch reads each
//! tensor once and writes the merged model tensor `base + λ·τ`, the votes and the undecided
//! count, with `S` kept in registers; else `ties_elected_sum_delta` then
//! `ties_merge_delta_scaled`, which write nothing but `S` and the output); otherwise a launch
//! or two per model.
//!
//! A key whose merged tensor does not fit the cache, or whose tensors together are too large to
//! hold at once, is merged later instead, revisiting its task vectors one model at a time: the
//! elected sum (kept from step 2 when the cache's budget allows, else recomputed), then the
//! disjoint merge accumulated model by model. The device then holds at most six tensors of one
//! key, whatever the number of models, besides the kept sums. A plain task vector is never
//! written out in these passes: the kernels read the fine-tuned and base tensors and subtract
//! themselves (`radix_histogram_delta`, `ties_elect_delta`, `TiesAccumulator::add_delta`),
//! with the same f32 difference as `task_vector`. DARE task vectors are formed (counter-based
//! random draws, so every pass sees the same ones).
//!
//! On a hardware GPU the task vectors stay on the device between passes instead, up to a budget
//! (`crate::cache`, `FUSION_DEVICE_CACHE`): the first pass uploads them, later passes read them
//! there, and a key whose task vectors are all cached is elected and merged by the library's
//! multi-input launches (`ties_elected_sum`, `ties_merge`) in model order, which gives the same
//! f32 sums as the streamed path.

mod one_pass;

use one_pass::OnePass;

use std::collections::HashSet;

use fusion_kernels::{RadixDigit, RadixState, SignVotes, TiesAccumulator, TiesMerge};
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
    let early = EarlyMerge {
        merge: s.merge_func,
        lambda: s.scaling_factor as f32,
    };
    let (thresholds, majority, merged_early) = match sweep.one_pass(ctx, s.threshold, early)? {
        OnePass::Done {
            thresholds,
            majority,
            merged_early,
        } => (thresholds, majority, merged_early),
        rest => {
            let thresholds = match rest {
                // The pass settled the thresholds whose ranges held; the rest take radix passes.
                OnePass::Missed { rank, found } => sweep.settle(ctx, rank, found)?,
                _ => sweep.thresholds(ctx, s.threshold)?,
            };
            let (majority, merged_early) = sweep.elect(ctx, &thresholds, early)?;
            (thresholds, majority, merged_early)
        }
    };
    let (entries, bytes) = cache.usage();
    tracing::info!(?thresholds, majority, merge_func = ?s.merge_func, merged_early, cached_tensors = entries, cached_mib = bytes >> 20, "{algorithm}: trimmed and elected");
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
    Merged::model(ctx, inputs, merge)
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
            digit,
            state,
            first,
        } = pass;
        // The first pass fills the cache (what does not fit then never will), so it forms the
        // task vectors.
        let fill_cache = first && self.cache.keeps_inputs();
        match self.operand(c, base, i, name, info, !fill_cache)? {
            Operand::Formed(tv) => fusion_kernels::radix_histogram(c, hist, tv.id(), digit, state),
            Operand::Delta { x, base } => {
                fusion_kernels::radix_histogram_delta(c, hist, x.id(), base.id(), digit, state)
            }
        }
    }

    /// Whether the thresholds may take one pass over a range guessed from a sample
    /// (`crate::bracket`): plain task vectors, up to eight models, a device that binds the
    /// launch, and a cache that neither is off (strict streaming) nor keeps task vectors (then
    /// the first radix pass fills it, and later passes read the device).
    fn brackets_apply(&self, c: &dyn Compute) -> bool {
        matches!(self.delta, Delta::Plain)
            && !self.cache.off()
            && !self.cache.keeps_inputs()
            && fusion_kernels::radix_bracket_fits(c, self.inputs.models.len())
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

    /// Every model's fine-tuned tensor of `name`, uploaded, for the fused launches
    /// (`fusion_kernels::ties_elected_sum_delta`, `ties_merge_delta_scaled`): where the task
    /// vectors are plain, none of them is on the device already, the device binds the launches
    /// and the key's tensors fit at once (see [`held_at_once`]); `None` where not, and with the
    /// device cache off, which asks for strict streaming (a tensor or two per model at a time).
    fn fused_inputs<'c>(
        &self,
        c: &'c dyn Compute,
        name: &str,
        info: &TensorInfo,
    ) -> Result<Option<Vec<Gpu<'c>>>> {
        let models = self.inputs.models.len();
        if !matches!(self.delta, Delta::Plain)
            || self.cache.off()
            || !fusion_kernels::ties_fused_fits(c, models)
            || !held_at_once(info, models)
            || (0..models).any(|i| self.cache.get(name, Slot::TaskVector(i)).is_some())
        {
            return Ok(None);
        }
        self.inputs
            .models
            .iter()
            .map(|m| upload(c, &m.model, &m.name, name))
            .collect::<Result<Vec<_>>>()
            .map(Some)
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
        let ctx = |e: Error| e.context(format!("tensor `{name}`"));
        if let Some(tvs) = self.all_cached(c, name) {
            let ids: Vec<GpuTensor> = tvs.iter().map(Gpu::id).collect();
            let s = fusion_kernels::ties_elected_sum(c, &ids, thresholds).map_err(ctx)?;
            return Ok(Gpu::adopt(c, s));
        }
        if let Some(xs) = self.fused_inputs(c, name, info)? {
            let ids: Vec<GpuTensor> = xs.iter().map(Gpu::id).collect();
            let b = self.base_of(c, base, name)?;
            let s = fusion_kernels::ties_elected_sum_delta(c, &ids, b.id(), thresholds, None)
                .map_err(ctx)?;
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

    /// Whether the sign-election pass merges `name` too (see [`Self::elect_and_merge`]): when
    /// its task vectors are not all on the device already (then the merge reads nothing from
    /// the host anyway), the cache has room for the merged tensor, and the key's working set
    /// (every model's tensor, the base, four f32 tensors) is at most [`EARLY_MERGE_WORKING_SET`].
    fn merges_early(&self, c: &dyn Compute, name: &str, info: &TensorInfo) -> bool {
        let out_bytes = info.numel() as u64 * kernel_dtype(info.dtype).size() as u64;
        held_at_once(info, self.inputs.models.len())
            && self.cache.has_room(Slot::Merged, out_bytes)
            && self.all_cached(c, name).is_none()
    }

    /// The sign-election step of `name` with its merge, reading each model's tensor once: the
    /// elected sum `S` (counted in `votes`), then the disjoint merge accumulated with majority
    /// sign +1 from the same uploads, scaled onto the base and kept in the cache as the key's
    /// [`Slot::Merged`]. The majority sign is not known yet; the number of entries another
    /// majority would change goes to slot `slot` of `undecided`, so that the caller can drop
    /// the merge where the majority turns out otherwise and entries depend on it.
    #[allow(clippy::too_many_arguments)]
    fn elect_and_merge(
        &self,
        c: &dyn Compute,
        name: &str,
        info: &TensorInfo,
        thresholds: &[f32],
        early: EarlyMerge,
        votes: &SignVotes<'_>,
        undecided: GpuTensor,
        slot: u32,
    ) -> Result<()> {
        let mut base = None;
        let mut held = Vec::with_capacity(self.inputs.models.len());
        for (i, m) in self.inputs.models.iter().enumerate() {
            let operand = self
                .operand(c, &mut base, i, name, info, true)
                .map_err(|e| e.context(format!("tensor `{name}` of `{}`", m.name)))?;
            held.push(match operand {
                Operand::Formed(tv) => Held::Formed(tv),
                Operand::Delta { x, .. } => Held::Fine(x),
            });
        }
        let base = self.base_of(c, &mut base, name)?;
        let fine: Vec<GpuTensor> = held
            .iter()
            .filter_map(|h| match h {
                Held::Fine(x) => Some(x.id()),
                Held::Formed(_) => None,
            })
            .collect();
        if fine.len() == held.len() && fusion_kernels::ties_fused_fits(c, fine.len()) {
            // One launch for the key where all is f32 (each tensor read once), else two.
            let m = early.scaled(thresholds, 1.0, info);
            let out = fusion_kernels::ties_elect_merge_delta(
                c,
                &fine,
                base.id(),
                m,
                Some(votes),
                (undecided, slot),
            )
            .map_err(|e| e.context(format!("tensor `{name}`")))?;
            return self.cache.put(c, name, Slot::Merged, Gpu::adopt(c, out));
        }
        // The same launches, in the same order, as `compute_elected_sum` and the streamed
        // merge, so the result is the one the merge pass would compute.
        let s = Gpu::zeros(c, DType::F32, &info.shape)?;
        for (i, h) in held.iter().enumerate() {
            match h {
                Held::Formed(tv) => add_trimmed(c, &s, tv, thresholds[i]),
                Held::Fine(x) => fusion_kernels::ties_elect_delta(
                    c,
                    s.id(),
                    x.id(),
                    base.id(),
                    thresholds[i],
                    i > 0,
                ),
            }
            .map_err(|e| e.context(format!("tensor `{name}`")))?;
        }
        votes.add(&[s.id()], &[0.0])?;
        let mut acc = TiesAccumulator::new(c, &info.shape, early.merge, 1.0)?;
        for (i, h) in held.iter().enumerate() {
            match h {
                Held::Formed(tv) => acc.add(s.id(), tv.id(), thresholds[i]),
                Held::Fine(x) => acc.add_delta(s.id(), x.id(), base.id(), thresholds[i]),
            }
            .map_err(|e| e.context(format!("tensor `{name}`")))?;
        }
        drop(held);
        acc.count_undecided(s.id(), undecided, slot)?;
        let merged = Gpu::adopt(c, acc.finish(s.id(), DType::F32)?);
        let out = fusion_kernels::weighted_sum(
            c,
            &[(base.id(), 1.0), (merged.id(), early.lambda)],
            kernel_dtype(info.dtype),
        )?;
        self.cache.put(c, name, Slot::Merged, Gpu::adopt(c, out))
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

/// A model's tensor of a key held for both steps of [`Source::elect_and_merge`].
enum Held<'c> {
    /// The task vector, formed (DARE's, or a cached one).
    Formed(Gpu<'c>),
    /// The fine-tuned tensor, for kernels that subtract the base themselves.
    Fine(Gpu<'c>),
}

/// Most bytes of one key's tensors [`Source::elect_and_merge`] and the fused merge hold on the
/// device at once; larger keys are elected and merged in separate passes, a tensor or two at a
/// time.
const EARLY_MERGE_WORKING_SET: u64 = 1 << 30;

/// Whether a key of `info` may have every model's tensor on the device at once: its working
/// set (each model's tensor, the base, four f32 tensors, counted at four bytes an element) is
/// at most [`EARLY_MERGE_WORKING_SET`].
fn held_at_once(info: &TensorInfo, models: usize) -> bool {
    info.numel() as u64 * (4 * models as u64 + 8 + 16) <= EARLY_MERGE_WORKING_SET
}

/// Log how many of the models' thresholds (`found`) one pass over guessed ranges settled.
fn log_settled(found: &[Option<f32>], started: std::time::Instant) {
    let n = found.len();
    let settled = found.iter().filter(|t| t.is_some()).count();
    tracing::info!(
        settled,
        models = n,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "TIES thresholds: {settled} of {n} models settled in one pass over a range guessed from a sample"
    );
}

/// What the sign-election pass needs to merge keys early.
#[derive(Clone, Copy)]
struct EarlyMerge {
    merge: TiesMerge,
    lambda: f32,
}

impl EarlyMerge {
    /// The fused merge of a key of `info` with `thresholds` and `majority`.
    fn scaled<'a>(
        &self,
        thresholds: &'a [f32],
        majority: f32,
        info: &TensorInfo,
    ) -> fusion_kernels::ScaledTiesMerge<'a> {
        fusion_kernels::ScaledTiesMerge {
            thresholds,
            majority,
            merge: self.merge,
            lambda: self.lambda,
            dtype: kernel_dtype(info.dtype),
        }
    }
}

/// One radix-select pass: `digit`, among the entries matching the digits `state` fixed;
/// `first` for the pass that may fill the device cache.
#[derive(Clone, Copy)]
struct RadixPass {
    digit: RadixDigit,
    state: RadixState,
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
        let mut found = vec![None; n];
        if self.source.brackets_apply(self.c) {
            let started = std::time::Instant::now();
            found = crate::bracket::thresholds(
                self.c,
                ctx,
                self.source.inputs,
                self.keys,
                rank,
                d,
                held_at_once,
            )?;
            log_settled(&found, started);
        }
        self.settle(ctx, rank, found)
    }

    /// Every model's threshold: those of `found`, and the radix select's (of the `rank`-th
    /// largest) for the models it lacks.
    fn settle(&self, ctx: &Context, rank: u64, mut found: Vec<Option<f32>>) -> Result<Vec<f32>> {
        let n = found.len();
        let pending: Vec<usize> = (0..n).filter(|&i| found[i].is_none()).collect();
        if !pending.is_empty() {
            for (&i, t) in pending
                .iter()
                .zip(self.radix_thresholds(ctx, rank, &pending)?)
            {
                found[i] = Some(t);
            }
        }
        Ok(found
            .into_iter()
            .map(|t| t.expect("every model settled"))
            .collect())
    }

    /// The thresholds of the models `pending` by radix select (two passes, or four on devices
    /// whose bindings cannot hold the wide histogram).
    fn radix_thresholds(&self, ctx: &Context, rank: u64, pending: &[usize]) -> Result<Vec<f32>> {
        let n = pending.len();
        let digits =
            if fusion_kernels::radix_plan_fits(&self.c.limits(), fusion_kernels::RADIX_TWO_PASS) {
                fusion_kernels::RADIX_TWO_PASS
            } else {
                fusion_kernels::RADIX_BYTES
            };
        let progress = ctx.progress("TIES thresholds", (digits.len() * self.keys.len()) as u64);
        let mut states = vec![RadixState::new(rank); n];
        for (pass, &digit) in digits.iter().enumerate() {
            let started = std::time::Instant::now();
            // One tensor holds every model's histogram, at aligned offsets.
            let stride = hist_stride(self.c, digit);
            let hists = Gpu::zeros(self.c, DType::U32, &[n * stride as usize / 4])?;
            for (name, info) in self.keys {
                let mut base = None;
                for (p, &i) in pending.iter().enumerate() {
                    let m = &self.source.inputs.models[i];
                    let slot = Binding::write(hists.id())
                        .range(p as u64 * stride, digit.histogram_bytes());
                    let pass = RadixPass {
                        digit,
                        state: states[p],
                        first: pass == 0,
                    };
                    self.source
                        .histogram(self.c, &mut base, i, name, info, slot, pass)
                        .map_err(|e| e.context(format!("tensor `{name}` of `{}`", m.name)))?;
                }
                progress.advance(1);
            }
            let all: Vec<u32> = bytemuck::pod_collect_to_vec(&self.c.read(hists.id())?);
            tracing::debug!(
                pass,
                bits = digit.bits,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "TIES threshold pass"
            );
            for (p, state) in states.iter_mut().enumerate() {
                let at = p * stride as usize / 4;
                let words = &all[at..at + 2 * digit.bins() as usize];
                *state = state.advance(digit, words).ok_or_else(|| {
                    Error::compute(format!(
                        "TIES threshold of `{}`: the histogram of bits {}..{} counts fewer than {} entries",
                        self.source.inputs.models[pending[p]].name,
                        digit.shift + digit.bits - 1,
                        digit.shift,
                        state.rank
                    ))
                })?;
            }
        }
        Ok(states.into_iter().map(RadixState::value).collect())
    }

    /// The majority sign, `sign(Σ elected signs)` over every entry of the model, and the number
    /// of keys merged in the same pass ([`Source::elect_and_merge`]; their merges are kept
    /// unless the majority is not +1 and some of their entries depend on it).
    fn elect(&self, ctx: &Context, thresholds: &[f32], early: EarlyMerge) -> Result<(f32, usize)> {
        let c = self.c;
        let started = std::time::Instant::now();
        let progress = ctx.progress("TIES sign election", self.keys.len() as u64);
        let votes = SignVotes::new(c)?;
        let undecided = Gpu::zeros(c, DType::U32, &[2 * self.keys.len().max(1)])?;
        let mut merged = Vec::new();
        for (k, (name, info)) in self.keys.iter().enumerate() {
            if self.source.merges_early(c, name, info) {
                self.source.elect_and_merge(
                    c,
                    name,
                    info,
                    thresholds,
                    early,
                    &votes,
                    undecided.id(),
                    k as u32,
                )?;
                merged.push(k);
            } else {
                let s = self
                    .source
                    .elected_sum(c, &mut None, name, info, thresholds)?;
                // S is counted as it is: a threshold of 0 trims nothing.
                votes.add(&[s.id()], &[0.0])?;
            }
            progress.advance(1);
        }
        let majority = votes.majority_sign()?;
        tracing::debug!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            merged_early = merged.len(),
            "TIES sign election"
        );
        self.keep_decided(majority, undecided.id(), &mut merged)?;
        Ok((majority, merged.len()))
    }

    /// Drop from the cache the early merges of the keys `merged` (indices into the keys) that
    /// assumed majority +1 where `majority` is not and some of their entries depend on it
    /// (slot `k` of `undecided` counts them), so that they are merged again.
    fn keep_decided(
        &self,
        majority: f32,
        undecided: GpuTensor,
        merged: &mut Vec<usize>,
    ) -> Result<()> {
        if majority == 1.0 || merged.is_empty() {
            return Ok(());
        }
        let c = self.c;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&c.read(undecided)?);
        let before = merged.len();
        merged.retain(|&k| {
            let count = u64::from(words[2 * k]) | u64::from(words[2 * k + 1]) << 32;
            if count > 0 {
                if let Some(t) = self.source.cache.take(&self.keys[k].0, Slot::Merged) {
                    c.release(t);
                }
            }
            count == 0
        });
        if merged.len() < before {
            tracing::info!(
                keys = before - merged.len(),
                majority,
                "TIES: keys merged before the majority sign was known depend on it; they are merged again"
            );
        }
        Ok(())
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

/// The distance between two models' histograms of `digit` in the shared tensor: a multiple of
/// the device's storage offset alignment (WebGPU caps that at 256, which every histogram size
/// is a multiple of).
fn hist_stride(c: &dyn Compute, digit: RadixDigit) -> u64 {
    let align = u64::from(c.limits().min_storage_offset_alignment).max(4);
    digit.histogram_bytes().div_ceil(align) * align
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
        let out = match self.cache.take(name, Slot::Merged) {
            Some(t) => Ok(Gpu::adopt(c, t)),
            None => self.merge_uncached(c, name, info),
        };
        // The merged tensor was the last use of this key's entries.
        self.cache.evict(c, name);
        out
    }
}

impl TiesTensor {
    /// The merge of `name` in fused launches ([`fusion_kernels::ties_elect_merge_delta`], or
    /// [`fusion_kernels::ties_merge_delta_scaled`] where the cache kept the elected sum) from
    /// every model's fine-tuned tensor,
    /// where the task vectors are plain, none is on the device, the device binds the launch and
    /// the key's tensors fit at once (see [`held_at_once`]); `None` where not.
    fn merge_fused<'c>(
        &self,
        c: &'c dyn Compute,
        name: &str,
        info: &TensorInfo,
    ) -> Result<Option<Gpu<'c>>> {
        let source = self.source();
        let Some(xs) = source.fused_inputs(c, name, info)? else {
            return Ok(None);
        };
        let ids: Vec<GpuTensor> = xs.iter().map(Gpu::id).collect();
        let mut base = None;
        let base = source.base_of(c, &mut base, name)?;
        let ctx = |e: Error| e.context(format!("tensor `{name}`"));
        // The majority is known here: the count of entries it decided is not needed.
        let counters = Gpu::zeros(c, DType::U32, &[2])?;
        let m = EarlyMerge {
            merge: self.merge,
            lambda: self.lambda,
        }
        .scaled(&self.thresholds, self.majority, info);
        let out = match self.cache.get(name, Slot::ElectedSum) {
            Some(s) => fusion_kernels::ties_merge_delta_scaled(
                c,
                s,
                &ids,
                base.id(),
                m,
                (counters.id(), 0),
            ),
            None => fusion_kernels::ties_elect_merge_delta(
                c,
                &ids,
                base.id(),
                m,
                None,
                (counters.id(), 0),
            ),
        }
        .map_err(ctx)?;
        Ok(Some(Gpu::adopt(c, out)))
    }

    fn merge_uncached<'c>(
        &self,
        c: &'c dyn Compute,
        name: &str,
        info: &TensorInfo,
    ) -> Result<Gpu<'c>> {
        if let Some(out) = self.merge_fused(c, name, info)? {
            return Ok(out);
        }
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
