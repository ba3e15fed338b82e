//! A mergekit YAML config (`mergekit/config.py`, `MergeConfiguration`), parsed and checked
//! against what fusion-host supports. Every key is known: a key mergekit has that fusion-host
//! does not implement is an error naming it, and so is a misspelt one.

use std::collections::BTreeMap;

use fusion_plugin_api::{DType, Error, Result};
use serde_json::{Map, Value};

use crate::setting::Setting;

/// Parameters by name, as written in one `parameters:` block.
pub type Params = BTreeMap<String, Setting>;

/// One input of an output slice.
#[derive(Clone, Debug)]
pub struct Source {
    pub model: String,
    /// `None` for the `models:` form: the whole model, known once its config is read.
    pub layer_range: Option<(usize, usize)>,
    pub parameters: Params,
}

/// One output slice: layers stacked in order.
#[derive(Clone, Debug)]
pub struct OutSlice {
    pub sources: Vec<Source>,
    pub base_model: Option<String>,
    pub parameters: Params,
}

/// Where the tokenizer comes from (`tokenizer_source`, or `tokenizer.source`).
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerSource {
    Base,
    /// The union of every model's vocabulary (the base model's tokens first).
    Union,
    Model(String),
}

/// Where the embedding row of one token comes from (`tokenizer.tokens.TOKEN.source`).
#[derive(Clone, Debug, PartialEq)]
pub enum TokenEmbedding {
    /// That model's row of the token (after re-mapping to the output vocabulary).
    Model(String),
    /// Zeros (`kind: zero`).
    Zero,
    /// The row of another token of a model, by id or by token (`kind: model_token`).
    ModelToken {
        model: String,
        token_id: Option<usize>,
        token: Option<String>,
    },
}

/// One entry of `tokenizer.tokens`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenConfig {
    pub source: Option<TokenEmbedding>,
    /// Use the source even for models that have the token.
    pub force: bool,
}

/// A parsed mergekit config.
#[derive(Clone, Debug)]
pub struct MergeConfig {
    pub merge_method: String,
    pub base_model: Option<String>,
    /// The dtype inputs are read (and computed) in.
    pub dtype: Option<DType>,
    /// The dtype of the written tensors (default: `dtype`, else the input's).
    pub out_dtype: Option<DType>,
    pub parameters: Params,
    /// The output slices; the `models:` form is one slice of whole models.
    pub slices: Vec<OutSlice>,
    /// Whether the config used `models:` (then the base model joins the sources).
    pub models_form: bool,
    pub tokenizer_source: Option<TokenizerSource>,
    /// `tokenizer.tokens`, in the order written (their tokens are added to the vocabulary).
    pub tokens: Vec<(String, TokenConfig)>,
    /// `tokenizer.pad_to_multiple_of`.
    pub pad_to_multiple_of: Option<usize>,
    /// The `parameters` of the `modules:` entry (between a slice's and the top level's).
    pub module_parameters: Params,
    /// Whether the config used `modules:`.
    pub modules_form: bool,
    /// `chat_template`: `auto` or the template text.
    pub chat_template: Option<String>,
}

fn err(msg: impl std::fmt::Display) -> Error {
    Error::config(format!("mergekit config: {msg}"))
}

fn check_keys(
    map: &Map<String, Value>,
    what: &str,
    known: &[&str],
    unsupported: &[&str],
) -> Result<()> {
    for key in map.keys() {
        if unsupported.contains(&key.as_str()) {
            return Err(err(format!(
                "`{what}{key}` is a mergekit key fusion-host does not support (see docs/mergekit.md)"
            )));
        }
        if !known.contains(&key.as_str()) {
            return Err(err(format!(
                "unknown key `{what}{key}` (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn string(v: &Value, what: &str) -> Result<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        other => Err(err(format!(
            "`{what}` must be a model path or hub id, got {other}"
        ))),
    }
}

/// A model reference: `path_or_hub_id[@revision]`; LoRA adapters (`+lora`) are not supported.
fn model_ref(v: &Value, what: &str) -> Result<String> {
    let s = string(v, what)?;
    if s.contains('+') {
        return Err(err(format!(
            "`{what}`: `{s}` names a LoRA adapter (`model+lora`), which fusion-host does not support; merge the adapter into its model first"
        )));
    }
    Ok(s)
}

fn params(v: Option<&Value>, what: &str) -> Result<Params> {
    let Some(v) = v else {
        return Ok(Params::new());
    };
    if v.is_null() {
        return Ok(Params::new());
    }
    let Value::Object(map) = v else {
        return Err(err(format!("`{what}` must be a mapping, got {v}")));
    };
    map.iter()
        .map(|(k, v)| Ok((k.clone(), Setting::parse(v, &format!("{what}.{k}"))?)))
        .collect()
}

fn dtype(v: Option<&Value>, what: &str) -> Result<Option<DType>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match DType::parse(s) {
            Some(d @ (DType::F32 | DType::F16 | DType::BF16 | DType::F64)) => Ok(Some(d)),
            _ => Err(err(format!(
                "`{what}: {s}` is not a float dtype (float32, float16, bfloat16)"
            ))),
        },
        Some(other) => Err(err(format!("`{what}` must be a dtype name, got {other}"))),
    }
}

fn layer_range(v: &Value, what: &str) -> Result<(usize, usize)> {
    let bad = || {
        err(format!(
            "`{what}` must be two layer indices [start, end), got {v}"
        ))
    };
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let ints: Vec<u64> = items.iter().filter_map(Value::as_u64).collect();
    if items.len() != 2 || ints.len() != 2 {
        return Err(bad());
    }
    if ints[0] >= ints[1] {
        return Err(err(format!(
            "`{what}` [{}, {}] is empty: the end must be past the start",
            ints[0], ints[1]
        )));
    }
    Ok((ints[0] as usize, ints[1] as usize))
}

/// The `models:` or `slices:` of `map` (the top level, or a `modules:` entry named by `at`):
/// the output slices, and whether it was the `models:` form.
fn inputs(top: &Map<String, Value>, at: &str) -> Result<(Vec<OutSlice>, bool)> {
    let models = top.get("models").filter(|v| !v.is_null());
    let slices_v = top.get("slices").filter(|v| !v.is_null());
    let slices = match (models, slices_v) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(err(format!(
                "exactly one of `{at}models` and `{at}slices` must be given"
            )))
        }
        (Some(Value::Array(items)), None) if !items.is_empty() => {
            let mut sources = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let what = format!("{at}models[{i}]");
                let Value::Object(m) = item else {
                    return Err(err(format!(
                        "`{what}` must be a mapping with `model:`, got {item}"
                    )));
                };
                check_keys(m, &format!("{what}."), &["model", "parameters"], &[])?;
                let model = model_ref(
                    m.get("model")
                        .ok_or_else(|| err(format!("`{what}` has no `model`")))?,
                    &format!("{what}.model"),
                )?;
                sources.push(Source {
                    model,
                    layer_range: None,
                    parameters: params(m.get("parameters"), &format!("{what}.parameters"))?,
                });
            }
            vec![OutSlice {
                sources,
                base_model: None,
                parameters: Params::new(),
            }]
        }
        (Some(other), None) => {
            return Err(err(format!(
                "`{at}models` must be a non-empty list, got {other}"
            )))
        }
        (None, Some(Value::Array(items))) if !items.is_empty() => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let what = format!("{at}slices[{i}]");
                let Value::Object(s) = item else {
                    return Err(err(format!("`{what}` must be a mapping with `sources:`")));
                };
                check_keys(
                    s,
                    &format!("{what}."),
                    &["sources", "base_model", "parameters"],
                    &["residual_weight"],
                )?;
                let Some(Value::Array(srcs)) = s.get("sources") else {
                    return Err(err(format!("`{what}.sources` must be a list")));
                };
                if srcs.is_empty() {
                    return Err(err(format!("`{what}.sources` is empty")));
                }
                let mut sources = Vec::new();
                for (j, src) in srcs.iter().enumerate() {
                    let what = format!("{what}.sources[{j}]");
                    let Value::Object(m) = src else {
                        return Err(err(format!("`{what}` must be a mapping")));
                    };
                    check_keys(
                        m,
                        &format!("{what}."),
                        &["model", "layer_range", "parameters"],
                        &[],
                    )?;
                    let model = model_ref(
                        m.get("model")
                            .ok_or_else(|| err(format!("`{what}` has no `model`")))?,
                        &format!("{what}.model"),
                    )?;
                    let range = layer_range(
                        m.get("layer_range")
                            .ok_or_else(|| err(format!("`{what}` has no `layer_range`")))?,
                        &format!("{what}.layer_range"),
                    )?;
                    sources.push(Source {
                        model,
                        layer_range: Some(range),
                        parameters: params(m.get("parameters"), &format!("{what}.parameters"))?,
                    });
                }
                let n = sources[0].layer_range.map(|(a, b)| b - a);
                if let Some(bad) = sources
                    .iter()
                    .find(|s| s.layer_range.map(|(a, b)| b - a) != n)
                {
                    return Err(err(format!(
                        "`{what}`: every source of a slice must have the same number of layers ({} has {:?}, {} has {:?})",
                        sources[0].model,
                        sources[0].layer_range,
                        bad.model,
                        bad.layer_range
                    )));
                }
                out.push(OutSlice {
                    sources,
                    base_model: match s.get("base_model") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(model_ref(v, &format!("{what}.base_model"))?),
                    },
                    parameters: params(s.get("parameters"), &format!("{what}.parameters"))?,
                });
            }
            out
        }
        (None, Some(other)) => {
            return Err(err(format!(
                "`{at}slices` must be a non-empty list, got {other}"
            )))
        }
    };
    Ok((slices, models.is_some()))
}

impl MergeConfig {
    /// Parse a mergekit YAML config.
    pub fn parse(text: &str) -> Result<MergeConfig> {
        let doc: Value =
            serde_norway::from_str(text).map_err(|e| err(format!("not valid YAML: {e}")))?;
        let Value::Object(top) = doc else {
            return Err(err("the config must be a mapping at its top level"));
        };
        check_keys(
            &top,
            "",
            &[
                "merge_method",
                "base_model",
                "models",
                "slices",
                "dtype",
                "out_dtype",
                "parameters",
                "tokenizer_source",
                "tokenizer",
                "chat_template",
                "name",
                "modules",
            ],
            &[],
        )?;
        let merge_method = match top.get("merge_method") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(err(format!("`merge_method` must be a name, got {other}"))),
            None => return Err(err("`merge_method` is missing")),
        };
        let base_model = match top.get("base_model") {
            None | Some(Value::Null) => None,
            Some(v) => Some(model_ref(v, "base_model")?),
        };
        let (slices, models_form, module_parameters, modules_form) = match top
            .get("modules")
            .filter(|v| !v.is_null())
        {
            None => {
                let (slices, models_form) = inputs(&top, "")?;
                (slices, models_form, Params::new(), false)
            }
            Some(modules) => {
                if top.get("models").is_some_and(|v| !v.is_null())
                    || top.get("slices").is_some_and(|v| !v.is_null())
                {
                    return Err(err(
                        "exactly one of `models`, `slices` and `modules` must be given",
                    ));
                }
                let Value::Object(modules) = modules else {
                    return Err(err(format!(
                        "`modules` must be a mapping of module names, got {modules}"
                    )));
                };
                // The decoder architectures fusion-host knows have one module, which mergekit
                // names `default`; the modules of multi-module (vision-language) models are not
                // known here.
                let mut entries = modules.iter();
                let (Some((name, module)), None) = (entries.next(), entries.next()) else {
                    return Err(err(format!(
                        "`modules` names {} modules; the decoder architectures fusion-host knows have one, `default`",
                        modules.len()
                    )));
                };
                if name != "default" {
                    return Err(Error::unsupported(format!(
                        "mergekit config: `modules.{name}`: the decoder architectures fusion-host knows have one module, `default` (multi-module models such as vision-language ones are not supported)"
                    )));
                }
                let at = format!("modules.{name}.");
                let Value::Object(module) = module else {
                    return Err(err(format!("`modules.{name}` must be a mapping")));
                };
                check_keys(module, &at, &["models", "slices", "parameters"], &[])?;
                let (slices, models_form) = inputs(module, &at)?;
                let params = params(module.get("parameters"), &format!("{at}parameters"))?;
                (slices, models_form, params, true)
            }
        };
        let mut tokens = Vec::new();
        let mut pad_to_multiple_of = None;
        let tokenizer_source = match (top.get("tokenizer_source"), top.get("tokenizer")) {
            (Some(a), Some(b)) if !a.is_null() && !b.is_null() => {
                return Err(err("give `tokenizer_source` or `tokenizer`, not both"))
            }
            (Some(v), _) if !v.is_null() => Some(tokenizer_source(v, "tokenizer_source")?),
            (_, Some(Value::Object(t))) => {
                check_keys(
                    t,
                    "tokenizer.",
                    &["source", "tokens", "pad_to_multiple_of"],
                    &[],
                )?;
                match t.get("pad_to_multiple_of") {
                    None | Some(Value::Null) => {}
                    Some(v) => {
                        pad_to_multiple_of =
                            Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                                err(format!(
                                "`tokenizer.pad_to_multiple_of` must be a positive integer, got {v}"
                            ))
                            })? as usize)
                    }
                }
                match t.get("tokens") {
                    None | Some(Value::Null) => {}
                    Some(Value::Object(map)) => {
                        for (token, cfg) in map {
                            tokens.push((token.clone(), token_config(cfg, token)?));
                        }
                    }
                    Some(other) => {
                        return Err(err(format!(
                            "`tokenizer.tokens` must be a mapping of tokens, got {other}"
                        )))
                    }
                }
                // mergekit's `TokenizerConfig.source` defaults to `union`.
                match t.get("source").filter(|v| !v.is_null()) {
                    Some(v) => Some(tokenizer_source(v, "tokenizer.source")?),
                    None => Some(TokenizerSource::Union),
                }
            }
            (_, Some(Value::Null)) | (_, None) => None,
            (_, Some(other)) => {
                return Err(err(format!("`tokenizer` must be a mapping, got {other}")))
            }
        };
        Ok(MergeConfig {
            merge_method,
            base_model,
            dtype: dtype(top.get("dtype"), "dtype")?,
            out_dtype: dtype(top.get("out_dtype"), "out_dtype")?,
            parameters: params(top.get("parameters"), "parameters")?,
            chat_template: match top.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(t)) => Some(chat_template(t)?),
                Some(other) => {
                    return Err(err(format!(
                        "`chat_template` must be a string, got {other}"
                    )))
                }
            },
            models_form,
            module_parameters,
            modules_form,
            slices,
            tokenizer_source,
            tokens,
            pad_to_multiple_of,
        })
    }

    /// Every model the config names, in order of first mention (base model first).
    pub fn referenced_models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self
            .base_model
            .iter()
            .chain(self.slices.iter().flat_map(|s| {
                s.base_model
                    .iter()
                    .chain(s.sources.iter().map(|s| &s.model))
            }));
        for m in all {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        if let Some(TokenizerSource::Model(m)) = &self.tokenizer_source {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }
}

fn tokenizer_source(v: &Value, what: &str) -> Result<TokenizerSource> {
    match v {
        Value::String(s) if s == "base" => Ok(TokenizerSource::Base),
        Value::String(s) if s == "union" => Ok(TokenizerSource::Union),
        other => Ok(TokenizerSource::Model(model_ref(other, what)?)),
    }
}

/// One `tokenizer.tokens` entry: `{source, force}`, the source a model reference,
/// `{kind: zero}` or `{kind: model_token, model, token_id | token}`.
fn token_config(v: &Value, token: &str) -> Result<TokenConfig> {
    let what = format!("tokenizer.tokens.{token}");
    let Value::Object(m) = v else {
        return Err(err(format!(
            "`{what}` must be a mapping with `source`, got {v}"
        )));
    };
    check_keys(m, &format!("{what}."), &["source", "force"], &[])?;
    let force = match m.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(err(format!(
                "`{what}.force` must be true or false, got {other}"
            )))
        }
    };
    let source = match m.get("source") {
        None | Some(Value::Null) => None,
        Some(Value::Object(s)) => {
            let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
            match kind {
                "zero" => {
                    check_keys(s, &format!("{what}.source."), &["kind"], &[])?;
                    Some(TokenEmbedding::Zero)
                }
                "model_token" => {
                    check_keys(
                        s,
                        &format!("{what}.source."),
                        &["kind", "model", "token_id", "token"],
                        &[],
                    )?;
                    let model = model_ref(
                        s.get("model")
                            .ok_or_else(|| err(format!("`{what}.source` has no `model`")))?,
                        &format!("{what}.source.model"),
                    )?;
                    let token_id = match s.get("token_id") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(v.as_u64().ok_or_else(|| {
                            err(format!(
                                "`{what}.source.token_id` must be a token id, got {v}"
                            ))
                        })? as usize),
                    };
                    let token = match s.get("token") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(t)) => Some(t.clone()),
                        Some(v) => {
                            return Err(err(format!(
                                "`{what}.source.token` must be a string, got {v}"
                            )))
                        }
                    };
                    if token_id.is_some() == token.is_some() {
                        return Err(err(format!(
                            "`{what}.source`: give exactly one of `token_id` and `token`"
                        )));
                    }
                    Some(TokenEmbedding::ModelToken {
                        model,
                        token_id,
                        token,
                    })
                }
                other => {
                    return Err(err(format!(
                        "`{what}.source.kind: {other}` is not one of zero, model_token"
                    )))
                }
            }
        }
        Some(other) => Some(TokenEmbedding::Model(model_ref(
            other,
            &format!("{what}.source"),
        )?)),
    };
    Ok(TokenConfig { source, force })
}

/// mergekit's bundled chat templates (`mergekit/_data/chat_templates/NAME.jinja`, shipped here
/// unchanged so that a merge names the same template text), by the name a config gives.
pub const CHAT_TEMPLATES: &[(&str, &str)] = &[
    ("alpaca", include_str!("chat_templates/alpaca.jinja")),
    ("chatml", include_str!("chat_templates/chatml.jinja")),
    ("exaone", include_str!("chat_templates/exaone.jinja")),
    ("llama3", include_str!("chat_templates/llama3.jinja")),
    ("mistral", include_str!("chat_templates/mistral.jinja")),
];

/// `chat_template` as mergekit's `_set_chat_template` reads it: `auto`; a short single-line text
/// without `{` names a bundled template; anything else must look like a Jinja template.
fn chat_template(t: &str) -> Result<String> {
    if t == "auto" {
        return Ok(t.to_string());
    }
    if t.len() < 256 && !t.contains('\n') && !t.contains('{') {
        if let Some((_, text)) = CHAT_TEMPLATES.iter().find(|(name, _)| *name == t) {
            return Ok(text.to_string());
        }
    }
    if t.len() < 20 || !t.contains('{') {
        let names: Vec<&str> = CHAT_TEMPLATES.iter().map(|(n, _)| *n).collect();
        return Err(err(format!(
            "`chat_template: {t}` is neither `auto`, a bundled template ({}) nor a Jinja template",
            names.join(", ")
        )));
    }
    Ok(t.to_string())
}
