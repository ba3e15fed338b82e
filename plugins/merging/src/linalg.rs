//! Dense linear algebra on the CPU for the SVD-based merges (TSV-M, ISO-C, ISO-CTS, SVC, WUDI):
//! a row-major f64 matrix, products, the thin SVD, its truncation, and the orthogonal polar
//! factor.
//!
//! Everything runs in f64, which is what matching FusionBench's torch float32 results within
//! 1e-4 needs. The heavy lifting is [faer]'s: its blocked matrix products, bidiagonalization
//! SVD and tridiagonal eigensolver. On a 768×768 matrix (ViT-B/32's attention weights), measured
//! side by side in one release process on the loaded 2-core benchmark machine: faer's SVD
//! 2.7 s, the Gram matrix and faer's eigendecomposition 1.4 s, the one-sided Jacobi this module
//! started with 94 s (18 sweeps), so 35× and 67× (BENCHMARKS.md). That decides the end-to-end
//! time of TSV-M and ISO-CTS. The price is about thirty crates in the build of this plugin
//! (faer is built without rayon; the merges spread their independent SVDs over the cores
//! themselves).
//!
//! Two shortcuts through the Gram matrix, each taken only where it is accurate:
//! - [`truncated_svd`] of an m×n matrix takes the eigendecomposition of the k×k Gram matrix
//!   (k = min(m, n)), `AᵀA = V Λ Vᵀ`, and `U = A V Λ^{-1/2}` for the leading triplets. The
//!   eigenvalues carry an absolute error of about k·ε·σ₁², so a singular value σ is found to
//!   a relative error of about k·ε·(σ₁/σ)²; the path is used when every kept σ is above
//!   [`GRAM_MIN_RATIO`]·σ₁ (relative error under 2·10⁻⁷ in f64), and the full SVD otherwise.
//! - [`orthogonalize`] (the polar factor `U Vᵀ`) is `A (AᵀA)^{-1/2}` under the same condition
//!   on all of A's singular values, so it falls back to the SVD for (nearly) rank-deficient A,
//!   whose polar factor needs the completed singular vectors.
//!
//! The one-sided Jacobi SVD ([`jacobi_svd`]) stays as the reference the tests compare with,
//! and as the fallback should faer's SVD report no convergence.
//!
//! [faer]: https://docs.rs/faer

use std::fmt;

use faer::{Accum, MatRef, Par, Side};

/// A dense row-major matrix of f64.
#[derive(Clone, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl fmt::Debug for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Matrix({}x{})", self.rows, self.cols)
    }
}

/// A linear-algebra request the matrix cannot satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinalgError {
    /// A truncation rank larger than the matrix allows.
    RankTooLarge {
        rank: usize,
        rows: usize,
        cols: usize,
    },
    /// Operand shapes that do not fit.
    Shape {
        op: &'static str,
        left: (usize, usize),
        right: (usize, usize),
    },
}

impl fmt::Display for LinalgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinalgError::RankTooLarge { rank, rows, cols } => write!(
                f,
                "rank {rank} is larger than the {rows}x{cols} matrix allows (at most {})",
                rows.min(cols)
            ),
            LinalgError::Shape { op, left, right } => write!(
                f,
                "{op}: shapes {}x{} and {}x{} do not fit",
                left.0, left.1, right.0, right.1
            ),
        }
    }
}

impl std::error::Error for LinalgError {}

impl Matrix {
    /// A matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// A matrix from row-major values (`rows * cols` of them).
    pub fn from_rows(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), rows * cols, "Matrix::from_rows: wrong length");
        Matrix { rows, cols, data }
    }

    /// A matrix from row-major f32 values.
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> Self {
        Self::from_rows(rows, cols, data.iter().map(|&v| f64::from(v)).collect())
    }

    /// The identity.
    pub fn identity(n: usize) -> Self {
        let mut m = Self::zeros(n, n);
        for i in 0..n {
            m[(i, i)] = 1.0;
        }
        m
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The row-major values.
    pub fn data(&self) -> &[f64] {
        &self.data
    }

    /// The row-major values rounded to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The transpose.
    pub fn t(&self) -> Matrix {
        let mut out = Matrix::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        out
    }

    /// `self · other`.
    pub fn matmul(&self, other: &Matrix) -> Result<Matrix, LinalgError> {
        if self.cols != other.rows {
            return Err(LinalgError::Shape {
                op: "matmul",
                left: (self.rows, self.cols),
                right: (other.rows, other.cols),
            });
        }
        let mut out = Matrix::zeros(self.rows, other.cols);
        if self.cols > 0 {
            faer::linalg::matmul::matmul(
                faer::MatMut::from_row_major_slice_mut(&mut out.data, self.rows, other.cols),
                Accum::Replace,
                self.view(),
                other.view(),
                1.0,
                Par::Seq,
            );
        }
        Ok(out)
    }

    /// `selfᵀ · self` (cols × cols).
    pub fn gram(&self) -> Matrix {
        let mut out = Matrix::zeros(self.cols, self.cols);
        if self.rows > 0 {
            faer::linalg::matmul::matmul(
                faer::MatMut::from_row_major_slice_mut(&mut out.data, self.cols, self.cols),
                Accum::Replace,
                self.view().transpose(),
                self.view(),
                1.0,
                Par::Seq,
            );
        }
        out
    }

    /// `self · selfᵀ` (rows × rows).
    pub fn gram_rows(&self) -> Matrix {
        let mut out = Matrix::zeros(self.rows, self.rows);
        if self.cols > 0 {
            faer::linalg::matmul::matmul(
                faer::MatMut::from_row_major_slice_mut(&mut out.data, self.rows, self.rows),
                Accum::Replace,
                self.view(),
                self.view().transpose(),
                1.0,
                Par::Seq,
            );
        }
        out
    }

    /// A faer view of the row-major values.
    fn view(&self) -> MatRef<'_, f64> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    /// A matrix from a faer view.
    fn from_faer(m: MatRef<'_, f64>) -> Matrix {
        let (rows, cols) = (m.nrows(), m.ncols());
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            data.extend((0..cols).map(|j| m[(i, j)]));
        }
        Matrix::from_rows(rows, cols, data)
    }

    /// `self − other`.
    pub fn sub(&self, other: &Matrix) -> Result<Matrix, LinalgError> {
        if (self.rows, self.cols) != (other.rows, other.cols) {
            return Err(LinalgError::Shape {
                op: "sub",
                left: (self.rows, self.cols),
                right: (other.rows, other.cols),
            });
        }
        let data = self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| a - b)
            .collect();
        Ok(Matrix::from_rows(self.rows, self.cols, data))
    }

    /// Columns `from..to`.
    pub fn columns(&self, from: usize, to: usize) -> Matrix {
        let mut out = Matrix::zeros(self.rows, to - from);
        for i in 0..self.rows {
            out.data[i * (to - from)..(i + 1) * (to - from)]
                .copy_from_slice(&self.row(i)[from..to]);
        }
        out
    }

    /// Rows `from..to`.
    pub fn row_range(&self, from: usize, to: usize) -> Matrix {
        Matrix::from_rows(
            to - from,
            self.cols,
            self.data[from * self.cols..to * self.cols].to_vec(),
        )
    }

    /// Columns scaled: column `j` times `s[j]`.
    pub fn scale_columns(&self, s: &[f64]) -> Matrix {
        assert_eq!(s.len(), self.cols, "scale_columns: one factor per column");
        let mut out = self.clone();
        for i in 0..self.rows {
            for (x, f) in out.data[i * self.cols..(i + 1) * self.cols]
                .iter_mut()
                .zip(s)
            {
                *x *= f;
            }
        }
        out
    }

    /// Horizontal concatenation (same row count).
    pub fn hcat(parts: &[Matrix]) -> Result<Matrix, LinalgError> {
        let rows = parts.first().map_or(0, |p| p.rows);
        let cols: usize = parts.iter().map(|p| p.cols).sum();
        let mut out = Matrix::zeros(rows, cols);
        let mut at = 0;
        for p in parts {
            if p.rows != rows {
                return Err(LinalgError::Shape {
                    op: "hcat",
                    left: (rows, at),
                    right: (p.rows, p.cols),
                });
            }
            for i in 0..rows {
                out.data[i * cols + at..i * cols + at + p.cols].copy_from_slice(p.row(i));
            }
            at += p.cols;
        }
        Ok(out)
    }

    /// Vertical concatenation (same column count).
    pub fn vcat(parts: &[Matrix]) -> Result<Matrix, LinalgError> {
        let cols = parts.first().map_or(0, |p| p.cols);
        let mut data = Vec::new();
        let mut rows = 0;
        for p in parts {
            if p.cols != cols {
                return Err(LinalgError::Shape {
                    op: "vcat",
                    left: (rows, cols),
                    right: (p.rows, p.cols),
                });
            }
            data.extend_from_slice(&p.data);
            rows += p.rows;
        }
        Ok(Matrix::from_rows(rows, cols, data))
    }

    /// The Frobenius norm.
    pub fn norm(&self) -> f64 {
        self.data.iter().map(|v| v * v).sum::<f64>().sqrt()
    }
}

impl std::ops::Index<(usize, usize)> for Matrix {
    type Output = f64;
    fn index(&self, (i, j): (usize, usize)) -> &f64 {
        &self.data[i * self.cols + j]
    }
}

impl std::ops::IndexMut<(usize, usize)> for Matrix {
    fn index_mut(&mut self, (i, j): (usize, usize)) -> &mut f64 {
        &mut self.data[i * self.cols + j]
    }
}

/// A thin SVD `A = U · diag(s) · Vᵀ`: for an m×n `A` and k = min(m, n), `u` is m×k with
/// orthonormal columns, `s` the k singular values in descending order, `vt` k×n with
/// orthonormal rows. Singular vectors of zero singular values are completed to an orthonormal
/// set, so `u` and `vt` are orthonormal even for a rank-deficient `A`.
#[derive(Clone, Debug)]
pub struct Svd {
    pub u: Matrix,
    pub s: Vec<f64>,
    pub vt: Matrix,
}

impl Svd {
    /// The leading `rank` triplets; a rank above min(m, n) is an error.
    pub fn truncate(mut self, rank: usize) -> Result<Svd, LinalgError> {
        if rank > self.s.len() {
            return Err(LinalgError::RankTooLarge {
                rank,
                rows: self.u.rows,
                cols: self.vt.cols,
            });
        }
        self.u = self.u.columns(0, rank);
        self.s.truncate(rank);
        self.vt = self.vt.row_range(0, rank);
        Ok(self)
    }

    /// `U · diag(s) · Vᵀ`.
    pub fn reconstruct(&self) -> Matrix {
        self.u
            .scale_columns(&self.s)
            .matmul(&self.vt)
            .expect("an SVD's factors fit")
    }
}

/// The thin SVD of `a` (see [`Svd`]), by faer's bidiagonalization SVD in f64 (the one-sided
/// Jacobi [`jacobi_svd`] should faer report no convergence).
pub fn svd(a: &Matrix) -> Svd {
    if a.rows == 0 || a.cols == 0 {
        return jacobi_svd(a);
    }
    match a.view().thin_svd() {
        Ok(d) => {
            let s: Vec<f64> = (0..d.S().dim()).map(|i| d.S()[i]).collect();
            if s.iter().all(|v| v.is_finite()) {
                let mut out = Svd {
                    u: Matrix::from_faer(d.U()),
                    s,
                    vt: Matrix::from_faer(d.V().transpose()),
                };
                zero_noise_floor(&mut out, a);
                return out;
            }
            tracing::warn!(
                rows = a.rows,
                cols = a.cols,
                "faer's SVD gave non-finite values; one-sided Jacobi instead"
            );
            jacobi_svd(a)
        }
        Err(e) => {
            tracing::warn!(rows = a.rows, cols = a.cols, error = ?e, "faer's SVD did not converge; one-sided Jacobi instead");
            jacobi_svd(a)
        }
    }
}

/// faer's singular vectors of (numerically) zero singular values are orthonormal already; the
/// values themselves are set to 0 below the noise floor, as [`jacobi_svd`] sets them.
fn zero_noise_floor(d: &mut Svd, a: &Matrix) {
    let smax = d.s.first().copied().unwrap_or(0.0);
    let tiny = smax * (a.rows.max(a.cols) as f64) * f64::EPSILON;
    for s in d.s.iter_mut() {
        if *s <= tiny {
            *s = 0.0;
        }
    }
}

/// The one-sided Jacobi (Hestenes) SVD of `a`: slower than [`svd`] but accurate to a few ulps
/// of f64 in every singular value and vector; the tests' reference.
pub fn jacobi_svd(a: &Matrix) -> Svd {
    if a.rows >= a.cols {
        let (u, s, v) = jacobi_tall(a);
        Svd { u, s, vt: v.t() }
    } else {
        // A = (Aᵀ)ᵀ = (U' S V'ᵀ)ᵀ = V' S U'ᵀ.
        let (u, s, v) = jacobi_tall(&a.t());
        Svd { u: v, s, vt: u.t() }
    }
}

/// The Gram shortcuts are taken when the smallest singular value they need is at least this
/// fraction of the largest (see the module comment).
pub const GRAM_MIN_RATIO: f64 = 1e-3;

/// The eigendecomposition of the symmetric `g`: eigenvalues in descending order and the
/// matching eigenvectors as the columns of the returned matrix; `None` when faer reports no
/// convergence.
pub fn symmetric_eigen(g: &Matrix) -> Option<(Vec<f64>, Matrix)> {
    assert_eq!(g.rows, g.cols, "symmetric_eigen: a square matrix");
    let n = g.rows;
    let e = g.view().self_adjoint_eigen(Side::Lower).ok()?;
    // faer's are ascending.
    let vals: Vec<f64> = (0..n).rev().map(|i| e.S()[i]).collect();
    let u = e.U();
    let mut vecs = Matrix::zeros(n, n);
    for i in 0..n {
        for (k, j) in (0..n).rev().enumerate() {
            vecs.data[i * n + k] = u[(i, j)];
        }
    }
    if vals.iter().all(|v| v.is_finite()) {
        Some((vals, vecs))
    } else {
        None
    }
}

/// The leading `rank` triplets through the Gram matrix, when they are all above
/// [`GRAM_MIN_RATIO`]·σ₁; `None` otherwise.
fn gram_truncated_svd(a: &Matrix, rank: usize) -> Option<Svd> {
    let wide = a.rows < a.cols;
    let g = if wide { a.gram_rows() } else { a.gram() };
    let (vals, vecs) = symmetric_eigen(&g)?;
    let lmax = vals.first().copied().unwrap_or(0.0);
    if rank == 0 {
        return None;
    }
    if lmax.is_nan() || lmax <= 0.0 || vals[rank - 1] < GRAM_MIN_RATIO * GRAM_MIN_RATIO * lmax {
        return None;
    }
    let s: Vec<f64> = vals[..rank].iter().map(|l| l.sqrt()).collect();
    let inv: Vec<f64> = s.iter().map(|v| 1.0 / v).collect();
    // The `rank` leading eigenvectors: V (n×r) for a tall A, U (m×r) for a wide one.
    let q = vecs.columns(0, rank);
    if wide {
        // Vᵀ = diag(1/σ) Uᵀ A
        let vt = q.t().matmul(a).ok()?;
        let mut vt = vt;
        for (k, f) in inv.iter().enumerate() {
            vt.data[k * a.cols..(k + 1) * a.cols]
                .iter_mut()
                .for_each(|x| *x *= f);
        }
        Some(Svd { u: q, s, vt })
    } else {
        let u = a.matmul(&q).ok()?.scale_columns(&inv);
        Some(Svd { u, s, vt: q.t() })
    }
}

/// The truncated SVD of `a`: its leading `rank` triplets (through the Gram matrix when that is
/// accurate, see the module comment).
pub fn truncated_svd(a: &Matrix, rank: usize) -> Result<Svd, LinalgError> {
    let k = a.rows.min(a.cols);
    if rank > k {
        return Err(LinalgError::RankTooLarge {
            rank,
            rows: a.rows,
            cols: a.cols,
        });
    }
    if let Some(d) = gram_truncated_svd(a, rank) {
        return Ok(d);
    }
    svd(a).truncate(rank)
}

/// The orthogonal polar factor `U · Vᵀ` of `a` (from its thin SVD): the matrix with
/// orthonormal columns (rows, when wide) nearest to `a` in the Frobenius norm. Computed as
/// `A (AᵀA)^{-1/2}` when every singular value is above [`GRAM_MIN_RATIO`]·σ₁, from the SVD
/// otherwise.
pub fn orthogonalize(a: &Matrix) -> Matrix {
    if let Some(p) = gram_polar(a) {
        return p;
    }
    let d = svd(a);
    d.u.matmul(&d.vt).expect("an SVD's factors fit")
}

fn gram_polar(a: &Matrix) -> Option<Matrix> {
    if a.rows == 0 || a.cols == 0 {
        return None;
    }
    let wide = a.rows < a.cols;
    let g = if wide { a.gram_rows() } else { a.gram() };
    let (vals, q) = symmetric_eigen(&g)?;
    let lmax = vals[0];
    let lmin = *vals.last()?;
    if lmax.is_nan() || lmax <= 0.0 || lmin < GRAM_MIN_RATIO * GRAM_MIN_RATIO * lmax {
        return None;
    }
    // (AᵀA)^{-1/2} = Q Λ^{-1/2} Qᵀ
    let inv: Vec<f64> = vals.iter().map(|l| 1.0 / l.sqrt()).collect();
    let root = q.scale_columns(&inv).matmul(&q.t()).ok()?;
    if wide {
        root.matmul(a).ok()
    } else {
        a.matmul(&root).ok()
    }
}

/// Where a merge's SVDs run, chosen per adapter ([`backend`]).
#[derive(Clone)]
pub enum Backend {
    /// faer on the host's cores, in f64; independent SVDs spread over the cores.
    Cpu,
    /// The compute device: `fusion_kernels::linalg`'s WGSL one-sided Jacobi SVD in f32, one
    /// batch per tensor (the task vectors of one weight at once).
    Device(fusion_plugin_api::Context),
}

/// The backend of `method`'s SVDs for this run, logged: the device unless it is a CPU adapter
/// (lavapipe, llvmpipe: native code on the same cores is far faster) or there is none.
/// `FUSION_LINALG=cpu` or `=device` overrides the choice (for tests and measurements).
pub fn backend(ctx: &fusion_plugin_api::Context, method: &str) -> Backend {
    backend_for(
        ctx,
        method,
        "SVDs",
        "WGSL one-sided Jacobi, f32, batched over the task vectors",
        "faer, f64",
    )
}

/// [`backend`] for any dense linear algebra (`work`, e.g. "the Adam loop"), with what runs on
/// each side for the log: the device unless it is a CPU adapter or there is none;
/// `FUSION_LINALG=cpu|device` overrides.
pub fn backend_for(
    ctx: &fusion_plugin_api::Context,
    method: &str,
    work: &str,
    on_device: &str,
    on_cpu: &str,
) -> Backend {
    let forced = std::env::var("FUSION_LINALG").ok();
    let c = match ctx.compute() {
        Ok(c) => c,
        Err(_) => {
            tracing::info!("{method}: {work} on the CPU ({on_cpu}): no compute device");
            return Backend::Cpu;
        }
    };
    let (device, why) = match forced.as_deref() {
        Some("device") => (true, "FUSION_LINALG=device".to_string()),
        Some("cpu") => (false, "FUSION_LINALG=cpu".to_string()),
        _ if fusion_kernels::linalg::prefer_device(c) => {
            (true, format!("a {:?} adapter", c.device_type()))
        }
        _ => (
            false,
            format!(
                "a CPU adapter ({:?}), slower than native code",
                c.device_type()
            ),
        ),
    };
    if device {
        tracing::info!(
            "{method}: {work} on the device `{}` ({on_device}): {why}",
            c.device_name()
        );
        Backend::Device(ctx.clone())
    } else {
        tracing::info!(
            "{method}: {work} on the CPU ({on_cpu}); the compute device `{}` is {why}",
            c.device_name()
        );
        Backend::Cpu
    }
}

impl Backend {
    /// The leading `rank` singular triplets of each of `mats` (all of one shape).
    pub fn truncated_svds(
        &self,
        mats: &[Matrix],
        rank: usize,
    ) -> fusion_plugin_api::Result<Vec<Svd>> {
        use fusion_plugin_api::Error;
        let Backend::Device(ctx) = self else {
            return crate::parallel::map_parallel(mats, |a| {
                truncated_svd(a, rank).map_err(|e| Error::config(e.to_string()))
            });
        };
        let Some(first) = mats.first() else {
            return Ok(Vec::new());
        };
        let (m, n) = (first.rows, first.cols);
        let c = ctx.compute()?;
        // As many matrices per call as the device's bindings take (at least one: a matrix too
        // large for the device is the kernel's clear error).
        let per_call = fusion_kernels::linalg::max_batch(c, m, n).max(1);
        let mut out = Vec::with_capacity(mats.len());
        for chunk in mats.chunks(per_call) {
            let b = chunk.len();
            let data: Vec<f32> = chunk.iter().flat_map(|a| a.to_f32()).collect();
            let input = fusion_plugin_api::DeviceTensor::from_f32(c, &[b, m, n], &data)?;
            let d = fusion_kernels::linalg::truncated_svd(c, input.id(), b, m, n, rank)?;
            let read = |t: fusion_plugin_api::GpuTensor| fusion_kernels::nn::read_f32(c, t);
            let (u, s, vt) = (read(d.u.id())?, read(d.s.id())?, read(d.vt.id())?);
            out.extend((0..b).map(|i| {
                Svd {
                    u: Matrix::from_f32(m, rank, &u[i * m * rank..(i + 1) * m * rank]),
                    s: s[i * rank..(i + 1) * rank]
                        .iter()
                        .map(|&x| f64::from(x))
                        .collect(),
                    vt: Matrix::from_f32(rank, n, &vt[i * rank * n..(i + 1) * rank * n]),
                }
            }));
        }
        Ok(out)
    }
}

/// One-sided Jacobi on an m×n matrix with m ≥ n: returns U (m×n), s (n, descending), V (n×n).
fn jacobi_tall(a: &Matrix) -> (Matrix, Vec<f64>, Matrix) {
    let (m, n) = (a.rows, a.cols);
    // Columns of A and of V stored contiguously (as rows of their transposes).
    let mut w = a.t();
    let mut v = Matrix::identity(n);
    let eps = f64::EPSILON;
    for _sweep in 0..80 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (wp, wq) = pair(&mut w.data, m, p, q);
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for (x, y) in wp.iter().zip(wq.iter()) {
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma == 0.0 || gamma.abs() <= eps * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(wp, wq, c, s);
                let (vp, vq) = pair(&mut v.data, n, p, q);
                rotate(vp, vq, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    // Singular values are the column norms; sort descending.
    let norms: Vec<f64> = (0..n)
        .map(|j| w.row(j).iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let smax = norms.iter().cloned().fold(0.0, f64::max);
    let tiny = smax * (m.max(n) as f64) * eps;
    // Rows of Uᵀ and Vᵀ, in order.
    let mut ut = Matrix::zeros(n, m);
    let mut vt = Matrix::zeros(n, n);
    let mut s = Vec::with_capacity(n);
    let mut null = Vec::new();
    for (k, &j) in order.iter().enumerate() {
        vt.data[k * n..(k + 1) * n].copy_from_slice(v.row(j));
        if norms[j] > tiny {
            let inv = 1.0 / norms[j];
            for (o, x) in ut.data[k * m..(k + 1) * m].iter_mut().zip(w.row(j)) {
                *o = x * inv;
            }
            s.push(norms[j]);
        } else {
            s.push(0.0);
            null.push(k);
        }
    }
    complete_orthonormal(&mut ut, &null);
    (ut.t(), s, vt.t())
}

/// Fill rows `missing` of `q` (whose other rows are orthonormal) with unit vectors orthogonal
/// to every other row, by Gram–Schmidt (twice) on the standard basis.
fn complete_orthonormal(q: &mut Matrix, missing: &[usize]) {
    if missing.is_empty() {
        return;
    }
    let len = q.cols;
    let mut filled: Vec<usize> = (0..q.rows).filter(|r| !missing.contains(r)).collect();
    // The standard basis vector `e_c` with the filled rows projected out (twice, for accuracy).
    let leftover = |filled: &[usize], q: &Matrix, c: usize| {
        let mut x = vec![0.0; len];
        x[c] = 1.0;
        for _ in 0..2 {
            for &f in filled {
                let r = q.row(f);
                let d: f64 = r.iter().zip(&x).map(|(a, b)| a * b).sum();
                for (xi, ri) in x.iter_mut().zip(r) {
                    *xi -= d * ri;
                }
            }
        }
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        (x, norm)
    };
    let mut start = 0;
    for &row in missing {
        // The first candidate that keeps half its length is taken; when none does (the missing
        // directions spread over many coordinates), the one that keeps the most. Some candidate
        // always keeps at least 1/sqrt(len): the squared leftovers of all basis vectors sum to
        // the dimension of the complement, at least 1.
        let mut best: Option<(Vec<f64>, f64)> = None;
        for step in 0..len {
            let c = (start + step) % len;
            let (x, norm) = leftover(&filled, q, c);
            if norm > 0.5 {
                start = c + 1;
                best = Some((x, norm));
                break;
            }
            if best.as_ref().is_none_or(|(_, b)| norm > *b) {
                best = Some((x, norm));
            }
        }
        let (x, norm) = best.expect("a matrix with at least one column");
        assert!(
            norm > 1e-12,
            "orthonormal completion: the rows already span the space"
        );
        for (o, xi) in q.data[row * len..(row + 1) * len].iter_mut().zip(&x) {
            *o = xi / norm;
        }
        filled.push(row);
    }
}

/// Rows `p < q` of a row-major buffer with rows of `len`, mutably.
fn pair(data: &mut [f64], len: usize, p: usize, q: usize) -> (&mut [f64], &mut [f64]) {
    let (head, tail) = data.split_at_mut(q * len);
    (&mut head[p * len..(p + 1) * len], &mut tail[..len])
}

/// `(x, y) ← (c·x − s·y, s·x + c·y)`.
fn rotate(x: &mut [f64], y: &mut [f64], c: f64, s: f64) {
    for (a, b) in x.iter_mut().zip(y.iter_mut()) {
        let (xa, yb) = (*a, *b);
        *a = c * xa - s * yb;
        *b = s * xa + c * yb;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The missing direction (1,1,1,1)/2 keeps only half of every standard basis vector, so no
    /// candidate passes the "keeps more than half" test; the completion still finds it (it
    /// used to panic with "ran out of basis vectors", as ISO-CTS did on the demo pool).
    #[test]
    fn orthonormal_completion_of_a_direction_spread_over_every_coordinate() {
        let h = 0.5;
        // Three orthonormal rows orthogonal to (1,1,1,1)/2; row 3 is to be filled.
        let mut q = Matrix::from_rows(
            4,
            4,
            vec![
                h, h, -h, -h, //
                h, -h, h, -h, //
                h, -h, -h, h, //
                0.0, 0.0, 0.0, 0.0,
            ],
        );
        complete_orthonormal(&mut q, &[3]);
        for (i, v) in q.row(3).iter().enumerate() {
            assert!((v.abs() - h).abs() < 1e-12, "entry {i}: {v}");
        }
        let g = q.gram_rows();
        for i in 0..4 {
            for j in 0..4 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((g.data()[i * 4 + j] - want).abs() < 1e-12, "({i},{j})");
            }
        }
    }

    /// A deterministic pseudo-random matrix (xorshift), entries in [-1, 1).
    fn random(rows: usize, cols: usize, seed: u64) -> Matrix {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data = (0..rows * cols)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect();
        Matrix::from_rows(rows, cols, data)
    }

    impl Matrix {
        /// `self + selfᵀ`.
        fn add_transpose(&self) -> Matrix {
            let t = self.t();
            Matrix::from_rows(
                self.rows,
                self.cols,
                self.data.iter().zip(&t.data).map(|(a, b)| a + b).collect(),
            )
        }
    }

    fn max_abs(m: &Matrix) -> f64 {
        m.data().iter().fold(0.0, |a, &b| a.max(b.abs()))
    }

    /// `QᵀQ − I` for a matrix with orthonormal columns.
    fn orthogonality_error(q: &Matrix) -> f64 {
        max_abs(
            &q.t()
                .matmul(q)
                .unwrap()
                .sub(&Matrix::identity(q.cols()))
                .unwrap(),
        )
    }

    fn check(a: &Matrix) -> Svd {
        check_with(a, svd)
    }

    fn check_with(a: &Matrix, f: fn(&Matrix) -> Svd) -> Svd {
        let d = f(a);
        let k = a.rows().min(a.cols());
        assert_eq!((d.u.rows(), d.u.cols()), (a.rows(), k));
        assert_eq!(d.s.len(), k);
        assert_eq!((d.vt.rows(), d.vt.cols()), (k, a.cols()));
        let scale = max_abs(a).max(1e-300);
        let rec = max_abs(&d.reconstruct().sub(a).unwrap()) / scale;
        assert!(rec < 1e-12, "{a:?}: reconstruction error {rec:e}");
        let ou = orthogonality_error(&d.u);
        let ov = orthogonality_error(&d.vt.t());
        assert!(
            ou < 1e-12 && ov < 1e-12,
            "{a:?}: orthogonality {ou:e} {ov:e}"
        );
        assert!(
            d.s.windows(2).all(|w| w[0] >= w[1]),
            "descending: {:?}",
            d.s
        );
        assert!(d.s.iter().all(|&s| s >= 0.0));
        d
    }

    #[test]
    fn square_tall_wide() {
        check(&random(17, 17, 1));
        check(&random(40, 9, 2));
        check(&random(9, 40, 3));
        check(&random(1, 5, 4));
        check(&random(5, 1, 5));
    }

    #[test]
    fn rank_deficient() {
        // rank 3 in a 20×12 matrix and its transpose: 9 zero singular values, and U, V still
        // orthonormal.
        let a = random(20, 3, 6).matmul(&random(3, 12, 7)).unwrap();
        for m in [a.clone(), a.t()] {
            let d = check(&m);
            assert!(d.s[2] > 1e-3, "{:?}", d.s);
            assert!(d.s[3..].iter().all(|&s| s < 1e-12 * d.s[0]), "{:?}", d.s);
        }
        let d = check(&Matrix::zeros(4, 6));
        assert!(d.s.iter().all(|&s| s == 0.0));
    }

    #[test]
    fn known_singular_values() {
        // diag(3, 1, 2) up to row/column permutation and sign: s = [3, 2, 1].
        let a = Matrix::from_rows(3, 3, vec![0.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 2.0]);
        let d = check(&a);
        for (got, want) in d.s.iter().zip([3.0, 2.0, 1.0]) {
            assert!((got - want).abs() < 1e-14, "{:?}", d.s);
        }
    }

    #[test]
    fn ill_conditioned() {
        // singular values 1 … 1e-10: each is recovered to relative accuracy.
        let (q1, q2) = (
            orthogonalize(&random(8, 8, 8)),
            orthogonalize(&random(8, 8, 9)),
        );
        let want: Vec<f64> = (0..8)
            .map(|i| 10f64.powf(-(i as f64) * 10.0 / 7.0))
            .collect();
        let a = q1.scale_columns(&want).matmul(&q2.t()).unwrap();
        // Jacobi: every singular value to high relative accuracy.
        let d = check_with(&a, jacobi_svd);
        for (got, want) in d.s.iter().zip(&want) {
            assert!((got - want).abs() / want < 1e-6, "{got:e} vs {want:e}");
        }
        // faer's bidiagonalization: to absolute accuracy in σ₁'s units.
        let d = check(&a);
        for (got, want) in d.s.iter().zip(&want) {
            assert!((got - want).abs() < 1e-13, "{got:e} vs {want:e}");
        }
        // The Gram shortcuts decline (σ₈/σ₁ = 1e-10) and the SVD answers: the leading three
        // (σ₃/σ₁ ≈ 1.4e-3 ≥ GRAM_MIN_RATIO) come through the Gram matrix to relative accuracy
        // k·ε·(σ₁/σ)² ≈ 1e-9.
        assert!(gram_polar(&a).is_none());
        assert!(gram_truncated_svd(&a, 8).is_none());
        let t = gram_truncated_svd(&a, 3).expect("well-conditioned leading triplets");
        for (got, want) in t.s.iter().zip(&want) {
            assert!((got - want).abs() / want < 1e-8, "{got:e} vs {want:e}");
        }
        let p = orthogonalize(&a);
        assert!(orthogonality_error(&p) < 1e-12);
    }

    #[test]
    fn faer_agrees_with_jacobi() {
        for (r, c, seed) in [(30, 30, 21), (50, 12, 22), (12, 50, 23)] {
            let a = random(r, c, seed);
            let (f, j) = (check(&a), check_with(&a, jacobi_svd));
            for (x, y) in f.s.iter().zip(&j.s) {
                assert!((x - y).abs() < 1e-13 * j.s[0], "{x} vs {y}");
            }
            // Singular vectors agree up to sign (distinct singular values).
            for k in 0..f.s.len() {
                let d: f64 = (0..r).map(|i| f.u[(i, k)] * j.u[(i, k)]).sum();
                assert!((d.abs() - 1.0).abs() < 1e-9, "column {k}: |<u, u'>| = {d}");
            }
        }
    }

    #[test]
    fn gram_paths_match_the_svd() {
        for (r, c, rank, seed) in [(40, 24, 6, 31), (24, 40, 6, 32), (30, 30, 30, 33)] {
            let a = random(r, c, seed);
            let full = jacobi_svd(&a).truncate(rank).unwrap();
            let g = gram_truncated_svd(&a, rank).expect("a random matrix is well conditioned");
            assert_eq!(
                (g.u.rows(), g.u.cols(), g.vt.rows(), g.vt.cols()),
                (r, rank, rank, c)
            );
            for (x, y) in g.s.iter().zip(&full.s) {
                assert!((x - y).abs() < 1e-11 * full.s[0], "{x} vs {y}");
            }
            assert!(orthogonality_error(&g.u) < 1e-10);
            assert!(orthogonality_error(&g.vt.t()) < 1e-10);
            let rec = max_abs(&g.reconstruct().sub(&full.reconstruct()).unwrap());
            assert!(
                rec < 1e-11 * max_abs(&a),
                "rank-{rank} reconstructions differ by {rec:e}"
            );
            let polar_svd = {
                let d = jacobi_svd(&a);
                d.u.matmul(&d.vt).unwrap()
            };
            let polar = gram_polar(&a).expect("well conditioned");
            assert!(max_abs(&polar.sub(&polar_svd).unwrap()) < 1e-11);
        }
    }

    #[test]
    fn polar_of_a_rank_deficient_matrix_is_orthonormal() {
        // The Gram path declines; the SVD's completed singular vectors make the factor
        // orthonormal all the same.
        let a = random(20, 3, 41).matmul(&random(3, 12, 42)).unwrap();
        assert!(gram_polar(&a).is_none());
        assert!(orthogonality_error(&orthogonalize(&a)) < 1e-12);
        assert!(orthogonality_error(&orthogonalize(&a.t()).t()) < 1e-12);
    }

    #[test]
    fn symmetric_eigen_reconstructs() {
        let b = random(16, 16, 51);
        let g = b.add_transpose();
        let (vals, q) = symmetric_eigen(&g).unwrap();
        assert!(vals.windows(2).all(|w| w[0] >= w[1]));
        assert!(orthogonality_error(&q) < 1e-12);
        let rec = q.scale_columns(&vals).matmul(&q.t()).unwrap();
        assert!(max_abs(&rec.sub(&g).unwrap()) < 1e-12 * max_abs(&g));
    }

    #[test]
    fn truncation() {
        let a = random(12, 7, 10);
        let d = truncated_svd(&a, 3).unwrap();
        assert_eq!((d.u.cols(), d.s.len(), d.vt.rows()), (3, 3, 3));
        let full = svd(&a);
        for (x, y) in d.s.iter().zip(&full.s) {
            assert!((x - y).abs() < 1e-12 * full.s[0], "{x} vs {y}");
        }
        // The error of the best rank-3 approximation is the 4th singular value (2-norm) and
        // √(Σ_{i>3} sᵢ²) in the Frobenius norm.
        let err = d.reconstruct().sub(&a).unwrap().norm();
        let tail = full.s[3..].iter().map(|s| s * s).sum::<f64>().sqrt();
        assert!((err - tail).abs() < 1e-12, "{err} vs {tail}");
        assert_eq!(
            truncated_svd(&a, 8).unwrap_err(),
            LinalgError::RankTooLarge {
                rank: 8,
                rows: 12,
                cols: 7
            }
        );
        assert!(truncated_svd(&a, 8)
            .unwrap_err()
            .to_string()
            .contains("rank 8 is larger than the 12x7 matrix allows (at most 7)"));
    }

    #[test]
    fn polar_factor() {
        for (r, c) in [(10, 4), (4, 10), (6, 6)] {
            let a = random(r, c, (r * 31 + c) as u64);
            let p = orthogonalize(&a);
            if r >= c {
                assert!(orthogonality_error(&p) < 1e-12);
            } else {
                assert!(orthogonality_error(&p.t()) < 1e-12);
            }
            // Aᵀ·P is symmetric positive semi-definite (P is the polar factor, not any
            // orthonormal basis).
            let h = a.t().matmul(&p).unwrap();
            assert!(max_abs(&h.sub(&h.t()).unwrap()) < 1e-12);
        }
        // An orthogonal matrix is its own polar factor.
        let q = orthogonalize(&random(5, 5, 11));
        assert!(max_abs(&orthogonalize(&q).sub(&q).unwrap()) < 1e-12);
    }
}
