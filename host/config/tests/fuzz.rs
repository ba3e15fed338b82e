//! Fuzzing of config composition: YAML files, command-line overrides and interpolations. Any
//! input must end in a config or a `ConfigError`, never a panic, an abort (stack overflow) or a
//! hang; what composes must print (`to_yaml`) as YAML that parses back to the same config.
//!
//! First the seed corpus in `tests/data/fuzz/config` is replayed, then proptest's random cases:
//! 256 per property by default (a few seconds in CI); `PROPTEST_CASES=100000 cargo test -p
//! fusion-config --test fuzz --release` for a long local run. A failing case is shrunk and kept in
//! `fuzz.proptest-regressions` beside this file, which is replayed first from then on.

use std::path::{Path, PathBuf};

use fusion_config::{
    compose, find_missing, parse_override, resolve, to_yaml, ComposeOptions, ResolveContext,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_norway::Value;

mod common;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fuzz/config")
}

fn corpus_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(corpus().join(name))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// A resolve context that does not depend on the machine (fixed time, empty environment but
/// for `A` and `HOME`).
fn ctx(name: &str) -> ResolveContext {
    let mut c = ResolveContext::new(name);
    c.now = chrono::NaiveDate::from_ymd_opt(2024, 1, 2)
        .unwrap()
        .and_hms_opt(3, 4, 5)
        .unwrap();
    c.output_dir = Some("out".into());
    c.env = Some(
        [("A", "${a}"), ("HOME", "/home/fuzz")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c
}

/// Compose, resolve and print: every step either succeeds or returns an error. What composes and
/// resolves prints as YAML that parses back to the same value.
fn exercise(search_path: &[PathBuf], name: Option<&str>, overrides: &[String]) {
    let opts = ComposeOptions {
        search_path: search_path.to_vec(),
        config_name: name.map(str::to_string),
        overrides: overrides.to_vec(),
    };
    let Ok(composed) = compose(&opts) else {
        return;
    };
    let printed = to_yaml(&composed.config);
    let _ = find_missing(&composed.config);
    if let Ok(resolved) = resolve(&composed.config, &ctx(&composed.config_name)) {
        let _ = find_missing(&resolved);
        round_trips(&resolved);
    }
    assert!(!printed.is_empty());
}

/// `to_yaml` output parses back to the value (floats compared by their bits' meaning, NaN too).
fn round_trips(v: &Value) {
    let text = to_yaml(v);
    let back: Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("to_yaml printed invalid YAML ({e}):\n{text}"));
    let same = |a: &Value, b: &Value| same_value(a, b);
    assert!(
        same(v, &back),
        "to_yaml does not round-trip:\n{v:?}\nprinted:\n{text}\nparsed back:\n{back:?}"
    );
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) if p.is_nan() && q.is_nan() => true,
            _ => x == y || x.as_f64() == y.as_f64(),
        },
        (Value::Sequence(x), Value::Sequence(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Value::Mapping(x), Value::Mapping(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| same_value(k1, k2) && same_value(v1, v2))
        }
        (Value::Tagged(x), y) => same_value(&x.value, y),
        (x, Value::Tagged(y)) => same_value(x, &y.value),
        _ => a == b,
    }
}

// ---- the seed corpus -------------------------------------------------------------------------

#[test]
fn corpus_yaml_files_compose_or_fail_cleanly() {
    let root = corpus().join("yaml");
    let mut names = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let rel = p.strip_prefix(&root).unwrap().with_extension("");
                names.push(rel.to_string_lossy().to_string());
            }
        }
    }
    names.sort();
    assert!(names.len() >= 30, "{names:?}");
    for name in &names {
        exercise(std::slice::from_ref(&root), Some(name), &[]);
        exercise(
            std::slice::from_ref(&root),
            None,
            &[format!("+{}={}", "group", "opt")],
        );
    }
    // The cycles are named as such.
    for name in ["self_loop", "cycle_a", "group/opt"] {
        let e = compose(&ComposeOptions {
            search_path: vec![root.clone()],
            config_name: Some(name.into()),
            overrides: vec![],
        })
        .unwrap_err();
        assert!(e.to_string().contains("cycle"), "{name}: {e}");
    }
}

#[test]
fn corpus_overrides_parse_and_apply_or_fail_cleanly() {
    let root = corpus().join("yaml");
    let lines = corpus_lines("overrides.txt");
    assert!(lines.len() >= 80);
    for line in &lines {
        let _ = parse_override(line);
        exercise(
            std::slice::from_ref(&root),
            Some("missing"),
            std::slice::from_ref(line),
        );
        exercise(
            std::slice::from_ref(&root),
            None,
            std::slice::from_ref(line),
        );
    }
}

#[test]
fn corpus_interpolations_resolve_or_fail_cleanly() {
    let lines = corpus_lines("interpolations.txt");
    assert!(lines.len() >= 60);
    for line in &lines {
        let mut m = serde_norway::Mapping::new();
        for (k, v) in [
            ("a", Value::from(1)),
            ("b", Value::from("${a}")),
            ("k", Value::from("a")),
            ("self", Value::from("${self}")),
            ("loop1", Value::from("${loop2}")),
            ("loop2", Value::from("${loop1}")),
            ("x", Value::from(line.as_str())),
        ] {
            m.insert(Value::from(k), v);
        }
        let config = Value::Mapping(m);
        let _ = to_yaml(&config);
        if let Ok(r) = resolve(&config, &ctx("fuzz")) {
            round_trips(&r);
        }
    }
}

// ---- random inputs ---------------------------------------------------------------------------

/// Text made mostly of the characters that mean something to the grammars.
fn grammar_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(vec![
                "[", "]", "{", "}", "(", ")", ",", "=", "+", "++", "~", "@", ".", ":", "'", "\"",
                "\\", "$", "${", "}", " ", "\t", "/", "_", "-", "a", "b", "k", "0", "1", "1.5",
                "e9", "null", "true", "???", "_self_", "_global_", "oc.env", "oc.select",
                "oc.decode", "now", "hydra", "é", "\n", "#", "&x", "*x", "!!str", "- ",
            ])
            .prop_map(str::to_string),
            1 => any::<char>().prop_map(|c| c.to_string()),
        ],
        0..max,
    )
    .prop_map(|v| v.concat())
}

/// A YAML config file: either grammar noise or a small well-formed config whose values are
/// grammar noise and whose defaults list points at the other files (cycles included).
fn yaml_file() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        // A double-quoted YAML scalar (JSON's escapes are YAML's).
        grammar_text(24).prop_map(|t| serde_json::to_string(&t).unwrap()),
        Just("'???'".to_string()),
        Just("'${a}'".to_string()),
        Just("'${.x}'".to_string()),
        Just("[1, '${b}', {c: '${..a}'}]".to_string()),
        Just("{x: 1, y: [2, 3]}".to_string()),
        Just("'${oc.select:nope,${a}}'".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
    ];
    let entry = prop_oneof![
        1 => Just("_self_".to_string()),
        4 => prop::sample::select(vec!["one", "two", "three", "/one", "g/opt", "missing"])
            .prop_map(str::to_string),
        4 => prop::sample::select(vec![
            "g: opt", "g: other", "g: ???", "optional g: nope", "g@p.q: opt", "override g: other",
            "g: [opt, other]", "g: ${a}",
        ])
        .prop_map(str::to_string),
    ];
    prop_oneof![
        1 => grammar_text(80),
        4 => (
            prop::collection::vec(entry, 0..3),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "x", "1", "g", "hydra"]),
                value,
                0..5,
            ),
            any::<bool>(),
        )
            .prop_map(|(defaults, keys, header)| {
                let mut s = String::new();
                if header {
                    s.push_str("# @package _global_\n");
                }
                if !defaults.is_empty() {
                    s.push_str("defaults:\n");
                    for d in defaults {
                        s.push_str(&format!("  - {d}\n"));
                    }
                }
                for (k, v) in keys {
                    s.push_str(&format!("{k}: {v}\n"));
                }
                s
            }),
    ]
}

proptest! {
    // Cases: PROPTEST_CASES (256 by default). A failing case is kept (shrunk) beside this file
    // and replayed first on every later run.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fuzz.proptest-regressions"
        )))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_override_parses_or_fails_cleanly(text in grammar_text(60)) {
        let _ = parse_override(&text);
        let _ = parse_override(&format!("+a={text}"));
        let _ = parse_override(&format!("{text}=1"));
    }

    #[test]
    fn any_unicode_override_parses_or_fails_cleanly(text in ".{0,80}") {
        let _ = parse_override(&text);
    }

    #[test]
    fn any_config_tree_composes_or_fails_cleanly(
        files in prop::collection::vec(yaml_file(), 6),
        primary in prop::sample::select(vec!["one", "two", "three"]),
        overrides in prop::collection::vec(
            prop_oneof![
                1 => grammar_text(30),
                6 => prop::sample::select(vec![
                    "g=other", "+g=opt", "~g", "+a.b=1", "++a=${b}", "++x={y: ${a}}",
                    "~a", "+g@p=opt", "+hydra.run.dir=z", "++b=[1, {c: ${..a}}]",
                ]).prop_map(str::to_string),
            ],
            0..3,
        ),
    ) {
        let names = ["one.yaml", "two.yaml", "three.yaml", "g/opt.yaml", "g/other.yaml", "missing.yaml"];
        let tree: Vec<(String, String)> = names
            .iter()
            .zip(files)
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        let dir = common::tree(&tree);
        exercise(&[dir.path().to_path_buf()], Some(primary), &overrides);
    }

    #[test]
    fn any_interpolation_resolves_or_fails_cleanly(
        values in prop::collection::vec(grammar_text(40), 1..5),
    ) {
        let mut m = serde_norway::Mapping::new();
        m.insert(Value::from("a"), Value::from(1));
        let mut inner = serde_norway::Mapping::new();
        for (i, v) in values.iter().enumerate() {
            m.insert(Value::from(format!("v{i}")), Value::from(format!("${{{v}}}")));
            inner.insert(Value::from(format!("w{i}")), Value::from(v.as_str()));
        }
        m.insert(Value::from("inner"), Value::Mapping(inner));
        let config = Value::Mapping(m);
        let _ = to_yaml(&config);
        if let Ok(r) = resolve(&config, &ctx("fuzz")) {
            round_trips(&r);
        }
    }
}
