//! Reductions for SLERP and Model Stock: sums, sums of squares, L2 norms and dot products,
//! over any size (chunked bindings, then a tree of partial-sum launches); and the count of
//! non-finite values that checks every merged tensor.

use fusion_plugin_api::{
    Binding, Compute, DType, DeviceTensor, Error, GpuTensor, KernelCall, Result,
};

use crate::launch::{chunks, constants, dispatch_1d, dtype_code, info, same_shape, workgroup_size};
use crate::uniforms::{len32, ReduceParams};
use crate::wgsl;

/// Σ x (f32 arithmetic).
pub fn sum(c: &dyn Compute, x: GpuTensor) -> Result<f32> {
    reduce(c, x, None, 0.0)
}

/// Σ x².
pub fn sum_squares(c: &dyn Compute, x: GpuTensor) -> Result<f32> {
    reduce(c, x, None, 1.0)
}

/// The L2 norm `sqrt(Σ x²)`.
pub fn l2_norm(c: &dyn Compute, x: GpuTensor) -> Result<f32> {
    Ok(sum_squares(c, x)?.sqrt())
}

/// Σ a·b over two tensors of one shape.
pub fn dot(c: &dyn Compute, a: GpuTensor, b: GpuTensor) -> Result<f32> {
    reduce(c, a, Some(b), 0.0)
}

/// The number of NaN and ±Inf values in `x` (f32, f16 or bf16), counted on the device: one
/// read of the tensor, one small read back.
pub fn count_nonfinite(c: &dyn Compute, x: GpuTensor) -> Result<u64> {
    let slots = count_nonfinite_slots(c, x)?;
    if slots == 0 {
        return Ok(0);
    }
    let counts = DeviceTensor::zeros(c, DType::U32, &[slots])?;
    count_nonfinite_into(c, x, counts.id(), 0)?;
    let bytes = c.read(counts.id())?;
    Ok(sum_counts(&bytes))
}

/// How many u32 slots [`count_nonfinite_into`] adds into for `x` (one per chunk; 0 when `x`
/// is empty).
pub fn count_nonfinite_slots(c: &dyn Compute, x: GpuTensor) -> Result<usize> {
    let (_, _, n) = info(c, x)?;
    Ok(chunks(&c.limits(), n).count())
}

/// Queue the count of NaN and ±Inf values of `x`, added into the u32 slots
/// `counts[first_slot..first_slot + count_nonfinite_slots(x)]` (zero them first). Many tensors
/// can share one `counts` tensor and one read back ([`sum_counts`] of a range of it).
pub fn count_nonfinite_into(
    c: &dyn Compute,
    x: GpuTensor,
    counts: GpuTensor,
    first_slot: usize,
) -> Result<()> {
    let (dtype, _, n) = info(c, x)?;
    let l = c.limits();
    let wg = workgroup_size(&l);
    let consts = constants(&l, &[("A_DTYPE", dtype_code("count_nonfinite", dtype)?)]);
    // One counter per chunk (at most 2^30 elements each), so no counter can overflow.
    for (i, ch) in chunks(&l, n).enumerate() {
        c.dispatch(&KernelCall {
            label: "count_nonfinite",
            source: wgsl::REDUCE,
            entry_point: "count_nonfinite",
            constants: &consts,
            bindings: &[Binding::write(counts), ch.binding(x, dtype, true)],
            uniforms: bytemuck::bytes_of(&ReduceParams {
                n: len32(ch.len),
                offset: (first_slot + i) as u32,
                _pad: [0; 2],
            }),
            workgroups: dispatch_1d(&l, count_invocations(ch.len, dtype), wg),
        })?;
    }
    Ok(())
}

/// The sum of u32 counts read back (little-endian bytes).
pub fn sum_counts(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(4)
        .map(|w| u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
        .sum()
}

/// Words each invocation of `count_nonfinite` reads, about: enough that a tensor takes few
/// invocations (little per-invocation overhead on software adapters), few enough that a GPU
/// still has thousands in flight for a tensor of a million elements.
const COUNT_WORDS_PER_INVOCATION: u64 = 64;

/// Invocations for a chunk of `len` elements of `dtype` (the kernel loops over the rest).
fn count_invocations(len: u64, dtype: DType) -> u64 {
    let words = if dtype == DType::F32 {
        len
    } else {
        len.div_ceil(2)
    };
    words.div_ceil(COUNT_WORDS_PER_INVOCATION).max(1)
}

/// One level: partial sums of `a` (or of `a·b`), one per workgroup, into a new f32 tensor.
fn partials(
    c: &dyn Compute,
    a: GpuTensor,
    b: Option<GpuTensor>,
    mode: f64,
) -> Result<(GpuTensor, u64)> {
    let (a_dtype, shape, n) = info(c, a)?;
    let b_dtype = match b {
        Some(b) => Some(same_shape(c, "dot", &[b], &shape)?[0]),
        None => None,
    };
    let l = c.limits();
    let wg = workgroup_size(&l);
    let plan: Vec<_> = chunks(&l, n)
        .map(|ch| (ch, dispatch_1d(&l, ch.len.div_ceil(2), wg)))
        .collect();
    let count: u64 = plan
        .iter()
        .map(|(_, [x, y, z])| u64::from(*x) * u64::from(*y) * u64::from(*z))
        .sum();
    if count * 4 > l.max_storage_binding_size {
        return Err(Error::unsupported(format!(
            "reduce: {count} partial sums exceed one storage binding ({} bytes)",
            l.max_storage_binding_size
        )));
    }
    let out = DeviceTensor::zeros(c, DType::F32, &[count.max(1) as usize])?;
    let mut extra = vec![("MODE", mode), ("A_DTYPE", dtype_code("reduce", a_dtype)?)];
    if let Some(bd) = b_dtype {
        extra.push(("B_DTYPE", dtype_code("reduce", bd)?));
    }
    let consts = constants(&l, &extra);
    let mut offset = 0u64;
    for (ch, workgroups) in plan {
        let mut bindings = vec![Binding::write(out.id()), ch.binding(a, a_dtype, true)];
        if let (Some(b), Some(bd)) = (b, b_dtype) {
            bindings.push(ch.binding(b, bd, true));
        }
        c.dispatch(&KernelCall {
            label: "reduce",
            source: wgsl::REDUCE,
            entry_point: if b.is_some() {
                "reduce_dot"
            } else {
                "reduce_partial"
            },
            constants: &consts,
            bindings: &bindings,
            uniforms: bytemuck::bytes_of(&ReduceParams {
                n: len32(ch.len),
                offset: offset as u32,
                _pad: [0; 2],
            }),
            workgroups,
        })?;
        offset += workgroups.iter().map(|&d| u64::from(d)).product::<u64>();
    }
    Ok((out.into_raw(), count))
}

fn reduce(c: &dyn Compute, a: GpuTensor, b: Option<GpuTensor>, mode: f64) -> Result<f32> {
    if info(c, a)?.2 == 0 {
        return Ok(0.0);
    }
    let (first, mut count) = partials(c, a, b, mode)?;
    let mut level = DeviceTensor::adopt(c, first);
    while count > 1 {
        let (next, next_count) = partials(c, level.id(), None, 0.0)?;
        level = DeviceTensor::adopt(c, next);
        count = next_count;
    }
    let bytes = c.read(level.id())?;
    Ok(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}
