//! # fusion-mergekit: mergekit YAML configs, merged on the CPU as a lazy model
//!
//! [`Merge::from_yaml`] reads a mergekit config (`mergekit-yaml`'s input: `models:` or
//! `slices:`, `base_model`, `merge_method`, `parameters` with gradients and filters, `dtype`,
//! `out_dtype`, `tokenizer_source`), opens the models it names (local folders relative to the
//! working directory, or hub ids through the host's hub), plans every output tensor as mergekit's
//! `MergePlanner` does (`mergekit/plan.py`), and checks everything it can before any tensor is
//! computed: the method and its parameters, the architectures, the layer ranges, the tensor
//! names and shapes. [`Merge::model`] is then a lazy [`Model`]: each output tensor is merged
//! when it is read, from the same tensors of the inputs, so saving it streams one tensor at a
//! time. It carries the output `config.json` (layer count of the slices, dtype), the tokenizer
//! files mergekit copies, and the config it ran (`mergekit_config.yml`).
//!
//! The math is in [`methods`]; see `docs/mergekit.md` for what is supported.
//!
//! ```no_run
//! let merge = fusion_mergekit::Merge::from_yaml(
//!     "merge_method: linear\nmodels:\n- model: a\n  parameters: {weight: 0.5}\n- model: b\n  parameters: {weight: 0.5}\n",
//!     &fusion_mergekit::Options::default(),
//! )?;
//! let model = merge.model(); // save it with the host's checkpoint writer
//! # Ok::<(), fusion_plugin_api::Error>(())
//! ```

pub mod blocks;
pub mod config;
pub mod cpu;
mod device;
pub mod methods;
pub mod setting;
pub mod vocab;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use fusion_checkpoint::Checkpoint;
use fusion_plugin_api::{DType, Error, Model, Result, StateDict, TensorInfo};
use serde_json::Value;

use config::{MergeConfig, OutSlice, TokenizerSource};
use methods::{BaseUse, Spec, Values};
use setting::Scalar;

/// Options of a run (mergekit-yaml's command-line options that change the result).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Seed of the random draws of DARE and DELLA (`--random-seed`).
    pub random_seed: u64,
    /// Merge models of different architectures (`--allow-crimes`).
    pub allow_crimes: bool,
}

/// Decoder families whose checkpoints use `model.embed_tokens`, `model.layers.N.*`,
/// `model.norm` and `lm_head` with the layer count in `num_hidden_layers`.
const DECODERS: &[&str] = &[
    "LlamaForCausalLM",
    "LLaMaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Phi3ForCausalLM",
    "OlmoForCausalLM",
    "Olmo2ForCausalLM",
    "GraniteForCausalLM",
];
const EMBED: &str = "model.embed_tokens.weight";
const NORM: &str = "model.norm.weight";
const HEAD: &str = "lm_head.weight";
const LAYERS: &str = "model.layers.";

/// The files mergekit copies from the tokenizer's donor model (`merge.py: _copy_tokenizer`).
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
    "chat_template.json",
    "vocab.json",
];

fn err(msg: impl std::fmt::Display) -> Error {
    Error::config(format!("mergekit config: {msg}"))
}

/// One input model.
struct Input {
    name: String,
    checkpoint: Checkpoint,
    config: serde_json::Map<String, Value>,
    architecture: String,
    layers: usize,
}

impl Input {
    fn open(name: &str) -> Result<Input> {
        let path =
            fusion_checkpoint::resolve(name).map_err(|e| e.context(format!("model `{name}`")))?;
        let checkpoint = Checkpoint::open(&path, name)?;
        let text = checkpoint
            .file("config.json")
            .map_err(|_| Error::model(format!("model `{name}` has no config.json")))?;
        let config = match serde_json::from_slice::<Value>(&text) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Error::model(format!(
                    "model `{name}`: config.json is not a JSON object"
                )))
            }
        };
        let architecture = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::model(format!(
                    "model `{name}`: config.json names no `architectures`"
                ))
            })?
            .to_string();
        if !DECODERS.contains(&architecture.as_str()) {
            return Err(Error::unsupported(format!(
                "model `{name}`: architecture `{architecture}` is not one fusion-host's mergekit knows (known: {})",
                DECODERS.join(", ")
            )));
        }
        let layers = config
            .get("num_hidden_layers")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                Error::model(format!(
                    "model `{name}`: config.json has no `num_hidden_layers`"
                ))
            })? as usize;
        Ok(Input {
            name: name.to_string(),
            checkpoint,
            config,
            architecture,
            layers,
        })
    }

    fn has(&self, tensor: &str) -> bool {
        self.checkpoint.info(tensor).is_ok()
    }
}

/// One output tensor: where its inputs come from and its evaluated parameters.
struct Planned {
    name: String,
    info: TensorInfo,
    /// (input model, tensor name in it), in source order.
    inputs: Vec<(usize, String)>,
    base: Option<usize>,
    global: Values,
    per_model: Vec<Values>,
    random_keys: Vec<u64>,
    /// Whether its inputs are re-mapped to the output vocabulary first (`embed_tokens`,
    /// `lm_head` under a `tokenizer_source` whose vocabulary differs from a model's).
    vocab: bool,
}

impl Planned {
    /// A job with no tensors (for the parameter helpers of `methods`), computing in `work`.
    fn job(&self, work: Option<DType>) -> methods::Job<'_> {
        methods::Job {
            name: &self.name,
            shape: &self.info.shape,
            tensors: Vec::new(),
            base: self.base,
            global: &self.global,
            per_model: &self.per_model,
            random_keys: &self.random_keys,
            work,
        }
    }
}

/// A planned merge.
pub struct Merge {
    spec: Spec,
    compute_dtype: Option<DType>,
    models: Vec<Input>,
    tensors: Vec<Planned>,
    files: BTreeMap<String, Vec<u8>>,
    by_name: std::collections::HashMap<String, usize>,
    remap: Option<vocab::Remap>,
    /// The compute device the tensors are merged on, if one is lent (`with_device`).
    device: Option<device::Device>,
    /// The number of layers of the output.
    pub layers: usize,
}

/// `format!` with a stable key of a model and a tensor for the random draws.
fn random_key(seed: u64, model: &str, tensor: &str) -> u64 {
    // FNV-1a over the names, mixed with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in model.bytes().chain([0u8]).chain(tensor.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where a parameter is looked up for one tensor (mergekit's `ConfigReader`).
struct Reader<'a> {
    config: &'a MergeConfig,
    slice: &'a OutSlice,
    t: f64,
}

impl Reader<'_> {
    fn lookup(&self, name: &str, model: Option<&str>, tensor: &str) -> Option<Scalar> {
        if let Some(model) = model {
            for s in &self.slice.sources {
                if s.model == model {
                    if let Some(v) = s
                        .parameters
                        .get(name)
                        .and_then(|p| p.evaluate(tensor, self.t))
                    {
                        return Some(v);
                    }
                }
            }
        }
        [
            &self.slice.parameters,
            &self.config.module_parameters,
            &self.config.parameters,
        ]
        .iter()
        .find_map(|p| p.get(name).and_then(|s| s.evaluate(tensor, self.t)))
    }
}

impl Merge {
    /// Parse, check and plan a mergekit config.
    pub fn from_yaml(text: &str, options: &Options) -> Result<Merge> {
        let config = MergeConfig::parse(text)?;
        let spec = methods::spec(&config.merge_method).ok_or_else(|| {
            err(format!(
                "unknown merge_method `{}` (known: {})",
                config.merge_method,
                methods::METHODS.join(", ")
            ))
        })?;
        check_parameter_names(&config, &spec)?;

        // Open every model once.
        let names = config.referenced_models();
        let models: Vec<Input> = names
            .iter()
            .map(|n| Input::open(n))
            .collect::<Result<_>>()?;
        let index = |name: &str| names.iter().position(|n| n == name).expect("referenced");
        if !options.allow_crimes {
            if let Some(other) = models
                .iter()
                .find(|m| m.architecture != models[0].architecture)
            {
                return Err(err(format!(
                    "models of different architectures: `{}` is {} but `{}` is {} (pass --allow-crimes to merge them anyway)",
                    models[0].name, models[0].architecture, other.name, other.architecture
                )));
            }
        }

        // Normalise to slices with layer ranges (`normalize_config`).
        let mut slices = config.slices.clone();
        if config.models_form {
            // `models:` (also inside `modules:`): one slice of whole models, the base model
            // joining them.
            let s = &mut slices[0];
            for src in &mut s.sources {
                src.layer_range = Some((0, models[index(&src.model)].layers));
            }
            if let Some(base) = &config.base_model {
                if !s.sources.iter().any(|src| &src.model == base) {
                    s.sources.push(config::Source {
                        model: base.clone(),
                        layer_range: Some((0, models[index(base)].layers)),
                        parameters: Default::default(),
                    });
                }
            }
        }
        for (k, s) in slices.iter().enumerate() {
            let first = &s.sources[0];
            if let Some(src) = s.sources.iter().find(|src| {
                let len = |r: Option<(usize, usize)>| r.map(|(a, b)| b - a);
                len(src.layer_range) != len(first.layer_range)
            }) {
                return Err(err(format!(
                    "models of different depths cannot be merged layer by layer: `{}` has {} layers but `{}` has {} (use `slices:` with equal layer ranges)",
                    first.model,
                    first.layer_range.map_or(0, |(a, b)| b - a),
                    src.model,
                    src.layer_range.map_or(0, |(a, b)| b - a)
                )));
            }
            for src in &s.sources {
                let (a, b) = src.layer_range.expect("set above");
                let m = &models[index(&src.model)];
                if b > m.layers {
                    return Err(err(format!(
                        "slices[{k}]: layer_range [{a}, {b}] of model `{}` is past its {} layers",
                        src.model, m.layers
                    )));
                }
            }
            let base = s.base_model.as_ref().or(config.base_model.as_ref());
            match (spec.base, base) {
                (BaseUse::Required, None) => {
                    return Err(err(format!(
                        "merge_method `{}` needs a `base_model`",
                        spec.name
                    )))
                }
                (BaseUse::Required, Some(b)) if !s.sources.iter().any(|src| &src.model == b) => {
                    return Err(err(format!(
                        "merge_method `{}` needs its base model `{b}` among the sources of slices[{k}]",
                        spec.name
                    )))
                }
                _ => {}
            }
        }

        let mut plan = Planner {
            config: &config,
            spec: &spec,
            models: &models,
            names: &names,
            seed: options.random_seed,
            out: Vec::new(),
        };
        let first = &slices[0];
        let last = &slices[slices.len() - 1];
        plan.tensor(EMBED, first, 0.0, &|_| EMBED.to_string(), true)?;
        let mut out_layer = 0usize;
        let all_names: Vec<Vec<String>> = models
            .iter()
            .map(|m| m.checkpoint.names())
            .collect::<Result<_>>()?;
        for s in &slices {
            let (a, b) = s.sources[0].layer_range.expect("set");
            let n = b - a;
            let lead = &models[index(&s.sources[0].model)];
            let lead_names = &all_names[index(&s.sources[0].model)];
            for offset in 0..n {
                let t = if n > 1 {
                    offset as f64 / (n - 1) as f64
                } else {
                    1.0
                };
                let prefix = format!("{LAYERS}{}.", a + offset);
                let suffixes: Vec<String> = lead_names
                    .iter()
                    .filter_map(|nm| nm.strip_prefix(&prefix).map(str::to_string))
                    .collect();
                if suffixes.is_empty() {
                    return Err(Error::model(format!(
                        "model `{}` has no tensors of layer {}",
                        lead.name,
                        a + offset
                    )));
                }
                for suffix in suffixes {
                    let out_name = format!("{LAYERS}{out_layer}.{suffix}");
                    let input_name = |k: usize| {
                        let (start, _) = s.sources[k].layer_range.expect("set");
                        format!("{LAYERS}{}.{suffix}", start + offset)
                    };
                    plan.tensor(&out_name, s, t, &input_name, false)?;
                }
                out_layer += 1;
            }
        }
        plan.tensor(NORM, last, 0.0, &|_| NORM.to_string(), false)?;
        // lm_head is optional (tied embeddings); a model without it gives its embeddings.
        if last
            .sources
            .iter()
            .any(|s| models[index(&s.model)].has(HEAD))
        {
            let input = |k: usize| {
                if models[index(&last.sources[k].model)].has(HEAD) {
                    HEAD.to_string()
                } else {
                    EMBED.to_string()
                }
            };
            plan.tensor(HEAD, last, 0.0, &input, true)?;
        }
        let mut tensors = plan.out;
        let out_dtype = config.out_dtype.or(config.dtype);
        if let Some(d) = out_dtype {
            tensors.iter_mut().for_each(|t| t.info.dtype = d);
        }

        // The carried files.
        let donor = config.base_model.clone().unwrap_or_else(|| {
            names
                .iter()
                .find(|n| config.base_model.as_ref() != Some(n))
                .cloned()
                .unwrap_or_default()
        });
        let donor = &models[index(&donor)];
        let mut out_config = donor.config.clone();
        out_config.insert("num_hidden_layers".into(), Value::from(out_layer));
        if let Some(d) = out_dtype {
            let name = match d {
                DType::F16 => "float16",
                DType::BF16 => "bfloat16",
                DType::F64 => "float64",
                _ => "float32",
            };
            let keys: Vec<&str> = ["dtype", "torch_dtype"]
                .into_iter()
                .filter(|k| out_config.contains_key(*k))
                .collect();
            for k in if keys.is_empty() {
                vec!["torch_dtype"]
            } else {
                keys
            } {
                out_config.insert(k.into(), Value::from(name));
            }
        }
        let mut files = BTreeMap::new();
        files.insert(
            "config.json".to_string(),
            serde_json::to_vec_pretty(&Value::Object(out_config)).expect("JSON"),
        );
        // The tokenizer: the files of its donor, and the output vocabulary every model's
        // embedding rows are re-mapped to (`tokenizer_source` / `tokenizer:`).
        let base_index = config.base_model.as_deref().map_or(0, &index);
        let tokenizer_donor = match &config.tokenizer_source {
            None => donor,
            Some(TokenizerSource::Union) => &models[base_index],
            Some(TokenizerSource::Base) => {
                let base = config
                    .base_model
                    .as_ref()
                    .ok_or_else(|| err("`tokenizer_source: base` needs a `base_model`"))?;
                &models[index(base)]
            }
            Some(TokenizerSource::Model(m)) => &models[index(m)],
        };
        let carried = tokenizer_donor.checkpoint.file_names()?;
        let has = |f: &str| carried.iter().any(|c| c == f);
        let has_tokenizer =
            has("tokenizer_config.json") && (has("tokenizer.json") || has("tokenizer.model"));
        if has_tokenizer {
            for f in TOKENIZER_FILES.iter().filter(|f| has(f)) {
                files.insert(f.to_string(), tokenizer_donor.checkpoint.file(f)?);
            }
        }
        let mut remap = None;
        if let Some(source) = &config.tokenizer_source {
            if !has_tokenizer {
                return Err(err(format!(
                    "the tokenizer source `{}` has no tokenizer files (tokenizer_config.json with tokenizer.json or tokenizer.model)",
                    tokenizer_donor.name
                )));
            }
            let r = plan_vocabulary(
                &config,
                source,
                &models,
                base_index,
                tokenizer_donor,
                &index,
            )?;
            if let Some(r) = &r {
                r.extend_files(&mut files)?;
                let mut out_config: serde_json::Map<String, Value> =
                    serde_json::from_slice(&files["config.json"]).expect("written above");
                out_config.insert("vocab_size".into(), Value::from(r.rows));
                files.insert(
                    "config.json".to_string(),
                    serde_json::to_vec_pretty(&Value::Object(out_config)).expect("JSON"),
                );
                let cols = tensors
                    .iter()
                    .find(|t| t.name == EMBED)
                    .map(|t| t.info.shape[1])
                    .unwrap_or(0);
                for t in tensors
                    .iter_mut()
                    .filter(|t| t.name == EMBED || t.name == HEAD)
                {
                    for (m, name) in &t.inputs {
                        let c = models[*m].checkpoint.info(name)?.shape[1];
                        if c != cols {
                            return Err(Error::model(format!(
                                "`{}` of model `{}` has {c} columns but the others have {cols}: embeddings of different widths cannot be re-mapped to one vocabulary",
                                name, models[*m].name
                            )));
                        }
                    }
                    t.info.shape = vec![r.rows, cols];
                    t.vocab = !r.is_identity();
                }
                tracing::info!(
                    tokens = r.tokens.len(),
                    rows = r.rows,
                    added = r.new_tokens.len(),
                    "output vocabulary"
                );
            }
            remap = r;
        }
        if let Some(template) = &config.chat_template {
            set_chat_template(&mut files, template, &models, has_tokenizer)?;
        }
        files.insert("mergekit_config.yml".to_string(), text.as_bytes().to_vec());

        tracing::info!(
            method = spec.name,
            models = models.len(),
            tensors = tensors.len(),
            layers = out_layer,
            "mergekit plan"
        );
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Merge {
            spec,
            compute_dtype: config.dtype,
            models,
            tensors,
            files,
            by_name,
            remap,
            device: None,
            layers: out_layer,
        })
    }

    /// The merged model, computed tensor by tensor as it is read.
    pub fn model(self) -> Model {
        Model::new(Lazy(Arc::new(self)))
    }

    /// Merge on `compute` (a wgpu device): the methods with device kernels run there, tensor
    /// by tensor; the others, and the tensors the kernels do not cover, on the CPU (the log
    /// says which). See `device.rs`.
    pub fn with_device(mut self, compute: Arc<dyn fusion_plugin_api::Compute>) -> Merge {
        let dev = device::Device::new(compute, self.spec.method);
        if device::supports(self.spec.method) {
            tracing::info!(method = self.spec.name, device = %dev.name(), "merging on the device");
        } else {
            tracing::warn!(
                method = self.spec.name,
                device = %dev.name(),
                "merge_method `{}` has no device kernels: it is merged on the CPU",
                self.spec.name
            );
        }
        self.device = Some(dev);
        self
    }

    /// Whether `merge_method` has a device path (some tensors may still fall back to the CPU).
    pub fn device_method(&self) -> bool {
        device::supports(self.spec.method)
    }

    /// The method's name.
    pub fn method(&self) -> &'static str {
        self.spec.name
    }

    /// A linear merge straight from the input bytes to the output bytes, chunk by chunk on all
    /// cores, with no whole-tensor f32 copies: the common case of a plain weighted average
    /// (inputs of the output's shape, read as they are stored: no `dtype` rounding, no
    /// vocabulary re-mapping). `None` when the general path must do it. The same arithmetic as
    /// `methods::linear`, so the same bytes.
    fn stream_linear(&self, t: &Planned) -> Result<Option<Vec<u8>>> {
        if self.spec.method != methods::Method::Linear || t.vocab {
            return Ok(None);
        }
        let mut datas = Vec::with_capacity(t.inputs.len());
        for (m, name) in &t.inputs {
            let ck = &self.models[*m].checkpoint;
            let info = ck.info(name)?;
            let plain = matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16);
            let rounds = matches!(self.compute_dtype, Some(DType::F16 | DType::BF16))
                && self.compute_dtype != Some(info.dtype);
            if info.shape != t.info.shape || !plain || rounds {
                return Ok(None);
            }
            datas.push((ck.data(name)?, info.dtype));
        }
        let job = t.job(None);
        let (w, divisor) =
            methods::linear_weights(&job, datas.len()).map_err(|e| e.context(self.spec.name))?;
        let n: usize = t.info.shape.iter().product();
        let out_dtype = t.info.dtype;
        let (osize, chunk) = (out_dtype.size(), cpu::CHUNK);
        let mut out = vec![0u8; n * osize];
        use rayon::prelude::*;
        out.par_chunks_mut(chunk * osize)
            .enumerate()
            .for_each(|(c, o)| {
                let len = o.len() / osize;
                let (mut acc, mut x) = (vec![0f32; len], vec![0f32; len]);
                for ((bytes, dtype), &wi) in datas.iter().zip(&w) {
                    let s = dtype.size();
                    cpu::decode_into(&bytes[c * chunk * s..(c * chunk + len) * s], *dtype, &mut x);
                    cpu::fused_axpy(&mut acc, &x, wi);
                }
                if let Some(total) = divisor {
                    acc.iter_mut().for_each(|v| *v /= total);
                }
                cpu::encode_into(&acc, out_dtype, o);
            });
        Ok(Some(out))
    }

    fn compute(&self, t: &Planned) -> Result<Vec<f32>> {
        let shape = &t.info.shape;
        let mut inputs = Vec::with_capacity(t.inputs.len());
        for (m, name) in &t.inputs {
            let ck = &self.models[*m].checkpoint;
            let info = ck.info(name)?;
            let mut x = cpu::decode(&ck.data(name)?, info.dtype).map_err(|e| {
                e.context(format!("model `{}`, tensor `{name}`", self.models[*m].name))
            })?;
            if info.shape != *shape && !t.vocab {
                // An embedding with more rows or columns: its common submatrix (rectify_embed_sizes).
                let cols = info.shape[1];
                x = (0..shape[0])
                    .flat_map(|r| x[r * cols..r * cols + shape[1]].to_vec())
                    .collect();
            }
            if let Some(d @ (DType::F16 | DType::BF16)) = self.compute_dtype {
                // Read in the config's dtype, as mergekit loads it (nothing to do when the
                // checkpoint is in it already).
                if info.dtype != d {
                    cpu::round_to(&mut x, d);
                }
            }
            inputs.push(x);
        }
        if let (true, Some(remap)) = (t.vocab, &self.remap) {
            let models: Vec<usize> = t.inputs.iter().map(|(m, _)| *m).collect();
            let round = methods::rounder(
                self.compute_dtype.or(Some(
                    self.models[models[0]]
                        .checkpoint
                        .info(&t.inputs[0].1)?
                        .dtype,
                )),
            );
            inputs = remap.apply(&t.name, &inputs, &models, t.base, shape[1], round)?;
        }
        let job = methods::Job {
            name: &t.name,
            shape,
            tensors: inputs,
            base: t.base,
            global: &t.global,
            per_model: &t.per_model,
            random_keys: &t.random_keys,
            work: self
                .compute_dtype
                .filter(|d| matches!(d, DType::F16 | DType::BF16)),
        };
        methods::merge(self.spec.method, &job).map_err(|e| e.context(self.spec.name))
    }
}

struct Planner<'a> {
    config: &'a MergeConfig,
    spec: &'a Spec,
    models: &'a [Input],
    names: &'a [String],
    seed: u64,
    out: Vec<Planned>,
}

impl Planner<'_> {
    /// Plan output tensor `out_name` of slice `s` at layer position `t`; `input(k)` is its name
    /// in source `k`.
    fn tensor(
        &mut self,
        out_name: &str,
        s: &OutSlice,
        t: f64,
        input: &dyn Fn(usize) -> String,
        is_embed: bool,
    ) -> Result<()> {
        let reader = Reader {
            config: self.config,
            slice: s,
            t,
        };
        let base_name = s.base_model.as_ref().or(self.config.base_model.as_ref());
        let mut inputs = Vec::new();
        let mut infos = Vec::new();
        let mut per_model = Vec::new();
        let mut keys = Vec::new();
        let mut base = None;
        for (k, src) in s.sources.iter().enumerate() {
            let m = self
                .names
                .iter()
                .position(|n| n == &src.model)
                .expect("referenced");
            let name = input(k);
            let info = self.models[m].checkpoint.info(&name).map_err(|_| {
                Error::model(format!(
                    "model `{}` has no tensor `{name}` (for `{out_name}`)",
                    src.model
                ))
            })?;
            if !info.dtype.is_float() {
                return Err(Error::model(format!(
                    "model `{}`: tensor `{name}` is {}, not a float tensor",
                    src.model, info.dtype
                )));
            }
            let is_base = base_name == Some(&src.model);
            if is_base && base.is_none() {
                base = Some(k);
            }
            let mut values = Values::new();
            for p in &self.spec.tensor {
                let v = reader.lookup(p.name, Some(&src.model), &name).or(p.default);
                let optional_here = is_base && self.spec.base != BaseUse::Unused;
                if v.is_none() && p.required && !optional_here {
                    return Err(err(format!(
                        "merge_method `{}` needs parameter `{}` for model `{}` (tensor `{name}`)",
                        self.spec.name, p.name, src.model
                    )));
                }
                values.insert(p.name, v);
            }
            per_model.push(values);
            keys.push(random_key(self.seed, &src.model, out_name));
            inputs.push((m, name));
            infos.push(info);
        }
        let mut global = Values::new();
        for p in &self.spec.global {
            let v = reader.lookup(p.name, None, out_name).or(p.default);
            if v.is_none() && p.required {
                return Err(err(format!(
                    "merge_method `{}` needs parameter `{}` (missing for tensor `{out_name}`)",
                    self.spec.name, p.name
                )));
            }
            global.insert(p.name, v);
        }
        let mut shape = infos[0].shape.clone();
        if infos.iter().any(|i| i.shape != shape) {
            if is_embed && infos.iter().all(|i| i.shape.len() == 2) {
                shape = vec![
                    infos.iter().map(|i| i.shape[0]).min().expect("inputs"),
                    infos.iter().map(|i| i.shape[1]).min().expect("inputs"),
                ];
                if self.config.tokenizer_source.is_none() {
                    tracing::warn!(
                        tensor = out_name,
                        ?shape,
                        "embedding sizes differ: using their common submatrix"
                    );
                }
            } else {
                let other = infos
                    .iter()
                    .position(|i| i.shape != shape)
                    .expect("differs");
                return Err(Error::model(format!(
                    "tensor `{out_name}`: `{}` has shape {:?} but `{}` has {:?}",
                    s.sources[0].model, shape, s.sources[other].model, infos[other].shape
                )));
            }
        }
        self.out.push(Planned {
            name: out_name.to_string(),
            info: TensorInfo {
                dtype: infos[0].dtype,
                shape,
            },
            inputs,
            base,
            global,
            per_model,
            random_keys: keys,
            vocab: false,
        });
        Ok(())
    }
}

/// The output vocabulary of `source` and every model's map into it. `None` when the
/// vocabularies cannot be read (no `tokenizer.json`, e.g. a SentencePiece `tokenizer.model`
/// only) but every model has the same embedding rows: the tokenizer files are then copied and
/// the rows taken as they are.
fn plan_vocabulary(
    config: &MergeConfig,
    source: &TokenizerSource,
    models: &[Input],
    base: usize,
    donor: &Input,
    index: &dyn Fn(&str) -> usize,
) -> Result<Option<vocab::Remap>> {
    let vocabs: Vec<vocab::ModelVocab<'_>> = models
        .iter()
        .map(|m| {
            let vocab = match m.checkpoint.file("tokenizer.json") {
                Ok(bytes) => match vocab::Vocab::parse(&bytes, &m.name) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::warn!("{e}: its vocabulary is taken to be the base model's");
                        None
                    }
                },
                Err(_) => None,
            };
            let rows = m.checkpoint.info(EMBED).map_or(0, |i| i.shape[0]);
            let vocab_size = m
                .config
                .get("vocab_size")
                .and_then(Value::as_u64)
                .map_or(rows, |v| v as usize)
                .min(rows);
            vocab::ModelVocab {
                name: &m.name,
                vocab,
                vocab_size,
            }
        })
        .collect();
    let donor_index = index(&donor.name);
    let readable = vocabs[base].vocab.is_some()
        && (!matches!(source, TokenizerSource::Model(_)) || vocabs[donor_index].vocab.is_some());
    if !readable {
        let rows = donor.checkpoint.info(EMBED)?.shape[0];
        if let Some(m) = models.iter().find(|m| {
            m.checkpoint
                .info(EMBED)
                .map_or(true, |i| i.shape[0] != rows)
        }) {
            return Err(Error::unsupported(format!(
                "model `{}` has other embedding rows than the tokenizer source `{}` ({rows}), and re-mapping embeddings to another vocabulary needs the tokenizer.json of `{}`, which it lacks",
                m.name,
                donor.name,
                if vocabs[base].vocab.is_none() { &models[base].name } else { &donor.name }
            )));
        }
        if *source == TokenizerSource::Union || !config.tokens.is_empty() {
            return Err(Error::unsupported(format!(
                "a merged vocabulary (`union`, `tokenizer.tokens`) needs the tokenizer.json of `{}`, which it lacks",
                models[base].name
            )));
        }
        tracing::info!("the vocabularies are not readable (no tokenizer.json): the embedding rows are taken as they are");
        return Ok(None);
    }
    let position = |name: &str| models.iter().position(|m| m.name == name);
    vocab::Remap::build(
        source,
        &vocabs,
        base,
        donor_index,
        &config.tokens,
        config.pad_to_multiple_of,
        &position,
    )
    .map(Some)
}

/// A model's chat template: `chat_template.jinja`, else `chat_template` in
/// `tokenizer_config.json` (a string, or the `default` of a list of named templates).
fn model_chat_template(m: &Input) -> Option<String> {
    if let Ok(t) = m.checkpoint.file("chat_template.jinja") {
        return String::from_utf8(t).ok();
    }
    let config: Value =
        serde_json::from_slice(&m.checkpoint.file("tokenizer_config.json").ok()?).ok()?;
    match config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

/// `chat_template` (mergekit's `_set_chat_template`): `auto` takes the template most of the
/// models have. The template is written as `chat_template.jinja`, as mergekit's
/// `save_pretrained` (transformers 5) writes it; a `chat_template` key of the donor's
/// `tokenizer_config.json` and a `chat_template.json` are dropped so they do not contradict it.
/// Without a tokenizer there is nothing to attach it to (mergekit warns and goes on; so does
/// this).
fn set_chat_template(
    files: &mut BTreeMap<String, Vec<u8>>,
    template: &str,
    models: &[Input],
    has_tokenizer: bool,
) -> Result<()> {
    let template = if template == "auto" {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for t in models.iter().filter_map(model_chat_template) {
            let t = t.trim().to_string();
            match counts.iter_mut().find(|(c, _)| *c == t) {
                Some((_, n)) => *n += 1,
                None => counts.push((t, 1)),
            }
        }
        // The first of the most common, as Counter.most_common does.
        let best = counts.iter().map(|(_, n)| *n).max();
        match counts.into_iter().find(|(_, n)| Some(*n) == best) {
            Some((t, _)) => t,
            None => {
                tracing::warn!("chat_template: auto, but no model has a chat template");
                return Ok(());
            }
        }
    } else {
        template.to_string()
    };
    let Some(config) = files.get("tokenizer_config.json") else {
        if !has_tokenizer {
            tracing::warn!(
                "a chat template is given but the models have no tokenizer: it is not saved"
            );
        }
        return Ok(());
    };
    let mut config: serde_json::Map<String, Value> =
        serde_json::from_slice(config).map_err(|e| {
            Error::model(format!(
                "the tokenizer's tokenizer_config.json is not a JSON object: {e}"
            ))
        })?;
    if config.remove("chat_template").is_some() {
        files.insert(
            "tokenizer_config.json".into(),
            serde_json::to_vec_pretty(&Value::Object(config)).expect("JSON"),
        );
    }
    files.insert("chat_template.jinja".into(), template.into_bytes());
    files.remove("chat_template.json");
    Ok(())
}

/// Every parameter the config sets must be one the method reads: global ones at the top level
/// or on a slice, per-model ones anywhere.
fn check_parameter_names(config: &MergeConfig, spec: &Spec) -> Result<()> {
    let global: Vec<&str> = spec.global.iter().map(|p| p.name).collect();
    let tensor: Vec<&str> = spec.tensor.iter().map(|p| p.name).collect();
    let all: Vec<&str> = global.iter().chain(&tensor).copied().collect();
    let known = |list: &[&str]| {
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    let mut blocks = vec![("parameters".to_string(), &config.parameters, false)];
    let at = if config.modules_form {
        blocks.push((
            "modules.default.parameters".to_string(),
            &config.module_parameters,
            false,
        ));
        "modules.default."
    } else {
        ""
    };
    for (k, s) in config.slices.iter().enumerate() {
        let prefix = if config.models_form {
            format!("{at}models")
        } else {
            format!("{at}slices[{k}]")
        };
        if !config.models_form {
            blocks.push((format!("{prefix}.parameters"), &s.parameters, false));
        }
        for (j, src) in s.sources.iter().enumerate() {
            let what = if config.models_form {
                format!("{at}models[{j}].parameters")
            } else {
                format!("{prefix}.sources[{j}].parameters")
            };
            blocks.push((what, &src.parameters, true));
        }
    }
    for (what, params, per_model) in blocks {
        for name in params.keys() {
            if per_model && global.contains(&name.as_str()) {
                return Err(err(format!(
                    "`{what}.{name}`: `{name}` is a global parameter of `{}`; set it under the top-level `parameters`",
                    spec.name
                )));
            }
            if !all.contains(&name.as_str()) {
                return Err(err(format!(
                    "`{what}.{name}`: unknown parameter for merge_method `{}` (it reads: {})",
                    spec.name,
                    known(&all)
                )));
            }
        }
    }
    Ok(())
}

/// The lazy merged model.
struct Lazy(Arc<Merge>);

impl StateDict for Lazy {
    fn names(&self) -> Result<Vec<String>> {
        Ok(self.0.tensors.iter().map(|t| t.name.clone()).collect())
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.planned(name).map(|t| t.info.clone())
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let t = self.planned(name)?;
        if let Some(dev) = &self.0.device {
            if let Some(bytes) = dev.merge(&self.0, t)? {
                return Ok(Cow::Owned(bytes));
            }
        }
        if let Some(bytes) = self.0.stream_linear(t)? {
            return Ok(Cow::Owned(bytes));
        }
        if let Some(bytes) = self.0.stream_gta(t)? {
            return Ok(Cow::Owned(bytes));
        }
        let values = self.0.compute(t)?;
        Ok(Cow::Owned(cpu::encode(&values, t.info.dtype)?))
    }
    fn file_names(&self) -> Result<Vec<String>> {
        Ok(self.0.files.keys().cloned().collect())
    }
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.0
            .files
            .get(name)
            .cloned()
            .ok_or_else(|| Error::model(format!("the merged model has no file `{name}`")))
    }
}

impl Lazy {
    fn planned(&self, name: &str) -> Result<&Planned> {
        self.0
            .by_name
            .get(name)
            .map(|&i| &self.0.tensors[i])
            .ok_or_else(|| Error::model(format!("the merged model has no tensor `{name}`")))
    }
}

#[cfg(test)]
mod tests;
