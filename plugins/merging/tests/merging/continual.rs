//! The continual methods (OPCM and its continual baselines) against the models fusion-bench
//! produced after every step for `tests/data/linalg-tiny/continual.yaml`
//! (`make_linalg_continual.py`), and their errors on bad input. They run without a compute
//! device.

use std::path::{Path, PathBuf};

use fusion_merging::{
    ContinualDopForClip, ContinualTaskArithmetic, ContinualTiesMerging, ContinualWeightAverage,
    DogeTa, Dop, Opcm, SuperposedModelSoup, SuperposedTaskArithmetic, SuperposedTaskArithmeticLora,
};
use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::{self, json};

use crate::common::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/linalg-tiny")
}

fn open(path: &Path) -> Model {
    fusion_checkpoint::open_model(path.to_str().unwrap()).expect("fixture model")
}

fn pool(names: &[&str]) -> Pool {
    pool_in("models", names)
}

fn pool_in(models_dir: &str, names: &[&str]) -> Pool {
    Pool(
        names
            .iter()
            .map(|n| {
                let path = dir().join(models_dir).join(format!("{n}.safetensors"));
                (n.to_string(), open(&path))
            })
            .collect(),
    )
}

fn cpu() -> Context {
    Context::local(None, false, None)
}

fn build(target: &str, config: serde_json::Value) -> Result<Box<dyn Algorithm>> {
    let cfg = Config::new(target, config)?;
    let short = target.rsplit('.').next().unwrap();
    let algorithm: Box<dyn Algorithm> = match short {
        "OPCM" | "OPCMForCLIP" | "opcm" => Box::new(Opcm::from_config(&cfg)?),
        "ContinualTaskArithmeticForCLIP" => Box::new(ContinualTaskArithmetic::from_config(&cfg)?),
        "ContinualTiesMergingForCLIP" => Box::new(ContinualTiesMerging::from_config(&cfg)?),
        "ContinualWeightAverageForCLIP" => Box::new(ContinualWeightAverage::from_config(&cfg)?),
        "DOPMerging" | "dop" => Box::new(Dop::from_config(&cfg)?),
        "ContinualDOPForCLIP" | "dop_clip" => Box::new(ContinualDopForClip::from_config(&cfg)?),
        "SuperposedTaskArithmeticLoRAAlgorithm" | "superposed_task_arithmetic_lora" => {
            Box::new(SuperposedTaskArithmeticLora::from_config(&cfg)?)
        }
        "DOGE_TA_Algorithm" => Box::new(DogeTa::from_config(&cfg)?),
        "SuperposedModelSoupAlgorithm" | "superposed_model_soup" => {
            Box::new(SuperposedModelSoup::from_config(&cfg)?)
        }
        "SuperposedTaskArithmeticAlgorithm" | "superposed_task_arithmetic" => {
            Box::new(SuperposedTaskArithmetic::from_config(&cfg)?)
        }
        other => panic!("no continual algorithm {other}"),
    };
    cfg.check_parameters()?;
    Ok(algorithm)
}

/// Run case `name` of continual.yaml: every step's model against fusion-bench's; returns the
/// worst relative error.
fn case(name: &str, tolerance: f64) -> f64 {
    let text = std::fs::read_to_string(dir().join("continual.yaml")).unwrap();
    let cases: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let case = &cases["cases"][name];
    let method: serde_json::Value = serde_json::to_value(&case["method"]).unwrap();
    let target = method["_target_"].as_str().unwrap().to_string();
    let mut config = method.clone();
    config.as_object_mut().unwrap().remove("_target_");
    let models: Vec<String> = serde_norway::from_value(case["models"].clone()).unwrap();
    let steps: Vec<String> = serde_norway::from_value(case["steps"].clone()).unwrap();
    let names: Vec<&str> = models.iter().map(String::as_str).collect();
    let models_dir = case["models_dir"].as_str().unwrap_or("models");
    let pool = pool_in(models_dir, &names);
    // DOP shuffles by the program's seed
    let seed = case["program_seed"].as_u64();
    let cpu = || Context::local(seed, false, None);
    let algorithm = build(&target, config.clone()).unwrap();
    if target.contains("DOGE") {
        let got = algorithm.run(&pool, &cpu()).unwrap();
        let err = max_rel_error(&got, &open(&dir().join(&steps[0])));
        eprintln!("{name}: max relative error {err:.3e}");
        assert!(err <= tolerance, "{name}: {err:.3e} > {tolerance:e}");
        return err;
    }
    let got = algorithm.run_models(&pool, &cpu()).unwrap();
    assert_eq!(got.len(), steps.len(), "{name}: one model per step");
    let prefix =
        if target.contains("OPCM") || target.contains("WeightAverage") || target.contains("DOP") {
            "merged_model_"
        } else {
            "model_"
        };
    let mut worst = 0.0f64;
    for (t, ((model_name, model), file)) in got.iter().zip(&steps).enumerate() {
        assert_eq!(model_name, &format!("{prefix}{t}"));
        let err = max_rel_error(model, &open(&dir().join(file)));
        eprintln!("continual {name} step {t}: max relative error {err:.3e}");
        assert!(
            err <= tolerance,
            "{name} step {t}: {err:.3e} > {tolerance:e}"
        );
        worst = worst.max(err);
    }
    // `run` returns the last step's model; `save_on_every_step: false` returns it alone.
    let last = open(&dir().join(steps.last().unwrap()));
    let alone = algorithm.run(&pool, &cpu()).unwrap();
    assert!(max_rel_error(&alone, &last) <= tolerance);
    config["save_on_every_step"] = json!(false);
    let one = build(&target, config)
        .unwrap()
        .run_models(&pool, &cpu())
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].0, "");
    assert!(max_rel_error(&one[0].1, &last) <= tolerance);
    worst
}

/// OPCM projects with SVDs: 1e-4 as the other SVD methods.
const SVD: f64 = 1e-4;
/// f32 arithmetic in FusionBench's order.
const ELEMENTWISE: f64 = 1e-5;

#[test]
fn golden_opcm_in_pool_order() {
    case("opcm", SVD);
}

#[test]
fn golden_opcm_shuffled_with_seed() {
    case("opcm_shuffled", SVD);
}

#[test]
fn golden_opcm_alpha_0_8() {
    case("opcm_alpha_0.8", SVD);
}

#[test]
fn golden_continual_task_arithmetic() {
    case("continual_task_arithmetic", ELEMENTWISE);
}

#[test]
fn golden_continual_ties_merging() {
    case("continual_ties_merging", ELEMENTWISE);
}

#[test]
fn golden_continual_ties_merging_mean() {
    case("continual_ties_merging_mean", ELEMENTWISE);
}

#[test]
fn golden_continual_weight_average() {
    case("continual_weight_average", ELEMENTWISE);
}

/// DOP: Adam on SVD projections; the program's seed orders the models.
#[test]
fn golden_dop() {
    case("dop", SVD);
}

#[test]
fn golden_dop_weighted_u_with_excluded_layer() {
    case("dop_weighted_u", SVD);
}

#[test]
fn golden_dop_mgda_without_ema_v() {
    case("dop_mgda_v", SVD);
}

#[test]
fn golden_doge_ta() {
    case("doge_ta", SVD);
}

#[test]
fn golden_doge_ta_three_models() {
    case("doge_ta_three", SVD);
}

const ALL: &[&str] = &["_pretrained_", "task_a", "task_b", "task_c", "task_d"];

/// Without a seed of its own the shuffle takes the program's; the same seed gives the same
/// order, another seed (here) another one.
#[test]
fn shuffle_follows_the_program_seed() {
    let config = json!({"alpha": 0.5, "shuffle_order": true, "save_on_every_step": true});
    let first = |seed| {
        let models = build("opcm", config.clone())
            .unwrap()
            .run_models(&pool(ALL), &Context::local(Some(seed), false, None))
            .unwrap();
        // step 0 is the first model taken, unchanged
        let step0 = &models[0].1;
        ALL[1..]
            .iter()
            .find(|n| max_rel_error(step0, &pool(ALL).load_model(n).unwrap()) == 0.0)
            .copied()
            .unwrap()
    };
    // random.seed(42); random.shuffle(task_a..task_d) takes task_c first, seed 7 task_d
    assert_eq!(first(42), "task_c");
    assert_eq!(first(7), "task_d");
}

fn err(target: &str, config: serde_json::Value, names: &[&str]) -> String {
    match build(target, config) {
        Err(e) => e.to_string(),
        Ok(a) => a
            .run_models(&pool(names), &cpu())
            .map(|_| ())
            .unwrap_err()
            .to_string(),
    }
}

#[test]
fn errors_name_the_culprit() {
    // no models to merge
    let msg = err("opcm", json!({"alpha": 0.5}), &["_pretrained_"]);
    assert!(msg.contains("at least 1 model"), "{msg}");
    // no base model
    let msg = err("opcm", json!({"alpha": 0.5}), &["task_a", "task_b"]);
    assert!(msg.contains("_pretrained_"), "{msg}");
    // alpha is required
    let msg = err("opcm", json!({}), ALL);
    assert!(msg.contains("alpha"), "{msg}");
    // an unknown parameter
    let msg = err("opcm", json!({"alpha": 0.5, "alhpa": 1}), ALL);
    assert!(msg.contains("alhpa"), "{msg}");
    // a seed outside numpy's range
    let msg = err("opcm", json!({"alpha": 0.5, "seed": 1u64 << 40}), ALL);
    assert!(msg.contains("seed"), "{msg}");
    // a TIES threshold that keeps everything
    let t = "fusion_bench.method.opcm.ties_merging.ContinualTiesMergingForCLIP";
    let msg = err(t, json!({"scaling_factor": 0.5, "threshold": 100}), ALL);
    assert!(msg.contains("threshold"), "{msg}");
    let msg = err(
        t,
        json!({"scaling_factor": 0.5, "threshold": 20, "merge_func": "median"}),
        ALL,
    );
    assert!(msg.contains("merge_func"), "{msg}");
    // removed keys fail in FusionBench from the second model on
    let msg = err(
        t,
        json!({"scaling_factor": 0.5, "threshold": 20, "remove_keys": ["fc1.weight"]}),
        ALL,
    );
    assert!(
        msg.contains("fc1.weight") && msg.contains("remove_keys"),
        "{msg}"
    );
}

/// Weight average needs no `_pretrained_`; one model gives that model back.
#[test]
fn weight_average_without_pretrained_and_one_model() {
    let t = "fusion_bench.method.opcm.weight_average.ContinualWeightAverageForCLIP";
    let a = build(t, json!({"shuffle_order": false})).unwrap();
    let models = a.run_models(&pool(&["task_b"]), &cpu()).unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].0, "merged_model_0");
    assert_eq!(
        max_rel_error(
            &models[0].1,
            &pool(&["task_b"]).load_model("task_b").unwrap()
        ),
        0.0
    );
    let two = a.run(&pool(&["task_a", "task_b"]), &cpu()).unwrap();
    let (x, _) = pool(&["task_a"])
        .load_model("task_a")
        .unwrap()
        .to_f32("fc1.weight")
        .unwrap();
    let (y, _) = pool(&["task_b"])
        .load_model("task_b")
        .unwrap()
        .to_f32("fc1.weight")
        .unwrap();
    let (m, _) = two.to_f32("fc1.weight").unwrap();
    for ((m, x), y) in m.iter().zip(&x).zip(&y) {
        assert!((m - (x + y) / 2.0).abs() <= 1e-6);
    }
}

/// A RanDeS case: every retrieved model against fusion-bench's (run with PYTHONHASHSEED=0).
fn randes_case(name: &str) {
    randes_case_within(name, ELEMENTWISE);
}

/// A RanDeS case within `tolerance`; the models come from the case's `models_dir`, and
/// `_pretrained_` from its `pretrained` file when it names one (the LoRA cases).
fn randes_case_within(name: &str, tolerance: f64) {
    let text = std::fs::read_to_string(dir().join("continual.yaml")).unwrap();
    let cases: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let case = &cases["cases"][name];
    let mut config: serde_json::Value = serde_json::to_value(&case["method"]).unwrap();
    let target = config["_target_"].as_str().unwrap().to_string();
    config.as_object_mut().unwrap().remove("_target_");
    let models: Vec<String> = serde_norway::from_value(case["models"].clone()).unwrap();
    let names: Vec<&str> = models.iter().map(String::as_str).collect();
    let models_dir = case["models_dir"].as_str().unwrap_or("doge/models");
    let mut pool = pool_in(models_dir, &names[1..]);
    let own = format!("{models_dir}/_pretrained_.safetensors");
    let pretrained = case["pretrained"].as_str().unwrap_or(&own);
    pool.0
        .insert(0, ("_pretrained_".into(), open(&dir().join(pretrained))));
    let got = build(&target, config)
        .unwrap()
        .run_models(&pool, &cpu())
        .unwrap();
    assert_eq!(
        got.len(),
        models.len() - 1,
        "{name}: one model per pool model"
    );
    for ((model_name, model), want) in got.iter().zip(&models[1..]) {
        assert_eq!(model_name, want);
        let file = case["retrieved"][want.as_str()].as_str().unwrap();
        let err = max_rel_error(model, &open(&dir().join(file)));
        eprintln!("{name} {model_name}: max relative error {err:.3e}");
        assert!(err <= tolerance, "{name} {model_name}: {err:.3e}");
    }
}

#[test]
fn golden_randes_soup_identity() {
    randes_case("randes_soup_identity");
}

#[test]
fn golden_randes_soup_binary_average_absorber() {
    randes_case("randes_soup_binary_absorber");
}

#[test]
fn golden_randes_soup_gaussian_pretrained_absorber_with_biases() {
    randes_case("randes_soup_pretrained_gaussian");
}

#[test]
fn golden_randes_task_arithmetic_binary() {
    randes_case("randes_ta_binary");
}

#[test]
fn golden_randes_task_arithmetic_gaussian_same_contexts_across_layers() {
    randes_case("randes_ta_gaussian_mlp");
}

#[test]
fn randes_errors() {
    let base = json!({
        "mode": "random_binary_diagonal_matrix", "target_layer": ["mlp_w", "attn_w"],
        "random_seed": 42, "different_across_layers": true, "joint_matrix_mode": "flatten_hstack",
        "rank": 1, "random_components": false, "shift_layers": 0, "debug": 0, "verbose": 0,
        "dropout_rate": 1, "scaling_factor": 0.5, "model_path": null
    });
    // FusionBench's own superposed_task_arithmetic.yaml lacks `absorber` and `ms_mode`
    let msg = err("superposed_task_arithmetic", base.clone(), ALL);
    assert!(msg.contains("absorber"), "{msg}");
    let mut cfg = base.clone();
    cfg["absorber"] = json!("None");
    cfg["ms_mode"] = json!("average");
    // superposed_model_soup.yaml's `manual_absorption` is no mode FusionBench has
    cfg["mode"] = json!("manual_absorption");
    let msg = err("superposed_task_arithmetic", cfg.clone(), ALL);
    assert!(msg.contains("manual_absorption"), "{msg}");
    cfg["mode"] = json!("random_rotation_matrix");
    let msg = err("superposed_task_arithmetic", cfg.clone(), ALL);
    assert!(msg.contains("random_rotation_matrix"), "{msg}");
    cfg["mode"] = json!("identity_matrix");
    // a shuffle of layer numbers where no name has one (FusionBench fails on it too)
    cfg["shift_layers"] = json!(-1);
    let msg = err("superposed_task_arithmetic", cfg.clone(), ALL);
    assert!(msg.contains("shift_layers"), "{msg}");
    cfg["shift_layers"] = json!(0);
    cfg["target_layer"] = json!(["ffn"]);
    let msg = err("superposed_task_arithmetic", cfg.clone(), ALL);
    assert!(msg.contains("ffn"), "{msg}");
    cfg["target_layer"] = json!(["mlp_w"]);
    let msg = err("superposed_task_arithmetic", cfg, &["_pretrained_"]);
    assert!(msg.contains("at least 1 model"), "{msg}");
}

#[test]
fn dop_and_doge_errors() {
    let dop = json!({"alpha": 1.5});
    let msg = err("dop", dop, ALL);
    assert!(msg.contains("alpha"), "{msg}");
    let msg = err("dop", json!({"alpha": 0.5, "svd_proj_space": "w"}), ALL);
    assert!(msg.contains("svd_proj_space"), "{msg}");
    let msg = err("dop", json!({"alpha": 0.5}), &["_pretrained_"]);
    assert!(msg.contains("at least 1 model"), "{msg}");
    let doge = "fusion_bench.method.DOGE_TA_Algorithm";
    // the plain linalg-tiny names have no `encoder`
    let msg = err(doge, json!({"subspace": 6, "K": 30, "lamda": 0.07}), ALL);
    assert!(msg.contains("encoder"), "{msg}");
    let msg = err(doge, json!({"subspace": 6, "lamda": 0.07}), ALL);
    assert!(msg.contains('K'), "{msg}");
    let msg = err(doge, json!({"subspace": 0, "K": 30, "lamda": 0.07}), ALL);
    assert!(msg.contains("subspace"), "{msg}");
}

/// 25 task vectors cannot each get one singular direction of a 24-wide encoder weight.
#[test]
fn doge_rank_too_small_for_the_models() {
    let mut pool = pool_in("doge/models", ALL);
    for i in 0..21 {
        let m = pool.0[1 + i % 4].1.clone();
        pool.0.push((format!("copy_{i}"), m));
    }
    let doge = build(
        "fusion_bench.method.DOGE_TA_Algorithm",
        json!({"subspace": 6, "K": 30, "lamda": 0.07}),
    )
    .unwrap();
    let msg = doge.run(&pool, &cpu()).map(|_| ()).unwrap_err().to_string();
    assert!(
        msg.contains("rank at most 24") && msg.contains("25 task vectors"),
        "{msg}"
    );
}

/// A linear layer the first model left unchanged (a zero task vector, whose SVD has no
/// direction): OPCM and DOP run and give finite weights.
#[test]
fn a_layer_left_unchanged_by_the_first_model() {
    let w = |s: f32| {
        (0..12)
            .map(|i| (i as f32 * 0.37 + s).sin())
            .collect::<Vec<f32>>()
    };
    let b = |s: f32| vec![s; 4];
    let model = |fc: f32, g: f32| {
        model_from(&[
            ("fc.weight", vec![4, 3], w(fc)),
            ("fc.bias", vec![4], b(fc)),
            ("g.weight", vec![4, 3], w(g)),
        ])
    };
    let pool = Pool(vec![
        ("_pretrained_".into(), model(0.0, 0.0)),
        ("first".into(), model(0.0, 0.5)),
        ("second".into(), model(0.3, 0.2)),
    ]);
    for (target, config) in [
        ("opcm", json!({"alpha": 0.5, "shuffle_order": false})),
        ("dop", json!({"alpha": 0.5, "num_steps": 20})),
    ] {
        let merged = build(target, config).unwrap().run(&pool, &cpu()).unwrap();
        for name in ["fc.weight", "fc.bias", "g.weight"] {
            let (v, _) = merged.to_f32(name).unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{target} {name}: {v:?}");
        }
    }
}

// ---- issue 17 item 2: DOP for CLIP, RanDeS rotation, dense and LoRA ------------------------

#[test]
fn golden_dop_clip_seeded_shuffle() {
    case("dop_clip", SVD);
}

/// The class's own `ema_beta` (0.99), MGDA on U.
#[test]
fn golden_dop_clip_ema_default_u() {
    case("dop_clip_ema_default_u", SVD);
}

/// ContinualDOPForCLIP writes the order it merged in to the log folder, takes no
/// `exclude_keys`, and `evaluate_on_every_step` returns every step's model.
#[test]
fn dop_clip_order_file_parameters_and_steps() {
    let log = std::env::temp_dir().join(format!("fusion-dop-clip-{}", std::process::id()));
    std::fs::create_dir_all(&log).unwrap();
    let config = json!({"alpha": 0.8, "seed": 7, "shuffle_order": true, "num_steps": 5,
                        "save_on_every_step": false, "evaluate_on_every_step": true});
    let ctx = Context::local(Some(1), false, None).with_log_dir(&log);
    let models = build("dop_clip", config)
        .unwrap()
        .run_models(&pool(ALL), &ctx)
        .unwrap();
    let names: Vec<&str> = models.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "merged_model_0",
            "merged_model_1",
            "merged_model_2",
            "merged_model_3"
        ]
    );
    let order: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(log.join("model_names.json")).unwrap())
            .unwrap();
    // random.seed(7); random.shuffle(task_a..task_d)
    assert_eq!(order, ["task_d", "task_b", "task_a", "task_c"]);
    std::fs::remove_dir_all(&log).unwrap();
    let msg = err(
        "dop_clip",
        json!({"alpha": 0.8, "exclude_keys": ["fc2"]}),
        ALL,
    );
    assert!(msg.contains("exclude_keys"), "{msg}");
    let msg = err("dop_clip", json!({"alpha": 0.8}), &["_pretrained_"]);
    assert!(msg.contains("at least 1 model"), "{msg}");
    let msg = err("dop_clip", json!({}), ALL);
    assert!(msg.contains("alpha"), "{msg}");
}

/// Rotations: an orthogonal matrix per model from scipy's ortho_group; 1e-4 as the other
/// methods with matrix factorizations.
#[test]
fn golden_randes_task_arithmetic_rotation() {
    randes_case_within("randes_ta_rotation", SVD);
}

#[test]
fn golden_randes_soup_rotation_with_biases_pretrained_absorber() {
    randes_case_within("randes_soup_rotation_pretrained", SVD);
}

/// Dense Gaussian contexts retrieved by their pseudo-inverses. FusionBench's are torch's f32
/// ones, off by about cond(C)·ε(f32), which the retrieved models carry (up to 1.7e-4 relative
/// here): fusion-host's f64 pseudo-inverse matches FusionBench's code run with the
/// pseudo-inverse in float64 to f32 rounding, and FusionBench's own output within 5e-4.
#[test]
fn golden_randes_task_arithmetic_dense() {
    randes_case_within("randes_ta_dense_pinv_f64", ELEMENTWISE);
    randes_case_within("randes_ta_dense", 5e-4);
}

#[test]
fn golden_randes_lora_binary() {
    randes_case("randes_lora_binary");
}

#[test]
fn golden_randes_lora_rotation_mlp_only() {
    randes_case_within("randes_lora_rotation_mlp", SVD);
}

#[test]
fn randes_rotation_dense_and_lora_errors() {
    let base = json!({
        "mode": "random_rotation_matrix", "target_layer": ["mlp_w", "attn_w"],
        "random_seed": 42, "different_across_layers": true, "joint_matrix_mode": "flatten_hstack",
        "rank": 1, "random_components": false, "shift_layers": 0, "debug": 0, "verbose": 0,
        "dropout_rate": 1, "scaling_factor": 0.5, "model_path": null, "absorber": "None",
        "ms_mode": "average"
    });
    // FusionBench's float seed, which scipy refuses
    let msg = err("superposed_task_arithmetic", base.clone(), ALL);
    assert!(msg.contains("different_across_layers"), "{msg}");
    let mut cfg = base.clone();
    cfg["mode"] = json!("random_sparse_matrix");
    let msg = err("superposed_task_arithmetic", cfg, ALL);
    assert!(
        msg.contains("random_sparse_matrix") && msg.contains("random_dense_matrix"),
        "{msg}"
    );
    // LoRA: whole models are no adapters; no adapters; no pretrained model
    let mut lora = base.clone();
    lora["mode"] = json!("random_binary_diagonal_matrix");
    let msg = match build("superposed_task_arithmetic_lora", lora.clone()) {
        Ok(a) => a
            .run_models(&pool_in("doge/models", ALL), &cpu())
            .map(|_| ())
            .unwrap_err()
            .to_string(),
        Err(e) => panic!("{e}"),
    };
    assert!(msg.contains("not a LoRA tensor"), "{msg}");
    let msg = build("superposed_task_arithmetic_lora", lora.clone())
        .unwrap()
        .run_models(&pool_in("doge/models", &["_pretrained_"]), &cpu())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("at least 1 LoRA adapter"), "{msg}");
    let msg = build("superposed_task_arithmetic_lora", lora)
        .unwrap()
        .run_models(&pool_in("randes/lora", &["task_a", "task_b"]), &cpu())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("_pretrained_"), "{msg}");
}

/// `shift_layers`: each model's layers moved by 1 (or 2, with rotations) before the
/// superposition and back after it, or shuffled (-1), on three-layer models.
#[test]
fn golden_randes_task_arithmetic_shift_1() {
    randes_case("randes_ta_shift_1");
}

#[test]
fn golden_randes_soup_shift_random_shuffle() {
    randes_case("randes_soup_shift_random");
}

#[test]
fn golden_randes_task_arithmetic_shift_2_rotation() {
    randes_case_within("randes_ta_shift_2_rotation", SVD);
}

/// A shift that moves a target to a layer without that tensor is refused, naming both.
#[test]
fn randes_shift_needs_every_target_in_every_layer() {
    let cfg = json!({
        "mode": "random_binary_diagonal_matrix", "target_layer": ["mlp_w", "attn_w"],
        "random_seed": 42, "different_across_layers": true, "joint_matrix_mode": "flatten_hstack",
        "rank": 1, "random_components": false, "shift_layers": 1, "debug": 0, "verbose": 0,
        "dropout_rate": 2, "scaling_factor": 0.5, "model_path": null, "absorber": "None",
        "ms_mode": "average"
    });
    let pool = pool_in("randes/layers3", &["_pretrained_", "task_a", "task_b"]);
    let msg = build("superposed_task_arithmetic", cfg)
        .unwrap()
        .run_models(&pool, &cpu())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("shift_layers") && msg.contains("moves"),
        "{msg}"
    );
}
