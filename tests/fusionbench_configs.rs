//! FusionBench's command lines through the built `fusion-host --cfg job`, on FusionBench's own
//! config tree (the files those commands load, copied from the fusion-bench wheel into
//! `tests/data/fusionbench_config/configs`) and on ours (`configs/`), against real Hydra's output
//! (`tests/data/fusionbench_config/expected.json`, made by `tools/fusionbench/make_fixtures.py`).
//! Also: FusionBench components without a plugin are reported as not supported, distinct from a
//! misspelt target; `--config-dir` adds configs without shadowing.

use std::path::{Path, PathBuf};

use fusion_e2e::*;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    data().join("fusionbench_config")
}

fn expected() -> Value {
    let path = fixture_dir().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} ({e}): run tools/fusionbench/make_fixtures.py",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("valid JSON")
}

/// `fusion-host --cfg job` for every fixture run that composes on `tree`, with `configs` as the
/// only config root; returns the runs whose text differs from Hydra's, with both texts.
fn mismatches(tree: &str, configs: &Path) -> (usize, Vec<String>) {
    let work = tempfile::tempdir().unwrap();
    let configs = configs.to_str().unwrap();
    let mut checked = 0;
    let mut bad = Vec::new();
    for run in expected()["runs"].as_array().unwrap() {
        if !run["trees"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str() == Some(tree))
        {
            continue;
        }
        let name = run["name"].as_str().unwrap();
        let mut args = vec![
            "--config-name".to_string(),
            run["config_name"].as_str().unwrap().to_string(),
            "--cfg".to_string(),
            "job".to_string(),
        ];
        if let Some(p) = run["package"].as_str() {
            args.extend(["-p".to_string(), p.to_string()]);
        }
        args.extend(
            run["overrides"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.as_str().unwrap().to_string()),
        );
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_host_env(work.path(), &argv, &[("FUSION_CONFIG_PATH", configs)]);
        checked += 1;
        let want = run["yaml"].as_str().unwrap();
        if out.code != 0 {
            bad.push(format!("{name}: exit {} ({})", out.code, out.stderr.trim()));
        } else if out.stdout != want {
            bad.push(format!(
                "{name}: `--cfg job` differs from Hydra's\n--- fusion-host\n{}--- Hydra\n{want}",
                out.stdout
            ));
        }
    }
    (checked, bad)
}

#[test]
fn fusionbench_config_tree_composes_as_hydra_composes_it() {
    let (checked, bad) = mismatches("fusionbench", &fixture_dir().join("configs"));
    assert!(checked >= 20, "only {checked} runs");
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

#[test]
fn our_config_tree_composes_as_fusionbench_does() {
    let (checked, bad) = mismatches("ours", &root().join("configs"));
    assert!(checked >= 20, "only {checked} runs");
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

/// A minimal config tree: a program config and the merge-tiny pool, plus `extra` files.
fn tiny_tree(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_configs(
        dir.path(),
        &[
            (
                "main.yaml",
                "defaults:\n  - modelpool: tiny\n  - method: dummy\n  - taskpool: dummy\n  - _self_\n\
                 dry_run: true\nprint_config: false\n",
            ),
            ("modelpool/tiny.yaml", &merge_tiny_pool()),
            ("method/dummy.yaml", "_target_: dummy\n"),
            ("taskpool/dummy.yaml", "_target_: dummy\n"),
        ],
    );
    write_configs(dir.path(), extra);
    dir
}

fn dry_run(tree: &Path, overrides: &[&str]) -> Run {
    let work = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--config-path",
        tree.to_str().unwrap(),
        "--config-name",
        "main",
    ];
    args.extend_from_slice(overrides);
    run_host_env(
        work.path(),
        &args,
        &[("FUSION_CONFIG_PATH", tree.to_str().unwrap())],
    )
}

#[test]
fn fusionbench_components_without_a_plugin_are_not_supported_not_misspelt() {
    let tree = tiny_tree(&[(
        "method/adamerging_v01.yaml",
        "name: clip_layer_wise_adamerging\nlr: 1e-3\n",
    )]);
    for (how, overrides) in [
        (
            "_target_",
            vec!["method._target_=fusion_bench.method.CLIPLayerWiseAdaMergingAlgorithm"],
        ),
        ("v0.1 name", vec!["method=adamerging_v01"]),
    ] {
        let run = dry_run(tree.path(), &overrides);
        run.assert_clean_failure(2);
        let err = run.error();
        assert!(
            err.contains("is not supported by fusion-host"),
            "{how}: {err}"
        );
        assert!(
            err.contains("Supported methods: ") && err.contains("ties_merging"),
            "{how}: {err}"
        );
        assert!(!err.contains("closest"), "{how}: {err}");
    }
    // A FusionBench model pool fusion-host lacks is reported the same way.
    let run = dry_run(
        tree.path(),
        &["modelpool._target_=fusion_bench.modelpool.Seq2SeqLMPool"],
    );
    run.assert_clean_failure(2);
    assert!(
        run.error()
            .contains("FusionBench modelpool `fusion_bench.modelpool.Seq2SeqLMPool`")
            && run.error().contains("is not supported"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_misspelt_target_gets_the_closest_names_not_a_support_verdict() {
    let tree = tiny_tree(&[]);
    let run = dry_run(
        tree.path(),
        &["method._target_=fusion_bench.method.TaskArithmeticAlgorith"],
    );
    run.assert_clean_failure(2);
    let err = run.error();
    assert!(
        err.contains("unknown algorithm target `fusion_bench.method.TaskArithmeticAlgorith`"),
        "{err}"
    );
    assert!(
        err.contains("closest known targets: fusion_bench.method.TaskArithmeticAlgorithm"),
        "{err}"
    );
    assert!(!err.contains("not supported"), "{err}");
    // A FusionBench-looking name that FusionBench does not have either says so, and names the
    // FusionBench components it may have meant.
    let run = dry_run(
        tree.path(),
        &["method._target_=fusion_bench.method.AdaMergingForCLIP"],
    );
    run.assert_clean_failure(2);
    let err = run.error();
    assert!(
        err.contains("FusionBench has no method of that name"),
        "{err}"
    );
    assert!(err.contains("AdaSVDMergingForCLIPVisionModel"), "{err}");
}

#[test]
fn config_dir_adds_configs_without_shadowing() {
    let tree = tiny_tree(&[]);
    let extra = tempfile::tempdir().unwrap();
    write_configs(
        extra.path(),
        &[
            // New: found through --config-dir.
            ("method/extra.yaml", "_target_: simple_average\n"),
            // Already in the main tree: the main tree's wins.
            ("method/dummy.yaml", "_target_: shadowed\n"),
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let main = tree.path().to_str().unwrap();
    let cfg = |method: &str| {
        run_host_env(
            work.path(),
            &[
                "--config-dir",
                extra.path().to_str().unwrap(),
                "--config-name",
                "main",
                "--cfg",
                "job",
                "-p",
                "method._target_",
                method,
            ],
            &[("FUSION_CONFIG_PATH", main)],
        )
    };
    let run = cfg("method=extra");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "simple_average\n");
    let run = cfg("method=dummy");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "dummy\n");
    // Hydra's short form, and a folder that does not exist.
    let run = run_host_env(
        work.path(),
        &[
            "-cd",
            "/nonexistent/fusion-configs",
            "--config-name",
            "main",
            "--cfg",
            "job",
        ],
        &[("FUSION_CONFIG_PATH", main)],
    );
    run.assert_clean_failure(2);
    assert!(
        run.error().contains("/nonexistent/fusion-configs"),
        "{}",
        run.stderr
    );
}

/// A task pool in FusionBench's shape (its `_template`, datasets by task name, no class names)
/// finds the class names and templates shipped in configs/clip_classification/ (embedded in the
/// plugin) and scores the demo's pretrained model as the Python reference does.
#[test]
fn a_fusionbench_shaped_task_pool_finds_the_shipped_class_names() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("demo/expected_results.json")).unwrap(),
    )
    .unwrap();
    let tree = tempfile::tempdir().unwrap();
    write_configs(
        tree.path(),
        &[(
            "taskpool/CLIPVisionModelTaskPool/demo_fusionbench_shape.yaml",
            "defaults:\n  - CLIPVisionModelTaskPool@: _template\n  - _self_\n\
             base_model: demo/models/pretrained\n\
             test_datasets:\n\
             \x20 digits_low:\n    _target_: datasets.load_dataset\n    path: demo/data/digits_low\n    split: test\n\
             \x20 fashion_tops:\n    _target_: datasets.load_dataset\n    path: demo/data/fashion_tops\n    split: test\n",
        )],
    );
    let out = tempfile::tempdir().unwrap();
    let run = run_host_env(
        &root(),
        &[
            "--device",
            "cpu",
            "--config-path",
            tree.path().to_str().unwrap(),
            "modelpool=CLIPVisionModelPool/demo",
            "taskpool=CLIPVisionModelTaskPool/demo_fusionbench_shape",
            "method=dummy",
            "print_config=false",
            &format!("path.log_dir={}", out.path().display()),
        ],
        &[(
            "FUSION_CONFIG_PATH",
            root().join("configs").to_str().unwrap(),
        )],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    for task in ["digits_low", "fashion_tops"] {
        let got = report[task]["accuracy"].as_f64().unwrap();
        let want = expected["results"]["pretrained"][task]["accuracy"]
            .as_f64()
            .unwrap();
        assert!(
            (got - want).abs() <= 2.0 / 256.0,
            "{task}: accuracy {got} vs Python {want}"
        );
    }
}
