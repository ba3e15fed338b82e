//! Every nn kernel (`shaders/src/nn/*.wgsl`, launched by `fusion_kernels::nn`) on a real adapter
//! (Mesa lavapipe by default; `FUSION_DEVICE` picks another) against a plain CPU
//! implementation, over sizes that include 1, 255, 256, 257 and odd non-multiples of the
//! 64 x 64 matmul tile. A second runtime with clamped limits (8 workgroups per dimension, 64
//! invocations per workgroup) drives the 8 x 8 matmul variant and the x/y/z spreading of every
//! launch on small data; one test dispatches a full ViT-B/32 batch-128 MLP activation
//! (128 x 50 x 3072 values) on the unclamped device.

use std::sync::OnceLock;

mod common;

use common::open;
use fusion_clip::Activation;
use fusion_gpu::{LimitClamp, Runtime, RuntimeOptions};
use fusion_kernels::nn::{
    self as ops, GemmKernel, Matmul, Operand, PatchGeometry, RowLayout, SoftmaxMask,
};
use fusion_plugin_api::Compute;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Matrix products with k up to ~300 of values in [-1, 1]: f32 accumulation error stays near
/// 1e-5.
const MATMUL_TOL: f32 = 1e-4;
/// Row kernels (softmax, layer norm) and activations: a few f32 roundings per value.
const ROW_TOL: f32 = 2e-5;

fn full() -> &'static Runtime {
    common::device()
}

fn clamped() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        open(RuntimeOptions {
            clamp: LimitClamp {
                max_workgroups_per_dimension: Some(8),
                max_invocations_per_workgroup: Some(64),
                ..Default::default()
            },
            ..Default::default()
        })
    })
}

fn runtimes() -> [(&'static str, &'static dyn Compute); 2] {
    [("full", full()), ("clamped", clamped())]
}

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn assert_close(what: &str, actual: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let d = (a - e).abs();
        assert!(!d.is_nan(), "{what}: NaN at {i} (got {a}, expected {e})");
        if d > worst {
            (worst, at) = (d, i);
        }
    }
    assert!(
        worst <= tol,
        "{what}: max abs diff {worst} at {at} (got {}, expected {}) > {tol}",
        actual[at],
        expected[at]
    );
}

// ---------------------------------------------------------------------------------------------
// Matrix product

/// The CPU reference of `ops::matmul`, accumulating in f64.
fn matmul_ref(a: &[f32], b: &[f32], bias: Option<&[f32]>, c: &mut [f32], mm: &Matmul) {
    for z0 in 0..mm.batch0 {
        for z1 in 0..mm.batch1 {
            let ab = mm.a.offset + z0 * mm.a.stride0 + z1 * mm.a.stride1;
            let bb = mm.b.offset + z0 * mm.b.stride0 + z1 * mm.b.stride1;
            let cb = mm.c.offset + z0 * mm.c.stride0 + z1 * mm.c.stride1;
            for i in 0..mm.m {
                for j in 0..mm.n {
                    let mut s = 0.0f64;
                    for k in 0..mm.k {
                        let bv = if mm.b_transposed {
                            b[bb + j * mm.b.ld + k]
                        } else {
                            b[bb + k * mm.b.ld + j]
                        };
                        s += f64::from(a[ab + i * mm.a.ld + k]) * f64::from(bv);
                    }
                    let v = mm.alpha * s as f32 + bias.map_or(0.0, |b| b[j]);
                    c[cb + i * mm.c.ld + j] = v;
                }
            }
        }
    }
}

fn run_matmul(
    kernel: GemmKernel,
    c: &dyn Compute,
    mm: &Matmul,
    with_bias: bool,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (brows, bcols) = if mm.b_transposed {
        (mm.n, mm.k)
    } else {
        (mm.k, mm.n)
    };
    let extent = |o: &Operand, rows: usize, cols: usize| {
        o.offset
            + (mm.batch0 - 1) * o.stride0
            + (mm.batch1 - 1) * o.stride1
            + (rows - 1) * o.ld
            + cols
    };
    let a = random(&mut rng, extent(&mm.a, mm.m, mm.k), 1.0);
    let b = random(&mut rng, extent(&mm.b, brows, bcols), 1.0);
    let bias = with_bias.then(|| random(&mut rng, mm.n, 1.0));
    // C starts random so the test also catches writes outside the tile and missed elements.
    let mut expected = random(&mut rng, extent(&mm.c, mm.m, mm.n), 1.0);
    let ga = ops::from_f32(c, &[a.len()], &a).unwrap();
    let gb = ops::from_f32(c, &[b.len()], &b).unwrap();
    let gbias = bias
        .as_ref()
        .map(|v| ops::from_f32(c, &[v.len()], v).unwrap());
    let gc = ops::from_f32(c, &[expected.len()], &expected).unwrap();
    ops::matmul_with(
        kernel,
        c,
        ga.id(),
        gb.id(),
        gbias.as_ref().map(|t| t.id()),
        gc.id(),
        mm,
    )
    .unwrap();
    matmul_ref(&a, &b, bias.as_deref(), &mut expected, mm);
    (gc.to_f32().unwrap(), expected)
}

/// Every gemm kernel the runtime runs is checked on every shape, whichever the device would
/// pick.
fn kernels(c: &dyn Compute) -> Vec<GemmKernel> {
    GemmKernel::ALL
        .into_iter()
        .filter(|k| k.supported(c))
        .collect()
}

#[test]
fn matmul_matches_cpu_over_edge_shapes() {
    let shapes = [
        (1, 1, 1),
        (1, 257, 255),
        (255, 1, 257),
        (256, 256, 16),
        (257, 255, 33),
        (67, 129, 300),
        (50, 50, 64),
    ];
    for (name, c) in runtimes() {
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            for transposed in [true, false] {
                for with_bias in [true, false] {
                    let ld_b = if transposed { k } else { n };
                    let mm = Matmul {
                        m,
                        n,
                        k,
                        batch0: 1,
                        batch1: 1,
                        alpha: 1.0,
                        a: Operand::rows(k),
                        b: Operand::rows(ld_b),
                        b_transposed: transposed,
                        c: Operand::rows(n),
                    };
                    for kernel in kernels(c) {
                        let (got, want) = run_matmul(kernel, c, &mm, with_bias, i as u64);
                        assert_close(
                            &format!(
                                "{name} {kernel:?} matmul {m}x{n}x{k} transposed={transposed} \
                                 bias={with_bias}"
                            ),
                            &got,
                            &want,
                            MATMUL_TOL,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn batched_strided_matmul_matches_cpu() {
    // Attention's shapes: per (sequence, head), Q K^T from a fused [rows, 3D] buffer, then P V
    // into the context rows; odd sizes, padding between rows, and an offset output.
    let (batch, heads, seq, hd) = (3, 2, 37, 24);
    let d = heads * hd;
    let qk = Matmul {
        m: seq,
        n: seq,
        k: hd,
        batch0: batch,
        batch1: heads,
        alpha: 0.125,
        a: Operand::batched(0, 3 * d, seq * 3 * d, hd),
        b: Operand::batched(d, 3 * d, seq * 3 * d, hd),
        b_transposed: true,
        c: Operand::batched(0, seq, heads * seq * seq, seq * seq),
    };
    let pv = Matmul {
        m: seq,
        n: hd,
        k: seq,
        batch0: batch,
        batch1: heads,
        alpha: 1.0,
        a: Operand::batched(0, seq, heads * seq * seq, seq * seq),
        b: Operand::batched(2 * d, 3 * d, seq * 3 * d, hd),
        b_transposed: false,
        c: Operand::batched(5, d + 3, seq * (d + 3), hd),
    };
    for (name, c) in runtimes() {
        for (what, mm) in [("qk", &qk), ("pv", &pv)] {
            for kernel in kernels(c) {
                let (got, want) = run_matmul(kernel, c, mm, false, 7);
                assert_close(
                    &format!("{name} {kernel:?} batched {what}"),
                    &got,
                    &want,
                    MATMUL_TOL,
                );
            }
        }
    }
}

#[test]
fn matmul_rejects_out_of_range_operands() {
    let c = full();
    let a = ops::zeros(c, &[4, 5]).unwrap();
    let w = ops::zeros(c, &[3, 4]).unwrap();
    let out = ops::zeros(c, &[4, 3]).unwrap();
    let err = ops::matmul(c, a.id(), w.id(), None, out.id(), &Matmul::linear(4, 5, 3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("matmul") && err.contains("[3, 4]"), "{err}");
}

#[test]
fn copy_into_stacks_tensors_at_offsets() {
    let mut rng = StdRng::seed_from_u64(15);
    for (name, c) in runtimes() {
        for n in [1usize, 255, 256, 257, 3000] {
            let parts: Vec<Vec<f32>> = (0..3).map(|_| random(&mut rng, n, 1.0)).collect();
            // One spare value at each end: the copies touch exactly their ranges.
            let mut want = vec![7.0f32; 3 * n + 2];
            let dst = ops::from_f32(c, &[want.len()], &want).unwrap();
            for (i, p) in parts.iter().enumerate() {
                let src = ops::from_f32(c, &[n], p).unwrap();
                ops::copy_into(c, src.id(), dst.id(), 1 + i * n, n).unwrap();
                want[1 + i * n..][..n].copy_from_slice(p);
            }
            assert_close(
                &format!("{name} copy_into n = {n}"),
                &dst.to_f32().unwrap(),
                &want,
                0.0,
            );
        }
    }
    let c = full();
    let src = ops::zeros(c, &[4]).unwrap();
    let dst = ops::zeros(c, &[6]).unwrap();
    let err = ops::copy_into(c, src.id(), dst.id(), 3, 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dst") && err.contains("[6]"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Row kernels

fn layer_norm_ref(x: &[f32], w: &[f32], b: &[f32], l: RowLayout, eps: f64, y: &mut [f32]) {
    for r in 0..l.rows {
        let row = &x[l.in_offset + r * l.in_stride..][..l.cols];
        let n = l.cols as f64;
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let inv = 1.0 / (var + eps).sqrt();
        for j in 0..l.cols {
            y[r * l.out_stride + j] = ((f64::from(row[j]) - mean) * inv) as f32 * w[j] + b[j];
        }
    }
}

#[test]
fn layer_norm_matches_cpu() {
    let mut rng = StdRng::seed_from_u64(3);
    for (name, c) in runtimes() {
        for (rows, cols) in [(1, 1), (3, 255), (2, 256), (5, 257), (7, 768), (500, 3)] {
            for strided in [false, true] {
                let layout = if strided {
                    // Every third row, starting at row 1, into rows padded by 2.
                    RowLayout {
                        rows,
                        cols,
                        in_offset: cols,
                        in_stride: 3 * cols,
                        out_stride: cols + 2,
                    }
                } else {
                    RowLayout::dense(rows, cols)
                };
                let x_len = layout.in_offset + (rows - 1) * layout.in_stride + cols;
                // A large mean checks that the variance is not computed as E[x^2] - E[x]^2.
                let x: Vec<f32> = random(&mut rng, x_len, 2.0)
                    .iter()
                    .map(|v| v + 30.0)
                    .collect();
                let w = random(&mut rng, cols, 1.5);
                let b = random(&mut rng, cols, 0.5);
                let y_len = (rows - 1) * layout.out_stride + cols;
                let mut want = random(&mut rng, y_len, 1.0);
                let gy = ops::from_f32(c, &[y_len], &want).unwrap();
                let gx = ops::from_f32(c, &[x_len], &x).unwrap();
                let gw = ops::from_f32(c, &[cols], &w).unwrap();
                let gb = ops::from_f32(c, &[cols], &b).unwrap();
                ops::layer_norm(c, gx.id(), gw.id(), gb.id(), gy.id(), layout, 1e-5).unwrap();
                layer_norm_ref(&x, &w, &b, layout, 1e-5, &mut want);
                // Values near 30 keep ~2e-6 of absolute precision in f32; normalizing divides
                // by a std near 1.
                assert_close(
                    &format!("{name} layer_norm {rows}x{cols} strided={strided}"),
                    &gy.to_f32().unwrap(),
                    &want,
                    1e-4,
                );
            }
        }
    }
}

fn softmax_ref(
    x: &mut [f32],
    cols: usize,
    q_len: usize,
    heads: usize,
    causal: bool,
    mask: Option<&[u32]>,
) {
    for (r, row) in x.chunks_mut(cols).enumerate() {
        let (i, b) = (r % q_len, r / (heads * q_len));
        for (j, v) in row.iter_mut().enumerate() {
            let hidden = (causal && j > i) || mask.is_some_and(|m| m[b * cols + j] == 0);
            *v += if hidden { f32::MIN } else { 0.0 };
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += f64::from(*v);
        }
        for v in row.iter_mut() {
            *v = (f64::from(*v) / sum) as f32;
        }
    }
}

#[test]
fn softmax_with_masks_matches_cpu() {
    let mut rng = StdRng::seed_from_u64(5);
    for (name, c) in runtimes() {
        for cols in [1usize, 50, 77, 255, 256, 257] {
            let (batch, heads) = (2, 3);
            let q_len = cols.min(9);
            let rows = batch * heads * q_len;
            let x = random(&mut rng, rows * cols, 8.0);
            // Sequence 0 is all real tokens; sequence 1 ends in padding (keeps at least one).
            let mask: Vec<u32> = (0..batch * cols)
                .map(|i| u32::from(i < cols || i % cols <= (cols / 2)))
                .collect();
            let gmask = ops::from_u32(c, &[batch, cols], &mask).unwrap();
            for (causal, masked) in [(false, false), (true, false), (false, true), (true, true)] {
                let gx = ops::from_f32(c, &[rows, cols], &x).unwrap();
                let m = SoftmaxMask {
                    causal,
                    key_mask: masked.then(|| gmask.id()),
                };
                ops::softmax_rows(c, gx.id(), rows, cols, q_len, heads, m).unwrap();
                let mut want = x.clone();
                softmax_ref(
                    &mut want,
                    cols,
                    q_len,
                    heads,
                    causal,
                    masked.then_some(&mask[..]),
                );
                assert_close(
                    &format!("{name} softmax cols={cols} causal={causal} masked={masked}"),
                    &gx.to_f32().unwrap(),
                    &want,
                    ROW_TOL,
                );
            }
        }
    }
}

#[test]
fn fully_masked_rows_become_uniform() {
    let c = full();
    let x = vec![1.0, -2.0, 3.0, 0.5, 0.25, 4.0];
    let gx = ops::from_f32(c, &[2, 3], &x).unwrap();
    let mask = ops::from_u32(c, &[1, 3], &[0, 0, 0]).unwrap();
    let m = SoftmaxMask {
        causal: false,
        key_mask: Some(mask.id()),
    };
    ops::softmax_rows(c, gx.id(), 2, 3, 2, 1, m).unwrap();
    assert_close("all masked", &gx.to_f32().unwrap(), &[1.0 / 3.0; 6], 1e-6);
}

#[test]
fn row_kernels_spread_rows_past_the_dispatch_limit() {
    // 70000 rows: more workgroups than one dimension holds on any WebGPU device (65535).
    let c = full();
    let (rows, cols) = (70_000, 3);
    let mut rng = StdRng::seed_from_u64(9);
    let x = random(&mut rng, rows * cols, 4.0);
    let gx = ops::from_f32(c, &[rows, cols], &x).unwrap();
    ops::softmax_rows(c, gx.id(), rows, cols, 1, 1, SoftmaxMask::default()).unwrap();
    let mut want = x.clone();
    softmax_ref(&mut want, cols, 1, 1, false, None);
    assert_close("softmax 70000 rows", &gx.to_f32().unwrap(), &want, ROW_TOL);

    let (w, b) = (vec![1.0, 2.0, 3.0], vec![0.0, 0.5, -0.5]);
    let gw = ops::from_f32(c, &[3], &w).unwrap();
    let gb = ops::from_f32(c, &[3], &b).unwrap();
    let gx = ops::from_f32(c, &[rows, cols], &x).unwrap();
    let gy = ops::zeros(c, &[rows, cols]).unwrap();
    let layout = RowLayout::dense(rows, cols);
    ops::layer_norm(c, gx.id(), gw.id(), gb.id(), gy.id(), layout, 1e-5).unwrap();
    let mut want = vec![0.0; rows * cols];
    layer_norm_ref(&x, &w, &b, layout, 1e-5, &mut want);
    assert_close("layer_norm 70000 rows", &gy.to_f32().unwrap(), &want, 1e-4);
}

// ---------------------------------------------------------------------------------------------
// Elementwise kernels

#[test]
fn activations_match_cpu() {
    let mut rng = StdRng::seed_from_u64(11);
    for (name, c) in runtimes() {
        for n in [1usize, 255, 256, 257, 20_001] {
            let mut x = random(&mut rng, n, 10.0);
            // The tails: overflowing exponentials and exact zeros.
            x[0] = -100.0;
            if n > 2 {
                x[1] = 0.0;
                x[2] = 100.0;
            }
            for act in [Activation::QuickGelu, Activation::Gelu] {
                let g = ops::from_f32(c, &[n], &x).unwrap();
                ops::activation(c, g.id(), n, act.into()).unwrap();
                let want: Vec<f32> = x.iter().map(|&v| act.apply(v)).collect();
                let got = g.to_f32().unwrap();
                // Relative in the linear tail (x up to 100), absolute near zero.
                let scaled: Vec<f32> = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w) / (1.0 + w.abs()))
                    .collect();
                assert_close(
                    &format!("{name} {act:?} n={n}"),
                    &scaled,
                    &vec![0.0; n],
                    ROW_TOL,
                );
            }
        }
    }
}

#[test]
fn vit_b32_batch_128_mlp_activation_dispatches() {
    // fc1's output at batch 128: 128 images x 50 tokens x 3072 = 19.7M values, more
    // invocations than 65535 workgroups of 256 hold along x.
    let c = full();
    let n = 128 * 50 * 3072;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i % 2001) as f32 - 1000.0) * 0.004)
        .collect();
    let g = ops::from_f32(c, &[128 * 50, 3072], &x).unwrap();
    ops::activation(c, g.id(), n, Activation::QuickGelu.into()).unwrap();
    let got = g.to_f32().unwrap();
    // Every value, including the last ones that only y-spread workgroups reach.
    let want: Vec<f32> = x.iter().map(|&v| Activation::QuickGelu.apply(v)).collect();
    assert_close("quick_gelu 128x50x3072", &got, &want, ROW_TOL);
}

#[test]
fn add_matches_cpu() {
    let mut rng = StdRng::seed_from_u64(13);
    for (name, c) in runtimes() {
        for n in [1usize, 255, 256, 257, 30_001] {
            let (x, y) = (random(&mut rng, n, 3.0), random(&mut rng, n, 3.0));
            let gx = ops::from_f32(c, &[n], &x).unwrap();
            let gy = ops::from_f32(c, &[n], &y).unwrap();
            ops::add_inplace(c, gx.id(), gy.id(), n).unwrap();
            let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
            assert_close(
                &format!("{name} add n={n}"),
                &gx.to_f32().unwrap(),
                &want,
                0.0,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings and patches

#[test]
fn embedding_lookups_match_cpu() {
    let mut rng = StdRng::seed_from_u64(17);
    for (name, c) in runtimes() {
        for (vocab, dim, batch, seq) in [(1, 1, 1, 1), (300, 257, 3, 5), (1000, 32, 7, 77)] {
            let table = random(&mut rng, vocab * dim, 1.0);
            let pos = random(&mut rng, seq * dim, 1.0);
            let rows = batch * seq;
            let ids: Vec<u32> = (0..rows)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            let gt = ops::from_f32(c, &[vocab, dim], &table).unwrap();
            let gp = ops::from_f32(c, &[seq, dim], &pos).unwrap();
            let gi = ops::from_u32(c, &[rows], &ids).unwrap();
            let out = ops::zeros(c, &[rows, dim]).unwrap();
            ops::gather_rows(c, gt.id(), gi.id(), out.id(), rows).unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&i| table[i as usize * dim..][..dim].to_vec())
                .collect();
            assert_close(
                &format!("{name} gather {vocab}x{dim}"),
                &out.to_f32().unwrap(),
                &want,
                0.0,
            );

            ops::token_position_embed(c, gt.id(), gi.id(), gp.id(), out.id(), rows, seq).unwrap();
            let want: Vec<f32> = ids
                .iter()
                .enumerate()
                .flat_map(|(r, &i)| {
                    let p = &pos[(r % seq) * dim..][..dim];
                    table[i as usize * dim..][..dim]
                        .iter()
                        .zip(p)
                        .map(|(t, p)| t + p)
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_close(
                &format!("{name} token+position {vocab}x{dim}"),
                &out.to_f32().unwrap(),
                &want,
                0.0,
            );
        }
    }
}

#[test]
fn patch_embedding_kernels_match_cpu() {
    let mut rng = StdRng::seed_from_u64(19);
    for (name, c) in runtimes() {
        for g in [
            PatchGeometry {
                batch: 1,
                channels: 1,
                image: 1,
                patch: 1,
            },
            PatchGeometry {
                batch: 2,
                channels: 3,
                image: 12,
                patch: 4,
            },
            PatchGeometry {
                batch: 3,
                channels: 3,
                image: 35,
                patch: 7,
            },
        ] {
            let (b, ch, s, p, grid) = (g.batch, g.channels, g.image, g.patch, g.grid());
            let pixels = random(&mut rng, b * ch * s * s, 1.0);
            let gpx = ops::from_f32(c, &[b, ch, s, s], &pixels).unwrap();
            let patches = ops::zeros(c, &[g.patches(), g.patch_len()]).unwrap();
            ops::im2col(c, gpx.id(), patches.id(), g).unwrap();
            let mut want = Vec::new();
            for bi in 0..b {
                for py in 0..grid {
                    for px in 0..grid {
                        for ci in 0..ch {
                            for y in 0..p {
                                for x in 0..p {
                                    want.push(
                                        pixels[((bi * ch + ci) * s + py * p + y) * s + px * p + x],
                                    );
                                }
                            }
                        }
                    }
                }
            }
            assert_close(
                &format!("{name} im2col {g:?}"),
                &patches.to_f32().unwrap(),
                &want,
                0.0,
            );

            let (positions, dim) = (grid * grid + 1, 5);
            let hidden = random(&mut rng, b * positions * dim, 1.0);
            let class = random(&mut rng, dim, 1.0);
            let pos = random(&mut rng, positions * dim, 1.0);
            let gh = ops::from_f32(c, &[b, positions, dim], &hidden).unwrap();
            let gc = ops::from_f32(c, &[dim], &class).unwrap();
            let gp = ops::from_f32(c, &[positions, dim], &pos).unwrap();
            ops::class_position(c, gh.id(), gc.id(), gp.id(), b, positions, dim).unwrap();
            let want: Vec<f32> = (0..b * positions * dim)
                .map(|i| {
                    let (d, t) = (i % dim, (i / dim) % positions);
                    let base = if t == 0 { class[d] } else { hidden[i] };
                    base + pos[t * dim + d]
                })
                .collect();
            assert_close(
                &format!("{name} class_position {g:?}"),
                &gh.to_f32().unwrap(),
                &want,
                0.0,
            );
        }
    }
}

#[test]
fn oversized_tensors_are_refused_with_the_limit() {
    let small = open(RuntimeOptions {
        clamp: LimitClamp {
            max_storage_binding_size: Some(1024),
            ..Default::default()
        },
        ..Default::default()
    });
    let err = ops::zeros(&small, &[16, 17]).err().unwrap().to_string();
    assert!(
        err.contains("[16, 17]") && err.contains("1088 bytes") && err.contains("1024"),
        "{err}"
    );
}
