//! `simple_average` and `weighted_average` (FusionBench `SimpleAverageAlgorithm`,
//! `WeightedAverageAlgorithm`): θ = Σ wᵢθᵢ over the models to merge (`_pretrained_` is not one
//! of them), accumulated model by model in f32 as FusionBench does, scaled at the end.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use crate::device::{kernel_dtype, upload, Gpu};
use crate::inputs::Inputs;
use crate::lazy::{Merged, TensorMerge};
use crate::params;

/// θ = (1/N) Σᵢ θᵢ.
///
/// Config: FusionBench's `show_pbar` and `inplace` are accepted and have no effect here (the
/// result is a new lazy model, never an input modified in place).
pub struct SimpleAverage;

impl FromConfig for SimpleAverage {
    fn from_config(config: &Config) -> Result<Self> {
        let _: bool = config.get_or("show_pbar", false)?;
        let _: bool = config.get_or("inplace", true)?;
        Ok(SimpleAverage)
    }
}

impl Algorithm for SimpleAverage {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        params::compute(ctx, "simple_average")?;
        let inputs = Inputs::open(pool, "simple_average", false, 1)?;
        let n = inputs.models.len();
        tracing::info!(models = n, "simple average");
        let merge = Linear {
            inputs: inputs.clone(),
            weights: vec![1.0; n],
            scale: 1.0 / n as f32,
        };
        Merged::model(ctx, inputs, merge)
    }
}

/// θ = Σᵢ wᵢθᵢ, with `w ← w / Σw` when `normalize` (default true). `weights` (one per model,
/// required) is FusionBench's; its config file sets `[0.5, 0.5]`.
pub struct WeightedAverage {
    weights: Vec<f64>,
    normalize: bool,
}

impl FromConfig for WeightedAverage {
    fn from_config(config: &Config) -> Result<Self> {
        let weights: Vec<f64> = config.require("weights")?;
        let normalize = config.get_or("normalize", true)?;
        let _: bool = config.get_or("verbose", true)?;
        if normalize && weights.iter().sum::<f64>() == 0.0 {
            return Err(Error::config(
                "weighted_average: `weights` sum to 0 and cannot be normalized",
            ));
        }
        Ok(WeightedAverage { weights, normalize })
    }
}

impl Algorithm for WeightedAverage {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        params::compute(ctx, "weighted_average")?;
        let inputs = Inputs::open(pool, "weighted_average", false, 1)?;
        if self.weights.len() != inputs.models.len() {
            return Err(Error::config(format!(
                "weighted_average: {} weights for {} models ({})",
                self.weights.len(),
                inputs.models.len(),
                inputs
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // Normalized in f64 like FusionBench's numpy arrays, then applied in f32.
        let total: f64 = self.weights.iter().sum();
        let weights: Vec<f32> = self
            .weights
            .iter()
            .map(|w| if self.normalize { w / total } else { *w } as f32)
            .collect();
        tracing::info!(?weights, "weighted average");
        let merge = Linear {
            inputs: inputs.clone(),
            weights,
            scale: 1.0,
        };
        Merged::model(ctx, inputs, merge)
    }
}

/// `scale · Σᵢ wᵢθᵢ`, one model resident at a time: an f32 accumulator, one input, the result.
struct Linear {
    inputs: Inputs,
    weights: Vec<f32>,
    scale: f32,
}

impl TensorMerge for Linear {
    fn merge<'c>(&self, c: &'c dyn Compute, name: &str, info: &TensorInfo) -> Result<Gpu<'c>> {
        let acc = Gpu::zeros(c, DType::F32, &info.shape)?;
        for (m, &w) in self.inputs.models.iter().zip(&self.weights) {
            let x = upload(c, &m.model, &m.name, name)?;
            fusion_kernels::accumulate(c, acc.id(), &[(x.id(), w)])?;
        }
        let out =
            fusion_kernels::weighted_sum(c, &[(acc.id(), self.scale)], kernel_dtype(info.dtype))?;
        Ok(Gpu::adopt(c, out))
    }
}
