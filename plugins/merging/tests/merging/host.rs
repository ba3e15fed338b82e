//! The built cdylib, loaded the way the host loads plugins, answers to FusionBench's names and
//! merges through the ABI (model pool, context and compute handle all crossing it).

use std::path::PathBuf;
use std::sync::Arc;

use fusion_plugin_api::host::{load_library, ComponentKind, ModelPoolHandle};
use fusion_plugin_api::serde_json::json;

use crate::common::*;

fn library_path() -> PathBuf {
    // Test executables live in target/<profile>/deps; cargo puts the plugin next to deps.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let name = format!(
        "{}fusion_merging{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    dir.join(name)
}

#[test]
fn loaded_plugin_lists_its_algorithms_and_merges_through_the_abi() {
    let path = library_path();
    let lib = load_library(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    assert_eq!(lib.name, "fusion-merging");
    let find = |target: &str| {
        lib.components
            .iter()
            .find(|c| c.names.iter().any(|n| n == target))
            .unwrap_or_else(|| panic!("no component answers to `{target}`"))
    };
    for target in [
        "simple_average",
        "fusion_bench.method.SimpleAverageAlgorithm",
        "fusion_bench.method.WeightedAverageAlgorithm",
        "fusion_bench.method.TaskArithmeticAlgorithm",
        "fusion_bench.method.TiesMergingAlgorithm",
        "fusion_bench.method.DareSimpleAverage",
        "fusion_bench.method.DareTaskArithmetic",
        "fusion_bench.method.dare.DareTiesMerging",
        "fusion_bench.method.SlerpMergeAlgorithm",
        "fusion_bench.method.model_stock.ModelStock",
        "breadcrumbs",
        "della",
    ] {
        assert_eq!(find(target).kind, ComponentKind::Algorithm, "{target}");
    }
    let names = ["_pretrained_", "task_a", "task_b", "task_c", "task_d"];
    let pool = ModelPoolHandle::from_local(Arc::new(fixture_pool(&names)));
    let target = "fusion_bench.method.TaskArithmeticAlgorithm";
    let algo = find(target)
        .algorithm(target, &json!({"scaling_factor": 0.3}))
        .unwrap();
    let merged = algo.run(&pool, &ctx(Some(0))).unwrap();
    let expected = fusion_checkpoint::open_model(
        fixtures()
            .join("expected/task_arithmetic.safetensors")
            .to_str()
            .unwrap(),
    )
    .unwrap();
    assert!(max_rel_error(&merged, &expected) <= 1e-5);
    // A bad config comes back as an error naming the parameter, not a crash.
    let err = find("ties_merging").algorithm("ties_merging", &json!({"merge_func": "median"}));
    assert!(err.is_err());
}
