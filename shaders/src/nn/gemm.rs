//! The general product `C = act(alpha op(A) op(B) + bias) + R (+ beta C)` (`gemm.wgsl`,
//! `ext/gemm_subgroup.wgsl`, `ext/gemm_coop.wgsl`, all after `include/gemm_common.wgsl`) with
//! its kernel variants and fused epilogues ([`GemmEpilogue`]), and the backward pass of
//! [`Matmul`](super::Matmul) built on it.

use fusion_plugin_api::{Binding, Compute, GpuTensor, KernelCall};

use super::{
    check_extent, dispatch, elementwise_grid, fits_u32, grid, Activation, Matmul, NnError, Operand,
    Params, Result,
};
use crate::wgsl::nn;

/// Bytes of workgroup memory the tiled kernel stages its tiles in (2 x 256 vec4<f32>).
const GEMM_WORKGROUP_BYTES: u32 = 8192;

/// A batched product `C[z] = alpha op(A[z]) op(B[z])`, plus `beta C[z]` when `accumulate`,
/// for `z` in `batch0 x batch1`. `op(A)` is `[m, k]`, `op(B)` is `[k, n]`.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    /// Rows of op(A) and C.
    pub m: usize,
    /// Columns of op(B) and C.
    pub n: usize,
    /// Columns of op(A), rows of op(B).
    pub k: usize,
    /// Outer batch count.
    pub batch0: usize,
    /// Inner batch count.
    pub batch1: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old C when `accumulate`.
    pub beta: f32,
    /// Whether C's old contents are kept (times `beta`) and added to.
    pub accumulate: bool,
    /// A: `[m, k]` per batch, or `[k, m]` when `a_transposed`.
    pub a: Operand,
    /// Whether A is stored transposed.
    pub a_transposed: bool,
    /// B: `[k, n]` per batch, or `[n, k]` when `b_transposed`.
    pub b: Operand,
    /// Whether B is stored transposed.
    pub b_transposed: bool,
    /// C: `[m, n]` per batch.
    pub c: Operand,
}

impl Gemm {
    /// One dense product `C[m, n] = op(A) op(B)` of row-major matrices (leading dimensions
    /// from the stored shapes), overwriting C.
    pub fn dense(m: usize, n: usize, k: usize, a_transposed: bool, b_transposed: bool) -> Self {
        Self {
            m,
            n,
            k,
            batch0: 1,
            batch1: 1,
            alpha: 1.0,
            beta: 1.0,
            accumulate: false,
            a: Operand::rows(if a_transposed { m } else { k }),
            a_transposed,
            b: Operand::rows(if b_transposed { k } else { n }),
            b_transposed,
            c: Operand::rows(n),
        }
    }
}

/// Which kernel computes a [`Gemm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmKernel {
    /// `gemm_reg`: 8 x 8 register blocks read straight from storage, no workgroup memory;
    /// the fast one on software adapters.
    Registers,
    /// `gemm_tiled` with 8 x 8 invocations (32 x 32 tiles staged in workgroup memory).
    Tiled8,
    /// `gemm_tiled` with 16 x 16 invocations (64 x 64 tiles).
    Tiled16,
    /// `ext/gemm_subgroup.wgsl`: A shared across a subgroup by shuffles; needs wgpu's
    /// `SUBGROUP` feature.
    Subgroup,
    /// `ext/gemm_coop.wgsl`: cooperative matrices (tensor cores), operands rounded to f16 and
    /// f32 accumulation: mixed precision, chosen only when the run asks for it
    /// ([`super::gemm_kernel_for`]) and never by the f32 tuner. Needs wgpu's
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX` with a 16 x 16 x 16 f16 -> f32 shape.
    Cooperative,
}

impl GemmKernel {
    /// Every full-precision (f32) variant, in the order the tuner tries them.
    pub const ALL: [GemmKernel; 4] = [
        GemmKernel::Registers,
        GemmKernel::Tiled8,
        GemmKernel::Tiled16,
        GemmKernel::Subgroup,
    ];

    /// The name used in the tuning cache and by `FUSION_GEMM`.
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Registers => "registers",
            GemmKernel::Tiled8 => "tiled8",
            GemmKernel::Tiled16 => "tiled16",
            GemmKernel::Subgroup => "subgroup",
            GemmKernel::Cooperative => "cooperative",
        }
    }

    /// The variant called `name` (as [`GemmKernel::name`]; `reg` and `tiled` are accepted for
    /// `registers` and `tiled16`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "registers" | "reg" => Some(GemmKernel::Registers),
            "tiled8" => Some(GemmKernel::Tiled8),
            "tiled16" | "tiled" => Some(GemmKernel::Tiled16),
            "subgroup" | "subgroups" => Some(GemmKernel::Subgroup),
            "cooperative" | "coop" => Some(GemmKernel::Cooperative),
            _ => None,
        }
    }

    /// Whether this device can run the variant: enough invocations and workgroup memory, and
    /// for [`GemmKernel::Subgroup`] working subgroup operations ([`super::subgroup_size`]).
    pub fn supported(self, c: &dyn Compute) -> bool {
        let l = c.limits();
        match self {
            GemmKernel::Registers => l.max_invocations_per_workgroup >= 64,
            GemmKernel::Tiled8 => {
                l.max_invocations_per_workgroup >= 64
                    && l.max_workgroup_storage_size >= GEMM_WORKGROUP_BYTES
            }
            GemmKernel::Tiled16 => {
                l.max_invocations_per_workgroup >= 256
                    && l.max_workgroup_storage_size >= GEMM_WORKGROUP_BYTES
            }
            GemmKernel::Subgroup => {
                l.max_invocations_per_workgroup >= 64 && super::subgroup_size(c).is_some()
            }
            GemmKernel::Cooperative => super::cooperative_matrix_available(c),
        }
    }
}

fn extent(o: &Operand, batch0: usize, batch1: usize, rows: usize, cols: usize) -> u64 {
    let u = |v: usize| v as u64;
    u(o.offset)
        + u(batch0 - 1) * u(o.stride0)
        + u(batch1 - 1) * u(o.stride1)
        + u(rows - 1) * u(o.ld)
        + u(cols)
}

/// What a [`Gemm`] does to each element of its product before storing it (all optional; the
/// default is none of them, the plain product):
///
/// `C[z][r, j] = act(alpha (op(A[z]) op(B[z]))[r, j] + bias[j]) + R[z][r, j] (+ beta C[z][r, j]
/// when the gemm accumulates)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmEpilogue {
    /// Added per output column after scaling by alpha: `n` values (nn.Linear's bias).
    pub bias: Option<GpuTensor>,
    /// Applied after the bias.
    pub activation: Option<Activation>,
    /// Added after the activation, laid out as C (the same [`Operand`] in its own tensor). When
    /// it *is* the output tensor (an in-place residual connection, `x += f(x)`), the product is
    /// added to C's old contents instead (as [`Gemm::accumulate`] with `beta` = 1, or
    /// `beta + 1` when the gemm already accumulates).
    pub residual: Option<GpuTensor>,
}

impl GemmEpilogue {
    /// nn.Linear's epilogue: `bias` (when given), then `activation` (when given).
    pub fn linear(bias: Option<GpuTensor>, activation: Option<Activation>) -> Self {
        Self {
            bias,
            activation,
            residual: None,
        }
    }
}

/// Runs `g` with the kernel chosen for this device ([`super::gemm_kernel`]: the
/// `FUSION_GEMM` override, else the tuned and cached choice).
pub fn gemm(c: &dyn Compute, a: GpuTensor, b: GpuTensor, out: GpuTensor, g: &Gemm) -> Result<()> {
    gemm_with(super::gemm_kernel(c)?, c, a, b, out, g)
}

/// [`gemm`] with the kernel chosen by the caller.
pub fn gemm_with(
    kernel: GemmKernel,
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    out: GpuTensor,
    g: &Gemm,
) -> Result<()> {
    checked("gemm", kernel, c, [a, b, out], g, &GemmEpilogue::default())
}

/// [`gemm`] followed by `epi`: bias, activation and residual fused into the product's stores
/// (one launch, no intermediate tensor).
pub fn gemm_epilogue(
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    out: GpuTensor,
    g: &Gemm,
    epi: &GemmEpilogue,
) -> Result<()> {
    gemm_epilogue_with(super::gemm_kernel(c)?, c, a, b, out, g, epi)
}

/// [`gemm_epilogue`] with the kernel chosen by the caller.
pub fn gemm_epilogue_with(
    kernel: GemmKernel,
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    out: GpuTensor,
    g: &Gemm,
    epi: &GemmEpilogue,
) -> Result<()> {
    checked("gemm", kernel, c, [a, b, out], g, epi)
}

/// The checks of every gemm entry point, errors naming `op`, then the launch.
pub(super) fn checked(
    op: &'static str,
    kernel: GemmKernel,
    c: &dyn Compute,
    [a, b, out]: [GpuTensor; 3],
    g: &Gemm,
    epi: &GemmEpilogue,
) -> Result<()> {
    if g.m == 0 || g.n == 0 || g.batch0 == 0 || g.batch1 == 0 {
        return Ok(());
    }
    // An in-place residual is accumulation into C (a tensor cannot be bound for reading and
    // writing in one launch).
    let (g, epi) = if epi.residual == Some(out) {
        let g = Gemm {
            accumulate: true,
            beta: if g.accumulate { g.beta + 1.0 } else { 1.0 },
            ..*g
        };
        (
            g,
            GemmEpilogue {
                residual: None,
                ..*epi
            },
        )
    } else {
        (*g, *epi)
    };
    let g = &g;
    let (arows, acols) = if g.a_transposed {
        (g.k, g.m)
    } else {
        (g.m, g.k)
    };
    let (brows, bcols) = if g.b_transposed {
        (g.n, g.k)
    } else {
        (g.k, g.n)
    };
    let ext_c = extent(&g.c, g.batch0, g.batch1, g.m, g.n);
    check_extent(c, op, "C", out, ext_c)?;
    fits_u32(op, "C extent", ext_c)?;
    if g.k > 0 {
        let ext_a = extent(&g.a, g.batch0, g.batch1, arows, acols);
        let ext_b = extent(&g.b, g.batch0, g.batch1, brows, bcols);
        check_extent(c, op, "A", a, ext_a)?;
        check_extent(c, op, "B", b, ext_b)?;
        fits_u32(op, "A extent", ext_a)?;
        fits_u32(op, "B extent", ext_b)?;
    }
    if !kernel.supported(c) {
        return Err(NnError::DeviceLimit {
            op: op.into(),
            message: format!(
                "the `{}` kernel does not run on `{}` (too few invocations or too little \
                 workgroup memory, or no subgroup operations)",
                kernel.name(),
                c.device_name()
            ),
        });
    }
    if let Some(bias) = epi.bias {
        check_extent(c, op, "bias", bias, g.n as u64)?;
    }
    if let Some(r) = epi.residual {
        check_extent(c, op, "residual", r, ext_c)?;
    }
    launch_epilogue(kernel, c, [a, b, out], g, &epi)
}

/// [`gemm_with`] after the checks: the launch itself (the probes call it directly, since
/// [`GemmKernel::supported`] asks them).
pub(super) fn launch(
    kernel: GemmKernel,
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    out: GpuTensor,
    g: &Gemm,
) -> Result<()> {
    launch_epilogue(kernel, c, [a, b, out], g, &GemmEpilogue::default())
}

/// [`launch`] with an epilogue whose residual is not the output.
fn launch_epilogue(
    kernel: GemmKernel,
    c: &dyn Compute,
    [a, b, out]: [GpuTensor; 3],
    g: &Gemm,
    epi: &GemmEpilogue,
) -> Result<()> {
    const OP: &str = "gemm";
    let flag = |v: bool| if v { 1.0 } else { 0.0 };
    let act = match epi.activation {
        None => 0.0,
        Some(Activation::QuickGelu) => 1.0,
        Some(Activation::Gelu) => 2.0,
    };
    let mut constants = vec![
        ("A_TRANS", flag(g.a_transposed)),
        ("B_TRANS", flag(g.b_transposed)),
        ("ACCUMULATE", flag(g.accumulate)),
        ("BIAS", flag(epi.bias.is_some())),
        ("ACT", act),
        ("RESIDUAL", flag(epi.residual.is_some())),
    ];
    let batches = (g.batch0 * g.batch1) as u64;
    let limits = c.limits();
    let (label, source, entry, tiles_m, tiles_n, total, workgroups) = match kernel {
        GemmKernel::Registers | GemmKernel::Tiled8 | GemmKernel::Tiled16 => {
            let (block, per_group, entry) = match kernel {
                GemmKernel::Registers => (8, 64, "gemm_reg"),
                GemmKernel::Tiled8 => {
                    constants.push(("T", 8.0));
                    (32, 1, "gemm_tiled")
                }
                _ => {
                    constants.push(("T", 16.0));
                    (64, 1, "gemm_tiled")
                }
            };
            let (tm, tn) = (g.m.div_ceil(block), g.n.div_ceil(block));
            let total = (tm * tn) as u64 * batches;
            fits_u32(OP, "tiles", total)?;
            let wgs = grid(&limits, OP, total, per_group)?;
            ("nn_gemm", nn::GEMM, entry, tm, tn, total, wgs)
        }
        GemmKernel::Subgroup => {
            // Sized from the probed subgroup width; the kernel strides over its tiles, so
            // another width at run time stays correct.
            let sg = super::subgroup_size(c).unwrap_or(32).clamp(1, 64) as usize;
            let tiles = (g.m.div_ceil(8) * g.n.div_ceil(4 * sg)) as u64 * batches;
            fits_u32(OP, "tiles", tiles)?;
            let per_group = (64 / sg).max(1) as u32;
            let wgs = grid(&limits, OP, tiles, per_group)?;
            fits_u32(OP, "batches", batches)?;
            (
                "nn_gemm_subgroup",
                nn::GEMM_SUBGROUP,
                "gemm_subgroup",
                0,
                0,
                batches,
                wgs,
            )
        }
        GemmKernel::Cooperative => {
            // One subgroup per workgroup, one 16 x 16 tile of C each.
            let wg = super::subgroup_size(c).unwrap_or(32).clamp(1, 256);
            constants.push(("WG", f64::from(wg)));
            let (tm, tn) = (g.m.div_ceil(16), g.n.div_ceil(16));
            let total = (tm * tn) as u64 * batches;
            fits_u32(OP, "tiles", total)?;
            let wgs = grid(&limits, OP, total, 1)?;
            (
                "nn_gemm_coop",
                nn::GEMM_COOP,
                "gemm_coop",
                tm,
                tn,
                total,
                wgs,
            )
        }
    };
    let uniforms = Params::default()
        .u(g.m)
        .u(g.n)
        .u(g.k)
        .u(g.batch1)
        .u(tiles_m)
        .u(tiles_n)
        .u(total as usize)
        .f(g.alpha)
        .f(g.beta)
        .u(g.a.offset)
        .u(g.a.ld)
        .u(g.a.stride0)
        .u(g.a.stride1)
        .u(g.b.offset)
        .u(g.b.ld)
        .u(g.b.stride0)
        .u(g.b.stride1)
        .u(g.c.offset)
        .u(g.c.ld)
        .u(g.c.stride0)
        .u(g.c.stride1)
        .0;
    dispatch(
        c,
        OP,
        KernelCall {
            label,
            source,
            entry_point: entry,
            constants: &constants,
            // Slots 4 and 5 (bias, residual) hold A again when unused: every binding the
            // source declares must be bound, and A is read-only already.
            bindings: &[
                Binding::read(a),
                Binding::read(b),
                Binding::write(out),
                Binding::read(epi.bias.unwrap_or(a)),
                Binding::read(epi.residual.unwrap_or(a)),
            ],
            uniforms: &uniforms,
            workgroups,
        },
        || format!("{} kernel, {g:?}, {epi:?}", kernel.name()),
    )
}

/// Where the gradients of a [`Matmul`] go; `None` skips one. Each is laid out as the
/// corresponding forward operand is described by the `Operand` given here (usually the same
/// strides as the forward's A or B, in a tensor of the same shape).
#[derive(Clone, Copy, Debug)]
pub struct MatmulGrads {
    /// `∂L/∂A`, `[m, k]` per batch.
    pub da: Option<(GpuTensor, Operand)>,
    /// `∂L/∂B`, stored as the forward's B (`[k, n]`, or `[n, k]` when `b_transposed`).
    pub db: Option<(GpuTensor, Operand)>,
    /// Add into the gradients' old contents instead of overwriting them.
    pub accumulate: bool,
}

/// The backward pass of `C = alpha A op(B)` ([`Matmul`], its bias aside: see [`bias_grad`]),
/// from `dc = ∂L/∂C` laid out as the forward's C:
/// `∂L/∂A = alpha ∂C op(B)ᵀ`, `∂L/∂op(B) = alpha Aᵀ ∂C` (written transposed when B is).
///
/// A gradient whose operand has both batch strides 0 while there are several batches (a
/// weight shared by the batches) is summed over them: one accumulating launch per batch.
pub fn matmul_backward(
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    dc: GpuTensor,
    mm: &Matmul,
    grads: MatmulGrads,
) -> Result<()> {
    let kernel = super::gemm_kernel(c)?;
    matmul_backward_with(kernel, c, a, b, dc, mm, grads)
}

/// [`matmul_backward`] with the kernel chosen by the caller.
pub fn matmul_backward_with(
    kernel: GemmKernel,
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    dc: GpuTensor,
    mm: &Matmul,
    grads: MatmulGrads,
) -> Result<()> {
    if mm.m == 0 || mm.n == 0 || mm.batch0 == 0 || mm.batch1 == 0 {
        return Ok(());
    }
    let base = |m, n, k| Gemm {
        m,
        n,
        k,
        batch0: mm.batch0,
        batch1: mm.batch1,
        alpha: mm.alpha,
        beta: 1.0,
        accumulate: grads.accumulate,
        a: mm.c,
        a_transposed: false,
        b: mm.b,
        b_transposed: false,
        c: mm.c,
    };
    if let Some((da, da_op)) = grads.da {
        // dA[m, k] = alpha dC[m, n] op(B)ᵀ[n, k]; op(B)ᵀ is B as stored when B is transposed.
        let g = Gemm {
            a: mm.c,
            b: mm.b,
            b_transposed: !mm.b_transposed,
            c: da_op,
            ..base(mm.m, mm.k, mm.n)
        };
        run_maybe_shared(kernel, c, dc, b, da, g)?;
    }
    if let Some((db, db_op)) = grads.db {
        let g = if mm.b_transposed {
            // dB[n, k] = alpha dCᵀ[n, m] A[m, k].
            Gemm {
                a: mm.c,
                a_transposed: true,
                b: mm.a,
                b_transposed: false,
                c: db_op,
                ..base(mm.n, mm.k, mm.m)
            }
        } else {
            // dB[k, n] = alpha Aᵀ[k, m] dC[m, n].
            Gemm {
                a: mm.a,
                a_transposed: true,
                b: mm.c,
                b_transposed: false,
                c: db_op,
                ..base(mm.k, mm.n, mm.m)
            }
        };
        let (lhs, rhs) = if mm.b_transposed { (dc, a) } else { (a, dc) };
        run_maybe_shared(kernel, c, lhs, rhs, db, g)?;
    }
    Ok(())
}

/// Runs `g`, one accumulating batch at a time when its output is shared by all batches.
fn run_maybe_shared(
    kernel: GemmKernel,
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    out: GpuTensor,
    g: Gemm,
) -> Result<()> {
    let shared = g.c.stride0 == 0 && g.c.stride1 == 0 && g.batch0 * g.batch1 > 1;
    if !shared {
        return gemm_with(kernel, c, a, b, out, &g);
    }
    for z0 in 0..g.batch0 {
        for z1 in 0..g.batch1 {
            let first = z0 == 0 && z1 == 0;
            let at = |o: Operand| Operand {
                offset: o.offset + z0 * o.stride0 + z1 * o.stride1,
                ..o
            };
            let one = Gemm {
                batch0: 1,
                batch1: 1,
                accumulate: g.accumulate || !first,
                beta: if first { g.beta } else { 1.0 },
                a: at(g.a),
                b: at(g.b),
                ..g
            };
            gemm_with(kernel, c, a, b, out, &one)?;
        }
    }
    Ok(())
}

/// The bias gradient of a linear layer: `db[j] = Σ_r dy[r, j]` over `rows` rows of `cols`
/// (added to `db` when `accumulate`).
pub fn bias_grad(
    c: &dyn Compute,
    dy: GpuTensor,
    db: GpuTensor,
    rows: usize,
    cols: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "bias_grad";
    if cols == 0 {
        return Ok(());
    }
    check_extent(c, OP, "dy", dy, (rows * cols) as u64)?;
    check_extent(c, OP, "db", db, cols as u64)?;
    fits_u32(OP, "dy elements", (rows * cols) as u64)?;
    let (workgroups, wg) = elementwise_grid(c, OP, cols)?;
    let uniforms = Params::default()
        .u(rows)
        .u(cols)
        .u(usize::from(accumulate))
        .u(0)
        .f(0.0)
        .0;
    dispatch(
        c,
        OP,
        KernelCall {
            label: "nn_bias_grad",
            source: nn::GRAD,
            entry_point: "bias_grad",
            constants: &[("WG", f64::from(wg))],
            bindings: &[Binding::read(dy), Binding::write(db)],
            uniforms: &uniforms,
            workgroups,
        },
        || format!("rows {rows}, cols {cols}"),
    )
}
