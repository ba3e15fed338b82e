//! Where a pass gets a key's tensors (the device cache, else the checkpoints), and which
//! launches a key takes: the plan side of TIES, apart from its math (see the module above).
//!
//! A key whose merged tensor does not fit the cache, or whose tensors together are too large to
//! hold at once ([`held_at_once`]), is merged later instead, revisiting its task vectors one model
//! at a time: the elected sum (kept from the election when the cache's budget allows, else
//! recomputed), then the disjoint merge accumulated model by model. The device then holds at
//! most six tensors of one key, whatever the number of models, besides the kept sums. A plain
//! task vector is never written out in these passes: the kernels read the fine-tuned and base
//! tensors and subtract themselves (`radix_histogram_delta`, `ties_elect_delta`,
//! `TiesAccumulator::add_delta`), with the same f32 difference as `task_vector`. DARE task
//! vectors are formed (counter-based random draws, so every pass sees the same ones).
//!
//! Where the task vectors are plain and the device binds twelve storage buffers (up to eight
//! models), a key takes fused launches (`fusion_kernels::ties_elect_merge_delta`: where every
//! tensor is f32, one launch reads each tensor once and writes the merged model tensor
//! `base + λ·τ`, the votes and the undecided count, with `S` kept in registers; else
//! `ties_elected_sum_delta` then `ties_merge_delta_scaled`); otherwise a launch or two per model.
//!
//! On a hardware GPU the task vectors stay on the device between passes instead, up to a budget
//! (`crate::cache`, `FUSION_DEVICE_CACHE`): the first pass uploads them, later passes read them
//! there, and a key whose task vectors are all cached is elected and merged by the library's
//! multi-input launches (`ties_elected_sum`, `ties_merge`) in model order, which gives the same
//! f32 sums as the streamed path.

#[allow(unused_imports)]
use super::*;

/// Where a pass gets a key's tensors: the device cache, else the checkpoints (uploaded, and the
/// task vector computed).
pub(super) struct Source<'a> {
    pub(super) inputs: &'a Inputs,
    pub(super) delta: Delta,
    pub(super) cache: &'a DeviceCache,
}

impl Source<'_> {
    /// The base model's tensor `name`.
    pub(super) fn base<'c>(&self, c: &'c dyn Compute, name: &str) -> Result<Gpu<'c>> {
        let b = self.inputs.base();
        self.cache
            .get_or_make(c, name, Slot::Base, || upload(c, &b.model, &b.name, name))
    }

    /// Model `i`'s task vector of `name`; `base` holds the base tensor once one was needed.
    pub(super) fn task_vector<'c>(
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
    pub(super) fn operand<'c, 'b>(
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
    pub(super) fn histogram<'c>(
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
    pub(super) fn brackets_apply(&self, c: &dyn Compute) -> bool {
        matches!(self.delta, Delta::Plain)
            && !self.cache.off()
            && !self.cache.keeps_inputs()
            && fusion_kernels::radix_bracket_fits(c, self.inputs.models.len())
    }

    /// Every model's task vector of `name` when the cache holds them all (views), so that one
    /// multi-input launch can take them together instead of one launch per model.
    pub(super) fn all_cached<'c>(&self, c: &'c dyn Compute, name: &str) -> Option<Vec<Gpu<'c>>> {
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
    pub(super) fn elected_sum<'c>(
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
    pub(super) fn fused_inputs<'c>(
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
    pub(super) fn compute_elected_sum<'c>(
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
    pub(super) fn merges_early(&self, c: &dyn Compute, name: &str, info: &TensorInfo) -> bool {
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
    pub(super) fn elect_and_merge(
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
    pub(super) fn base_of<'b, 'c>(
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
    pub(super) fn merge_step<'c>(
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
pub(super) enum Operand<'c, 'b> {
    /// τ itself (a cache view or a fresh tensor).
    Formed(Gpu<'c>),
    /// θ and θ₀, for a kernel that computes τ = θ − θ₀ itself.
    Delta { x: Gpu<'c>, base: &'b Gpu<'c> },
}

/// A model's tensor of a key held for both steps of [`Source::elect_and_merge`].
pub(super) enum Held<'c> {
    /// The task vector, formed (DARE's, or a cached one).
    Formed(Gpu<'c>),
    /// The fine-tuned tensor, for kernels that subtract the base themselves.
    Fine(Gpu<'c>),
}

/// Most bytes of one key's tensors [`Source::elect_and_merge`] and the fused merge hold on the
/// device at once; larger keys are elected and merged in separate passes, a tensor or two at a
/// time.
pub(super) const EARLY_MERGE_WORKING_SET: u64 = 1 << 30;

/// Whether a key of `info` may have every model's tensor on the device at once: its working
/// set (each model's tensor, the base, four f32 tensors, counted at four bytes an element) is
/// at most [`EARLY_MERGE_WORKING_SET`].
pub(super) fn held_at_once(info: &TensorInfo, models: usize) -> bool {
    info.numel() as u64 * (4 * models as u64 + 8 + 16) <= EARLY_MERGE_WORKING_SET
}
