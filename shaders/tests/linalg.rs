//! The device linear algebra (`fusion_kernels::linalg`) on a real adapter (Mesa lavapipe here;
//! `FUSION_DEVICE` picks another) against plain f64 CPU references, on square, tall, wide,
//! rank-deficient and ill-conditioned matrices, batched.
//!
//! Tolerances. The kernels compute in f32 (ε = 2^-23 ≈ 1.2e-7). Each op is backward stable:
//! Jacobi rotations, Householder reflectors and partially pivoted elimination each commit an
//! error of a few ε relative to the matrix per step and a matrix of order N sees O(N) steps per
//! entry, so the bound used throughout is `TOL(N) = 10·N·ε` (N the larger dimension; 5.7e-5 for
//! N = 48), applied to:
//! - reconstructions (U·Σ·Vᵀ, V·Λ·Vᵀ, Q·R) relative to the matrix's largest entry, or its
//!   Frobenius norm for the eigendecomposition (whose shift is ‖A‖_F);
//! - orthogonality, max |QᵀQ − I|;
//! - singular values and eigenvalues, absolutely in units of σ₁ (‖A‖_F): a backward-stable
//!   method perturbs them by at most the backward error (Weyl), whatever the conditioning, so
//!   an ill-conditioned matrix's small values are checked to the same absolute bound;
//! - solves, by the residual |A·X − B| relative to ‖A‖_∞·‖X‖_∞, which backward stability bounds
//!   independently of the condition number; the solution itself is compared with the f64 one
//!   only for a well-conditioned matrix (forward error ≤ cond·backward error).

use std::sync::OnceLock;

use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use fusion_kernels::linalg;
use fusion_plugin_api::{Compute, DType, GpuTensor};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let choice = match std::env::var("FUSION_DEVICE") {
            Ok(s) => s.parse().expect("FUSION_DEVICE"),
            Err(_) => DeviceChoice::Cpu,
        };
        Runtime::new(&choice, RuntimeOptions::default()).unwrap_or_else(|e| {
            panic!(
                "GPU tests need a wgpu adapter; none could be opened for `{choice}` \
                 (install Mesa lavapipe or set FUSION_DEVICE): {e}"
            )
        })
    })
}

fn tol(n: usize) -> f64 {
    10.0 * n as f64 * f64::from(f32::EPSILON)
}

// ---------------------------------------------------------------------------------------------
// f64 matrices and references

#[derive(Clone, Debug)]
struct M {
    r: usize,
    c: usize,
    d: Vec<f64>,
}

impl M {
    fn zeros(r: usize, c: usize) -> M {
        M {
            r,
            c,
            d: vec![0.0; r * c],
        }
    }
    fn eye(n: usize) -> M {
        let mut m = M::zeros(n, n);
        (0..n).for_each(|i| m.d[i * n + i] = 1.0);
        m
    }
    fn at(&self, i: usize, j: usize) -> f64 {
        self.d[i * self.c + j]
    }
    fn t(&self) -> M {
        let mut o = M::zeros(self.c, self.r);
        for i in 0..self.r {
            for j in 0..self.c {
                o.d[j * self.r + i] = self.at(i, j);
            }
        }
        o
    }
    fn mul(&self, o: &M) -> M {
        assert_eq!(self.c, o.r);
        let mut out = M::zeros(self.r, o.c);
        for i in 0..self.r {
            for k in 0..self.c {
                let a = self.at(i, k);
                for j in 0..o.c {
                    out.d[i * o.c + j] += a * o.at(k, j);
                }
            }
        }
        out
    }
    fn scale_cols(&self, s: &[f64]) -> M {
        let mut o = self.clone();
        for row in o.d.chunks_mut(self.c) {
            row.iter_mut().zip(s).for_each(|(x, f)| *x *= f);
        }
        o
    }
    fn max_abs(&self) -> f64 {
        self.d.iter().fold(0.0, |a, &b| a.max(b.abs()))
    }
    fn fro(&self) -> f64 {
        self.d.iter().map(|x| x * x).sum::<f64>().sqrt()
    }
    fn inf_norm(&self) -> f64 {
        (0..self.r)
            .map(|i| (0..self.c).map(|j| self.at(i, j).abs()).sum::<f64>())
            .fold(0.0, f64::max)
    }
    fn diff(&self, o: &M) -> f64 {
        assert_eq!((self.r, self.c), (o.r, o.c));
        self.d
            .iter()
            .zip(&o.d)
            .fold(0.0, |a, (x, y)| a.max((x - y).abs()))
    }
    /// Rounded to f32 (what the device sees), back in f64.
    fn f32(&self) -> Vec<f32> {
        self.d.iter().map(|&x| x as f32).collect()
    }
    fn from_f32(r: usize, c: usize, v: &[f32]) -> M {
        M {
            r,
            c,
            d: v.iter().map(|&x| f64::from(x)).collect(),
        }
    }
    fn rounded(&self) -> M {
        M::from_f32(self.r, self.c, &self.f32())
    }
}

fn random(r: usize, c: usize, seed: u64) -> M {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let d = (0..r * c)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    M { r, c, d }
}

/// An orthonormal basis of the columns of a random r×c matrix (r ≥ c), by Gram–Schmidt twice.
fn orthonormal(r: usize, c: usize, seed: u64) -> M {
    let a = random(r, c, seed);
    let mut q = M::zeros(r, c);
    for j in 0..c {
        let mut v: Vec<f64> = (0..r).map(|i| a.at(i, j)).collect();
        for _ in 0..2 {
            for k in 0..j {
                let d: f64 = (0..r).map(|i| q.at(i, k) * v[i]).sum();
                (0..r).for_each(|i| v[i] -= d * q.at(i, k));
            }
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        (0..r).for_each(|i| q.d[i * c + j] = v[i] / n);
    }
    q
}

/// U·diag(s)·Vᵀ with random orthonormal U (r×k), V (c×k).
fn with_singular_values(r: usize, c: usize, s: &[f64], seed: u64) -> M {
    let k = s.len();
    orthonormal(r, k, seed)
        .scale_cols(s)
        .mul(&orthonormal(c, k, seed + 1000).t())
}

/// Singular values by one-sided Jacobi in f64 (descending).
fn ref_singular_values(a: &M) -> Vec<f64> {
    let a = if a.r >= a.c { a.clone() } else { a.t() };
    let (m, n) = (a.r, a.c);
    let mut w = a.t(); // rows = columns of a
    for _ in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (mut al, mut be, mut ga) = (0.0, 0.0, 0.0);
                for i in 0..m {
                    let (x, y) = (w.d[p * m + i], w.d[q * m + i]);
                    al += x * x;
                    be += y * y;
                    ga += x * y;
                }
                if ga == 0.0 || ga.abs() <= 1e-15 * (al * be).sqrt() {
                    continue;
                }
                rotated = true;
                let z = (be - al) / (2.0 * ga);
                let t = z.signum() / (z.abs() + (1.0 + z * z).sqrt());
                let cs = 1.0 / (1.0 + t * t).sqrt();
                let sn = cs * t;
                for i in 0..m {
                    let (x, y) = (w.d[p * m + i], w.d[q * m + i]);
                    w.d[p * m + i] = cs * x - sn * y;
                    w.d[q * m + i] = sn * x + cs * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut s: Vec<f64> = (0..n)
        .map(|j| (0..m).map(|i| w.d[j * m + i].powi(2)).sum::<f64>().sqrt())
        .collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

/// Eigenvalues of a symmetric matrix by the cyclic two-sided Jacobi method in f64 (descending).
fn ref_eigenvalues(a: &M) -> Vec<f64> {
    let n = a.r;
    let mut a = a.clone();
    for _ in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a.at(i, j).powi(2))
            .sum();
        if off <= 1e-30 * a.fro().powi(2) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a.at(p, q);
                if apq == 0.0 {
                    continue;
                }
                let theta = (a.at(q, q) - a.at(p, p)) / (2.0 * apq);
                let t = theta.signum().max(0.0) * 2.0 - 1.0;
                let t = t / (theta.abs() + (1.0 + theta * theta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a.at(k, p), a.at(k, q));
                    a.d[k * n + p] = c * akp - s * akq;
                    a.d[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a.at(p, k), a.at(q, k));
                    a.d[p * n + k] = c * apk - s * aqk;
                    a.d[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    let mut e: Vec<f64> = (0..n).map(|i| a.at(i, i)).collect();
    e.sort_by(|a, b| b.total_cmp(a));
    e
}

/// The solution of A X = B by Gaussian elimination with partial pivoting in f64.
fn ref_solve(a: &M, b: &M) -> M {
    let n = a.r;
    let (mut a, mut x) = (a.clone(), b.clone());
    for k in 0..n {
        let p = (k..n)
            .max_by(|&i, &j| a.at(i, k).abs().total_cmp(&a.at(j, k).abs()))
            .unwrap();
        for j in 0..n {
            a.d.swap(k * n + j, p * n + j);
        }
        for j in 0..x.c {
            x.d.swap(k * x.c + j, p * x.c + j);
        }
        for i in k + 1..n {
            let f = a.at(i, k) / a.at(k, k);
            for j in k..n {
                a.d[i * n + j] -= f * a.at(k, j);
            }
            for j in 0..x.c {
                x.d[i * x.c + j] -= f * x.at(k, j);
            }
        }
    }
    for i in (0..n).rev() {
        for j in 0..x.c {
            let mut s = x.at(i, j);
            for k in i + 1..n {
                s -= a.at(i, k) * x.at(k, j);
            }
            x.d[i * x.c + j] = s / a.at(i, i);
        }
    }
    x
}

fn orthogonality(q: &M) -> f64 {
    q.t().mul(q).diff(&M::eye(q.c))
}

// ---------------------------------------------------------------------------------------------
// Device helpers

fn upload_batch(c: &dyn Compute, items: &[M]) -> GpuTensor {
    let data: Vec<f32> = items.iter().flat_map(|m| m.f32()).collect();
    let (r, cc) = (items[0].r, items[0].c);
    c.create(
        DType::F32,
        &[items.len(), r, cc],
        Some(bytemuck::cast_slice(&data)),
    )
    .unwrap()
}

fn download(c: &dyn Compute, t: GpuTensor) -> Vec<f32> {
    c.read(t)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn split(v: &[f32], batch: usize, r: usize, c: usize) -> Vec<M> {
    (0..batch)
        .map(|b| M::from_f32(r, c, &v[b * r * c..(b + 1) * r * c]))
        .collect()
}

/// Checks the (truncated) SVD of a batch of matrices against the references; returns the
/// singular values.
fn check_svd(what: &str, items: &[M], rank: Option<usize>) -> Vec<Vec<f64>> {
    check_svd_with(what, items, rank, false)
}

/// [`check_svd`], through [`linalg::randomized_svd`] (default settings) when `randomized`.
fn check_svd_with(what: &str, items: &[M], rank: Option<usize>, randomized: bool) -> Vec<Vec<f64>> {
    let c: &dyn Compute = runtime();
    let (m, n) = (items[0].r, items[0].c);
    let k = m.min(n);
    let r = rank.unwrap_or(k);
    let a = upload_batch(c, items);
    let d = match rank {
        Some(r) if randomized => {
            linalg::randomized_svd(c, a, items.len(), m, n, r, &Default::default())
        }
        Some(r) => linalg::truncated_svd(c, a, items.len(), m, n, r),
        None => linalg::svd(c, a, items.len(), m, n),
    }
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let us = split(&download(c, d.u.id()), items.len(), m, r);
    let ss = split(&download(c, d.s.id()), items.len(), 1, r);
    let vts = split(&download(c, d.vt.id()), items.len(), r, n);
    c.release(a);
    let t = tol(m.max(n));
    let mut out = Vec::new();
    for (b, a) in items.iter().enumerate() {
        let a = a.rounded();
        let (u, s, vt) = (&us[b], &ss[b].d, &vts[b]);
        let want = ref_singular_values(&a);
        let s1 = want[0].max(f64::MIN_POSITIVE);
        for (i, (&got, &w)) in s.iter().zip(&want).enumerate() {
            assert!(
                (got - w).abs() <= t * s1,
                "{what} [{b}]: σ{i} = {got:e}, reference {w:e} (tolerance {:e})",
                t * s1
            );
        }
        assert!(
            s.windows(2).all(|w| w[0] >= w[1]),
            "{what} [{b}]: not descending: {s:?}"
        );
        let ou = orthogonality(u);
        let ov = orthogonality(&vt.t());
        assert!(
            ou <= t && ov <= t,
            "{what} [{b}]: orthogonality of U {ou:e}, of V {ov:e} (tolerance {t:e})"
        );
        let rec = u.scale_cols(s).mul(vt);
        if r == k {
            let err = rec.diff(&a) / a.max_abs().max(f64::MIN_POSITIVE);
            assert!(
                err <= t,
                "{what} [{b}]: reconstruction error {err:e} (tolerance {t:e})"
            );
        } else {
            // The best rank-r approximation: its error is the tail of the spectrum.
            let tail = want[r..].iter().map(|x| x * x).sum::<f64>().sqrt();
            let mut diff = rec.clone();
            diff.d.iter_mut().zip(&a.d).for_each(|(x, y)| *x -= y);
            assert!(
                (diff.fro() - tail).abs() <= t * a.fro(),
                "{what} [{b}]: rank-{r} error {:e}, tail {tail:e}",
                diff.fro()
            );
        }
        out.push(s.clone());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// SVD

#[test]
fn svd_square_tall_wide_and_batched() {
    check_svd("square 24x24", &[random(24, 24, 1)], None);
    check_svd("tall 40x12", &[random(40, 12, 2)], None);
    check_svd("wide 12x40", &[random(12, 40, 3)], None);
    check_svd("odd 13x13", &[random(13, 13, 4)], None);
    check_svd("row 1x7", &[random(1, 7, 5)], None);
    check_svd("column 7x1", &[random(7, 1, 6)], None);
    // One launch for three matrices, one of them a scaled copy of another.
    let a = random(30, 17, 7);
    let mut a3 = a.clone();
    a3.d.iter_mut().for_each(|x| *x *= 1000.0);
    let s = check_svd("batch of 3 30x17", &[a, random(30, 17, 8), a3], None);
    for (x, y) in s[0].iter().zip(&s[2]) {
        assert!((x * 1000.0 - y).abs() <= tol(30) * s[2][0], "{x} vs {y}");
    }
}

#[test]
fn svd_rank_deficient() {
    // rank 3: 17 (numerically) zero singular values, and U, V still orthonormal.
    let a = random(20, 3, 11).mul(&random(3, 12, 12));
    for m in [a.clone(), a.t()] {
        let s = &check_svd("rank 3", std::slice::from_ref(&m), None)[0];
        assert!(s[2] > 0.1, "{s:?}");
        assert!(s[3..].iter().all(|&x| x <= tol(20) * s[0]), "{s:?}");
    }
    // The zero matrix: all singular values zero, the factors orthonormal.
    let s = &check_svd("zero 6x4", &[M::zeros(6, 4)], None)[0];
    assert!(s.iter().all(|&x| x == 0.0));
}

#[test]
fn svd_ill_conditioned() {
    // σ from 1 to 1e-6 (condition 1e6): every value to the absolute bound; U and V orthonormal.
    let want: Vec<f64> = (0..16)
        .map(|i| 10f64.powf(-6.0 * i as f64 / 15.0))
        .collect();
    let a = with_singular_values(16, 16, &want, 21);
    check_svd("ill-conditioned 16x16", std::slice::from_ref(&a), None);
    let a = with_singular_values(30, 16, &want, 22);
    check_svd("ill-conditioned 30x16", &[a.clone(), a.t().t()], None);
}

#[test]
fn truncated_svd_and_its_bad_rank() {
    check_svd(
        "rank 5 of 30x20",
        &[random(30, 20, 31), random(30, 20, 32)],
        Some(5),
    );
    check_svd("rank 4 of 10x26", &[random(10, 26, 33)], Some(4));
    let c: &dyn Compute = runtime();
    let a = upload_batch(c, &[random(10, 6, 34)]);
    let err = linalg::truncated_svd(c, a, 1, 10, 6, 7)
        .err()
        .expect("rank 7 of a 10x6 matrix");
    assert!(
        err.to_string()
            .contains("rank 7 is larger than the 10x6 matrix allows (at most 6)"),
        "{err}"
    );
    let err = linalg::svd(c, a, 2, 10, 6)
        .err()
        .expect("two matrices in a tensor of one");
    assert!(err.to_string().contains("need 120 values"), "{err}");
    c.release(a);
}

// ---------------------------------------------------------------------------------------------
// Eigendecomposition

fn check_eigen(what: &str, items: &[M]) {
    let c: &dyn Compute = runtime();
    let n = items[0].r;
    let a = upload_batch(c, items);
    let e = linalg::symmetric_eigen(c, a, items.len(), n).unwrap_or_else(|e| panic!("{what}: {e}"));
    let vals = split(&download(c, e.values.id()), items.len(), 1, n);
    let vecs = split(&download(c, e.vectors.id()), items.len(), n, n);
    c.release(a);
    let t = tol(n);
    for (b, a) in items.iter().enumerate() {
        let a = a.rounded();
        let (l, v) = (&vals[b].d, &vecs[b]);
        let want = ref_eigenvalues(&a);
        let scale = a.fro().max(f64::MIN_POSITIVE);
        for (i, (&got, &w)) in l.iter().zip(&want).enumerate() {
            assert!(
                (got - w).abs() <= t * scale,
                "{what} [{b}]: λ{i} = {got:e}, reference {w:e}"
            );
        }
        let ov = orthogonality(v);
        assert!(ov <= t, "{what} [{b}]: orthogonality {ov:e}");
        let rec = v.scale_cols(l).mul(&v.t());
        let err = rec.diff(&a) / scale;
        assert!(
            err <= t,
            "{what} [{b}]: reconstruction {err:e} (tolerance {t:e})"
        );
    }
}

fn symmetric(n: usize, seed: u64) -> M {
    let a = random(n, n, seed);
    let mut s = a.clone();
    s.d.iter_mut().zip(&a.t().d).for_each(|(x, y)| *x += y);
    s
}

#[test]
fn symmetric_eigen_matches_jacobi() {
    check_eigen("indefinite 16", &[symmetric(16, 41), symmetric(16, 42)]);
    check_eigen("odd 21", &[symmetric(21, 43)]);
    // Repeated eigenvalues (3, 3, 3, -1, -1, 0 ...) and rank deficiency.
    let q = orthonormal(12, 12, 44);
    let l = [3.0, 3.0, 3.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    check_eigen("repeated 12", &[q.scale_cols(&l).mul(&q.t())]);
    // Ill-conditioned positive definite: eigenvalues 1 .. 1e-6.
    let l: Vec<f64> = (0..12)
        .map(|i| 10f64.powf(-6.0 * i as f64 / 11.0))
        .collect();
    check_eigen("ill-conditioned 12", &[q.scale_cols(&l).mul(&q.t())]);
    check_eigen("zero 5", &[M::zeros(5, 5)]);
}

// ---------------------------------------------------------------------------------------------
// QR

fn check_qr(what: &str, items: &[M]) {
    let c: &dyn Compute = runtime();
    let (m, n) = (items[0].r, items[0].c);
    let k = m.min(n);
    let a = upload_batch(c, items);
    let f = linalg::qr(c, a, items.len(), m, n).unwrap_or_else(|e| panic!("{what}: {e}"));
    let qs = split(&download(c, f.q.id()), items.len(), m, k);
    let rs = split(&download(c, f.r.id()), items.len(), k, n);
    c.release(a);
    let t = tol(m.max(n));
    for (b, a) in items.iter().enumerate() {
        let a = a.rounded();
        let (q, r) = (&qs[b], &rs[b]);
        let oq = orthogonality(q);
        assert!(oq <= t, "{what} [{b}]: orthogonality of Q {oq:e}");
        for i in 0..k {
            for j in 0..i.min(n) {
                assert_eq!(
                    r.at(i, j),
                    0.0,
                    "{what} [{b}]: R[{i}, {j}] below the diagonal"
                );
            }
        }
        let err = q.mul(r).diff(&a) / a.max_abs().max(f64::MIN_POSITIVE);
        assert!(err <= t, "{what} [{b}]: |QR − A| {err:e} (tolerance {t:e})");
        // |R_jj| is the distance of column j from the span of the previous ones.
        if a.c <= a.r {
            for (j, want) in column_distances(&a).into_iter().enumerate() {
                assert!(
                    (r.at(j, j).abs() - want).abs() <= t * a.fro(),
                    "{what} [{b}]: |R{j}{j}| = {}, reference {want}",
                    r.at(j, j).abs()
                );
            }
        }
    }
}

/// The distance of each column of `a` from the span of the columns before it, by Gram–Schmidt
/// (twice) in f64; columns at distance ~0 (dependent ones) join no basis.
fn column_distances(a: &M) -> Vec<f64> {
    let r = a.r;
    let mut basis: Vec<Vec<f64>> = Vec::new();
    let mut out = Vec::new();
    for j in 0..a.c {
        let mut v: Vec<f64> = (0..r).map(|i| a.at(i, j)).collect();
        for _ in 0..2 {
            for q in &basis {
                let d: f64 = q.iter().zip(&v).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(q).for_each(|(x, y)| *x -= d * y);
            }
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        out.push(n);
        if n > 1e-12 * a.fro() {
            basis.push(v.into_iter().map(|x| x / n).collect());
        }
    }
    out
}

#[test]
fn qr_square_tall_wide_rank_deficient() {
    check_qr("square 20", &[random(20, 20, 51), random(20, 20, 52)]);
    check_qr("tall 48x10", &[random(48, 10, 53)]);
    check_qr("wide 9x30", &[random(9, 30, 54)]);
    // rank 3 of 6 columns, and a zero column: Q stays orthonormal.
    let mut a = random(16, 3, 55).mul(&random(3, 6, 56));
    (0..16).for_each(|i| a.d[i * 6 + 4] = 0.0);
    check_qr("rank-deficient 16x6", &[a]);
    let want: Vec<f64> = (0..10).map(|i| 10f64.powf(-6.0 * i as f64 / 9.0)).collect();
    check_qr(
        "ill-conditioned 24x10",
        &[with_singular_values(24, 10, &want, 57)],
    );
}

// ---------------------------------------------------------------------------------------------
// LU, solve, inverse

fn check_solve(what: &str, items: &[M], rhs: &[M], well_conditioned: bool) {
    let c: &dyn Compute = runtime();
    let (n, k) = (items[0].r, rhs[0].c);
    let a = upload_batch(c, items);
    let b = upload_batch(c, rhs);
    let x = linalg::solve(c, a, b, items.len(), n, k).unwrap_or_else(|e| panic!("{what}: {e}"));
    let xs = split(&download(c, x.id()), items.len(), n, k);
    let inv = linalg::inverse(c, a, items.len(), n).unwrap_or_else(|e| panic!("{what}: {e}"));
    let invs = split(&download(c, inv.id()), items.len(), n, n);
    c.release(a);
    c.release(b);
    let t = tol(n);
    for (i, (a, bm)) in items.iter().zip(rhs).enumerate() {
        let (a, bm) = (a.rounded(), bm.rounded());
        for (label, x, b) in [
            ("solve", &xs[i], bm.clone()),
            ("inverse", &invs[i], M::eye(n)),
        ] {
            let res = a.mul(x).diff(&b) / (a.inf_norm() * x.inf_norm());
            assert!(
                res <= t,
                "{what} [{i}] {label}: residual {res:e} (tolerance {t:e})"
            );
            if well_conditioned {
                let want = ref_solve(&a, &b);
                let err = x.diff(&want) / want.max_abs();
                assert!(
                    err <= 100.0 * t,
                    "{what} [{i}] {label}: forward error {err:e}"
                );
            }
        }
    }
}

#[test]
fn lu_solve_and_inverse() {
    // Diagonally dominated: well conditioned.
    let mut a = random(24, 24, 61);
    (0..24).for_each(|i| a.d[i * 24 + i] += 24.0);
    check_solve(
        "well-conditioned 24",
        &[a, random(24, 24, 62)],
        &[random(24, 3, 63), random(24, 3, 64)],
        false,
    );
    let mut a = random(17, 17, 65);
    (0..17).for_each(|i| a.d[i * 17 + i] += 17.0);
    check_solve("dominant 17", &[a], &[random(17, 5, 66)], true);
    // A pivot-needing matrix: a zero leading entry.
    let mut a = random(8, 8, 67);
    a.d[0] = 0.0;
    check_solve("zero leading entry 8", &[a], &[random(8, 2, 68)], false);
    // Condition 1e4: the residual stays at the f32 bound.
    let want: Vec<f64> = (0..12)
        .map(|i| 10f64.powf(-4.0 * i as f64 / 11.0))
        .collect();
    check_solve(
        "ill-conditioned 12",
        &[with_singular_values(12, 12, &want, 69)],
        &[random(12, 2, 70)],
        false,
    );
}

#[test]
fn singular_matrices_are_named() {
    let c: &dyn Compute = runtime();
    // Item 1 of the batch has a zero third column.
    let good = {
        let mut a = random(5, 5, 71);
        (0..5).for_each(|i| a.d[i * 5 + i] += 5.0);
        a
    };
    let mut bad = random(5, 5, 72);
    (0..5).for_each(|i| bad.d[i * 5 + 2] = 0.0);
    let a = upload_batch(c, &[good, bad]);
    let err = linalg::inverse(c, a, 2, 5)
        .err()
        .expect("a singular matrix");
    assert!(
        err.to_string()
            .contains("matrix 1 of the batch (5x5) is singular: column 2 has no nonzero pivot"),
        "{err}"
    );
    c.release(a);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_linalg_kernel_validates() {
    for (name, source) in linalg::ALL {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(source)));
    }
}

#[test]
fn cpu_adapters_prefer_the_cpu() {
    let c: &dyn Compute = runtime();
    let device = linalg::prefer_device(c);
    if c.device_type() == fusion_plugin_api::DeviceType::Cpu {
        assert!(!device, "{} is a CPU adapter", c.device_name());
    }
}

// ---------------------------------------------------------------------------------------------
// Moderate sizes: many workgroups per matrix, past one workgroup's reach (the kernels hold the
// matrices in storage buffers, one workgroup per column pair / column / row block).

#[test]
fn svd_moderate_square_tall_wide() {
    check_svd("200x130", &[random(200, 130, 81)], None);
    check_svd("tall 513x64", &[random(513, 64, 82)], None);
    check_svd("wide 64x513", &[random(64, 513, 83)], None);
}

#[test]
fn svd_moderate_rank_deficient_ill_conditioned_batched() {
    // rank 20 of 150x90: 70 zero singular values, U and V still orthonormal.
    let a = random(150, 20, 84).mul(&random(20, 90, 85));
    let s = &check_svd("rank 20 of 150x90", std::slice::from_ref(&a), None)[0];
    assert!(s[19] > 1e-2 * s[0], "{s:?}");
    assert!(s[20..].iter().all(|&x| x <= tol(150) * s[0]), "{s:?}");
    // Condition 1e6.
    let want: Vec<f64> = (0..80)
        .map(|i| 10f64.powf(-6.0 * i as f64 / 79.0))
        .collect();
    check_svd(
        "ill-conditioned 120x80",
        &[with_singular_values(120, 80, &want, 86)],
        None,
    );
    // Square: the Jacobi iteration on A itself (no QR first).
    check_svd(
        "ill-conditioned 80x80",
        &[with_singular_values(80, 80, &want, 90)],
        None,
    );
    // One launch for three wide matrices, and a truncation of them.
    let batch = [
        random(60, 100, 87),
        random(60, 100, 88),
        random(60, 100, 89),
    ];
    check_svd("batch of 3 60x100", &batch, None);
    check_svd("rank 12 of 3 60x100", &batch, Some(12));
}

/// The randomized truncated SVD (rank ≪ min(m, n)) on spectra that decay past the rank (σᵢ =
/// 0.7^i; and an exactly low-rank matrix) meets the exact SVD's bounds: values, orthogonality,
/// and a rank-r error equal to the spectrum's tail.
#[test]
fn randomized_svd_of_decaying_spectra() {
    let decay = |k: usize| (0..k).map(|i| 0.7f64.powi(i as i32)).collect::<Vec<_>>();
    check_svd_with(
        "rank 8 of 200x120",
        &[with_singular_values(200, 120, &decay(120), 111)],
        Some(8),
        true,
    );
    check_svd_with(
        "rank 6 of 2 wide 80x200",
        &[
            with_singular_values(80, 200, &decay(80), 112),
            with_singular_values(80, 200, &decay(80), 113),
        ],
        Some(6),
        true,
    );
    // Rank 5 exactly: the sketch holds the whole range.
    let a = random(160, 5, 114).mul(&random(5, 100, 115));
    check_svd_with("rank 5 of rank-5 160x100", &[a], Some(5), true);
    let c: &dyn Compute = runtime();
    let a = upload_batch(c, &[random(10, 6, 116)]);
    let err = linalg::randomized_svd(c, a, 1, 10, 6, 0, &Default::default())
        .err()
        .expect("rank 0");
    assert!(
        err.to_string()
            .contains("rank 0 is outside 1..=6 for the 10x6 matrix"),
        "{err}"
    );
    c.release(a);
}

#[test]
fn qr_eigen_solve_moderate() {
    check_qr("tall 300x120", &[random(300, 120, 101)]);
    check_qr("wide 70x160", &[random(70, 160, 102)]);
    check_eigen("symmetric 100", &[symmetric(100, 103)]);
    let mut a = random(150, 150, 104);
    (0..150).for_each(|i| a.d[i * 150 + i] += 150.0);
    check_solve("dominant 150", &[a], &[random(150, 4, 105)], true);
}

// ---------------------------------------------------------------------------------------------
// Adam

/// The fused Adam step against torch's single-tensor Adam written out in f32 on the CPU, over
/// 257 values (past one workgroup) and five steps.
#[test]
fn adam_step_matches_torch_formulas() {
    let c: &dyn Compute = runtime();
    let count = 257;
    let r = |seed| random(1, count, seed).f32();
    let (mut x, p, q) = (r(91), r(92), r(93));
    let t = |v: &[f32]| {
        c.create(DType::F32, &[count], Some(bytemuck::cast_slice(v)))
            .unwrap()
    };
    let (tx, tp, tq) = (t(&x), t(&p), t(&q));
    let zeros = vec![0f32; count];
    let (tm1, tm2) = (t(&zeros), t(&zeros));
    let (mut m1, mut m2) = (zeros.clone(), zeros);
    let (lr, b1, b2, eps) = (1e-3f64, 0.9f64, 0.999f64, 1e-8f64);
    for step in 1..=5 {
        let h = linalg::AdamStep {
            lr,
            beta1: b1,
            beta2: b2,
            eps,
            step,
        };
        linalg::adam_step(c, tx, tm1, tm2, tp, tq, count, 2.0, &h).unwrap();
        let step_size = (lr / (1.0 - b1.powi(step as i32))) as f32;
        let bc2 = (1.0 - b2.powi(step as i32)).sqrt() as f32;
        for i in 0..count {
            let g = 2.0 * (p[i] - q[i]);
            m1[i] += (g - m1[i]) * (1.0 - b1) as f32;
            m2[i] = m2[i] * b2 as f32 + (1.0 - b2) as f32 * g * g;
            x[i] -= step_size * (m1[i] / (m2[i].sqrt() / bc2 + eps as f32));
        }
    }
    for (label, t, want) in [("x", tx, &x), ("m1", tm1, &m1), ("m2", tm2, &m2)] {
        let got = download(c, t);
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                "{label}[{i}]: {g} vs {w}"
            );
        }
    }
    let err = linalg::adam_step(
        c,
        tx,
        tm1,
        tm2,
        tp,
        tq,
        count + 1,
        2.0,
        &linalg::AdamStep {
            lr,
            beta1: b1,
            beta2: b2,
            eps,
            step: 1,
        },
    )
    .expect_err("one value too many");
    assert!(err.to_string().contains("fewer than the 258"), "{err}");
    for t in [tx, tp, tq, tm1, tm2] {
        c.release(t);
    }
}

// ---------------------------------------------------------------------------------------------
// Memory limits

/// The input check sizes a call by the device's largest storage binding: on a device clamped to
/// 64 KiB bindings two 100×100 f32 matrices (80 000 bytes) are refused with the batch that fits,
/// one 200×100 matrix as too large; `max_batch` says the same; the adapter's own limit takes a
/// 4096×14336 matrix (a 7B-class MLP weight) when it allows 235 MB bindings.
#[test]
fn memory_check_follows_the_binding_limit() {
    let clamped = Runtime::new(
        &DeviceChoice::Cpu,
        RuntimeOptions {
            clamp: fusion_gpu::LimitClamp {
                max_storage_binding_size: Some(64 * 1024),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let c: &dyn Compute = &clamped;
    assert_eq!(linalg::max_batch(c, 100, 100), 1);
    assert_eq!(linalg::max_batch(c, 200, 100), 0);
    let a = upload_batch(c, &[random(100, 100, 95), random(100, 100, 96)]);
    let err = linalg::svd(c, a, 2, 100, 100)
        .err()
        .expect("too large a batch");
    assert!(
        err.to_string()
            .contains("2 f32 matrices of 100x100 take 80000 bytes, more than the device's largest storage binding (65536 bytes); at most 1 fit in one call"),
        "{err}"
    );
    c.release(a);
    let big = c
        .create(DType::F32, &[1, 200, 100], None)
        .expect("an 80 000-byte buffer (bindings are clamped, buffers not)");
    let err = linalg::symmetric_eigen(c, big, 1, 200)
        .err()
        .expect("wrong shape");
    assert!(err.to_string().contains("need 40000 values"), "{err}");
    let err = linalg::svd(c, big, 1, 200, 100).err().expect("too large");
    assert!(
        err.to_string().contains(
            "one 200x100 f32 matrix takes 80000 bytes, more than the device's largest storage binding (65536 bytes): the matrix is too large for this device"
        ),
        "{err}"
    );
    c.release(big);
    let full: &dyn Compute = runtime();
    let limit = full.limits().max_storage_binding_size;
    assert_eq!(
        linalg::max_batch(full, 4096, 14336) >= 1,
        limit >= 4096 * 14336 * 4,
        "binding limit {limit}"
    );
}

/// Thousands of rotations per column must not drift the column norms: on random matrices
/// (through the QR first, and square) σ₁ within 1e-6 relative of the f64 reference and every
/// σ above 1e-3·σ₁ within 2e-5 relative (the plain rotation formula drifted all of them up by ~2e-5).
#[test]
fn svd_values_do_not_drift() {
    let c: &dyn Compute = runtime();
    for (m, n, seed) in [(300usize, 200usize, 121u64), (160, 160, 122)] {
        let a = random(m, n, seed);
        let t = upload_batch(c, std::slice::from_ref(&a));
        let d = linalg::svd(c, t, 1, m, n).unwrap();
        let s = download(c, d.s.id());
        c.release(t);
        let want = ref_singular_values(&a.rounded());
        let rel = |i: usize| (f64::from(s[i]) - want[i]).abs() / want[i];
        // (A random square matrix's smallest values sit at the noise floor.)
        let worst = (0..n)
            .filter(|&i| want[i] > 1e-3 * want[0])
            .map(rel)
            .fold(0f64, f64::max);
        assert!(
            rel(0) <= 1e-6 && worst <= 2e-5,
            "{m}x{n}: σ1 relative error {:e}, worst {worst:e}",
            rel(0)
        );
    }
}
