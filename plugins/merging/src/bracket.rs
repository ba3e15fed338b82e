//! TIES thresholds in one pass over the models instead of two, where a sample allows.
//!
//! A radix select finds each model's k-th largest `|τ|` exactly, but takes two passes over
//! every tensor of every model (the top 12 bits, then the low 19 of the chosen bin). Here the
//! value is first *guessed*: every `stride`-th entry of each flattened task vector (about
//! [`SAMPLE_TARGET`] of them, read from the checkpoints on the host) is selected on the device
//! at the ranks `r·m/d ± 5σ` (σ the binomial spread of a sample quantile), which gives a range
//! `[lo, hi)` of `|τ|`'s bits that almost surely holds the true k-th value. One pass
//! (`fusion_kernels::radix_bracket_delta`, every model's tensor of a key with the base in one
//! launch) then counts, per model, the entries above the range and each bit pattern inside it,
//! which settles the select exactly when the guess held: as many as `k - 1` or fewer above,
//! and enough in the range to reach `k` ([`RadixBracket::resolve`]). A model whose guess
//! missed, or whose range would be wider than [`fusion_kernels::MAX_BRACKET_BINS`] bit
//! patterns, takes the two radix passes after all: the threshold is exact either way, and the
//! sample only decides how fast it is found.

use fusion_kernels::{RadixBracket, MAX_BRACKET_BINS};
use fusion_plugin_api::prelude::*;
use fusion_plugin_api::{bytes_to_f32, Model, TensorInfo};

use crate::device::{upload, Gpu};
use crate::inputs::{Inputs, Member};

/// About how many entries of each model's task vector are sampled.
pub(crate) const SAMPLE_TARGET: u64 = 1 << 20;

/// How many standard deviations of a sample quantile the guessed range spans on each side: the
/// true k-th value falls outside (which costs a pass) with odds of about 6e-7 per model.
const MARGIN_SIGMAS: f64 = 5.0;

/// The sampling stride for a flattened task vector of `d` entries.
pub(crate) fn sample_stride(d: u64) -> u64 {
    (d / SAMPLE_TARGET).max(1)
}

/// Each model's sample: the entries of its task vector (`x - base` in f32 after decoding, as
/// the kernels compute it) at the flattened positions that are multiples of `stride`, keys in
/// order. The checkpoints are read on as many threads as cores (each read faults in every page
/// of the mapped files).
fn sample(inputs: &Inputs, keys: &[(String, TensorInfo)], stride: u64) -> Result<Vec<Vec<f32>>> {
    // Each key's first sampled entry.
    let mut firsts = Vec::with_capacity(keys.len());
    let mut pos = 0u64;
    for (_, info) in keys {
        firsts.push((stride - pos % stride) % stride);
        pos += info.numel() as u64;
    }
    // The base, then every model.
    let sources: Vec<&Member> = inputs.all().collect();
    let mut samples = crate::parallel::map_parallel(&sources, |m| {
        let mut out = Vec::new();
        for ((name, info), &first) in keys.iter().zip(&firsts) {
            let x = gather(&m.model, name, first, stride, info.numel() as u64)
                .map_err(|e| e.context(format!("model `{}`", m.name)))?;
            out.extend(x);
        }
        Ok(out)
    })?;
    let b = samples.remove(0);
    for x in &mut samples {
        for (x, b) in x.iter_mut().zip(&b) {
            *x -= b;
        }
    }
    Ok(samples)
}

/// Entries `first, first + stride, ...` (below `numel`) of tensor `name`, as f32.
fn gather(model: &Model, name: &str, first: u64, stride: u64, numel: u64) -> Result<Vec<f32>> {
    let dtype = model.info(name)?.dtype;
    let size = dtype.size();
    let data = model.data(name)?;
    let mut bytes =
        Vec::with_capacity(((numel.saturating_sub(first)).div_ceil(stride)) as usize * size);
    let mut j = first;
    while j < numel {
        let at = j as usize * size;
        bytes.extend_from_slice(&data[at..at + size]);
        j += stride;
    }
    bytes_to_f32(&bytes, dtype).map_err(|e| e.context(format!("tensor `{name}`")))
}

/// The guessed range `(lo, hi)` of each model's `rank`-th largest `|τ|` (of `d` entries) from
/// its sample, or `None` where it would be wider than [`MAX_BRACKET_BINS`].
fn guess(
    c: &dyn Compute,
    samples: &[Vec<f32>],
    rank: u64,
    d: u64,
) -> Result<Vec<Option<(u32, u32)>>> {
    let p = rank as f64 / d as f64;
    samples
        .iter()
        .map(|s| {
            let m = s.len() as u64;
            if m == 0 {
                return Ok(None);
            }
            let at = ((rank as f64 * m as f64 / d as f64).round() as u64).clamp(1, m);
            let margin = (MARGIN_SIGMAS * (m as f64 * p * (1.0 - p)).sqrt()).ceil() as u64 + 4;
            let t = Gpu::adopt(
                c,
                c.create(DType::F32, &[s.len()], Some(bytemuck::cast_slice(s)))?,
            );
            // Nothing above the range when its top is the sample's maximum or beyond.
            let hi = match at.checked_sub(margin) {
                Some(a) if a >= 1 => {
                    fusion_kernels::kth_largest_magnitude(c, &[t.id()], a)?.to_bits() + 1
                }
                _ => 0x8000_0000,
            };
            let lo = match at + margin {
                b if b <= m => fusion_kernels::kth_largest_magnitude(c, &[t.id()], b)?.to_bits(),
                _ => 0,
            };
            Ok((u64::from(hi - lo) <= MAX_BRACKET_BINS).then_some((lo, hi)))
        })
        .collect()
}

/// Each model's guessed range `(lo, hi)` of the `rank`-th largest `|τ|` over the `d` entries
/// of `keys`, from a strided sample read on the host; `None` where it would be too wide.
pub(crate) fn guesses(
    c: &dyn Compute,
    inputs: &Inputs,
    keys: &[(String, TensorInfo)],
    rank: u64,
    d: u64,
) -> Result<Vec<Option<(u32, u32)>>> {
    let stride = sample_stride(d);
    let started = std::time::Instant::now();
    let samples = sample(inputs, keys, stride)?;
    let sampled = started.elapsed();
    let guesses = guess(c, &samples, rank, d)?;
    tracing::debug!(
        stride,
        sample_ms = sampled.as_secs_f64() * 1e3,
        guess_ms = (started.elapsed() - sampled).as_secs_f64() * 1e3,
        ?guesses,
        "TIES thresholds: ranges guessed"
    );
    Ok(guesses)
}

/// The brackets of `ranges`, their counters one after another in one tensor of the returned
/// number of words.
pub(crate) fn layout(ranges: &[(u32, u32)]) -> (Vec<RadixBracket>, u64) {
    let mut words = 0u64;
    let brackets = ranges
        .iter()
        .map(|&(lo, hi)| {
            let b = RadixBracket {
                lo,
                hi,
                offset: words,
            };
            words += b.words();
            b
        })
        .collect();
    (brackets, words)
}

/// Each model's threshold (`rank`-th largest `|τ|` over the `d` entries of `keys`) where one
/// bracket pass settles it, `None` for the models that need the radix passes. `at_once` says
/// whether a key may have `n` models' tensors on the device together; where not, the pass
/// takes the models of that key one at a time.
pub(crate) fn thresholds(
    c: &dyn Compute,
    ctx: &Context,
    inputs: &Inputs,
    keys: &[(String, TensorInfo)],
    rank: u64,
    d: u64,
    at_once: impl Fn(&TensorInfo, usize) -> bool,
) -> Result<Vec<Option<f32>>> {
    let n = inputs.models.len();
    let guesses = guesses(c, inputs, keys, rank, d)?;
    let chosen: Vec<usize> = (0..n).filter(|&i| guesses[i].is_some()).collect();
    let ranges: Vec<(u32, u32)> = chosen.iter().filter_map(|&i| guesses[i]).collect();
    let (brackets, words) = layout(&ranges);
    if chosen.is_empty() || 4 * words > c.limits().max_storage_binding_size {
        return Ok(vec![None; n]);
    }
    let counts = Gpu::zeros(c, DType::U32, &[words as usize])?;
    let progress = ctx.progress("TIES thresholds (one pass)", keys.len() as u64);
    let base = inputs.base();
    for (name, info) in keys {
        let b = upload(c, &base.model, &base.name, name)?;
        let launch = |models: &[usize], brackets: &[RadixBracket]| -> Result<()> {
            let xs = models
                .iter()
                .map(|&i| {
                    let m = &inputs.models[i];
                    upload(c, &m.model, &m.name, name)
                })
                .collect::<Result<Vec<_>>>()?;
            let ids: Vec<GpuTensor> = xs.iter().map(Gpu::id).collect();
            fusion_kernels::radix_bracket_delta(c, counts.id(), &ids, b.id(), brackets)
                .map_err(|e| e.context(format!("tensor `{name}`")))
        };
        if at_once(info, chosen.len()) {
            launch(&chosen, &brackets)?;
        } else {
            for (j, &i) in chosen.iter().enumerate() {
                launch(&[i], &brackets[j..j + 1])?;
            }
        }
        progress.advance(1);
    }
    let all: Vec<u32> = bytemuck::pod_collect_to_vec(&c.read(counts.id())?);
    let mut out = vec![None; n];
    for (&i, b) in chosen.iter().zip(&brackets) {
        let w = &all[b.offset as usize..(b.offset + b.words()) as usize];
        out[i] = b.resolve(w, rank).map(f32::from_bits);
    }
    Ok(out)
}
