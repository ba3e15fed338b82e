//! FusionBench's `CausalLMPool` (`fusion_bench.modelpool.CausalLMPool`) and its v0.1 forebears
//! `AutoModelForCausalLMPool`, `LLamaForCausalLMPool` and `MistralForCausalLMPool`.
//!
//! The pool reads FusionBench's keys:
//!
//! - `models`: names mapped to a path or hub id, or to a mapping with
//!   `pretrained_model_name_or_path` (`_target_: transformers.LlamaForCausalLM.from_pretrained`
//!   entries; their other keys, such as `torch_dtype`, are `from_pretrained` arguments). v0.1
//!   pools give a list of `{name, path}` entries instead.
//! - `model_kwargs`: `from_pretrained` arguments for every model; `torch_dtype` converts each
//!   float tensor to that dtype as it is read (the merge then writes that dtype). Other keys
//!   (`device_map`, `attn_implementation`, ...) concern torch and are ignored. (torch then also
//!   computes the merge in that dtype, op by op; fusion-host's methods compute in f32 and round
//!   once, so bf16/f16 results can differ from FusionBench's in the last bit.) A per-model
//!   `torch_dtype` wins over the pool's; v0.1's pool-level `dtype` applies when neither is set.
//! - `tokenizer`: a path or hub id, or a mapping with `pretrained_model_name_or_path`. v0.1
//!   pools have none and use `_pretrained_`'s (or the first model's).
//! - `enable_lazy_loading`: accepted; fusion-host always reads checkpoints lazily.
//!
//! What a loaded model carries besides its tensors is what `CausalLMPool.save_model` writes
//! beside the weights: the model's `config.json` and `generation_config.json`, and the
//! tokenizer's files (`tokenizer.json`, `tokenizer_config.json`, ...) when the tokenizer folder
//! has them. So a merged model saved by the host is a folder that `AutoModelForCausalLM` and
//! `AutoTokenizer` load.
//!
//! Models are checked as they are opened: a path that does not exist, and a model whose
//! `config.json` names another architecture than the pool's first model, are errors naming the
//! model.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fusion_checkpoint::Checkpoint;
use fusion_plugin_api::prelude::*;
use fusion_plugin_api::{
    bytes_to_f32, f32_to_bytes, parse_torch_dtype, StateDict, TensorInfo, PRETRAINED,
};
use serde_json::Value;

/// The files `PreTrainedTokenizer.save_pretrained` writes (whichever the tokenizer has).
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
];

/// The files `PreTrainedModel.save_pretrained` writes beside the weights.
const MODEL_FILES: &[&str] = &["config.json", "generation_config.json"];

/// One model entry: where it is and the dtype it is read as.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    source: String,
    dtype: Option<DType>,
}

/// `fusion_bench.modelpool.CausalLMPool`: causal language models (Hugging Face checkpoint
/// folders or hub ids), with a tokenizer whose files travel with the merged model.
pub struct CausalLMPool {
    entries: Vec<Entry>,
    /// The tokenizer's source; `None` takes `_pretrained_`'s (or the first model's) files.
    tokenizer: Option<String>,
    /// The architecture of the first model opened, `(model name, architecture)`, to which every
    /// other model is compared.
    architecture: Mutex<Option<(String, String)>>,
    /// Where each source was found: a method opens a model several times (checks, passes), and
    /// a hub id is resolved (listed, maybe downloaded) only once.
    located: Mutex<std::collections::HashMap<String, PathBuf>>,
}

/// A `torch_dtype` value: a dtype name, or `auto`/null for the checkpoint's own.
fn read_dtype(value: Option<&Value>, key: &str) -> Result<Option<DType>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "auto" => Ok(None),
        Some(Value::String(s)) => parse_torch_dtype(s, "modelpool", key).map(Some),
        Some(other) => Err(Error::config(format!(
            "modelpool: `{key}` must be a dtype name such as bfloat16, got {other}"
        ))),
    }
}

/// The source of a tokenizer entry.
fn tokenizer_source(value: &Value) -> Result<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Object(m) => m
            .get("pretrained_model_name_or_path")
            .or_else(|| m.get("path"))
            .and_then(Value::as_str)
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| {
                Error::config(
                    "modelpool: `tokenizer` must give `pretrained_model_name_or_path` \
                     (a path or hub id)",
                )
            }),
        other => Err(Error::config(format!(
            "modelpool: `tokenizer` must be a path, a hub id or a mapping with \
             `pretrained_model_name_or_path`, got {other}"
        ))),
    }
}

impl FromConfig for CausalLMPool {
    fn from_config(config: &Config) -> Result<Self> {
        let v = config.value();
        let target = config.target();
        let kwargs = match v.get("model_kwargs") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                return Err(Error::config(format!(
                    "`{target}`: `model_kwargs` must be a mapping, got {other}"
                )))
            }
        };
        let pool_dtype = match read_dtype(
            kwargs.and_then(|k| k.get("torch_dtype")),
            "model_kwargs.torch_dtype",
        )? {
            Some(d) => Some(d),
            // v0.1: `dtype` applies when `model_kwargs` has no `torch_dtype`.
            None => read_dtype(v.get("dtype"), "dtype")?,
        };
        if let Some(k) = kwargs {
            let ignored: Vec<&str> = k
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "torch_dtype")
                .collect();
            if !ignored.is_empty() {
                tracing::debug!(
                    "{target}: model_kwargs {} concern torch and are ignored",
                    ignored.join(", ")
                );
            }
        }

        let entry = |name: String, value: &Value| -> Result<Entry> {
            let source = fusion_checkpoint::model_source(&name, value)?;
            let own = match value {
                Value::Object(m) => {
                    match read_dtype(m.get("torch_dtype"), &format!("models.{name}.torch_dtype"))? {
                        Some(d) => Some(d),
                        None => {
                            let k = m.get("model_kwargs").and_then(|k| k.get("torch_dtype"));
                            read_dtype(k, &format!("models.{name}.model_kwargs.torch_dtype"))?
                        }
                    }
                }
                _ => None,
            };
            Ok(Entry {
                dtype: own.or(pool_dtype),
                name,
                source,
            })
        };
        let entries = match v.get("models") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| entry(k.clone(), v))
                .collect::<Result<Vec<_>>>()?,
            // v0.1: a list of `{name, path}`; a list of bare sources is named by position.
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let name = v
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| i.to_string());
                    entry(name, v)
                })
                .collect::<Result<Vec<_>>>()?,
            Some(Value::Null) | None => {
                return Err(Error::config(format!("`{target}`: `models` is required")))
            }
            Some(other) => {
                return Err(Error::config(format!(
                    "`{target}`: `models` must be a mapping of names to checkpoints, got {other}"
                )))
            }
        };
        if entries.is_empty() {
            return Err(Error::config(format!("`{target}`: `models` is empty")));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = entries.iter().find(|e| !seen.insert(e.name.as_str())) {
            return Err(Error::config(format!(
                "`{target}`: model `{}` is listed twice",
                dup.name
            )));
        }
        let tokenizer = match v.get("tokenizer") {
            None => None,
            Some(t) => tokenizer_source(t)?,
        };
        let _: Option<bool> = config.get("enable_lazy_loading")?;
        Ok(CausalLMPool {
            entries,
            tokenizer,
            architecture: Mutex::new(None),
            located: Mutex::default(),
        })
    }
}

/// Where a source lives on disk: a local path, or a hub id from the cache (or downloaded into it
/// through the host's hub). A local path that does not exist is a config error naming `what`.
fn locate(source: &str, what: &str) -> Result<PathBuf> {
    let path = Path::new(source);
    if path.exists() {
        return Ok(path.to_owned());
    }
    if source.ends_with(".safetensors") || !fusion_checkpoint::hub::looks_like_hub_id(source) {
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(Error::config(format!(
            "{what}: `{source}` does not exist (no such file or folder; a relative path is read \
             from the working directory, {cwd})"
        )));
    }
    fusion_checkpoint::resolve(source).map_err(|e| {
        Error::config(format!(
            "{what}: `{source}` is neither a local path nor a hub id that could be fetched: {}",
            e.message()
        ))
    })
}

/// A checkpoint's architecture as its `config.json` names it: the first of `architectures`,
/// else `model_type`; `None` without a `config.json`.
fn architecture(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(&path)
        .map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))?;
    let config: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::model(format!("{} is not valid JSON: {e}", path.display())))?;
    let arch = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .map(str::to_string);
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(match (arch, model_type) {
        (Some(a), Some(t)) => Some(format!("{a} (model_type `{t}`)")),
        (Some(a), None) => Some(a),
        (None, Some(t)) => Some(format!("model_type `{t}`")),
        (None, None) => None,
    })
}

/// The files of `dir` among `wanted`, by name.
fn files_in(dir: &Path, wanted: &[&str]) -> BTreeMap<String, PathBuf> {
    wanted
        .iter()
        .map(|f| (f.to_string(), dir.join(f)))
        .filter(|(_, p)| p.is_file())
        .collect()
}

impl CausalLMPool {
    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.iter().find(|e| e.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
            Error::config(format!(
                "the model pool has no model `{name}` (it has: {})",
                known.join(", ")
            ))
        })
    }

    /// Check `name`'s architecture against the first model opened.
    fn check_architecture(&self, name: &str, source: &str, arch: Option<String>) -> Result<()> {
        let Some(arch) = arch else {
            return Ok(());
        };
        let mut seen = self.architecture.lock().unwrap_or_else(|e| e.into_inner());
        match &*seen {
            None => *seen = Some((name.to_string(), arch)),
            Some((first, theirs)) if *theirs != arch => {
                return Err(Error::config(format!(
                    "model `{name}` ({source}) is a {arch}, but model `{first}` is a {theirs}: \
                     the models of a CausalLMPool must share one architecture to be merged"
                )))
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// [`locate`], once per source.
    fn locate(&self, source: &str, what: &str) -> Result<PathBuf> {
        if let Some(p) = self
            .located
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
        {
            return Ok(p.clone());
        }
        let path = locate(source, what)?;
        self.located
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_string(), path.clone());
        Ok(path)
    }

    /// The tokenizer's folder: `tokenizer`, else `_pretrained_`'s or the first model's.
    fn tokenizer_dir(&self) -> Result<Option<PathBuf>> {
        let (source, what) = match &self.tokenizer {
            Some(s) => (s.clone(), "tokenizer".to_string()),
            None => {
                let e = self
                    .entries
                    .iter()
                    .find(|e| e.name == PRETRAINED)
                    .unwrap_or(&self.entries[0]);
                (e.source.clone(), format!("model `{}`", e.name))
            }
        };
        let path = self.locate(&source, &what)?;
        Ok(path.is_dir().then_some(path))
    }
}

impl ModelPool for CausalLMPool {
    fn all_model_names(&self) -> Result<Vec<String>> {
        Ok(self.entries.iter().map(|e| e.name.clone()).collect())
    }

    fn load_model(&self, name: &str) -> Result<Model> {
        let entry = self.entry(name)?;
        let path = self.locate(&entry.source, &format!("model `{name}`"))?;
        let checkpoint = Checkpoint::open(&path, &entry.source)
            .map_err(|e| e.context(format!("model `{name}`")))?;
        let mut files = BTreeMap::new();
        if path.is_dir() {
            self.check_architecture(name, &entry.source, architecture(&path)?)?;
            files.extend(files_in(&path, MODEL_FILES));
        }
        if let Some(dir) = self.tokenizer_dir()? {
            files.extend(files_in(&dir, TOKENIZER_FILES));
        }
        tracing::debug!(model = name, path = %path.display(), dtype = ?entry.dtype, "opened causal LM");
        Ok(Model::new(CausalLM {
            checkpoint,
            dtype: entry.dtype,
            files,
        }))
    }
}

/// A causal LM as the pool hands it out: the checkpoint's tensors (converted to `torch_dtype`
/// when one is set) and the files `save_model` writes.
struct CausalLM {
    checkpoint: Checkpoint,
    dtype: Option<DType>,
    files: BTreeMap<String, PathBuf>,
}

impl CausalLM {
    /// The dtype tensor `info` is read as.
    fn target(&self, info: &TensorInfo) -> Option<DType> {
        self.dtype
            .filter(|d| info.dtype.is_float() && *d != info.dtype)
    }
}

impl StateDict for CausalLM {
    fn names(&self) -> Result<Vec<String>> {
        self.checkpoint.names()
    }

    fn info(&self, name: &str) -> Result<TensorInfo> {
        let mut info = self.checkpoint.info(name)?;
        if let Some(d) = self.target(&info) {
            info.dtype = d;
        }
        Ok(info)
    }

    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let info = self.checkpoint.info(name)?;
        let bytes = self.checkpoint.data(name)?;
        match self.target(&info) {
            None => Ok(bytes),
            Some(DType::F64) => {
                // f64 from f32/f16/bf16 is exact through f32.
                let values = bytes_to_f32(&bytes, info.dtype)?;
                Ok(Cow::Owned(f32_to_bytes(&values, DType::F64)?))
            }
            Some(d) => {
                let values = bytes_to_f32(&bytes, info.dtype)
                    .map_err(|e| e.context(format!("tensor `{name}`")))?;
                Ok(Cow::Owned(f32_to_bytes(&values, d)?))
            }
        }
    }

    fn file_names(&self) -> Result<Vec<String>> {
        Ok(self.files.keys().cloned().collect())
    }

    fn file(&self, name: &str) -> Result<Vec<u8>> {
        let path = self
            .files
            .get(name)
            .ok_or_else(|| Error::model(format!("the model has no file `{name}`")))?;
        std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny(dir: &Path, arch: &str, model_type: &str, values: &[f32]) {
        std::fs::create_dir_all(dir).unwrap();
        // A one-tensor safetensors file: header length, JSON header, data.
        let header = json!({"w": {"dtype": "F32", "shape": [values.len()],
                                  "data_offsets": [0, values.len() * 4]}})
        .to_string();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(dir.join("model.safetensors"), file).unwrap();
        std::fs::write(
            dir.join("config.json"),
            json!({"architectures": [arch], "model_type": model_type}).to_string(),
        )
        .unwrap();
        std::fs::write(dir.join("README.md"), "not carried").unwrap();
    }

    fn pool(value: Value) -> Result<CausalLMPool> {
        CausalLMPool::from_config(&Config::new("fusion_bench.modelpool.CausalLMPool", value)?)
    }

    #[test]
    fn reads_fusionbench_keys_converts_dtype_and_carries_tokenizer_files() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, tok) = (t.path().join("a"), t.path().join("b"), t.path().join("tok"));
        tiny(&a, "LlamaForCausalLM", "llama", &[1.0, 2.5]);
        tiny(&b, "LlamaForCausalLM", "llama", &[3.0, -1.0]);
        std::fs::create_dir_all(&tok).unwrap();
        std::fs::write(tok.join("tokenizer.json"), "{\"tok\": 1}").unwrap();
        std::fs::write(tok.join("tokenizer_config.json"), "{}").unwrap();
        let p = pool(json!({
            "_recursive_": false,
            "models": {
                "_pretrained_": {
                    "_target_": "transformers.LlamaForCausalLM.from_pretrained",
                    "pretrained_model_name_or_path": a.to_str().unwrap(),
                },
                "expert": b.to_str().unwrap(),
            },
            "model_kwargs": {"torch_dtype": "bfloat16", "device_map": "cpu"},
            "tokenizer": {"_target_": "transformers.AutoTokenizer.from_pretrained",
                          "pretrained_model_name_or_path": tok.to_str().unwrap()},
            "enable_lazy_loading": true,
        }))
        .unwrap();
        assert_eq!(p.all_model_names().unwrap(), vec!["_pretrained_", "expert"]);
        let m = p.load_model("expert").unwrap();
        assert_eq!(m.info("w").unwrap().dtype, DType::BF16);
        assert_eq!(m.to_f32("w").unwrap().0, vec![3.0, -1.0]);
        assert_eq!(
            m.file_names().unwrap(),
            vec!["config.json", "tokenizer.json", "tokenizer_config.json"]
        );
        assert_eq!(m.file("tokenizer.json").unwrap(), b"{\"tok\": 1}".to_vec());
    }

    #[test]
    fn v01_list_names_models_and_pool_dtype_applies() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        tiny(&a, "MistralForCausalLM", "mistral", &[0.5]);
        let p = pool(json!({
            "type": "AutoModelForCausalLMPool",
            "models": [{"name": "_pretrained_", "path": a.to_str().unwrap()},
                       {"name": "expert_1", "path": a.to_str().unwrap(),
                        "model_kwargs": {"torch_dtype": "float32"}}],
            "dtype": "float16",
        }))
        .unwrap();
        assert_eq!(
            p.all_model_names().unwrap(),
            vec!["_pretrained_", "expert_1"]
        );
        assert_eq!(
            p.load_model("_pretrained_")
                .unwrap()
                .info("w")
                .unwrap()
                .dtype,
            DType::F16
        );
        assert_eq!(
            p.load_model("expert_1").unwrap().info("w").unwrap().dtype,
            DType::F32
        );
    }

    #[test]
    fn bad_models_are_config_errors_naming_the_model() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        tiny(&a, "LlamaForCausalLM", "llama", &[1.0]);
        tiny(&b, "MistralForCausalLM", "mistral", &[1.0]);
        let missing = t.path().join("nope");
        let p = pool(json!({"models": {
            "_pretrained_": a.to_str().unwrap(),
            "other": b.to_str().unwrap(),
            "gone": missing.to_str().unwrap(),
        }}))
        .unwrap();
        p.load_model("_pretrained_").unwrap();
        let e = p.load_model("other").unwrap_err();
        assert_eq!(e.kind, fusion_plugin_api::ErrorKind::Config);
        assert!(
            e.message().contains("`other`")
                && e.message().contains("MistralForCausalLM")
                && e.message().contains("LlamaForCausalLM"),
            "{e}"
        );
        let e = p.load_model("gone").unwrap_err();
        assert_eq!(e.kind, fusion_plugin_api::ErrorKind::Config);
        assert!(
            e.message().contains("`gone`") && e.message().contains("does not exist"),
            "{e}"
        );
        let e = pool(json!({"models": {"a": "x"}, "model_kwargs": {"torch_dtype": "float8"}}))
            .err()
            .unwrap();
        assert!(e.message().contains("float8"), "{e}");
    }
}
