//! Every deterministic case of `tests/data/merge-tiny/cases.yaml` that this plugin covers,
//! against the tensors fusion-bench produced (torch float32 on CPU).

use fusion_plugin_api::serde_json;

use crate::common::*;

/// Tolerance on `max|got − expected| / max|expected|` per tensor.
const TOLERANCE: f64 = 1e-5;

fn case(name: &str) -> f64 {
    let text = std::fs::read_to_string(fixtures().join("cases.yaml")).unwrap();
    let cases: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let case = &cases["cases"][name];
    let method: serde_json::Value = serde_json::to_value(&case["method"]).unwrap();
    let target = method["_target_"].as_str().unwrap().to_string();
    let models: Vec<String> = serde_norway::from_value(case["models"].clone()).unwrap();
    let pool = fixture_pool(&models.iter().map(String::as_str).collect::<Vec<_>>());
    let merged = merge(&target, method, &pool, &ctx(Some(0))).unwrap();
    let expected = fusion_checkpoint::open_model(
        fixtures()
            .join(case["expected"].as_str().unwrap())
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let err = max_rel_error(&merged, &expected);
    eprintln!("golden {name}: max relative error {err:.3e}");
    assert!(
        err <= TOLERANCE,
        "{name}: max relative error {err:.3e} > {TOLERANCE:e}"
    );
    err
}

macro_rules! golden {
    ($($test:ident => $case:literal),* $(,)?) => {
        $(#[test] fn $test() { case($case); })*
    };
}

golden! {
    simple_average => "simple_average",
    weighted_average => "weighted_average",
    weighted_average_unnormalized => "weighted_average_unnormalized",
    task_arithmetic => "task_arithmetic",
    task_arithmetic_1_0 => "task_arithmetic_1.0",
    ties_merging_sum => "ties_merging_sum",
    ties_merging_mean => "ties_merging_mean",
    ties_merging_max => "ties_merging_max",
    slerp => "slerp",
    model_stock => "model_stock",
}
