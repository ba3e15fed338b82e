//! `ties_merging` (FusionBench `TiesMergingAlgorithm`) and `dare_ties_merging`
//! (`DareTiesMerging`).
//!
//! FusionBench (`fusion_bench/method/ties_merging/ties_merging.py` and `ties_merging_utils.py`)
//! flattens every model into one row, takes the task vectors `τᵢ = θᵢ − θ₀`, and then:
//!
//! 1. **trim** ([`trim`]): each model keeps the entries with `|τᵢ| >=` its k-th largest
//!    magnitude over the whole row (`threshold` percent of the entries kept, ties included);
//! 2. **elect** ([`elect`]): the elected sign per entry is `sign(Σᵢ trimmed τᵢ)`; where that is
//!    0, the majority sign `sign(Σ elected signs)` over the whole row;
//! 3. **disjoint merge** ([`merge`]): per entry, the trimmed entries whose sign agrees with the
//!    elected one, combined by `merge_func` (`sum`, `mean` over those kept, or `max |·|` times
//!    the sign); the merged model is `θ₀ + λ·τ`.
//!
//! [`run`] does exactly these steps, tensor by tensor instead of one row in memory. Steps 1 and 2
//! are whole-model statistics, so the models are read more than once; how often, and where the
//! tensors wait between reads, is the execution plan, kept apart from the math:
//!
//! - [`source`]: where a pass finds a key's tensors (the device cache, `crate::cache`, else the
//!   checkpoints), which launches a key takes (the fused one-launch merge of the kernel library,
//!   or a launch or two per model), and whether the election pass merges the key on the way;
//! - [`one_pass`]: one read of the models where the thresholds guessed from a sample hold;
//! - `crate::bracket`: those sampled thresholds, settled in one pass over a guessed range;
//! - the radix select of [`trim`] where they do not.
//!
//! The kernels (trim, elect and merge of one key on the device) are the kernel library's
//! `fusion_kernels::ties` functions, each checked there against a CPU reference.

mod elect;
mod merge;
mod one_pass;
mod source;
mod trim;

use one_pass::OnePass;

use std::collections::HashSet;

use fusion_kernels::{RadixDigit, RadixState, SignVotes, TiesAccumulator, TiesMerge};
use fusion_plugin_api::prelude::*;
use fusion_plugin_api::{Binding, GpuTensor, TensorInfo};

use crate::cache::{DeviceCache, Slot};
use crate::delta::Delta;
use crate::device::{kernel_dtype, upload, Gpu};
use crate::inputs::Inputs;
use crate::lazy::{Merged, TensorMerge};
use crate::params;
use crate::task_arithmetic::DareConfig;

use elect::add_trimmed;
use merge::TiesTensor;
use source::{held_at_once, Source};
use trim::{log_settled, RadixPass};

/// TIES-merging: `scaling_factor` 0.3, `threshold` 20 (percent kept; values ≤ 1 are fractions),
/// `remove_keys` [] (kept at the pretrained values), `merge_func` `sum` (or `mean`, `max`).
pub struct TiesMerging {
    settings: TiesSettings,
}

/// DARE, then TIES-merging on the dropped task vectors: `sparsity_ratio` 0.5, `rescale` true,
/// `only_on_linear_weights` false, `seed`, `scaling_factor` 0.5, `threshold` 20,
/// `remove_keys` [], `merge_func` `sum`.
pub struct DareTiesMerging {
    settings: TiesSettings,
    dare: DareConfig,
}

#[derive(Clone, Debug)]
struct TiesSettings {
    scaling_factor: f64,
    threshold: f64,
    remove_keys: HashSet<String>,
    merge_func: TiesMerge,
}

impl TiesSettings {
    fn read(config: &Config, default_scaling: f64) -> Result<Self> {
        let threshold: f64 = config.get_or("threshold", 20.0)?;
        if !(0.0..=100.0).contains(&threshold) {
            return Err(Error::config(format!(
                "{}: `threshold` is the percentage of entries kept, in [0, 100]; got {threshold}",
                config.target()
            )));
        }
        let merge_func: String = config.get_or("merge_func", "sum".to_string())?;
        Ok(TiesSettings {
            scaling_factor: config.get_or("scaling_factor", default_scaling)?,
            threshold,
            remove_keys: config
                .get_or::<Vec<String>>("remove_keys", Vec::new())?
                .into_iter()
                .collect(),
            merge_func: merge_func
                .parse()
                .map_err(|e: Error| e.context(config.target()))?,
        })
    }
}

impl FromConfig for TiesMerging {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(TiesMerging {
            settings: TiesSettings::read(config, 0.3)?,
        })
    }
}

impl Algorithm for TiesMerging {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        run(pool, ctx, "ties_merging", &self.settings, Delta::Plain)
    }
}

impl FromConfig for DareTiesMerging {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(DareTiesMerging {
            settings: TiesSettings::read(config, 0.5)?,
            dare: DareConfig::read(config)?,
        })
    }
}

impl Algorithm for DareTiesMerging {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let name = "dare_ties_merging";
        params::compute(ctx, name)?;
        run(pool, ctx, name, &self.settings, self.dare.delta(ctx, name))
    }
}

fn run(
    pool: &dyn ModelPool,
    ctx: &Context,
    algorithm: &str,
    s: &TiesSettings,
    delta: Delta,
) -> Result<Model> {
    let c = params::compute(ctx, algorithm)?;
    let inputs = Inputs::open(pool, algorithm, true, 1)?;
    for key in &s.remove_keys {
        if inputs.info(key).is_err() {
            tracing::warn!(
                "{algorithm}: `remove_keys` names `{key}`, which the models do not have"
            );
        }
    }
    let mut keys = Vec::new();
    for name in inputs.names()? {
        let info = inputs.info(&name)?;
        if info.dtype.is_float() && info.numel() > 0 && !s.remove_keys.contains(&name) {
            keys.push((name, info));
        }
    }
    let cache = DeviceCache::new(ctx, c, algorithm)?;
    let source = Source {
        inputs: &inputs,
        delta,
        cache: &cache,
    };
    let sweep = Sweep {
        c,
        source: &source,
        keys: &keys,
    };
    let early = EarlyMerge {
        merge: s.merge_func,
        lambda: s.scaling_factor as f32,
    };
    // 1. trim and 2. elect: every model's threshold and the majority sign, in one read of the
    // models where the sampled thresholds hold (one_pass), else the trim passes then the
    // election pass; either may merge keys on the way (kept in the device cache).
    let (thresholds, majority, merged_early) = match sweep.one_pass(ctx, s.threshold, early)? {
        OnePass::Done {
            thresholds,
            majority,
            merged_early,
        } => (thresholds, majority, merged_early),
        rest => {
            let thresholds = match rest {
                // The pass settled the thresholds whose ranges held; the rest take radix passes.
                OnePass::Missed { rank, found } => sweep.settle(ctx, rank, found)?,
                _ => sweep.thresholds(ctx, s.threshold)?,
            };
            let (majority, merged_early) = sweep.elect(ctx, &thresholds, early)?;
            (thresholds, majority, merged_early)
        }
    };
    let (entries, bytes) = cache.usage();
    tracing::info!(?thresholds, majority, merge_func = ?s.merge_func, merged_early, cached_tensors = entries, cached_mib = bytes >> 20, "{algorithm}: trimmed and elected");
    // 3. disjoint merge: each tensor of the merged model when it is asked for (merge.rs).
    let merge = TiesTensor {
        inputs: inputs.clone(),
        thresholds,
        majority,
        merge: s.merge_func,
        lambda: s.scaling_factor as f32,
        delta,
        removed: s.remove_keys.clone(),
        cache,
    };
    Merged::model(ctx, inputs, merge)
}

/// What the sign-election pass needs to merge keys early.
#[derive(Clone, Copy)]
struct EarlyMerge {
    merge: TiesMerge,
    lambda: f32,
}

impl EarlyMerge {
    /// The fused merge of a key of `info` with `thresholds` and `majority`.
    fn scaled<'a>(
        &self,
        thresholds: &'a [f32],
        majority: f32,
        info: &TensorInfo,
    ) -> fusion_kernels::ScaledTiesMerge<'a> {
        fusion_kernels::ScaledTiesMerge {
            thresholds,
            majority,
            merge: self.merge,
            lambda: self.lambda,
            dtype: kernel_dtype(info.dtype),
        }
    }
}

/// One pass over every kept tensor of every model.
struct Sweep<'a> {
    c: &'a dyn Compute,
    source: &'a Source<'a>,
    keys: &'a [(String, TensorInfo)],
}
