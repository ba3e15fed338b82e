//! The steps of mergekit's generalized task arithmetic and linear merge (`mergekit.wgsl`), in
//! the order fusion-mergekit's CPU path computes them, so that a merge on the device equals the
//! CPU's bit for bit where the arithmetic is the same (sums in f32 in model order, one rounding
//! per step). Every tensor is f32; `round` rounds every step to bfloat16 (mergekit computing in
//! `dtype: bfloat16`). Tensors past one storage binding run in chunks.
//!
//! The random keep of DARE draws the same splitmix64 stream as the CPU path: element `i` of a
//! tensor keyed `key` takes the `(i + 1)`-th output from state `key`.

use fusion_plugin_api::{
    Binding, Compute, DType, DeviceTensor, Error, GpuTensor, KernelCall, Result,
};

use crate::launch::{chunks, constants, dispatch_1d, info, workgroup_size, Chunk};
use crate::wgsl;

/// One launch per chunk of `entry` over `tensors` (f32, all of one length; `true` = written),
/// with the uniform words `params(chunk)` after the element count.
fn launch(
    c: &dyn Compute,
    entry: &'static str,
    tensors: &[(GpuTensor, bool)],
    round: bool,
    params: impl Fn(&Chunk) -> [u32; 7],
) -> Result<()> {
    let (_, _, n) = info(c, tensors[0].0)?;
    for &(t, _) in tensors {
        let (dtype, _, m) = info(c, t)?;
        if dtype != DType::F32 || m != n {
            return Err(Error::compute(format!(
                "{entry}: expects f32 tensors of {n} elements, got {dtype} of {m}"
            )));
        }
    }
    let l = c.limits();
    let wg = workgroup_size(&l);
    let consts = constants(&l, &[("ROUND", if round { 1.0 } else { 0.0 })]);
    for ch in chunks(&l, n) {
        let bindings: Vec<_> = tensors
            .iter()
            .map(|&(t, write)| ch.binding(t, DType::F32, !write))
            .collect();
        let mut words = [0u32; 8];
        words[0] = u32::try_from(ch.len).expect("chunks are below 2^30 elements");
        words[1..].copy_from_slice(&params(&ch));
        c.dispatch(&KernelCall {
            label: entry,
            source: wgsl::MERGEKIT,
            entry_point: entry,
            constants: &consts,
            bindings: &bindings,
            uniforms: bytemuck::cast_slice(&words),
            workgroups: dispatch_1d(&l, ch.len, wg),
        })?;
    }
    Ok(())
}

/// `q(x - y)` into a new f32 tensor (a task vector).
pub fn mk_delta(c: &dyn Compute, x: GpuTensor, y: GpuTensor, round: bool) -> Result<GpuTensor> {
    let (_, shape, _) = info(c, x)?;
    let out = DeviceTensor::zeros(c, DType::F32, &shape)?;
    launch(
        c,
        "mk_delta",
        &[(out.id(), true), (x, false), (y, false)],
        round,
        |_| [0; 7],
    )?;
    Ok(out.into_raw())
}

/// DARE's Bernoulli keep in place: element `i` stays where the `(i + 1)`-th splitmix64 draw
/// from `key`, as a uniform in [0, 1) of 53 bits, is below `density`; else it becomes 0.
pub fn mk_random_keep(c: &dyn Compute, x: GpuTensor, key: u64, density: f64) -> Result<()> {
    // u < density with u = r / 2^53 (exact): r < ceil(density · 2^53).
    let threshold = if density <= 0.0 {
        0
    } else {
        (density * (1u64 << 53) as f64).ceil() as u64
    };
    launch(c, "mk_random_keep", &[(x, true)], false, |ch| {
        [
            ch.start as u32,
            (ch.start >> 32) as u32,
            key as u32,
            (key >> 32) as u32,
            threshold as u32,
            (threshold >> 32) as u32,
            0,
        ]
    })
}

/// Σ|x| (f32 tree reduction).
pub fn mk_abs_sum(c: &dyn Compute, x: GpuTensor) -> Result<f32> {
    let (_, shape, _) = info(c, x)?;
    let a = DeviceTensor::zeros(c, DType::F32, &shape)?;
    launch(c, "mk_abs", &[(a.id(), true), (x, false)], false, |_| {
        [0; 7]
    })?;
    crate::sum(c, a.id())
}

/// `x = q((x · s) · w)` in place.
pub fn mk_scale(c: &dyn Compute, x: GpuTensor, s: f32, w: f32, round: bool) -> Result<()> {
    launch(c, "mk_scale", &[(x, true)], round, |_| {
        [s.to_bits(), w.to_bits(), 0, 0, 0, 0, 0]
    })
}

/// `out += x`.
pub fn mk_add(c: &dyn Compute, out: GpuTensor, x: GpuTensor) -> Result<()> {
    launch(c, "mk_add", &[(out, true), (x, false)], false, |_| [0; 7])
}

/// One model's share of the merge: with `consensus`, where `x` is non-zero and its sign is
/// the majority sign of `s` (+ where `s >= 0`), `mixed += x` and `div += w`; without,
/// `mixed += x` everywhere (`div` is untouched).
pub fn mk_agree_add(
    c: &dyn Compute,
    mixed: GpuTensor,
    div: GpuTensor,
    s: GpuTensor,
    x: GpuTensor,
    w: f32,
    consensus: bool,
) -> Result<()> {
    launch(
        c,
        "mk_agree_add",
        &[(mixed, true), (div, true), (s, false), (x, false)],
        false,
        |_| [u32::from(consensus), w.to_bits(), 0, 0, 0, 0, 0],
    )
}

/// How [`mk_finish`] ends the merge.
#[derive(Clone, Copy, Debug)]
pub struct MkFinish {
    /// Divide by the weights (of the agreeing models with `consensus`, else `total`).
    pub normalize: bool,
    /// The divisor is `div` per entry (0 read as 1), else `total` (near 0 read as 1).
    pub consensus: bool,
    /// Σ weights, rounded as the working dtype.
    pub total: f32,
    /// mergekit's `lambda`.
    pub lambda: f32,
    /// Round every step to bfloat16.
    pub round: bool,
}

/// In place on `mixed`: `q(mixed)`, divided by the weights when normalising, times `lambda`,
/// plus `base`, each step rounded.
pub fn mk_finish(
    c: &dyn Compute,
    mixed: GpuTensor,
    base: GpuTensor,
    div: GpuTensor,
    how: &MkFinish,
) -> Result<()> {
    launch(
        c,
        "mk_finish",
        &[(mixed, true), (base, false), (div, false)],
        how.round,
        |_| {
            [
                u32::from(how.normalize),
                u32::from(how.consensus),
                how.total.to_bits(),
                how.lambda.to_bits(),
                0,
                0,
                0,
            ]
        },
    )
}

/// `out = fma(x, w, out)`.
pub fn mk_axpy(c: &dyn Compute, out: GpuTensor, x: GpuTensor, w: f32) -> Result<()> {
    launch(c, "mk_axpy", &[(out, true), (x, false)], false, |_| {
        [w.to_bits(), 0, 0, 0, 0, 0, 0]
    })
}

/// `out = out / s`.
pub fn mk_div(c: &dyn Compute, out: GpuTensor, s: f32) -> Result<()> {
    launch(c, "mk_div", &[(out, true)], false, |_| {
        [s.to_bits(), 0, 0, 0, 0, 0, 0]
    })
}

/// The CPU path's draw for element `index` of the stream keyed `key` (splitmix64), for tests.
pub fn mk_random_draw(key: u64, index: u64) -> f64 {
    let mut z = key.wrapping_add((index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether the device's `fma` rounds once (a fused multiply-add, as the CPU path's): WGSL lets
/// an implementation compute it as a product and a sum, rounded twice (Mesa lavapipe does),
/// and then [`mk_axpy`] may differ from the CPU's in the last bit.
pub fn mk_fma_is_fused(c: &dyn Compute) -> Result<bool> {
    let a = 1.0 + f32::EPSILON;
    // a² = 1 + 2⁻²² + 2⁻⁴⁶: fused, a² − (1 + 2⁻²²) = 2⁻⁴⁶; rounded first, 0.
    let out = DeviceTensor::from_f32(c, &[1], &[-(1.0 + 2.0 * f32::EPSILON)])?;
    let x = DeviceTensor::from_f32(c, &[1], &[a])?;
    mk_axpy(c, out.id(), x.id(), a)?;
    Ok(out.to_f32()?[0] != 0.0)
}

/// DELLA's MagPrune keep (mergekit's `della_magprune` as fusion-mergekit's CPU path draws it)
/// into a new tensor: in each row of `row_len` elements, the element of ascending magnitude
/// rank `k` (ties by position) takes draw `row_start + k` of the splitmix64 stream keyed `key`
/// and stays where it is below `probability(k)`. The tensor must fit one storage binding
/// ([`mk_della_fits`]); each element counts its rank over its row (O(row_len) per element).
pub fn mk_della_keep(
    c: &dyn Compute,
    x: GpuTensor,
    row_len: usize,
    key: u64,
    probability: impl Fn(usize) -> f64,
) -> Result<GpuTensor> {
    let (dtype, shape, n) = info(c, x)?;
    if !mk_della_fits(c, n) || dtype != DType::F32 || row_len == 0 || n % row_len as u64 != 0 {
        return Err(Error::compute(format!(
            "mk_della_keep: expects an f32 tensor of whole rows within one storage binding, got {dtype} of {n} elements in rows of {row_len}"
        )));
    }
    let words: Vec<u32> = (0..row_len)
        .flat_map(|k| {
            let p = probability(k);
            // u < p with u = r / 2^53: r < ceil(p · 2^53).
            let t = if p <= 0.0 {
                0
            } else {
                (p * (1u64 << 53) as f64).ceil() as u64
            };
            [t as u32, (t >> 32) as u32]
        })
        .collect();
    let thresholds =
        DeviceTensor::from_bytes(c, DType::F32, &[row_len * 2], bytemuck::cast_slice(&words))?;
    let out = DeviceTensor::zeros(c, DType::F32, &shape)?;
    let l = c.limits();
    let wg = workgroup_size(&l);
    let mut uniforms = [0u32; 8];
    uniforms[..4].copy_from_slice(&[n as u32, row_len as u32, key as u32, (key >> 32) as u32]);
    c.dispatch(&KernelCall {
        label: "mk_della_keep",
        source: wgsl::MERGEKIT,
        entry_point: "mk_della_keep",
        constants: &constants(&l, &[("ROUND", 0.0)]),
        bindings: &[
            out.write_binding(),
            Binding::read(x),
            thresholds.read_binding(),
        ],
        uniforms: bytemuck::cast_slice(&uniforms),
        workgroups: dispatch_1d(&l, n, wg),
    })?;
    Ok(out.into_raw())
}

/// Whether [`mk_della_keep`] takes a tensor of `n` elements (one storage binding).
pub fn mk_della_fits(c: &dyn Compute, n: u64) -> bool {
    n <= crate::launch::chunk_elements(&c.limits()) && n < 1 << 31
}
