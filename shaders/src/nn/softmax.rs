//! Row-wise softmax of attention scores with causal and key-padding masks (`softmax.wgsl`).

use fusion_plugin_api::{Binding, Compute, GpuTensor, KernelCall};

use super::{check_extent, dispatch, fits_u32, grid, row_workgroup, NnError, Params, Result};
use crate::wgsl::nn;

/// The masks of attention scores `[batch, heads, q_len, k_len]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftmaxMask {
    /// Hide keys after the query (`j > i`).
    pub causal: bool,
    /// `[batch, k_len]` u32, zero where the key is padding.
    pub key_mask: Option<GpuTensor>,
}

/// In-place softmax over each row of `x`, seen as `[batch, heads, q_len, k_len]` (`rows =
/// batch * heads * q_len`, `cols = k_len`), with `mask` applied first.
pub fn softmax_rows(
    c: &dyn Compute,
    x: GpuTensor,
    rows: usize,
    cols: usize,
    q_len: usize,
    heads: usize,
    mask: SoftmaxMask,
) -> Result<()> {
    const OP: &str = "softmax";
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    if q_len == 0 || heads == 0 || rows % (q_len * heads) != 0 {
        return Err(NnError::input(
            "gpu softmax",
            format!(
                "{rows} rows are not a whole number of [heads = {heads}, q_len = {q_len}] blocks"
            ),
        ));
    }
    let ext = (rows * cols) as u64;
    check_extent(c, OP, "x", x, ext)?;
    fits_u32(OP, "elements", ext)?;
    if let Some(m) = mask.key_mask {
        check_extent(c, OP, "key mask", m, (rows / (q_len * heads) * cols) as u64)?;
    }
    let limits = c.limits();
    let wg = row_workgroup(&limits, cols);
    let uniforms = Params::default()
        .u(rows)
        .u(cols)
        .u(q_len)
        .u(heads)
        .u(usize::from(mask.causal))
        .0;
    let mut bindings = vec![Binding::write(x)];
    if let Some(m) = mask.key_mask {
        bindings.push(Binding::read(m));
    }
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_softmax",
            source: nn::SOFTMAX,
            entry_point: if mask.key_mask.is_some() {
                "softmax_rows_masked"
            } else {
                "softmax_rows"
            },
            constants: &[("WG", f64::from(wg))],
            bindings: &bindings,
            uniforms: &uniforms,
            workgroups: grid(&limits, OP, rows as u64, 1)?,
        },
        || format!("rows {rows}, cols {cols}, q_len {q_len}, heads {heads}, {mask:?}"),
    )
}
