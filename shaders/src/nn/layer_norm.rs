//! Row-wise layer norm (`layer_norm.wgsl`).

use fusion_plugin_api::{Binding, Compute, GpuTensor, KernelCall};

use super::{check_extent, dispatch, fits_u32, grid, row_workgroup, Params, Result};
use crate::wgsl::nn;

/// Which rows a [`layer_norm`] reads and where it writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowLayout {
    /// Number of rows.
    pub rows: usize,
    /// Values per row (the normalized width).
    pub cols: usize,
    /// First input element.
    pub in_offset: usize,
    /// Elements between the starts of consecutive input rows.
    pub in_stride: usize,
    /// Elements between the starts of consecutive output rows.
    pub out_stride: usize,
}

impl RowLayout {
    /// `rows` dense rows of `cols`, in and out.
    pub fn dense(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            in_offset: 0,
            in_stride: cols,
            out_stride: cols,
        }
    }
}

/// `y = layer_norm(x) * weight + bias` over the rows described by `layout`.
pub fn layer_norm(
    c: &dyn Compute,
    x: GpuTensor,
    weight: GpuTensor,
    bias: GpuTensor,
    y: GpuTensor,
    layout: RowLayout,
    eps: f64,
) -> Result<()> {
    const OP: &str = "layer_norm";
    let RowLayout {
        rows,
        cols,
        in_offset,
        in_stride,
        out_stride,
    } = layout;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let ext_x = (in_offset + (rows - 1) * in_stride + cols) as u64;
    let ext_y = ((rows - 1) * out_stride + cols) as u64;
    check_extent(c, OP, "x", x, ext_x)?;
    check_extent(c, OP, "weight", weight, cols as u64)?;
    check_extent(c, OP, "bias", bias, cols as u64)?;
    check_extent(c, OP, "y", y, ext_y)?;
    fits_u32(OP, "x extent", ext_x)?;
    fits_u32(OP, "y extent", ext_y)?;
    let limits = c.limits();
    let wg = row_workgroup(&limits, cols);
    let uniforms = Params::default()
        .u(rows)
        .u(cols)
        .u(in_offset)
        .u(in_stride)
        .u(out_stride)
        .f(eps as f32)
        .0;
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_layer_norm",
            source: nn::LAYER_NORM,
            entry_point: "layer_norm",
            constants: &[("WG", f64::from(wg))],
            bindings: &[
                Binding::read(x),
                Binding::read(weight),
                Binding::read(bias),
                Binding::write(y),
            ],
            uniforms: &uniforms,
            workgroups: grid(&limits, OP, rows as u64, 1)?,
        },
        || format!("{layout:?}"),
    )
}
