//! Bad inputs give clear errors before any work; non-float tensors are copied.

use fusion_plugin_api::serde_json::json;
use fusion_plugin_api::{Context, DType, MemoryStateDict, Model};

use crate::common::*;

fn two(shape_b: Vec<usize>) -> Pool {
    let a = model_from(&[
        ("w.weight", vec![2, 3], vec![1.0; 6]),
        ("w.bias", vec![3], vec![0.0; 3]),
    ]);
    let n = shape_b.iter().product();
    let b = model_from(&[
        ("w.weight", shape_b, vec![2.0; n]),
        ("w.bias", vec![3], vec![1.0; 3]),
    ]);
    Pool(vec![("alpha".into(), a), ("beta".into(), b)])
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_models() {
    for target in ["simple_average", "slerp"] {
        let err = merge(target, json!({}), &two(vec![3, 2]), &ctx(None)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("w.weight") && msg.contains("alpha") && msg.contains("beta"),
            "{target}: {msg}"
        );
        assert!(msg.contains("[2, 3]") && msg.contains("[3, 2]"), "{msg}");
    }
    let mut pool = two(vec![3, 2]);
    pool.0.insert(0, ("_pretrained_".into(), fixture_like()));
    let msg = merge("ties_merging", json!({}), &pool, &ctx(None))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("w.weight"), "{msg}");
}

fn fixture_like() -> Model {
    model_from(&[
        ("w.weight", vec![2, 3], vec![0.0; 6]),
        ("w.bias", vec![3], vec![0.0; 3]),
    ])
}

#[test]
fn missing_tensor_names_it() {
    let a = model_from(&[
        ("w.weight", vec![2], vec![1.0; 2]),
        ("w.bias", vec![1], vec![0.0]),
    ]);
    let b = model_from(&[("w.weight", vec![2], vec![1.0; 2])]);
    let pool = Pool(vec![("alpha".into(), a), ("beta".into(), b)]);
    let msg = merge("simple_average", json!({}), &pool, &ctx(None))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("w.bias") && msg.contains("alpha") && msg.contains("beta"),
        "{msg}"
    );
}

#[test]
fn no_compute_device_is_a_clear_error() {
    let no_gpu = Context::local(None, false, None);
    let msg = merge("task_arithmetic", json!({}), &two(vec![2, 3]), &no_gpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("task_arithmetic") && msg.contains("compute device"),
        "{msg}"
    );
}

#[test]
fn config_errors() {
    let pool = two(vec![2, 3]);
    let msg = merge(
        "weighted_average",
        json!({"weights": [1.0]}),
        &pool,
        &ctx(None),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("1 weights for 2 models"), "{msg}");
    assert!(
        build("weighted_average", json!({})).is_err(),
        "weights are required"
    );
    let msg = merge("task_arithmetic", json!({}), &pool, &ctx(None))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("_pretrained_"), "{msg}");
    let mut three = two(vec![2, 3]);
    three.0.push(("gamma".into(), fixture_like()));
    let msg = merge("slerp", json!({}), &three, &ctx(None))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("exactly 2"), "{msg}");
    assert!(build("ties_merging", json!({"merge_func": "median"})).is_err());
    assert!(build("dare_task_arithmetic", json!({"sparsity_ratio": 1.5})).is_err());
    let mut pool = two(vec![2, 3]);
    pool.0.insert(0, ("_pretrained_".into(), fixture_like()));
    let msg = merge(
        "della",
        json!({"density": 0.1, "epsilon": 0.15}),
        &pool,
        &ctx(None),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("epsilon"), "{msg}");
    let msg = merge(
        "model_stock",
        json!({}),
        &Pool(pool.0[..2].to_vec()),
        &ctx(None),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("at least 2"), "{msg}");
}

#[test]
fn integer_tensors_are_copied_from_the_reference() {
    let with_ids = |v: f32, ids: [i64; 3]| {
        let mut sd = MemoryStateDict::new();
        sd.insert_f32("w", vec![3], &[v; 3], DType::F32).unwrap();
        let bytes = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        sd.insert_bytes("position_ids", DType::I64, vec![3], bytes)
            .unwrap();
        Model::new(sd)
    };
    let pool = Pool(vec![
        ("_pretrained_".into(), with_ids(0.0, [0, 1, 2])),
        ("a".into(), with_ids(1.0, [5, 5, 5])),
        ("b".into(), with_ids(3.0, [7, 7, 7])),
    ]);
    for (target, reference) in [
        ("task_arithmetic", [0i64, 1, 2]),
        ("ties_merging", [0, 1, 2]),
    ] {
        let m = merge(target, json!({"scaling_factor": 1.0}), &pool, &ctx(None)).unwrap();
        let ids: Vec<i64> = m
            .data("position_ids")
            .unwrap()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(ids, reference, "{target}");
        assert_eq!(m.info("position_ids").unwrap().dtype, DType::I64);
    }
    let avg = merge(
        "simple_average",
        json!({}),
        &Pool(pool.0[1..].to_vec()),
        &ctx(None),
    )
    .unwrap();
    assert_eq!(avg.to_f32("w").unwrap().0, vec![2.0; 3]);
    assert_eq!(&avg.data("position_ids").unwrap()[..8], &5i64.to_le_bytes());
}

#[test]
fn a_pool_with_nothing_to_merge_is_an_error_not_a_copy() {
    let ids = |v: i64| {
        let mut sd = MemoryStateDict::new();
        let bytes = [v; 4].iter().flat_map(|i| i.to_le_bytes()).collect();
        sd.insert_bytes("position_ids", DType::I64, vec![4], bytes)
            .unwrap();
        sd.insert_bytes("mask", DType::U8, vec![2], vec![1, 0])
            .unwrap();
        Model::new(sd)
    };
    let pool = Pool(vec![
        ("_pretrained_".into(), ids(0)),
        ("a".into(), ids(1)),
        ("b".into(), ids(2)),
    ]);
    for target in ["task_arithmetic", "ties_merging", "simple_average"] {
        let msg = merge(target, json!({"scaling_factor": 0.3}), &pool, &ctx(None))
            .err()
            .unwrap_or_else(|| panic!("{target} merged a pool of integer tensors"))
            .to_string();
        assert!(
            msg.contains("nothing to merge") && msg.contains("1 I64") && msg.contains("1 U8"),
            "{target}: {msg}"
        );
    }
}
