//! Elementwise kernels: dtype conversion, weighted sums of any number of tensors, task vectors
//! and the task-arithmetic step.

use fusion_plugin_api::{Compute, DType, DeviceTensor, Error, GpuTensor, KernelCall, Result};

use crate::launch::{
    arity, chunks, constants, dispatch_1d, dtype_code, info, same_shape, workgroup_size,
    X_DTYPE_NAMES,
};
use crate::uniforms::{len32, words8, LenParams, ScatterParams, WeightedSumParams};
use crate::wgsl;

/// Convert `x` to `dtype` (f32, f16 or bf16; round to nearest even) into a new tensor.
pub fn convert(c: &dyn Compute, x: GpuTensor, dtype: DType) -> Result<GpuTensor> {
    let (_, shape, _) = info(c, x)?;
    let out = DeviceTensor::zeros(c, dtype, &shape)?;
    convert_into(c, x, out.id())?;
    Ok(out.into_raw())
}

/// Convert `x` into the existing tensor `out` (same shape, any of f32/f16/bf16).
pub fn convert_into(c: &dyn Compute, x: GpuTensor, out: GpuTensor) -> Result<()> {
    let (out_dtype, shape, n) = info(c, out)?;
    let x_dtype = same_shape(c, "convert", &[x], &shape)?[0];
    let l = c.limits();
    let consts = constants(
        &l,
        &[
            ("OUT_DTYPE", dtype_code("convert", out_dtype)?),
            ("X_DTYPE", dtype_code("convert", x_dtype)?),
        ],
    );
    let wg = workgroup_size(&l);
    for ch in chunks(&l, n) {
        let bindings = [
            ch.binding(out, out_dtype, false),
            ch.binding(x, x_dtype, true),
        ];
        c.dispatch(&KernelCall {
            label: "convert",
            source: wgsl::CONVERT,
            entry_point: "convert",
            constants: &consts,
            bindings: &bindings,
            uniforms: bytemuck::bytes_of(&LenParams::new(ch.len)),
            workgroups: dispatch_1d(&l, ch.len.div_ceil(2), wg),
        })?;
    }
    Ok(())
}

/// `Σ w_i x_i` into a new tensor of `dtype`, arithmetic in f32. Any number of inputs (at least
/// one), of any mix of f32/f16/bf16, all of one shape.
pub fn weighted_sum(
    c: &dyn Compute,
    inputs: &[(GpuTensor, f32)],
    dtype: DType,
) -> Result<GpuTensor> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::config("weighted_sum: no inputs"))?;
    let (_, shape, _) = info(c, first.0)?;
    let out = DeviceTensor::zeros(c, dtype, &shape)?;
    weighted_sum_into(c, inputs, out.id())?;
    Ok(out.into_raw())
}

/// `out = Σ w_i x_i`, overwriting `out` (which must not be one of the inputs).
///
/// Inputs are bound in batches of as many as the device allows (up to
/// [`wgsl::MAX_ARITY`]); with more than one batch and a 16-bit `out`, the sum is accumulated in
/// an f32 scratch tensor and rounded once at the end.
pub fn weighted_sum_into(
    c: &dyn Compute,
    inputs: &[(GpuTensor, f32)],
    out: GpuTensor,
) -> Result<()> {
    if inputs.is_empty() {
        return Err(Error::config("weighted_sum: no inputs"));
    }
    let (out_dtype, shape, _) = info(c, out)?;
    let batch = arity(&c.limits(), "weighted_sum", 1)?;
    if inputs.len() <= batch || out_dtype == DType::F32 {
        return sum_batches(c, inputs, out, &shape, false);
    }
    let acc = DeviceTensor::zeros(c, DType::F32, &shape)?;
    sum_batches(c, inputs, acc.id(), &shape, false)?;
    convert_into(c, acc.id(), out)
}

/// `acc += Σ w_i x_i` in place. A 16-bit `acc` is rounded after every batch of inputs (see
/// [`weighted_sum_into`] for the single-rounding path).
pub fn accumulate(c: &dyn Compute, acc: GpuTensor, inputs: &[(GpuTensor, f32)]) -> Result<()> {
    if inputs.is_empty() {
        return Ok(());
    }
    let (_, shape, _) = info(c, acc)?;
    sum_batches(c, inputs, acc, &shape, true)
}

/// The task vector `finetuned - base` as a new tensor of `dtype`.
pub fn task_vector(
    c: &dyn Compute,
    finetuned: GpuTensor,
    base: GpuTensor,
    dtype: DType,
) -> Result<GpuTensor> {
    weighted_sum(c, &[(finetuned, 1.0), (base, -1.0)], dtype)
}

/// The task-arithmetic step `a + lambda * b` as a new tensor of `dtype`.
pub fn scale_add(
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    lambda: f32,
    dtype: DType,
) -> Result<GpuTensor> {
    weighted_sum(c, &[(a, 1.0), (b, lambda)], dtype)
}

fn sum_batches(
    c: &dyn Compute,
    inputs: &[(GpuTensor, f32)],
    out: GpuTensor,
    shape: &[usize],
    accumulate_first: bool,
) -> Result<()> {
    let tensors: Vec<GpuTensor> = inputs.iter().map(|i| i.0).collect();
    if tensors.contains(&out) {
        return Err(Error::config(
            "weighted_sum: the output tensor is also an input",
        ));
    }
    let dtypes = same_shape(c, "weighted_sum", &tensors, shape)?;
    let (out_dtype, _, n) = info(c, out)?;
    let l = c.limits();
    let batch = arity(&l, "weighted_sum", 1)?;
    let wg = workgroup_size(&l);
    for (b, (group, group_dtypes)) in inputs.chunks(batch).zip(dtypes.chunks(batch)).enumerate() {
        let mut extra = vec![
            (
                "ACCUMULATE",
                if accumulate_first || b > 0 { 1.0 } else { 0.0 },
            ),
            ("OUT_DTYPE", dtype_code("weighted_sum", out_dtype)?),
        ];
        for (k, &dt) in group_dtypes.iter().enumerate() {
            extra.push((X_DTYPE_NAMES[k], dtype_code("weighted_sum", dt)?));
        }
        // All f32: four elements per invocation (`weighted_sum_q`).
        let mut all = group_dtypes.to_vec();
        all.push(out_dtype);
        let quad = crate::launch::quads(&l, &all);
        let consts = constants(&l, &extra);
        let entry = if quad {
            "weighted_sum_q"
        } else {
            "weighted_sum"
        };
        let weights: Vec<f32> = group.iter().map(|&(_, w)| w).collect();
        for ch in chunks(&l, n) {
            let mut bindings = vec![ch.binding(out, out_dtype, false)];
            bindings.extend(
                group
                    .iter()
                    .zip(group_dtypes)
                    .map(|(&(t, _), &dt)| ch.binding(t, dt, true)),
            );
            c.dispatch(&KernelCall {
                label: "weighted_sum",
                source: wgsl::weighted_sum(group.len()),
                entry_point: entry,
                constants: &consts,
                bindings: &bindings,
                uniforms: bytemuck::bytes_of(&WeightedSumParams {
                    n: len32(ch.len),
                    _pad: [0; 3],
                    w: words8(&weights),
                }),
                workgroups: dispatch_1d(&l, ch.len.div_ceil(if quad { 4 } else { 2 }), wg),
            })?;
        }
    }
    Ok(())
}

/// `dst[indices[i]] = values[i]` for every `i`, for 32-bit tensors (`values` of `dst`'s dtype,
/// `indices` u32, as many as `values`); indices past `dst`'s element count are skipped. `dst`
/// must fit one binding of the device.
pub fn scatter32(
    c: &dyn Compute,
    dst: GpuTensor,
    indices: GpuTensor,
    values: GpuTensor,
) -> Result<()> {
    const OP: &str = "scatter32";
    let (dt, _, len) = info(c, dst)?;
    let (vt, _, n) = info(c, values)?;
    let (it, _, ni) = info(c, indices)?;
    if dt.size() != 4 || vt != dt || it != DType::U32 || ni != n {
        return Err(Error::config(format!(
            "{OP}: takes a 32-bit tensor, values of its dtype and as many u32 indices; got {dt}, {n} {vt} values and {ni} {it} indices"
        )));
    }
    let l = c.limits();
    if len > crate::launch::chunk_elements(&l) || n > crate::launch::chunk_elements(&l) {
        return Err(Error::unsupported(format!(
            "{OP}: {len} elements, {n} values: past one binding of the device"
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let wg = workgroup_size(&l);
    c.dispatch(&KernelCall {
        label: OP,
        source: wgsl::CONVERT,
        entry_point: OP,
        constants: &constants(&l, &[]),
        bindings: &[
            fusion_plugin_api::Binding::write(dst),
            fusion_plugin_api::Binding::read(values),
            fusion_plugin_api::Binding::read(indices),
        ],
        uniforms: bytemuck::bytes_of(&ScatterParams {
            n: len32(n),
            len: len32(len),
            _pad: [0; 2],
        }),
        workgroups: dispatch_1d(&l, n, wg),
    })
}
