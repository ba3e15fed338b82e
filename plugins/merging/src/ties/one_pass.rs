//! TIES in one read of the models, where the thresholds' guessed ranges hold.
//!
//! The two-read schedule finds the thresholds first (one bracket pass, `crate::bracket`) and
//! then elects and merges. But a bracket already decides almost every entry: one with `|τ|`
//! above its model's range is kept whatever the exact threshold, one below it is dropped. So a
//! single pass (`fusion_kernels::ties_bracket_merge_delta`) counts the brackets, and elects and
//! merges every key with each threshold at its range's top, marking the positions where some
//! model's `|τ|` falls inside its range (about 10σ of a sample quantile each, a few percent of
//! the positions with eight models). Once the counts settle the exact thresholds, only those
//! positions are merged again: their entries are gathered from the memory-mapped checkpoints
//! on the host, merged by `fusion_kernels::ties_elect_merge_delta` (the same arithmetic, so the
//! same bits as a merge of the whole tensor) and scattered into the key's merged tensor. Votes
//! and undecided counts take the clean positions in the pass and the gathered ones after, so
//! the majority sign is the one the two reads would find.
//!
//! Where a guessed range missed its threshold, the pass is thrown away: the thresholds its
//! counts settled stand, the rest take the radix passes, and the election runs as in the two reads.

use fusion_kernels::{ScaledTiesMerge, SignVotes, TiesBracketPass};
use fusion_plugin_api::prelude::*;
use fusion_plugin_api::GpuTensor;

use super::{held_at_once, EarlyMerge, Sweep};
use crate::cache::Slot;
use crate::device::{upload, Gpu};
use crate::inputs::Member;

/// What [`Sweep::one_pass`] came to.
pub(super) enum OnePass {
    /// The thresholds, the majority sign and the number of keys merged in the pass.
    Done {
        thresholds: Vec<f32>,
        majority: f32,
        merged_early: usize,
    },
    /// A guessed range missed: each model's threshold where its range held (the `rank`-th
    /// largest |τ|), nothing left behind in the cache.
    Missed { rank: u64, found: Vec<Option<f32>> },
    /// The schedule does not apply (see [`Sweep::one_pass_applies`]).
    NotApplicable,
}

impl Sweep<'_> {
    /// The thresholds, the election and the merge of every key from one read of the models.
    pub(super) fn one_pass(
        &self,
        ctx: &Context,
        k_param: f64,
        early: EarlyMerge,
    ) -> Result<OnePass> {
        let c = self.c;
        let d: u64 = self.keys.iter().map(|(_, i)| i.numel() as u64).sum();
        let Some(rank) = fusion_kernels::topk_rank_from_top(d, k_param) else {
            return Ok(OnePass::NotApplicable);
        };
        let Some(dirty_at) = self.one_pass_applies()? else {
            return Ok(OnePass::NotApplicable);
        };
        let started = std::time::Instant::now();
        let inputs = self.source.inputs;
        let Some(ranges) = crate::bracket::guesses(c, inputs, self.keys, rank, d)?
            .into_iter()
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(OnePass::NotApplicable);
        };
        let (brackets, words) = crate::bracket::layout(&ranges);
        let dirty_words = *dirty_at.last().expect("keys");
        let max_words = c.limits().max_storage_binding_size / 4;
        if words > max_words || dirty_words > max_words {
            return Ok(OnePass::NotApplicable);
        }
        let counts = Gpu::zeros(c, DType::U32, &[words as usize])?;
        let dirty = Gpu::zeros(c, DType::U32, &[dirty_words.max(1) as usize])?;
        let votes = SignVotes::new(c)?;
        let undecided = Gpu::zeros(c, DType::U32, &[2 * self.keys.len()])?;
        let tops: Vec<f32> = brackets.iter().map(|b| f32::from_bits(b.hi)).collect();
        let mut merged = Vec::new();
        let progress = ctx.progress("TIES (one pass)", self.keys.len() as u64);
        let base = inputs.base();
        for (k, (name, info)) in self.keys.iter().enumerate() {
            let ctx_err = |e: Error| e.context(format!("tensor `{name}`"));
            let b = upload(c, &base.model, &base.name, name)?;
            let xs = inputs
                .models
                .iter()
                .map(|m| upload(c, &m.model, &m.name, name))
                .collect::<Result<Vec<_>>>()?;
            let ids: Vec<GpuTensor> = xs.iter().map(Gpu::id).collect();
            let pass = TiesBracketPass {
                brackets: &brackets,
                counts: counts.id(),
                dirty: dirty.id(),
                dirty_at: dirty_at[k],
            };
            let m = early.scaled(&tops, 1.0, info);
            let out = Gpu::adopt(
                c,
                fusion_kernels::ties_bracket_merge_delta(
                    c,
                    &ids,
                    b.id(),
                    m,
                    pass,
                    &votes,
                    (undecided.id(), k as u32),
                )
                .map_err(ctx_err)?,
            );
            if self.source.merges_early(c, name, info) {
                self.source.cache.put(c, name, Slot::Merged, out)?;
                merged.push(k);
            }
            progress.advance(1);
        }
        let all: Vec<u32> = bytemuck::pod_collect_to_vec(&c.read(counts.id())?);
        let found: Vec<Option<f32>> = brackets
            .iter()
            .map(|b| {
                let w = &all[b.offset as usize..(b.offset + b.words()) as usize];
                b.resolve(w, rank).map(f32::from_bits)
            })
            .collect();
        let Some(thresholds) = found.iter().copied().collect::<Option<Vec<f32>>>() else {
            for &k in &merged {
                if let Some(t) = self.source.cache.take(&self.keys[k].0, Slot::Merged) {
                    c.release(t);
                }
            }
            tracing::info!(
                ms = started.elapsed().as_secs_f64() * 1e3,
                "TIES: a threshold lies outside the range its sample gave; electing again with the exact thresholds"
            );
            super::log_settled(&found, started);
            return Ok(OnePass::Missed { rank, found });
        };
        let pass_ms = started.elapsed().as_secs_f64() * 1e3;
        // The positions a range left open, merged again with the exact thresholds.
        let bits: Vec<u32> = bytemuck::pod_collect_to_vec(&c.read(dirty.id())?);
        let mut redone = 0usize;
        let mut gather_time = std::time::Duration::ZERO;
        for (k, (name, info)) in self.keys.iter().enumerate() {
            let from = dirty_at[k] as usize;
            let positions = set_bits(&bits[from..dirty_at[k + 1] as usize], info.numel());
            if positions.is_empty() {
                continue;
            }
            redone += positions.len();
            let m = early.scaled(&thresholds, 1.0, info);
            self.merge_again(
                name,
                info.numel(),
                &positions,
                m,
                &votes,
                (undecided.id(), k as u32),
                &mut gather_time,
            )
            .map_err(|e| e.context(format!("tensor `{name}`")))?;
        }
        let majority = votes.majority_sign()?;
        self.keep_decided(majority, undecided.id(), &mut merged)?;
        tracing::info!(
            pass_ms,
            ms = started.elapsed().as_secs_f64() * 1e3,
            positions_redone = redone,
            gather_ms = gather_time.as_secs_f64() * 1e3,
            of = d,
            "TIES: thresholds, election and merge in one read of the models"
        );
        Ok(OnePass::Done {
            thresholds,
            majority,
            merged_early: merged.len(),
        })
    }

    /// Where the one-pass schedule applies, each key's first word of dirty bits (and the total
    /// after the last): f32 checkpoints where the brackets apply
    /// ([`super::Source::brackets_apply`]: plain task vectors, a cache that allows them), a
    /// device that binds the launch, and every key's tensors held at once.
    fn one_pass_applies(&self) -> Result<Option<Vec<u64>>> {
        let c = self.c;
        let source = self.source;
        let inputs = source.inputs;
        let n = inputs.models.len();
        if !source.brackets_apply(c)
            || !fusion_kernels::ties_bracket_merge_fits(c, n)
            || self.keys.is_empty()
        {
            return Ok(None);
        }
        let mut at = Vec::with_capacity(self.keys.len() + 1);
        let mut words = 0u64;
        for (name, info) in self.keys {
            if !held_at_once(info, n) {
                return Ok(None);
            }
            let models = inputs.models.iter().map(|m| &m.model);
            for model in models.chain([&inputs.base().model]) {
                if model.info(name)?.dtype != DType::F32 {
                    return Ok(None);
                }
            }
            at.push(words);
            words += (info.numel() as u64).div_ceil(32);
        }
        at.push(words);
        Ok(Some(at))
    }

    /// Merge the entries at `positions` of `name` (`numel` entries) again with `m`, gathered
    /// from the checkpoints on the host (the time spent added to `gather_time`), counting their
    /// votes and undecided entries, and write them into the key's merged tensor where the cache
    /// holds one.
    #[allow(clippy::too_many_arguments)]
    fn merge_again(
        &self,
        name: &str,
        numel: usize,
        positions: &[u32],
        m: ScaledTiesMerge<'_>,
        votes: &SignVotes<'_>,
        undecided: (GpuTensor, u32),
        gather_time: &mut std::time::Duration,
    ) -> Result<()> {
        let c = self.c;
        let inputs = self.source.inputs;
        // The base, then every model: the bytes of `name` (memory-mapped), gathered in parallel.
        let sources: Vec<&Member> = inputs.all().collect();
        let started = std::time::Instant::now();
        let values = gather_all(&sources, name, positions)?;
        *gather_time += started.elapsed();
        let mut tensors = values
            .iter()
            .map(|v| {
                Ok(Gpu::adopt(
                    c,
                    c.create(DType::F32, &[v.len()], Some(bytemuck::cast_slice(v)))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let xs = tensors.split_off(1);
        let b = tensors.pop().expect("the base");
        let ids: Vec<GpuTensor> = xs.iter().map(Gpu::id).collect();
        let out = Gpu::adopt(
            c,
            fusion_kernels::ties_elect_merge_delta(c, &ids, b.id(), m, Some(votes), undecided)?,
        );
        let Some(merged) = self.source.cache.get(name, Slot::Merged) else {
            return Ok(());
        };
        if positions.len() as u64 > fusion_kernels::chunk_elements(&c.limits())
            || numel as u64 > fusion_kernels::chunk_elements(&c.limits())
        {
            // Past one binding: the key is merged later instead, from the exact thresholds.
            if let Some(t) = self.source.cache.take(name, Slot::Merged) {
                c.release(t);
            }
            return Ok(());
        }
        let idx = Gpu::adopt(
            c,
            c.create(
                DType::U32,
                &[positions.len()],
                Some(bytemuck::cast_slice(positions)),
            )?,
        );
        fusion_kernels::scatter32(c, merged, idx.id(), out.id())
    }
}

/// The indices of the set bits among the first `len` of `words` (bit `i % 32` of word `i / 32`).
fn set_bits(words: &[u32], len: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for (w, &word) in words.iter().enumerate() {
        let mut rest = word;
        while rest != 0 {
            let i = w * 32 + rest.trailing_zeros() as usize;
            if i < len {
                out.push(i as u32);
            }
            rest &= rest - 1;
        }
    }
    out
}

/// The f32 entries at `positions` of tensor `name` of each model in `sources`, read from the
/// checkpoints by up to as many threads as cores.
fn gather_all(sources: &[&Member], name: &str, positions: &[u32]) -> Result<Vec<Vec<f32>>> {
    let data = sources
        .iter()
        .map(|m| {
            let d = m
                .model
                .data(name)
                .map_err(|e| e.context(format!("model `{}`", m.name)))?;
            Ok((d, m.name.as_str()))
        })
        .collect::<Result<Vec<_>>>()?;
    crate::parallel::map_parallel(&data, |(d, model_name)| {
        gather_f32(d, name, positions).map_err(|e| e.context(format!("model `{model_name}`")))
    })
}

/// The f32 entries of `data` (tensor `name`, little-endian) at `positions`.
fn gather_f32(data: &[u8], name: &str, positions: &[u32]) -> Result<Vec<f32>> {
    positions
        .iter()
        .map(|&i| {
            let at = i as usize * 4;
            data.get(at..at + 4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| {
                    Error::model(format!(
                        "tensor `{name}` has {} bytes, too few for entry {i}",
                        data.len()
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::set_bits;

    #[test]
    fn set_bits_lists_positions_in_order_below_the_length() {
        assert_eq!(set_bits(&[0b1011, 1 << 31, 0b1], 65), vec![0, 1, 3, 63, 64]);
        assert_eq!(set_bits(&[0, 0b110], 34), vec![33]);
        assert!(set_bits(&[], 0).is_empty());
    }
}
