//! Override parsing (Hydra's override grammar) — values checked against what Hydra 1.3's
//! `OverridesParser` returns for the same text.

use fusion_config::{parse_override, ConfigError, OverrideKind};
use serde_norway::Value;

fn v(text: &str) -> Value {
    parse_override(text).unwrap().value.unwrap()
}

fn yaml(s: &str) -> Value {
    serde_norway::from_str(s).unwrap()
}

#[test]
fn kinds_keys_and_packages() {
    let o = parse_override("a.b.c=1").unwrap();
    assert_eq!(
        (o.kind, o.key.as_str(), o.package.as_deref()),
        (OverrideKind::Change, "a.b.c", None)
    );
    let o = parse_override("+a.b=1").unwrap();
    assert_eq!(o.kind, OverrideKind::Add);
    let o = parse_override("++a.b=1").unwrap();
    assert_eq!(o.kind, OverrideKind::ForceAdd);
    let o = parse_override("~a.b").unwrap();
    assert_eq!((o.kind, o.value.clone()), (OverrideKind::Delete, None));
    let o = parse_override("~a.b=3").unwrap();
    assert_eq!(
        (o.kind, o.value.clone()),
        (OverrideKind::Delete, Some(Value::from(3)))
    );
    let o = parse_override("dataset/test@test_datasets=[a, b]").unwrap();
    assert_eq!(o.key, "dataset/test");
    assert_eq!(o.package.as_deref(), Some("test_datasets"));
    assert_eq!(o.key_with_package(), "dataset/test@test_datasets");
    let o = parse_override("group@=x").unwrap();
    assert_eq!(o.package.as_deref(), Some(""));
    let o = parse_override("a.list.0.field=x").unwrap();
    assert_eq!(o.key, "a.list.0.field");
    assert_eq!(o.text, "a.list.0.field=x");
}

#[test]
fn scalar_typing_like_hydra() {
    assert_eq!(v("a=1"), Value::from(1));
    assert_eq!(v("a=-7"), Value::from(-7));
    assert_eq!(v("a=1_000"), Value::from(1000));
    assert_eq!(v("a=1e-3"), Value::from(0.001));
    assert_eq!(v("a=2E+3"), Value::from(2000.0));
    assert_eq!(v("a=.5"), Value::from(0.5));
    assert_eq!(v("a=1."), Value::from(1.0));
    assert_eq!(v("a=inf"), Value::from(f64::INFINITY));
    assert!(matches!(v("a=nan"), Value::Number(n) if n.as_f64().unwrap().is_nan()));
    assert_eq!(v("a=TRUE"), Value::Bool(true));
    assert_eq!(v("a=false"), Value::Bool(false));
    assert_eq!(v("a=null"), Value::Null);
    assert_eq!(v("a=NULL"), Value::Null);
    // Not numbers for Hydra:
    assert_eq!(v("a=007"), Value::from("007"));
    assert_eq!(v("a=1.2.3"), Value::from("1.2.3"));
    assert_eq!(v("a=1__0"), Value::from("1__0"));
    assert_eq!(v("a=yes"), Value::from("yes"));
}

#[test]
fn strings_quotes_escapes_and_interpolations() {
    assert_eq!(v("a=hello world "), Value::from("hello world"));
    assert_eq!(v("a="), Value::from(""));
    assert_eq!(v("a='x'"), Value::from("x"));
    assert_eq!(v("a='1'"), Value::from("1"));
    assert_eq!(v("a=\"a,b\""), Value::from("a,b"));
    assert_eq!(v(r"a='it\'s'"), Value::from("it's"));
    assert_eq!(v("a=x:y"), Value::from("x:y"));
    assert_eq!(v(r"a=c\ d"), Value::from("c d"));
    assert_eq!(v(r"a=a\,b"), Value::from("a,b"));
    assert_eq!(v(r"a=f\(x\)"), Value::from("f(x)"));
    assert_eq!(v("a=${b.c}"), Value::from("${b.c}"));
    assert_eq!(v("a=x_${b}_${c:d,e}"), Value::from("x_${b}_${c:d,e}"));
    assert_eq!(v(r"a=\${b}"), Value::from(r"\${b}"));
    assert_eq!(v(r"a=$\{b\}/x"), Value::from("${b}/x"));
    assert_eq!(v("a='${b} x'"), Value::from("${b} x"));
    assert_eq!(v("a=/a/b-c_d.txt"), Value::from("/a/b-c_d.txt"));
}

#[test]
fn lists_and_dicts() {
    assert_eq!(v("a=[1,a b,{x: 2}]"), yaml("[1, 'a b', {x: 2}]"));
    assert_eq!(v("a={b: 1, c: [x]}"), yaml("{b: 1, c: [x]}"));
    assert_eq!(v("a=[]"), yaml("[]"));
    assert_eq!(v("a={}"), yaml("{}"));
    assert_eq!(v("a=[[1, 2], ['x,y']]"), yaml("[[1, 2], ['x,y']]"));
    assert_eq!(v("a={k: '${x}', n: null}"), yaml("{k: '${x}', n: null}"));
}

fn syntax_err(text: &str) -> String {
    match parse_override(text) {
        Err(e @ ConfigError::OverrideSyntax { .. }) => {
            let m = e.to_string();
            assert!(m.contains(text), "message must quote the override: {m}");
            m
        }
        other => panic!("{text}: expected a syntax error, got {other:?}"),
    }
}

#[test]
fn syntax_errors_name_the_override() {
    syntax_err("a=[1");
    syntax_err("a={b 1}");
    syntax_err("a='open");
    syntax_err("=1");
    syntax_err("a");
    syntax_err("+a");
    syntax_err("a b=1");
    syntax_err("a=x)");
    syntax_err("a=b=c");
    syntax_err("a='x'y");
}

#[test]
fn sweeps_and_functions_are_unsupported() {
    for t in ["a=1,2", "a=choice(1,2)", "a=range(3)", "a=int(3)"] {
        match parse_override(t) {
            Err(e @ ConfigError::UnsupportedOverride { .. }) => {
                assert!(e.to_string().contains(t), "{e}")
            }
            other => panic!("{t}: expected UnsupportedOverride, got {other:?}"),
        }
    }
}
