//! DARE: keep fraction, exact rescale, reproducibility with a seed.

use fusion_plugin_api::serde_json::json;

use crate::common::*;

/// A base of zeros and one model of ones: every task-vector entry is 1, so the merged tensor
/// is `λ · (kept ? 1/(1−p) : 0)`.
fn ones_pool(n: usize) -> Pool {
    let base = model_from(&[
        ("layer.weight", vec![n / 64, 64], vec![0.0; n]),
        ("layer.bias", vec![n], vec![0.0; n]),
    ]);
    let ft = model_from(&[
        ("layer.weight", vec![n / 64, 64], vec![1.0; n]),
        ("layer.bias", vec![n], vec![1.0; n]),
    ]);
    Pool(vec![("_pretrained_".into(), base), ("ft".into(), ft)])
}

#[test]
fn keep_fraction_is_within_statistical_bounds_and_rescale_is_exact() {
    let n = 1 << 16;
    for p in [0.1, 0.5, 0.9] {
        let cfg = json!({"scaling_factor": 1.0, "sparsity_ratio": p, "rescale": true, "seed": 7});
        let merged = merge("dare_task_arithmetic", cfg, &ones_pool(n), &ctx(None)).unwrap();
        let (v, _) = merged.to_f32("layer.weight").unwrap();
        let scale = (1.0 / (1.0 - f64::from(p as f32))) as f32;
        let kept = v.iter().filter(|&&x| x != 0.0).count();
        assert!(
            v.iter().all(|&x| x == 0.0 || x == scale),
            "p = {p}: kept entries must be exactly 1/(1-p) = {scale}"
        );
        // Binomial(n, 1 − p): 5 standard deviations.
        let mean = n as f64 * (1.0 - p);
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (kept as f64 - mean).abs() < 5.0 * sd,
            "p = {p}: kept {kept}, expected {mean} ± {sd}"
        );
    }
    // Without rescale, kept entries stay 1.
    let cfg = json!({"scaling_factor": 1.0, "sparsity_ratio": 0.5, "rescale": false, "seed": 7});
    let merged = merge("dare_task_arithmetic", cfg, &ones_pool(n), &ctx(None)).unwrap();
    assert!(merged
        .to_f32("layer.bias")
        .unwrap()
        .0
        .iter()
        .all(|&x| x == 0.0 || x == 1.0));
}

#[test]
fn masks_follow_the_seed_and_differ_between_tensors() {
    let n = 4096;
    let run = |seed: Option<u64>, ctx_seed: Option<u64>| {
        let mut cfg = json!({"scaling_factor": 1.0, "sparsity_ratio": 0.5});
        if let Some(s) = seed {
            cfg["seed"] = json!(s);
        }
        let m = merge("dare_task_arithmetic", cfg, &ones_pool(n), &ctx(ctx_seed)).unwrap();
        (
            m.data("layer.weight").unwrap().into_owned(),
            m.data("layer.bias").unwrap().into_owned(),
        )
    };
    let a = run(Some(1), None);
    assert_eq!(a, run(Some(1), None), "one seed, two runs: bit-identical");
    assert_eq!(a, run(None, Some(1)), "the program seed is the default");
    assert_ne!(a.0, run(Some(2), None).0, "another seed, another mask");
    assert_ne!(a.0, a.1, "tensors get different masks");
}

#[test]
fn only_on_linear_weights_leaves_other_tensors_whole() {
    let n = 4096;
    let cfg = json!({"scaling_factor": 1.0, "sparsity_ratio": 0.5, "only_on_linear_weights": true, "seed": 3});
    let m = merge("dare_task_arithmetic", cfg, &ones_pool(n), &ctx(None)).unwrap();
    assert!(m.to_f32("layer.bias").unwrap().0.iter().all(|&x| x == 1.0));
    assert!(m.to_f32("layer.weight").unwrap().0.contains(&0.0));
}

#[test]
fn dare_simple_average_and_ties_run_on_the_fixtures() {
    let names = ["_pretrained_", "task_a", "task_b", "task_c", "task_d"];
    let pool = fixture_pool(&names);
    // Sparsity 0 keeps everything: DARE simple average is task arithmetic with λ = 1/N, and
    // DARE-TIES is TIES.
    let sa = merge(
        "dare_simple_average",
        json!({"sparsity_ratio": 0.0, "seed": 0}),
        &pool,
        &ctx(None),
    )
    .unwrap();
    let ta = merge(
        "task_arithmetic",
        json!({"scaling_factor": 0.25}),
        &pool,
        &ctx(None),
    )
    .unwrap();
    assert!(max_rel_error(&sa, &ta) < 1e-6);
    let cfg = json!({"sparsity_ratio": 0.0, "seed": 0, "scaling_factor": 0.5, "threshold": 20});
    let dt = merge("dare_ties_merging", cfg, &pool, &ctx(None)).unwrap();
    let t = merge(
        "ties_merging",
        json!({"scaling_factor": 0.5, "threshold": 20}),
        &pool,
        &ctx(None),
    )
    .unwrap();
    assert!(max_rel_error(&dt, &t) < 1e-6);
    // With drops, DARE-TIES is reproducible.
    let cfg = json!({"sparsity_ratio": 0.3, "seed": 5});
    let a = materialize(&merge("dare_ties_merging", cfg.clone(), &pool, &ctx(None)).unwrap());
    let b = materialize(&merge("dare_ties_merging", cfg, &pool, &ctx(None)).unwrap());
    assert_eq!(max_rel_error(&a, &b), 0.0);
}
