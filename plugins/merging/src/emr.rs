//! EMR merging (Huang et al., 2024, "EMR-Merging: Tuning-Free High-Performance Model Merging"),
//! as FusionBench's `EMRMerging`: elect a unified task vector, then give each task a mask and a
//! rescaler that bring it back towards that task's own model.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use crate::cpu::{load, task_vectors, CpuMerge, CpuMerged};
use crate::inputs::Inputs;

const NAME: &str = "emr_merging";

/// EMR merging. With task vectors τₜ = θₜ − θ₀, on every float tensor:
/// - elect: γ = sign(Σₜ τₜ), zero counting as negative (FusionBench's `(x > 0) * 2 − 1`);
/// - mask: mₜ = (τₜ·γ > 0), where task t agrees with the elected sign;
/// - unified vector: τ_uni = γ · maxₜ |mₜ ⊙ τₜ|;
/// - rescale: rₜ = Σ_tensors mean|τₜ| / Σ_tensors mean|τ_uni ⊙ mₜ| (one number per task, over
///   the whole model).
///
/// Task t's model is θ₀ + (τ_uni ⊙ mₜ)·rₜ. FusionBench returns these as one modulated model
/// whose task is switched before each evaluation; fusion-host returns them as a dict of
/// models, one per pool model under its name, which the host saves and reports one by one.
/// Non-float tensors are θ₀'s. FusionBench's config takes no parameters.
pub struct EmrMerging;

impl FromConfig for EmrMerging {
    fn from_config(_config: &Config) -> Result<Self> {
        Ok(EmrMerging)
    }
}

impl Algorithm for EmrMerging {
    fn run(&self, _pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        Err(Error::config(format!(
            "{NAME} returns one model per task (each task's mask and rescaler applied to the \
             unified task vector), not one merged model; it cannot serve where a single model \
             is expected"
        )))
    }

    fn run_models(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Vec<(String, Model)>> {
        let inputs = Inputs::open(pool, NAME, true, 1)?;
        let rescalers = rescalers(&inputs)?;
        tracing::info!(
            models = inputs.models.len(),
            ?rescalers,
            "EMR merging (CPU): one model per task"
        );
        Ok(inputs
            .models
            .iter()
            .enumerate()
            .map(|(index, m)| {
                let one = EmrOne {
                    index,
                    rescaler: rescalers[index],
                };
                (m.name.clone(), CpuMerged::model(inputs.clone(), one))
            })
            .collect())
    }
}

/// Every tensor EMR acts on: the float, non-empty ones.
fn float_tensors(inputs: &Inputs) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for name in inputs.names()? {
        let info = inputs.info(&name)?;
        if info.dtype.is_float() && info.numel() > 0 {
            out.push(name);
        }
    }
    Ok(out)
}

/// One tensor's elected signs, masks and unified vector.
struct Elected {
    /// mₜ, one per task.
    masks: Vec<Vec<bool>>,
    unified: Vec<f32>,
}

fn elect(tvs: &[Vec<f32>]) -> Elected {
    let n = tvs[0].len();
    let mut sum = vec![0.0f32; n];
    for tv in tvs {
        sum.iter_mut().zip(tv).for_each(|(s, x)| *s += x);
    }
    let flag: Vec<f32> = sum
        .iter()
        .map(|&s| if s > 0.0 { 1.0 } else { -1.0 })
        .collect();
    let mut max = vec![0.0f32; n];
    let mut masks = Vec::with_capacity(tvs.len());
    for tv in tvs {
        let mask: Vec<bool> = tv.iter().zip(&flag).map(|(x, g)| x * g > 0.0).collect();
        for ((m, &x), &keep) in max.iter_mut().zip(tv).zip(&mask) {
            let a = if keep { x.abs() } else { 0.0 };
            if a > *m {
                *m = a;
            }
        }
        masks.push(mask);
    }
    let unified = max.iter().zip(&flag).map(|(m, g)| m * g).collect();
    Elected { masks, unified }
}

/// The mean of |values| in f64, rounded to f32 as torch's `mean` returns it.
fn mean_abs(values: impl Iterator<Item = f32>, n: usize) -> f32 {
    (values.map(|v| f64::from(v.abs())).sum::<f64>() / n as f64) as f32
}

/// Each task's rescaler, from a pass over every tensor (one tensor of every model at a time);
/// a task whose mask keeps nothing has none, an error naming the model.
fn rescalers(inputs: &Inputs) -> Result<Vec<f32>> {
    let t = inputs.models.len();
    // f32 accumulators in tensor order, as FusionBench's `scales` tensors.
    let mut scales = vec![0.0f32; t];
    let mut new_scales = vec![0.0f32; t];
    for name in float_tensors(inputs)? {
        let tvs = task_vectors(inputs, &name)?;
        let e = elect(&tvs);
        let n = e.unified.len();
        for m in 0..t {
            scales[m] += mean_abs(tvs[m].iter().copied(), n);
            let kept = e
                .unified
                .iter()
                .zip(&e.masks[m])
                .map(|(&u, &k)| if k { u } else { 0.0 });
            new_scales[m] += mean_abs(kept, n);
        }
    }
    (0..t)
        .map(|m| {
            if new_scales[m] > 0.0 {
                Ok(scales[m] / new_scales[m])
            } else {
                Err(Error::model(format!(
                    "{NAME}: model `{}` agrees with the elected signs nowhere (its task vector \
                     is zero, or opposes the others everywhere), so its rescaler \
                     mean|τ| / mean|τ_uni ⊙ mask| is undefined",
                    inputs.models[m].name
                )))
            }
        })
        .collect()
}

/// Task `index`'s model: θ₀ + (τ_uni ⊙ mₜ)·rₜ.
struct EmrOne {
    index: usize,
    rescaler: f32,
}

impl CpuMerge for EmrOne {
    fn merge(&self, inputs: &Inputs, name: &str, _info: &TensorInfo) -> Result<Vec<f32>> {
        let tvs = task_vectors(inputs, name)?;
        let e = elect(&tvs);
        let mut out = load(inputs.base(), name)?;
        for ((o, &u), &keep) in out.iter_mut().zip(&e.unified).zip(&e.masks[self.index]) {
            *o += (if keep { u } else { 0.0 }) * self.rescaler;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::elect;

    /// By hand: τ₁ = [0.5, −0.2, 0, 0.1], τ₂ = [−0.1, −0.4, 0.3, −0.1]. Sum [0.4, −0.6, 0.3, 0]:
    /// γ = [1, −1, 1, −1] (a zero sum counts as negative). Masks: task 1 [1, 1, 0, 0], task 2
    /// [0, 1, 1, 1]. τ_uni = γ·max|m ⊙ τ| = [0.5, −0.4, 0.3, −0.1].
    #[test]
    fn elect_by_hand() {
        let e = elect(&[vec![0.5, -0.2, 0.0, 0.1], vec![-0.1, -0.4, 0.3, -0.1]]);
        assert_eq!(e.masks[0], [true, true, false, false]);
        assert_eq!(e.masks[1], [false, true, true, true]);
        assert_eq!(e.unified, [0.5, -0.4, 0.3, -0.1]);
    }
}
