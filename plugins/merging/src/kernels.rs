//! This plugin's own WGSL kernels (`kernels/sparsify.wgsl`), for the mergekit methods: the
//! shared kernel library has no magnitude band, no per-row magnitude ranking with a random keep
//! probability, and no weighted sign consensus. They run through the same [`Compute`] handle,
//! on f32 task vectors, chunked to the device's binding limits like the library's kernels.

use fusion_kernels::{chunk_elements, chunks, dispatch_1d, workgroup_size, Chunk};
use fusion_plugin_api::{Compute, DType, Error, GpuTensor, KernelCall, Result};

use crate::device::Gpu;

/// The kernel source: the library's shared codecs and indexing, then this crate's file.
fn source() -> &'static str {
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SOURCE.get_or_init(|| {
        format!(
            "{}\n{}",
            fusion_kernels::wgsl::COMMON,
            include_str!("../kernels/sparsify.wgsl")
        )
    })
}

/// A uniform block of 4-byte words.
fn words(values: &[u32]) -> Vec<u8> {
    let mut out: Vec<u8> = values.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.resize(out.len().div_ceil(16) * 16, 0);
    out
}

fn elements(c: &dyn Compute, t: GpuTensor, op: &str) -> Result<u64> {
    let (dtype, shape) = c.describe(t)?;
    if dtype != DType::F32 {
        return Err(Error::compute(format!(
            "{op}: expects f32 tensors, got {dtype}"
        )));
    }
    Ok(shape.iter().map(|&d| d as u64).product())
}

/// Run an elementwise entry point over every chunk; `params` builds the uniform words of one.
fn elementwise(
    c: &dyn Compute,
    entry: &str,
    tensors: &[(GpuTensor, bool)],
    params: impl Fn(&Chunk) -> Vec<u32>,
) -> Result<()> {
    let n = elements(c, tensors[0].0, entry)?;
    for &(t, _) in &tensors[1..] {
        if elements(c, t, entry)? != n {
            return Err(Error::compute(format!(
                "{entry}: tensors of different sizes"
            )));
        }
    }
    let l = c.limits();
    let wg = workgroup_size(&l);
    let constants = [("WG", f64::from(wg))];
    for ch in chunks(&l, n) {
        let bindings: Vec<_> = tensors
            .iter()
            .map(|&(t, write)| ch.binding(t, DType::F32, !write))
            .collect();
        c.dispatch(&KernelCall {
            label: entry,
            source: source(),
            entry_point: entry,
            constants: &constants,
            bindings: &bindings,
            // `Params` is 20 bytes; pad every block to its size (words() rounds up to 16).
            uniforms: &words(&{
                let mut w = params(&ch);
                w.resize(w.len().max(5), 0);
                w
            }),
            workgroups: dispatch_1d(&l, ch.len, wg),
        })?;
    }
    Ok(())
}

/// `|x|` into a new f32 tensor.
pub(crate) fn abs<'c>(c: &'c dyn Compute, x: &Gpu<'_>) -> Result<Gpu<'c>> {
    let (_, shape) = c.describe(x.id())?;
    let out = Gpu::zeros(c, DType::F32, &shape)?;
    elementwise(c, "abs_into", &[(out.id(), true), (x.id(), false)], |ch| {
        vec![ch.len as u32]
    })?;
    Ok(out)
}

/// Σ|x| (f32 arithmetic, tree reduction).
pub(crate) fn l1_norm(c: &dyn Compute, x: &Gpu<'_>) -> Result<f32> {
    let a = abs(c, x)?;
    fusion_kernels::sum(c, a.id())
}

/// `x` where `lo <= |x|` and, when `hi` is given, `|x| < hi` (compared as ordered bit
/// patterns, like the library's k-th-largest select); 0 elsewhere.
pub(crate) fn band_keep<'c>(
    c: &'c dyn Compute,
    x: &Gpu<'_>,
    lo: f32,
    hi: Option<f32>,
) -> Result<Gpu<'c>> {
    let (_, shape) = c.describe(x.id())?;
    let out = Gpu::zeros(c, DType::F32, &shape)?;
    let lo_bits = lo.abs().to_bits();
    let hi_bits = hi.map(|h| h.abs().to_bits()).unwrap_or(0);
    let has_hi = u32::from(hi.is_some());
    elementwise(c, "band_keep", &[(out.id(), true), (x.id(), false)], |ch| {
        vec![ch.len as u32, lo_bits, hi_bits, has_hi, 0]
    })?;
    Ok(out)
}

/// mergekit's sign consensus, one model at a time: with `wx = w·x`, where `sign(wx)` equals
/// the majority sign of `s` (+1 where `s >= 0`), add `wx` to `mixed` and `w` to `div`.
pub(crate) fn consensus_add(
    c: &dyn Compute,
    mixed: &Gpu<'_>,
    div: &Gpu<'_>,
    s: &Gpu<'_>,
    x: &Gpu<'_>,
    w: f32,
) -> Result<()> {
    elementwise(
        c,
        "consensus_add",
        &[
            (mixed.id(), true),
            (div.id(), true),
            (s.id(), false),
            (x.id(), false),
        ],
        |ch| vec![ch.len as u32, 0, 0, 0, w.to_bits()],
    )
}

/// `mixed /= div`, with a divisor of 0 read as 1.
pub(crate) fn safe_divide(c: &dyn Compute, mixed: &Gpu<'_>, div: &Gpu<'_>) -> Result<()> {
    elementwise(
        c,
        "safe_divide",
        &[(mixed.id(), true), (div.id(), false)],
        |ch| vec![ch.len as u32],
    )
}

/// DELLA's keep probabilities: `p = p_low + rank_norm · p_span` per row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DellaDraw {
    /// `density - epsilon`.
    pub p_low: f32,
    /// `2 · epsilon`.
    pub p_span: f32,
    /// The run's seed.
    pub seed: u64,
    /// The (model, tensor) key.
    pub key: u64,
}

/// DELLA's MagPrune mask applied to `x`, rows of `row_len` elements (see `sparsify.wgsl`).
pub(crate) fn della_keep<'c>(
    c: &'c dyn Compute,
    x: &Gpu<'_>,
    row_len: u64,
    draw: &DellaDraw,
) -> Result<Gpu<'c>> {
    let (_, shape) = c.describe(x.id())?;
    let n = elements(c, x.id(), "della_keep")?;
    let out = Gpu::zeros(c, DType::F32, &shape)?;
    if n == 0 {
        return Ok(out);
    }
    let l = c.limits();
    let wg = workgroup_size(&l);
    // A launch binds whole rows from an aligned start: `skew` elements of the previous row
    // precede them in the binding.
    let align = u64::from(l.min_storage_offset_alignment.max(4)) / 4;
    let budget = chunk_elements(&l);
    if row_len + align > budget {
        return Err(Error::unsupported(format!(
            "della: rows of {row_len} elements do not fit one storage binding of {} bytes",
            l.max_storage_binding_size
        )));
    }
    let rows_per_launch = ((budget - align) / row_len).max(1);
    let rows = n / row_len;
    // rank_norm = (r - 1) / (row_len - 1); a one-element row has no spread: p = density.
    let (p_low, inv_last) = if row_len > 1 {
        (draw.p_low, (1.0 / (row_len - 1) as f64) as f32)
    } else {
        (draw.p_low + draw.p_span / 2.0, 0.0)
    };
    let constants = [("WG", f64::from(wg))];
    let mut row = 0u64;
    while row < rows {
        let count = rows_per_launch.min(rows - row);
        let first = row * row_len;
        let start = first / align * align;
        let skew = first - start;
        let len = skew + count * row_len;
        let range = |t: GpuTensor, write: bool| Chunk { start, len }.binding(t, DType::F32, !write);
        let uniforms = words(&[
            (count * row_len) as u32,
            skew as u32,
            row_len as u32,
            first as u32,
            (first >> 32) as u32,
            draw.seed as u32,
            (draw.seed >> 32) as u32,
            draw.key as u32,
            (draw.key >> 32) as u32,
            p_low.to_bits(),
            draw.p_span.to_bits(),
            inv_last.to_bits(),
        ]);
        c.dispatch(&KernelCall {
            label: "della_keep",
            source: source(),
            entry_point: "della_keep",
            constants: &constants,
            bindings: &[range(out.id(), true), range(x.id(), false)],
            uniforms: &uniforms,
            workgroups: dispatch_1d(&l, count * row_len, wg),
        })?;
        row += count;
    }
    Ok(out)
}

/// The complete WGSL source of this crate's kernels (for validation in tests and tools).
pub fn wgsl_source() -> &'static str {
    source()
}
