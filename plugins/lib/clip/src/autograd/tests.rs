//! Every backward pass against central finite differences of a plain f64 reference of its
//! forward pass (`L = Σ r ⊙ f(x)` for a fixed random `r`, so one backward call with `∂L/∂y = r`
//! gives the whole gradient), over shapes that include 1 and odd sizes; the matrix product also
//! against plain loops at the GEMM blocking sizes 255/256/257; and the whole tower by
//! directional derivatives, tensor by tensor.

use super::*;
use crate::config::{Activation, ClipVisionConfig};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// `∂/∂inputs[which]` of the scalar `f(inputs)` by central differences in f64.
fn numeric_grad(inputs: &[Vec<f64>], which: usize, f: &dyn Fn(&[Vec<f64>]) -> f64) -> Vec<f64> {
    let mut x = inputs.to_vec();
    (0..x[which].len())
        .map(|i| {
            let v = x[which][i];
            let h = 1e-5 * v.abs().max(1.0);
            x[which][i] = v + h;
            let up = f(&x);
            x[which][i] = v - h;
            let down = f(&x);
            x[which][i] = v;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// The largest difference relative to the largest reference value (normwise, so values near
/// zero do not dominate), which must stay under `tol`.
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs() / scale)
        .enumerate()
        .fold((0, 0.0), |b, (i, e)| if e > b.1 { (i, e) } else { b });
    assert!(
        err <= tol,
        "{what}: element {i} is {} vs {} (error {err:.2e} of the largest value {scale:.3e})",
        got.get(i).copied().unwrap_or(f32::NAN),
        want.get(i).copied().unwrap_or(f64::NAN)
    );
}

/// `Σ r ⊙ y`.
fn project(y: &[f64], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(a, &b)| a * f64::from(b)).sum()
}

/// Tolerance of an f32 backward against f64 finite differences.
const FD_TOL: f64 = 2e-4;

fn matmul_ref(mm: &MatMul, a: &[f64], b: &[f64]) -> Vec<f64> {
    let MatMul { batch, m, n, k, .. } = *mm;
    let mut c = vec![0.0; batch * m * n];
    for z in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for p in 0..k {
                    let av = if mm.trans_a {
                        a[z * m * k + p * m + i]
                    } else {
                        a[z * m * k + i * k + p]
                    };
                    let bv = if mm.trans_b {
                        b[z * k * n + j * k + p]
                    } else {
                        b[z * k * n + p * n + j]
                    };
                    acc += av * bv;
                }
                c[z * m * n + i * n + j] = acc;
            }
        }
    }
    c
}

#[test]
fn matmul_backward_matches_finite_differences_for_every_transpose() {
    for &(batch, m, n, k) in &[(1, 1, 1, 1), (3, 2, 5, 4), (2, 7, 1, 3), (1, 4, 6, 9)] {
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                let mm = MatMul {
                    batch,
                    m,
                    n,
                    k,
                    trans_a,
                    trans_b,
                };
                let a = values(batch * m * k, 1);
                let b = values(batch * k * n, 2);
                let r = values(batch * m * n, 3);
                let c = mm.forward(&a, &b).unwrap();
                assert_close(
                    &format!("{mm:?} forward"),
                    &c,
                    &matmul_ref(&mm, &f64s(&a), &f64s(&b)),
                    1e-6,
                );
                let g = mm.backward(&a, &b, &r).unwrap();
                let f = |x: &[Vec<f64>]| project(&matmul_ref(&mm, &x[0], &x[1]), &r);
                let inputs = [f64s(&a), f64s(&b)];
                assert_close(
                    &format!("{mm:?} dA"),
                    &g.da,
                    &numeric_grad(&inputs, 0, &f),
                    FD_TOL,
                );
                assert_close(
                    &format!("{mm:?} dB"),
                    &g.db,
                    &numeric_grad(&inputs, 1, &f),
                    FD_TOL,
                );
            }
        }
    }
}

#[test]
fn matmul_backward_matches_plain_loops_at_gemm_block_edges() {
    for &(m, n, k) in &[(257, 255, 256), (256, 257, 1), (1, 256, 257)] {
        for (trans_a, trans_b) in [(false, false), (true, true), (false, true)] {
            let mm = MatMul {
                batch: 1,
                m,
                n,
                k,
                trans_a,
                trans_b,
            };
            let a = values(m * k, 4);
            let b = values(k * n, 5);
            let dc = values(m * n, 6);
            let g = mm.backward(&a, &b, &dc).unwrap();
            // dA = dC op(B)ᵀ and dB = op(A)ᵀ dC by plain loops, in each operand's layout.
            let (a64, b64, dc64) = (f64s(&a), f64s(&b), f64s(&dc));
            let mut da = vec![0.0; m * k];
            let mut db = vec![0.0; k * n];
            for i in 0..m {
                for p in 0..k {
                    for j in 0..n {
                        let bv = if trans_b {
                            b64[j * k + p]
                        } else {
                            b64[p * n + j]
                        };
                        let av = if trans_a {
                            a64[p * m + i]
                        } else {
                            a64[i * k + p]
                        };
                        let ai = if trans_a { p * m + i } else { i * k + p };
                        let bi = if trans_b { j * k + p } else { p * n + j };
                        da[ai] += dc64[i * n + j] * bv;
                        db[bi] += av * dc64[i * n + j];
                    }
                }
            }
            let what = format!("{m}x{n}x{k} trans {trans_a}/{trans_b}");
            assert_close(&format!("{what} dA"), &g.da, &da, 1e-5);
            assert_close(&format!("{what} dB"), &g.db, &db, 1e-5);
        }
    }
}

fn linear_ref(rows: usize, k: usize, n: usize, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; rows * n];
    for r in 0..rows {
        for j in 0..n {
            y[r * n + j] = b[j] + (0..k).map(|p| x[r * k + p] * w[j * k + p]).sum::<f64>();
        }
    }
    y
}

#[test]
fn linear_backward_matches_finite_differences() {
    for &(rows, k, n) in &[(1, 1, 1), (5, 3, 4), (17, 33, 9)] {
        let lin = Linear {
            rows,
            in_dim: k,
            out_dim: n,
        };
        let (x, w, b, r) = (
            values(rows * k, 7),
            values(n * k, 8),
            values(n, 9),
            values(rows * n, 10),
        );
        let y = lin.forward(&x, &w, Some(&b)).unwrap();
        let f = |v: &[Vec<f64>]| project(&linear_ref(rows, k, n, &v[0], &v[1], &v[2]), &r);
        let inputs = [f64s(&x), f64s(&w), f64s(&b)];
        assert_close(
            "linear forward",
            &y,
            &linear_ref(rows, k, n, &inputs[0], &inputs[1], &inputs[2]),
            1e-6,
        );
        let g = lin.backward(&x, &w, &r, true).unwrap();
        for (i, (name, got)) in [("dx", &g.dx), ("dw", &g.dw), ("db", &g.db)]
            .into_iter()
            .enumerate()
        {
            assert_close(
                &format!("{lin:?} {name}"),
                got,
                &numeric_grad(&inputs, i, &f),
                FD_TOL,
            );
        }
        assert!(lin.backward(&x, &w, &r, false).unwrap().dx.is_empty());
    }
    let err = Linear {
        rows: 2,
        in_dim: 3,
        out_dim: 4,
    }
    .forward(&[0.0; 5], &[0.0; 12], None)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("x holds 5 values") && err.contains('6'),
        "{err}"
    );
}

fn layer_norm_ref(cols: usize, eps: f64, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            row.iter()
                .zip(w)
                .zip(b)
                .map(move |((v, w), b)| (v - mean) * rstd * w + b)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    for &(rows, cols) in &[(1, 1), (3, 5), (4, 64), (2, 257)] {
        let ln = LayerNorm {
            rows,
            cols,
            eps: 1e-5,
        };
        let (x, w, b, r) = (
            values(rows * cols, 11),
            values(cols, 12),
            values(cols, 13),
            values(rows * cols, 14),
        );
        let (y, saved) = ln.forward(&x, &w, &b).unwrap();
        let inputs = [f64s(&x), f64s(&w), f64s(&b)];
        assert_close(
            "layer_norm forward",
            &y,
            &layer_norm_ref(cols, 1e-5, &inputs[0], &inputs[1], &inputs[2]),
            1e-5,
        );
        let g = ln.backward(&x, &w, &saved, &r).unwrap();
        let f = |v: &[Vec<f64>]| project(&layer_norm_ref(cols, 1e-5, &v[0], &v[1], &v[2]), &r);
        for (i, (name, got)) in [("dx", &g.dx), ("dw", &g.dw), ("db", &g.db)]
            .into_iter()
            .enumerate()
        {
            assert_close(
                &format!("{ln:?} {name}"),
                got,
                &numeric_grad(&inputs, i, &f),
                FD_TOL,
            );
        }
    }
}

#[test]
fn activation_derivatives_match_finite_differences() {
    let x: Vec<f32> = values(257, 15).iter().map(|v| v * 5.0).collect();
    let r = values(257, 16);
    for act in [Activation::QuickGelu, Activation::Gelu] {
        let reference = |v: f64| match act {
            Activation::QuickGelu => v / (1.0 + (-1.702 * v).exp()),
            Activation::Gelu => 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)),
        };
        let y = activation_forward(act, &x);
        let want: Vec<f64> = x.iter().map(|&v| reference(f64::from(v))).collect();
        assert_close(&format!("{act:?} forward"), &y, &want, 1e-6);
        let dx = activation_backward(act, &x, &r).unwrap();
        let f =
            |v: &[Vec<f64>]| project(&v[0].iter().map(|&x| reference(x)).collect::<Vec<_>>(), &r);
        assert_close(
            &format!("{act:?} backward"),
            &dx,
            &numeric_grad(&[f64s(&x)], 0, &f),
            FD_TOL,
        );
    }
}

fn softmax_ref(x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            row.iter()
                .map(move |v| (v - max).exp() / sum)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn softmax_and_l2_normalize_backward_match_finite_differences() {
    for &(rows, cols) in &[(1, 1), (3, 7), (2, 50)] {
        let x: Vec<f32> = values(rows * cols, 17).iter().map(|v| v * 4.0).collect();
        let r = values(rows * cols, 18);
        let y = softmax_forward(&x, cols);
        assert_close("softmax forward", &y, &softmax_ref(&f64s(&x), cols), 1e-6);
        let dx = softmax_backward(&y, &r, cols).unwrap();
        let f = |v: &[Vec<f64>]| project(&softmax_ref(&v[0], cols), &r);
        assert_close(
            &format!("softmax {rows}x{cols}"),
            &dx,
            &numeric_grad(&[f64s(&x)], 0, &f),
            FD_TOL,
        );

        let norm_ref = |v: &[f64]| -> Vec<f64> {
            v.chunks(cols)
                .flat_map(|row| {
                    let n = row.iter().map(|a| a * a).sum::<f64>().sqrt();
                    row.iter().map(move |a| a / n).collect::<Vec<_>>()
                })
                .collect()
        };
        let (y, norms) = l2_normalize_forward(&x, cols);
        assert_close("l2 forward", &y, &norm_ref(&f64s(&x)), 1e-6);
        let dx = l2_normalize_backward(&y, &norms, &r, cols).unwrap();
        let f = |v: &[Vec<f64>]| project(&norm_ref(&v[0]), &r);
        assert_close(
            &format!("l2 normalize {rows}x{cols}"),
            &dx,
            &numeric_grad(&[f64s(&x)], 0, &f),
            FD_TOL,
        );
    }
}

#[test]
fn losses_and_their_gradients_match_an_f64_reference() {
    for &(rows, classes) in &[(1, 1), (1, 2), (4, 5), (3, 257)] {
        let logits: Vec<f32> = values(rows * classes, 19).iter().map(|v| v * 6.0).collect();
        let labels: Vec<u32> = (0..rows).map(|r| ((r * 7 + 3) % classes) as u32).collect();
        let ce_ref = |z: &[f64]| -> f64 {
            let p = softmax_ref(z, classes);
            p.chunks(classes)
                .zip(&labels)
                .map(|(p, &l)| -p[l as usize].ln())
                .sum::<f64>()
                / rows as f64
        };
        let eps = 1e-8;
        let ent_ref = |z: &[f64]| -> f64 {
            -softmax_ref(z, classes)
                .iter()
                .map(|p| p * (p + eps).ln())
                .sum::<f64>()
                / rows as f64
        };
        let z64 = [f64s(&logits)];
        let ce = cross_entropy(&logits, &labels, classes).unwrap();
        assert!(
            (f64::from(ce.loss) - ce_ref(&z64[0])).abs() < 1e-5,
            "ce loss {} vs {}",
            ce.loss,
            ce_ref(&z64[0])
        );
        assert_close(
            &format!("cross_entropy {rows}x{classes}"),
            &ce.dlogits,
            &numeric_grad(&z64, 0, &|v| ce_ref(&v[0])),
            FD_TOL,
        );
        let en = entropy(&logits, classes, eps as f32).unwrap();
        assert!(
            (f64::from(en.loss) - ent_ref(&z64[0])).abs() < 1e-5,
            "entropy {} vs {}",
            en.loss,
            ent_ref(&z64[0])
        );
        assert_close(
            &format!("entropy {rows}x{classes}"),
            &en.dlogits,
            &numeric_grad(&z64, 0, &|v| ent_ref(&v[0])),
            FD_TOL,
        );
    }
    let err = cross_entropy(&[0.0; 6], &[0, 3], 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 3 of row 1"), "{err}");
    let err = entropy(&[0.0; 7], 3, 1e-8).unwrap_err().to_string();
    assert!(err.contains("7 logits"), "{err}");
}

fn attention_ref(a: &Attention, qkv: &[f64], mask: Option<&[u32]>) -> Vec<f64> {
    let (seq, hd, d) = (a.seq, a.head_dim, a.hidden());
    let mut out = vec![0.0; a.batch * seq * d];
    for s in 0..a.batch {
        for h in 0..a.heads {
            for i in 0..seq {
                let q = &qkv[(s * seq + i) * 3 * d + h * hd..][..hd];
                let scores: Vec<f64> = (0..seq)
                    .map(|j| {
                        let k = &qkv[(s * seq + j) * 3 * d + d + h * hd..][..hd];
                        let masked =
                            (a.causal && j > i) || mask.is_some_and(|m| m[s * seq + j] == 0);
                        if masked {
                            f64::NEG_INFINITY
                        } else {
                            q.iter().zip(k).map(|(x, y)| x * y).sum::<f64>() * f64::from(a.scale)
                        }
                    })
                    .collect();
                let p = softmax_ref(&scores, seq);
                for c in 0..hd {
                    out[(s * seq + i) * d + h * hd + c] = (0..seq)
                        .map(|j| p[j] * qkv[(s * seq + j) * 3 * d + 2 * d + h * hd + c])
                        .sum();
                }
            }
        }
    }
    out
}

#[test]
fn attention_backward_matches_finite_differences_with_and_without_masks() {
    for &(batch, seq, heads, hd) in &[(1, 1, 1, 1), (2, 5, 3, 4), (1, 17, 2, 3)] {
        let d = heads * hd;
        let qkv = values(batch * seq * 3 * d, 20);
        let r = values(batch * seq * d, 21);
        // Padding at the end of every sequence but the first; each keeps its first key.
        let mask: Vec<u32> = (0..batch * seq)
            .map(|i| u32::from(i / seq == 0 || i % seq < seq.div_ceil(2)))
            .collect();
        for causal in [false, true] {
            for m in [None, Some(mask.as_slice())] {
                let a = Attention {
                    batch,
                    seq,
                    heads,
                    head_dim: hd,
                    scale: (hd as f32).powf(-0.5),
                    causal,
                };
                let (ctx, probs) = a.forward(&qkv, m).unwrap();
                let what = format!("{a:?} mask {}", m.is_some());
                assert_close(
                    &format!("{what} forward"),
                    &ctx,
                    &attention_ref(&a, &f64s(&qkv), m),
                    1e-5,
                );
                let g = a.backward(&qkv, &probs, &r).unwrap();
                let f = |v: &[Vec<f64>]| project(&attention_ref(&a, &v[0], m), &r);
                assert_close(
                    &format!("{what} dqkv"),
                    &g.dqkv,
                    &numeric_grad(&[f64s(&qkv)], 0, &f),
                    FD_TOL,
                );
            }
        }
    }
}

#[test]
fn patch_embedding_backward_matches_finite_differences() {
    for &(batch, channels, image, patch, dim) in
        &[(1, 1, 1, 1, 1), (2, 3, 4, 2, 5), (1, 2, 6, 3, 4)]
    {
        let pe = PatchEmbed {
            batch,
            channels,
            image,
            patch,
            dim,
        };
        let (n, plen) = (pe.positions(), pe.patch_len());
        let pixels = values(batch * channels * image * image, 22);
        let (w, class, pos) = (values(dim * plen, 23), values(dim, 24), values(n * dim, 25));
        let r = values(batch * n * dim, 26);
        // The convolution by plain loops.
        let reference = |v: &[Vec<f64>]| -> Vec<f64> {
            let (px, w, class, pos) = (&v[0], &v[1], &v[2], &v[3]);
            let grid = image / patch;
            let mut out = vec![0.0; batch * n * dim];
            for b in 0..batch {
                for o in 0..dim {
                    out[b * n * dim + o] = class[o] + pos[o];
                    for t in 0..grid * grid {
                        let (py, pxi) = (t / grid, t % grid);
                        let mut acc = pos[(t + 1) * dim + o];
                        for c in 0..channels {
                            for y in 0..patch {
                                for x in 0..patch {
                                    acc += px[((b * channels + c) * image + py * patch + y)
                                        * image
                                        + pxi * patch
                                        + x]
                                        * w[((o * channels + c) * patch + y) * patch + x];
                                }
                            }
                        }
                        out[(b * n + t + 1) * dim + o] = acc;
                    }
                }
            }
            out
        };
        let inputs = [f64s(&pixels), f64s(&w), f64s(&class), f64s(&pos)];
        let out = pe.forward(&pixels, &w, &class, &pos).unwrap();
        assert_close(
            "patch_embed forward",
            &out.embeddings,
            &reference(&inputs),
            1e-6,
        );
        let g = pe.backward(&out.patches, &w, &r, true).unwrap();
        let f = |v: &[Vec<f64>]| project(&reference(v), &r);
        for (i, (name, got)) in [
            ("pixels", &g.pixels),
            ("weight", &g.weight),
            ("class", &g.class),
            ("position", &g.position),
        ]
        .into_iter()
        .enumerate()
        {
            assert_close(
                &format!("{pe:?} d{name}"),
                got,
                &numeric_grad(&inputs, i, &f),
                FD_TOL,
            );
        }
    }
    let pe = PatchEmbed {
        batch: 1,
        channels: 1,
        image: 5,
        patch: 2,
        dim: 1,
    };
    let err = pe
        .forward(&[0.0; 25], &[0.0; 4], &[0.0], &[0.0; 5])
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not divide"), "{err}");
}

#[test]
fn row_reductions_and_their_backward() {
    let x = values(300 * 7, 27);
    let s = sum_rows(&x, 7).unwrap();
    let m = mean_rows(&x, 7).unwrap();
    for c in 0..7 {
        let want: f64 = (0..300).map(|r| f64::from(x[r * 7 + c])).sum();
        assert!((f64::from(s[c]) - want).abs() < 1e-4, "sum column {c}");
        assert!(
            (f64::from(m[c]) - want / 300.0).abs() < 1e-6,
            "mean column {c}"
        );
    }
    // mean's backward is the gradient of Σ r ⊙ mean(x): r / rows in every row.
    let r = values(7, 28);
    let dx = mean_rows_backward(&r, 300);
    assert_eq!(dx.len(), 300 * 7);
    assert!(dx.chunks(7).all(|row| row
        .iter()
        .zip(&r)
        .all(|(a, b)| (a - b / 300.0).abs() < 1e-9)));
    assert!(sum_rows(&x[..10], 7)
        .unwrap_err()
        .to_string()
        .contains("rows of 7"));
}

fn tiny_config(act: Activation) -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: 8,
        intermediate_size: 12,
        projection_dim: 6,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_channels: 3,
        image_size: 6,
        patch_size: 3,
        hidden_act: act,
        layer_norm_eps: 1e-5,
    }
}

/// A tiny tower with random weights (layer-norm scales near 1) and a head of 5 classes.
fn tiny_model(act: Activation, seed: u32) -> (VisionParams, ZeroShotHead) {
    let cfg = tiny_config(act);
    let mut k = seed;
    let params = VisionParams::from_fn(&cfg, |name, shape| {
        k += 1;
        let v = values(shape.iter().product(), k);
        Ok(if name.contains("norm") && name.ends_with("weight") {
            v.iter().map(|x| 1.0 + 0.2 * x).collect()
        } else {
            v.iter().map(|x| 0.5 * x).collect()
        })
    })
    .unwrap();
    let (text, _) = l2_normalize_forward(&values(5 * 6, seed + 100), 6);
    let head = ZeroShotHead::new(values(6 * 8, seed + 101), 8, text, 5, 3.0).unwrap();
    (params, head)
}

#[test]
fn tower_gradients_match_directional_derivatives_tensor_by_tensor() {
    let batch = 3;
    for (act, seed) in [(Activation::QuickGelu, 30), (Activation::Gelu, 60)] {
        let (params, head) = tiny_model(act, seed);
        let pixels = values(batch * 3 * 6 * 6, seed + 7);
        let labels = [0u32, 4, 2];
        for objective in [
            Objective::Entropy { eps: 1e-8 },
            Objective::CrossEntropy { labels: &labels },
        ] {
            let g = loss_and_gradients(&params, &head, &pixels, batch, objective).unwrap();
            let loss_at = |p: &VisionParams| {
                loss_and_gradients(p, &head, &pixels, batch, objective)
                    .unwrap()
                    .loss
            };
            let names = params.names();
            assert_eq!(names.len(), 5 + 16 * 2 + 2);
            for (l, (name, _)) in names.iter().enumerate() {
                let dir = values(params.params()[l].len(), 1000 + l as u32);
                let h = 1e-2f32;
                let shifted = |sign: f32| {
                    let mut p = params.clone();
                    p.params_mut()[l]
                        .iter_mut()
                        .zip(&dir)
                        .for_each(|(a, d)| *a += sign * h * d);
                    loss_at(&p)
                };
                let numeric = f64::from(shifted(1.0) - shifted(-1.0)) / (2.0 * f64::from(h));
                let analytic: f64 = g.weights.params()[l]
                    .iter()
                    .zip(&dir)
                    .map(|(a, b)| f64::from(a * b))
                    .sum();
                let scale = analytic.abs().max(numeric.abs()).max(1e-3);
                assert!(
                    (numeric - analytic).abs() / scale < 2e-2,
                    "{act:?} {objective:?} {name}: directional derivative {numeric} vs gradient {analytic}"
                );
            }
        }
    }
}

#[test]
fn merge_coefficient_gradients_match_directional_derivatives() {
    let (pre, head) = tiny_model(Activation::QuickGelu, 90);
    let finetuned: Vec<VisionParams> = (0..2)
        .map(|i| tiny_model(Activation::QuickGelu, 200 + 40 * i).0)
        .collect();
    let merge = LayerWiseMerge::from_finetuned(pre.clone(), &finetuned).unwrap();
    let t = merge.num_tensors();
    assert_eq!((merge.num_models(), t), (2, pre.params().len()));
    // With λ = 1 for model 0 and 0 for model 1 the merge is fine-tuned model 0.
    let mut pick0 = vec![0.0; 2 * t];
    pick0[..t].iter_mut().for_each(|v| *v = 1.0);
    let merged = merge.merge(&pick0).unwrap();
    for (a, b) in merged.params().into_iter().zip(finetuned[0].params()) {
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6));
    }

    let batch = 2;
    let pixels = values(batch * 3 * 6 * 6, 91);
    let lambdas: Vec<f32> = (0..2 * t).map(|i| 0.3 + 0.01 * (i % 7) as f32).collect();
    let obj = Objective::Entropy { eps: 1e-8 };
    let g =
        loss_and_gradients(&merge.merge(&lambdas).unwrap(), &head, &pixels, batch, obj).unwrap();
    let dl = merge.lambda_gradients(&g.weights).unwrap();
    assert_eq!(dl.len(), 2 * t);
    let loss_at = |lam: &[f32]| {
        loss_and_gradients(&merge.merge(lam).unwrap(), &head, &pixels, batch, obj)
            .unwrap()
            .loss
    };
    // Each coefficient on its own (central differences), then all at once along a direction.
    for idx in [0, 3, t - 1, t, 2 * t - 1] {
        let h = 0.05;
        let mut up = lambdas.clone();
        up[idx] += h;
        let mut down = lambdas.clone();
        down[idx] -= h;
        let numeric = (loss_at(&up) - loss_at(&down)) / (2.0 * h);
        let scale = numeric.abs().max(dl[idx].abs()).max(1e-3);
        assert!(
            (numeric - dl[idx]).abs() / scale < 2e-2,
            "λ[{idx}]: {numeric} vs {}",
            dl[idx]
        );
    }
    let err = merge.merge(&lambdas[1..]).unwrap_err().to_string();
    assert!(
        err.contains(&format!("holds {} values", 2 * t - 1)),
        "{err}"
    );
}

/// The forward pass autograd differentiates is the one inference runs: the same parameters,
/// loaded through the shared parameter table into the op-API tower on the native backend, give
/// the same pooled output (up to summation order), for both activations.
#[test]
fn autograd_forward_matches_the_op_api_tower() {
    use crate::gpu::backend::{OnHost, Tower};
    use crate::gpu::native::Native;
    use crate::gpu::vision::Vision;
    use crate::{Tensor, WeightStore};

    let batch = 3;
    for (act, seed) in [(Activation::QuickGelu, 300), (Activation::Gelu, 330)] {
        let (params, _) = tiny_model(act, seed);
        let pixels = values(batch * 3 * 6 * 6, seed + 7);
        let (pooled, _) = params.forward(&pixels, batch).unwrap();

        let tensors = params
            .names()
            .into_iter()
            .zip(params.params())
            .map(|((name, shape), data)| (name, Tensor::new(shape, data.clone()).unwrap()));
        let store = WeightStore::from_tensors("autograd parameters", tensors);
        let tower = Vision::load(&OnHost(&store), &params.config).unwrap();
        store.check_all_used(|_| true).unwrap();
        let pixels = Tensor::new(vec![batch, 3, 6, 6], pixels).unwrap();
        let out = tower
            .run(&Native, &pixels, (0, batch), None, false)
            .unwrap();
        assert_eq!(out.pooled.len(), pooled.len());
        for (i, (a, b)) in out.pooled.iter().zip(&pooled).enumerate() {
            assert!(
                (a - b).abs() < 1e-5,
                "{act:?} pooled[{i}]: op API {a}, autograd {b}"
            );
        }
    }
}
