//! The fused epilogues of `fusion_kernels::nn::gemm` (bias per output column, quick_gelu or
//! gelu, a residual tensor, an in-place residual, with alpha and beta) on a real adapter (Mesa
//! lavapipe here; `FUSION_DEVICE` picks another), for every gemm variant the adapter runs,
//! against a plain f64 CPU reference over edge shapes: 1 x 1, sizes off every tile, k = 0 and
//! k = 1, a long k, transposed operands, batched and strided operands. The cooperative-matrix
//! kernel is checked the same way (with f16-rounded operands) where the adapter lists it.

use std::sync::OnceLock;

use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use fusion_kernels::nn::{self, Activation, Gemm, GemmEpilogue, GemmKernel, Operand};
use fusion_plugin_api::{Compute, GpuTensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

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

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// `v` on the device (one zero for an empty `v`: a tensor holds at least one element).
fn upload(v: &[f64]) -> fusion_plugin_api::DeviceTensor<'static> {
    let data: Vec<f32> = if v.is_empty() {
        vec![0.0]
    } else {
        v.iter().map(|&x| x as f32).collect()
    };
    nn::from_f32(c(), &[data.len()], &data).unwrap()
}

fn read(t: GpuTensor, n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = nn::read_f32(c(), t)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    v.truncate(n);
    v
}

/// `got` within `rtol * (|want| + max |want|)` of `want` everywhere.
#[track_caller]
fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rtol * (w.abs() + scale);
        assert!(
            (g - w).abs() <= tol && g.is_finite(),
            "{what}: element {i}: got {g}, want {w} (tolerance {tol:e})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The reference

/// erf to about 1e-13 for |x| <= 3 (Taylor series) and 1e-9 beyond (asymptotic erfc).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let v = if z <= 3.0 {
        let (mut term, mut sum) = (z, z);
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

fn act_ref(act: Option<Activation>, x: f64) -> f64 {
    match act {
        None => x,
        Some(Activation::QuickGelu) => x / (1.0 + (-1.702 * x).exp()),
        Some(Activation::Gelu) => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
    }
}

/// What an epilogue case binds: its residual is a separate tensor, the output itself, or none.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Residual {
    None,
    Separate,
    InPlace,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    bias: bool,
    act: Option<Activation>,
    residual: Residual,
    accumulate: bool,
}

/// `C = act(alpha op(A) op(B) + bias) + R (+ beta C_old)`, in f64, for every element the gemm
/// writes; `r` is laid out as C (for an in-place residual, `r` is `c_old`).
fn reference(g: &Gemm, e: &Case, a: &[f64], b: &[f64], bias: &[f64], r: &[f64], out: &mut [f64]) {
    let old = out.to_vec();
    for z0 in 0..g.batch0 {
        for z1 in 0..g.batch1 {
            let at = |o: &Operand| o.offset + z0 * o.stride0 + z1 * o.stride1;
            let (ab, bb, cb) = (at(&g.a), at(&g.b), at(&g.c));
            for i in 0..g.m {
                for j in 0..g.n {
                    let s: f64 = (0..g.k)
                        .map(|kk| {
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
                            av * bv
                        })
                        .sum();
                    let idx = cb + i * g.c.ld + j;
                    let mut v = f64::from(g.alpha) * s;
                    if e.bias {
                        v += bias[j];
                    }
                    v = act_ref(e.act, v);
                    match e.residual {
                        Residual::None => {}
                        Residual::Separate => v += r[idx],
                        Residual::InPlace => v += old[idx],
                    }
                    if e.accumulate {
                        v += f64::from(g.beta) * old[idx];
                    }
                    out[idx] = v;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

/// (name, gemm, elements of A, B, C): dense shapes with each transposition, then batched and
/// strided ones.
fn shapes() -> Vec<(String, Gemm, usize, usize, usize)> {
    let mut out = Vec::new();
    let trans = [(false, true), (false, false), (true, false), (true, true)];
    for (i, (m, n, k)) in [
        (1, 1, 1),
        (7, 13, 5),
        (33, 65, 17),
        (5, 9, 1),
        (3, 4, 0),
        (9, 70, 300),
    ]
    .into_iter()
    .enumerate()
    {
        let (at, bt) = trans[i % trans.len()];
        let mut g = Gemm::dense(m, n, k, at, bt);
        g.alpha = 0.75;
        out.push((
            format!("{m}x{n}x{k} at={at} bt={bt}"),
            g,
            m * k,
            k * n,
            m * n,
        ));
    }
    // Attention-like: C interleaved in a wider buffer with an offset, B transposed and offset,
    // A in rows padded by 3.
    let (b0, b1, m, n, k) = (2, 3, 17, 10, 19);
    let g = Gemm {
        m,
        n,
        k,
        batch0: b0,
        batch1: b1,
        alpha: 1.25,
        beta: 0.5,
        accumulate: false,
        a: Operand::batched(5, k + 3, b1 * m * (k + 3), m * (k + 3)),
        a_transposed: false,
        b: Operand::batched(2, k, b1 * n * k, n * k),
        b_transposed: true,
        c: Operand::batched(1, b1 * n, m * b1 * n, n),
    };
    out.push((
        "batched strided".into(),
        g,
        5 + b0 * b1 * m * (k + 3),
        2 + b0 * b1 * n * k,
        1 + b0 * m * b1 * n,
    ));
    // A shared weight (batch strides 0 for B), A transposed: the patch embedding's form.
    let g = Gemm {
        a_transposed: true,
        a: Operand::batched(0, m, b1 * k * m, k * m),
        b: Operand::rows(k),
        ..g
    };
    out.push((
        "batched transposed A, shared B".into(),
        g,
        b0 * b1 * k * m,
        n * k,
        1 + b0 * m * b1 * n,
    ));
    out
}

fn cases() -> Vec<Case> {
    let case = |bias, act, residual, accumulate| Case {
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

/// Runs every epilogue case on every shape with `kernel`; `round` is applied to A and B in the
/// reference (f16 rounding for the cooperative kernel).
fn check_kernel(kernel: GemmKernel, round: &dyn Fn(f64) -> f64, rtol: f64) {
    let mut rng = StdRng::seed_from_u64(31);
    // Half of the epilogue cases per shape, alternating, so every case meets several shapes
    // (each combination is its own pipeline, slow to compile on a software adapter).
    for (i, (name, g0, la, lb, lc)) in shapes().into_iter().enumerate() {
        for (_, e) in cases()
            .into_iter()
            .enumerate()
            .filter(|(j, _)| (i + j) % 2 == 0)
        {
            let g = Gemm {
                accumulate: e.accumulate,
                ..g0
            };
            let a = rand_vec(&mut rng, la);
            let b = rand_vec(&mut rng, lb);
            let bias = rand_vec(&mut rng, g.n);
            let r = rand_vec(&mut rng, lc);
            let c0 = rand_vec(&mut rng, lc);
            let (ta, tb, tbias, tr, tc) = (
                upload(&a),
                upload(&b),
                upload(&bias),
                upload(&r),
                upload(&c0),
            );
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
            reference(&g, &e, &ar, &br, &bias, &r, &mut want);
            assert_close(
                &format!("gemm {name} ({}) {e:?}", kernel.name()),
                &got,
                &want,
                rtol,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn epilogues_match_the_reference_on_every_variant() {
    let variants: Vec<GemmKernel> = GemmKernel::ALL
        .into_iter()
        .filter(|k| k.supported(c()))
        .collect();
    assert!(variants.contains(&GemmKernel::Registers) && variants.contains(&GemmKernel::Tiled8));
    println!("variants on {}: {variants:?}", c().device_name());
    for kernel in variants {
        check_kernel(kernel, &|v| v, 1e-5);
    }
}

/// Where the adapter lists 16 x 16 f16 cooperative matrices (not lavapipe), the tensor-core
/// kernel's epilogue matches the reference with f16-rounded operands.
#[test]
fn cooperative_epilogues_where_the_adapter_lists_them() {
    if !GemmKernel::Cooperative.supported(c()) {
        println!(
            "{}: no cooperative matrices, nothing to check",
            c().device_name()
        );
        return;
    }
    let half = |v: f64| f64::from(half::f16::from_f64(v).to_f32());
    check_kernel(GemmKernel::Cooperative, &half, 1e-4);
}

#[test]
fn the_default_kernel_runs_epilogues() {
    // nn::gemm_epilogue with the device's chosen kernel: nn.Linear with quick_gelu.
    let (rows, in_dim, out_dim) = (6, 5, 4);
    let x: Vec<f64> = (0..rows * in_dim)
        .map(|i| (i % 7) as f64 * 0.25 - 0.5)
        .collect();
    let w: Vec<f64> = (0..out_dim * in_dim)
        .map(|i| (i % 5) as f64 * 0.2 - 0.4)
        .collect();
    let bias = [0.1, -0.2, 0.3, -0.4];
    let (tx, tw, tbias, ty) = (
        upload(&x),
        upload(&w),
        upload(&bias),
        upload(&vec![0.0; rows * out_dim]),
    );
    let g = nn::Matmul::linear(rows, in_dim, out_dim).gemm();
    let epi = GemmEpilogue::linear(Some(tbias.id()), Some(Activation::QuickGelu));
    nn::gemm_epilogue(c(), tx.id(), tw.id(), ty.id(), &g, &epi).unwrap();
    let got = read(ty.id(), rows * out_dim);
    let want: Vec<f64> = (0..rows * out_dim)
        .map(|e| {
            let (i, j) = (e / out_dim, e % out_dim);
            let s: f64 = (0..in_dim)
                .map(|k| x[i * in_dim + k] * w[j * in_dim + k])
                .sum();
            act_ref(Some(Activation::QuickGelu), s + bias[j])
        })
        .collect();
    assert_close("linear + quick_gelu", &got, &want, 1e-5);
}

#[test]
fn short_bias_or_residual_is_an_error_naming_it() {
    let g = Gemm::dense(4, 3, 2, false, false);
    let (ta, tb, tc) = (upload(&[0.0; 8]), upload(&[0.0; 6]), upload(&[0.0; 12]));
    let short = upload(&[0.0; 2]);
    let epi = GemmEpilogue::linear(Some(short.id()), None);
    let e = nn::gemm_epilogue(c(), ta.id(), tb.id(), tc.id(), &g, &epi).unwrap_err();
    assert!(e.to_string().contains("bias"), "{e}");
    let epi = GemmEpilogue {
        residual: Some(short.id()),
        ..GemmEpilogue::default()
    };
    let e = nn::gemm_epilogue(c(), ta.id(), tb.id(), tc.id(), &g, &epi).unwrap_err();
    assert!(e.to_string().contains("residual"), "{e}");
}

#[test]
fn a_configured_kernel_overrides_the_choice() {
    // Only this test sets the process-wide override; the others name their kernel or accept
    // whichever the device uses.
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
