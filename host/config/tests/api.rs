//! Behaviour of the public API beyond the Hydra fixtures: search-path precedence, provenance,
//! the `hydra` node, the resolve context, `find_missing` and `to_yaml`.

use std::collections::BTreeMap;
use std::path::Path;

use fusion_config::{compose, find_missing, resolve, to_yaml, ComposeOptions, ResolveContext};
use serde_norway::Value;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn yaml(s: &str) -> Value {
    serde_norway::from_str(s).unwrap()
}

#[test]
fn later_search_path_entries_take_precedence() {
    let builtin = tempfile::tempdir().unwrap();
    let user = tempfile::tempdir().unwrap();
    write(
        builtin.path(),
        "config.yaml",
        "defaults:\n  - method: a\n  - _self_\nwho: builtin\n",
    );
    write(builtin.path(), "method/a.yaml", "from: builtin\n");
    write(builtin.path(), "method/b.yaml", "from: builtin-b\n");
    write(user.path(), "method/a.yaml", "from: user\n");
    write(user.path(), "method/c.yaml", "from: user-c\n");
    let mut opts = ComposeOptions {
        search_path: vec![builtin.path().to_path_buf(), user.path().to_path_buf()],
        config_name: Some("config".into()),
        overrides: vec![],
    };
    let c = compose(&opts).unwrap();
    assert_eq!(c.config, yaml("{method: {from: user}, who: builtin}"));
    // options are the union over roots
    opts.overrides = vec!["method=c".into()];
    assert_eq!(
        compose(&opts).unwrap().config["method"]["from"],
        Value::from("user-c")
    );
    opts.overrides = vec!["method=b".into()];
    assert_eq!(
        compose(&opts).unwrap().config["method"]["from"],
        Value::from("builtin-b")
    );
    opts.overrides = vec!["method=zzz".into()];
    let err = compose(&opts).unwrap_err().to_string();
    assert!(err.contains("\ta\n\tb\n\tc"), "{err}");
}

#[test]
fn provenance_choices_and_hydra_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "main.yaml",
        "defaults:\n  - hydra: default\n  - modelpool: CLIPVisionModelPool/x\n  - _self_\nname: main\n",
    );
    write(d, "hydra/default.yaml", "run:\n  dir: ${path}/run\n");
    write(
        d,
        "modelpool/CLIPVisionModelPool/x.yaml",
        "models: {a: 1}\n",
    );
    let c = compose(&ComposeOptions {
        search_path: vec![d.to_path_buf()],
        config_name: Some("main.yaml".into()),
        overrides: vec!["+path=/out".into()],
    })
    .unwrap();
    assert_eq!(c.config_name, "main");
    assert_eq!(
        c.config,
        yaml("{modelpool: {models: {a: 1}}, name: main, path: /out}")
    );
    assert_eq!(c.hydra, Some(yaml("{run: {dir: '${path}/run'}}")));
    let paths: Vec<(&str, &str)> = c
        .defaults
        .iter()
        .map(|l| (l.config_path.as_str(), l.package.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("hydra/default", "hydra"),
            ("modelpool/CLIPVisionModelPool/x", "modelpool"),
            ("main", "")
        ]
    );
    assert!(c.defaults[1]
        .file
        .as_ref()
        .unwrap()
        .ends_with("modelpool/CLIPVisionModelPool/x.yaml"));
    // In Hydra's order: the primary's choices, then those of Hydra's own config (expanded last).
    let choice = |k: &str, v: Option<&str>| (k.to_string(), v.map(str::to_string));
    assert_eq!(
        c.choices,
        [
            choice("modelpool", Some("CLIPVisionModelPool/x")),
            choice("hydra", Some("default")),
            choice("hydra/env", Some("default")),
            choice("hydra/callbacks", None),
            choice("hydra/job_logging", Some("default")),
            choice("hydra/hydra_logging", Some("default")),
            choice("hydra/hydra_help", Some("default")),
            choice("hydra/help", Some("default")),
            choice("hydra/sweeper", Some("basic")),
            choice("hydra/launcher", Some("basic")),
            choice("hydra/output", Some("default")),
        ]
    );
    // ${hydra:...} sees the composed hydra node, resolved against the job config.
    let mut ctx = ResolveContext::new(&c.config_name);
    ctx.hydra = c.hydra.clone();
    let mut config = c.config.clone();
    config
        .as_mapping_mut()
        .unwrap()
        .insert("run_dir".into(), Value::from("${hydra:run.dir}"));
    let r = resolve(&config, &ctx).unwrap();
    assert_eq!(r["run_dir"], Value::from("/out/run"));
    assert!(
        r.get("hydra").is_none(),
        "hydra must not leak into the job config"
    );
}

#[test]
fn resolve_context_env_and_now() {
    let cfg = yaml(
        "{a: '${oc.env:FUSION_CONFIG_TEST_VAR,fallback}', t: '${now:%Y/%m/%d}', \
         t2: '${now:%Y/%m/%d}', o: '${hydra:runtime.output_dir}', n: '${hydra:job.config_name}'}",
    );
    let mut ctx = ResolveContext::new("fabric_model_fusion");
    ctx.now = chrono::NaiveDate::from_ymd_opt(2025, 1, 2)
        .unwrap()
        .and_hms_opt(3, 4, 5)
        .unwrap();
    ctx.output_dir = Some("/o".into());
    ctx.env = Some(BTreeMap::from([(
        "FUSION_CONFIG_TEST_VAR".to_string(),
        "set".to_string(),
    )]));
    let r = resolve(&cfg, &ctx).unwrap();
    assert_eq!(
        r,
        yaml("{a: set, t: 2025/01/02, t2: 2025/01/02, o: /o, n: fabric_model_fusion}")
    );
    ctx.env = Some(BTreeMap::new());
    assert_eq!(resolve(&cfg, &ctx).unwrap()["a"], Value::from("fallback"));
    // The process environment is used when no map is given.
    ctx.env = None;
    let path = std::env::var("PATH").unwrap_or_default();
    let r = resolve(&yaml("{p: '${oc.env:PATH}'}"), &ctx).unwrap();
    assert_eq!(r["p"], Value::from(path));
}

#[test]
fn whole_string_interpolation_keeps_type() {
    let cfg = yaml(
        "{i: 3, f: 0.5, b: true, m: {x: [1, {y: '${i}'}]}, ri: '${i}', rf: '${f}', rb: '${b}', \
         rm: '${m}', s: 'v${i}', nul: null, rn: '${nul}', sn: 'x${nul}'}",
    );
    let r = resolve(&cfg, &ResolveContext::new("c")).unwrap();
    assert_eq!(r["ri"], Value::from(3));
    assert_eq!(r["rf"], Value::from(0.5));
    assert_eq!(r["rb"], Value::Bool(true));
    assert_eq!(r["rm"], yaml("{x: [1, {y: 3}]}"));
    assert_eq!(r["s"], Value::from("v3"));
    assert_eq!(r["rn"], Value::Null);
    assert_eq!(r["sn"], Value::from("xNone"));
}

#[test]
fn find_missing_reports_dotted_paths() {
    let cfg = yaml("{a: '???', b: {c: '???', d: 1}, l: [1, '???', {e: '???'}]}");
    assert_eq!(find_missing(&cfg), ["a", "b.c", "l.1", "l.2.e"]);
    assert!(find_missing(&yaml("{a: 1}")).is_empty());
}

#[test]
fn to_yaml_prints_like_cfg_job() {
    let cfg = yaml(
        "{seed: null, n: 'n', lr: 0.001, tiny: 1.0e-5, path: '${a}/b', l: [1, {k: v}], e: {}}",
    );
    assert_eq!(
        to_yaml(&cfg),
        "seed: null\n'n': 'n'\nlr: 0.001\ntiny: 1.0e-05\npath: ${a}/b\nl:\n- 1\n- k: v\ne: {}\n"
    );
}

#[test]
fn empty_primary_with_appends() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "db/mysql.yaml", "port: 3306\n");
    let c = compose(&ComposeOptions {
        search_path: vec![dir.path().to_path_buf()],
        config_name: None,
        overrides: vec!["+db=mysql".into(), "+x.y=1".into()],
    })
    .unwrap();
    assert_eq!(c.config, yaml("{db: {port: 3306}, x: {y: 1}}"));
    assert_eq!(c.config_name, "");
}

#[test]
fn delete_list_item() {
    // Hydra 1.3 raises a TypeError here; deleting the item is the evident intent.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.yaml", "l: [a, b, c]\n");
    let c = compose(&ComposeOptions {
        search_path: vec![dir.path().to_path_buf()],
        config_name: Some("c".into()),
        overrides: vec!["~l.1".into()],
    })
    .unwrap();
    assert_eq!(c.config, yaml("{l: [a, c]}"));
}
