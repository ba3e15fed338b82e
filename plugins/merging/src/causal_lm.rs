//! FusionBench's merging methods for causal language models (`fusion_bench/method/linear/*`,
//! `weighted_average/llama.py`, `slerp/slerp.py`):
//!
//! | `_target_` (FusionBench class) | what it merges |
//! |---|---|
//! | `SimpleAverageForCausalLM` | `SimpleAverageAlgorithm`; with `merge_backbone`, only the decoder layers, the rest from `_pretrained_` |
//! | `TaskArithmeticForCausalLM` | `TaskArithmeticAlgorithm`, same `merge_backbone` |
//! | `TiesMergingForCausalLM` | `TiesMergingAlgorithm`, same `merge_backbone` (TIES' trim then ranks the layers' entries only) |
//! | `WeightedAverageForLLama` | weighted average; `backbone_only` keeps `lm_head` from the base model |
//! | `SlerpForCausalLM` | `SlerpMergeAlgorithm` on the pool's two models |
//! | `ExPOAlgorithmForLlama`, `ExPOWithDareForLLama` | ExPO on the decoder layers' linear weights (see [`ExpoForLlama`]) |
//!
//! "Decoder layers" is FusionBench's `model.model.layers` (`CausalLMBackbonePool`): the
//! `model.layers.N.*` tensors of a Hugging Face causal LM. Each method saves the merged model
//! to `model_save_path` (`merged_model_save_path` for `WeightedAverageForLLama`) when one is
//! set, as FusionBench's do (its config files set `${path.log_dir}/checkpoint`): the weights,
//! `config.json`, and the tokenizer files the model pool carries (see `CausalLMPool`). The
//! model the method returns is then the saved checkpoint, so the host does not merge twice.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::PathBuf;

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::{json, Value};
use fusion_plugin_api::{GpuTensor, StateDict, TensorInfo, PRETRAINED};

use crate::llm_pruning::{PruneMode, LAYERS};
use crate::{
    DareSimpleAverage, SimpleAverage, Slerp, TaskArithmetic, TiesMerging, WeightedAverage,
};

// ---- model views --------------------------------------------------------------------------

/// A model restricted to some of its tensors.
struct Subset {
    model: Model,
    names: Vec<String>,
}

impl StateDict for Subset {
    fn names(&self) -> Result<Vec<String>> {
        Ok(self.names.clone())
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.model.info(name)
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.model.data(name)
    }
    fn file_names(&self) -> Result<Vec<String>> {
        self.model.file_names()
    }
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.model.file(name)
    }
    fn device_tensor(&self, name: &str) -> Result<Option<GpuTensor>> {
        self.model.device_tensor(name)
    }
}

/// Models already opened, as a pool (the backbone pool handed to the inner method).
struct Opened {
    models: Vec<(String, Model)>,
}

impl ModelPool for Opened {
    fn all_model_names(&self) -> Result<Vec<String>> {
        Ok(self.models.iter().map(|(n, _)| n.clone()).collect())
    }
    fn load_model(&self, name: &str) -> Result<Model> {
        self.models
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m.clone())
            .ok_or_else(|| Error::config(format!("the model pool has no model `{name}`")))
    }
}

/// `base` with the tensors `merged` has taken from `merged`: FusionBench's
/// `model.model.layers = merged_layers` on the base model. Names, order and files are the base's.
struct Overlay {
    base: Model,
    merged: Model,
    from_merged: HashSet<String>,
}

impl Overlay {
    fn pick(&self, name: &str) -> &Model {
        if self.from_merged.contains(name) {
            &self.merged
        } else {
            &self.base
        }
    }
}

impl StateDict for Overlay {
    fn names(&self) -> Result<Vec<String>> {
        self.base.names()
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.pick(name).info(name)
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.pick(name).data(name)
    }
    fn file_names(&self) -> Result<Vec<String>> {
        self.base.file_names()
    }
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.base.file(name)
    }
    fn device_tensor(&self, name: &str) -> Result<Option<GpuTensor>> {
        if self.from_merged.contains(name) {
            self.merged.device_tensor(name)
        } else {
            Ok(None)
        }
    }
}

/// The pool's models restricted to the tensors `keep` selects (`part` names them in errors).
fn restricted(
    pool: &dyn ModelPool,
    keep: fn(&str) -> bool,
    algorithm: &str,
    part: &str,
) -> Result<Opened> {
    let mut models = Vec::new();
    for name in pool.all_model_names()? {
        let model = pool.load_model(&name)?;
        let names: Vec<String> = model.names()?.into_iter().filter(|n| keep(n)).collect();
        if names.is_empty() {
            return Err(Error::config(format!(
                "{algorithm}: model `{name}` has no {part} tensors; this option expects a \
                 Llama-style causal LM with Hugging Face tensor names (`model.layers.N.…`, \
                 `model.embed_tokens.weight`, `lm_head.weight`)"
            )));
        }
        models.push((name, Model::new(Subset { model, names })));
    }
    Ok(Opened { models })
}

/// Run `inner` on the part of each model `keep` selects, and lay the result over model `base`.
fn merge_part(
    inner: &dyn Algorithm,
    pool: &dyn ModelPool,
    ctx: &Context,
    keep: fn(&str) -> bool,
    base: &str,
    algorithm: &str,
    part: &str,
) -> Result<Model> {
    let sub = restricted(pool, keep, algorithm, part)?;
    let merged = inner.run(&sub, ctx)?;
    let from_merged = merged.names()?.into_iter().collect();
    Ok(Model::new(Overlay {
        base: pool.load_model(base)?,
        merged,
        from_merged,
    }))
}

fn is_layer(name: &str) -> bool {
    name.starts_with(LAYERS)
}

/// `model.*`: everything but the LM head (FusionBench's `LlamaForCausalLM.model`).
fn is_backbone(name: &str) -> bool {
    name.starts_with("model.")
}

// ---- saving -------------------------------------------------------------------------------

/// Where a method saves its model (`key` of its config), checked before any work.
fn save_path(config: &Config, key: &str) -> Result<Option<PathBuf>> {
    let Some(path) = config.get::<String>(key)? else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    fusion_checkpoint::save::check_destination(&path).map_err(|e| {
        Error::config(format!(
            "{}: `{key}` {}: {e:#}",
            config.target(),
            path.display()
        ))
    })?;
    Ok(Some(path))
}

/// Save `model` to `dest` as `CausalLMPool.save_model` does and return the saved checkpoint.
fn save(model: Model, dest: Option<&PathBuf>, algorithm: &str) -> Result<Model> {
    let Some(dest) = dest else {
        return Ok(model);
    };
    // The save's errors are `anyhow` chains; the plugin boundary takes one message.
    let what = format!("{algorithm}: saving the merged model to {}", dest.display());
    let opts = fusion_checkpoint::save::SaveOptions {
        overflow_is_error: fusion_checkpoint::save::nonfinite_is_error()
            .map_err(|e| Error::config(format!("{what}: {e:#}")))?,
        ..Default::default()
    };
    let summary = fusion_checkpoint::save::save_model(&model, dest, &opts)
        .map_err(|e| Error::io(format!("{what}: {e:#}")))?;
    tracing::info!(
        path = %summary.path.display(),
        tensors = summary.tensors,
        bytes = summary.bytes,
        "{algorithm}: merged model saved"
    );
    Ok(fusion_checkpoint::save::reopen_saved(&model, &summary)
        .map_err(|e| Error::io(format!("{what}: {e:#}")))?
        .unwrap_or(model))
}

// ---- *_for_causallm -------------------------------------------------------------------------

/// A FusionBench method that `*ForCausalLM` wraps.
pub trait CausalLmBase: Algorithm + FromConfig {
    /// FusionBench's class name, for messages.
    const NAME: &'static str;
}

impl CausalLmBase for SimpleAverage {
    const NAME: &'static str = "SimpleAverageForCausalLM";
}
impl CausalLmBase for TaskArithmetic {
    const NAME: &'static str = "TaskArithmeticForCausalLM";
}
impl CausalLmBase for TiesMerging {
    const NAME: &'static str = "TiesMergingForCausalLM";
}

/// `SimpleAverageForCausalLM`, `TaskArithmeticForCausalLM`, `TiesMergingForCausalLM`: the
/// wrapped method's parameters, plus `merge_backbone` (false: the whole model; true: only the
/// decoder layers are merged, by the wrapped method on the layers alone, and the embeddings,
/// final norm and `lm_head` are `_pretrained_`'s, which is then required), `model_save_path`
/// (null) and `show_pbar` (accepted).
pub struct ForCausalLM<A> {
    inner: A,
    merge_backbone: bool,
    save: Option<PathBuf>,
}

impl<A: CausalLmBase> FromConfig for ForCausalLM<A> {
    fn from_config(config: &Config) -> Result<Self> {
        let merge_backbone = config.get_or("merge_backbone", false)?;
        let _: bool = config.get_or("show_pbar", false)?;
        let save = save_path(config, "model_save_path")?;
        Ok(ForCausalLM {
            inner: A::from_config(config)?,
            merge_backbone,
            save,
        })
    }
}

impl<A: CausalLmBase> Algorithm for ForCausalLM<A> {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let model = if self.merge_backbone {
            if !pool.has_pretrained()? {
                return Err(Error::config(format!(
                    "{}: `merge_backbone: true` takes everything but the decoder layers from \
                     `{PRETRAINED}`, and the pool has none",
                    A::NAME
                )));
            }
            tracing::info!("{}: merging the decoder layers only", A::NAME);
            merge_part(
                &self.inner,
                pool,
                ctx,
                is_layer,
                PRETRAINED,
                A::NAME,
                "decoder-layer (`model.layers.N.…`)",
            )?
        } else {
            self.inner.run(pool, ctx)?
        };
        save(model, self.save.as_ref(), A::NAME)
    }
}

/// FusionBench `SimpleAverageForCausalLM` (alias `SimpleAverageForLlama`).
pub type SimpleAverageForCausalLM = ForCausalLM<SimpleAverage>;
/// FusionBench `TaskArithmeticForCausalLM` (alias `TaskArithmeticForLlama`).
pub type TaskArithmeticForCausalLM = ForCausalLM<TaskArithmetic>;
/// FusionBench `TiesMergingForCausalLM`.
pub type TiesMergingForCausalLM = ForCausalLM<TiesMerging>;

// ---- WeightedAverageForLLama ----------------------------------------------------------------

/// FusionBench `WeightedAverageForLLama`: θ = Σ wᵢθᵢ over the models to merge, `weights` (one
/// per model) normalized to sum 1 when `normalize`; laid over `_pretrained_` (or the first
/// model). `backbone_only` true merges `model.*` only and keeps the base model's `lm_head`, as
/// its config file says ("the head will be kept as the pre-trained model"); FusionBench's code
/// passes `backbone_only` to `from_pretrained`, which ignores it, so there the head is averaged
/// too. `merged_model_save_path` (null) saves the result; `save_tokenizer` false leaves the
/// tokenizer files out; `push_to_hub` must be false (nothing is uploaded).
pub struct WeightedAverageForLlama {
    inner: WeightedAverage,
    backbone_only: bool,
    save: Option<PathBuf>,
    save_tokenizer: bool,
}

const WA_LLAMA: &str = "WeightedAverageForLLama";

impl FromConfig for WeightedAverageForLlama {
    fn from_config(config: &Config) -> Result<Self> {
        let backbone_only = config.require("backbone_only")?;
        let save_tokenizer = config.get_or("save_tokenizer", false)?;
        if config.get_or("push_to_hub", false)? {
            return Err(Error::config(format!(
                "{WA_LLAMA}: `push_to_hub: true` is not supported (fusion-host uploads nothing); \
                 save with `merged_model_save_path` and upload the folder yourself"
            )));
        }
        Ok(WeightedAverageForLlama {
            inner: WeightedAverage::from_config(config)?,
            backbone_only,
            save: save_path(config, "merged_model_save_path")?,
            save_tokenizer,
        })
    }
}

impl Algorithm for WeightedAverageForLlama {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let base = if pool.has_pretrained()? {
            PRETRAINED.to_string()
        } else {
            pool.model_names()?
                .into_iter()
                .next()
                .ok_or_else(|| Error::config(format!("{WA_LLAMA}: the model pool has no models")))?
        };
        let keep: fn(&str) -> bool = if self.backbone_only {
            is_backbone
        } else {
            |_| true
        };
        let mut model = merge_part(&self.inner, pool, ctx, keep, &base, WA_LLAMA, "`model.*`")?;
        if !self.save_tokenizer {
            model = Model::new(WithoutTokenizer(model));
        }
        save(model, self.save.as_ref(), WA_LLAMA)
    }
}

/// A model without its tokenizer files (`save_tokenizer: false`).
struct WithoutTokenizer(Model);

impl WithoutTokenizer {
    fn is_tokenizer_file(name: &str) -> bool {
        name.starts_with("tokenizer")
            || name.starts_with("special_tokens_map")
            || name.starts_with("added_tokens")
            || name.starts_with("chat_template")
            || ["vocab.json", "vocab.txt", "merges.txt", "spiece.model"].contains(&name)
    }
}

impl StateDict for WithoutTokenizer {
    fn names(&self) -> Result<Vec<String>> {
        self.0.names()
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.0.info(name)
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        self.0.data(name)
    }
    fn file_names(&self) -> Result<Vec<String>> {
        Ok(self
            .0
            .file_names()?
            .into_iter()
            .filter(|f| !Self::is_tokenizer_file(f))
            .collect())
    }
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.0.file(name)
    }
    fn device_tensor(&self, name: &str) -> Result<Option<GpuTensor>> {
        self.0.device_tensor(name)
    }
}

// ---- SlerpForCausalLM -----------------------------------------------------------------------

/// FusionBench `SlerpForCausalLM`: `SlerpMergeAlgorithm` (`t`, `DOT_THRESHOLD`, `epsilon`) on the
/// pool's two models (`_pretrained_` counts), plus `model_save_path` and `show_pbar`.
pub struct SlerpForCausalLM {
    inner: Slerp,
    save: Option<PathBuf>,
}

impl FromConfig for SlerpForCausalLM {
    fn from_config(config: &Config) -> Result<Self> {
        let _: bool = config.get_or("show_pbar", false)?;
        let t: f64 = config.require("t")?;
        crate::params::unit_interval(t, "t", "SlerpForCausalLM")?;
        Ok(SlerpForCausalLM {
            inner: Slerp::from_config(config)?,
            save: save_path(config, "model_save_path")?,
        })
    }
}

impl Algorithm for SlerpForCausalLM {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let model = self.inner.run(pool, ctx)?;
        save(model, self.save.as_ref(), "SlerpForCausalLM")
    }
}

// ---- ExPO for Llama -------------------------------------------------------------------------

/// How many leading or trailing layers ExPO leaves alone: a count, or `half`.
#[derive(Clone, Copy, Debug)]
enum Fix {
    Count(usize),
    Half,
}

impl Fix {
    fn read(config: &Config, key: &str) -> Result<Fix> {
        match config.get::<Value>(key)? {
            None => Ok(Fix::Count(0)),
            Some(Value::String(s)) if s == "half" => Ok(Fix::Half),
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                Ok(Fix::Count(n.as_u64().unwrap_or(0) as usize))
            }
            Some(other) => Err(Error::config(format!(
                "{}: `{key}` must be a non-negative number of layers or `half`, got {other}",
                config.target()
            ))),
        }
    }

    fn resolve(self, layers: usize) -> usize {
        match self {
            Fix::Count(n) => n,
            Fix::Half => layers / 2,
        }
    }
}

/// ExPO's settings (FusionBench `ExPOAlgorithmForLlama`).
#[derive(Clone, Debug)]
struct ExpoSpec {
    extrapolation_factor: f64,
    attention_scaling_factor: f64,
    only_on_backbone: bool,
    on_linear_weights: bool,
    on_linear_bias: bool,
    on_embedding: bool,
    fix_first: Fix,
    fix_last: Fix,
    magnitude_sparsity_ratio: Option<f64>,
}

/// FusionBench `ExPOAlgorithmForLlama` (and `ExPOWithDareForLLama`): θ = θ₁ + α(θ₁ − θ₀) with
/// θ₀ the `_pretrained_` (SFT) model and θ₁ the aligned model (the one model to merge; several
/// are averaged first, with DARE for `ExPOWithDareForLLama`). Which tensors are extrapolated
/// follows FusionBench's module walk:
///
/// - in each decoder layer from `fix_first_n_layers` (0) up to `fix_last_n_layers` (0) before
///   the end (`half`: half the layers), the linear layers of `self_attn` with α ×
///   `attention_scaling_factor` (1.0 in the config file) and of `mlp` with α, in f32; each
///   difference θ₁ − θ₀ first loses the `⌊cols · magnitude_sparsity_ratio⌋` entries of smallest
///   magnitude of every row when that ratio is set;
/// - linear weights only when `on_linear_weights` (true), biases only when `on_linear_bias`
///   (false);
/// - `lm_head` with α when `only_on_backbone` is false (and its weight when `on_linear_weights`);
/// - `model.embed_tokens` with α when `on_embedding` (false);
/// - everything else (norms) is θ₁'s.
///
/// `extrapolation_factor` is required (0.1 in the config file). Everything is computed in f32
/// and rounded once to the model's dtype; FusionBench computes `lm_head` and the embeddings in
/// the model's own dtype, so bf16/f16 models can differ there in the last bit. With tied
/// embeddings (no `lm_head.weight` in the checkpoint), `only_on_backbone: false` extrapolates the
/// shared embedding, twice with `on_embedding`, as FusionBench's in-place steps do.
pub struct ExpoForLlama {
    spec: ExpoSpec,
    /// `ExPOWithDareForLLama`'s DARE (`dare_sparsity_ratio`, `dare_only_on_linear_weights`,
    /// `dare_rescale`, and `seed`), as the config of `DareSimpleAverage`.
    dare: Option<Value>,
}

const EXPO_LLAMA: &str = "ExPOAlgorithmForLlama";

impl ExpoSpec {
    fn read(config: &Config) -> Result<Self> {
        let ratio: Option<f64> = config.get("magnitude_sparsity_ratio")?;
        if let Some(r) = ratio {
            crate::params::unit_interval(r, "magnitude_sparsity_ratio", config.target())?;
        }
        Ok(ExpoSpec {
            extrapolation_factor: config.require("extrapolation_factor")?,
            attention_scaling_factor: config.get_or("attention_scaling_factor", 0.5)?,
            only_on_backbone: config.get_or("only_on_backbone", true)?,
            on_linear_weights: config.get_or("on_linear_weights", true)?,
            on_linear_bias: config.get_or("on_linear_bias", false)?,
            on_embedding: config.get_or("on_embedding", false)?,
            fix_first: Fix::read(config, "fix_first_n_layers")?,
            fix_last: Fix::read(config, "fix_last_n_layers")?,
            magnitude_sparsity_ratio: ratio,
        })
    }
}

impl FromConfig for ExpoForLlama {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(ExpoForLlama {
            spec: ExpoSpec::read(config)?,
            dare: None,
        })
    }
}

/// FusionBench `ExPOWithDareForLLama`: [`ExpoForLlama`] whose aligned model is
/// `DareSimpleAverage` of the models (`dare_sparsity_ratio` required, `dare_only_on_linear_weights`
/// required, `dare_rescale` true, `seed`: the program's when absent).
pub struct ExpoWithDareForLlama(ExpoForLlama);

impl FromConfig for ExpoWithDareForLlama {
    fn from_config(config: &Config) -> Result<Self> {
        let ratio: f64 = config.require("dare_sparsity_ratio")?;
        let only: bool = config.require("dare_only_on_linear_weights")?;
        let rescale: bool = config.get_or("dare_rescale", true)?;
        let seed: Option<u64> = config.get("seed")?;
        Ok(ExpoWithDareForLlama(ExpoForLlama {
            spec: ExpoSpec::read(config)?,
            dare: Some(json!({
                "sparsity_ratio": ratio,
                "only_on_linear_weights": only,
                "rescale": rescale,
                "seed": seed,
            })),
        }))
    }
}

impl Algorithm for ExpoWithDareForLlama {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        self.0.run(pool, ctx)
    }
}

/// The decoder layer index of a tensor name (`model.layers.N.…`).
fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix(LAYERS)?.split('.').next()?.parse().ok()
}

impl Algorithm for ExpoForLlama {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let algorithm = if self.dare.is_some() {
            "ExPOWithDareForLLama"
        } else {
            EXPO_LLAMA
        };
        // Checks every model against `_pretrained_` (names, shapes) before any work.
        let inputs = crate::inputs::Inputs::open(pool, algorithm, true, 1)?;
        let sft = inputs.base().model.clone();
        let aligned = match &self.dare {
            Some(dare) => {
                let config = Config::new("fusion_bench.method.DareSimpleAverage", dare.clone())?;
                tracing::info!(
                    models = inputs.models.len(),
                    "{algorithm}: DARE average of the models first"
                );
                DareSimpleAverage::from_config(&config)?.run(pool, ctx)?
            }
            None if inputs.models.len() == 1 => inputs.models[0].model.clone(),
            None => {
                tracing::info!(
                    models = inputs.models.len(),
                    "{algorithm}: averaging the models first, as FusionBench does"
                );
                SimpleAverage.run(pool, ctx)?
            }
        };
        let names = aligned.names()?;
        let layers = names
            .iter()
            .filter_map(|n| layer_index(n))
            .max()
            .map(|m| m + 1)
            .unwrap_or(0);
        if layers == 0 {
            return Err(Error::config(format!(
                "{algorithm}: the models have no decoder layers (`{LAYERS}N.…` tensors); ExPO \
                 for Llama expects a Llama-style causal LM with Hugging Face tensor names"
            )));
        }
        let first = self.spec.fix_first.resolve(layers);
        let last = self.spec.fix_last.resolve(layers);
        // Linear layers: a 2-D `.weight`, and the `.bias` beside one.
        let mut linear = HashSet::new();
        for n in &names {
            if let Some(module) = n.strip_suffix(".weight") {
                if aligned.info(n)?.shape.len() == 2 {
                    linear.insert(module.to_string());
                }
            }
        }
        if self.spec.magnitude_sparsity_ratio.is_some() && self.spec.on_linear_bias {
            if let Some(b) = names.iter().find(|n| {
                n.strip_suffix(".bias").is_some_and(|m| linear.contains(m)) && is_layer(n)
            }) {
                return Err(Error::config(format!(
                    "{algorithm}: `magnitude_sparsity_ratio` prunes rows of 2-D weights, and \
                     `on_linear_bias: true` would prune the 1-D bias `{b}` (FusionBench fails \
                     there too); set `on_linear_bias: false` or `magnitude_sparsity_ratio: null`"
                )));
            }
        }
        let mut rules = std::collections::HashMap::new();
        let f = self.spec.extrapolation_factor;
        for n in &names {
            let (module, is_weight) = match (n.strip_suffix(".weight"), n.strip_suffix(".bias")) {
                (Some(m), _) => (m, true),
                (_, Some(m)) => (m, false),
                _ => continue,
            };
            let is_linear = linear.contains(module);
            let linear_on = if is_weight {
                self.spec.on_linear_weights
            } else {
                self.spec.on_linear_bias
            };
            let rule = if module == "lm_head" {
                (!self.spec.only_on_backbone && is_linear && linear_on).then_some(Rule {
                    factor: f as f32,
                    prune: None,
                    times: 1,
                })
            } else if module == "model.embed_tokens" {
                self.spec.on_embedding.then_some(Rule {
                    factor: f as f32,
                    prune: None,
                    times: 1,
                })
            } else if let Some(i) = layer_index(n) {
                let rest = &module[LAYERS.len()..];
                let sub = rest.split_once('.').map(|(_, s)| s).unwrap_or("");
                let in_range = i >= first && i + last < layers;
                let factor = if sub.starts_with("self_attn.") {
                    Some(f * self.spec.attention_scaling_factor)
                } else if sub.starts_with("mlp.") {
                    Some(f)
                } else {
                    None
                };
                match factor {
                    Some(factor) if in_range && is_linear && linear_on => Some(Rule {
                        factor: factor as f32,
                        prune: self
                            .spec
                            .magnitude_sparsity_ratio
                            .filter(|_| is_weight)
                            .map(|ratio| PruneMode::Unstructured { ratio }),
                        times: 1,
                    }),
                    _ => None,
                }
            } else {
                None
            };
            if let Some(rule) = rule {
                rules.insert(n.clone(), rule);
            }
        }
        // Tied embeddings: the checkpoint has no `lm_head.weight`, and FusionBench's `lm_head`
        // step extrapolates the shared embedding (a second time when `on_embedding`).
        let embed = "model.embed_tokens.weight";
        let tied = !names.iter().any(|n| n == "lm_head.weight") && names.iter().any(|n| n == embed);
        if tied && !self.spec.only_on_backbone && self.spec.on_linear_weights {
            rules
                .entry(embed.to_string())
                .and_modify(|r: &mut Rule| r.times += 1)
                .or_insert(Rule {
                    factor: f as f32,
                    prune: None,
                    times: 1,
                });
        }
        tracing::info!(
            extrapolation_factor = f,
            layers,
            from = first,
            to = layers.saturating_sub(last),
            tensors = rules.len(),
            "{algorithm} (CPU)"
        );
        Ok(Model::new(Expo {
            sft,
            aligned,
            rules,
        }))
    }
}

/// How one tensor is extrapolated.
#[derive(Clone, Copy, Debug)]
struct Rule {
    factor: f32,
    prune: Option<PruneMode>,
    /// How many times the step is taken: 2 for a tied embedding extrapolated both as `lm_head`
    /// and as the embedding, as FusionBench's two in-place steps on the shared weight do.
    times: usize,
}

/// The ExPO model: the aligned model's tensors, extrapolated where a rule says.
struct Expo {
    sft: Model,
    aligned: Model,
    rules: std::collections::HashMap<String, Rule>,
}

impl StateDict for Expo {
    fn names(&self) -> Result<Vec<String>> {
        self.aligned.names()
    }
    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.aligned.info(name)
    }
    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let Some(rule) = self.rules.get(name) else {
            return self.aligned.data(name);
        };
        let info = self.aligned.info(name)?;
        let (r, _) = self.aligned.to_f32(name)?;
        let (s, _) = self.sft.to_f32(name)?;
        let mut out = r;
        for _ in 0..rule.times {
            let mut delta: Vec<f32> = out.iter().zip(&s).map(|(r, s)| r - s).collect();
            if let Some(mode) = rule.prune {
                let scores: Vec<f32> = delta.iter().map(|d| d.abs()).collect();
                mode.apply(&mut delta, &scores, info.shape[1])
                    .map_err(|e| e.context(format!("tensor `{name}`")))?;
            }
            out.iter_mut()
                .zip(&delta)
                .for_each(|(r, d)| *r += rule.factor * d);
        }
        Ok(Cow::Owned(fusion_plugin_api::f32_to_bytes(
            &out, info.dtype,
        )?))
    }
    fn file_names(&self) -> Result<Vec<String>> {
        self.aligned.file_names()
    }
    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.aligned.file(name)
    }
}
