//! Helpers over `serde_norway::Value`: OmegaConf merge, key paths, Python-style rendering.

use serde_norway::{Mapping, Value};

/// OmegaConf's marker for a required value that has not been given.
pub const MISSING: &str = "???";

/// True when the value is the `???` marker.
pub fn is_missing(v: &Value) -> bool {
    matches!(v, Value::String(s) if s == MISSING)
}

/// Merges `src` into `dest` with OmegaConf's `merge` semantics: mappings merge recursively
/// (existing keys keep their position, new keys are appended), everything else is replaced,
/// and a `???` in `src` never replaces an existing value.
pub fn merge_into(dest: &mut Value, src: Value) {
    match (dest, src) {
        (Value::Mapping(d), Value::Mapping(s)) => merge_mappings(d, s),
        (d, s) => {
            if !is_missing(&s) {
                *d = s;
            }
        }
    }
}

fn merge_mappings(d: &mut Mapping, s: Mapping) {
    for (k, v) in s {
        match d.get_mut(&k) {
            Some(dv) => merge_into(dv, v),
            None => {
                d.insert(k, v);
            }
        }
    }
}

/// How deep fusion-host follows nested input: override values (`[[[...]]]`), the segments of a
/// dotted key, nested `${...}`, and chains of interpolations that point at interpolations. YAML
/// files are held to serde_norway's own limit (128) already. Far beyond any real config, far below
/// what exhausts a 2 MiB thread stack in a debug build; OmegaConf stops such input at Python's
/// recursion limit (1000) with a `RecursionError`.
pub const MAX_DEPTH: usize = 128;

/// Splits a dotted key (`a.b.0.c`) into its parts.
pub fn split_key(key: &str) -> Vec<String> {
    if key.is_empty() {
        return Vec::new();
    }
    key.split('.').map(str::to_string).collect()
}

/// Finds a mapping entry by a textual key: a string key first, then an int or bool key
/// with the same text.
pub fn map_get<'a>(m: &'a Mapping, k: &str) -> Option<&'a Value> {
    m.get(k).or_else(|| alt_key(k).and_then(|ak| m.get(&ak)))
}

/// Mutable variant of [`map_get`].
pub fn map_get_mut<'a>(m: &'a mut Mapping, k: &str) -> Option<&'a mut Value> {
    if m.contains_key(k) {
        return m.get_mut(k);
    }
    match alt_key(k) {
        Some(ak) => m.get_mut(&ak),
        None => None,
    }
}

/// The non-string key a textual key may stand for (`1` → int key 1).
pub fn alt_key(k: &str) -> Option<Value> {
    if let Ok(i) = k.parse::<i64>() {
        return Some(Value::from(i));
    }
    match k {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        _ => None,
    }
}

/// The child of a container by textual key (mapping key or list index).
pub fn child<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    match v {
        Value::Mapping(m) => map_get(m, k),
        Value::Sequence(s) => k.parse::<usize>().ok().and_then(|i| s.get(i)),
        Value::Tagged(t) => child(&t.value, k),
        _ => None,
    }
}

/// Mutable variant of [`child`].
pub fn child_mut<'a>(v: &'a mut Value, k: &str) -> Option<&'a mut Value> {
    match v {
        Value::Mapping(m) => map_get_mut(m, k),
        Value::Sequence(s) => k.parse::<usize>().ok().and_then(move |i| s.get_mut(i)),
        Value::Tagged(t) => child_mut(&mut t.value, k),
        _ => None,
    }
}

/// The node at a key path, if every step exists.
pub fn get_path<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = root;
    for k in path {
        cur = child(cur, k)?;
    }
    Some(cur)
}

/// Mutable variant of [`get_path`].
pub fn get_path_mut<'a>(root: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = root;
    for k in path {
        cur = child_mut(cur, k)?;
    }
    Some(cur)
}

/// True for mappings and sequences.
pub fn is_container(v: &Value) -> bool {
    matches!(v, Value::Mapping(_) | Value::Sequence(_))
}

/// Renders a float the way Python's `repr(float)` does (`0.001`, `1e-05`, `1.0`, `inf`): the
/// shortest digits that read back, fixed notation for exponents in [-4, 16), else `1e-05` /
/// `1.5e+16`.
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let e = format!("{f:e}");
    let (mant, exp) = e.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("exponent");
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    }
}

/// Renders a scalar as Python's `str()` would (`None`, `True`, `0.001`), which is how OmegaConf
/// turns non-string values into text inside string interpolations. Containers are rendered
/// like Python's `repr` of a dict/list.
pub fn scalar_to_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other, false),
    }
}

/// A number as text: an integer as it is, a float in `float`'s spelling (Python's `repr`,
/// YAML's).
pub(crate) fn number_text(n: &serde_norway::Number, float: impl FnOnce(f64) -> String) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        float(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn py_repr(v: &Value, quote: bool) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => number_text(n, py_float),
        Value::String(s) => {
            if quote {
                format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
            } else {
                s.clone()
            }
        }
        Value::Sequence(s) => format!(
            "[{}]",
            s.iter()
                .map(|x| py_repr(x, true))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Mapping(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(k, true), py_repr(v, true)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Tagged(t) => py_repr(&t.value, quote),
    }
}

/// Renders a value as one line of YAML flow text, for error messages.
pub fn flow(v: &Value) -> String {
    match v {
        Value::Mapping(_) | Value::Sequence(_) => py_repr(v, true),
        Value::String(s) => format!("'{s}'"),
        other => scalar_to_string(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        assert_eq!(py_float(0.001), "0.001");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.3), "0.3");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(1.5e-7), "1.5e-07");
        assert_eq!(py_float(f64::INFINITY), "inf");
    }

    #[test]
    fn merge_semantics() {
        let mut d: Value =
            serde_norway::from_str("{a: 1, b: {x: 1, y: 2}, c: [1, 2], d: 4}").unwrap();
        let s: Value = serde_norway::from_str("{b: {y: 3, z: 4}, c: [9], a: '???', e: 5}").unwrap();
        merge_into(&mut d, s);
        let want: Value =
            serde_norway::from_str("{a: 1, b: {x: 1, y: 3, z: 4}, c: [9], d: 4, e: 5}").unwrap();
        assert_eq!(d, want);
        let keys: Vec<_> = d.as_mapping().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            want.as_mapping()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        );
    }
}
