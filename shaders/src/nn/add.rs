//! Residual addition in place, and copies into part of a tensor (`add.wgsl`).

use fusion_plugin_api::{Binding, Compute, GpuTensor};

use super::{check_extent, elementwise, fits_u32, Params, Result};
use crate::wgsl::nn;

/// `x[i] += y[i]` for the first `n` values.
pub fn add_inplace(c: &dyn Compute, x: GpuTensor, y: GpuTensor, n: usize) -> Result<()> {
    const OP: &str = "nn_add";
    check_extent(c, OP, "x", x, n as u64)?;
    check_extent(c, OP, "y", y, n as u64)?;
    elementwise(
        c,
        OP,
        nn::ADD,
        "add_inplace",
        &[Binding::write(x), Binding::read(y)],
        n,
        Params::default().u(n).u(0),
    )
}

/// `dst[offset + i] = src[i]` for the first `n` values of `src`: stacks tensors into one (such
/// as the q, k and v projections of an attention layer into one `[3D, D]` weight).
pub fn copy_into(
    c: &dyn Compute,
    src: GpuTensor,
    dst: GpuTensor,
    offset: usize,
    n: usize,
) -> Result<()> {
    const OP: &str = "nn_copy_into";
    let end = offset as u64 + n as u64;
    check_extent(c, OP, "src", src, n as u64)?;
    check_extent(c, OP, "dst", dst, end)?;
    fits_u32(OP, "destination extent", end)?;
    elementwise(
        c,
        OP,
        nn::ADD,
        "copy_at",
        &[Binding::write(dst), Binding::read(src)],
        n,
        Params::default().u(n).u(offset),
    )
}
