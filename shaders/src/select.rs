//! The k-th largest magnitude over many tensors, on the GPU: a radix select over the bits of
//! |x| (four passes of 8 bits, or two of 12 and 19 bits over large inputs), for TIES trimming.

use fusion_plugin_api::{
    Compute, ComputeLimits, DType, DeviceTensor, Error, GpuTensor, KernelCall, Result,
};

use crate::launch::{chunks, constants, dispatch_1d, dtype_code, info, workgroup_size};
use crate::uniforms::{len32, words8, BracketParams, SelectParams};
use crate::wgsl;

/// Most workgroups one `radix_histogram` launch uses on a GPU: its invocations loop over the
/// elements (grid stride), so each workgroup clears and flushes its 256 bins once per many
/// elements instead of once per 2 x WG. 1024 workgroups still fill a large GPU.
pub const HISTOGRAM_MAX_WORKGROUPS: u64 = 1024;

/// The same on a software adapter, whose few CPU threads run workgroups one after another:
/// there a workgroup's fixed cost (clearing and flushing its bins, two barriers) is paid on the
/// CPU, and 1024 of them made a launch over a 590K-element tensor take 8 ms instead of 1.9 ms
/// on lavapipe (2 cores; `examples/kernel_bench.rs`).
pub const SOFTWARE_HISTOGRAM_WORKGROUPS: u64 = 16;

/// The most workgroups a histogram launch uses on the device of `c` (see
/// [`HISTOGRAM_MAX_WORKGROUPS`], [`SOFTWARE_HISTOGRAM_WORKGROUPS`]).
pub fn histogram_max_workgroups(c: &dyn Compute) -> u64 {
    if crate::is_software_adapter(&c.device_name()) {
        SOFTWARE_HISTOGRAM_WORKGROUPS
    } else {
        HISTOGRAM_MAX_WORKGROUPS
    }
}

/// Most workgroups a launch of a counting kernel without workgroup memory uses
/// (`radix_bracket_delta_q`, `ties_elect_delta_q`, `ties_merge_delta_q`): their invocations
/// loop over the elements with a grid stride and add what they counted to the global counters
/// once, without a barrier. 4096 workgroups of 256 take a key of up to four million elements
/// in one step per invocation; on lavapipe fewer (16, as for the histograms) ran the TIES
/// passes about 25% slower, end to end.
pub const LOOP_MAX_WORKGROUPS: u64 = 4096;

/// The dispatch size for `radix_histogram` over `n` elements with workgroups of `wg`, at most
/// `max_workgroups` of them.
pub fn histogram_workgroups(
    limits: &ComputeLimits,
    n: u64,
    wg: u32,
    max_workgroups: u64,
) -> [u32; 3] {
    let pairs = n.div_ceil(2);
    let invocations = pairs.min(max_workgroups.max(1) * u64::from(wg.max(1)));
    dispatch_1d(limits, invocations, wg)
}

/// One digit of a radix select over `|x|`'s f32 bit pattern (31 bits; the sign bit is 0):
/// `bits` bits at `shift`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RadixDigit {
    /// Position of the digit's lowest bit.
    pub shift: u32,
    /// Width; digits of up to [`LOCAL_DIGIT_BITS`] count in workgroup memory first.
    pub bits: u32,
}

/// The widest digit `radix_histogram` counts in workgroup memory (4096 bins, 16 KiB, the
/// least every WebGPU device offers); wider digits count straight into the global bins.
pub const LOCAL_DIGIT_BITS: u32 = 12;

/// Four passes of one byte: histograms of 256 bins (2 KiB), for selects over small tensors,
/// where reading the data four times costs less than a wide histogram.
pub const RADIX_BYTES: &[RadixDigit] = &[
    RadixDigit { shift: 24, bits: 8 },
    RadixDigit { shift: 16, bits: 8 },
    RadixDigit { shift: 8, bits: 8 },
    RadixDigit { shift: 0, bits: 8 },
];

/// Two passes: the top 12 bits (sign excluded), counted in workgroup memory, then the low 19
/// bits of the elements left in the chosen bin (a few percent of them), counted straight into
/// 2^19 global bins (4 MiB). For whole-model selects (TIES thresholds), where every pass
/// reads every tensor of every model.
pub const RADIX_TWO_PASS: &[RadixDigit] = &[
    RadixDigit {
        shift: 19,
        bits: 12,
    },
    RadixDigit { shift: 0, bits: 19 },
];

/// Elements from which [`kth_largest_magnitude`] takes [`RADIX_TWO_PASS`] instead of
/// [`RADIX_BYTES`]: past it two passes over the data cost more than the 4 MiB histogram.
pub const TWO_PASS_MIN_ELEMENTS: u64 = 1 << 22;

impl RadixDigit {
    /// Number of bins.
    pub fn bins(self) -> u64 {
        1 << self.bits
    }

    /// Bytes of this digit's histogram: 64-bit (lo, hi) counts.
    pub fn histogram_bytes(self) -> u64 {
        8 * self.bins()
    }

    /// The digit's bits in place.
    pub fn mask(self) -> u32 {
        (((1u64 << self.bits) - 1) << self.shift) as u32
    }
}

/// Whether every histogram of `digits` fits in one binding of a device with `limits` (any
/// WebGPU device binds 128 MiB; a 4 MiB histogram only fails on artificially clamped limits).
pub fn radix_plan_fits(limits: &ComputeLimits, digits: &[RadixDigit]) -> bool {
    digits
        .iter()
        .all(|d| d.histogram_bytes() <= limits.max_storage_binding_size)
}

/// The state of a radix select between passes: the bits fixed so far and the rank of the
/// target among the elements that share them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RadixState {
    /// Bits of `|x|` fixed by the passes so far.
    pub prefix: u32,
    /// Which bits those are.
    pub mask: u32,
    /// Rank (1 = largest) of the target among the elements matching `prefix` under `mask`.
    pub rank: u64,
}

impl RadixState {
    /// The start of a select of the `rank`-th largest.
    pub fn new(rank: u64) -> Self {
        RadixState {
            prefix: 0,
            mask: 0,
            rank,
        }
    }

    /// Fix `digit` from its histogram (as read back: 2 words per bin); `None` when the
    /// histogram counts fewer than `rank` elements.
    pub fn advance(self, digit: RadixDigit, words: &[u32]) -> Option<Self> {
        let (bin, rank) = pick_bin(&words[..2 * digit.bins() as usize], self.rank)?;
        Some(RadixState {
            prefix: self.prefix | (bin << digit.shift),
            mask: self.mask | digit.mask(),
            rank,
        })
    }

    /// The selected value, once the digits have covered all 31 bits.
    pub fn value(self) -> f32 {
        f32::from_bits(self.prefix)
    }
}

/// The digits [`kth_largest_magnitude`] uses for `total` elements on a device with `limits`.
pub fn radix_plan(limits: &ComputeLimits, total: u64) -> &'static [RadixDigit] {
    if total >= TWO_PASS_MIN_ELEMENTS && radix_plan_fits(limits, RADIX_TWO_PASS) {
        RADIX_TWO_PASS
    } else {
        RADIX_BYTES
    }
}

/// The k-th largest of `|x|` over all elements of all `tensors` together (k = 1 is the maximum;
/// duplicates count, as in a sort). Tensors may be f32, f16 or bf16 and of any shapes.
///
/// Each pass histograms one digit of the f32 bit pattern of `|x|` among the elements that match
/// the digits already fixed ([`radix_plan`]: four bytes, or 12 + 19 bits for large inputs);
/// only the bin counts come back to the host. NaNs rank above infinity.
pub fn kth_largest_magnitude(c: &dyn Compute, tensors: &[GpuTensor], k: u64) -> Result<f32> {
    let mut total = 0u64;
    for &t in tensors {
        total += info(c, t)?.2;
    }
    kth_largest_magnitude_with(c, tensors, k, radix_plan(&c.limits(), total))
}

/// [`kth_largest_magnitude`] with the given digits (which must cover bits 30..0 from the top).
pub fn kth_largest_magnitude_with(
    c: &dyn Compute,
    tensors: &[GpuTensor],
    k: u64,
    digits: &[RadixDigit],
) -> Result<f32> {
    let mut total = 0u64;
    for &t in tensors {
        let (dtype, _, n) = info(c, t)?;
        dtype_code("kth_largest_magnitude", dtype)?;
        total += n;
    }
    if k == 0 || k > total {
        return Err(Error::config(format!(
            "kth_largest_magnitude: k = {k} is outside 1..={total} (the number of elements)"
        )));
    }
    let mut state = RadixState::new(k);
    for &digit in digits {
        let hist = DeviceTensor::zeros(c, DType::U32, &[2 * digit.bins() as usize])?;
        for &t in tensors {
            radix_histogram(
                c,
                fusion_plugin_api::Binding::write(hist.id()),
                t,
                digit,
                state,
            )?;
        }
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&c.read(hist.id())?);
        state = state.advance(digit, &words).ok_or_else(|| {
            Error::compute(format!(
                "kth_largest_magnitude: histogram of bits {}..{} counts fewer than {} elements",
                digit.shift + digit.bits - 1,
                digit.shift,
                state.rank
            ))
        })?;
    }
    Ok(state.value())
}

/// One radix-select pass over tensor `x` (f32, f16 or bf16): adds to `hist` (a read-write
/// binding of `digit.histogram_bytes()`) the histogram of `digit` of `|x|`'s f32 bits,
/// counting only elements whose bits under `state.mask` equal `state.prefix` (see
/// `shaders/src/select.wgsl`). `hist` may be a range of a larger tensor, so that several
/// histograms share one read-back.
pub fn radix_histogram(
    c: &dyn Compute,
    hist: fusion_plugin_api::Binding,
    x: GpuTensor,
    digit: RadixDigit,
    state: RadixState,
) -> Result<()> {
    histogram_pass(c, hist, x, None, digit, state)
}

/// [`radix_histogram`] of `|x - base|` (f32 after decoding each; bit for bit the values
/// [`task_vector`](crate::task_vector) would hold) without writing the difference out: a
/// TIES threshold pass reads a fine-tuned tensor and the base tensor instead of a task vector.
/// `x` and `base` have the same number of elements, each f32, f16 or bf16.
pub fn radix_histogram_delta(
    c: &dyn Compute,
    hist: fusion_plugin_api::Binding,
    x: GpuTensor,
    base: GpuTensor,
    digit: RadixDigit,
    state: RadixState,
) -> Result<()> {
    histogram_pass(c, hist, x, Some(base), digit, state)
}

fn histogram_pass(
    c: &dyn Compute,
    hist: fusion_plugin_api::Binding,
    x: GpuTensor,
    base: Option<GpuTensor>,
    digit: RadixDigit,
    state: RadixState,
) -> Result<()> {
    const OP: &str = "radix_histogram";
    if digit.bits == 0 || digit.bits > 31 || digit.shift + digit.bits > 32 {
        return Err(Error::config(format!(
            "{OP}: a digit of {} bits at bit {} is not within the 32 bits of |x|",
            digit.bits, digit.shift
        )));
    }
    let (dtype, _, n) = info(c, x)?;
    let base = match base {
        Some(b) => {
            let (bt, _, bn) = info(c, b)?;
            if bn != n {
                return Err(Error::config(format!(
                    "{OP}: the tensor has {n} elements, the base {bn}"
                )));
            }
            Some((b, bt))
        }
        None => None,
    };
    let l = c.limits();
    let wg = workgroup_size(&l);
    let mut extra = vec![("X_DTYPE", dtype_code(OP, dtype)?)];
    if let Some((_, bt)) = base {
        extra.push(("B_DTYPE", dtype_code(OP, bt)?));
    }
    let consts = constants(&l, &extra);
    let local = digit.bits <= LOCAL_DIGIT_BITS;
    let entry_point = match (local, base.is_some()) {
        (true, false) => "radix_histogram",
        (true, true) => "radix_histogram_delta",
        (false, false) => "radix_histogram_direct",
        (false, true) => "radix_histogram_direct_delta",
    };
    let max_workgroups = histogram_max_workgroups(c);
    for ch in chunks(&l, n) {
        let mut bindings = vec![hist, ch.binding(x, dtype, true)];
        if let Some((b, bt)) = base {
            bindings.push(ch.binding(b, bt, true));
        }
        c.dispatch(&KernelCall {
            label: "radix_select",
            source: wgsl::SELECT,
            entry_point,
            constants: &consts,
            bindings: &bindings,
            uniforms: bytemuck::bytes_of(&SelectParams {
                n: len32(ch.len),
                shift: digit.shift,
                prefix: state.prefix,
                prefix_mask: state.mask,
                digit_mask: ((1u64 << digit.bits) - 1) as u32,
                _pad: [0; 3],
            }),
            workgroups: histogram_workgroups(&l, ch.len, wg, max_workgroups),
        })?;
    }
    Ok(())
}

/// From (lo, hi) counters (2 words per bin), the bin holding the `k`-th largest, scanning from
/// the top, and the rank of the target within that bin.
pub fn pick_bin(words: &[u32], mut k: u64) -> Option<(u32, u64)> {
    for bin in (0..words.len() / 2).rev() {
        let count = u64::from(words[2 * bin]) | (u64::from(words[2 * bin + 1]) << 32);
        if k <= count {
            return Some((bin as u32, k));
        }
        k -= count;
    }
    None
}

/// FusionBench's `topk_values_mask(M, K)` rank for one row of `d` elements: `K > 1` is a
/// percentage, `k = d - int(d * K)`, and the row keeps `|x| >= kthvalue(|x|, k)`, the k-th
/// *smallest*. Returns that value's rank from the top (`d - k + 1`), or `None` when `k` would
/// be 0 (FusionBench raises there; here it means "keep everything").
pub fn topk_rank_from_top(d: u64, k_param: f64) -> Option<u64> {
    let frac = if k_param > 1.0 {
        k_param / 100.0
    } else {
        k_param
    };
    // Python's int() truncates toward zero; the product is a double in both languages.
    let dropped = (d as f64 * frac) as i64;
    let k = d as i64 - dropped;
    if k <= 0 || d == 0 {
        return None;
    }
    let k = (k as u64).min(d);
    Some(d - k + 1)
}

/// The TIES trim threshold of one task vector (spread over `tensors`, the flattened model row):
/// elements with `|x| >= threshold` are kept. `k_param` is FusionBench's `threshold`/`K` (20
/// means the top 20%). Returns 0.0 (keep all) where FusionBench would fail on `k = 0`.
pub fn ties_threshold(c: &dyn Compute, tensors: &[GpuTensor], k_param: f64) -> Result<f32> {
    let mut d = 0u64;
    for &t in tensors {
        d += info(c, t)?.2;
    }
    match topk_rank_from_top(d, k_param) {
        Some(rank) => kth_largest_magnitude(c, tensors, rank),
        None => Ok(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_matches_fusionbench_arithmetic() {
        // d = 10, K = 20 -> int(2.0) = 2 dropped... k = 8th smallest = 3rd largest.
        assert_eq!(topk_rank_from_top(10, 20.0), Some(3));
        assert_eq!(topk_rank_from_top(10, 0.2), Some(3));
        assert_eq!(topk_rank_from_top(7, 0.5), Some(4)); // int(3.5) = 3, k = 4, rank 4
        assert_eq!(topk_rank_from_top(10, 1.0), None);
        assert_eq!(topk_rank_from_top(10, 100.0), None);
        assert_eq!(topk_rank_from_top(10, 0.0), Some(1));
        assert_eq!(topk_rank_from_top(1, 20.0), Some(1));
    }

    #[test]
    fn picks_bins_from_the_top() {
        let mut w = vec![0u32; 512];
        w[2 * 255] = 2;
        w[2 * 7] = 5;
        w[2 * 7 + 1] = 1; // 2^32 + 5
        assert_eq!(pick_bin(&w, 1), Some((255, 1)));
        assert_eq!(pick_bin(&w, 3), Some((7, 1)));
        assert_eq!(pick_bin(&w, 2 + (1 << 32) + 5), Some((7, (1 << 32) + 5)));
        assert_eq!(pick_bin(&w, 3 + (1 << 32) + 5), None);
    }
}

/// Most bins of one [`RadixBracket`] (8 MiB of counters): wider brackets are not counted.
pub const MAX_BRACKET_BINS: u64 = 1 << 20;

/// Storage buffers `radix_bracket_delta_n` binds: counts, eight inputs, the base.
const BRACKET_STORAGE_BUFFERS: u32 = 10;

/// Models one [`radix_bracket_delta`] launch takes.
pub const BRACKET_MAX_MODELS: usize = 8;

/// A guessed range `[lo, hi)` of `|x|`'s f32 bits that should hold one task vector's k-th
/// largest magnitude, and where its counters start in a counts tensor (see
/// [`radix_bracket_delta`]). One pass over the data then settles the select when the guess
/// holds ([`RadixBracket::resolve`]), where a radix select without a guess takes two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RadixBracket {
    /// Lowest bits inside the bracket.
    pub lo: u32,
    /// First bits above the bracket (`lo <= hi`; `lo == hi` is an empty bracket).
    pub hi: u32,
    /// Word offset of the counters in the counts tensor: above (2 words), then one 64-bit
    /// counter per bin.
    pub offset: u64,
}

impl RadixBracket {
    /// Bins: one per bit pattern in `[lo, hi)`.
    pub fn bins(&self) -> u64 {
        u64::from(self.hi.saturating_sub(self.lo))
    }

    /// Words of counters: the count above, then the bins (64-bit each).
    pub fn words(&self) -> u64 {
        2 + 2 * self.bins()
    }

    /// The bits of the `rank`-th largest (1 = largest) from this bracket's counters as read
    /// back (`words`, starting at [`Self::offset`]'s word): `None` when the guess was wrong (as
    /// many or more than `rank` elements above it, or too few in and above it).
    pub fn resolve(&self, words: &[u32], rank: u64) -> Option<u32> {
        let at = |i: usize| u64::from(words[2 * i]) | u64::from(words[2 * i + 1]) << 32;
        let mut seen = at(0);
        if seen >= rank {
            return None;
        }
        for b in (0..self.bins() as usize).rev() {
            seen += at(1 + b);
            if seen >= rank {
                return Some(self.lo + b as u32);
            }
        }
        None
    }
}

/// Whether [`radix_bracket_delta`] can take `models` models on the device of `c` (at most
/// [`BRACKET_MAX_MODELS`], and ten storage buffers per shader stage).
pub fn radix_bracket_fits(c: &dyn Compute, models: usize) -> bool {
    (1..=BRACKET_MAX_MODELS).contains(&models)
        && c.limits().max_storage_buffers_per_stage >= BRACKET_STORAGE_BUFFERS
}

/// Count, for each model `k`, the elements of `|xs[k] - base|` (f32 after decoding, as
/// [`radix_histogram_delta`]) above `brackets[k]` and in each of its bins, adding to the
/// 64-bit counters of `counts` (u32 words; model `k`'s at `brackets[k].offset`): one pass
/// over up to eight fine-tuned tensors that share the base, reading it once. Only elements
/// inside a bracket are counted atomically.
pub fn radix_bracket_delta(
    c: &dyn Compute,
    counts: GpuTensor,
    xs: &[GpuTensor],
    base: GpuTensor,
    brackets: &[RadixBracket],
) -> Result<()> {
    const OP: &str = "radix_bracket_delta";
    if !radix_bracket_fits(c, xs.len()) {
        return Err(Error::unsupported(format!(
            "{OP}: takes 1 to {BRACKET_MAX_MODELS} models with {BRACKET_STORAGE_BUFFERS} storage buffers per shader stage; got {} models, the device allows {}",
            xs.len(),
            c.limits().max_storage_buffers_per_stage
        )));
    }
    if brackets.len() != xs.len() {
        return Err(Error::config(format!(
            "{OP}: {} brackets for {} models",
            brackets.len(),
            xs.len()
        )));
    }
    let (ct, _, words) = info(c, counts)?;
    if ct != DType::U32 {
        return Err(Error::config(format!("{OP}: counts must be u32, got {ct}")));
    }
    for (k, b) in brackets.iter().enumerate() {
        if b.lo > b.hi || b.bins() > MAX_BRACKET_BINS || b.offset + b.words() > words {
            return Err(Error::config(format!(
                "{OP}: bracket {k} ({b:?}) is inverted, wider than {MAX_BRACKET_BINS} bins or past the {words} words of the counts"
            )));
        }
    }
    let (_, shape, n) = info(c, base)?;
    let mut all = xs.to_vec();
    all.push(base);
    let dtypes = crate::launch::same_shape(c, OP, &all, &shape)?;
    let l = c.limits();
    let wg = workgroup_size(&l);
    let mut extra = vec![
        ("INPUTS", xs.len() as f64),
        ("B_DTYPE", dtype_code(OP, dtypes[xs.len()])?),
        ("X_DTYPE", dtype_code(OP, dtypes[0])?),
    ];
    const NAMES: [&str; 7] = [
        "X1_DTYPE", "X2_DTYPE", "X3_DTYPE", "X4_DTYPE", "X5_DTYPE", "X6_DTYPE", "X7_DTYPE",
    ];
    for (k, &dt) in dtypes[1..xs.len()].iter().enumerate() {
        extra.push((NAMES[k], dtype_code(OP, dt)?));
    }
    let lp = crate::launch::QuadLoop::new(c);
    let consts = lp.constants(&extra);
    let lo: Vec<u32> = brackets.iter().map(|b| b.lo).collect();
    let hi: Vec<u32> = brackets.iter().map(|b| b.hi).collect();
    let off: Vec<u32> = brackets.iter().map(|b| b.offset as u32).collect();
    let uniforms = |len: u64| BracketParams {
        n: len32(len),
        _pad: [0; 3],
        lo: words8(&lo),
        hi: words8(&hi),
        off: words8(&off),
    };
    // All f32: four elements per invocation, `ROWS` quads each.
    let quads = crate::launch::quads(&l, &dtypes);
    let entry = if quads {
        "radix_bracket_delta_q"
    } else {
        "radix_bracket_delta_n"
    };
    for ch in chunks(&l, n) {
        let mut bindings = vec![fusion_plugin_api::Binding::write(counts)];
        for k in 0..BRACKET_MAX_MODELS {
            let k = if k < xs.len() { k } else { 0 };
            bindings.push(ch.binding(xs[k], dtypes[k], true));
        }
        bindings.push(ch.binding(base, dtypes[xs.len()], true));
        c.dispatch(&KernelCall {
            label: OP,
            source: wgsl::SELECT,
            entry_point: entry,
            constants: &consts,
            bindings: &bindings,
            uniforms: bytemuck::bytes_of(&uniforms(ch.len)),
            workgroups: if quads {
                lp.workgroups(ch)
            } else {
                histogram_workgroups(&l, ch.len, wg, LOOP_MAX_WORKGROUPS)
            },
        })?;
    }
    Ok(())
}
