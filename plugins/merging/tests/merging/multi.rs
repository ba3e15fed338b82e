//! The methods that return several models (TALL masks, EMR merging), against what fusion-bench produced for `tests/data/linalg-tiny` (`cases_extra.yaml`, made by
//! `make_linalg_extra.py`), and their errors on bad input. They run without a compute device.

use std::path::{Path, PathBuf};

use fusion_merging::{EmrMerging, TallMask};
use fusion_plugin_api::serde_json::{self, json, Value};
use fusion_plugin_api::{Algorithm, Config, Context, FromConfig, Model};

use crate::common::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/linalg-tiny")
}

fn model(path: &Path) -> Model {
    fusion_checkpoint::open_model(path.to_str().unwrap()).expect("fixture model")
}

fn pool(names: &[&str]) -> Pool {
    Pool(
        names
            .iter()
            .map(|n| {
                let m = model(&dir().join("models").join(format!("{n}.safetensors")));
                (n.to_string(), m)
            })
            .collect(),
    )
}

const ALL: [&str; 5] = ["_pretrained_", "task_a", "task_b", "task_c", "task_d"];

fn cpu_ctx() -> Context {
    Context::local(Some(0), false, None)
}

fn build(target: &str, config: Value) -> fusion_plugin_api::Result<Box<dyn Algorithm>> {
    let cfg = Config::new(target, config)?;
    let algo: Box<dyn Algorithm> = match target {
        "tall_mask" => Box::new(TallMask::from_config(&cfg)?),
        "emr_merging" => Box::new(EmrMerging::from_config(&cfg)?),
        other => panic!("no such algorithm here: {other}"),
    };
    cfg.check_parameters()?;
    Ok(algo)
}

/// A case of `cases_extra.yaml`.
fn case(name: &str) -> serde_norway::Value {
    let text = std::fs::read_to_string(dir().join("cases_extra.yaml")).unwrap();
    let cases: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    cases["cases"][name].clone()
}

/// Run a several-models case: the method's config without `_target_`, the pool's models, and the
/// expected file of each returned model by name.
fn run_case(target: &str, name: &str) -> Vec<(String, Model)> {
    let case = case(name);
    let mut method: Value = serde_json::to_value(&case["method"]).unwrap();
    method.as_object_mut().unwrap().remove("_target_");
    let models: Vec<String> = serde_norway::from_value(case["models"].clone()).unwrap();
    let names: Vec<&str> = models.iter().map(String::as_str).collect();
    build(target, method)
        .unwrap()
        .run_models(&pool(&names), &cpu_ctx())
        .unwrap()
}

fn expected(name: &str) -> Vec<(String, Model)> {
    let case = case(name);
    let files: std::collections::BTreeMap<String, String> =
        serde_norway::from_value(case["expected"].clone()).unwrap();
    files
        .into_iter()
        .map(|(k, f)| (k, model(&dir().join(f))))
        .collect()
}

/// Elementwise methods: f32 arithmetic in FusionBench's order (EMR's rescalers are means over
/// the model, summed in another order).
const ELEMENTWISE: f64 = 1e-5;

fn golden_tall(name: &str) {
    let got = run_case("tall_mask", name);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "models/task_a",
            "models/task_b",
            "models/task_c",
            "models/task_d",
            "metadata"
        ]
    );
    assert_eq!(got[4].1.as_report_value().unwrap(), Some(Value::Null));
    let want = expected(name);
    assert_eq!(want.len(), 4);
    for (task, expected) in &want {
        let (_, model) = got
            .iter()
            .find(|(n, _)| n == &format!("models/{task}"))
            .unwrap();
        assert_eq!(model.as_report_value().unwrap(), None);
        let err = max_rel_error(model, expected);
        eprintln!("golden {name}/{task}: max relative error {err:.3e}");
        assert!(err <= ELEMENTWISE, "{name}/{task}: {err:.3e}");
    }
}

#[test]
fn golden_tall_mask() {
    golden_tall("tall_mask");
}

#[test]
fn golden_tall_mask_lambda_0_3() {
    golden_tall("tall_mask_0.3");
}

fn golden_emr(name: &str, tasks: &[&str]) {
    let got = run_case("emr_merging", name);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, tasks);
    let want = expected(name);
    for (task, model) in &got {
        let (_, expected) = want.iter().find(|(n, _)| n == task).unwrap();
        let err = max_rel_error(model, expected);
        eprintln!("golden {name}/{task}: max relative error {err:.3e}");
        assert!(err <= ELEMENTWISE, "{name}/{task}: {err:.3e}");
    }
}

#[test]
fn golden_emr_merging() {
    golden_emr("emr_merging", &["task_a", "task_b", "task_c", "task_d"]);
}

#[test]
fn golden_emr_merging_three_models() {
    golden_emr("emr_merging_3", &["task_b", "task_c", "task_d"]);
}

/// The models differ from each other and from the pretrained model (the masks select).
#[test]
fn per_task_models_differ() {
    for (target, config) in [
        ("tall_mask", json!({"tall_mask_lambda": 0.6})),
        ("emr_merging", json!({})),
    ] {
        let got = build(target, config)
            .unwrap()
            .run_models(&pool(&ALL), &cpu_ctx())
            .unwrap();
        let base = model(&dir().join("models/_pretrained_.safetensors"));
        let models: Vec<&Model> = got
            .iter()
            .filter(|(n, _)| n != "metadata")
            .map(|(_, m)| m)
            .collect();
        assert_eq!(models.len(), 4, "{target}");
        for (i, a) in models.iter().enumerate() {
            assert!(max_rel_error(a, &base) > 1e-3, "{target} {i}");
            for b in &models[i + 1..] {
                assert!(max_rel_error(a, b) > 1e-4, "{target} {i}");
            }
        }
    }
}

fn error(target: &str, config: Value, models: &[&str]) -> String {
    let run = || -> fusion_plugin_api::Result<()> {
        build(target, config)?.run_models(
            &pool(models),
            &cpu_ctx().with_log_dir(&std::env::temp_dir()),
        )?;
        Ok(())
    };
    let err = run().expect_err("refused");
    assert_eq!(err.kind, fusion_plugin_api::ErrorKind::Config, "{err}");
    err.to_string()
}

/// Too few models, no `_pretrained_`, missing and unknown parameters (nested ones too): each a
/// config error naming the culprit.
#[test]
fn bad_input_is_named() {
    let msg = error(
        "tall_mask",
        json!({"tall_mask_lambda": 0.6}),
        &["_pretrained_"],
    );
    assert!(msg.contains("tall_mask needs at least 1 model"), "{msg}");
    let msg = error("emr_merging", json!({}), &["task_a", "task_b"]);
    assert!(
        msg.contains("emr_merging needs a `_pretrained_` model"),
        "{msg}"
    );
    let msg = error("tall_mask", json!({}), &ALL);
    assert!(
        msg.contains("required parameter `tall_mask_lambda`"),
        "{msg}"
    );
    let msg = error(
        "tall_mask",
        json!({"tall_mask_lambda": 0.6, "tall_mask_lamda": 1}),
        &ALL,
    );
    assert!(
        msg.contains("`tall_mask_lamda` (did you mean `tall_mask_lambda`?)"),
        "{msg}"
    );
    // a method of several models cannot serve as one model
    let err = build("emr_merging", json!({}))
        .unwrap()
        .run(&pool(&ALL), &cpu_ctx())
        .unwrap_err()
        .to_string();
    assert!(err.contains("returns one model per task"), "{err}");
}
