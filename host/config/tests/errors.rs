//! Every `ConfigError` variant, triggered through the public API; each message must name its
//! culprit (file and line, override text, key path, group and options).

use std::collections::BTreeMap;
use std::path::Path;

use fusion_config::{compose, resolve, ComposeOptions, Composed, ConfigError, ResolveContext};
use serde_norway::Value;

mod common;
use common::tree;

fn opts(dir: &Path, name: Option<&str>, overrides: &[&str]) -> ComposeOptions {
    ComposeOptions {
        search_path: vec![dir.to_path_buf()],
        config_name: name.map(str::to_string),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
    }
}

const BASE: &[(&str, &str)] = &[
    (
        "config.yaml",
        "defaults:\n  - method: dummy\n  - _self_\nseed: null\nlr: 0.1\nlist: [1, 2]\nreq: ???\n",
    ),
    ("method/dummy.yaml", "name: dummy\nscale: 0.3\n"),
    (
        "method/task_arithmetic.yaml",
        "name: ta\nscaling_factor: 0.3\n",
    ),
    ("method/ties_merging.yaml", "name: ties\n"),
    ("extra/one.yaml", "x: 1\n"),
];

fn compose_err(
    files: &[(&str, &str)],
    name: Option<&str>,
    overrides: &[&str],
) -> (ConfigError, String) {
    let dir = tree(files);
    match compose(&opts(dir.path(), name, overrides)) {
        Ok(c) => panic!("expected an error, got {:?}", c.config),
        Err(e) => {
            let m = e.to_string();
            (e, m)
        }
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message does not mention {p:?}:\n{msg}");
    }
}

#[test]
fn io_error_names_the_file() {
    let dir = tree::<&str, &str>(&[]);
    std::fs::write(dir.path().join("config.yaml"), [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let e = compose(&opts(dir.path(), Some("config"), &[])).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    assert_mentions(&e.to_string(), &["config.yaml"]);
}

#[test]
fn yaml_syntax_error_names_file_and_line() {
    let (e, m) = compose_err(
        &[
            ("config.yaml", "defaults:\n  - grp: bad\n"),
            ("grp/bad.yaml", "a: 1\nb: [1, 2\nc: 3\n"),
        ],
        Some("config"),
        &[],
    );
    match e {
        ConfigError::YamlSyntax { path, line, .. } => {
            assert!(path.ends_with("grp/bad.yaml"));
            assert!(line >= 2, "line {line}");
        }
        other => panic!("{other:?}"),
    }
    assert_mentions(&m, &["bad.yaml", "line "]);
    let (_, m) = compose_err(
        &[("config.yaml", "a: 1\nb:\n  - x\n c: 2\n")],
        Some("config"),
        &[],
    );
    assert_mentions(&m, &["config.yaml", "line 4"]);
}

#[test]
fn non_mapping_config_is_an_error() {
    let (e, m) = compose_err(&[("config.yaml", "- a\n- b\n")], Some("config"), &[]);
    assert!(matches!(e, ConfigError::NotAMapping { .. }));
    assert_mentions(&m, &["config.yaml", "a list"]);
}

#[test]
fn invalid_defaults_entries() {
    for (text, culprit) in [
        ("defaults:\n  - a: 1\n", "'a': 1"),
        ("defaults:\n  - {a: x, b: y}\n", "too many keys"),
        ("defaults:\n  - _self_@pkg\n", "_self_@PACKAGE"),
        ("defaults:\n  - maybe a: x\n", "maybe"),
        ("defaults: 3\n", "must be a list"),
    ] {
        let (e, m) = compose_err(&[("config.yaml", text)], Some("config"), &[]);
        assert!(matches!(e, ConfigError::InvalidDefaults { .. }), "{e:?}");
        assert_mentions(&m, &["config.yaml", culprit]);
    }
}

#[test]
fn primary_not_found_lists_search_path() {
    let (e, m) = compose_err(BASE, Some("nope"), &[]);
    assert!(matches!(e, ConfigError::PrimaryNotFound { .. }));
    assert_mentions(&m, &["'nope'", "search path"]);
}

#[test]
fn unknown_option_lists_options_and_suggests() {
    let (e, m) = compose_err(BASE, Some("config"), &["method=task_arithmetc"]);
    match &e {
        ConfigError::ConfigNotFound {
            group,
            options,
            suggestion,
            parent,
            ..
        } => {
            assert_eq!(group.as_deref(), Some("method"));
            assert_eq!(options, &["dummy", "task_arithmetic", "ties_merging"]);
            assert_eq!(suggestion.as_deref(), Some("task_arithmetic"));
            assert_eq!(parent.as_deref(), Some("config"));
        }
        other => panic!("{other:?}"),
    }
    assert_mentions(
        &m,
        &[
            "method/task_arithmetc",
            "ties_merging",
            "did you mean 'task_arithmetic'",
        ],
    );
}

#[test]
fn missing_plain_include() {
    let (e, m) = compose_err(
        &[("config.yaml", "defaults:\n  - sub/nothing\n")],
        Some("config"),
        &[],
    );
    assert!(matches!(e, ConfigError::ConfigNotFound { group: None, .. }));
    assert_mentions(&m, &["sub/nothing", "in 'config'"]);
}

#[test]
fn missing_group_choice() {
    let (e, m) = compose_err(
        &[
            ("config.yaml", "defaults:\n  - method: ???\n"),
            ("method/a.yaml", ""),
            ("method/b.yaml", ""),
        ],
        Some("config"),
        &[],
    );
    assert!(matches!(e, ConfigError::MissingGroupChoice { .. }));
    assert_mentions(&m, &["'method'", "method=<OPTION>", "\ta", "\tb"]);
}

#[test]
fn override_syntax_error_quotes_the_override() {
    let (e, m) = compose_err(BASE, Some("config"), &["lr=[1"]);
    assert!(matches!(e, ConfigError::OverrideSyntax { .. }));
    assert_mentions(&m, &["'lr=[1'"]);
}

#[test]
fn unsupported_override() {
    let (e, m) = compose_err(BASE, Some("config"), &["lr=0.1,0.2"]);
    assert!(matches!(e, ConfigError::UnsupportedOverride { .. }));
    assert_mentions(&m, &["lr=0.1,0.2", "multirun"]);
    let (e, m) = compose_err(BASE, Some("config"), &["++method=dummy"]);
    assert!(matches!(e, ConfigError::UnsupportedOverride { .. }));
    assert_mentions(&m, &["++method=dummy"]);
}

#[test]
fn group_not_in_defaults_suggests_append() {
    let (e, m) = compose_err(BASE, Some("config"), &["extra=one"]);
    assert!(matches!(e, ConfigError::GroupNotInDefaults { .. }));
    assert_mentions(&m, &["'extra'", "+extra=one"]);
    let (_, m) = compose_err(BASE, Some("config"), &["method@elsewhere=dummy"]);
    assert_mentions(&m, &["method@elsewhere", "did you mean to override method"]);
}

#[test]
fn group_delete_not_in_defaults() {
    let (e, m) = compose_err(BASE, Some("config"), &["~extra"]);
    assert!(matches!(e, ConfigError::GroupDeleteNotInDefaults { .. }));
    assert_mentions(&m, &["'extra'", "~extra"]);
    let (_, m) = compose_err(BASE, Some("config"), &["~method=ties_merging"]);
    assert_mentions(&m, &["method=ties_merging"]);
}

#[test]
fn defaults_composition_errors() {
    let cases: &[(&str, &[&str])] = &[
        (
            "defaults:\n  - _self_\n  - method: dummy\n  - _self_\n",
            &["duplicate _self_", "config"],
        ),
        (
            "defaults:\n  - method: dummy\n  - method: ties_merging\n",
            &["method"],
        ),
        (
            "defaults:\n  - override method: ties_merging\n  - method: dummy\n",
            &["override 'method", "end of the defaults list"],
        ),
    ];
    for (text, parts) in cases {
        let mut files = BASE.to_vec();
        files[0] = ("config.yaml", text);
        let (e, m) = compose_err(&files, Some("config"), &[]);
        assert!(
            matches!(e, ConfigError::DefaultsComposition { .. }),
            "{e:?}"
        );
        assert_mentions(&m, parts);
    }
    let (e, m) = compose_err(BASE, Some("config"), &["+method=ties_merging"]);
    assert!(
        matches!(e, ConfigError::DefaultsComposition { .. }),
        "{e:?}"
    );
    assert_mentions(&m, &["multiple values for method"]);
}

#[test]
fn value_override_errors() {
    let (e, m) = compose_err(BASE, Some("config"), &["method.scaling=1"]);
    assert!(matches!(e, ConfigError::OverrideKeyMissing { .. }));
    assert_mentions(&m, &["'method.scaling'", "+method.scaling=1"]);

    let (e, m) = compose_err(BASE, Some("config"), &["+lr=1"]);
    assert!(matches!(e, ConfigError::AppendKeyExists { .. }));
    assert_mentions(&m, &["'lr'", "'lr=1'", "'++lr=1'"]);

    let (e, m) = compose_err(BASE, Some("config"), &["~nothing.here"]);
    assert!(matches!(e, ConfigError::DeleteKeyMissing { .. }));
    assert_mentions(&m, &["'nothing.here'"]);

    let (e, m) = compose_err(BASE, Some("config"), &["~lr=0.2"]);
    assert!(matches!(e, ConfigError::DeleteValueMismatch { .. }));
    assert_mentions(&m, &["'lr'", "0.1", "0.2"]);

    let (e, m) = compose_err(BASE, Some("config"), &["list.5=1"]);
    assert!(matches!(e, ConfigError::OverrideApply { .. }));
    assert_mentions(&m, &["list.5=1", "out of range"]);

    let (e, m) = compose_err(BASE, Some("config"), &["methd@x=dummy"]);
    assert!(matches!(e, ConfigError::OverrideApply { .. }));
    assert_mentions(&m, &["methd", "does not exist", "method"]);
}

fn composed(files: &[(&str, &str)], overrides: &[&str]) -> Composed {
    let dir = tree(files);
    compose(&opts(dir.path(), Some("config"), overrides)).unwrap()
}

fn resolve_err(overrides: &[&str]) -> (ConfigError, String) {
    let c = composed(BASE, overrides);
    let mut ctx = ResolveContext::new("config");
    ctx.env = Some(BTreeMap::new());
    let e = resolve(&c.config, &ctx).unwrap_err();
    let m = e.to_string();
    (e, m)
}

#[test]
fn interpolation_errors_name_the_key() {
    let (e, m) = resolve_err(&["+a.b=${nokey.x}"]);
    assert!(matches!(e, ConfigError::InterpolationKeyNotFound { .. }));
    assert_mentions(&m, &["'nokey.x'", "'a.b'"]);

    let (e, m) = resolve_err(&["+c1=${c2}", "+c2=${c1}"]);
    assert!(matches!(e, ConfigError::InterpolationCycle { .. }));
    assert_mentions(&m, &["c1 -> c2 -> c1"]);

    let (e, m) = resolve_err(&["+mm=${req}"]);
    assert!(matches!(e, ConfigError::MissingMandatoryValue { .. }));
    assert_mentions(&m, &["'req'", "'mm'"]);

    let bad: Value = serde_norway::from_str("{x: {bad: '${a'}}").unwrap();
    let e = resolve(&bad, &ResolveContext::new("c")).unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, ConfigError::InterpolationSyntax { .. }));
    assert_mentions(&m, &["'x.bad'", "${a"]);
    let bad: Value = serde_norway::from_str("{bad: '${a b}'}").unwrap();
    let e = resolve(&bad, &ResolveContext::new("c")).unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, ConfigError::InterpolationSyntax { .. }));
    assert_mentions(&m, &["'bad'", "${a"]);

    let (e, m) = resolve_err(&["+r=${foo:bar}"]);
    assert!(matches!(e, ConfigError::UnknownResolver { .. }));
    assert_mentions(&m, &["'foo'", "'r'"]);

    let (e, m) = resolve_err(&["+e=${oc.env:NOT_SET_ANYWHERE}"]);
    assert!(matches!(e, ConfigError::EnvVarNotFound { .. }));
    assert_mentions(&m, &["'NOT_SET_ANYWHERE'", "'e'"]);

    let (e, m) = resolve_err(&["+e=${oc.env:NOT_SET_ANYWHERE,5}"]);
    assert!(matches!(e, ConfigError::ResolverFailed { .. }));
    assert_mentions(&m, &["oc.env", "'e'"]);

    let (e, m) = resolve_err(&["+t=${now:%Q}"]);
    assert!(matches!(e, ConfigError::ResolverFailed { .. }));
    assert_mentions(&m, &["'now'", "%Q"]);

    let (e, m) = resolve_err(&["+o=${hydra:runtime.output_dir}"]);
    assert!(matches!(e, ConfigError::InterpolationKeyNotFound { .. }));
    assert_mentions(&m, &["hydra:runtime.output_dir", "'o'"]);
}

#[test]
fn missing_values_are_left_in_place() {
    let c = composed(BASE, &["+p.q=???"]);
    let r = resolve(&c.config, &ResolveContext::new("config")).unwrap();
    assert_eq!(r["req"], Value::from("???"));
    assert_eq!(
        fusion_config::find_missing(&r),
        vec!["req".to_string(), "p.q".to_string()]
    );
}

// Input that would recurse without end, or deeper than the stack holds: each is refused with
// an error that names the culprit, never a stack overflow (SIGABRT, no message).

#[test]
fn defaults_list_cycle_names_the_files() {
    let (e, m) = compose_err(
        &[("loop.yaml", "defaults:\n  - loop\n  - _self_\nx: 1\n")],
        Some("loop"),
        &[],
    );
    assert!(matches!(e, ConfigError::DefaultsCycle { .. }), "{e:?}");
    assert_mentions(&m, &["cycle", "loop.yaml -> "]);

    let (e, m) = compose_err(
        &[
            ("config.yaml", "defaults:\n  - group: a\n  - _self_\n"),
            ("group/a.yaml", "defaults:\n  - /other/b\n"),
            ("other/b.yaml", "defaults:\n  - /group/a\n"),
        ],
        Some("config"),
        &[],
    );
    let ConfigError::DefaultsCycle { chain } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(chain.len(), 3, "{chain:?}");
    assert!(
        chain[0].ends_with("a.yaml") && chain[1].ends_with("b.yaml"),
        "{chain:?}"
    );
    assert_eq!(chain[0], chain[2]);
    assert_mentions(&m, &["group/a.yaml", "other/b.yaml"]);
}

#[test]
fn deeply_nested_override_value_is_refused() {
    let deep = format!("+junk={}{}", "[".repeat(10_000), "]".repeat(10_000));
    let (e, m) = compose_err(BASE, Some("config"), &[&deep]);
    assert!(matches!(e, ConfigError::TooDeep { .. }), "{e:?}");
    assert_mentions(&m, &["+junk=[[[", "128 levels"]);
    assert!(
        m.len() < 400,
        "the message repeats the whole override: {} bytes",
        m.len()
    );
    // Nesting within the limit still composes, dicts as lists.
    let ok = format!("+junk={}1{}", "{a: ".repeat(100), "}".repeat(100));
    let dir = tree(BASE);
    compose(&opts(dir.path(), Some("config"), &[&ok])).expect("100 levels compose");
}

#[test]
fn dotted_key_with_too_many_parts_is_refused() {
    let key = vec!["a"; 20_000].join(".");
    let (e, m) = compose_err(BASE, Some("config"), &[&format!("+{key}=1")]);
    assert!(matches!(e, ConfigError::TooDeep { .. }), "{e:?}");
    assert_mentions(&m, &["+a.a.a", "20000 parts", "128 levels"]);
    let (e, _) = compose_err(BASE, Some("config"), &[&format!("+method@{key}=dummy")]);
    assert!(matches!(e, ConfigError::TooDeep { .. }), "{e:?}");
}

#[test]
fn long_interpolation_chain_is_refused() {
    let mut yaml = String::new();
    for i in 0..10_000 {
        yaml.push_str(&format!("a{i}: ${{a{}}}\n", i + 1));
    }
    yaml.push_str("a10000: 1\n");
    let dir = tree(&[("chain.yaml", &yaml)]);
    let c = compose(&opts(dir.path(), Some("chain"), &[])).unwrap();
    let e = resolve(&c.config, &ResolveContext::new("chain")).unwrap_err();
    assert!(matches!(e, ConfigError::TooDeep { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &["chain of interpolations", "'a0'", "128 levels"],
    );

    // Nested `${${${...}}}` in one string.
    let nested = format!("x: {}a{}\na: 1\n", "${".repeat(10_000), "}".repeat(10_000));
    let dir = tree(&[("nest.yaml", &nested)]);
    let c = compose(&opts(dir.path(), Some("nest"), &[])).unwrap();
    let e = resolve(&c.config, &ResolveContext::new("nest")).unwrap_err();
    assert_mentions(&e.to_string(), &["'x'", "nested more than 128 levels deep"]);

    // A chain within the limit resolves.
    let mut yaml = String::new();
    for i in 0..100 {
        yaml.push_str(&format!("a{i}: ${{a{}}}\n", i + 1));
    }
    yaml.push_str("a100: 7\n");
    let dir = tree(&[("short.yaml", &yaml)]);
    let c = compose(&opts(dir.path(), Some("short"), &[])).unwrap();
    let r = resolve(&c.config, &ResolveContext::new("short")).unwrap();
    assert_eq!(r["a0"], Value::from(7));
}
