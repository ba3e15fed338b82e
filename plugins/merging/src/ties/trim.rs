//! Step 1, trim: each model's threshold, the k-th largest `|τ|` over the whole model.
//!
//! Where the task vectors are plain and up to eight models share the device, one pass over a
//! range of `|τ|`'s bits guessed from a host-side sample of each task vector (`crate::bracket`)
//! settles each model's k-th value exactly when the guess holds; otherwise, and for any model
//! whose guess missed, a radix select over the bits of `|τ|` (the kernel library's
//! `radix_histogram`, two passes: the top 12 bits, then the low 19 of the entries in the chosen
//! bin), fed one tensor of one model at a time into one histogram per model (32 KiB, then 4 MiB,
//! all in one device tensor).

#[allow(unused_imports)]
use super::*;

/// Log how many of the models' thresholds (`found`) one pass over guessed ranges settled.
pub(super) fn log_settled(found: &[Option<f32>], started: std::time::Instant) {
    let n = found.len();
    let settled = found.iter().filter(|t| t.is_some()).count();
    tracing::info!(
        settled,
        models = n,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "TIES thresholds: {settled} of {n} models settled in one pass over a range guessed from a sample"
    );
}

/// One radix-select pass: `digit`, among the entries matching the digits `state` fixed;
/// `first` for the pass that may fill the device cache.
#[derive(Clone, Copy)]
pub(super) struct RadixPass {
    pub(super) digit: RadixDigit,
    pub(super) state: RadixState,
    pub(super) first: bool,
}

impl Sweep<'_> {
    /// Each model's trim threshold: its task vector keeps `|τ| >= threshold`, the k-th largest
    /// magnitude over all kept tensors with FusionBench's k (see `topk_rank_from_top`).
    pub(super) fn thresholds(&self, ctx: &Context, k_param: f64) -> Result<Vec<f32>> {
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
    pub(super) fn settle(
        &self,
        ctx: &Context,
        rank: u64,
        mut found: Vec<Option<f32>>,
    ) -> Result<Vec<f32>> {
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
    pub(super) fn radix_thresholds(
        &self,
        ctx: &Context,
        rank: u64,
        pending: &[usize],
    ) -> Result<Vec<f32>> {
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
}

/// The distance between two models' histograms of `digit` in the shared tensor: a multiple of
/// the device's storage offset alignment (WebGPU caps that at 256, which every histogram size
/// is a multiple of).
pub(super) fn hist_stride(c: &dyn Compute, digit: RadixDigit) -> u64 {
    let align = u64::from(c.limits().min_storage_offset_alignment).max(4);
    digit.histogram_bytes().div_ceil(align) * align
}
