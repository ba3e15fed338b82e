//! Strided batched matrix products (`matmul.wgsl`, `matmul_reg.wgsl`) and nn.Linear.

use fusion_plugin_api::{Binding, Compute, GpuTensor, KernelCall};

use super::{check_extent, dispatch, fits_u32, grid, numel, NnError, Params, Result};
use crate::wgsl::nn;

/// Bytes of workgroup memory the matmul kernel stages its tiles in (2 x 256 vec4<f32>).
const MATMUL_WORKGROUP_BYTES: u32 = 8192;

/// Where one operand of a [`Matmul`] lives in its tensor, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    /// First element of batch (0, 0).
    pub offset: usize,
    /// Row stride (`lda`, `ldb`, `ldc`).
    pub ld: usize,
    /// Stride between batches of the outer batch index.
    pub stride0: usize,
    /// Stride between batches of the inner batch index.
    pub stride1: usize,
}

impl Operand {
    /// A dense matrix at offset 0 with row stride `ld`, the same for every batch.
    pub fn rows(ld: usize) -> Self {
        Self {
            offset: 0,
            ld,
            stride0: 0,
            stride1: 0,
        }
    }

    /// The same with batch strides.
    pub fn batched(offset: usize, ld: usize, stride0: usize, stride1: usize) -> Self {
        Self {
            offset,
            ld,
            stride0,
            stride1,
        }
    }

    /// One past the last element touched by `batch0 x batch1` batches of a `rows x cols` matrix.
    fn extent(&self, batch0: usize, batch1: usize, rows: usize, cols: usize) -> u64 {
        let u = |v: usize| v as u64;
        u(self.offset)
            + u(batch0 - 1) * u(self.stride0)
            + u(batch1 - 1) * u(self.stride1)
            + u(rows - 1) * u(self.ld)
            + u(cols)
    }
}

/// A batched matrix product `C[z] = alpha * A[z] B[z] (+ bias)` for `z` in
/// `batch0 x batch1` (see `nn/matmul.wgsl`).
#[derive(Clone, Copy, Debug)]
pub struct Matmul {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Outer batch count.
    pub batch0: usize,
    /// Inner batch count.
    pub batch1: usize,
    /// Scale of the product (not of the bias).
    pub alpha: f32,
    /// A, `[m, k]` per batch.
    pub a: Operand,
    /// B, `[k, n]` per batch, or `[n, k]` when `b_transposed` (nn.Linear's `[out, in]`).
    pub b: Operand,
    /// Whether B is stored transposed.
    pub b_transposed: bool,
    /// C, `[m, n]` per batch.
    pub c: Operand,
}

impl Matmul {
    /// `y[rows, out] = x[rows, in] W^T` with `W: [out, in]`: nn.Linear.
    pub fn linear(rows: usize, in_dim: usize, out_dim: usize) -> Self {
        Self {
            m: rows,
            n: out_dim,
            k: in_dim,
            batch0: 1,
            batch1: 1,
            alpha: 1.0,
            a: Operand::rows(in_dim),
            b: Operand::rows(in_dim),
            b_transposed: true,
            c: Operand::rows(out_dim),
        }
    }
}

/// Which matmul kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// `nn/matmul.wgsl`: 64 x 64 tiles staged in workgroup memory; for hardware GPUs.
    Tiled,
    /// `nn/matmul_reg.wgsl`: 8 x 8 register blocks, no workgroup memory or barriers; for
    /// software adapters (llvmpipe), where it runs about 4 times faster than the tiled one.
    Registers,
}

impl MatmulKernel {
    /// `FUSION_MATMUL=tiled|registers` when set, else [`MatmulKernel::Registers`] on a
    /// software adapter (its name says llvmpipe, lavapipe, SwiftShader or WARP) and
    /// [`MatmulKernel::Tiled`] on anything else.
    pub fn for_device(c: &dyn Compute) -> Result<Self> {
        if let Ok(v) = std::env::var("FUSION_MATMUL") {
            match v.trim().to_ascii_lowercase().as_str() {
                "tiled" => return Ok(Self::Tiled),
                "registers" | "reg" => return Ok(Self::Registers),
                "" | "auto" => {}
                other => {
                    return Err(NnError::input(
                        "FUSION_MATMUL",
                        format!("`{other}` is not one of tiled, registers, auto"),
                    ))
                }
            }
        }
        let software = crate::is_software_adapter(&c.device_name());
        Ok(if software {
            Self::Registers
        } else {
            Self::Tiled
        })
    }
}

/// Runs `out = alpha * a b (+ bias)` as described by `mm`; `bias` has `mm.n` values. The kernel
/// is [`MatmulKernel::for_device`].
pub fn matmul(
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    bias: Option<GpuTensor>,
    out: GpuTensor,
    mm: &Matmul,
) -> Result<()> {
    matmul_with(MatmulKernel::for_device(c)?, c, a, b, bias, out, mm)
}

/// [`matmul`] with the kernel chosen by the caller.
pub fn matmul_with(
    kernel: MatmulKernel,
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    bias: Option<GpuTensor>,
    out: GpuTensor,
    mm: &Matmul,
) -> Result<()> {
    const OP: &str = "matmul";
    if mm.m == 0 || mm.n == 0 || mm.batch0 == 0 || mm.batch1 == 0 {
        return Ok(());
    }
    if mm.k == 0 {
        return Err(NnError::input("gpu matmul", format!("{mm:?}: k is 0")));
    }
    let (brows, bcols) = if mm.b_transposed {
        (mm.n, mm.k)
    } else {
        (mm.k, mm.n)
    };
    let ext_a = mm.a.extent(mm.batch0, mm.batch1, mm.m, mm.k);
    let ext_b = mm.b.extent(mm.batch0, mm.batch1, brows, bcols);
    let ext_c = mm.c.extent(mm.batch0, mm.batch1, mm.m, mm.n);
    check_extent(c, OP, "A", a, ext_a)?;
    check_extent(c, OP, "B", b, ext_b)?;
    check_extent(c, OP, "C", out, ext_c)?;
    if let Some(bias) = bias {
        check_extent(c, OP, "bias", bias, mm.n as u64)?;
    }
    for (what, v) in [
        ("A extent", ext_a),
        ("B extent", ext_b),
        ("C extent", ext_c),
    ] {
        fits_u32(OP, what, v)?;
    }

    let limits = c.limits();
    if limits.max_invocations_per_workgroup < 64 {
        return Err(NnError::DeviceLimit {
            op: OP.into(),
            message: format!(
                "needs 64 invocations per workgroup, the device allows {}",
                limits.max_invocations_per_workgroup
            ),
        });
    }
    let b_trans = ("B_TRANS", if mm.b_transposed { 1.0 } else { 0.0 });
    // Per kernel: the side of the square of C one workgroup (tiled) or one invocation
    // (registers) computes, the invocations one dispatched workgroup count covers, and the
    // kernel's source, entry points and constants.
    let (block, per_group, label, source, entries, constants) = match kernel {
        MatmulKernel::Tiled => {
            // 16 x 16 invocations with 4 x 4 outputs each (64 x 64 tiles) where the device
            // runs 256 invocations per workgroup (WebGPU guarantees it), else 8 x 8 (32 x 32).
            let t: u32 = if limits.max_invocations_per_workgroup >= 256 {
                16
            } else {
                8
            };
            if limits.max_workgroup_storage_size < MATMUL_WORKGROUP_BYTES {
                return Err(NnError::DeviceLimit {
                    op: OP.into(),
                    message: format!(
                        "needs {MATMUL_WORKGROUP_BYTES} bytes of workgroup memory, the device has {}",
                        limits.max_workgroup_storage_size
                    ),
                });
            }
            (
                4 * t as usize,
                1,
                "nn_matmul",
                nn::MATMUL,
                ["matmul", "matmul_bias"],
                vec![("T", f64::from(t)), b_trans],
            )
        }
        // One invocation per 8 x 8 block of C, 64 per workgroup.
        MatmulKernel::Registers => (
            8,
            64,
            "nn_matmul_reg",
            nn::MATMUL_REG,
            ["matmul_reg", "matmul_reg_bias"],
            vec![b_trans],
        ),
    };
    let (tiles_m, tiles_n) = (mm.m.div_ceil(block), mm.n.div_ceil(block));
    let total = (tiles_m * tiles_n) as u64 * (mm.batch0 * mm.batch1) as u64;
    fits_u32(OP, "tiles", total)?;
    let uniforms = matmul_params(mm, tiles_m, tiles_n, total);
    let mut bindings = vec![Binding::read(a), Binding::read(b), Binding::write(out)];
    if let Some(bias) = bias {
        bindings.push(Binding::read(bias));
    }
    dispatch(
        c,
        OP,
        KernelCall {
            label,
            source,
            entry_point: entries[usize::from(bias.is_some())],
            constants: &constants,
            bindings: &bindings,
            uniforms: &uniforms,
            workgroups: grid(&limits, OP, total, per_group)?,
        },
        || format!("{mm:?}"),
    )
}

/// The uniform block both matmul kernels read (`Params` in `nn/matmul*.wgsl`); `tiles_*` count
/// the kernel's output tiles or blocks.
fn matmul_params(mm: &Matmul, tiles_m: usize, tiles_n: usize, total: u64) -> Vec<u8> {
    Params::default()
        .u(mm.m)
        .u(mm.n)
        .u(mm.k)
        .u(mm.batch1)
        .u(tiles_m)
        .u(tiles_n)
        .u(total as usize)
        .f(mm.alpha)
        .u(mm.a.offset)
        .u(mm.a.ld)
        .u(mm.a.stride0)
        .u(mm.a.stride1)
        .u(mm.b.offset)
        .u(mm.b.ld)
        .u(mm.b.stride0)
        .u(mm.b.stride1)
        .u(mm.c.offset)
        .u(mm.c.ld)
        .u(mm.c.stride0)
        .u(mm.c.stride1)
        .0
}

/// nn.Linear on `rows` rows: `out[rows, out_dim] = x[rows, in_dim] W^T (+ bias)`, with the
/// dimensions taken from `weight: [out_dim, in_dim]`.
pub fn linear(
    c: &dyn Compute,
    x: GpuTensor,
    weight: GpuTensor,
    bias: Option<GpuTensor>,
    out: GpuTensor,
    rows: usize,
) -> Result<()> {
    let (_, shape) = numel(c, "linear", weight)?;
    let &[out_dim, in_dim] = shape.as_slice() else {
        return Err(NnError::input(
            "gpu linear",
            format!("weight has shape {shape:?}, expected [out, in]"),
        ));
    };
    matmul(
        c,
        x,
        weight,
        bias,
        out,
        &Matmul::linear(rows, in_dim, out_dim),
    )
}
