//! The CPU methods (MagMax, ExPO, linear interpolation, magnitude-difference pruning, TSV-M,
//! ISO-C, ISO-CTS) against the tensors fusion-bench produced for `tests/data/linalg-tiny`, and
//! their errors on bad input. They run without a compute device.

use std::path::PathBuf;

use fusion_plugin_api::serde_json::{self, json};
use fusion_plugin_api::{Context, Model};

use crate::common::*;

/// The linalg-tiny fixture folder.
fn linalg_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/linalg-tiny")
}

fn linalg_model(name: &str) -> Model {
    let path = linalg_fixtures()
        .join("models")
        .join(format!("{name}.safetensors"));
    fusion_checkpoint::open_model(path.to_str().unwrap()).expect("fixture model")
}

fn linalg_pool(names: &[&str]) -> Pool {
    Pool(
        names
            .iter()
            .map(|n| (n.to_string(), linalg_model(n)))
            .collect(),
    )
}

/// A context without a compute device: these methods must not need one.
fn cpu_ctx() -> Context {
    Context::local(Some(0), false, None)
}

/// Run case `name` of linalg-tiny's `cases.yaml` and return its max relative error.
fn case(name: &str, tolerance: f64) -> f64 {
    case_in(&linalg_fixtures(), name, tolerance)
}

/// Run case `name` of the `cases.yaml` in `dir` (its models under `dir/models`).
fn case_in(dir: &std::path::Path, name: &str, tolerance: f64) -> f64 {
    let text = std::fs::read_to_string(dir.join("cases.yaml")).unwrap();
    let cases: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let case = &cases["cases"][name];
    let method: serde_json::Value = serde_json::to_value(&case["method"]).unwrap();
    let target = method["_target_"].as_str().unwrap().to_string();
    let models: Vec<String> = serde_norway::from_value(case["models"].clone()).unwrap();
    let pool = Pool(
        models
            .iter()
            .map(|n| {
                let path = dir.join("models").join(format!("{n}.safetensors"));
                let model = fusion_checkpoint::open_model(path.to_str().unwrap()).unwrap();
                (n.clone(), model)
            })
            .collect(),
    );
    // SVC runs its base method first, which may need the compute device.
    let run_ctx = if target.contains("singular_value_calibration") {
        ctx(Some(0))
    } else {
        cpu_ctx()
    };
    let merged = merge(&target, method, &pool, &run_ctx).unwrap();
    let expected = fusion_checkpoint::open_model(
        dir.join(case["expected"].as_str().unwrap())
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let err = max_rel_error(&merged, &expected);
    eprintln!("golden {name}: max relative error {err:.3e}");
    assert!(
        err <= tolerance,
        "{name}: max relative error {err:.3e} > {tolerance:e}"
    );
    err
}

/// Elementwise methods: f32 arithmetic in FusionBench's order.
const ELEMENTWISE: f64 = 1e-5;
/// SVD-based methods: the reconstruction is unique, the f32 rounding of torch's SVD is not.
const SVD: f64 = 1e-4;

macro_rules! golden {
    ($($test:ident => $case:literal, $tol:expr;)*) => {
        $(#[test] fn $test() { case($case, $tol); })*
    };
}

golden! {
    golden_magmax => "magmax", ELEMENTWISE;
    golden_expo => "expo", ELEMENTWISE;
    golden_magnitude_diff_pruning => "magnitude_diff_pruning", ELEMENTWISE;
    golden_magnitude_diff_pruning_rescaled => "magnitude_diff_pruning_rescaled", ELEMENTWISE;
    golden_task_singular_vector => "task_singular_vector", SVD;
    golden_task_singular_vector_0_7 => "task_singular_vector_0.7", SVD;
    golden_iso_c => "iso_c", SVD;
    golden_iso_cts => "iso_cts", SVD;
    golden_wudi => "wudi", SVD;
    golden_svc_task_arithmetic => "svc_task_arithmetic", SVD;
    golden_svc_ties_merging => "svc_ties_merging", SVD;
    golden_svc_task_arithmetic_class => "svc_task_arithmetic_class", SVD;
}

/// merge-tiny's SVD cases (another pool, FusionBench's default ISO parameters).
#[test]
fn golden_merge_tiny_svd_cases() {
    for name in ["task_singular_vector", "iso_c", "iso_cts"] {
        case_in(&fixtures(), name, SVD);
    }
}

/// FusionBench's default `rescale: false` multiplies the kept difference by 0: the result is
/// the pretrained model, bit for bit.
#[test]
fn magnitude_diff_pruning_rescale_false_returns_the_pretrained_model() {
    let pool = linalg_pool(&["_pretrained_", "task_a"]);
    let config =
        json!({"prune_ratio": 0.5, "rescale": false, "extract_names": null, "prune_type": "minor"});
    let merged = merge("magnitude_diff_pruning", config, &pool, &cpu_ctx()).unwrap();
    let base = linalg_model("_pretrained_");
    assert_eq!(max_rel_error(&merged, &base), 0.0);
    // ...whereas `rescale: null` changes the linear weights.
    let config = json!({"prune_ratio": 0.5, "rescale": null});
    let merged = merge("magnitude_diff_pruning", config, &pool, &cpu_ctx()).unwrap();
    assert!(max_rel_error(&merged, &base) > 1e-3);
}

/// `extract_names` selects by regular expression at the start of the name; others stay θ₀.
#[test]
fn magnitude_diff_pruning_extract_names() {
    let pool = linalg_pool(&["_pretrained_", "task_a"]);
    let config = json!({"prune_ratio": 0.25, "extract_names": ["fc.\\.weight"]});
    let merged = merge("magnitude_diff_pruning", config, &pool, &cpu_ctx()).unwrap();
    let base = linalg_model("_pretrained_");
    let ft = linalg_model("task_a");
    for name in ["q_proj.weight", "head.weight", "fc1.bias", "norm.weight"] {
        assert_eq!(
            merged.to_f32(name).unwrap(),
            base.to_f32(name).unwrap(),
            "{name}"
        );
    }
    // fc1.weight is 64×24: 6 entries per row pruned (the smallest differences), 18 kept.
    let (m, _) = merged.to_f32("fc1.weight").unwrap();
    let (b, _) = base.to_f32("fc1.weight").unwrap();
    let (f, _) = ft.to_f32("fc1.weight").unwrap();
    for row in 0..64 {
        let r = row * 24..(row + 1) * 24;
        let kept = r.clone().filter(|&i| m[i] == f[i] - b[i] + b[i]).count();
        let pruned = r.clone().filter(|&i| m[i] == b[i]).count();
        assert_eq!((kept, pruned), (18, 6), "row {row}");
        let smallest_kept = r
            .clone()
            .filter(|&i| m[i] != b[i])
            .map(|i| (f[i] - b[i]).abs())
            .fold(f32::MAX, f32::min);
        let largest_pruned = r
            .filter(|&i| m[i] == b[i])
            .map(|i| (f[i] - b[i]).abs())
            .fold(0.0, f32::max);
        assert!(largest_pruned <= smallest_kept, "row {row}");
    }
}

/// Linear interpolation of the pool's two models (`_pretrained_` counts as one).
#[test]
fn linear_interpolation() {
    let pool = linalg_pool(&["_pretrained_", "task_b"]);
    let merged = merge(
        "linear_interpolation",
        json!({"t": 0.25}),
        &pool,
        &cpu_ctx(),
    )
    .unwrap();
    let a = linalg_model("_pretrained_");
    let b = linalg_model("task_b");
    for name in a.names().unwrap() {
        let (x, _) = a.to_f32(&name).unwrap();
        let (y, _) = b.to_f32(&name).unwrap();
        let (m, _) = merged.to_f32(&name).unwrap();
        for ((x, y), m) in x.iter().zip(&y).zip(&m) {
            assert!(
                (0.75 * x + 0.25 * y - m).abs() <= 1e-6 * (x.abs() + y.abs()),
                "{name}"
            );
        }
    }
    let three = linalg_pool(&["_pretrained_", "task_a", "task_b"]);
    let msg = merge(
        "linear_interpolation",
        json!({"t": 0.5}),
        &three,
        &cpu_ctx(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("exactly 2 models") && msg.contains("has 3"),
        "{msg}"
    );
    let msg = merge("linear_interpolation", json!({"t": 1.5}), &pool, &cpu_ctx())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`t` must be in [0, 1]"), "{msg}");
}

/// ExPO with several fine-tuned models extrapolates from their average.
#[test]
fn expo_averages_several_models() {
    let pool = linalg_pool(&["_pretrained_", "task_a", "task_c"]);
    let merged = merge(
        "expo",
        json!({"extrapolation_factor": 0.5}),
        &pool,
        &cpu_ctx(),
    )
    .unwrap();
    let (p, _) = linalg_model("_pretrained_").to_f32("fc2.weight").unwrap();
    let (a, _) = linalg_model("task_a").to_f32("fc2.weight").unwrap();
    let (c, _) = linalg_model("task_c").to_f32("fc2.weight").unwrap();
    let (m, _) = merged.to_f32("fc2.weight").unwrap();
    for i in 0..m.len() {
        let avg = (a[i] + c[i]) / 2.0;
        assert!((avg + 0.5 * (avg - p[i]) - m[i]).abs() < 1e-6, "{i}");
    }
}

/// TSV-M's alpha as a list scales each task vector before the SVDs; a uniform list equals
/// the same number applied after (TSV-M is homogeneous in the task vectors).
#[test]
fn task_singular_vector_alpha_list() {
    let pool = linalg_pool(&["_pretrained_", "task_a", "task_b", "task_c", "task_d"]);
    let list = merge(
        "task_singular_vector",
        json!({"alpha": [0.7, 0.7, 0.7, 0.7]}),
        &pool,
        &cpu_ctx(),
    )
    .unwrap();
    let number = merge(
        "task_singular_vector",
        json!({"alpha": 0.7}),
        &pool,
        &cpu_ctx(),
    )
    .unwrap();
    assert!(max_rel_error(&list, &number) < 1e-5);
    let msg = merge(
        "task_singular_vector",
        json!({"alpha": [1.0, 1.0]}),
        &pool,
        &cpu_ctx(),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("`alpha` has 2 values for 4 models"), "{msg}");
}

/// `return_single_task_models: true` returns FusionBench's dict: each model's share under its
/// pool name, then `merged` (the method's merged model). As FusionBench builds them, on a 2-D
/// weight task i's share is its block of the orthogonalized singular vectors with its own
/// leading r = ⌊k/T⌋ singular values (so the share's spectrum is those values, and the shares
/// sum to the merged task vector before the global `alpha`); elsewhere each share is the mean
/// task vector. Without the flag the method returns one unnamed model.
#[test]
fn task_singular_vector_returns_single_task_models() {
    use fusion_merging::linalg::{svd, Matrix};
    let names = ["_pretrained_", "task_a", "task_b", "task_c", "task_d"];
    let pool = linalg_pool(&names);
    let models = build(
        "task_singular_vector",
        json!({"alpha": 0.5, "return_single_task_models": true}),
    )
    .unwrap()
    .run_models(&pool, &cpu_ctx())
    .unwrap();
    let got: Vec<&str> = models.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, ["task_a", "task_b", "task_c", "task_d", "merged"]);
    let plain = merge(
        "task_singular_vector",
        json!({"alpha": 0.5}),
        &pool,
        &cpu_ctx(),
    )
    .unwrap();
    assert!(max_rel_error(&models[4].1, &plain) < 1e-6);

    let inputs: Vec<Model> = names.iter().map(|n| linalg_model(n)).collect();
    let t = 4;
    for name in inputs[0].names().unwrap() {
        let (base, shape) = inputs[0].to_f32(&name).unwrap();
        let tvs: Vec<Vec<f32>> = inputs[1..]
            .iter()
            .map(|m| {
                let v = m.to_f32(&name).unwrap().0;
                v.iter().zip(&base).map(|(x, b)| x - b).collect()
            })
            .collect();
        let shares: Vec<Vec<f32>> = models[..t]
            .iter()
            .map(|(_, m)| {
                let v = m.to_f32(&name).unwrap().0;
                v.iter().zip(&base).map(|(x, b)| x - b).collect()
            })
            .collect();
        if shape.len() != 2 {
            for (i, share) in shares.iter().enumerate() {
                for (j, x) in share.iter().enumerate() {
                    let mean = tvs.iter().map(|tv| tv[j]).sum::<f32>() / t as f32;
                    assert!((x - mean).abs() < 1e-5, "{name}[{j}] of model {i}");
                }
            }
            continue;
        }
        let (rows, cols) = (shape[0], shape[1]);
        let r = rows.min(cols) / t;
        let merged_tv: Vec<f32> = plain.to_f32(&name).unwrap().0;
        let scale: f32 = merged_tv
            .iter()
            .zip(&base)
            .map(|(m, b)| (m - b).abs())
            .fold(0.0, f32::max);
        for j in 0..base.len() {
            let sum: f32 = shares.iter().map(|s| s[j]).sum();
            let want = (merged_tv[j] - base[j]) / 0.5;
            assert!(
                (sum - want).abs() <= 1e-4 * (scale / 0.5),
                "{name}[{j}]: shares sum to {sum}, merged task vector {want}"
            );
        }
        for (i, (share, tv)) in shares.iter().zip(&tvs).enumerate() {
            let own = svd(&Matrix::from_f32(rows, cols, tv)).s;
            let got = svd(&Matrix::from_f32(rows, cols, share)).s;
            for k in 0..got.len() {
                let want = if k < r { own[k] } else { 0.0 };
                assert!(
                    (got[k] - want).abs() <= 1e-4 * own[0],
                    "{name}, model {i}: singular value {k} is {}, want {want}",
                    got[k]
                );
            }
        }
    }

    let one = build("task_singular_vector", json!({}))
        .unwrap()
        .run_models(&pool, &cpu_ctx())
        .unwrap();
    assert_eq!(one.len(), 1);
    assert!(one[0].0.is_empty());
}

/// `exclude_keys` leaves a 2-D weight out of the SVD: it gets the mean task vector.
#[test]
fn exclude_keys_average_the_tensor() {
    let names = ["_pretrained_", "task_a", "task_b", "task_c", "task_d"];
    let pool = linalg_pool(&names);
    let models: Vec<Model> = names.iter().map(|n| linalg_model(n)).collect();
    for target in ["task_singular_vector", "iso_c", "iso_cts"] {
        let config = json!({"scaling_factor": 1.0, "common_space_fraction": 0.5, "exclude_keys": ["head.weight"]});
        let merged = merge(target, config, &pool, &cpu_ctx()).unwrap();
        let (m, _) = merged.to_f32("head.weight").unwrap();
        let vals: Vec<Vec<f32>> = models
            .iter()
            .map(|x| x.to_f32("head.weight").unwrap().0)
            .collect();
        for i in 0..m.len() {
            let mean_tv = (1..5).map(|k| vals[k][i] - vals[0][i]).sum::<f32>() / 4.0;
            assert!((vals[0][i] + mean_tv - m[i]).abs() < 1e-6, "{target} {i}");
        }
    }
}

/// SVC's task-arithmetic class equals the generic class around task arithmetic; an unknown
/// base method is refused by name.
#[test]
fn svc_task_arithmetic_class_and_unknown_base() {
    let pool = linalg_pool(&["_pretrained_", "task_a", "task_b", "task_c", "task_d"]);
    let a = merge(
        "singular_value_calibration_task_arithmetic",
        json!({"scaling_factor": 0.3, "alpha": 0.1, "accelerator": null}),
        &pool,
        &ctx(Some(0)),
    )
    .unwrap();
    let b = merge(
        "singular_value_calibration",
        json!({"alpha": 0.1, "base_method": {"_target_": "fusion_bench.method.TaskArithmeticAlgorithm", "scaling_factor": 0.3}}),
        &pool,
        &ctx(Some(0)),
    )
    .unwrap();
    assert_eq!(max_rel_error(&a, &b), 0.0);
    let msg = build(
        "singular_value_calibration",
        json!({"alpha": 0.1, "base_method": {"_target_": "fusion_bench.method.AdaMergingAlgorithm"}}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(msg.contains("`base_method._target_: fusion_bench.method.AdaMergingAlgorithm` is not a merging method"), "{msg}");
    let msg = build("singular_value_calibration", json!({"alpha": 0.1}))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("required parameter `base_method`"), "{msg}");
}

#[test]
fn bad_input_errors() {
    let ctx = cpu_ctx();
    // No 2-D weights at all.
    let vectors = |v: f32| {
        model_from(&[
            ("b", vec![4], vec![v; 4]),
            ("n.weight", vec![4], vec![v; 4]),
        ])
    };
    let pool = Pool(vec![
        ("_pretrained_".into(), vectors(0.0)),
        ("a".into(), vectors(1.0)),
        ("b".into(), vectors(2.0)),
    ]);
    for target in ["task_singular_vector", "iso_c", "iso_cts"] {
        let config = json!({"scaling_factor": 1.0, "common_space_fraction": 0.5});
        let msg = merge(target, config, &pool, &ctx).unwrap_err().to_string();
        assert!(
            msg.contains("2-D weights, and the models have none"),
            "{target}: {msg}"
        );
    }
    let msg = merge(
        "magnitude_diff_pruning",
        json!({"prune_ratio": 0.5}),
        &Pool(pool.0[..2].to_vec()),
        &ctx,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("no 2-D weight is selected"), "{msg}");

    // A matrix whose rank cannot give every task one direction (3×4 has rank ≤ 3, 4 tasks).
    let small = |v: f32| {
        model_from(&[(
            "w.weight",
            vec![3, 4],
            (0..12).map(|i| v * i as f32).collect(),
        )])
    };
    let mut models = vec![("_pretrained_".to_string(), small(0.0))];
    for i in 1..=4 {
        models.push((format!("t{i}"), small(i as f32)));
    }
    let msg = merge("task_singular_vector", json!({}), &Pool(models), &ctx)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`w.weight` (3x4) has rank at most 3") && msg.contains("4 task vectors"),
        "{msg}"
    );

    // Too few or too many models.
    let only_base = linalg_pool(&["_pretrained_"]);
    for target in ["magmax", "expo", "task_singular_vector", "iso_c"] {
        let config = json!({"scaling_factor": 1.0, "extrapolation_factor": 0.1});
        let msg = merge(target, config, &only_base, &ctx)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("needs at least 1 model(s)"), "{target}: {msg}");
    }
    let no_base = linalg_pool(&["task_a", "task_b"]);
    let msg = merge("iso_c", json!({"scaling_factor": 1.0}), &no_base, &ctx)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("needs a `_pretrained_` model"), "{msg}");
    let msg = merge(
        "magnitude_diff_pruning",
        json!({"prune_ratio": 0.5}),
        &linalg_pool(&["_pretrained_", "task_a", "task_b"]),
        &ctx,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("prunes one fine-tuned model") && msg.contains("task_a, task_b"),
        "{msg}"
    );

    // Parameters.
    let msg = build(
        "iso_cts",
        json!({"scaling_factor": 1.0, "common_space_fraction": 1.5}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        msg.contains("`common_space_fraction` must be in [0, 1]"),
        "{msg}"
    );
    let msg = build("iso_c", json!({})).err().unwrap().to_string();
    assert!(msg.contains("required parameter `scaling_factor`"), "{msg}");
    let msg = build(
        "magnitude_diff_pruning",
        json!({"prune_ratio": 0.5, "prune_type": "middle"}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        msg.contains("`prune_type` must be `minor` or `major`"),
        "{msg}"
    );
    let msg = build(
        "magnitude_diff_pruning",
        json!({"prune_ratio": 0.5, "extract_names": ["(unclosed"]}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        msg.contains("`(unclosed` is not a regular expression"),
        "{msg}"
    );
}

/// Half-precision checkpoints are merged in f32 and written back in their dtype, as
/// FusionBench converts them for the SVD.
#[test]
fn bf16_models_keep_their_dtype() {
    let names = ["_pretrained_", "task_a", "task_b", "task_c", "task_d"];
    let f32_pool = linalg_pool(&names);
    let bf16_pool = Pool(
        f32_pool
            .0
            .iter()
            .map(|(n, m)| (n.clone(), as_dtype(m, fusion_plugin_api::DType::BF16)))
            .collect(),
    );
    // (Not MagMax: its per-entry choice of task flips where bf16 rounding reorders magnitudes.)
    for target in ["task_singular_vector", "iso_cts"] {
        let config = json!({"scaling_factor": 1.0, "common_space_fraction": 0.8});
        let half = merge(target, config.clone(), &bf16_pool, &cpu_ctx()).unwrap();
        let full = merge(target, config, &f32_pool, &cpu_ctx()).unwrap();
        assert_eq!(
            half.info("fc1.weight").unwrap().dtype,
            fusion_plugin_api::DType::BF16
        );
        // bf16 keeps 8 bits of mantissa: inputs and output rounded.
        let err = max_rel_error(&half, &full);
        assert!(err < 3e-2, "{target}: {err}");
    }
}

/// The device backend of the SVD merges (`FUSION_LINALG=device`, or a GPU adapter) gives the
/// CPU backend's truncated SVDs: one batch of task-vector-like matrices through
/// `fusion_kernels::linalg` on the test adapter against faer in f64. The rank-r
/// reconstructions agree to f32 accuracy (the singular vectors themselves only up to sign).
#[test]
fn device_backend_truncated_svds_match_the_cpu() {
    use fusion_merging::linalg::{Backend, Matrix};
    let (m, n, rank) = (24, 16, 5);
    let mats: Vec<Matrix> = (0..3u64)
        .map(|seed| {
            let mut x = seed * 7919 + 17;
            let data: Vec<f64> = (0..m * n)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 1e-3
                })
                .collect();
            // rounded to f32, as task vectors are
            Matrix::from_f32(m, n, &data.iter().map(|&v| v as f32).collect::<Vec<_>>())
        })
        .collect();
    let cpu = Backend::Cpu.truncated_svds(&mats, rank).unwrap();
    let dev = Backend::Device(ctx(Some(0)))
        .truncated_svds(&mats, rank)
        .unwrap();
    for (i, (a, b)) in cpu.iter().zip(&dev).enumerate() {
        let scale = a.s[0];
        for (x, y) in a.s.iter().zip(&b.s) {
            assert!((x - y).abs() <= 1e-5 * scale, "matrix {i}: σ {x} vs {y}");
        }
        let (ra, rb) = (a.reconstruct(), b.reconstruct());
        let diff = ra
            .data()
            .iter()
            .zip(rb.data())
            .fold(0f64, |w, (x, y)| w.max((x - y).abs()));
        let max = ra.data().iter().fold(0f64, |w, x| w.max(x.abs()));
        assert!(
            diff <= 1e-5 * max,
            "matrix {i}: rank-{rank} reconstructions differ by {diff:e} (max {max:e})"
        );
    }
    // A rank above the matrix's is the same clear error on both.
    for backend in [Backend::Cpu, Backend::Device(ctx(Some(0)))] {
        let msg = backend.truncated_svds(&mats, 17).err().unwrap().to_string();
        assert!(
            msg.contains("rank 17 is larger than the 24x16 matrix allows (at most 16)"),
            "{msg}"
        );
    }
}

/// Not a test: timings of the thin SVD of one 768×3072 and one 1024×4096 matrix (CLIP ViT-B/32
/// and ViT-L/14 MLP weights) through the device (`fusion_kernels::linalg::svd`, upload and read
/// back included) and through faer (f64, `fusion_merging::linalg::svd`), alternating rounds.
/// `cargo test --workspace --locked --test merging -- --ignored linalg_svd_timings --nocapture`;
/// `FUSION_BENCH_ROUNDS` (default 2) rounds; figures in BENCHMARKS.md.
#[test]
#[ignore]
fn linalg_svd_timings() {
    use fusion_merging::linalg::{svd, Matrix};
    use fusion_plugin_api::Compute;
    use std::time::Instant;
    let rounds: usize = std::env::var("FUSION_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let rt = runtime();
    let c: &dyn Compute = &*rt;
    eprintln!("device: {} ({:?})", c.device_name(), c.device_type());
    for (m, n) in [(768usize, 3072usize), (1024, 4096)] {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let data: Vec<f32> = (0..m * n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 1e-2
            })
            .collect();
        let a = Matrix::from_f32(m, n, &data);
        for round in 0..rounds {
            let t = Instant::now();
            let input = fusion_plugin_api::DeviceTensor::from_f32(c, &[1, m, n], &data).unwrap();
            let d = fusion_kernels::linalg::svd(c, input.id(), 1, m, n).unwrap();
            let s = fusion_kernels::nn::read_f32(c, d.s.id()).unwrap();
            let _u = fusion_kernels::nn::read_f32(c, d.u.id()).unwrap();
            let _vt = fusion_kernels::nn::read_f32(c, d.vt.id()).unwrap();
            let dev = t.elapsed().as_secs_f64();
            drop(d);
            drop(input);
            // The randomized truncated SVD at TSV-M's rank for eight tasks.
            let rank = m.min(n) / 8;
            let t = Instant::now();
            let input = fusion_plugin_api::DeviceTensor::from_f32(c, &[1, m, n], &data).unwrap();
            let r = fusion_kernels::linalg::randomized_svd(
                c,
                input.id(),
                1,
                m,
                n,
                rank,
                &Default::default(),
            )
            .unwrap();
            let rs = fusion_kernels::nn::read_f32(c, r.s.id()).unwrap();
            let _ = fusion_kernels::nn::read_f32(c, r.u.id()).unwrap();
            let _ = fusion_kernels::nn::read_f32(c, r.vt.id()).unwrap();
            let rdev = t.elapsed().as_secs_f64();
            drop(r);
            drop(input);
            let t = Instant::now();
            let f = svd(&a);
            let cpu = t.elapsed().as_secs_f64();
            let ds = (s[0] as f64 - f.s[0]).abs() / f.s[0];
            eprintln!(
                "svd {m}x{n} round {round}: device {dev:.2} s, faer {cpu:.2} s; σ1 {:.6e} vs {:.6e} (rel {ds:.1e}); randomized rank {rank} {rdev:.2} s, σ1 {:.6e}, σ{rank} {:.6e} vs {:.6e}",
                s[0], f.s[0], rs[0], rs[rank - 1], f.s[rank - 1]
            );
        }
    }
}

/// The largest absolute entry of `v`.
fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |w, x| w.max(x.abs()))
}

/// The largest absolute entrywise difference of `a` and `b`.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |w, (x, y)| w.max((x - y).abs()))
}

/// The set-up the device-vs-CPU-vs-golden tests share: linalg-tiny's base and four task
/// models, fusion-bench's output `expected/{case}.safetensors` and a device backend; `check`
/// runs for each 2-D weight with its name, shape, θ₀, the four tasks' weights, the golden
/// tensor and the device. At least one weight is checked.
fn for_each_2d_weight(
    case: &str,
    mut check: impl FnMut(
        &str,
        usize,
        usize,
        &[f32],
        &[Vec<f32>],
        &[f32],
        &fusion_merging::linalg::Backend,
    ),
) {
    use fusion_merging::linalg::Backend;
    let base = linalg_model("_pretrained_");
    let tasks: Vec<Model> = ["task_a", "task_b", "task_c", "task_d"]
        .iter()
        .map(|n| linalg_model(n))
        .collect();
    let expected = fusion_checkpoint::open_model(
        linalg_fixtures()
            .join(format!("expected/{case}.safetensors"))
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let device = Backend::Device(ctx(Some(0)));
    let mut checked = 0;
    for name in base.names().unwrap() {
        let (theta0, shape) = base.to_f32(&name).unwrap();
        if shape.len() != 2 {
            continue;
        }
        let (m, n) = (shape[0], shape[1]);
        let weights: Vec<Vec<f32>> = tasks.iter().map(|t| t.to_f32(&name).unwrap().0).collect();
        let (want, _) = expected.to_f32(&name).unwrap();
        check(&name, m, n, &theta0, &weights, &want, &device);
        checked += 1;
    }
    assert!(checked > 0, "linalg-tiny has 2-D weights");
}

/// The task vectors θᵢ − θ₀.
fn task_vectors(weights: &[Vec<f32>], theta0: &[f32]) -> Vec<Vec<f32>> {
    weights
        .iter()
        .map(|v| v.iter().zip(theta0).map(|(a, b)| a - b).collect())
        .collect()
}

/// WUDI's Adam loop on the device (WGSL products and the fused Adam kernel, as a GPU adapter
/// gets it) against the CPU loop and fusion-bench's output for linalg-tiny's `wudi` case
/// (`iter_num` 40, four task vectors): every 2-D weight's merged task vector agrees with the
/// CPU's to 1e-4 of its largest entry, and θ₀ + x with the golden tensor to 1e-4 (as
/// `golden_wudi`).
#[test]
fn wudi_adam_loop_on_the_device_matches_the_cpu_and_the_golden() {
    use fusion_merging::linalg::Backend;
    use fusion_merging::wudi_optimize;
    for_each_2d_weight("wudi", |name, m, n, theta0, weights, want, device| {
        let tvs = task_vectors(weights, theta0);
        let mut sum = tvs[0].clone();
        for tv in &tvs[1..] {
            sum.iter_mut().zip(tv).for_each(|(a, x)| *a += x);
        }
        let cpu = wudi_optimize(&Backend::Cpu, m, n, &tvs, sum.clone(), 40).unwrap();
        let dev = wudi_optimize(device, m, n, &tvs, sum.clone(), 40).unwrap();
        // The steps themselves (x − x₀, about 40·lr per entry) agree to 1%.
        let moved = max_diff(&cpu, &sum);
        let step_diff = cpu
            .iter()
            .zip(&dev)
            .zip(&sum)
            .fold(0f32, |w, ((a, b), s)| w.max(((a - s) - (b - s)).abs()));
        assert!(
            moved > 1e-4 && step_diff <= 1e-2 * moved,
            "`{name}`: the CPU loop moved x by {moved:e}, the device's differs by {step_diff:e}"
        );
        let scale = max_abs(&cpu);
        let diff = max_diff(&cpu, &dev);
        assert!(
            diff <= 1e-4 * scale,
            "`{name}` {m}x{n}: device and CPU task vectors differ by {diff:e} (max {scale:e})"
        );
        let merged: Vec<f32> = theta0.iter().zip(&dev).map(|(a, x)| a + x).collect();
        let wscale = max_abs(want);
        let werr = max_diff(&merged, want);
        assert!(
            werr <= 1e-4 * wscale,
            "`{name}`: device WUDI differs from fusion-bench's by {werr:e} (max {wscale:e})"
        );
        eprintln!(
            "wudi `{name}` {m}x{n}: device vs CPU {diff:.2e} of {scale:.2e}, vs golden {werr:.2e}"
        );
    });
}

/// ISO-C with its SVD on the device (as a GPU adapter runs it) against the CPU's faer SVD and
/// fusion-bench's output for linalg-tiny's `iso_c` case (scaling 1.3): each 2-D weight's task
/// matrix mean(σ)·U·Vᵀ agrees with the CPU's to 1e-4 of its largest entry, θ₀ + 1.3·it with
/// the golden tensor to 1e-4 (as `golden_iso_c`).
#[test]
fn iso_c_svd_on_the_device_matches_the_cpu_and_the_golden() {
    use fusion_merging::iso_c_on;
    use fusion_merging::linalg::Backend;
    for_each_2d_weight("iso_c", |name, m, n, theta0, weights, want, device| {
        let tvs = task_vectors(weights, theta0);
        let cpu = iso_c_on(&Backend::Cpu, m, n, &tvs).unwrap();
        let dev = iso_c_on(device, m, n, &tvs).unwrap();
        let scale = max_abs(&cpu);
        let diff = max_diff(&cpu, &dev);
        assert!(
            diff <= 1e-4 * scale,
            "`{name}` {m}x{n}: device and CPU ISO-C differ by {diff:e} (max {scale:e})"
        );
        let merged: Vec<f32> = theta0.iter().zip(&dev).map(|(a, x)| a + 1.3 * x).collect();
        let wscale = max_abs(want);
        let werr = max_diff(&merged, want);
        assert!(
            werr <= 1e-4 * wscale,
            "`{name}`: device ISO-C differs from fusion-bench's by {werr:e} (max {wscale:e})"
        );
        eprintln!(
            "iso_c `{name}` {m}x{n}: device vs CPU {diff:.2e} of {scale:.2e}, vs golden {werr:.2e}"
        );
    });
}

/// SVC with the SVD of the merged task matrix on the device, after task arithmetic (0.3, as
/// linalg-tiny's `svc_task_arithmetic`, alpha 0.1): each 2-D weight agrees with the CPU path
/// and with fusion-bench's output to 1e-4 of its largest entry.
#[test]
fn svc_svd_on_the_device_matches_the_cpu_and_the_golden() {
    use fusion_merging::linalg::Backend;
    use fusion_merging::svc_on;
    for_each_2d_weight(
        "svc_task_arithmetic",
        |name, m, n, theta0, weights, want, device| {
            // Task arithmetic, θ₀ + 0.3·Σ(θᵢ − θ₀), in f32.
            let mut sum = vec![0f32; m * n];
            for w in weights {
                sum.iter_mut()
                    .zip(w.iter().zip(theta0))
                    .for_each(|(s, (a, b))| *s += a - b);
            }
            let merged: Vec<f32> = theta0.iter().zip(&sum).map(|(b, s)| b + 0.3 * s).collect();
            let cpu = svc_on(&Backend::Cpu, m, n, theta0, &merged, weights, 0.1).unwrap();
            let dev = svc_on(device, m, n, theta0, &merged, weights, 0.1).unwrap();
            let scale = max_abs(want);
            let (dc, dg) = (max_diff(&cpu, &dev), max_diff(&dev, want));
            assert!(
                dc <= 1e-4 * scale && dg <= 1e-4 * scale,
                "`{name}` {m}x{n}: device vs CPU {dc:e}, vs golden {dg:e} (max {scale:e})"
            );
            eprintln!(
                "svc `{name}` {m}x{n}: device vs CPU {dc:.2e}, vs golden {dg:.2e} of {scale:.2e}"
            );
        },
    );
}
