//! Vocabularies: the output tokenizer of `tokenizer_source` / `tokenizer:` and the re-mapping
//! of the embedding rows of every model to it (mergekit's `tokenizer/build.py` and
//! `tokenizer/embed.py`).
//!
//! The output vocabulary is the base model's (`base`), another model's (a model), or the union
//! of all of them (`union`: the base model's tokens with their ids, then every token another
//! model has that the base lacks, appended), plus the tokens `tokenizer.tokens` names. Every
//! model's embedding rows (`embed_tokens`, `lm_head`) are then gathered into that order before
//! the merge method sees them; a token a model lacks gets a row chosen as mergekit chooses it:
//! the one model that has it, else the base model's, else the mean of those that have it, else
//! zeros, unless `tokenizer.tokens` says otherwise.
//!
//! mergekit numbers the tokens a union appends in the iteration order of a hash map (and of a
//! Python set of models), which changes from run to run; here they are numbered in the order of
//! the models (base first, then as the config names them) and of their ids in each, so the
//! output is the same every run. The rows are mergekit's, token by token.

use std::collections::{BTreeMap, HashMap};

use fusion_plugin_api::{Error, Result};
use serde_json::{Map, Value};

use crate::config::{TokenConfig, TokenEmbedding, TokenizerSource};

/// A tokenizer's vocabulary as `tokenizer.json` gives it (what transformers' `get_vocab()`
/// returns for a fast tokenizer): the model's vocabulary and the added tokens.
#[derive(Clone, Debug)]
pub struct Vocab {
    pub ids: HashMap<String, usize>,
    /// The `added_tokens` entries, by content.
    pub added: HashMap<String, Map<String, Value>>,
}

impl Vocab {
    /// Read `tokenizer.json` of model `model`.
    pub fn parse(bytes: &[u8], model: &str) -> Result<Vocab> {
        let bad = |why: &str| Error::model(format!("model `{model}`: tokenizer.json: {why}"));
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let mut ids = HashMap::new();
        match doc.pointer("/model/vocab") {
            Some(Value::Object(map)) => {
                for (tok, id) in map {
                    let id = id
                        .as_u64()
                        .ok_or_else(|| bad("a vocabulary id is not a number"))?;
                    ids.insert(tok.clone(), id as usize);
                }
            }
            // Unigram: a list of [piece, score], the id the position.
            Some(Value::Array(list)) => {
                for (id, entry) in list.iter().enumerate() {
                    let tok = entry
                        .get(0)
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("a Unigram vocabulary entry is not [piece, score]"))?;
                    ids.insert(tok.to_string(), id);
                }
            }
            _ => return Err(bad("no `model.vocab`")),
        }
        let mut added = HashMap::new();
        if let Some(Value::Array(list)) = doc.get("added_tokens") {
            for entry in list {
                let (Some(content), Some(id)) = (
                    entry.get("content").and_then(Value::as_str),
                    entry.get("id").and_then(Value::as_u64),
                ) else {
                    return Err(bad("an `added_tokens` entry has no `content` or `id`"));
                };
                ids.insert(content.to_string(), id as usize);
                if let Value::Object(m) = entry {
                    added.insert(content.to_string(), m.clone());
                }
            }
        }
        Ok(Vocab { ids, added })
    }

    /// The tokens in the order of their ids.
    fn by_id(&self) -> Vec<(&str, usize)> {
        let mut v: Vec<(&str, usize)> = self.ids.iter().map(|(t, &i)| (t.as_str(), i)).collect();
        v.sort_by_key(|&(t, i)| (i, t));
        v
    }
}

/// One input model as the re-mapping sees it.
pub struct ModelVocab<'a> {
    pub name: &'a str,
    /// Its tokenizer's vocabulary (`None`: it has no `tokenizer.json`; mergekit then assumes the
    /// base model's).
    pub vocab: Option<Vocab>,
    /// `vocab_size` of its config (else its embedding rows): tokens past it have no row.
    pub vocab_size: usize,
}

/// A token the output vocabulary adds to the donor's: its id, the token, and its
/// `added_tokens` entry where a model had it as an added token.
pub type NewToken = (usize, String, Option<Map<String, Value>>);

/// Where the row of one output token comes from when a model does not give its own.
#[derive(Clone, Debug, PartialEq)]
enum RowSource {
    /// The row of this model (index into the models), re-mapped.
    Model(usize),
    /// Row `usize` of this model's original embeddings.
    ModelRow(usize, usize),
    Zero,
}

/// The output vocabulary and each model's map into it.
pub struct Remap {
    /// The output tokens by id.
    pub tokens: Vec<String>,
    /// The rows of the output embeddings (the vocabulary, padded to `pad_to_multiple_of`).
    pub rows: usize,
    /// For each model, output id -> its row.
    perms: Vec<Vec<Option<usize>>>,
    /// `tokenizer.tokens`, by output id: (source, force).
    configs: HashMap<usize, (Option<RowSource>, bool)>,
    /// Tokens of the output vocabulary the donor tokenizer lacks: (id, token, its
    /// `added_tokens` entry where a model had it as an added token).
    pub new_tokens: Vec<NewToken>,
    /// Whether each model's rows are already the output's (then nothing is moved).
    identity: bool,
}

fn err(msg: impl std::fmt::Display) -> Error {
    Error::config(format!("mergekit config: {msg}"))
}

impl Remap {
    /// Build the output vocabulary. `base` indexes the base model (the configured one, else the
    /// first referenced); `donor` the model whose tokenizer `source` names; `position` maps a
    /// model name of a config to its index.
    pub fn build(
        source: &TokenizerSource,
        models: &[ModelVocab<'_>],
        base: usize,
        donor: usize,
        tokens: &[(String, TokenConfig)],
        pad_to_multiple_of: Option<usize>,
        position: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<Remap> {
        let base_vocab = models[base].vocab.as_ref().ok_or_else(|| {
            Error::unsupported(format!(
                "the base model `{}` has no tokenizer.json: fusion-host reads vocabularies from it to re-map embeddings",
                models[base].name
            ))
        })?;
        // Every model's vocabulary, its own or the base's.
        let vocab_of = |k: usize| models[k].vocab.as_ref().unwrap_or(base_vocab);
        let donor_vocab = vocab_of(donor);
        let mut out: Vec<String> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let start = match source {
            TokenizerSource::Model(_) => donor_vocab,
            _ => base_vocab,
        };
        let strip = !matches!(source, TokenizerSource::Model(_));
        for (tok, id) in start.by_id() {
            if strip && id >= models[base].vocab_size {
                return Err(Error::unsupported(format!(
                    "the base model `{}` has token {tok:?} at id {id}, past its vocab_size {}: stripping such tokens from a tokenizer is not supported",
                    models[base].name, models[base].vocab_size
                )));
            }
            if id != out.len() {
                return Err(Error::unsupported(format!(
                    "the tokenizer of `{}` does not number its tokens 0..{} without gaps (id {id} for {tok:?})",
                    models[if strip { base } else { donor }].name,
                    start.ids.len()
                )));
            }
            index.insert(tok.to_string(), id);
            out.push(tok.to_string());
        }
        let mut new_tokens = Vec::new();
        let mut add = |tok: &str,
                       entry: Option<Map<String, Value>>,
                       out: &mut Vec<String>,
                       index: &mut HashMap<String, usize>| {
            if !index.contains_key(tok) {
                let id = out.len();
                index.insert(tok.to_string(), id);
                out.push(tok.to_string());
                new_tokens.push((id, tok.to_string(), entry));
            }
        };
        if *source == TokenizerSource::Union {
            let order = std::iter::once(base).chain((0..models.len()).filter(|&k| k != base));
            for k in order {
                let v = vocab_of(k);
                for (tok, id) in v.by_id() {
                    if id < models[k].vocab_size {
                        add(tok, v.added.get(tok).cloned(), &mut out, &mut index);
                    }
                }
            }
        }
        for (tok, _) in tokens {
            add(tok, None, &mut out, &mut index);
        }
        let n = out.len();
        let rows = match pad_to_multiple_of {
            Some(m) if n % m != 0 => (n / m + 1) * m,
            _ => n,
        };
        let perms: Vec<Vec<Option<usize>>> = (0..models.len())
            .map(|k| {
                let v = vocab_of(k);
                out.iter()
                    .map(|t| v.ids.get(t).copied().filter(|&i| i < models[k].vocab_size))
                    .collect()
            })
            .collect();
        let mut configs = HashMap::new();
        for (tok, cfg) in tokens {
            let id = index[tok];
            let model = |name: &str| {
                position(name).ok_or_else(|| {
                    err(format!(
                        "`tokenizer.tokens.{tok}`: model `{name}` is not one of the merged models"
                    ))
                })
            };
            let source = match &cfg.source {
                None => None,
                Some(TokenEmbedding::Zero) => Some(RowSource::Zero),
                Some(TokenEmbedding::Model(m)) => Some(RowSource::Model(model(m)?)),
                Some(TokenEmbedding::ModelToken {
                    model: m,
                    token_id,
                    token,
                }) => {
                    let k = model(m)?;
                    let row = match (token_id, token) {
                        (Some(i), _) => *i,
                        (None, Some(t)) => {
                            let v = models[k].vocab.as_ref().ok_or_else(|| {
                                err(format!(
                                    "`tokenizer.tokens.{tok}`: model `{m}` has no tokenizer.json to find {t:?} in"
                                ))
                            })?;
                            *v.ids.get(t).ok_or_else(|| {
                                err(format!(
                                    "`tokenizer.tokens.{tok}`: token {t:?} is not in the vocabulary of `{m}`"
                                ))
                            })?
                        }
                        (None, None) => unreachable!("checked when parsed"),
                    };
                    Some(RowSource::ModelRow(k, row))
                }
            };
            configs.insert(id, (source, cfg.force));
        }
        let identity = configs.is_empty()
            && rows == n
            && perms.iter().enumerate().all(|(k, p)| {
                models[k].vocab_size == n && p.iter().enumerate().all(|(i, r)| *r == Some(i))
            });
        Ok(Remap {
            tokens: out,
            rows,
            perms,
            configs,
            new_tokens,
            identity,
        })
    }

    /// Whether re-mapping changes nothing (every model has the output vocabulary, in order).
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// Re-map the embeddings `tensors` (rows × `cols`, row-major) of `models` (indices into the
    /// models given to [`Remap::build`]; `base` is the position of the base model among them)
    /// to the output vocabulary (`PermutedVocabulary.execute`). `round` rounds to the dtype
    /// the inputs were read in, as torch's arithmetic in that dtype does.
    pub fn apply(
        &self,
        tensor: &str,
        tensors: &[Vec<f32>],
        models: &[usize],
        base: Option<usize>,
        cols: usize,
        round: fn(f32) -> f32,
    ) -> Result<Vec<Vec<f32>>> {
        let row = |k: usize, r: usize| &tensors[k][r * cols..(r + 1) * cols];
        let have = |pos: usize, id: usize| self.perms[models[pos]][id];
        let n = self.tokens.len();
        // The row each token lacking in some model gets (`assign_embedding_sources` and
        // `compute_default_embedding`).
        let mut defaults: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        for id in 0..n {
            let cfg = self.configs.get(&id);
            let forced = cfg.is_some_and(|(_, f)| *f);
            let present: Vec<usize> = (0..models.len())
                .filter(|&p| have(p, id).is_some())
                .collect();
            if !forced && present.len() == models.len() {
                continue;
            }
            let source = match cfg {
                Some((Some(s), _)) => s.clone(),
                Some((None, _)) => {
                    return Err(err(format!(
                        "`tokenizer.tokens.{}` gives no `source`",
                        self.tokens[id]
                    )))
                }
                None => match present.len() {
                    0 => {
                        tracing::warn!(token = %self.tokens[id], "token not found in any model: zeros");
                        RowSource::Zero
                    }
                    1 => RowSource::Model(models[present[0]]),
                    _ => match base.filter(|&b| have(b, id).is_some()) {
                        Some(b) => RowSource::Model(models[b]),
                        None => {
                            // The mean of the models that have it, step by step in the dtype.
                            let mut acc = vec![0f32; cols];
                            for &p in &present {
                                let r = row(p, have(p, id).expect("present"));
                                acc.iter_mut().zip(r).for_each(|(a, x)| *a = round(*a + x));
                            }
                            let c = present.len() as f32;
                            acc.iter_mut().for_each(|a| *a = round(*a / c));
                            defaults.insert(id, acc);
                            continue;
                        }
                    },
                },
            };
            let value = match source {
                RowSource::Zero => vec![0f32; cols],
                RowSource::Model(m) => {
                    let pos = models.iter().position(|&k| k == m).ok_or_else(|| {
                        err(format!(
                            "token {:?} takes its `{tensor}` row from a model that is not among this tensor's inputs",
                            self.tokens[id]
                        ))
                    })?;
                    let r = have(pos, id).ok_or_else(|| {
                        err(format!(
                            "token {:?}: its source model does not have it",
                            self.tokens[id]
                        ))
                    })?;
                    row(pos, r).to_vec()
                }
                RowSource::ModelRow(m, r) => {
                    let pos = models.iter().position(|&k| k == m).ok_or_else(|| {
                        err(format!(
                            "token {:?} takes its `{tensor}` row from a model that is not among this tensor's inputs",
                            self.tokens[id]
                        ))
                    })?;
                    if r >= tensors[pos].len() / cols {
                        return Err(err(format!(
                            "token {:?}: row {r} is past the {} rows of `{tensor}`",
                            self.tokens[id],
                            tensors[pos].len() / cols
                        )));
                    }
                    row(pos, r).to_vec()
                }
            };
            defaults.insert(id, value);
        }
        let mut out = Vec::with_capacity(models.len());
        for pos in 0..models.len() {
            let mut x = vec![0f32; self.rows * cols];
            for id in 0..n {
                let forced = self.configs.get(&id).is_some_and(|(_, f)| *f);
                let dst = &mut x[id * cols..(id + 1) * cols];
                match (have(pos, id), defaults.get(&id)) {
                    (Some(r), _) if !forced => dst.copy_from_slice(row(pos, r)),
                    (_, Some(d)) => dst.copy_from_slice(d),
                    _ => {
                        tracing::error!(token = %self.tokens[id], tensor, "no embedding for this token: zeros")
                    }
                }
            }
            if self.rows > n {
                // Padding rows: the mean of the vocabulary's rows.
                let mut mean = vec![0f64; cols];
                for r in x[..n * cols].chunks_exact(cols) {
                    mean.iter_mut().zip(r).for_each(|(m, v)| *m += *v as f64);
                }
                let mean: Vec<f32> = mean.iter().map(|m| round((m / n as f64) as f32)).collect();
                for r in x[n * cols..].chunks_exact_mut(cols) {
                    r.copy_from_slice(&mean);
                }
            }
            out.push(x);
        }
        Ok(out)
    }

    /// The donor's tokenizer files with the new tokens added: `tokenizer.json` (`added_tokens`),
    /// `tokenizer_config.json` (`added_tokens_decoder`) and `added_tokens.json` where present.
    pub fn extend_files(&self, files: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
        if self.new_tokens.is_empty() {
            return Ok(());
        }
        let entry = |id: usize, tok: &str, from: &Option<Map<String, Value>>| {
            let mut e = from.clone().unwrap_or_else(|| {
                // transformers' `add_tokens(str)`: a plain, normalised token.
                let mut m = Map::new();
                m.insert("single_word".into(), Value::Bool(false));
                m.insert("lstrip".into(), Value::Bool(false));
                m.insert("rstrip".into(), Value::Bool(false));
                m.insert("normalized".into(), Value::Bool(true));
                m.insert("special".into(), Value::Bool(false));
                m
            });
            e.insert("id".into(), Value::from(id));
            e.insert("content".into(), Value::from(tok));
            e
        };
        let parse = |name: &str, bytes: &[u8]| -> Result<Map<String, Value>> {
            match serde_json::from_slice(bytes) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(Error::model(format!(
                    "the tokenizer's {name} is not a JSON object"
                ))),
            }
        };
        if let Some(bytes) = files.get("tokenizer.json") {
            let mut doc = parse("tokenizer.json", bytes)?;
            let list = doc
                .entry("added_tokens")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list {
                for (id, tok, from) in &self.new_tokens {
                    list.push(Value::Object(entry(*id, tok, from)));
                }
            }
            files.insert(
                "tokenizer.json".into(),
                serde_json::to_vec_pretty(&Value::Object(doc)).expect("JSON"),
            );
        }
        if let Some(bytes) = files.get("tokenizer_config.json") {
            let mut doc = parse("tokenizer_config.json", bytes)?;
            let decoder = doc
                .entry("added_tokens_decoder")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(decoder) = decoder {
                for (id, tok, from) in &self.new_tokens {
                    let mut e = entry(*id, tok, from);
                    e.remove("id");
                    decoder.insert(id.to_string(), Value::Object(e));
                }
            }
            files.insert(
                "tokenizer_config.json".into(),
                serde_json::to_vec_pretty(&Value::Object(doc)).expect("JSON"),
            );
        }
        if let Some(bytes) = files.get("added_tokens.json") {
            let mut doc = parse("added_tokens.json", bytes)?;
            for (id, tok, _) in &self.new_tokens {
                doc.insert(tok.clone(), Value::from(*id));
            }
            files.insert(
                "added_tokens.json".into(),
                serde_json::to_vec_pretty(&Value::Object(doc)).expect("JSON"),
            );
        }
        Ok(())
    }
}
