//! Compares fusion-config with real Hydra 1.3 / OmegaConf 2.3 on the golden fixtures written by
//! `tools/hydra/make_fixtures.py` (`tests/fixtures/<tree>/expected.json`).

use std::path::{Path, PathBuf};

use fusion_config::{compose, resolve, ComposeOptions, ResolveContext};
use serde_norway::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Structural equality, key order included; reports the first difference.
fn ordered_eq(got: &Value, want: &Value, path: &str) -> Result<(), String> {
    match (got, want) {
        (Value::Mapping(g), Value::Mapping(w)) => {
            let gk: Vec<String> = g
                .keys()
                .map(fusion_config::value::scalar_to_string)
                .collect();
            let wk: Vec<String> = w
                .keys()
                .map(fusion_config::value::scalar_to_string)
                .collect();
            if gk != wk {
                return Err(format!("at '{path}': keys {gk:?}, Hydra has {wk:?}"));
            }
            for ((k, gv), (_, wv)) in g.iter().zip(w.iter()) {
                let k = fusion_config::value::scalar_to_string(k);
                let p = if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                };
                ordered_eq(gv, wv, &p)?;
            }
            Ok(())
        }
        (Value::Sequence(g), Value::Sequence(w)) => {
            if g.len() != w.len() {
                return Err(format!(
                    "at '{path}': list of {} items, Hydra has {}",
                    g.len(),
                    w.len()
                ));
            }
            for (i, (gv, wv)) in g.iter().zip(w.iter()).enumerate() {
                ordered_eq(gv, wv, &format!("{path}.{i}"))?;
            }
            Ok(())
        }
        (Value::Number(g), Value::Number(w)) => {
            let same = match (g.as_i64(), w.as_i64()) {
                (Some(a), Some(b)) => a == b,
                _ => g.is_f64() == w.is_f64() && g.as_f64() == w.as_f64(),
            };
            if same {
                Ok(())
            } else {
                Err(format!("at '{path}': {g:?}, Hydra has {w:?}"))
            }
        }
        (g, w) if g == w => Ok(()),
        (g, w) => Err(format!("at '{path}': {g:?}, Hydra has {w:?}")),
    }
}

fn check_culprits(
    case: &str,
    name: &str,
    msg: &str,
    run: &serde_json::Value,
) -> Result<(), String> {
    let lower = msg.to_lowercase();
    for c in run["culprits"].as_array().into_iter().flatten() {
        let c = c.as_str().unwrap();
        if !lower.contains(&c.to_lowercase()) {
            return Err(format!(
                "{case}/{name}: error does not mention {c:?}: {msg}"
            ));
        }
    }
    Ok(())
}

fn load(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join(case).join("expected.json"))
        .expect("expected.json (run tools/hydra/make_fixtures.py)");
    serde_json::from_str(&text).expect("valid JSON")
}

/// Runs one fixture run by name.
fn run_named(case: &str, name: &str) {
    let expected = load(case);
    let run = expected["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no run '{name}' in fixtures/{case}/expected.json"));
    if let Err(e) = check_run(case, &fixtures().join(case), run) {
        panic!("{e}");
    }
}

fn check_run(case: &str, dir: &Path, run: &serde_json::Value) -> Result<(), String> {
    let name = run["name"].as_str().unwrap();
    let opts = ComposeOptions {
        search_path: vec![dir.join("configs")],
        config_name: run["config_name"].as_str().map(str::to_string),
        overrides: run["overrides"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap().to_string())
            .collect(),
    };
    let expect = run["expect"].as_str().unwrap();
    let composed = match compose(&opts) {
        Ok(c) => c,
        Err(e) if expect == "compose_error" => {
            return check_culprits(case, name, &e.to_string(), run)
        }
        Err(e) => return Err(format!("{case}/{name}: compose failed: {e}")),
    };
    if expect == "compose_error" {
        return Err(format!(
            "{case}/{name}: expected a compose error like Hydra's ({}), got:\n{}",
            run["compose_error"],
            fusion_config::to_yaml(&composed.config)
        ));
    }
    let want: Value = serde_norway::to_value(&run["composed"]).unwrap();
    ordered_eq(&composed.config, &want, "")
        .map_err(|e| format!("{case}/{name} (composed): {e}"))?;
    if let Some(yaml) = run["yaml"].as_str() {
        let ours = fusion_config::to_yaml(&composed.config);
        if ours != yaml {
            return Err(format!(
                "{case}/{name}: `--cfg job` text differs\n--- ours\n{ours}--- Hydra\n{yaml}"
            ));
        }
    }
    if let Some(choices) = run["choices"].as_object() {
        for (k, v) in choices {
            let got = composed.choices.iter().find(|(ck, _)| ck == k);
            let want = v.as_str().map(str::to_string);
            match got {
                Some((_, g)) if *g == want => {}
                other => {
                    return Err(format!(
                        "{case}/{name}: choice '{k}' is {other:?}, Hydra has {want:?}"
                    ))
                }
            }
        }
    }
    let env = run["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let ctx = ResolveContext {
        config_name: composed.config_name.clone(),
        job_name: "fusion_host".into(),
        output_dir: run["output_dir"].as_str().map(str::to_string),
        now: chrono::NaiveDateTime::parse_from_str(
            run["now"].as_str().unwrap(),
            "%Y-%m-%dT%H:%M:%S",
        )
        .unwrap(),
        hydra: composed.hydra.clone(),
        env: Some(env),
    };
    match (resolve(&composed.config, &ctx), expect) {
        (Ok(r), "ok") => {
            let want: Value = serde_norway::to_value(&run["resolved"]).unwrap();
            ordered_eq(&r, &want, "").map_err(|e| format!("{case}/{name} (resolved): {e}"))
        }
        (Err(e), "resolve_error") => check_culprits(case, name, &e.to_string(), run),
        (Ok(r), _) => Err(format!(
            "{case}/{name}: expected a resolve error like Hydra's ({}), got:\n{}",
            run["resolve_error"],
            fusion_config::to_yaml(&r)
        )),
        (Err(e), _) => Err(format!("{case}/{name}: resolve failed: {e}")),
    }
}

/// One `#[test]` per fixture run: `<tree>::<run>`.
macro_rules! fixture_tests {
    ($($case:ident { $($run:ident),* $(,)? })*) => {
        $(
            mod $case {
                $(
                    #[test]
                    fn $run() {
                        super::run_named(stringify!($case), stringify!($run));
                    }
                )*
            }
        )*

        /// Every run in the JSON files has a test (regenerate this list when adding runs).
        #[test]
        fn every_fixture_run_has_a_test() {
            $(
                let listed: Vec<&str> = vec![$(stringify!($run)),*];
                let expected = load(stringify!($case));
                let names: Vec<String> = expected["runs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["name"].as_str().unwrap().to_string())
                    .collect();
                assert_eq!(names, listed, "runs of '{}'", stringify!($case));
            )*
        }
    };
}

fixture_tests! {
    fusionbench {
        default,
        task_arithmetic_ta8,
        adamerging_nested_option,
        edit_forms,
        escaped_interpolation,
        env_root,
        taskpool_list_index,
        hydra_override,
        hydra_builtin_group,
        err_hydra_builtin_option,
        err_unknown_option,
        err_unknown_nested_option,
        err_key_missing,
        err_not_group,
        err_group_not_in_defaults,
        err_append_exists,
        err_group_twice,
        err_missing_value,
    }
    groups {
        default,
        choose_postgresql,
        nested_group_choice,
        delete_group,
        delete_group_value,
        append_group,
        append_group_pkg,
        option_list_override,
        inner_package_override,
        value_under_group,
        packages,
        packages_override,
        self_implicit_last,
        self_first,
        missing_choice_given,
        with_override,
        with_override_cli_wins,
        err_override_unused,
        no_defaults,
        no_primary,
        primary_with_ext,
        defaults_interpolation,
        defaults_interpolation_override,
        append_group_global,
        err_missing_choice,
        err_unknown_group_option,
        err_extra_group_not_in_defaults,
        err_delete_group_absent,
        err_delete_group_wrong_value,
        err_force_add_group,
        err_package_not_in_defaults,
        err_no_such_primary,
        err_dup_self,
        err_override_order,
        err_group_twice,
        err_broken_yaml_include,
        err_bad_group_key_override,
    }
    values {
        plain,
        typed_values,
        strings_and_adds,
        escapes,
        dict_merge,
        nested_add,
        add_to_null,
        interp,
        err_key_missing,
        err_nested_key_missing,
        err_dict_adds_key,
        err_append_exists,
        err_delete_missing,
        err_delete_null,
        err_delete_mismatch,
        err_sweep,
        err_syntax,
        err_syntax_quote,
        err_interp_key,
        err_interp_cycle,
        err_interp_missing,
        err_unknown_resolver,
        err_env_unset,
        err_relative_too_far,
    }
    badyaml {
        err_primary_syntax,
        err_group_syntax,
        err_duplicate_key,
    }
}

/// `to_yaml` against `OmegaConf.to_yaml` on tricky scalars (quoting, folding, escapes).
#[test]
fn omegaconf_to_yaml_text() {
    let text = std::fs::read_to_string(fixtures().join("emit/expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = expected["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let v: Value = serde_norway::to_value(&case["value"]).unwrap();
        let want = case["yaml"].as_str().unwrap();
        let got = fusion_config::to_yaml(&v);
        if got != want {
            let (g, w) = got
                .lines()
                .zip(want.lines())
                .find(|(g, w)| g != w)
                .unwrap_or(("<end>", "<end>"));
            failures.push(format!("first differing line: ours {g:?}, OmegaConf {w:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Sweep expansion against Hydra's BasicSweeper (`tools/hydra/make_sweep_fixtures.py`): the
/// jobs and each job's overrides, in launch order. One known departure: Hydra writes a swept
/// command line's `~key` as `~key=null`; fusion-config keeps `~key` as typed.
#[test]
fn sweep_expansion_matches_hydra_basic_sweeper() {
    let text = std::fs::read_to_string(fixtures().join("sweeps/expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let options = |g: &str| -> Vec<String> {
        match g {
            "method" => ["dummy", "simple_average", "task_arithmetic", "ties_merging"]
                .map(String::from)
                .to_vec(),
            _ => Vec::new(),
        }
    };
    let mut failures = Vec::new();
    let runs = expected["runs"].as_array().unwrap();
    for run in runs {
        let overrides: Vec<String> = serde_json::from_value(run["overrides"].clone()).unwrap();
        let got = fusion_config::sweep::expand(&overrides, &options);
        if run["error"].as_bool().unwrap() {
            if let Ok((jobs, _)) = got {
                failures.push(format!("{overrides:?}: Hydra refuses it, we gave {jobs:?}"));
            }
            continue;
        }
        let want: Vec<Vec<String>> = serde_json::from_value(run["jobs"].clone()).unwrap();
        let want: Vec<Vec<String>> = want
            .into_iter()
            .map(|j| {
                j.into_iter()
                    .map(|o| match o.strip_suffix("=null") {
                        Some(k) if k.starts_with('~') => k.to_string(),
                        _ => o,
                    })
                    .collect()
            })
            .collect();
        match got {
            Ok((jobs, _)) if jobs == want => {}
            Ok((jobs, _)) => failures.push(format!("{overrides:?}: ours {jobs:?}, Hydra {want:?}")),
            Err(e) => failures.push(format!("{overrides:?}: ours failed ({e}), Hydra {want:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} sweeps differ:\n{}",
        failures.len(),
        runs.len(),
        failures.join("\n")
    );
}
