//! Elementwise methods computed on the CPU in f32, as FusionBench's torch code does:
//! MagMax (`MagMaxAlgorithm`), ExPO (`ExPOAlgorithm`), linear interpolation
//! (`LinearInterpolationAlgorithm`) and magnitude-difference pruning
//! (`MagnitudeDiffPruningAlgorithm`).
//!
//! They run on the CPU rather than the compute device: each is one pass over a few tensors,
//! pruning sorts every row, and speed is not the point of this first round (see `cpu.rs`).

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::Value;
use fusion_plugin_api::TensorInfo;

use crate::cpu::{load, task_vectors, CpuMerge, CpuMerged};
use crate::delta::is_linear_weight;
use crate::inputs::Inputs;

/// MagMax: θ = θ₀ + λ·τ*, where τ*[j] is, at every position, the task vector entry of largest
/// magnitude (a later model wins a tie, FusionBench's `>=`). `scaling_factor` λ 0.5; FusionBench's
/// `inplace` is accepted and has no effect (the result is a new model).
pub struct MagMax {
    scaling_factor: f32,
}

impl FromConfig for MagMax {
    fn from_config(config: &Config) -> Result<Self> {
        let scaling_factor: f64 = config.get_or("scaling_factor", 0.5)?;
        let _: bool = config.get_or("inplace", true)?;
        Ok(MagMax {
            scaling_factor: scaling_factor as f32,
        })
    }
}

impl Algorithm for MagMax {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        let inputs = Inputs::open(pool, "magmax", true, 1)?;
        tracing::info!(
            models = inputs.models.len(),
            scaling_factor = self.scaling_factor,
            "MagMax (CPU)"
        );
        Ok(CpuMerged::model(inputs, MagMaxMerge(self.scaling_factor)))
    }
}

struct MagMaxMerge(f32);

impl CpuMerge for MagMaxMerge {
    fn merge(&self, inputs: &Inputs, name: &str, _info: &TensorInfo) -> Result<Vec<f32>> {
        let tvs = task_vectors(inputs, name)?;
        let mut best = tvs[0].clone();
        for tv in &tvs[1..] {
            for (b, &t) in best.iter_mut().zip(tv) {
                if t.abs() >= b.abs() {
                    *b = t;
                }
            }
        }
        let mut out = load(inputs.base(), name)?;
        out.iter_mut()
            .zip(&best)
            .for_each(|(o, t)| *o += self.0 * t);
        Ok(out)
    }
}

/// ExPO: θ = θ₁ + α(θ₁ − θ₀), extrapolating from `_pretrained_` (θ₀) past the fine-tuned model
/// θ₁; with several fine-tuned models θ₁ is their simple average, as FusionBench does.
/// `extrapolation_factor` α is required (FusionBench's config file sets 0.1).
pub struct ExPO {
    extrapolation_factor: f32,
}

impl FromConfig for ExPO {
    fn from_config(config: &Config) -> Result<Self> {
        let f: f64 = config.require("extrapolation_factor")?;
        Ok(ExPO {
            extrapolation_factor: f as f32,
        })
    }
}

impl Algorithm for ExPO {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        let mut inputs = Inputs::open(pool, "expo", true, 1)?;
        if inputs.models.len() > 1 {
            tracing::info!(
                models = inputs.models.len(),
                "ExPO: averaging the fine-tuned models first, as FusionBench does"
            );
        }
        // FusionBench returns the (averaged) fine-tuned model: its non-float tensors and files.
        inputs.reference = inputs.models[0].clone();
        tracing::info!(
            extrapolation_factor = self.extrapolation_factor,
            "ExPO (CPU)"
        );
        Ok(CpuMerged::model(
            inputs,
            ExPOMerge(self.extrapolation_factor),
        ))
    }
}

struct ExPOMerge(f32);

impl CpuMerge for ExPOMerge {
    fn merge(&self, inputs: &Inputs, name: &str, _info: &TensorInfo) -> Result<Vec<f32>> {
        let mut rlhf = load(&inputs.models[0], name)?;
        if inputs.models.len() > 1 {
            // SimpleAverageAlgorithm: sum in model order, then divide.
            for m in &inputs.models[1..] {
                rlhf.iter_mut()
                    .zip(load(m, name)?)
                    .for_each(|(a, x)| *a += x);
            }
            let n = inputs.models.len() as f32;
            rlhf.iter_mut().for_each(|a| *a /= n);
        }
        let sft = load(inputs.base(), name)?;
        Ok(rlhf
            .iter()
            .zip(&sft)
            .map(|(&r, &s)| r + (r - s) * self.0)
            .collect())
    }
}

/// Linear interpolation of exactly two models: θ = (1 − t)·θ₁ + t·θ₂, over the pool's models in
/// order, `_pretrained_` included when the pool has one (FusionBench's `all_model_names`). `t`
/// is required and must lie in [0, 1].
///
/// FusionBench's own check (`all_model_names == 2`, a list compared with a number) fails for
/// every pool, so its class cannot run; this follows its stated intent (two models).
pub struct LinearInterpolation {
    t: f64,
}

impl FromConfig for LinearInterpolation {
    fn from_config(config: &Config) -> Result<Self> {
        let t: f64 = config.require("t")?;
        if !(0.0..=1.0).contains(&t) {
            return Err(Error::config(format!(
                "linear_interpolation: `t` must be in [0, 1], got {t}"
            )));
        }
        Ok(LinearInterpolation { t })
    }
}

impl Algorithm for LinearInterpolation {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        let names = pool.all_model_names()?;
        if names.len() != 2 {
            return Err(Error::config(format!(
                "linear_interpolation takes exactly 2 models, the pool has {} ({})",
                names.len(),
                names.join(", ")
            )));
        }
        let inputs = Inputs::open_named(pool, "linear_interpolation", false, &names, 2)?;
        tracing::info!(t = self.t, first = %names[0], second = %names[1], "linear interpolation (CPU)");
        Ok(CpuMerged::model(
            inputs,
            Interpolate([(1.0 - self.t) as f32, self.t as f32]),
        ))
    }
}

struct Interpolate([f32; 2]);

impl CpuMerge for Interpolate {
    fn merge(&self, inputs: &Inputs, name: &str, _info: &TensorInfo) -> Result<Vec<f32>> {
        let a = load(&inputs.models[0], name)?;
        let b = load(&inputs.models[1], name)?;
        let [wa, wb] = self.0;
        Ok(a.iter().zip(&b).map(|(x, y)| wa * x + wb * y).collect())
    }
}

/// Which entries of each row of a weight difference magnitude pruning zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PruneType {
    /// The smallest magnitudes.
    Minor,
    /// The largest magnitudes.
    Major,
}

/// Magnitude pruning of the difference between one fine-tuned model and `_pretrained_`:
/// θ = θ₀ + r·prune(θ₁ − θ₀) on the selected weights, θ₀ elsewhere. In each row of a selected
/// 2-D weight, the `⌊cols·prune_ratio⌋` entries of smallest (`prune_type: minor`) or largest
/// (`major`) magnitude are zeroed (ties by position, as torch's stable sort).
///
/// Parameters (FusionBench's): `prune_ratio` (required), `rescale` (null, a bool or a number;
/// default null), `extract_names` (regular expressions matched at the start of tensor names;
/// null selects the weights of linear layers, recognised as 2-D `*.weight` tensors that are
/// not embeddings), `prune_type` (minor).
///
/// The factor r follows FusionBench exactly: 1 when `rescale` is null, `1/prune_ratio` when it
/// equals true (Python's `==`, so a number 1 counts as true), else the value itself, so
/// `rescale: false` (its config file's default) gives r = 0 and returns the pretrained model
/// unchanged; a warning says so.
#[derive(Clone)]
pub struct MagnitudeDiffPruning {
    prune_ratio: f64,
    factor: f32,
    extract_names: Option<Vec<regex::Regex>>,
    prune_type: PruneType,
}

impl FromConfig for MagnitudeDiffPruning {
    fn from_config(config: &Config) -> Result<Self> {
        const NAME: &str = "magnitude_diff_pruning";
        let prune_ratio: f64 = config.require("prune_ratio")?;
        let prune_ratio = crate::params::unit_interval(prune_ratio, "prune_ratio", NAME)?;
        // Read as a JSON value: null, a bool and a number mean different things here.
        let rescale: Option<Value> = config.get("rescale")?;
        let factor = match &rescale {
            None | Some(Value::Null) => 1.0,
            Some(Value::Bool(true)) => 1.0 / prune_ratio,
            Some(Value::Bool(false)) => 0.0,
            Some(Value::Number(n)) => {
                let r = n.as_f64().unwrap_or(f64::NAN);
                if r == 1.0 {
                    1.0 / prune_ratio
                } else {
                    r
                }
            }
            Some(other) => {
                return Err(Error::config(format!(
                    "{NAME}: `rescale` must be null, a bool or a number, got {other}"
                )))
            }
        };
        if !factor.is_finite() {
            return Err(Error::config(format!(
                "{NAME}: `rescale` with `prune_ratio` {prune_ratio} gives the factor {factor}"
            )));
        }
        if factor == 0.0 {
            tracing::warn!(
                "{NAME}: `rescale` is {} and FusionBench multiplies the kept difference by it, so \
                 the result is the pretrained model unchanged; set `rescale: null` to keep the \
                 pruned difference as is, or `rescale: true` to scale it by 1/prune_ratio",
                rescale.unwrap_or(serde_json::Value::Null)
            );
        }
        let extract_names = config
            .get::<Vec<String>>("extract_names")?
            .map(|pats| {
                pats.iter()
                    .map(|p| {
                        regex::Regex::new(&format!("^(?:{p})")).map_err(|e| {
                            Error::config(format!(
                                "{NAME}: `extract_names` entry `{p}` is not a regular expression: {e}"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        let prune_type = match config.get_or("prune_type", "minor".to_string())?.as_str() {
            "minor" => PruneType::Minor,
            "major" => PruneType::Major,
            other => {
                return Err(Error::config(format!(
                    "{NAME}: `prune_type` must be `minor` or `major`, got `{other}`"
                )))
            }
        };
        Ok(MagnitudeDiffPruning {
            prune_ratio,
            factor: factor as f32,
            extract_names,
            prune_type,
        })
    }
}

impl MagnitudeDiffPruning {
    fn selects(&self, name: &str, info: &TensorInfo) -> bool {
        match &self.extract_names {
            Some(pats) => pats.iter().any(|p| p.is_match(name)),
            None => is_linear_weight(name, info),
        }
    }
}

impl Algorithm for MagnitudeDiffPruning {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        const NAME: &str = "magnitude_diff_pruning";
        let inputs = Inputs::open(pool, NAME, true, 1)?;
        if inputs.models.len() != 1 {
            return Err(Error::config(format!(
                "{NAME} prunes one fine-tuned model against `_pretrained_`; the pool has {} ({})",
                inputs.models.len(),
                inputs
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut selected = 0;
        for name in inputs.names()? {
            let info = inputs.info(&name)?;
            if info.dtype.is_float() && self.selects(&name, &info) {
                if info.shape.len() != 2 {
                    return Err(Error::config(format!(
                        "{NAME}: tensor `{name}` (shape {:?}) is selected by `extract_names` but \
                         pruning works on the rows of 2-D weights",
                        info.shape
                    )));
                }
                selected += 1;
            }
        }
        if selected == 0 {
            return Err(Error::config(format!(
                "{NAME}: no 2-D weight is selected ({}), so there is nothing to prune",
                if self.extract_names.is_some() {
                    "no tensor name matches `extract_names`"
                } else {
                    "the model has no linear-layer weights"
                }
            )));
        }
        tracing::info!(
            prune_ratio = self.prune_ratio,
            factor = self.factor,
            tensors = selected,
            prune_type = ?self.prune_type,
            "magnitude-difference pruning (CPU)"
        );
        Ok(CpuMerged::model(inputs, Prune { spec: self.clone() }))
    }
}

struct Prune {
    spec: MagnitudeDiffPruning,
}

impl CpuMerge for Prune {
    fn merge(&self, inputs: &Inputs, name: &str, info: &TensorInfo) -> Result<Vec<f32>> {
        let mut base = load(inputs.base(), name)?;
        if !self.spec.selects(name, info) {
            return Ok(base);
        }
        let mut diff = task_vectors(inputs, name)?.remove(0);
        let cols = info.shape[1];
        // int(cols * ratio) in Python's float arithmetic.
        let k = (cols as f64 * self.spec.prune_ratio).floor() as usize;
        let mut order: Vec<usize> = Vec::with_capacity(cols);
        for row in diff.chunks_mut(cols) {
            order.clear();
            order.extend(0..cols);
            // A stable sort of the metric (|w| for minor, −|w| for major) ascending.
            match self.spec.prune_type {
                PruneType::Minor => order.sort_by(|&a, &b| row[a].abs().total_cmp(&row[b].abs())),
                PruneType::Major => order.sort_by(|&a, &b| row[b].abs().total_cmp(&row[a].abs())),
            }
            for &j in &order[..k] {
                row[j] = 0.0;
            }
        }
        let f = self.spec.factor;
        base.iter_mut().zip(&diff).for_each(|(b, d)| *b += d * f);
        Ok(base)
    }
}
