//! Parameter values as mergekit's `evaluate_setting` reads them (`mergekit/config.py`): a
//! scalar, a gradient (a list of numbers interpolated piecewise-linearly over the layer
//! position `t` in [0, 1]), or a list of `{filter, value}` entries where the first entry whose
//! `filter` is a substring of the tensor name (or that has no filter, or `*`) gives the value.

use fusion_plugin_api::{Error, Result};
use serde_json::Value;

/// One evaluated parameter value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Num(f64),
    Bool(bool),
}

impl Scalar {
    /// The value as a number (`true` is 1, as Python's arithmetic on bools has it).
    pub fn num(self) -> f64 {
        match self {
            Scalar::Num(x) => x,
            Scalar::Bool(b) => b as u8 as f64,
        }
    }

    /// The value as a flag (a number is true unless 0, as Python's `bool()`).
    pub fn flag(self) -> bool {
        match self {
            Scalar::Num(x) => x != 0.0,
            Scalar::Bool(b) => b,
        }
    }
}

/// A parameter setting from the config.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Scalar(Scalar),
    /// A list of numbers: a gradient over the layers.
    Gradient(Vec<f64>),
    /// A list of booleans: picked by layer position, not interpolated.
    Steps(Vec<Scalar>),
    /// `{filter, value}` entries, the first match wins.
    Conditional(Vec<(Option<String>, Setting)>),
}

fn scalar(v: &Value) -> Option<Scalar> {
    match v {
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Number(n) => n.as_f64().map(Scalar::Num),
        // PyYAML reads `1e-6` (no dot) as a string, which mergekit converts for a numeric
        // parameter; a quoted number is read the same way here.
        Value::String(s) => s.trim().parse::<f64>().ok().map(Scalar::Num),
        _ => None,
    }
}

impl Setting {
    /// Read a setting; `what` names it in errors (`parameters.t`, `models[1].parameters.weight`).
    pub fn parse(v: &Value, what: &str) -> Result<Setting> {
        if let Some(s) = scalar(v) {
            return Ok(Setting::Scalar(s));
        }
        let bad = || {
            Error::config(format!(
                "mergekit config: `{what}` must be a number, a boolean, a list of numbers (a gradient) \
                 or a list of `{{filter, value}}` entries, got {v}"
            ))
        };
        match v {
            // One `{filter, value}` mapping is a list of one.
            Value::Object(_) => Setting::parse(&Value::Array(vec![v.clone()]), what),
            Value::Array(items) if items.is_empty() => Err(bad()),
            Value::Array(items)
                if items
                    .iter()
                    .all(|i| matches!(scalar(i), Some(Scalar::Num(_)))) =>
            {
                Ok(Setting::Gradient(
                    items.iter().filter_map(scalar).map(Scalar::num).collect(),
                ))
            }
            Value::Array(items) if items.iter().all(|i| scalar(i).is_some()) => {
                Ok(Setting::Steps(items.iter().filter_map(scalar).collect()))
            }
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let Value::Object(map) = item else {
                        return Err(bad());
                    };
                    for key in map.keys() {
                        if key != "filter" && key != "value" {
                            return Err(Error::config(format!(
                                "mergekit config: `{what}[{i}]` has an unknown key `{key}` (expected `filter` and `value`)"
                            )));
                        }
                    }
                    let filter = match map.get("filter") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(other) => {
                            return Err(Error::config(format!(
                            "mergekit config: `{what}[{i}].filter` must be a string, got {other}"
                        )))
                        }
                    };
                    let value = map.get("value").ok_or_else(|| {
                        Error::config(format!("mergekit config: `{what}[{i}]` has no `value`"))
                    })?;
                    let value = Setting::parse(value, &format!("{what}[{i}].value"))?;
                    if matches!(value, Setting::Conditional(_)) {
                        return Err(bad());
                    }
                    out.push((filter, value));
                }
                Ok(Setting::Conditional(out))
            }
            _ => Err(bad()),
        }
    }

    /// The value for `tensor` at layer position `t`, or `None` when no filter matches.
    pub fn evaluate(&self, tensor: &str, t: f64) -> Option<Scalar> {
        match self {
            Setting::Scalar(s) => Some(*s),
            Setting::Gradient(g) => {
                let scaled = t * (g.len() - 1) as f64;
                let i0 = scaled as usize;
                let i1 = (i0 + 1).min(g.len() - 1);
                let frac = scaled - i0 as f64;
                Some(Scalar::Num((1.0 - frac) * g[i0] + frac * g[i1]))
            }
            Setting::Steps(s) => Some(s[(t * (s.len() - 1) as f64) as usize]),
            Setting::Conditional(entries) => entries
                .iter()
                .find(|(f, _)| match f {
                    None => true,
                    Some(f) => f == "*" || (!tensor.is_empty() && tensor.contains(f.as_str())),
                })
                .and_then(|(_, v)| v.evaluate(tensor, t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gradients_interpolate_and_filters_pick_the_first_match() {
        let g = Setting::parse(&json!([0.0, 0.5, 1.0]), "w").unwrap();
        assert_eq!(g.evaluate("x", 0.0), Some(Scalar::Num(0.0)));
        assert_eq!(g.evaluate("x", 0.25), Some(Scalar::Num(0.25)));
        assert_eq!(g.evaluate("x", 1.0), Some(Scalar::Num(1.0)));
        let f = Setting::parse(
            &json!([{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.7}]),
            "t",
        )
        .unwrap();
        assert_eq!(
            f.evaluate("model.layers.0.self_attn.q_proj.weight", 0.5),
            Some(Scalar::Num(0.5))
        );
        assert_eq!(
            f.evaluate("model.layers.0.mlp.up_proj.weight", 0.5),
            Some(Scalar::Num(0.7))
        );
        assert_eq!(f.evaluate("model.norm.weight", 0.5), None);
        assert!(Setting::parse(&json!("x"), "t").is_err());
        assert_eq!(
            Setting::parse(&json!(["1e-6", 1]), "t")
                .unwrap()
                .evaluate("x", 0.0),
            Some(Scalar::Num(1e-6))
        );
        let one = Setting::parse(&json!({"filter": "mlp", "value": 2}), "t").unwrap();
        assert_eq!(
            one.evaluate("model.layers.0.mlp.up_proj.weight", 0.0),
            Some(Scalar::Num(2.0))
        );
        assert_eq!(one.evaluate("model.norm.weight", 0.0), None);
        assert!(Setting::parse(&json!([{"filter": "a", "valu": 1}]), "t").is_err());
    }
}
