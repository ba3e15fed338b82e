//! Row gathers and token + position embeddings (`embedding.wgsl`).

use fusion_plugin_api::{Binding, Compute, GpuTensor, KernelCall};

use super::{check_extent, dispatch, fits_u32, grid, numel, NnError, Params, Result};
use crate::wgsl::nn;

/// The tensors of one embedding lookup.
struct Lookup {
    table: GpuTensor,
    idx: GpuTensor,
    out: GpuTensor,
    pos: Option<GpuTensor>,
}

/// Runs an `nn/embedding.wgsl` entry over `rows` indices; the row width is the table's last
/// dimension.
fn embedding_call(
    c: &dyn Compute,
    op: &str,
    entry: &str,
    t: Lookup,
    rows: usize,
    seq: usize,
) -> Result<()> {
    let (table_len, table_shape) = numel(c, op, t.table)?;
    let dim = table_shape.last().copied().unwrap_or(1);
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    let table_rows = table_len / dim;
    if table_rows == 0 {
        return Err(NnError::input(
            "gpu embedding",
            format!("{op}: table {table_shape:?} is empty"),
        ));
    }
    check_extent(c, op, "indices", t.idx, rows as u64)?;
    check_extent(c, op, "out", t.out, (rows * dim) as u64)?;
    if let Some(pos) = t.pos {
        check_extent(c, op, "position table", pos, (seq.min(rows) * dim) as u64)?;
    }
    fits_u32(op, "elements", (rows * dim) as u64)?;
    fits_u32(op, "table elements", table_len as u64)?;
    let limits = c.limits();
    let wg = fusion_plugin_api::kernel::workgroup_size(&limits);
    let uniforms = Params::default()
        .u(rows)
        .u(dim)
        .u(table_rows)
        .u(seq.max(1))
        .0;
    let mut bindings = vec![
        Binding::read(t.table),
        Binding::read(t.idx),
        Binding::write(t.out),
    ];
    if let Some(pos) = t.pos {
        bindings.push(Binding::read(pos));
    }
    dispatch(
        c,
        op,
        KernelCall {
            label: op,
            source: nn::EMBEDDING,
            entry_point: entry,
            constants: &[("WG", f64::from(wg))],
            bindings: &bindings,
            uniforms: &uniforms,
            workgroups: grid(&limits, op, (rows * dim) as u64, wg)?,
        },
        || format!("table {table_shape:?}, {rows} rows"),
    )
}

/// `out[r, :] = table[idx[r], :]` for `rows` u32 indices into `table: [_, dim]`. Indices past
/// the table are clamped to its last row (check them before uploading).
pub fn gather_rows(
    c: &dyn Compute,
    table: GpuTensor,
    idx: GpuTensor,
    out: GpuTensor,
    rows: usize,
) -> Result<()> {
    let t = Lookup {
        table,
        idx,
        out,
        pos: None,
    };
    embedding_call(c, "nn_gather_rows", "gather_rows", t, rows, 1)
}

/// `out[r, :] = table[idx[r], :] + pos[r % seq, :]`: token plus position embeddings of
/// `rows = batch * seq` tokens.
pub fn token_position_embed(
    c: &dyn Compute,
    table: GpuTensor,
    idx: GpuTensor,
    pos: GpuTensor,
    out: GpuTensor,
    rows: usize,
    seq: usize,
) -> Result<()> {
    let t = Lookup {
        table,
        idx,
        out,
        pos: Some(pos),
    };
    embedding_call(
        c,
        "nn_token_position_embed",
        "token_position_embed",
        t,
        rows,
        seq,
    )
}
