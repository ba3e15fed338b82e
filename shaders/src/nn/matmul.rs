//! Strided batched matrix products with a bias ([`Matmul`]) and nn.Linear, run as
//! [`gemm`](super::gemm) with its fused epilogue (the separate `matmul` kernels are retired).

use fusion_plugin_api::{Compute, GpuTensor};

use super::gemm::{checked, Gemm, GemmEpilogue, GemmKernel};
use super::{numel, NnError, Result};

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

impl Matmul {
    /// The same product as a [`Gemm`] (A not transposed, C overwritten).
    pub fn gemm(&self) -> Gemm {
        Gemm {
            m: self.m,
            n: self.n,
            k: self.k,
            batch0: self.batch0,
            batch1: self.batch1,
            alpha: self.alpha,
            beta: 1.0,
            accumulate: false,
            a: self.a,
            a_transposed: false,
            b: self.b,
            b_transposed: self.b_transposed,
            c: self.c,
        }
    }
}

/// Runs `out = alpha * a b (+ bias)` as described by `mm`; `bias` has `mm.n` values. The kernel
/// is the device's gemm kernel ([`super::gemm_kernel`]).
pub fn matmul(
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    bias: Option<GpuTensor>,
    out: GpuTensor,
    mm: &Matmul,
) -> Result<()> {
    matmul_with(super::gemm_kernel(c)?, c, a, b, bias, out, mm)
}

/// [`matmul`] with the gemm kernel chosen by the caller.
pub fn matmul_with(
    kernel: GemmKernel,
    c: &dyn Compute,
    a: GpuTensor,
    b: GpuTensor,
    bias: Option<GpuTensor>,
    out: GpuTensor,
    mm: &Matmul,
) -> Result<()> {
    let epi = GemmEpilogue::linear(bias, None);
    checked("matmul", kernel, c, [a, b, out], &mm.gemm(), &epi)
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
