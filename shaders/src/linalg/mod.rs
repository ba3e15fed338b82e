//! Dense linear algebra on the device, batched over a layer's matrices: the thin SVD (one-sided
//! Jacobi, full and truncated), the symmetric eigendecomposition (Jacobi), Householder QR, and
//! LU with partial pivoting with its solve and inverse. Each op takes `batch` row-major
//! matrices stored one after another in one f32 tensor and returns new tensors in the same
//! layout; f32 arithmetic throughout.
//!
//! | op | kernels | host work |
//! |---|---|---|
//! | [`svd`], [`truncated_svd`] | `jacobi.wgsl` (a round of disjoint plane rotations per dispatch), `norms.wgsl`, `layout.wgsl`; for a tall or wide matrix first `qr.wgsl` and `nn::gemm` | one read of a counter per sweep; sorting the singular values; completing the null space of an exactly rank-deficient matrix |
//! | [`randomized_svd`] | `nn::gemm`, `qr.wgsl`, then the above on a small matrix | none beyond it |
//! | [`adam_step`] | `adam.wgsl` (a fused torch-Adam update) | none |
//! | [`symmetric_eigen`] | the same, on `A + ‖A‖_F·I` | sorting |
//! | [`qr`] | `qr.wgsl` (one reflector per step) | none |
//! | [`lu`], [`solve`], [`inverse`] | `lu.wgsl` | one read of the singularity flags |
//!
//! **SVD.** One-sided Jacobi (Hestenes) orthogonalizes the columns of the tall matrix T (A, or
//! Aᵀ when A is wide) by plane rotations, accumulating them in V: at convergence the column
//! norms are the singular values and the normalized columns the left singular vectors. A sweep
//! is N'−1 rounds of N'/2 disjoint pairs (round-robin ordering, N' = N rounded up to even), each
//! round one dispatch over every pair of every matrix of the batch; sweeps repeat until one
//! rotates nothing (at most [`MAX_SWEEPS`]). The threshold is √M·ε (ε of f32), as LAPACK's
//! `sgesvj`. Singular values at or below max(M, N)·ε·σ₁ count as zero; their left singular
//! vectors are completed to an orthonormal set on the host (Gram–Schmidt against the others),
//! which only an exactly rank-deficient matrix needs.
//!
//! **Tall and wide matrices.** When the longer side M is at least 5/4 of the shorter N, the
//! SVD first takes the Householder QR of the tall form T = QR (about half a sweep's work) and
//! runs the Jacobi iteration on the N×N R, each sweep N/M of one on T; T's left vectors are
//! Q·U_R (LAPACK's `sgejsv` preconditions the same way). For a rank r far below N,
//! [`randomized_svd`] sketches the range with r + 10 columns and two subspace iterations and
//! needs only an (r+10)×N SVD; it is exact for a matrix of rank ≤ r + 10 and close when the
//! spectrum decays past σ_r, whereas [`truncated_svd`] is always the exact one.
//!
//! **Sizes.** Every matrix lives in storage buffers and every kernel spreads one matrix over
//! many workgroups (a column pair, a column or a row each, or flat over the entries), so the
//! size is bounded by memory alone: each tensor an op makes holds at most m·n values per
//! matrix and must fit one storage binding (`max_storage_binding_size`) with u32 indices, and
//! the longer side must fit one dispatch dimension. A batch that does not fit is an error that
//! says how many matrices do ([`max_batch`], by which callers split); a single matrix that
//! does not fit (a 4096×14336 f32 weight takes 235 MB) is an error naming its size and the
//! limit.
//!
//! **Eigendecomposition.** For symmetric A, B = A + c·I with c = ‖A‖_F ≥ |λ|max is positive
//! semi-definite with A's eigenvectors, and its SVD is its eigendecomposition: the one-sided
//! Jacobi above on B gives V (orthogonal by construction, the product of rotations) and the
//! eigenvalues λ = σ(B) − c, to an absolute accuracy of a few ε·‖A‖_F, in descending order.
//!
//! **QR.** Householder reflectors, one per column (k = min(m, n)); Q (m×k, orthonormal for any
//! A, rank-deficient included) is accumulated from the identity by applying them backwards; R is
//! k×n upper triangular (its diagonal may be negative).
//!
//! **LU.** Partial pivoting (largest magnitude in the column); a zero pivot makes the op fail
//! with an error naming the matrix of the batch and the column. Solve and inverse substitute
//! one right-hand-side column per invocation.
//!
//! Whether to use these or a CPU library is the caller's choice per adapter: [`prefer_device`]
//! says no on a [`DeviceType::Cpu`] adapter (a software rasterizer running on the same cores,
//! where native code wins by far).

use fusion_plugin_api::{Binding, Compute, DType, DeviceTensor, DeviceType, GpuTensor, KernelCall};

use crate::nn::{check_binding, NnError, Result};

mod adam;

pub use adam::{adam_step, AdamStep, ADAM};

/// `jacobi.wgsl`.
pub const JACOBI: &str = include_str!("jacobi.wgsl");
/// `norms.wgsl`.
pub const NORMS: &str = include_str!("norms.wgsl");
/// `layout.wgsl`.
pub const LAYOUT: &str = include_str!("layout.wgsl");
/// `qr.wgsl`.
pub const QR: &str = include_str!("qr.wgsl");
/// `lu.wgsl`.
pub const LU: &str = include_str!("lu.wgsl");
/// Every linear-algebra kernel source by its file name under `src/linalg/`.
pub const ALL: [(&str, &str); 6] = [
    ("jacobi.wgsl", JACOBI),
    ("norms.wgsl", NORMS),
    ("layout.wgsl", LAYOUT),
    ("qr.wgsl", QR),
    ("lu.wgsl", LU),
    ("adam.wgsl", ADAM),
];

/// The most Jacobi sweeps before the SVD gives up converging (f32 needs 6 to 12).
pub const MAX_SWEEPS: usize = 40;

/// Invocations per workgroup of the reduction kernels (`const WG` in their WGSL).
const REDUCE_WG: u32 = 64;

/// Whether dense linear algebra should run on this compute device rather than on the CPU: not
/// on a [`DeviceType::Cpu`] adapter (lavapipe, llvmpipe, WARP), whose kernels run on the host's
/// own cores far slower than native code.
pub fn prefer_device(c: &dyn Compute) -> bool {
    c.device_type() != DeviceType::Cpu && !crate::is_software_adapter(&c.device_name())
}

/// A thin SVD of a batch: `u` [batch, m, r], `s` [batch, r] (descending), `vt` [batch, r, n],
/// with r = min(m, n) (or the rank asked for).
pub struct Svd<'c> {
    /// Left singular vectors, the columns of each item.
    pub u: DeviceTensor<'c>,
    /// Singular values, descending.
    pub s: DeviceTensor<'c>,
    /// Right singular vectors, the rows of each item.
    pub vt: DeviceTensor<'c>,
    /// Sweeps the Jacobi iteration took.
    pub sweeps: usize,
}

/// A symmetric eigendecomposition of a batch: `values` [batch, n] descending and `vectors`
/// [batch, n, n] whose column k is the eigenvector of value k.
pub struct Eigen<'c> {
    /// Eigenvalues, descending.
    pub values: DeviceTensor<'c>,
    /// Eigenvectors, as columns.
    pub vectors: DeviceTensor<'c>,
    /// Sweeps the Jacobi iteration took.
    pub sweeps: usize,
}

/// A thin QR of a batch: `q` [batch, m, k] with orthonormal columns, `r` [batch, k, n] upper
/// triangular, k = min(m, n).
pub struct Qr<'c> {
    /// The orthonormal factor.
    pub q: DeviceTensor<'c>,
    /// The upper-triangular factor.
    pub r: DeviceTensor<'c>,
}

/// An LU factorization of a batch: `lu` [batch, n, n] holds U on and above the diagonal and
/// L's multipliers below it; `piv` [batch, n] (u32): step k swapped rows k and piv[k].
pub struct Lu<'c> {
    /// L and U, packed.
    pub lu: DeviceTensor<'c>,
    /// Row swaps.
    pub piv: DeviceTensor<'c>,
    n: usize,
    batch: usize,
}

// ---------------------------------------------------------------------------------------------
// Helpers

#[derive(Default)]
struct Params(Vec<u8>);

impl Params {
    fn u(mut self, v: usize) -> Self {
        self.0.extend_from_slice(&(v as u32).to_le_bytes());
        self
    }
    fn f(mut self, v: f32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

fn tensor<'c>(
    c: &'c dyn Compute,
    op: &str,
    dtype: DType,
    shape: &[usize],
) -> Result<DeviceTensor<'c>> {
    check_binding(c, op, shape, 4)?;
    DeviceTensor::zeros(c, dtype, shape)
        .map_err(NnError::compute(format!("{op}: a tensor {shape:?}")))
}

fn upload<'c>(
    c: &'c dyn Compute,
    op: &str,
    shape: &[usize],
    data: &[f32],
) -> Result<DeviceTensor<'c>> {
    check_binding(c, op, shape, 4)?;
    DeviceTensor::from_f32(c, shape, data)
        .map_err(NnError::compute(format!("{op}: uploading {shape:?}")))
}

fn read_f32(c: &dyn Compute, op: &str, t: GpuTensor) -> Result<Vec<f32>> {
    crate::nn::read_f32(c, t).map_err(|e| match e {
        NnError::Compute { cause, .. } => NnError::Compute {
            op: format!("{op}: reading back"),
            cause,
        },
        other => other,
    })
}

fn read_u32(c: &dyn Compute, op: &str, t: GpuTensor) -> Result<Vec<u32>> {
    let bytes = c
        .read(t)
        .map_err(NnError::compute(format!("{op}: reading back")))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Checks that `a` holds `batch` m×n matrices and that every extent fits the kernels.
fn check_input(
    c: &dyn Compute,
    op: &'static str,
    a: GpuTensor,
    batch: usize,
    m: usize,
    n: usize,
) -> Result<()> {
    if batch == 0 || m == 0 || n == 0 {
        return Err(NnError::input(
            op,
            format!("empty input: {batch} matrices of {m}x{n}"),
        ));
    }
    let (dtype, shape) = c
        .describe(a)
        .map_err(NnError::compute(format!("{op}: describing the input")))?;
    let have: usize = shape.iter().product();
    if dtype != DType::F32 || have != batch * m * n {
        return Err(NnError::input(
            op,
            format!(
                "the input is {dtype:?} {shape:?}; {batch} f32 matrices of {m}x{n} need {} values",
                batch * m * n
            ),
        ));
    }
    let limits = c
        .checked_limits()
        .map_err(NnError::compute(format!("{op}: reading the device limits")))?;
    let groups = u64::from(limits.max_workgroups_per_dimension);
    if batch as u64 > groups {
        return Err(NnError::DeviceLimit {
            op: op.to_string(),
            message: format!(
                "a batch of {batch} matrices exceeds the {groups} workgroups of one dispatch \
                 dimension; split the batch"
            ),
        });
    }
    // One workgroup per column (pair) or row runs along one dispatch dimension.
    if m.max(n) as u64 > groups {
        return Err(NnError::DeviceLimit {
            op: op.to_string(),
            message: format!(
                "a {m}x{n} matrix has more than the {groups} rows or columns one dispatch \
                 dimension reaches"
            ),
        });
    }
    // Every tensor an op makes holds at most m·n values per matrix (the working copy, the
    // factors, the rotations: min(m, n)² ≤ m·n), each in one storage binding.
    let fit = max_batch_for(&limits, m, n);
    if fit < batch {
        let bytes = batch as u64 * m as u64 * n as u64 * 4;
        let max = limits.max_storage_binding_size;
        let message = if fit == 0 {
            format!(
                "one {m}x{n} f32 matrix takes {} bytes, more than the device's largest storage \
                 binding ({max} bytes): the matrix is too large for this device",
                m as u64 * n as u64 * 4
            )
        } else {
            format!(
                "{batch} f32 matrices of {m}x{n} take {bytes} bytes, more than the device's \
                 largest storage binding ({max} bytes); at most {fit} fit in one call: split the \
                 batch"
            )
        };
        return Err(NnError::DeviceLimit {
            op: op.to_string(),
            message,
        });
    }
    Ok(())
}

fn max_batch_for(limits: &fusion_plugin_api::ComputeLimits, m: usize, n: usize) -> usize {
    let per = (m as u64 * n as u64 * 4).max(1);
    let by_bytes = limits.max_storage_binding_size / per;
    let by_index = u64::from(u32::MAX) / (m as u64 * n as u64).max(1);
    by_bytes
        .min(by_index)
        .min(u64::from(limits.max_workgroups_per_dimension))
        .try_into()
        .unwrap_or(usize::MAX)
}

/// The most m×n matrices one call of these ops takes on this device (each tensor an op makes
/// must fit one storage binding and be indexable by u32); 0 when a single matrix is too large.
/// Callers with more matrices split the batch.
pub fn max_batch(c: &dyn Compute, m: usize, n: usize) -> usize {
    match c.checked_limits() {
        Ok(limits) => max_batch_for(&limits, m, n),
        Err(_) => 0,
    }
}

fn dispatch(
    c: &dyn Compute,
    op: &str,
    source: &str,
    entry: &str,
    bindings: &[Binding],
    uniforms: Params,
    workgroups: [u32; 3],
) -> Result<()> {
    c.dispatch(&KernelCall {
        label: op,
        source,
        entry_point: entry,
        constants: &[],
        bindings,
        uniforms: &uniforms.0,
        workgroups,
    })
    .map_err(NnError::compute(format!("{op} ({entry})")))
}

/// A `layout.wgsl` launch over `items` output elements.
#[allow(clippy::too_many_arguments)]
fn layout(
    c: &dyn Compute,
    op: &str,
    entry: &str,
    src: GpuTensor,
    dst: GpuTensor,
    aux: GpuTensor,
    items: usize,
    params: Params,
) -> Result<()> {
    if items == 0 {
        return Ok(());
    }
    let limits = c.limits();
    let wg = fusion_plugin_api::kernel::workgroup_size(&limits);
    let groups = fusion_plugin_api::kernel::dispatch_1d(&limits, items as u64, wg)
        .map_err(NnError::compute(format!("{op} ({entry})")))?;
    c.dispatch(&KernelCall {
        label: op,
        source: LAYOUT,
        entry_point: entry,
        constants: &[("WG", f64::from(wg))],
        bindings: &[Binding::read(src), Binding::write(dst), Binding::read(aux)],
        uniforms: &params.0,
        workgroups: groups,
    })
    .map_err(NnError::compute(format!("{op} ({entry})")))
}

/// Strided block copy: item b, row r, column c of `src` to `dst`.
#[allow(clippy::too_many_arguments)]
fn copy(
    c: &dyn Compute,
    op: &str,
    src: GpuTensor,
    dst: GpuTensor,
    batch: usize,
    rows: usize,
    cols: usize,
    s: [usize; 3],
    d: [usize; 3],
) -> Result<()> {
    let params = Params::default()
        .u(batch)
        .u(rows)
        .u(cols)
        .u(s[0])
        .u(s[1])
        .u(s[2])
        .u(d[0])
        .u(d[1])
        .u(d[2]);
    layout(c, op, "copy", src, dst, src, batch * rows * cols, params)
}

/// `dst` item b := the rows×cols identity (row stride `cols`).
fn eye(
    c: &dyn Compute,
    op: &str,
    dst: GpuTensor,
    batch: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let params = Params::default()
        .u(batch)
        .u(rows)
        .u(cols)
        .u(0)
        .u(0)
        .u(0)
        .u(rows * cols)
        .u(cols)
        .u(1);
    let unused = tensor(c, op, DType::F32, &[1])?;
    layout(
        c,
        op,
        "eye",
        unused.id(),
        dst,
        unused.id(),
        batch * rows * cols,
        params,
    )
}

// ---------------------------------------------------------------------------------------------
// Jacobi

/// The Jacobi iteration on `w` ([batch, n, len]: the columns of each tall matrix) and `v`
/// ([batch, n, n], the identity): sweeps until one rotates nothing. Returns the sweeps taken.
fn jacobi(
    c: &dyn Compute,
    op: &'static str,
    w: GpuTensor,
    v: GpuTensor,
    batch: usize,
    n: usize,
    len: usize,
) -> Result<usize> {
    let n_even = n + n % 2;
    let rotated = tensor(c, op, DType::U32, &[batch])?;
    let tol = (len as f32).sqrt() * f32::EPSILON;
    let zeros = vec![0u8; batch * 4];
    for sweep in 1..=MAX_SWEEPS {
        c.write(rotated.id(), 0, &zeros)
            .map_err(NnError::compute(format!(
                "{op}: resetting the rotation counters"
            )))?;
        for round in 0..n_even.saturating_sub(1) {
            let params = Params::default()
                .u(batch)
                .u(n)
                .u(len)
                .u(n_even)
                .u(round)
                .f(tol);
            dispatch(
                c,
                op,
                JACOBI,
                "rotate",
                &[
                    Binding::write(w),
                    Binding::write(v),
                    Binding::write(rotated.id()),
                ],
                params,
                [(n_even / 2) as u32, batch as u32, 1],
            )?;
        }
        let counts = read_u32(c, op, rotated.id())?;
        if counts.iter().all(|&x| x == 0) {
            return Ok(sweep);
        }
    }
    Err(NnError::input(
        op,
        format!("the Jacobi iteration did not converge in {MAX_SWEEPS} sweeps (non-finite values in the input?)"),
    ))
}

/// Norms of the `rows` rows (length `len`) of each item of `x`, read back.
fn row_norms(
    c: &dyn Compute,
    op: &str,
    x: GpuTensor,
    batch: usize,
    rows: usize,
    len: usize,
) -> Result<Vec<f32>> {
    let out = tensor(c, op, DType::F32, &[batch, rows])?;
    dispatch(
        c,
        op,
        NORMS,
        "norms",
        &[Binding::read(x), Binding::write(out.id())],
        Params::default().u(batch).u(rows).u(len),
        [rows as u32, batch as u32, 1],
    )?;
    read_f32(c, op, out.id())
}

/// The order of each item's values (descending) and their (index, factor) pairs for `gather`:
/// the first `keep` of each item, with factor `factor(value)`.
fn selection(
    values: &[f32],
    batch: usize,
    n: usize,
    keep: usize,
    factor: impl Fn(f32) -> f32,
) -> (Vec<Vec<usize>>, Vec<f32>) {
    let mut orders = Vec::with_capacity(batch);
    let mut aux = Vec::with_capacity(batch * keep * 2);
    for b in 0..batch {
        let vals = &values[b * n..(b + 1) * n];
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| vals[j].total_cmp(&vals[i]).then(i.cmp(&j)));
        for &i in &order[..keep] {
            aux.push(f32::from_bits(i as u32));
            aux.push(factor(vals[i]));
        }
        orders.push(order);
    }
    (orders, aux)
}

/// Output row k of item b = factor · row index_k of `src` ([batch, rows_src, len]), written as
/// rows of `dst` ([batch, keep, len]) or as its columns ([batch, len, keep]).
#[allow(clippy::too_many_arguments)]
fn gather(
    c: &dyn Compute,
    op: &str,
    src: GpuTensor,
    dst: GpuTensor,
    aux: &[f32],
    batch: usize,
    rows_src: usize,
    len: usize,
    keep: usize,
    as_columns: bool,
) -> Result<()> {
    let aux = upload(c, op, &[aux.len()], aux)?;
    let (dr, dc) = if as_columns { (keep, 1) } else { (len, 0) };
    let params = Params::default()
        .u(batch)
        .u(len)
        .u(keep)
        .u(rows_src * len)
        .u(len)
        .u(0)
        .u(keep * len)
        .u(dr)
        .u(dc);
    layout(
        c,
        op,
        "gather",
        src,
        dst,
        aux.id(),
        batch * keep * len,
        params,
    )
}

/// The thin SVD of each of the `batch` m×n matrices in `a` (see the module comment).
pub fn svd<'c>(
    c: &'c dyn Compute,
    a: GpuTensor,
    batch: usize,
    m: usize,
    n: usize,
) -> Result<Svd<'c>> {
    truncated_svd_impl(c, "linalg_svd", a, batch, m, n, m.min(n))
}

/// The leading `rank` singular triplets of each of the `batch` m×n matrices in `a`; a rank
/// above min(m, n) is an error naming both. (The Jacobi iteration is the full one; the
/// truncation saves the memory and the copies of the rest.)
pub fn truncated_svd<'c>(
    c: &'c dyn Compute,
    a: GpuTensor,
    batch: usize,
    m: usize,
    n: usize,
    rank: usize,
) -> Result<Svd<'c>> {
    const OP: &str = "linalg_truncated_svd";
    if rank > m.min(n) {
        return Err(NnError::input(
            OP,
            format!(
                "rank {rank} is larger than the {m}x{n} matrix allows (at most {})",
                m.min(n)
            ),
        ));
    }
    truncated_svd_impl(c, OP, a, batch, m, n, rank)
}

fn truncated_svd_impl<'c>(
    c: &'c dyn Compute,
    op: &'static str,
    a: GpuTensor,
    batch: usize,
    m: usize,
    n: usize,
    rank: usize,
) -> Result<Svd<'c>> {
    check_input(c, op, a, batch, m, n)?;
    let (big, small) = (m.max(n), m.min(n));
    if small > 1 && 4 * big >= 5 * small {
        return preconditioned_svd(c, op, a, batch, m, n, rank);
    }
    jacobi_svd(c, op, a, batch, m, n, rank, big)
}

/// The SVD of a tall or wide matrix through the QR of its tall form T (M×N, M ≥ 5N/4): T = QR,
/// R = U_R Σ V_Rᵀ by the Jacobi iteration on N×N instead of M×N, T = (Q U_R) Σ V_Rᵀ, the
/// product by `nn::gemm`. The Householder QR costs about half a sweep, each sweep on R N/M of
/// one on T (LAPACK's `sgejsv` preconditions the same way).
fn preconditioned_svd<'c>(
    c: &'c dyn Compute,
    op: &'static str,
    a: GpuTensor,
    batch: usize,
    m: usize,
    n: usize,
    rank: usize,
) -> Result<Svd<'c>> {
    use crate::nn::{gemm, Gemm, Operand};
    let wide = m < n;
    let (big, small) = (m.max(n), m.min(n));
    // T row-major: A itself when tall, Aᵀ when wide.
    let transposed;
    let t = if wide {
        transposed = tensor(c, op, DType::F32, &[batch, big, small])?;
        copy(
            c,
            op,
            a,
            transposed.id(),
            batch,
            m,
            n,
            [m * n, n, 1],
            [m * n, 1, m],
        )?;
        transposed.id()
    } else {
        a
    };
    let f = qr(c, t, batch, big, small)?;
    // The noise floor stays that of the M×N matrix.
    let inner = jacobi_svd(c, op, f.r.id(), batch, small, small, rank, big)?;
    let product = |m, n, k| Gemm {
        batch0: batch,
        ..Gemm::dense(m, n, k, false, false)
    };
    let u = tensor(c, op, DType::F32, &[batch, m, rank])?;
    let vt = tensor(c, op, DType::F32, &[batch, rank, n])?;
    if wide {
        // A = Tᵀ = V_R Σ (Q U_R)ᵀ: U = V_R (vtᵀ of the inner SVD), Vᵀ = U_Rᵀ Qᵀ.
        copy(
            c,
            op,
            inner.vt.id(),
            u.id(),
            batch,
            rank,
            small,
            [rank * small, small, 1],
            [small * rank, 1, rank],
        )?;
        let g = Gemm {
            a: Operand::batched(0, rank, small * rank, 0),
            a_transposed: true,
            b: Operand::batched(0, small, big * small, 0),
            b_transposed: true,
            c: Operand::batched(0, big, rank * big, 0),
            ..product(rank, big, small)
        };
        gemm(c, inner.u.id(), f.q.id(), vt.id(), &g)?;
    } else {
        let g = Gemm {
            a: Operand::batched(0, small, big * small, 0),
            b: Operand::batched(0, rank, small * rank, 0),
            c: Operand::batched(0, rank, big * rank, 0),
            ..product(big, rank, small)
        };
        gemm(c, f.q.id(), inner.u.id(), u.id(), &g)?;
        copy(
            c,
            op,
            inner.vt.id(),
            vt.id(),
            batch,
            rank,
            small,
            [rank * small, small, 1],
            [rank * small, small, 1],
        )?;
    }
    Ok(Svd {
        u,
        s: inner.s,
        vt,
        sweeps: inner.sweeps,
    })
}

/// The one-sided Jacobi SVD proper; singular values at or below `floor_len`·ε·σ₁ count as zero.
#[allow(clippy::too_many_arguments)]
fn jacobi_svd<'c>(
    c: &'c dyn Compute,
    op: &'static str,
    a: GpuTensor,
    batch: usize,
    m: usize,
    n: usize,
    rank: usize,
    floor_len: usize,
) -> Result<Svd<'c>> {
    let wide = m < n;
    // T is M×N with M ≥ N; w holds T's columns: Aᵀ's rows when A is tall, A's rows when wide.
    let (big, small) = (m.max(n), m.min(n));
    let w = tensor(c, op, DType::F32, &[batch, small, big])?;
    if wide {
        copy(c, op, a, w.id(), batch, m, n, [m * n, n, 1], [m * n, n, 1])?;
    } else {
        copy(c, op, a, w.id(), batch, m, n, [m * n, n, 1], [m * n, 1, m])?;
    }
    let v = tensor(c, op, DType::F32, &[batch, small, small])?;
    eye(c, op, v.id(), batch, small, small)?;
    let sweeps = jacobi(c, op, w.id(), v.id(), batch, small, big)?;
    let norms = row_norms(c, op, w.id(), batch, small, big)?;
    let smax: Vec<f32> = (0..batch)
        .map(|b| {
            norms[b * small..(b + 1) * small]
                .iter()
                .cloned()
                .fold(0.0, f32::max)
        })
        .collect();
    let eps = f32::EPSILON * floor_len as f32;
    // Left vectors of T: w's rows / σ (0 for σ at the noise floor, completed below); right:
    // v's rows.
    let mut s = Vec::with_capacity(batch * rank);
    let mut null = Vec::new();
    let mut aux_w = Vec::with_capacity(batch * rank * 2);
    let mut aux_v = Vec::with_capacity(batch * rank * 2);
    for b in 0..batch {
        let floor = eps * smax[b];
        let (orders, _) = selection(&norms[b * small..(b + 1) * small], 1, small, rank, |x| x);
        for (k, &j) in orders[0][..rank].iter().enumerate() {
            let sv = norms[b * small + j];
            let zero = sv <= floor || sv == 0.0;
            s.push(if zero { 0.0 } else { sv });
            if zero {
                null.push((b, k));
            }
            aux_w.push(f32::from_bits(j as u32));
            aux_w.push(if zero { 0.0 } else { 1.0 / sv });
            aux_v.push(f32::from_bits(j as u32));
            aux_v.push(1.0);
        }
    }
    let u = tensor(c, op, DType::F32, &[batch, m, rank])?;
    let vt = tensor(c, op, DType::F32, &[batch, rank, n])?;
    if wide {
        // A = Tᵀ = V_T Σ U_Tᵀ: A's left vectors are V_T's columns, its right ones T's.
        gather(
            c,
            op,
            v.id(),
            u.id(),
            &aux_v,
            batch,
            small,
            small,
            rank,
            true,
        )?;
        gather(
            c,
            op,
            w.id(),
            vt.id(),
            &aux_w,
            batch,
            small,
            big,
            rank,
            false,
        )?;
    } else {
        gather(c, op, w.id(), u.id(), &aux_w, batch, small, big, rank, true)?;
        gather(
            c,
            op,
            v.id(),
            vt.id(),
            &aux_v,
            batch,
            small,
            small,
            rank,
            false,
        )?;
    }
    if !null.is_empty() {
        // Exactly rank-deficient: the left vectors of zero singular values (wide: the right
        // ones, T's left vectors) are completed to an orthonormal set on the host.
        let (target, rows, cols, columns) = if wide {
            (vt.id(), rank, n, false)
        } else {
            (u.id(), m, rank, true)
        };
        let mut data = read_f32(c, op, target)?;
        for b in 0..batch {
            let missing: Vec<usize> = null
                .iter()
                .filter(|(bb, _)| *bb == b)
                .map(|&(_, k)| k)
                .collect();
            if !missing.is_empty() {
                let item = &mut data[b * rows * cols..(b + 1) * rows * cols];
                complete(item, rows, cols, columns, &missing);
            }
        }
        c.write(target, 0, bytemuck::cast_slice(&data))
            .map_err(NnError::compute(format!(
                "{op}: writing the completed singular vectors"
            )))?;
    }
    let s = upload(c, op, &[batch, rank], &s)?;
    Ok(Svd { u, s, vt, sweeps })
}

/// Makes vectors `missing` of `item` (rows×cols; vectors are its columns when `columns`, else
/// its rows) unit vectors orthogonal to every other, by Gram–Schmidt (twice, in f64) on the
/// standard basis.
fn complete(item: &mut [f32], rows: usize, cols: usize, columns: bool, missing: &[usize]) {
    let (count, len) = if columns { (cols, rows) } else { (rows, cols) };
    let get = |item: &[f32], k: usize| -> Vec<f64> {
        (0..len)
            .map(|i| {
                f64::from(if columns {
                    item[i * cols + k]
                } else {
                    item[k * cols + i]
                })
            })
            .collect()
    };
    let mut basis: Vec<Vec<f64>> = (0..count)
        .filter(|k| !missing.contains(k))
        .map(|k| get(item, k))
        .collect();
    let leftover = |basis: &[Vec<f64>], c: usize| {
        let mut x = vec![0.0f64; len];
        x[c] = 1.0;
        for _ in 0..2 {
            for q in basis {
                let d: f64 = q.iter().zip(&x).map(|(a, b)| a * b).sum();
                x.iter_mut().zip(q).for_each(|(xi, qi)| *xi -= d * qi);
            }
        }
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        (x, norm)
    };
    let mut start = 0;
    for &k in missing {
        // The first standard basis vector that keeps half its length outside the span of the
        // others, else the one that keeps the most (some keeps at least 1/√len: the squared
        // leftovers of all of them sum to the dimension of the complement, at least 1).
        let mut best: Option<(Vec<f64>, f64)> = None;
        for step in 0..len {
            let c = (start + step) % len;
            let (x, norm) = leftover(&basis, c);
            let good = norm > 0.5;
            if best.as_ref().is_none_or(|(_, b)| norm > *b) {
                best = Some((x, norm));
            }
            if good {
                start = c + 1;
                break;
            }
        }
        let (x, norm) = best.expect("len > 0");
        let x: Vec<f64> = x.into_iter().map(|v| v / norm).collect();
        for (i, &xi) in x.iter().enumerate() {
            if columns {
                item[i * cols + k] = xi as f32;
            } else {
                item[k * cols + i] = xi as f32;
            }
        }
        basis.push(x);
    }
}

/// Settings of [`randomized_svd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Randomized {
    /// Extra columns of the sketch beyond the rank (Halko et al. suggest 5 to 10).
    pub oversample: usize,
    /// Power (subspace) iterations: each sharpens the sketch by (σ_{l+1}/σ_r)², l = rank +
    /// oversample.
    pub power_iterations: usize,
    /// Seed of the Gaussian-like test matrix (the same for every item of the batch).
    pub seed: u64,
}

impl Default for Randomized {
    fn default() -> Self {
        Randomized {
            oversample: 10,
            power_iterations: 2,
            seed: 0,
        }
    }
}

/// The leading `rank` singular triplets of each of the `batch` m×n matrices in `a` by
/// randomized subspace iteration (Halko, Martinsson and Tropp, 2011, algorithm 4.4), for a rank
/// far below min(m, n): a sketch Y = A·Ω of l = rank + oversample columns, `power_iterations`
/// rounds of Y ← A·orth(Aᵀ·orth(Y)) (orth = the Householder Q), then the exact SVD of the
/// small l×n matrix B = Qᵀ·A and U = Q·U_B. Products by `nn::gemm`, batched. Approximate: the
/// triplets are those of A's projection on the sketched subspace, exact when A's rank is at
/// most l and close when the spectrum decays past σ_r; where l reaches min(m, n) it is the
/// exact [`truncated_svd`].
pub fn randomized_svd<'c>(
    c: &'c dyn Compute,
    a: GpuTensor,
    batch: usize,
    m: usize,
    n: usize,
    rank: usize,
    opts: &Randomized,
) -> Result<Svd<'c>> {
    use crate::nn::{gemm, Gemm, Operand};
    const OP: &str = "linalg_randomized_svd";
    if rank == 0 || rank > m.min(n) {
        return Err(NnError::input(
            OP,
            format!(
                "rank {rank} is outside 1..={} for the {m}x{n} matrix",
                m.min(n)
            ),
        ));
    }
    let l = (rank + opts.oversample).min(m.min(n));
    if 2 * l > m.min(n) {
        // A sketch this wide saves nothing over the exact SVD.
        return truncated_svd(c, a, batch, m, n, rank);
    }
    check_input(c, OP, a, batch, m, n)?;
    // Ω: n×l, uniform on (−1, 1) from a xorshift stream (any full-rank spread will do).
    let mut x = opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let omega: Vec<f32> = (0..n * l)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let omega = upload(c, OP, &[n, l], &omega)?;
    let a_op = Operand::batched(0, n, m * n, 0);
    // Y (m×l) = A·X for X (n×l) with item stride `xs` (0: one X for every item).
    let times = |xm: GpuTensor, xs: usize, y: GpuTensor| {
        let g = Gemm {
            batch0: batch,
            a: a_op,
            b: Operand::batched(0, l, xs, 0),
            c: Operand::batched(0, l, m * l, 0),
            ..Gemm::dense(m, l, n, false, false)
        };
        gemm(c, a, xm, y, &g)
    };
    // Z (n×l) = Aᵀ·Q for Q (m×l).
    let times_t = |q: GpuTensor, z: GpuTensor| {
        let g = Gemm {
            batch0: batch,
            a: a_op,
            a_transposed: true,
            b: Operand::batched(0, l, m * l, 0),
            c: Operand::batched(0, l, n * l, 0),
            ..Gemm::dense(n, l, m, true, false)
        };
        gemm(c, a, q, z, &g)
    };
    let y = tensor(c, OP, DType::F32, &[batch, m, l])?;
    let z = tensor(c, OP, DType::F32, &[batch, n, l])?;
    times(omega.id(), 0, y.id())?;
    for _ in 0..opts.power_iterations {
        let q = qr(c, y.id(), batch, m, l)?;
        times_t(q.q.id(), z.id())?;
        let q = qr(c, z.id(), batch, n, l)?;
        times(q.q.id(), n * l, y.id())?;
    }
    let q = qr(c, y.id(), batch, m, l)?;
    // B (l×n) = Qᵀ·A.
    let b = tensor(c, OP, DType::F32, &[batch, l, n])?;
    let g = Gemm {
        batch0: batch,
        a: Operand::batched(0, l, m * l, 0),
        a_transposed: true,
        b: a_op,
        c: Operand::batched(0, n, l * n, 0),
        ..Gemm::dense(l, n, m, true, false)
    };
    gemm(c, q.q.id(), a, b.id(), &g)?;
    let inner = truncated_svd_impl(c, OP, b.id(), batch, l, n, rank)?;
    // U (m×rank) = Q·U_B.
    let u = tensor(c, OP, DType::F32, &[batch, m, rank])?;
    let g = Gemm {
        batch0: batch,
        a: Operand::batched(0, l, m * l, 0),
        b: Operand::batched(0, rank, l * rank, 0),
        c: Operand::batched(0, rank, m * rank, 0),
        ..Gemm::dense(m, rank, l, false, false)
    };
    gemm(c, q.q.id(), inner.u.id(), u.id(), &g)?;
    Ok(Svd {
        u,
        s: inner.s,
        vt: inner.vt,
        sweeps: inner.sweeps,
    })
}

/// The eigendecomposition of each of the `batch` symmetric n×n matrices in `a` (only
/// symmetric input is meaningful; see the module comment).
pub fn symmetric_eigen<'c>(
    c: &'c dyn Compute,
    a: GpuTensor,
    batch: usize,
    n: usize,
) -> Result<Eigen<'c>> {
    const OP: &str = "linalg_symmetric_eigen";
    check_input(c, OP, a, batch, n, n)?;
    // c = ‖A‖_F per item: the norm of the item as one row.
    let shift = row_norms(c, OP, a, batch, 1, n * n)?;
    let shift_t = upload(c, OP, &[batch], &shift)?;
    let w = tensor(c, OP, DType::F32, &[batch, n, n])?;
    copy(c, OP, a, w.id(), batch, n, n, [n * n, n, 1], [n * n, n, 1])?;
    layout(
        c,
        OP,
        "shift",
        a,
        w.id(),
        shift_t.id(),
        batch * n,
        Params::default()
            .u(batch)
            .u(n)
            .u(n)
            .u(0)
            .u(0)
            .u(0)
            .u(n * n)
            .u(n)
            .u(0),
    )?;
    let v = tensor(c, OP, DType::F32, &[batch, n, n])?;
    eye(c, OP, v.id(), batch, n, n)?;
    let sweeps = jacobi(c, OP, w.id(), v.id(), batch, n, n)?;
    let norms = row_norms(c, OP, w.id(), batch, n, n)?;
    let (orders, aux) = selection(&norms, batch, n, n, |_| 1.0);
    let mut values = Vec::with_capacity(batch * n);
    for (b, order) in orders.iter().enumerate() {
        values.extend(order.iter().map(|&j| norms[b * n + j] - shift[b]));
    }
    let vectors = tensor(c, OP, DType::F32, &[batch, n, n])?;
    gather(c, OP, v.id(), vectors.id(), &aux, batch, n, n, n, true)?;
    let values = upload(c, OP, &[batch, n], &values)?;
    Ok(Eigen {
        values,
        vectors,
        sweeps,
    })
}

// ---------------------------------------------------------------------------------------------
// QR

/// The thin Householder QR of each of the `batch` m×n matrices in `a`.
pub fn qr<'c>(
    c: &'c dyn Compute,
    a: GpuTensor,
    batch: usize,
    m: usize,
    n: usize,
) -> Result<Qr<'c>> {
    const OP: &str = "linalg_qr";
    check_input(c, OP, a, batch, m, n)?;
    let k = m.min(n);
    let work = tensor(c, OP, DType::F32, &[batch, m, n])?;
    copy(
        c,
        OP,
        a,
        work.id(),
        batch,
        m,
        n,
        [m * n, n, 1],
        [m * n, n, 1],
    )?;
    let vh = tensor(c, OP, DType::F32, &[batch, k, m])?;
    let tau = tensor(c, OP, DType::F32, &[batch, k])?;
    let step = |mat: GpuTensor,
                width: usize,
                j: usize,
                entry: &str,
                col0: usize,
                count: usize|
     -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        dispatch(
            c,
            OP,
            QR,
            entry,
            &[
                Binding::write(mat),
                Binding::write(vh.id()),
                Binding::write(tau.id()),
            ],
            Params::default().u(batch).u(m).u(width).u(k).u(j).u(col0),
            [count as u32, batch as u32, 1],
        )
    };
    for j in 0..k {
        step(work.id(), n, j, "house", 0, 1)?;
        step(work.id(), n, j, "apply", j + 1, n - j - 1)?;
    }
    let q = tensor(c, OP, DType::F32, &[batch, m, k])?;
    eye(c, OP, q.id(), batch, m, k)?;
    for j in (0..k).rev() {
        step(q.id(), k, j, "apply", j, k - j)?;
    }
    let r = tensor(c, OP, DType::F32, &[batch, k, n])?;
    copy(
        c,
        OP,
        work.id(),
        r.id(),
        batch,
        k,
        n,
        [m * n, n, 1],
        [k * n, n, 1],
    )?;
    Ok(Qr { q, r })
}

// ---------------------------------------------------------------------------------------------
// LU

fn lu_bindings(lu: &Lu<'_>, status: GpuTensor, x: GpuTensor) -> [Binding; 4] {
    [
        Binding::write(lu.lu.id()),
        Binding::write(lu.piv.id()),
        Binding::write(status),
        Binding::write(x),
    ]
}

fn grid(c: &dyn Compute, op: &str, items: usize) -> Result<[u32; 3]> {
    fusion_plugin_api::kernel::dispatch_1d(&c.limits(), items as u64, REDUCE_WG)
        .map_err(NnError::compute(op.to_string()))
}

/// The LU factorization with partial pivoting of each of the `batch` n×n matrices in `a`; a
/// singular matrix (a zero pivot) is an error naming it.
pub fn lu<'c>(c: &'c dyn Compute, a: GpuTensor, batch: usize, n: usize) -> Result<Lu<'c>> {
    const OP: &str = "linalg_lu";
    check_input(c, OP, a, batch, n, n)?;
    let out = Lu {
        lu: tensor(c, OP, DType::F32, &[batch, n, n])?,
        piv: tensor(c, OP, DType::U32, &[batch, n])?,
        n,
        batch,
    };
    copy(
        c,
        OP,
        a,
        out.lu.id(),
        batch,
        n,
        n,
        [n * n, n, 1],
        [n * n, n, 1],
    )?;
    let status = tensor(c, OP, DType::U32, &[batch])?;
    let unused = tensor(c, OP, DType::F32, &[1])?;
    let bindings = lu_bindings(&out, status.id(), unused.id());
    for k in 0..n {
        let params = || Params::default().u(batch).u(n).u(k).u(0);
        dispatch(
            c,
            OP,
            LU,
            "pivot",
            &bindings,
            params(),
            [1, batch as u32, 1],
        )?;
        let side = n - k - 1;
        if side > 0 {
            dispatch(
                c,
                OP,
                LU,
                "update",
                &bindings,
                params(),
                grid(c, OP, side * side * batch)?,
            )?;
        }
    }
    let flags = read_u32(c, OP, status.id())?;
    if let Some((b, &k)) = flags.iter().enumerate().find(|(_, &k)| k != 0) {
        return Err(NnError::input(
            OP,
            format!(
                "matrix {b} of the batch ({n}x{n}) is singular: column {} has no nonzero pivot",
                k - 1
            ),
        ));
    }
    Ok(out)
}

/// Solves A X = B for each item, from A's [`lu`]: `rhs` holds `batch` n×nrhs matrices; the
/// result is a new tensor of the same layout.
pub fn lu_solve<'c>(
    c: &'c dyn Compute,
    lu: &Lu<'c>,
    rhs: GpuTensor,
    nrhs: usize,
) -> Result<DeviceTensor<'c>> {
    const OP: &str = "linalg_solve";
    let (n, batch) = (lu.n, lu.batch);
    check_input(c, OP, rhs, batch, n, nrhs)?;
    let x = tensor(c, OP, DType::F32, &[batch, n, nrhs])?;
    copy(
        c,
        OP,
        rhs,
        x.id(),
        batch,
        n,
        nrhs,
        [n * nrhs, nrhs, 1],
        [n * nrhs, nrhs, 1],
    )?;
    let status = tensor(c, OP, DType::U32, &[batch])?;
    dispatch(
        c,
        OP,
        LU,
        "solve",
        &lu_bindings(lu, status.id(), x.id()),
        Params::default().u(batch).u(n).u(0).u(nrhs),
        grid(c, OP, nrhs * batch)?,
    )?;
    Ok(x)
}

/// Solves A X = B for each of the `batch` n×n matrices in `a` and n×nrhs right-hand sides in
/// `rhs`; a singular A is an error.
pub fn solve<'c>(
    c: &'c dyn Compute,
    a: GpuTensor,
    rhs: GpuTensor,
    batch: usize,
    n: usize,
    nrhs: usize,
) -> Result<DeviceTensor<'c>> {
    let f = lu(c, a, batch, n)?;
    lu_solve(c, &f, rhs, nrhs)
}

/// The inverse of each of the `batch` n×n matrices in `a`; a singular one is an error.
pub fn inverse<'c>(
    c: &'c dyn Compute,
    a: GpuTensor,
    batch: usize,
    n: usize,
) -> Result<DeviceTensor<'c>> {
    let f = lu(c, a, batch, n)?;
    let id = tensor(c, "linalg_inverse", DType::F32, &[batch, n, n])?;
    eye(c, "linalg_inverse", id.id(), batch, n, n)?;
    lu_solve(c, &f, id.id(), n)
}
