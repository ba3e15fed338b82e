//! Memory stays at a few tensors of one key: the peak number of live device tensors does not
//! grow with the number of models, and nothing is left on the device afterwards.

use std::sync::Arc;

use fusion_plugin_api::serde_json::json;
use fusion_plugin_api::{Compute, Context};

use crate::common::*;

fn pool(n: usize) -> Pool {
    let fts = ["task_a", "task_b", "task_c", "task_d"];
    let mut models = vec![("_pretrained_".to_string(), fixture_model("_pretrained_"))];
    for i in 0..n {
        models.push((format!("model_{i}"), fixture_model(fts[i % 4])));
    }
    Pool(models)
}

fn peak(target: &str, cfg: fusion_plugin_api::serde_json::Value, n: usize) -> i64 {
    let counting = Counting::new();
    let ctx = Context::local(Some(0), false, Some(counting.clone() as Arc<dyn Compute>));
    let mut p = pool(n);
    if matches!(target, "simple_average" | "weighted_average") {
        p.0.remove(0);
    }
    let merged = merge(target, cfg, &p, &ctx).unwrap();
    let _ = materialize(&merged);
    assert_eq!(
        counting.live(),
        0,
        "{target}: device tensors left after the merge"
    );
    counting.peak()
}

#[test]
fn peak_device_tensors_do_not_grow_with_the_number_of_models() {
    // Streaming proper: on a hardware GPU TIES would otherwise keep task vectors on the device
    // between passes (src/cache.rs; tested through the host in tests/e2e.rs). Other tests of
    // this binary merge the same either way.
    std::env::set_var("FUSION_DEVICE_CACHE", "0");
    let cases = [
        ("simple_average", json!({})),
        ("task_arithmetic", json!({})),
        ("ties_merging", json!({"merge_func": "mean"})),
        ("dare_task_arithmetic", json!({})),
        ("dare_ties_merging", json!({})),
        ("breadcrumbs_ties", json!({"density": 0.5})),
        ("della", json!({"density": 0.5})),
    ];
    for (target, cfg) in cases {
        let (p3, p9) = (peak(target, cfg.clone(), 3), peak(target, cfg.clone(), 9));
        eprintln!("{target}: peak live device tensors {p3} with 3 models, {p9} with 9");
        if target == "task_arithmetic" {
            // Plain task arithmetic uploads models in groups of up to MAX_ARITY (8): the peak
            // grows up to one full group, then stays.
            let p17 = peak(target, cfg, 17);
            eprintln!("{target}: peak live device tensors {p17} with 17 models");
            assert_eq!(p9, p17, "{target}");
            assert!(p9 - p3 <= 5, "{target}: {p3} -> {p9}");
        } else {
            assert_eq!(p3, p9, "{target}");
        }
    }
    // Model Stock's pairwise angles hold the task vectors of one key: k of them.
    let (p3, p9) = (
        peak("model_stock", json!({}), 3),
        peak("model_stock", json!({}), 9),
    );
    eprintln!("model_stock: peak live device tensors {p3} with 3 models, {p9} with 9");
    assert_eq!(p9 - p3, 6);
}
