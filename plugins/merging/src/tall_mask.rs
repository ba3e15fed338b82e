//! TALL masks (Wang et al., 2024, "Localizing Task Information for Improved Model Merging and
//! Compression"), as FusionBench's `TallMaskTaskArithmeticAlgorithm`: one model per task, each
//! the pretrained model plus the multi-task vector restricted to that task's mask.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::Value;
use fusion_plugin_api::TensorInfo;

use crate::cpu::{load, task_vectors, CpuMerge, CpuMerged};
use crate::inputs::Inputs;

const NAME: &str = "tall_mask";

/// TALL-mask task arithmetic. With τₜ = θₜ − θ₀ and the multi-task vector τ = Σₜ τₜ, task t's
/// mask keeps the entries where `|θ₀ − τₜ| > λ·|τ − τₜ|`, and its model is θ₀ + maskₜ ⊙ τ. Every
/// float tensor is masked; non-float tensors are θ₀'s.
///
/// The comparison is FusionBench's, reproduced as it is: it compares the pretrained weights
/// with the task vector (`|θ₀ − τₜ|`), where the paper compares θ₀ with the fine-tuned weights
/// (`|θ₀ − θₜ| = |τₜ|`).
///
/// Parameters (FusionBench's): `tall_mask_lambda` λ (required; its config file sets 0.6),
/// `debug` and `verbose` (accepted; logging is `tracing`'s). Returns FusionBench's
/// `{"models": {name: model}, "metadata": None}`: the models as `models/NAME`, one per pool
/// model, and a null `metadata`, which the host reports as FusionBench's program does.
pub struct TallMask {
    lambda: f32,
}

impl FromConfig for TallMask {
    fn from_config(config: &Config) -> Result<Self> {
        let lambda: f64 = config.require("tall_mask_lambda")?;
        if !lambda.is_finite() {
            return Err(Error::config(format!(
                "{NAME}: `tall_mask_lambda` must be a finite number, got {lambda}"
            )));
        }
        let _: i64 = config.get_or("debug", 0)?;
        let _: i64 = config.get_or("verbose", 0)?;
        Ok(TallMask {
            lambda: lambda as f32,
        })
    }
}

impl Algorithm for TallMask {
    fn run(&self, _pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        Err(Error::config(format!(
            "{NAME} returns one model per task (FusionBench's dict of models), not one merged \
             model; it cannot serve where a single model is expected"
        )))
    }

    fn run_models(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Vec<(String, Model)>> {
        let inputs = Inputs::open(pool, NAME, true, 1)?;
        tracing::info!(
            models = inputs.models.len(),
            tall_mask_lambda = self.lambda,
            "TALL masks (CPU): one model per task"
        );
        tracing::warn!(
            "{NAME}: masks compare |θ₀ − τₜ| (the pretrained weights against the task vector) \
             as FusionBench does, not the paper's |θ₀ − θₜ|"
        );
        let mut out: Vec<(String, Model)> = inputs
            .models
            .iter()
            .enumerate()
            .map(|(index, m)| {
                let one = TallOne {
                    index,
                    lambda: self.lambda,
                };
                (
                    format!("models/{}", m.name),
                    CpuMerged::model(inputs.clone(), one),
                )
            })
            .collect();
        out.push(("metadata".to_string(), Model::report_value(&Value::Null)));
        Ok(out)
    }
}

/// Task `index`'s model.
struct TallOne {
    index: usize,
    lambda: f32,
}

impl CpuMerge for TallOne {
    fn merge(&self, inputs: &Inputs, name: &str, _info: &TensorInfo) -> Result<Vec<f32>> {
        let tvs = task_vectors(inputs, name)?;
        let base = load(inputs.base(), name)?;
        Ok(tall_model(&base, &tvs, self.index, self.lambda))
    }
}

/// θ₀ + maskₜ ⊙ τ for task `t`, in f32 and FusionBench's order (τ summed from zero in model
/// order).
pub(crate) fn tall_model(base: &[f32], tvs: &[Vec<f32>], t: usize, lambda: f32) -> Vec<f32> {
    let mut multi = vec![0.0f32; base.len()];
    for tv in tvs {
        multi.iter_mut().zip(tv).for_each(|(m, x)| *m += x);
    }
    base.iter()
        .zip(&multi)
        .zip(&tvs[t])
        .map(|((&b, &m), &own)| {
            let keep = (b - own).abs() > (m - own).abs() * lambda;
            let mask = if keep { 1.0 } else { 0.0 };
            b + mask * m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::tall_model;

    /// By hand: θ₀ = [1, 0, 0.5], τ₁ = [0.2, 0.3, −1], τ₂ = [0.1, 0.1, 2], so τ = [0.3, 0.4, 1].
    /// Task 1: |θ₀ − τ₁| = [0.8, 0.3, 1.5] against λ·[0.1, 0.1, 2]; task 2: [0.9, 0.1, 1.5]
    /// against λ·[0.2, 0.3, 1].
    #[test]
    fn masks_by_hand() {
        let base = [1.0, 0.0, 0.5];
        let tvs = vec![vec![0.2, 0.3, -1.0], vec![0.1, 0.1, 2.0]];
        let near = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(near(&tall_model(&base, &tvs, 0, 0.5), &[1.3, 0.4, 1.5]));
        assert!(near(&tall_model(&base, &tvs, 0, 5.0), &[1.3, 0.0, 0.5]));
        assert!(near(&tall_model(&base, &tvs, 1, 0.5), &[1.3, 0.0, 1.5]));
        // λ = 0 keeps every entry where |θ₀ − τₜ| > 0.
        assert!(near(
            &tall_model(&[0.2, 0.0], &[vec![0.2, 1.0]], 0, 0.0),
            &[0.2, 1.0]
        ));
    }
}
