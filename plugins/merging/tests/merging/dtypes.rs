//! f16 and bf16 checkpoints merge into the same dtype, close to the f32 result.

use fusion_plugin_api::serde_json::json;
use fusion_plugin_api::DType;

use crate::common::*;

#[test]
fn half_precision_inputs_give_half_precision_outputs() {
    let names = ["_pretrained_", "task_a", "task_b", "task_c", "task_d"];
    let cases = [
        ("simple_average", json!({}), &names[1..]),
        (
            "task_arithmetic",
            json!({"scaling_factor": 0.3}),
            &names[..],
        ),
        (
            "ties_merging",
            json!({"scaling_factor": 0.3, "threshold": 20}),
            &names[..],
        ),
        ("model_stock", json!({}), &names[..]),
        ("slerp", json!({"t": 0.3}), &names[1..3]),
        (
            "della",
            json!({"density": 0.5, "epsilon": 0.1, "seed": 1}),
            &names[..],
        ),
    ];
    for (target, cfg, members) in cases {
        let f32_pool = fixture_pool(members);
        // The f32 reference merges the rounded inputs, so only the arithmetic and the output
        // rounding differ.
        for (dtype, tol) in [(DType::F16, 2e-3), (DType::BF16, 1.6e-2)] {
            let rounded = Pool(
                f32_pool
                    .0
                    .iter()
                    .map(|(n, m)| (n.clone(), as_dtype(&as_dtype(m, dtype), DType::F32)))
                    .collect(),
            );
            let half = Pool(
                f32_pool
                    .0
                    .iter()
                    .map(|(n, m)| (n.clone(), as_dtype(m, dtype)))
                    .collect(),
            );
            let want = merge(target, cfg.clone(), &rounded, &ctx(Some(0))).unwrap();
            let got = merge(target, cfg.clone(), &half, &ctx(Some(0))).unwrap();
            for name in got.names().unwrap() {
                assert_eq!(
                    got.info(&name).unwrap().dtype,
                    dtype,
                    "{target}: `{name}` must stay {dtype}"
                );
            }
            let err = max_rel_error(&got, &want);
            eprintln!("{target} {dtype}: max relative error vs f32 {err:.2e}");
            assert!(err < tol, "{target} {dtype}: {err:e}");
        }
    }
}
