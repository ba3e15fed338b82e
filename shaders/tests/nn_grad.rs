//! The backward kernels of `fusion_kernels::nn` and the per-adapter kernel choice, on a real
//! adapter (Mesa lavapipe here; `FUSION_DEVICE` picks another):
//!
//! * plain CPU references in f64 (written here, after fusion-clip's `autograd`), each checked
//!   against central finite differences of its forward;
//! * every kernel against its reference over edge shapes (1 x 1, sizes off the tile, large k,
//!   several batches), for every gemm variant the adapter runs;
//! * the subgroup probe, the tuning cache (written, read back, overridden) and naga validation
//!   of the extension kernels;
//! * the forward products' fused epilogues (bias, quick_gelu / gelu, residual, in place too),
//!   for every gemm variant over the same edge shapes, and the configured kernel override.

use std::sync::OnceLock;

use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use fusion_kernels::nn::{
    self, Activation, Gemm, GemmEpilogue, GemmKernel, Matmul, MatmulGrads, Operand,
};
use fusion_plugin_api::{Compute, GpuTensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Set-up

fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let choice = match std::env::var("FUSION_DEVICE") {
            Ok(s) => s.parse().expect("FUSION_DEVICE"),
            Err(_) => DeviceChoice::Cpu,
        };
        Runtime::new(&choice, RuntimeOptions::default()).unwrap_or_else(|e| {
            panic!("GPU tests need a wgpu adapter (Mesa lavapipe, or set FUSION_DEVICE): {e}")
        })
    })
}

fn c() -> &'static dyn Compute {
    rt()
}

/// The gemm variants this adapter runs (registers and tiles everywhere WebGPU runs;
/// subgroups where the probe says so).
fn variants() -> Vec<GemmKernel> {
    let v: Vec<GemmKernel> = GemmKernel::ALL
        .into_iter()
        .filter(|k| k.supported(c()))
        .collect();
    assert!(v.contains(&GemmKernel::Registers) && v.contains(&GemmKernel::Tiled8));
    v
}

fn rand_vec(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `v` on the device (one zero for an empty `v`: a tensor holds at least one element).
fn upload(v: &[f64]) -> fusion_plugin_api::DeviceTensor<'static> {
    let data = if v.is_empty() { vec![0.0] } else { f32s(v) };
    nn::from_f32(c(), &[data.len()], &data).unwrap()
}

fn read(t: GpuTensor, n: usize) -> Vec<f64> {
    let mut v = f64s(&nn::read_f32(c(), t).unwrap());
    v.truncate(n);
    v
}

/// `got` within `rtol * (|want| + scale) ` of `want` everywhere, where `scale` is the largest
/// `|want|` (so cancellation near zero is judged against the size of the data).
#[track_caller]
fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64) {
    assert_close_floor(what, got, want, rtol, 1e-30)
}

/// [`assert_close`] with the scale at least `floor` (for outputs that are small differences
/// of larger terms).
#[track_caller]
fn assert_close_floor(what: &str, got: &[f64], want: &[f64], rtol: f64, floor: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(floor);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rtol * (w.abs() + scale);
        assert!(
            (g - w).abs() <= tol && g.is_finite(),
            "{what}: element {i}: got {g}, want {w} (tolerance {tol:e})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// CPU references (f64)

fn gemm_ref(g: &Gemm, a: &[f64], b: &[f64], out: &mut [f64]) {
    for z0 in 0..g.batch0 {
        for z1 in 0..g.batch1 {
            let at = |o: &Operand| o.offset + z0 * o.stride0 + z1 * o.stride1;
            let (ab, bb, cb) = (at(&g.a), at(&g.b), at(&g.c));
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut s = 0.0;
                    for kk in 0..g.k {
                        let av = if g.a_transposed {
                            a[ab + kk * g.a.ld + i]
                        } else {
                            a[ab + i * g.a.ld + kk]
                        };
                        let bv = if g.b_transposed {
                            b[bb + j * g.b.ld + kk]
                        } else {
                            b[bb + kk * g.b.ld + j]
                        };
                        s += av * bv;
                    }
                    let idx = cb + i * g.c.ld + j;
                    let mut v = f64::from(g.alpha) * s;
                    if g.accumulate {
                        v += f64::from(g.beta) * out[idx];
                    }
                    out[idx] = v;
                }
            }
        }
    }
}

/// `C = alpha A op(B)` for dense batches `[batch, m, k]`, B `[k, n]` (or `[n, k]`) shared
/// by all batches (a linear layer) when `shared_b`.
struct Mm {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    b_t: bool,
    shared_b: bool,
}

impl Mm {
    fn b_at(&self, b: &[f64], z: usize, kk: usize, j: usize) -> f64 {
        let base = if self.shared_b {
            0
        } else {
            z * self.k * self.n
        };
        if self.b_t {
            b[base + j * self.k + kk]
        } else {
            b[base + kk * self.n + j]
        }
    }
    fn b_len(&self) -> usize {
        self.k * self.n * if self.shared_b { 1 } else { self.batch }
    }
    fn forward(&self, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; self.batch * self.m * self.n];
        for z in 0..self.batch {
            for i in 0..self.m {
                for j in 0..self.n {
                    let s: f64 = (0..self.k)
                        .map(|kk| a[(z * self.m + i) * self.k + kk] * self.b_at(b, z, kk, j))
                        .sum();
                    c[(z * self.m + i) * self.n + j] = self.alpha * s;
                }
            }
        }
        c
    }
    /// (dA, dB) from dC, dB stored as B.
    fn backward(&self, a: &[f64], b: &[f64], dc: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let mut da = vec![0.0; a.len()];
        let mut db = vec![0.0; self.b_len()];
        for z in 0..self.batch {
            for i in 0..self.m {
                for j in 0..self.n {
                    let g = self.alpha * dc[(z * self.m + i) * self.n + j];
                    for kk in 0..self.k {
                        da[(z * self.m + i) * self.k + kk] += g * self.b_at(b, z, kk, j);
                        let base = if self.shared_b {
                            0
                        } else {
                            z * self.k * self.n
                        };
                        let bi = if self.b_t {
                            base + j * self.k + kk
                        } else {
                            base + kk * self.n + j
                        };
                        db[bi] += g * a[(z * self.m + i) * self.k + kk];
                    }
                }
            }
        }
        (da, db)
    }
    fn matmul(&self) -> Matmul {
        let b_ld = if self.b_t { self.k } else { self.n };
        let b_stride = if self.shared_b { 0 } else { self.k * self.n };
        Matmul {
            m: self.m,
            n: self.n,
            k: self.k,
            batch0: self.batch,
            batch1: 1,
            alpha: self.alpha as f32,
            a: Operand::batched(0, self.k, self.m * self.k, 0),
            b: Operand::batched(0, b_ld, b_stride, 0),
            b_transposed: self.b_t,
            c: Operand::batched(0, self.n, self.m * self.n, 0),
        }
    }
}

fn quick_gelu(x: f64) -> f64 {
    x / (1.0 + (-1.702 * x).exp())
}

fn quick_gelu_d(x: f64) -> f64 {
    let s = 1.0 / (1.0 + (-1.702 * x).exp());
    s + 1.702 * x * s * (1.0 - s)
}

/// erf to about 1e-13 for |x| <= 3 (Taylor series) and 1e-9 beyond (asymptotic erfc).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let v = if z <= 3.0 {
        let mut term = z;
        let mut sum = z;
        for n in 1..200 {
            term *= -z * z / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let x2 = z * z;
        let series = 1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2) - 15.0 / (8.0 * x2.powi(3))
            + 105.0 / (16.0 * x2.powi(4));
        1.0 - (-x2).exp() / (z * std::f64::consts::PI.sqrt()) * series
    };
    v.copysign(x)
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

fn gelu_d(x: f64) -> f64 {
    let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf + x * pdf
}

fn softmax(x: &[f64], cols: usize) -> Vec<f64> {
    let mut y = x.to_vec();
    for row in y.chunks_mut(cols) {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        row.iter_mut().for_each(|v| *v = (*v - m).exp());
        let s: f64 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    y
}

fn softmax_bwd(y: &[f64], dy: &[f64], cols: usize) -> Vec<f64> {
    let mut dx = vec![0.0; y.len()];
    for ((d, yr), gr) in dx.chunks_mut(cols).zip(y.chunks(cols)).zip(dy.chunks(cols)) {
        let dot: f64 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
        for ((o, &p), &g) in d.iter_mut().zip(yr).zip(gr) {
            *o = p * (g - dot);
        }
    }
    dx
}

fn layer_norm(x: &[f64], w: &[f64], b: &[f64], cols: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (yr, xr) in y.chunks_mut(cols).zip(x.chunks(cols)) {
        let n = cols as f64;
        let mean = xr.iter().sum::<f64>() / n;
        let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for j in 0..cols {
            yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
        }
    }
    y
}

/// (dx, dw, db)
fn layer_norm_bwd(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    cols: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; cols];
    let mut db = vec![0.0; cols];
    let n = cols as f64;
    for ((dxr, xr), gr) in dx.chunks_mut(cols).zip(x.chunks(cols)).zip(dy.chunks(cols)) {
        let mean = xr.iter().sum::<f64>() / n;
        let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let rstd = 1.0 / (var + eps).sqrt();
        let xh: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
        let mg = (0..cols).map(|j| gr[j] * w[j]).sum::<f64>() / n;
        let mgx = (0..cols).map(|j| gr[j] * w[j] * xh[j]).sum::<f64>() / n;
        for j in 0..cols {
            dxr[j] = rstd * (gr[j] * w[j] - mg - xh[j] * mgx);
            dw[j] += gr[j] * xh[j];
            db[j] += gr[j];
        }
    }
    (dx, dw, db)
}

/// (loss, dlogits)
fn cross_entropy_ref(z: &[f64], labels: &[u32], cols: usize) -> (f64, Vec<f64>) {
    let rows = labels.len();
    let p = softmax(z, cols);
    let mut loss = 0.0;
    let mut d = p.clone();
    for (r, &l) in labels.iter().enumerate() {
        loss -= p[r * cols + l as usize].ln();
        d[r * cols + l as usize] -= 1.0;
    }
    d.iter_mut().for_each(|v| *v /= rows as f64);
    (loss / rows as f64, d)
}

fn entropy_ref(z: &[f64], cols: usize, eps: f64) -> (f64, Vec<f64>) {
    let rows = z.len() / cols;
    let p = softmax(z, cols);
    let loss = -p.iter().map(|&q| q * (q + eps).ln()).sum::<f64>() / rows as f64;
    let h: Vec<f64> = p
        .iter()
        .map(|&q| -((q + eps).ln() + q / (q + eps)) / rows as f64)
        .collect();
    (loss, softmax_bwd(&p, &h, cols))
}

#[derive(Clone, Copy)]
struct Att {
    batch: usize,
    seq: usize,
    heads: usize,
    hd: usize,
    scale: f64,
}

impl Att {
    fn d(&self) -> usize {
        self.heads * self.hd
    }
    fn q(&self, qkv: &[f64], s: usize, i: usize, part: usize, h: usize, e: usize) -> f64 {
        let d = self.d();
        qkv[(s * self.seq + i) * 3 * d + part * d + h * self.hd + e]
    }
    /// (ctx [batch, seq, d], probs [batch, heads, seq, seq])
    fn forward(&self, qkv: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (seq, hd, d) = (self.seq, self.hd, self.d());
        let mut probs = vec![0.0; self.batch * self.heads * seq * seq];
        let mut ctx = vec![0.0; self.batch * seq * d];
        for s in 0..self.batch {
            for h in 0..self.heads {
                let p = &mut probs[(s * self.heads + h) * seq * seq..][..seq * seq];
                for i in 0..seq {
                    for j in 0..seq {
                        p[i * seq + j] = self.scale
                            * (0..hd)
                                .map(|e| self.q(qkv, s, i, 0, h, e) * self.q(qkv, s, j, 1, h, e))
                                .sum::<f64>();
                    }
                }
                let sm = softmax(p, seq);
                p.copy_from_slice(&sm);
                for i in 0..seq {
                    for e in 0..hd {
                        ctx[(s * seq + i) * d + h * hd + e] = (0..seq)
                            .map(|j| p[i * seq + j] * self.q(qkv, s, j, 2, h, e))
                            .sum();
                    }
                }
            }
        }
        (ctx, probs)
    }
    fn backward(&self, qkv: &[f64], probs: &[f64], dctx: &[f64]) -> Vec<f64> {
        let (seq, hd, d) = (self.seq, self.hd, self.d());
        let mut dqkv = vec![0.0; qkv.len()];
        for s in 0..self.batch {
            for h in 0..self.heads {
                let p = &probs[(s * self.heads + h) * seq * seq..][..seq * seq];
                let dc = |i: usize, e: usize| dctx[(s * seq + i) * d + h * hd + e];
                let at =
                    |i: usize, part: usize, e: usize| (s * seq + i) * 3 * d + part * d + h * hd + e;
                let mut dp = vec![0.0; seq * seq];
                for i in 0..seq {
                    for j in 0..seq {
                        dp[i * seq + j] = (0..hd).map(|e| dc(i, e) * qkv[at(j, 2, e)]).sum();
                    }
                }
                for j in 0..seq {
                    for e in 0..hd {
                        dqkv[at(j, 2, e)] = (0..seq).map(|i| p[i * seq + j] * dc(i, e)).sum();
                    }
                }
                let ds = softmax_bwd(p, &dp, seq);
                for i in 0..seq {
                    for e in 0..hd {
                        dqkv[at(i, 0, e)] = self.scale
                            * (0..seq)
                                .map(|j| ds[i * seq + j] * qkv[at(j, 1, e)])
                                .sum::<f64>();
                        dqkv[at(i, 1, e)] = self.scale
                            * (0..seq)
                                .map(|j| ds[j * seq + i] * qkv[at(j, 0, e)])
                                .sum::<f64>();
                    }
                }
            }
        }
        dqkv
    }
}

/// Central differences of `f` at `x` against `grad`, on up to 40 coordinates.
#[track_caller]
fn check_fd(what: &str, x: &[f64], grad: &[f64], f: impl Fn(&[f64]) -> f64) {
    let h = 1e-5;
    let step = (x.len() / 40).max(1);
    for i in (0..x.len()).step_by(step) {
        let mut xp = x.to_vec();
        xp[i] += h;
        let mut xm = x.to_vec();
        xm[i] -= h;
        let num = (f(&xp) - f(&xm)) / (2.0 * h);
        assert!(
            (num - grad[i]).abs() <= 1e-6 * (1.0 + num.abs()),
            "{what}: coordinate {i}: finite difference {num}, analytic {}",
            grad[i]
        );
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---------------------------------------------------------------------------------------------
// The references against finite differences

#[test]
fn cpu_references_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(7);
    // matmul, both B layouts, shared and per-batch B
    for (b_t, shared_b) in [(false, false), (true, true), (true, false), (false, true)] {
        let mm = Mm {
            batch: 2,
            m: 3,
            n: 4,
            k: 5,
            alpha: 0.7,
            b_t,
            shared_b,
        };
        let a = rand_vec(&mut rng, 2 * 3 * 5, 1.0);
        let b = rand_vec(&mut rng, mm.b_len(), 1.0);
        let w = rand_vec(&mut rng, 2 * 3 * 4, 1.0);
        let (da, db) = mm.backward(&a, &b, &w);
        check_fd("matmul dA", &a, &da, |a| dot(&mm.forward(a, &b), &w));
        check_fd("matmul dB", &b, &db, |b| dot(&mm.forward(&a, b), &w));
    }
    // activations
    let x = rand_vec(&mut rng, 40, 3.0);
    for (name, f, d) in [
        (
            "quick_gelu",
            quick_gelu as fn(f64) -> f64,
            quick_gelu_d as fn(f64) -> f64,
        ),
        ("gelu", gelu, gelu_d),
    ] {
        let w = rand_vec(&mut rng, x.len(), 1.0);
        let grad: Vec<f64> = x.iter().zip(&w).map(|(&v, &g)| g * d(v)).collect();
        check_fd(name, &x, &grad, |x| {
            x.iter().zip(&w).map(|(&v, &g)| g * f(v)).sum()
        });
    }
    // softmax, layer norm
    let (rows, cols) = (3, 7);
    let x = rand_vec(&mut rng, rows * cols, 2.0);
    let w = rand_vec(&mut rng, rows * cols, 1.0);
    let y = softmax(&x, cols);
    check_fd("softmax", &x, &softmax_bwd(&y, &w, cols), |x| {
        dot(&softmax(x, cols), &w)
    });
    let (gw, gb) = (rand_vec(&mut rng, cols, 1.0), rand_vec(&mut rng, cols, 1.0));
    let eps = 1e-5;
    let (dx, dgw, dgb) = layer_norm_bwd(&x, &gw, &w, cols, eps);
    check_fd("layer norm dx", &x, &dx, |x| {
        dot(&layer_norm(x, &gw, &gb, cols, eps), &w)
    });
    check_fd("layer norm dw", &gw, &dgw, |g| {
        dot(&layer_norm(&x, g, &gb, cols, eps), &w)
    });
    check_fd("layer norm db", &gb, &dgb, |b| {
        dot(&layer_norm(&x, &gw, b, cols, eps), &w)
    });
    // losses
    let labels = [2u32, 0, 6];
    let (_, d) = cross_entropy_ref(&x, &labels, cols);
    check_fd("cross entropy", &x, &d, |z| {
        cross_entropy_ref(z, &labels, cols).0
    });
    let (_, d) = entropy_ref(&x, cols, 1e-8);
    check_fd("entropy", &x, &d, |z| entropy_ref(z, cols, 1e-8).0);
    // attention
    let att = Att {
        batch: 2,
        seq: 3,
        heads: 2,
        hd: 2,
        scale: 0.6,
    };
    let qkv = rand_vec(&mut rng, 2 * 3 * 3 * 4, 1.0);
    let w = rand_vec(&mut rng, 2 * 3 * 4, 1.0);
    let (_, probs) = att.forward(&qkv);
    check_fd("attention", &qkv, &att.backward(&qkv, &probs, &w), |q| {
        dot(&att.forward(q).0, &w)
    });
}

// ---------------------------------------------------------------------------------------------
// The kernels against the references

fn run_gemm(kernel: GemmKernel, g: &Gemm, a: &[f64], b: &[f64], c0: &[f64]) -> Vec<f64> {
    let (ta, tb, tc) = (upload(a), upload(b), upload(c0));
    nn::gemm_with(kernel, c(), ta.id(), tb.id(), tc.id(), g).unwrap();
    read(tc.id(), c0.len())
}

fn gemm_cases() -> Vec<(String, Gemm, usize, usize, usize)> {
    let mut cases = Vec::new();
    // (name, gemm, len a, len b, len c)
    for (m, n, k) in [
        (1, 1, 1),
        (7, 13, 5),
        (33, 65, 17),
        (9, 11, 1100),
        (64, 64, 64),
        (3, 4, 0),
    ] {
        for (at, bt) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut g = Gemm::dense(m, n, k, at, bt);
            g.alpha = 0.5;
            cases.push((
                format!("{m}x{n}x{k} at={at} bt={bt}"),
                g,
                m * k,
                k * n,
                m * n,
            ));
        }
    }
    // Batched and strided: A and B inside wider buffers with offsets, C interleaved, and
    // accumulation.
    let (b0, b1, m, n, k) = (2, 3, 17, 10, 19);
    let g = Gemm {
        m,
        n,
        k,
        batch0: b0,
        batch1: b1,
        alpha: 1.25,
        beta: 0.5,
        accumulate: true,
        a: Operand::batched(5, k + 3, b1 * m * (k + 3), m * (k + 3)),
        a_transposed: false,
        b: Operand::batched(2, k, b1 * n * k, n * k),
        b_transposed: true,
        c: Operand::batched(1, b1 * n, m * b1 * n, n),
    };
    cases.push((
        "batched strided accumulate".into(),
        g,
        5 + b0 * b1 * m * (k + 3),
        2 + b0 * b1 * n * k,
        1 + b0 * m * b1 * n,
    ));
    let g = Gemm {
        a_transposed: true,
        a: Operand::batched(0, m, b1 * k * m, k * m),
        accumulate: false,
        ..g
    };
    cases.push((
        "batched transposed A".into(),
        g,
        b0 * b1 * k * m,
        2 + b0 * b1 * n * k,
        1 + b0 * m * b1 * n,
    ));
    cases
}

#[test]
fn gemm_variants_match_the_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for (name, g, la, lb, lc) in gemm_cases() {
        let a = rand_vec(&mut rng, la, 1.0);
        let b = rand_vec(&mut rng, lb, 1.0);
        let c0 = rand_vec(&mut rng, lc, 1.0);
        let mut want = c0.clone();
        gemm_ref(&g, &a, &b, &mut want);
        for kernel in variants() {
            let got = run_gemm(kernel, &g, &a, &b, &c0);
            assert_close(
                &format!("gemm {name} ({})", kernel.name()),
                &got,
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn matmul_backward_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(12);
    for (batch, m, n, k, b_t, shared_b) in [
        (1, 1, 1, 1, true, true),
        (3, 5, 7, 9, true, true),
        (2, 17, 33, 70, false, false),
        (2, 9, 3, 5, false, true),
        (1, 40, 70, 300, true, true),
    ] {
        let mm = Mm {
            batch,
            m,
            n,
            k,
            alpha: 0.75,
            b_t,
            shared_b,
        };
        let a = rand_vec(&mut rng, batch * m * k, 1.0);
        let b = rand_vec(&mut rng, mm.b_len(), 1.0);
        let dc = rand_vec(&mut rng, batch * m * n, 1.0);
        let (da_want, db_want) = mm.backward(&a, &b, &dc);
        let spec = mm.matmul();
        // The forward matches too (the layout is the one the backward assumes).
        let (ta, tb, tdc) = (upload(&a), upload(&b), upload(&dc));
        for kernel in variants() {
            for accumulate in [false, true] {
                let da0 = rand_vec(&mut rng, a.len(), 1.0);
                let db0 = rand_vec(&mut rng, b.len(), 1.0);
                let (tda, tdb) = (upload(&da0), upload(&db0));
                nn::matmul_backward_with(
                    kernel,
                    c(),
                    ta.id(),
                    tb.id(),
                    tdc.id(),
                    &spec,
                    MatmulGrads {
                        da: Some((tda.id(), spec.a)),
                        db: Some((tdb.id(), spec.b)),
                        accumulate,
                    },
                )
                .unwrap();
                let plus = |base: &[f64], d: &[f64]| -> Vec<f64> {
                    if accumulate {
                        base.iter().zip(d).map(|(x, y)| x + y).collect()
                    } else {
                        d.to_vec()
                    }
                };
                let what = format!(
                    "matmul backward {batch}x{m}x{n}x{k} b_t={b_t} shared={shared_b} acc={accumulate} ({})",
                    kernel.name()
                );
                assert_close(
                    &format!("{what} dA"),
                    &read(tda.id(), a.len()),
                    &plus(&da0, &da_want),
                    1e-5,
                );
                assert_close(
                    &format!("{what} dB"),
                    &read(tdb.id(), b.len()),
                    &plus(&db0, &db_want),
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn bias_grad_sums_columns() {
    let mut rng = StdRng::seed_from_u64(13);
    for (rows, cols) in [(1, 1), (1, 257), (1000, 3), (77, 257)] {
        let dy = rand_vec(&mut rng, rows * cols, 1.0);
        let want: Vec<f64> = (0..cols)
            .map(|j| (0..rows).map(|r| dy[r * cols + j]).sum())
            .collect();
        for accumulate in [false, true] {
            let db0 = rand_vec(&mut rng, cols, 1.0);
            let (tdy, tdb) = (upload(&dy), upload(&db0));
            nn::bias_grad(c(), tdy.id(), tdb.id(), rows, cols, accumulate).unwrap();
            let want: Vec<f64> = if accumulate {
                want.iter().zip(&db0).map(|(a, b)| a + b).collect()
            } else {
                want.clone()
            };
            assert_close(
                &format!("bias grad {rows}x{cols} acc={accumulate}"),
                &read(tdb.id(), cols),
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn activation_backward_matches_the_derivative() {
    let mut rng = StdRng::seed_from_u64(14);
    for n in [1, 1000, 4099] {
        let mut x = rand_vec(&mut rng, n, 4.0);
        if n > 8 {
            x[..6].copy_from_slice(&[-30.0, -9.0, 0.0, 9.0, 30.0, -0.0]);
        }
        let dy = rand_vec(&mut rng, n, 1.0);
        for (act, d) in [
            (Activation::QuickGelu, quick_gelu_d as fn(f64) -> f64),
            (Activation::Gelu, gelu_d),
        ] {
            let (tx, tdy) = (upload(&x), upload(&dy));
            nn::activation_backward(c(), tx.id(), tdy.id(), n, act).unwrap();
            let want: Vec<f64> = x.iter().zip(&dy).map(|(&v, &g)| g * d(v)).collect();
            let got = read(tdy.id(), n);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 2e-6 * (1.0 + w.abs()),
                    "{act:?} backward at x = {}: got {g}, want {w}",
                    x[i]
                );
            }
        }
    }
}

#[test]
fn softmax_backward_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(15);
    for (rows, cols) in [(1, 1), (3, 257), (5, 1000), (40, 7)] {
        let y = softmax(&rand_vec(&mut rng, rows * cols, 3.0), cols);
        let dy = rand_vec(&mut rng, rows * cols, 1.0);
        let (ty, tdy) = (upload(&y), upload(&dy));
        nn::softmax_backward(c(), ty.id(), tdy.id(), rows, cols).unwrap();
        assert_close(
            &format!("softmax backward {rows}x{cols}"),
            &read(tdy.id(), rows * cols),
            &softmax_bwd(&f64s(&f32s(&y)), &f64s(&f32s(&dy)), cols),
            1e-5,
        );
    }
}

#[test]
fn layer_norm_backward_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(16);
    for (rows, cols) in [(1, 1), (1, 2), (3, 257), (50, 768), (257, 5)] {
        let mut x = rand_vec(&mut rng, rows * cols, 2.0);
        // An offset mean, as hidden states have.
        x.iter_mut().for_each(|v| *v += 3.0);
        let (x, w) = (f64s(&f32s(&x)), f64s(&f32s(&rand_vec(&mut rng, cols, 1.5))));
        let dy = f64s(&f32s(&rand_vec(&mut rng, rows * cols, 1.0)));
        let eps = 1e-5;
        let (dx, dw, db) = layer_norm_bwd(&x, &w, &dy, cols, eps);
        for accumulate in [false, true] {
            let dx0 = rand_vec(&mut rng, rows * cols, 1.0);
            let dw0 = rand_vec(&mut rng, cols, 1.0);
            let db0 = rand_vec(&mut rng, cols, 1.0);
            let (tx, tw, tdy) = (upload(&x), upload(&w), upload(&dy));
            let (tdx, tdw, tdb) = (upload(&dx0), upload(&dw0), upload(&db0));
            nn::layer_norm_backward(
                c(),
                tx.id(),
                tw.id(),
                tdy.id(),
                nn::LayerNormGrads {
                    dx: tdx.id(),
                    dw: tdw.id(),
                    db: tdb.id(),
                    accumulate,
                },
                rows,
                cols,
                eps,
            )
            .unwrap();
            let plus = |base: &[f64], d: &[f64]| -> Vec<f64> {
                if accumulate {
                    base.iter().zip(d).map(|(x, y)| x + y).collect()
                } else {
                    d.to_vec()
                }
            };
            let what = format!("layer norm backward {rows}x{cols} acc={accumulate}");
            // dx is rstd times a difference of terms of size |dy w|: judged against that size
            // (for two columns it is zero up to eps, whatever x is).
            let rstd_max = x
                .chunks(cols)
                .map(|r| {
                    let mean = r.iter().sum::<f64>() / cols as f64;
                    let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
                    1.0 / (var + eps).sqrt()
                })
                .fold(0.0f64, f64::max);
            let gmax = (0..rows * cols)
                .map(|i| (dy[i] * w[i % cols]).abs())
                .fold(0.0f64, f64::max);
            assert_close_floor(
                &format!("{what} dx"),
                &read(tdx.id(), rows * cols),
                &plus(&dx0, &dx),
                1e-4,
                rstd_max * gmax,
            );
            assert_close(
                &format!("{what} dw"),
                &read(tdw.id(), cols),
                &plus(&dw0, &dw),
                1e-4,
            );
            assert_close(
                &format!("{what} db"),
                &read(tdb.id(), cols),
                &plus(&db0, &db),
                1e-5,
            );
        }
    }
}

#[test]
fn losses_match_the_reference() {
    let mut rng = StdRng::seed_from_u64(17);
    for (rows, cols) in [(1, 1), (7, 10), (3, 1000), (300, 8)] {
        let z = f64s(&f32s(&rand_vec(&mut rng, rows * cols, 5.0)));
        let labels: Vec<u32> = (0..rows)
            .map(|_| rng.random_range(0..cols as u32))
            .collect();
        let tz = upload(&z);
        let td = nn::zeros(c(), &[rows * cols]).unwrap();
        let loss = nn::cross_entropy(c(), tz.id(), &labels, td.id(), rows, cols).unwrap();
        let (want, dwant) = cross_entropy_ref(&z, &labels, cols);
        let what = format!("cross entropy {rows}x{cols}");
        assert!(
            (f64::from(loss) - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{what}: loss {loss}, want {want}"
        );
        assert_close(&what, &read(td.id(), rows * cols), &dwant, 1e-5);

        let loss = nn::entropy_loss(c(), tz.id(), td.id(), rows, cols, 1e-8).unwrap();
        let (want, dwant) = entropy_ref(&z, cols, 1e-8);
        let what = format!("entropy {rows}x{cols}");
        assert!(
            (f64::from(loss) - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{what}: loss {loss}, want {want}"
        );
        assert_close(&what, &read(td.id(), rows * cols), &dwant, 1e-4);
    }
    // Bad input is an error naming the culprit, not a panic.
    let tz = upload(&[0.0; 6]);
    let td = nn::zeros(c(), &[6]).unwrap();
    let e = nn::cross_entropy(c(), tz.id(), &[1, 3], td.id(), 2, 3).unwrap_err();
    assert!(e.to_string().contains("label 3 of row 1"), "{e}");
}

#[test]
fn attention_backward_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(18);
    for (batch, seq, heads, hd) in [(1, 1, 1, 1), (2, 5, 3, 4), (1, 17, 2, 8), (3, 50, 2, 16)] {
        let att = Att {
            batch,
            seq,
            heads,
            hd,
            scale: 1.0 / (hd as f64).sqrt(),
        };
        let d = heads * hd;
        let qkv = f64s(&f32s(&rand_vec(&mut rng, batch * seq * 3 * d, 1.0)));
        let (_, probs) = att.forward(&qkv);
        let probs = f64s(&f32s(&probs));
        let dctx = f64s(&f32s(&rand_vec(&mut rng, batch * seq * d, 1.0)));
        let want = att.backward(&qkv, &probs, &dctx);
        let (tq, tp, tc) = (upload(&qkv), upload(&probs), upload(&dctx));
        for kernel in variants() {
            let tout = nn::zeros(c(), &[qkv.len()]).unwrap();
            nn::attention_backward_with(
                kernel,
                c(),
                tq.id(),
                tp.id(),
                tc.id(),
                tout.id(),
                nn::AttentionShape {
                    batch,
                    seq,
                    heads,
                    head_dim: hd,
                    scale: att.scale as f32,
                },
            )
            .unwrap();
            assert_close(
                &format!(
                    "attention backward {batch}x{seq}x{heads}x{hd} ({})",
                    kernel.name()
                ),
                &read(tout.id(), qkv.len()),
                &want,
                1e-4,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-adapter choice

#[test]
fn subgroup_probe_agrees_with_the_adapter() {
    let report = rt().adapter();
    let size = nn::subgroup_size(c());
    println!(
        "adapter: {} ({}); SUBGROUP feature: {}; probed subgroup size: {size:?}",
        c().device_name(),
        report.driver_info,
        report.subgroups
    );
    // The probe works exactly when the adapter offers the feature (the runtime requests it).
    assert_eq!(size.is_some(), report.subgroups, "probe {size:?}");
    assert_eq!(
        GemmKernel::Subgroup.supported(c()),
        size.is_some(),
        "the subgroup gemm is offered exactly when subgroups work"
    );
}

#[test]
fn tuning_is_cached_read_back_and_overridden() {
    let dir = std::env::temp_dir().join(format!("fusion-kernels-tuning-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join(nn::TUNING_FILE);
    let key = nn::device_key(c());

    // First use: every variant the device runs is timed and the fastest is written.
    let tuned = nn::resolve_gemm_kernel(c(), None, Some(&dir), true).unwrap();
    assert_eq!(tuned.source, nn::ChoiceSource::Tuned);
    let timed: Vec<GemmKernel> = tuned.timings_ms.iter().map(|t| t.0).collect();
    assert_eq!(timed, variants(), "every supported variant is timed");
    let fastest = tuned
        .timings_ms
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
        .0;
    assert_eq!(tuned.kernel, fastest);
    println!(
        "tuned on {key}: {:?} -> {}",
        tuned.timings_ms,
        tuned.kernel.name()
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        doc["devices"][&key]["gemm"]["kernel"].as_str(),
        Some(tuned.kernel.name())
    );
    assert_eq!(
        doc["devices"][&key]["gemm"]["ms"]
            .as_object()
            .map(|m| m.len()),
        Some(timed.len())
    );

    // Read back: a choice planted in the file is used as it is, without timing.
    let planted = if tuned.kernel == GemmKernel::Tiled8 {
        GemmKernel::Registers
    } else {
        GemmKernel::Tiled8
    };
    let mut doc = doc;
    doc["devices"][&key]["gemm"]["kernel"] = serde_json::json!(planted.name());
    doc["devices"]["some other adapter [DiscreteGpu]"]["gemm"]["kernel"] =
        serde_json::json!("tiled16");
    std::fs::write(&file, serde_json::to_string(&doc).unwrap()).unwrap();
    let cached = nn::resolve_gemm_kernel(c(), None, Some(&dir), true).unwrap();
    assert_eq!(
        (cached.kernel, cached.source),
        (planted, nn::ChoiceSource::Cache)
    );
    assert!(cached.timings_ms.is_empty());

    // The override wins over the cache; `auto` defers to it; a bad name is an error.
    let over = nn::resolve_gemm_kernel(c(), Some("registers"), Some(&dir), true).unwrap();
    assert_eq!(
        (over.kernel, over.source),
        (GemmKernel::Registers, nn::ChoiceSource::Override)
    );
    let auto = nn::resolve_gemm_kernel(c(), Some("auto"), Some(&dir), true).unwrap();
    assert_eq!(auto.source, nn::ChoiceSource::Cache);
    let e = nn::resolve_gemm_kernel(c(), Some("fastest"), Some(&dir), true).unwrap_err();
    assert!(e.to_string().contains("`fastest` is not one of"), "{e}");

    // A damaged file is ignored and replaced after tuning; other adapters' entries survive a
    // retune.
    std::fs::write(&file, "{ not json").unwrap();
    let again = nn::resolve_gemm_kernel(c(), None, Some(&dir), true).unwrap();
    assert_eq!(again.source, nn::ChoiceSource::Tuned);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(doc["devices"][&key]["gemm"]["kernel"].is_string());

    // Without timing, the default for the device kind.
    let dir2 = dir.join("untuned");
    let plain = nn::resolve_gemm_kernel(c(), None, Some(&dir2), false).unwrap();
    assert_eq!(plain.source, nn::ChoiceSource::Default);
    assert_eq!(plain.kernel, nn::default_gemm_kernel(c()));
    assert!(!dir2.join(nn::TUNING_FILE).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn extension_kernels_validate_with_their_capabilities() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/nn/ext");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    files.sort();
    let mut listed: Vec<&str> = fusion_kernels::wgsl::nn::EXTENSIONS
        .iter()
        .map(|e| e.0)
        .collect();
    listed.sort();
    assert_eq!(files, listed, "src/nn/ext/*.wgsl vs wgsl::nn::EXTENSIONS");
    for (name, source, caps) in fusion_kernels::wgsl::nn::EXTENSIONS {
        // The shipped source ends with the file (the shared gemm parts come first).
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            source
                .replace("\r\n", "\n")
                .ends_with(&on_disk.replace("\r\n", "\n")),
            "{name}: the embedded source does not end with the file"
        );
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(source)));
        let caps = caps
            .split('|')
            .map(|c| {
                naga::valid::Capabilities::from_name(c.trim())
                    .unwrap_or_else(|| panic!("{name}: unknown capability {c}"))
            })
            .fold(naga::valid::Capabilities::empty(), |a, b| a | b);
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(source)));
        // And translates to SPIR-V (what wgpu hands a Vulkan driver), entry point by entry point
        // with the overrides at their defaults.
        for ep in &module.entry_points {
            let (m, i) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((ep.stage, &ep.name)),
                &Default::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: overrides of {}: {e}", ep.name));
            let options = naga::back::spv::Options {
                lang_version: (1, 6),
                ..Default::default()
            };
            let words = naga::back::spv::write_vec(
                &m,
                &i,
                &options,
                Some(&naga::back::spv::PipelineOptions {
                    shader_stage: ep.stage,
                    entry_point: ep.name.clone(),
                }),
            )
            .unwrap_or_else(|e| panic!("{name}: {} does not translate to SPIR-V: {e}", ep.name));
            assert!(words.len() > 100, "{name}: {}", ep.name);
            // FUSION_SPIRV_DUMP=<dir> keeps the binaries, for `spirv-val` by hand.
            if let Some(dir) = std::env::var_os("FUSION_SPIRV_DUMP") {
                let file = std::path::Path::new(&dir).join(format!("{}.spv", ep.name));
                std::fs::write(&file, bytemuck::cast_slice::<u32, u8>(&words)).unwrap();
            }
        }
        // And it needs them: without, validation fails (so the portable list stays portable).
        assert!(
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::empty()
            )
            .validate(&module)
            .is_err(),
            "{name} validates without {caps:?}; it belongs in src/nn/"
        );
    }
}

#[test]
fn precision_names_follow_fabric_precision() {
    use nn::Precision;
    for (v, want) in [
        ("32", Precision::F32),
        ("32-true", Precision::F32),
        ("16-mixed", Precision::Mixed16),
        ("bf16-mixed", Precision::MixedBf16),
        (" BF16-Mixed ", Precision::MixedBf16),
    ] {
        assert_eq!(Precision::parse(v).unwrap(), want, "{v}");
    }
    assert!(!Precision::F32.is_mixed() && Precision::Mixed16.is_mixed());
    let e = Precision::parse("64-true").unwrap_err();
    assert!(e.to_string().contains("`64-true` is not supported"), "{e}");
}

/// The tensor-core kernel is offered exactly where the adapter lists its shape (and then
/// matches a reference with f16-rounded operands); lavapipe lists none, so there this only
/// checks that it is not offered and that a mixed-precision run falls back to f32 kernels.
#[test]
fn cooperative_gemm_where_the_adapter_lists_it() {
    let report = rt().adapter();
    let available = GemmKernel::Cooperative.supported(c());
    println!(
        "cooperative matrices listed: {:?}; cooperative gemm available: {available}",
        report.cooperative_matrix
    );
    assert_eq!(available, report.cooperative_f16_16);
    assert!(!GemmKernel::ALL.contains(&GemmKernel::Cooperative));
    if !available {
        let (ta, tb, tc) = (upload(&[1.0; 4]), upload(&[1.0; 4]), upload(&[0.0; 4]));
        let e = nn::gemm_with(
            GemmKernel::Cooperative,
            c(),
            ta.id(),
            tb.id(),
            tc.id(),
            &Gemm::dense(2, 2, 2, false, false),
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not run"), "{e}");
        return;
    }
    let mut rng = StdRng::seed_from_u64(19);
    let half = |v: Vec<f64>| -> Vec<f64> {
        v.iter()
            .map(|&x| f64::from(half::f16::from_f64(x).to_f32()))
            .collect()
    };
    for (name, g, la, lb, lc) in gemm_cases() {
        let a = rand_vec(&mut rng, la, 1.0);
        let b = rand_vec(&mut rng, lb, 1.0);
        let c0 = rand_vec(&mut rng, lc, 1.0);
        let mut want = c0.clone();
        gemm_ref(&g, &half(a.clone()), &half(b.clone()), &mut want);
        let got = run_gemm(GemmKernel::Cooperative, &g, &a, &b, &c0);
        assert_close(&format!("cooperative gemm {name}"), &got, &want, 1e-4);
    }
}

// ---------------------------------------------------------------------------------------------
// The forward epilogues of gemm

fn act_ref(act: Option<Activation>, x: f64) -> f64 {
    match act {
        None => x,
        Some(Activation::QuickGelu) => quick_gelu(x),
        Some(Activation::Gelu) => gelu(x),
    }
}

/// Where an epilogue case's residual comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Residual {
    None,
    /// Its own tensor, laid out as C.
    Separate,
    /// The output itself (`x += f(x)`).
    InPlace,
}

#[derive(Clone, Copy, Debug)]
struct EpilogueCase {
    bias: bool,
    act: Option<Activation>,
    residual: Residual,
    accumulate: bool,
}

fn epilogue_cases() -> Vec<EpilogueCase> {
    let case = |bias, act, residual, accumulate| EpilogueCase {
        bias,
        act,
        residual,
        accumulate,
    };
    let (q, g) = (Some(Activation::QuickGelu), Some(Activation::Gelu));
    vec![
        case(true, None, Residual::None, false),
        case(true, q, Residual::None, false),
        case(true, g, Residual::None, false),
        case(false, g, Residual::None, true),
        case(false, None, Residual::Separate, false),
        case(true, q, Residual::Separate, true),
        case(true, None, Residual::InPlace, false),
        case(false, q, Residual::InPlace, true),
    ]
}

/// `C = act(alpha op(A) op(B) + bias) + R (+ beta C_old)` on every element the gemm writes:
/// the plain product from [`gemm_ref`], then the epilogue.
fn epilogue_ref(
    g: &Gemm,
    e: &EpilogueCase,
    a: &[f64],
    b: &[f64],
    bias: &[f64],
    r: &[f64],
    out: &mut [f64],
) {
    let old = out.to_vec();
    let mut product = out.to_vec();
    gemm_ref(
        &Gemm {
            accumulate: false,
            ..*g
        },
        a,
        b,
        &mut product,
    );
    for z0 in 0..g.batch0 {
        for z1 in 0..g.batch1 {
            let cb = g.c.offset + z0 * g.c.stride0 + z1 * g.c.stride1;
            for i in 0..g.m {
                for j in 0..g.n {
                    let idx = cb + i * g.c.ld + j;
                    let bias_j = bias.get(j).filter(|_| e.bias).copied().unwrap_or(0.0);
                    let mut v = product[idx] + bias_j;
                    v = act_ref(e.act, v);
                    v += match e.residual {
                        Residual::None => 0.0,
                        Residual::Separate => r[idx],
                        Residual::InPlace => old[idx],
                    };
                    if e.accumulate {
                        v += f64::from(g.beta) * old[idx];
                    }
                    out[idx] = v;
                }
            }
        }
    }
}

/// Every epilogue case on the shapes of [`gemm_cases`] (half of the cases per shape,
/// alternating, so each case meets every kind of shape: each combination is its own pipeline,
/// slow to build on a software adapter) with `kernel`; `round` is applied to A and B in the
/// reference (f16 rounding for the cooperative kernel).
fn check_epilogues(kernel: GemmKernel, round: &dyn Fn(f64) -> f64, rtol: f64) {
    let mut rng = StdRng::seed_from_u64(31);
    for (i, (name, g0, la, lb, lc)) in gemm_cases().into_iter().enumerate() {
        let cases = epilogue_cases().into_iter().enumerate();
        for (_, e) in cases.filter(|(j, _)| (i + j) % 2 == 0) {
            let g = Gemm {
                accumulate: e.accumulate,
                ..g0
            };
            let a = rand_vec(&mut rng, la, 1.0);
            let b = rand_vec(&mut rng, lb, 1.0);
            let bias = rand_vec(&mut rng, g.n, 1.0);
            let r = rand_vec(&mut rng, lc, 1.0);
            let c0 = rand_vec(&mut rng, lc, 1.0);
            let (ta, tb) = (upload(&a), upload(&b));
            let (tbias, tr, tc) = (upload(&bias), upload(&r), upload(&c0));
            let epi = GemmEpilogue {
                bias: e.bias.then(|| tbias.id()),
                activation: e.act,
                residual: match e.residual {
                    Residual::None => None,
                    Residual::Separate => Some(tr.id()),
                    Residual::InPlace => Some(tc.id()),
                },
            };
            nn::gemm_epilogue_with(kernel, c(), ta.id(), tb.id(), tc.id(), &g, &epi).unwrap();
            let got = read(tc.id(), lc);
            let ar: Vec<f64> = a.iter().map(|&v| round(v)).collect();
            let br: Vec<f64> = b.iter().map(|&v| round(v)).collect();
            let mut want = c0.clone();
            epilogue_ref(&g, &e, &ar, &br, &bias, &r, &mut want);
            assert_close(
                &format!("gemm {name} ({}) {e:?}", kernel.name()),
                &got,
                &want,
                rtol,
            );
        }
    }
}

#[test]
fn gemm_epilogues_match_the_reference_on_every_variant() {
    for kernel in variants() {
        check_epilogues(kernel, &|v| v, 1e-5);
    }
    // The tensor-core kernel where the adapter lists it (not lavapipe), with f16 operands.
    if GemmKernel::Cooperative.supported(c()) {
        let half = |v: f64| f64::from(half::f16::from_f64(v).to_f32());
        check_epilogues(GemmKernel::Cooperative, &half, 1e-4);
    }
}

#[test]
fn gemm_epilogue_checks_bias_and_residual_extents() {
    // nn.Linear with quick_gelu on the device's own kernel ...
    let (rows, in_dim, out_dim) = (6, 5, 4);
    let mut rng = StdRng::seed_from_u64(32);
    let x = rand_vec(&mut rng, rows * in_dim, 1.0);
    let w = rand_vec(&mut rng, out_dim * in_dim, 1.0);
    let bias = rand_vec(&mut rng, out_dim, 1.0);
    let (tx, tw, tbias) = (upload(&x), upload(&w), upload(&bias));
    let ty = upload(&[0.0; 24]);
    let g = Matmul::linear(rows, in_dim, out_dim).gemm();
    let epi = GemmEpilogue::linear(Some(tbias.id()), Some(Activation::QuickGelu));
    nn::gemm_epilogue(c(), tx.id(), tw.id(), ty.id(), &g, &epi).unwrap();
    let e = EpilogueCase {
        bias: true,
        act: Some(Activation::QuickGelu),
        residual: Residual::None,
        accumulate: false,
    };
    let mut want = vec![0.0; 24];
    epilogue_ref(&g, &e, &x, &w, &bias, &[], &mut want);
    assert_close("linear + quick_gelu", &read(ty.id(), 24), &want, 1e-5);
    // ... and a bias or residual too short for the product is an error naming it.
    let short = upload(&[0.0; 2]);
    let epi = GemmEpilogue::linear(Some(short.id()), None);
    let err = nn::gemm_epilogue(c(), tx.id(), tw.id(), ty.id(), &g, &epi).unwrap_err();
    assert!(err.to_string().contains("bias"), "{err}");
    let epi = GemmEpilogue {
        residual: Some(short.id()),
        ..GemmEpilogue::default()
    };
    let err = nn::gemm_epilogue(c(), tx.id(), tw.id(), ty.id(), &g, &epi).unwrap_err();
    assert!(err.to_string().contains("residual"), "{err}");
}

#[test]
fn a_configured_gemm_kernel_overrides_the_choice() {
    // The only test that sets the process-wide override; the others name their kernel or
    // accept whichever the device uses.
    let e = nn::set_gemm_override("test.gemm_kernel", Some("fastest")).unwrap_err();
    assert!(
        e.to_string().contains("test.gemm_kernel") && e.to_string().contains("`fastest`"),
        "{e}"
    );
    assert_eq!(
        nn::set_gemm_override("test.gemm_kernel", Some(" Tiled8 ")).unwrap(),
        Some(GemmKernel::Tiled8)
    );
    assert_eq!(nn::gemm_kernel(c()).unwrap(), GemmKernel::Tiled8);
    assert_eq!(
        nn::set_gemm_override("test.gemm_kernel", Some("auto")).unwrap(),
        None
    );
    assert!(GemmKernel::ALL.contains(&nn::gemm_kernel(c()).unwrap()));
}
