//! breadcrumbs and DELLA against a CPU reference of mergekit's generalized task arithmetic
//! (`generalized_task_arithmetic.py`, `sparsify.py`), with this plugin's documented choices:
//! cuts by value, no top cut when `n_top` is 0, counter-based DELLA draws.

use std::collections::BTreeMap;

use fusion_plugin_api::serde_json::json;

use crate::common::*;

struct Params {
    weights: Vec<f32>,
    density: f64,
    gamma: f64,
    epsilon: f64,
    lambda: f32,
    normalize: bool,
    rescale: bool,
    consensus: bool,
    della: bool,
    seed: u64,
}

/// mergekit `magnitude_outliers` (see `breadcrumbs_band` for the kept ascending range).
fn breadcrumbs_ref(x: &[f32], density: f64, gamma: f64) -> Vec<f32> {
    let n = x.len() as u64;
    let (lo, hi) = fusion_merging::breadcrumbs_band(n, density, gamma);
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()).then(a.cmp(&b)));
    let mut out = vec![0.0; x.len()];
    for &i in &order[lo as usize..hi as usize] {
        out[i] = x[i];
    }
    out
}

/// mergekit `della_magprune` with the plugin's counter-based draws.
fn della_ref(x: &[f32], shape: &[usize], p: &Params, model: &str, tensor: &str) -> Vec<f32> {
    let row = if shape.len() <= 1 {
        x.len()
    } else {
        x.len() / shape[0]
    };
    let key = fusion_merging::random_key(model, tensor);
    let p_low = (p.density - p.epsilon) as f32;
    let span = (2.0 * p.epsilon) as f32;
    let (p_low, inv) = if row > 1 {
        (p_low, (1.0 / (row - 1) as f64) as f32)
    } else {
        (p_low + span / 2.0, 0.0)
    };
    let mut out = vec![0.0; x.len()];
    for (r, chunk) in x.chunks(row).enumerate() {
        for (i, &v) in chunk.iter().enumerate() {
            let below = chunk
                .iter()
                .enumerate()
                .filter(|&(j, o)| {
                    o.abs().to_bits() < v.abs().to_bits()
                        || (o.abs().to_bits() == v.abs().to_bits() && j < i)
                })
                .count();
            let prob = p_low + (below as f32 * inv) * span;
            let g = (r * row + i) as u64;
            let w = fusion_kernels::philox4x32_10(
                [g as u32, (g >> 32) as u32, key as u32, (key >> 32) as u32],
                [p.seed as u32, (p.seed >> 32) as u32],
            );
            let u = (w[0] >> 8) as f32 * 5.960_464_5e-8;
            if u < prob {
                out[r * row + i] = v;
            }
        }
    }
    out
}

fn l1(x: &[f32]) -> f32 {
    x.iter().map(|v| v.abs()).sum()
}

fn reference(pool: &Pool, p: &Params) -> BTreeMap<String, Vec<f32>> {
    let base = &pool.0[0].1;
    let mut out = BTreeMap::new();
    for name in base.names().unwrap() {
        let (b, shape) = base.to_f32(&name).unwrap();
        let mut wd = Vec::new();
        for (i, (model, m)) in pool.0[1..].iter().enumerate() {
            let (x, _) = m.to_f32(&name).unwrap();
            let delta: Vec<f32> = x.iter().zip(&b).map(|(x, b)| x - b).collect();
            let mut kept = if p.della {
                della_ref(&delta, &shape, p, model, &name)
            } else {
                breadcrumbs_ref(&delta, p.density, p.gamma)
            };
            if p.rescale {
                let (before, after) = (l1(&delta), l1(&kept));
                if before >= 1e-7 && after >= 1e-7 {
                    kept.iter_mut().for_each(|v| *v *= before / after);
                }
            }
            wd.push((
                p.weights[i],
                kept.iter().map(|v| v * p.weights[i]).collect::<Vec<f32>>(),
            ));
        }
        let n = b.len();
        let mut mixed = vec![0.0f32; n];
        let mut div = vec![0.0f32; n];
        let sum: Vec<f32> = (0..n).map(|e| wd.iter().map(|(_, d)| d[e]).sum()).collect();
        for (w, d) in &wd {
            for e in 0..n {
                let majority = if sum[e] >= 0.0 { 1.0 } else { -1.0 };
                if !p.consensus || d[e].signum() == majority && d[e] != 0.0 {
                    mixed[e] += d[e];
                    div[e] += w;
                }
            }
        }
        if !p.consensus {
            let total: f32 = p.weights.iter().sum();
            div = vec![if total.abs() < 1e-8 { 1.0 } else { total }; n];
        }
        let merged: Vec<f32> = (0..n)
            .map(|e| {
                let mut m = mixed[e];
                if p.normalize {
                    m /= if div[e] == 0.0 { 1.0 } else { div[e] };
                }
                b[e] + m * p.lambda
            })
            .collect();
        out.insert(name, merged);
    }
    out
}

#[test]
fn breadcrumbs_and_della_match_a_cpu_reference() {
    let pool = fixture_pool(&["_pretrained_", "task_a", "task_b", "task_c", "task_d"]);
    let weights = vec![1.0f32, 0.5, 0.8, 1.2];
    let methods = [
        ("breadcrumbs", false, false, false, false),
        ("breadcrumbs_ties", true, false, false, false),
        ("della", true, true, true, true),
        ("della_linear", false, true, false, true),
    ];
    for (target, consensus, della, normalize, rescale) in methods {
        let p = Params {
            weights: weights.clone(),
            density: 0.5,
            gamma: 0.05,
            epsilon: 0.1,
            lambda: 0.9,
            normalize,
            rescale,
            consensus,
            della,
            seed: 11,
        };
        let mut cfg = json!({
            "density": p.density, "gamma": p.gamma, "epsilon": p.epsilon,
            "lambda": p.lambda, "seed": p.seed,
        });
        // mergekit's own spelling, `weight`, is accepted too.
        let key = if target == "breadcrumbs_ties" {
            "weight"
        } else {
            "weights"
        };
        cfg[key] = json!(weights);
        let got = merge(target, cfg, &pool, &ctx(None)).unwrap();
        let want = reference(&pool, &p);
        let mut worst = 0.0f64;
        for (name, w) in &want {
            let (g, _) = got.to_f32(name).unwrap();
            let scale = w.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
            let err = g
                .iter()
                .zip(w)
                .fold(0.0f64, |m, (a, b)| m.max(f64::from((a - b).abs())));
            worst = worst.max(err / scale);
        }
        eprintln!("{target}: max relative error vs CPU reference {worst:.2e}");
        assert!(worst < 1e-5, "{target}: {worst:e}");
        // The sparsifier did something: the result differs from plain weighted task arithmetic.
        let plain = merge(
            target,
            json!({"weights": weights, "lambda": p.lambda}),
            &pool,
            &ctx(None),
        )
        .unwrap();
        assert!(
            max_rel_error(&got, &plain) > 1e-3,
            "{target}: density 0.5 changed nothing"
        );
    }
}

#[test]
fn della_keeps_about_density_of_the_entries() {
    let n = 64 * 256;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let base = model_from(&[("w.weight", vec![64, 256], vec![0.0; n])]);
    let ft = model_from(&[("w.weight", vec![64, 256], x.clone())]);
    let pool = Pool(vec![("_pretrained_".into(), base), ("ft".into(), ft)]);
    let cfg = json!({"density": 0.3, "epsilon": 0.2, "rescale": false, "seed": 2});
    let got = merge("della_linear", cfg, &pool, &ctx(None))
        .unwrap()
        .to_f32("w.weight")
        .unwrap()
        .0;
    let kept = got.iter().filter(|&&v| v != 0.0).count() as f64
        / x.iter().filter(|&&v| v != 0.0).count() as f64;
    assert!((kept - 0.3).abs() < 0.02, "kept fraction {kept}");
    // Large magnitudes are kept more often than small ones (p from 0.1 to 0.5).
    let frac = |pred: &dyn Fn(f32) -> bool| {
        let sel: Vec<usize> = (0..n)
            .filter(|&i| pred(x[i].abs()) && x[i] != 0.0)
            .collect();
        sel.iter().filter(|&&i| got[i] != 0.0).count() as f64 / sel.len() as f64
    };
    let (small, large) = (frac(&|a| a < 0.1), frac(&|a| a > 0.4));
    assert!(small < 0.2 && large > 0.4, "small {small}, large {large}");
}
