//! Matrix products with their backward passes: a batched `op(A) · op(B)` with either operand
//! transposed, and `nn.Linear` (`y = x Wᵀ + b`), whose backward gives the gradients with
//! respect to the input, the weight and the bias.

use rayon::prelude::*;

use super::gemm::{gemm, Strides};
use super::{check_len, sum_rows};
use crate::error::Result;

/// `C[z] = op(A[z]) · op(B[z])` for `z` in `0..batch`, with `op(A): m x k`, `op(B): k x n`
/// and every matrix dense row-major. `trans_a` means `A[z]` is stored `[k, m]` (and `op` reads
/// it transposed), likewise `trans_b` for `B[z]` stored `[n, k]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMul {
    /// Number of independent products.
    pub batch: usize,
    /// Rows of the result.
    pub m: usize,
    /// Columns of the result.
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
    /// `A[z]` is stored `[k, m]`.
    pub trans_a: bool,
    /// `B[z]` is stored `[n, k]`.
    pub trans_b: bool,
}

/// The gradients of a [`MatMul`] with respect to both operands, in their stored layout.
#[derive(Clone, Debug)]
pub struct MatMulGrad {
    /// `∂L/∂A`, shaped as `A`.
    pub da: Vec<f32>,
    /// `∂L/∂B`, shaped as `B`.
    pub db: Vec<f32>,
}

impl MatMul {
    fn a_view(&self) -> Strides {
        if self.trans_a {
            Strides::rows(self.m).t()
        } else {
            Strides::rows(self.k)
        }
    }

    fn b_view(&self) -> Strides {
        if self.trans_b {
            Strides::rows(self.k).t()
        } else {
            Strides::rows(self.n)
        }
    }

    fn check(&self, op: &'static str, a: &[f32], b: &[f32]) -> Result<()> {
        let Self { batch, m, n, k, .. } = *self;
        check_len(op, "A", a.len(), batch * m * k)?;
        check_len(op, "B", b.len(), batch * k * n)
    }

    /// `C`, `[batch, m, n]`.
    pub fn forward(&self, a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
        self.check("MatMul::forward", a, b)?;
        let Self { batch, m, n, k, .. } = *self;
        let mut c = vec![0.0; batch * m * n];
        let (av, bv) = (self.a_view(), self.b_view());
        if batch == 1 {
            gemm(
                &mut c,
                Strides::rows(n),
                a,
                av,
                b,
                bv,
                (m, n, k),
                1.0,
                false,
                true,
            )?;
            return Ok(c);
        }
        c.par_chunks_mut((m * n).max(1))
            .enumerate()
            .try_for_each(|(z, cz)| {
                gemm(
                    cz,
                    Strides::rows(n),
                    &a[z * m * k..(z + 1) * m * k],
                    av,
                    &b[z * k * n..(z + 1) * k * n],
                    bv,
                    (m, n, k),
                    1.0,
                    false,
                    false,
                )
            })?;
        Ok(c)
    }

    /// `∂L/∂A = ∂L/∂C · op(B)ᵀ` and `∂L/∂B = op(A)ᵀ · ∂L/∂C`, each written in its operand's
    /// stored layout (a transposed operand gets a transposed destination, not a copy).
    pub fn backward(&self, a: &[f32], b: &[f32], dc: &[f32]) -> Result<MatMulGrad> {
        const OP: &str = "MatMul::backward";
        self.check(OP, a, b)?;
        let Self { batch, m, n, k, .. } = *self;
        check_len(OP, "dC", dc.len(), batch * m * n)?;
        let (av, bv) = (self.a_view(), self.b_view());
        let mut da = vec![0.0; batch * m * k];
        let mut db = vec![0.0; batch * k * n];
        let dcv = Strides::rows(n);
        let parallel = batch == 1;
        let one = |z: usize, daz: &mut [f32], dbz: &mut [f32]| -> Result<()> {
            let (az, bz, dcz) = (
                &a[z * m * k..(z + 1) * m * k],
                &b[z * k * n..(z + 1) * k * n],
                &dc[z * m * n..(z + 1) * m * n],
            );
            // dA (m x k) = dC (m x n) · op(B)ᵀ (n x k), stored the way A is.
            gemm(
                daz,
                av,
                dcz,
                dcv,
                bz,
                bv.t(),
                (m, k, n),
                1.0,
                false,
                parallel,
            )?;
            // dB (k x n) = op(A)ᵀ (k x m) · dC (m x n), stored the way B is.
            gemm(
                dbz,
                bv,
                az,
                av.t(),
                dcz,
                dcv,
                (k, n, m),
                1.0,
                false,
                parallel,
            )
        };
        if batch == 1 {
            one(0, &mut da, &mut db)?;
        } else {
            da.par_chunks_mut((m * k).max(1))
                .zip(db.par_chunks_mut((k * n).max(1)))
                .enumerate()
                .try_for_each(|(z, (daz, dbz))| one(z, daz, dbz))?;
        }
        Ok(MatMulGrad { da, db })
    }
}

/// `nn.Linear` over `rows` rows: `y = x Wᵀ + b` with `x: [rows, in]`, `W: [out, in]`,
/// `b: [out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Number of input rows (every leading dimension flattened).
    pub rows: usize,
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
}

/// The gradients of a [`Linear`].
#[derive(Clone, Debug)]
pub struct LinearGrad {
    /// `∂L/∂x`, `[rows, in]`.
    pub dx: Vec<f32>,
    /// `∂L/∂W`, `[out, in]`.
    pub dw: Vec<f32>,
    /// `∂L/∂b`, `[out]` (the column sums of `∂L/∂y`; returned even for a layer without bias).
    pub db: Vec<f32>,
}

impl Linear {
    fn check(&self, op: &'static str, x: &[f32], w: &[f32]) -> Result<()> {
        check_len(op, "x", x.len(), self.rows * self.in_dim)?;
        check_len(op, "weight", w.len(), self.out_dim * self.in_dim)
    }

    /// `y`, `[rows, out]`.
    pub fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Result<Vec<f32>> {
        const OP: &str = "Linear::forward";
        self.check(OP, x, w)?;
        let Self {
            rows,
            in_dim: k,
            out_dim: n,
        } = *self;
        let mut y = vec![0.0; rows * n];
        if let Some(b) = b {
            check_len(OP, "bias", b.len(), n)?;
            if n > 0 {
                y.par_chunks_mut(n).for_each(|r| r.copy_from_slice(b));
            }
        }
        // Wᵀ is W read with swapped strides.
        gemm(
            &mut y,
            Strides::rows(n),
            x,
            Strides::rows(k),
            w,
            Strides::rows(k).t(),
            (rows, n, k),
            1.0,
            b.is_some(),
            true,
        )?;
        Ok(y)
    }

    /// `∂L/∂x = ∂L/∂y · W`, `∂L/∂W = (∂L/∂y)ᵀ · x`, `∂L/∂b = Σ_rows ∂L/∂y`. With `need_dx`
    /// false, `dx` is left empty (the first layer of a network needs no input gradient).
    pub fn backward(&self, x: &[f32], w: &[f32], dy: &[f32], need_dx: bool) -> Result<LinearGrad> {
        const OP: &str = "Linear::backward";
        self.check(OP, x, w)?;
        let Self {
            rows,
            in_dim: k,
            out_dim: n,
        } = *self;
        check_len(OP, "dy", dy.len(), rows * n)?;
        let mut dx = Vec::new();
        if need_dx {
            dx = vec![0.0; rows * k];
            gemm(
                &mut dx,
                Strides::rows(k),
                dy,
                Strides::rows(n),
                w,
                Strides::rows(k),
                (rows, k, n),
                1.0,
                false,
                true,
            )?;
        }
        let mut dw = vec![0.0; n * k];
        gemm(
            &mut dw,
            Strides::rows(k),
            dy,
            Strides::rows(n).t(),
            x,
            Strides::rows(k),
            (n, k, rows),
            1.0,
            false,
            true,
        )?;
        Ok(LinearGrad {
            dx,
            dw,
            db: sum_rows(dy, n)?,
        })
    }
}
