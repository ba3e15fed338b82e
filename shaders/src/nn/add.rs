//! Residual addition in place (`add.wgsl`).

use fusion_plugin_api::{Binding, Compute, GpuTensor};

use super::{check_extent, elementwise, Params, Result};
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
        Params::default().u(n),
    )
}
