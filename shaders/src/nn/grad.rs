//! Backward passes (`grad.wgsl`, `loss.wgsl`) of the activations, softmax and layer norm, the
//! two losses on logits, and attention (composed from [`gemm`](super::gemm) and
//! [`softmax_backward`]). The CPU model for every formula is fusion-clip's `autograd`.

use fusion_plugin_api::{Binding, Compute, GpuTensor, KernelCall};

use super::{
    check_extent, dispatch, elementwise_grid, fits_u32, gemm_kernel, gemm_with, grid,
    row_workgroup, Activation, Gemm, GemmKernel, NnError, Operand, Params, Result,
};
use crate::wgsl::nn;

/// The uniform block of `grad.wgsl`.
fn grad_params(rows: usize, cols: usize, accumulate: bool, act: usize, eps: f32) -> Vec<u8> {
    Params::default()
        .u(rows)
        .u(cols)
        .u(usize::from(accumulate))
        .u(act)
        .f(eps)
        .0
}

/// `dy[i] *= act'(x[i])` for the first `n` values: the backward pass of [`super::activation`]
/// from its input `x`, in place over the incoming gradient.
pub fn activation_backward(
    c: &dyn Compute,
    x: GpuTensor,
    dy: GpuTensor,
    n: usize,
    act: Activation,
) -> Result<()> {
    const OP: &str = "activation_backward";
    if n == 0 {
        return Ok(());
    }
    check_extent(c, OP, "x", x, n as u64)?;
    check_extent(c, OP, "dy", dy, n as u64)?;
    fits_u32(OP, "elements", n as u64)?;
    let code = match act {
        Activation::QuickGelu => 0,
        Activation::Gelu => 1,
    };
    let (workgroups, wg) = elementwise_grid(c, OP, n)?;
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_activation_backward",
            source: nn::GRAD,
            entry_point: "activation_backward",
            constants: &[("WG", f64::from(wg))],
            bindings: &[Binding::read(x), Binding::write(dy)],
            uniforms: &grad_params(n, 0, false, code, 0.0),
            workgroups,
        },
        || format!("{n} elements, {act:?}"),
    )
}

/// In place over `dy`, `rows` rows of `cols`: `dy ← y ⊙ (dy - Σ_j y_j dy_j)`, the backward pass
/// of a row softmax from its output `y`.
pub fn softmax_backward(
    c: &dyn Compute,
    y: GpuTensor,
    dy: GpuTensor,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "softmax_backward";
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let n = (rows * cols) as u64;
    check_extent(c, OP, "y", y, n)?;
    check_extent(c, OP, "dy", dy, n)?;
    fits_u32(OP, "elements", n)?;
    let limits = c.limits();
    let wg = row_workgroup(&limits, cols);
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_softmax_backward",
            source: nn::GRAD,
            entry_point: "softmax_backward",
            constants: &[("WG", f64::from(wg))],
            bindings: &[Binding::read(y), Binding::write(dy)],
            uniforms: &grad_params(rows, cols, false, 0, 0.0),
            workgroups: grid(&limits, OP, rows as u64, 1)?,
        },
        || format!("rows {rows}, cols {cols}"),
    )
}

/// The outputs of [`layer_norm_backward`].
#[derive(Clone, Copy, Debug)]
pub struct LayerNormGrads {
    /// `∂L/∂x`, `[rows, cols]`.
    pub dx: GpuTensor,
    /// `∂L/∂weight`, `[cols]`.
    pub dw: GpuTensor,
    /// `∂L/∂bias`, `[cols]`.
    pub db: GpuTensor,
    /// Add into the old contents instead of overwriting them.
    pub accumulate: bool,
}

/// The backward pass of [`super::layer_norm`] over `rows` dense rows of `cols`, from the
/// forward input `x`, the weight and `dy`: with `x̂ = (x - mean) rstd` and `g = dy ⊙ w`,
/// `dx = rstd (g - mean(g) - x̂ mean(g x̂))`, `dw = Σ_rows dy x̂`, `db = Σ_rows dy`. The row
/// statistics are recomputed (two passes, as the forward).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    c: &dyn Compute,
    x: GpuTensor,
    weight: GpuTensor,
    dy: GpuTensor,
    grads: LayerNormGrads,
    rows: usize,
    cols: usize,
    eps: f64,
) -> Result<()> {
    const OP: &str = "layer_norm_backward";
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let n = (rows * cols) as u64;
    check_extent(c, OP, "x", x, n)?;
    check_extent(c, OP, "dy", dy, n)?;
    check_extent(c, OP, "dx", grads.dx, n)?;
    check_extent(c, OP, "weight", weight, cols as u64)?;
    check_extent(c, OP, "dw", grads.dw, cols as u64)?;
    check_extent(c, OP, "db", grads.db, cols as u64)?;
    fits_u32(OP, "elements", n)?;
    let stats = super::zeros(c, &[rows, 2])?;
    let limits = c.limits();
    let uniforms = grad_params(rows, cols, grads.accumulate, 0, eps as f32);
    let wg = row_workgroup(&limits, cols);
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_layer_norm_backward",
            source: nn::GRAD,
            entry_point: "layer_norm_backward",
            constants: &[("WG", f64::from(wg))],
            bindings: &[
                Binding::read(x),
                Binding::read(weight),
                Binding::read(dy),
                Binding::write(grads.dx),
                Binding::write(stats.id()),
            ],
            uniforms: &uniforms,
            workgroups: grid(&limits, OP, rows as u64, 1)?,
        },
        || format!("rows {rows}, cols {cols}"),
    )?;
    let (workgroups, wg) = elementwise_grid(c, OP, cols)?;
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_layer_norm_params",
            source: nn::GRAD,
            entry_point: "layer_norm_params",
            constants: &[("WG", f64::from(wg))],
            bindings: &[
                Binding::read(x),
                Binding::read(dy),
                Binding::read(stats.id()),
                Binding::write(grads.dw),
                Binding::write(grads.db),
            ],
            uniforms: &uniforms,
            workgroups,
        },
        || format!("rows {rows}, cols {cols}"),
    )
}

fn check_logits(
    c: &dyn Compute,
    op: &'static str,
    logits: GpuTensor,
    dlogits: GpuTensor,
    rows: usize,
    classes: usize,
) -> Result<()> {
    if rows == 0 || classes == 0 {
        return Err(NnError::input(
            op,
            format!("{rows} rows of {classes} classes: a loss needs at least one of each"),
        ));
    }
    let n = (rows * classes) as u64;
    check_extent(c, op, "logits", logits, n)?;
    check_extent(c, op, "dlogits", dlogits, n)?;
    fits_u32(op, "elements", n)
}

fn mean_of(c: &dyn Compute, op: &str, t: GpuTensor) -> Result<f32> {
    let v = super::read_f32(c, t)?;
    if v.is_empty() {
        return Err(NnError::input("loss", format!("{op}: no rows")));
    }
    Ok((v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64) as f32)
}

/// `torch.nn.functional.cross_entropy(logits, labels)` over `rows` rows of `classes` logits
/// (mean over rows): returns the loss and writes `dlogits = (softmax - onehot) / rows`. The
/// labels are checked here (each must be below `classes`).
pub fn cross_entropy(
    c: &dyn Compute,
    logits: GpuTensor,
    labels: &[u32],
    dlogits: GpuTensor,
    rows: usize,
    classes: usize,
) -> Result<f32> {
    const OP: &str = "cross_entropy";
    check_logits(c, OP, logits, dlogits, rows, classes)?;
    if labels.len() != rows {
        return Err(NnError::input(
            OP,
            format!("{} labels for {rows} rows", labels.len()),
        ));
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(NnError::input(
            OP,
            format!("label {l} of row {i} is not one of the {classes} classes"),
        ));
    }
    let labels_t = super::from_u32(c, &[rows], labels)?;
    let row_loss = super::zeros(c, &[rows])?;
    let limits = c.limits();
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_cross_entropy",
            source: nn::LOSS,
            entry_point: "cross_entropy_rows",
            constants: &[("WG", f64::from(row_workgroup(&limits, classes)))],
            bindings: &[
                Binding::read(logits),
                Binding::read(labels_t.id()),
                Binding::write(dlogits),
                Binding::write(row_loss.id()),
            ],
            uniforms: &Params::default().u(rows).u(classes).f(0.0).0,
            workgroups: grid(&limits, OP, rows as u64, 1)?,
        },
        || format!("rows {rows}, classes {classes}"),
    )?;
    mean_of(c, OP, row_loss.id())
}

/// AdaMerging's entropy loss over `rows` rows of `classes` logits:
/// `mean_rows(-Σ_j p_j log(p_j + eps))`, `p = softmax(z)` (FusionBench uses `eps = 1e-8`);
/// returns the loss and writes its gradient to `dlogits`.
pub fn entropy_loss(
    c: &dyn Compute,
    logits: GpuTensor,
    dlogits: GpuTensor,
    rows: usize,
    classes: usize,
    eps: f32,
) -> Result<f32> {
    const OP: &str = "entropy_loss";
    check_logits(c, OP, logits, dlogits, rows, classes)?;
    let row_loss = super::zeros(c, &[rows])?;
    let limits = c.limits();
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_entropy",
            source: nn::LOSS,
            entry_point: "entropy_rows",
            constants: &[("WG", f64::from(row_workgroup(&limits, classes)))],
            bindings: &[
                Binding::read(logits),
                Binding::write(dlogits),
                Binding::write(row_loss.id()),
            ],
            uniforms: &Params::default().u(rows).u(classes).f(eps).0,
            workgroups: grid(&limits, OP, rows as u64, 1)?,
        },
        || format!("rows {rows}, classes {classes}"),
    )?;
    mean_of(c, OP, row_loss.id())
}

/// One multi-head scaled dot-product attention over the packed layout of the forward path:
/// `qkv: [batch, seq, 3·heads·head_dim]` (`q | k | v` per row), probabilities
/// `P = softmax(scale q kᵀ + mask)`: `[batch, heads, seq, seq]`, context
/// `[batch, seq, heads·head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Multiplies `q kᵀ`.
    pub scale: f32,
}

/// The backward pass of attention from the packed `qkv`, the forward's probabilities `probs`
/// and `dctx = ∂L/∂context`, writing `dqkv = ∂L/∂qkv` (same layout as `qkv`), per sequence and
/// head: `dv = Pᵀ dctx`, `dP = dctx vᵀ`, `dS = P ⊙ (dP - rowsum(P ⊙ dP))`, `dq = scale dS k`,
/// `dk = scale dSᵀ q`. Masks need no input here: masked keys have `P = 0` and get no gradient.
/// Four batched products (z = sequence, head; heads split by strides, nothing transposed in
/// memory) and one row kernel; `dS` lives in a scratch tensor of `probs`' size.
pub fn attention_backward(
    c: &dyn Compute,
    qkv: GpuTensor,
    probs: GpuTensor,
    dctx: GpuTensor,
    dqkv: GpuTensor,
    shape: AttentionShape,
) -> Result<()> {
    attention_backward_with(gemm_kernel(c)?, c, qkv, probs, dctx, dqkv, shape)
}

/// [`attention_backward`] with the product kernel chosen by the caller.
pub fn attention_backward_with(
    kernel: GemmKernel,
    c: &dyn Compute,
    qkv: GpuTensor,
    probs: GpuTensor,
    dctx: GpuTensor,
    dqkv: GpuTensor,
    shape: AttentionShape,
) -> Result<()> {
    const OP: &str = "attention_backward";
    let AttentionShape {
        batch,
        seq,
        heads,
        head_dim: hd,
        scale,
    } = shape;
    if batch == 0 || seq == 0 || heads == 0 || hd == 0 {
        return Ok(());
    }
    let d = heads * hd;
    let packed = (batch * seq * 3 * d) as u64;
    check_extent(c, OP, "qkv", qkv, packed)?;
    check_extent(c, OP, "dqkv", dqkv, packed)?;
    check_extent(c, OP, "probs", probs, (batch * heads * seq * seq) as u64)?;
    check_extent(c, OP, "dctx", dctx, (batch * seq * d) as u64)?;
    let ds = super::zeros(c, &[batch, heads, seq, seq])?;
    // Strides, z0 = sequence, z1 = head.
    let p_op = Operand::batched(0, seq, heads * seq * seq, seq * seq);
    let ctx_op = Operand::batched(0, d, seq * d, hd);
    let part = |i: usize| Operand::batched(i * d, 3 * d, seq * 3 * d, hd);
    let g = |m, n, k, alpha| Gemm {
        m,
        n,
        k,
        batch0: batch,
        batch1: heads,
        alpha,
        beta: 1.0,
        accumulate: false,
        a: p_op,
        a_transposed: false,
        b: p_op,
        b_transposed: false,
        c: p_op,
    };
    // dv[seq, hd] = Pᵀ dctx
    let dv = Gemm {
        a: p_op,
        a_transposed: true,
        b: ctx_op,
        c: part(2),
        ..g(seq, hd, seq, 1.0)
    };
    gemm_with(kernel, c, probs, dctx, dqkv, &dv)?;
    // dP[seq, seq] = dctx vᵀ
    let dp = Gemm {
        a: ctx_op,
        b: part(2),
        b_transposed: true,
        c: p_op,
        ..g(seq, seq, hd, 1.0)
    };
    gemm_with(kernel, c, dctx, qkv, ds.id(), &dp)?;
    softmax_backward(c, probs, ds.id(), batch * heads * seq, seq)?;
    // dq = scale dS k, dk = scale dSᵀ q
    let dq = Gemm {
        a: p_op,
        b: part(1),
        c: part(0),
        ..g(seq, hd, seq, scale)
    };
    gemm_with(kernel, c, ds.id(), qkv, dqkv, &dq)?;
    let dk = Gemm {
        a: p_op,
        a_transposed: true,
        b: part(0),
        c: part(1),
        ..g(seq, hd, seq, scale)
    };
    gemm_with(kernel, c, ds.id(), qkv, dqkv, &dk)
}

/// `y[i] += alpha x[i]` for the first `n` values: one term of the layer-wise merge
/// `θ = θ0 + Σ_i λ_i τ_i` (and of any optimizer step).
pub fn scaled_add(c: &dyn Compute, x: GpuTensor, y: GpuTensor, n: usize, alpha: f32) -> Result<()> {
    const OP: &str = "scaled_add";
    if n == 0 {
        return Ok(());
    }
    check_extent(c, OP, "x", x, n as u64)?;
    check_extent(c, OP, "y", y, n as u64)?;
    let (workgroups, wg) = elementwise_grid(c, OP, n)?;
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_scaled_add",
            source: nn::GRAD,
            entry_point: "scaled_add",
            constants: &[("WG", f64::from(wg))],
            bindings: &[Binding::read(x), Binding::write(y)],
            uniforms: &grad_params(n, 0, false, 0, alpha),
            workgroups,
        },
        || format!("{n} elements, alpha {alpha}"),
    )
}

/// Workgroups of the first pass of [`dot`]: enough to keep a device busy, few enough that the
/// second pass is one workgroup's work.
const DOT_GROUPS: usize = 64;

/// `out[index] = Σ_{i < n} a[i] b[i]` (added to the old value when `accumulate`), on the
/// device: partial sums per workgroup (compensated), then one workgroup adds them. With the
/// weight gradients `a = ∂L/∂θ_l` and task vectors `b = τ_{i,l}` this is layer-wise
/// AdaMerging's `∂L/∂λ_{i,l}`; the results stay on the device until read together.
pub fn dot(
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    n: usize,
    out: GpuTensor,
    index: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "dot";
    check_extent(c, OP, "a", a, n as u64)?;
    check_extent(c, OP, "b", b, n as u64)?;
    check_extent(c, OP, "out", out, index as u64 + 1)?;
    fits_u32(OP, "elements", n as u64)?;
    fits_u32(OP, "index", index as u64)?;
    let limits = c.limits();
    let wg = row_workgroup(&limits, 256);
    let groups = n.div_ceil(wg as usize).clamp(1, DOT_GROUPS);
    let partials = super::zeros(c, &[groups])?;
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_dot_partials",
            source: nn::GRAD,
            entry_point: "dot_partials",
            constants: &[("WG", f64::from(wg))],
            bindings: &[
                Binding::read(a),
                Binding::read(b),
                Binding::write(partials.id()),
            ],
            uniforms: &grad_params(n, 0, false, 0, 0.0),
            workgroups: [groups as u32, 1, 1],
        },
        || format!("{n} elements"),
    )?;
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_sum_partials",
            source: nn::GRAD,
            entry_point: "sum_partials",
            constants: &[("WG", f64::from(wg))],
            bindings: &[Binding::read(partials.id()), Binding::write(out)],
            uniforms: &grad_params(groups, index, accumulate, 0, 0.0),
            workgroups: [1, 1, 1],
        },
        || format!("{groups} partial sums into element {index}"),
    )
}

/// `y = x / ‖x‖` per row of `rows` rows of `cols`, writing the norms to `norms: [rows]`
/// (CLIP's normalization of embeddings before the similarity).
pub fn l2_normalize_rows(
    c: &dyn Compute,
    x: GpuTensor,
    y: GpuTensor,
    norms: GpuTensor,
    rows: usize,
    cols: usize,
) -> Result<()> {
    l2_rows(c, "l2_normalize_rows", x, y, norms, rows, cols)
}

/// The backward pass of [`l2_normalize_rows`] from its output `y` and `norms`, in place over
/// `dy`: `dx = (dy - y (y · dy)) / ‖x‖` per row.
pub fn l2_normalize_backward(
    c: &dyn Compute,
    y: GpuTensor,
    norms: GpuTensor,
    dy: GpuTensor,
    rows: usize,
    cols: usize,
) -> Result<()> {
    l2_rows(c, "l2_normalize_backward", y, dy, norms, rows, cols)
}

fn l2_rows(
    c: &dyn Compute,
    op: &'static str,
    input: GpuTensor,
    inout: GpuTensor,
    norms: GpuTensor,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let n = (rows * cols) as u64;
    check_extent(c, op, "input", input, n)?;
    check_extent(c, op, "output", inout, n)?;
    check_extent(c, op, "norms", norms, rows as u64)?;
    fits_u32(op, "elements", n)?;
    let limits = c.limits();
    dispatch(
        c,
        op,
        KernelCall {
            label: op,
            source: nn::LOSS,
            entry_point: op,
            constants: &[("WG", f64::from(row_workgroup(&limits, cols)))],
            bindings: &[
                Binding::read(input),
                Binding::write(inout),
                Binding::write(norms),
            ],
            uniforms: &Params::default().u(rows).u(cols).f(0.0).0,
            workgroups: grid(&limits, op, rows as u64, 1)?,
        },
        || format!("rows {rows}, cols {cols}"),
    )
}
