//! FusionBench's continual baselines of OPCM (`opcm/task_arithmetic`, `opcm/ties_merging`,
//! `opcm/weight_average`): task arithmetic, TIES-merging and weight averaging applied one model
//! at a time, in f32 as FusionBench computes them.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use super::{continual_algorithm, run_continual, Common, Continual, Run};
use crate::cpu::load;

/// Step `t` of `method` on every float tensor of `state` (the whole model), with that step's
/// figures `step` (given those, each tensor's update depends on that tensor alone).
fn replay_all<C: Continual>(
    method: &C,
    run: &Run,
    state: &mut [Vec<f32>],
    t: usize,
    step: &C::Step,
) -> Result<()> {
    for ((name, info), value) in run.floats.iter().zip(state.iter_mut()) {
        method.replay(run, name, info, value, t, step)?;
    }
    Ok(())
}

/// Continual task arithmetic (`ContinualTaskArithmeticForCLIP`): θ ← θ + λ(θₜ − θ₀) for each
/// model in turn, from θ₀. Parameters (FusionBench's): `scaling_factor` λ (required; the config
/// file sets 0.3), `shuffle_order` (true), `seed` (null), `save_on_every_step` (true; the
/// models are returned as `model_K`), `evaluate_on_every_step` (false).
pub struct ContinualTaskArithmetic {
    scaling_factor: f32,
    common: Common,
}

impl FromConfig for ContinualTaskArithmetic {
    fn from_config(config: &Config) -> Result<Self> {
        let s: f64 = config.require("scaling_factor")?;
        Ok(ContinualTaskArithmetic {
            scaling_factor: s as f32,
            common: Common::read(config, TaMerge::NAME)?,
        })
    }
}

impl ContinualTaskArithmetic {
    fn models(
        &self,
        pool: &dyn ModelPool,
        ctx: &Context,
        every_step: bool,
    ) -> Result<Vec<(String, Model)>> {
        let merge = TaMerge(self.scaling_factor);
        run_continual(merge, &self.common.order, every_step, pool, ctx)
    }
}

struct TaMerge(f32);

impl Continual for TaMerge {
    type Step = ();
    const NAME: &'static str = "continual_task_arithmetic";
    const FROM_FIRST: bool = false;

    fn step_name(t: usize) -> String {
        format!("model_{t}")
    }

    fn advance(&mut self, run: &Run, state: &mut [Vec<f32>], t: usize) -> Result<()> {
        replay_all(self, run, state, t, &())
    }

    fn replay(
        &self,
        run: &Run,
        name: &str,
        _info: &TensorInfo,
        value: &mut Vec<f32>,
        t: usize,
        _step: &(),
    ) -> Result<()> {
        let pre = load(run.base(), name)?;
        let task = load(run.model(t), name)?;
        for ((v, p), x) in value.iter_mut().zip(&pre).zip(&task) {
            *v += self.0 * (x - p);
        }
        Ok(())
    }
}

/// Continual weight average (`ContinualWeightAverageForCLIP`): θ starts as the first model and
/// θ ← (t·θ + θₜ)/(t + 1) for the t-th next one (the running mean). No `_pretrained_` needed.
/// Parameters (FusionBench's): `shuffle_order` (true), `seed` (null), `save_on_every_step`
/// (true; the models are returned as `merged_model_K`), `evaluate_on_every_step` (false).
pub struct ContinualWeightAverage {
    common: Common,
}

impl FromConfig for ContinualWeightAverage {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(ContinualWeightAverage {
            common: Common::read(config, WaMerge::NAME)?,
        })
    }
}

impl ContinualWeightAverage {
    fn models(
        &self,
        pool: &dyn ModelPool,
        ctx: &Context,
        every_step: bool,
    ) -> Result<Vec<(String, Model)>> {
        run_continual(WaMerge, &self.common.order, every_step, pool, ctx)
    }
}

continual_algorithm!(
    ContinualTaskArithmetic,
    ContinualWeightAverage,
    ContinualTiesMerging
);

struct WaMerge;

impl Continual for WaMerge {
    type Step = ();
    const NAME: &'static str = "continual_weight_average";
    const WITH_BASE: bool = false;
    const FROM_FIRST: bool = true;

    fn step_name(t: usize) -> String {
        format!("merged_model_{t}")
    }

    fn advance(&mut self, run: &Run, state: &mut [Vec<f32>], t: usize) -> Result<()> {
        replay_all(self, run, state, t, &())
    }

    fn replay(
        &self,
        run: &Run,
        name: &str,
        _info: &TensorInfo,
        value: &mut Vec<f32>,
        t: usize,
        _step: &(),
    ) -> Result<()> {
        let task = load(run.model(t), name)?;
        let (k, k1) = (t as f32, (t + 1) as f32);
        for (v, x) in value.iter_mut().zip(&task) {
            *v = (*v * k + x) / k1;
        }
        Ok(())
    }
}

/// TIES' disjoint merge function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MergeFunc {
    Sum,
    Mean,
    Max,
}

/// Continual TIES-merging (`ContinualTiesMergingForCLIP`): θ starts as θ₀ + λτ₀; for each next
/// model, the merged task vector θ − θ₀ and the model's task vector τₜ are TIES-merged (each
/// trimmed to its top `threshold`% magnitudes over the whole model, signs elected, disjoint
/// merge) and θ ← θ + λ·merged. Parameters (FusionBench's): `scaling_factor` λ and `threshold`
/// (required; the config file sets 0.5 and 20), `remove_keys` ([]), `merge_func` (sum; mean,
/// max), `shuffle_order` (true), `seed` (null), `save_on_every_step` (true; the models are
/// returned as `model_K`), `evaluate_on_every_step` (false).
pub struct ContinualTiesMerging {
    scaling_factor: f32,
    /// The kept fraction K (a `threshold` above 1 is a percentage).
    keep: f64,
    remove_keys: Vec<String>,
    merge_func: MergeFunc,
    common: Common,
}

impl FromConfig for ContinualTiesMerging {
    fn from_config(config: &Config) -> Result<Self> {
        const NAME: &str = TiesMerge::NAME;
        let s: f64 = config.require("scaling_factor")?;
        let threshold: f64 = config.require("threshold")?;
        let keep = if threshold > 1.0 {
            threshold / 100.0
        } else {
            threshold
        };
        if !(0.0..1.0).contains(&keep) {
            return Err(Error::config(format!(
                "{NAME}: `threshold` {threshold} keeps {}% of the entries; FusionBench's TIES \
                 takes a percentage below 100 (or a fraction below 1)",
                keep * 100.0
            )));
        }
        let merge_func: String = config.get_or("merge_func", "sum".to_string())?;
        let merge_func = match merge_func.rsplit('-').next().unwrap_or("") {
            "sum" => MergeFunc::Sum,
            "mean" => MergeFunc::Mean,
            "max" => MergeFunc::Max,
            _ => {
                return Err(Error::config(format!(
                    "{NAME}: `merge_func` {merge_func:?} is not one of sum, mean, max"
                )))
            }
        };
        Ok(ContinualTiesMerging {
            scaling_factor: s as f32,
            keep,
            remove_keys: config
                .get::<Vec<String>>("remove_keys")?
                .unwrap_or_default(),
            merge_func,
            common: Common::read(config, NAME)?,
        })
    }
}

impl ContinualTiesMerging {
    fn models(
        &self,
        pool: &dyn ModelPool,
        ctx: &Context,
        every_step: bool,
    ) -> Result<Vec<(String, Model)>> {
        if !self.remove_keys.is_empty() && pool.model_names()?.len() > 1 {
            let reference = pool.load_model(&pool.model_names()?[0])?;
            let names = reference.names()?;
            if let Some(key) = self.remove_keys.iter().find(|k| names.contains(k)) {
                return Err(Error::config(format!(
                    "{}: `remove_keys` names `{key}`, a tensor of the models; FusionBench's \
                     continual TIES leaves removed keys out of the merged task vector and then \
                     fails looking them up (KeyError) from the second model on, so it has no \
                     result to reproduce. Leave `remove_keys` empty",
                    TiesMerge::NAME
                )));
            }
        }
        let merge = TiesMerge {
            scaling_factor: self.scaling_factor,
            keep: self.keep,
            merge_func: self.merge_func,
        };
        run_continual(merge, &self.common.order, every_step, pool, ctx)
    }
}

struct TiesMerge {
    scaling_factor: f32,
    keep: f64,
    merge_func: MergeFunc,
}

/// The whole-model figures of a TIES step.
#[derive(Clone, Debug)]
enum TiesStep {
    /// Step 0: the first task vector is taken whole.
    First,
    /// The two rows' trim thresholds (kth smallest magnitudes) and the majority sign that
    /// replaces an elected sign of zero.
    Merge {
        kth_merged: f32,
        kth_task: f32,
        majority: f32,
    },
}

/// torch.sign.
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The k-th smallest (1-based) of `values`.
fn kth_smallest(mut values: Vec<f32>, k: usize) -> f32 {
    let (_, kth, _) = values.select_nth_unstable_by(k - 1, f32::total_cmp);
    *kth
}

impl TiesMerge {
    /// The merged entry of one position: merged task vector `m`, task vector `x`.
    fn entry(&self, m: f32, x: f32, kth_m: f32, kth_x: f32, majority: f32) -> f32 {
        let tm = if m.abs() >= kth_m { m } else { 0.0 };
        let tx = if x.abs() >= kth_x { x } else { 0.0 };
        let mut s = sign(tm + tx);
        if s == 0.0 {
            s = majority;
        }
        let keep = |v: f32| if s > 0.0 { v > 0.0 } else { v < 0.0 };
        let sm = if keep(tm) { tm } else { 0.0 };
        let sx = if keep(tx) { tx } else { 0.0 };
        match self.merge_func {
            MergeFunc::Sum => sm + sx,
            MergeFunc::Mean => {
                let count = usize::from(sm != 0.0) + usize::from(sx != 0.0);
                (sm + sx) / count.max(1) as f32
            }
            MergeFunc::Max => sm.abs().max(sx.abs()) * s,
        }
    }
}

impl Continual for TiesMerge {
    type Step = TiesStep;
    const NAME: &'static str = "continual_ties_merging";
    const FROM_FIRST: bool = false;

    fn step_name(t: usize) -> String {
        format!("model_{t}")
    }

    fn advance(&mut self, run: &Run, state: &mut [Vec<f32>], t: usize) -> Result<TiesStep> {
        let step = if t == 0 {
            TiesStep::First
        } else {
            let mut merged_abs = Vec::new();
            let mut task_abs = Vec::new();
            for ((name, _), value) in run.floats.iter().zip(state.iter()) {
                let pre = load(run.base(), name)?;
                let task = load(run.model(t), name)?;
                merged_abs.extend(value.iter().zip(&pre).map(|(v, p)| (v - p).abs()));
                task_abs.extend(task.iter().zip(&pre).map(|(v, p)| (v - p).abs()));
            }
            let d = merged_abs.len();
            // topk_values_mask: k = d − int(d·K), the k-th smallest magnitude is the threshold.
            let k = d - (d as f64 * self.keep) as usize;
            let kth_merged = kth_smallest(merged_abs, k);
            let kth_task = kth_smallest(task_abs, k);
            let mut votes: i64 = 0;
            for ((name, _), value) in run.floats.iter().zip(state.iter()) {
                let pre = load(run.base(), name)?;
                let task = load(run.model(t), name)?;
                for ((v, p), x) in value.iter().zip(&pre).zip(&task) {
                    let (m, x) = (v - p, x - p);
                    let tm = if m.abs() >= kth_merged { m } else { 0.0 };
                    let tx = if x.abs() >= kth_task { x } else { 0.0 };
                    votes += sign(tm + tx) as i64;
                }
            }
            TiesStep::Merge {
                kth_merged,
                kth_task,
                majority: sign(votes as f32),
            }
        };
        replay_all(self, run, state, t, &step)?;
        Ok(step)
    }

    fn replay(
        &self,
        run: &Run,
        name: &str,
        _info: &TensorInfo,
        value: &mut Vec<f32>,
        t: usize,
        step: &TiesStep,
    ) -> Result<()> {
        let pre = load(run.base(), name)?;
        let task = load(run.model(t), name)?;
        let sf = self.scaling_factor;
        match *step {
            TiesStep::First => {
                for ((v, p), x) in value.iter_mut().zip(&pre).zip(&task) {
                    *v += sf * (x - p);
                }
            }
            TiesStep::Merge {
                kth_merged,
                kth_task,
                majority,
            } => {
                for ((v, p), x) in value.iter_mut().zip(&pre).zip(&task) {
                    let merged = self.entry(*v - p, x - p, kth_merged, kth_task, majority);
                    *v += sf * merged;
                }
            }
        }
        Ok(())
    }
}
