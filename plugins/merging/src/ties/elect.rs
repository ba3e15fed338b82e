//! Step 2, elect: the elected sign `sign(S)`, `S = Σᵢ trim(τᵢ)`, and the majority sign over the
//! whole model for the entries where `S = 0` (`fusion_kernels::SignVotes`).
//!
//! The election reads each key's tensors of every model anyway, so it merges the key there too
//! where the plan allows (`Source::merges_early`), from the same uploads, with majority sign +1,
//! kept in the device cache until the merged model asks for the tensor. The majority only
//! matters where `S = 0`; the merge counts the entries another majority would change
//! (`count_undecided`), and a key with any is merged again later if the majority turns out not
//! to be +1. That makes two reads of the models in all (three where the guessed ranges of the
//! trim step do not apply).

#[allow(unused_imports)]
use super::*;

impl Sweep<'_> {
    /// The majority sign, `sign(Σ elected signs)` over every entry of the model, and the number
    /// of keys merged in the same pass ([`Source::elect_and_merge`]; their merges are kept
    /// unless the majority is not +1 and some of their entries depend on it).
    pub(super) fn elect(
        &self,
        ctx: &Context,
        thresholds: &[f32],
        early: EarlyMerge,
    ) -> Result<(f32, usize)> {
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
    pub(super) fn keep_decided(
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
pub(super) fn add_trimmed(
    c: &dyn Compute,
    s: &Gpu<'_>,
    tv: &Gpu<'_>,
    threshold: f32,
) -> Result<()> {
    let t = Gpu::adopt(
        c,
        fusion_kernels::ties_elected_sum(c, &[tv.id()], &[threshold])?,
    );
    fusion_kernels::accumulate(c, s.id(), &[(t.id(), 1.0)])
}
