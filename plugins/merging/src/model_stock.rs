//! `model_stock` (FusionBench `fusion_bench.method.model_stock.ModelStock`, Jang et al. 2024):
//! per tensor, the average angle between the fine-tuned task vectors sets how far the average
//! of the fine-tuned models moves back towards the pretrained one.

use std::collections::HashSet;

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use crate::device::{kernel_dtype, upload, Gpu};
use crate::inputs::Inputs;
use crate::lazy::{Merged, TensorMerge};
use crate::params;

/// FusionBench's `EPS` in `model_stock.py`.
const EPS: f64 = 1e-8;

/// Model Stock: `ignore_keys` (tensors that take the plain average; FusionBench's config lists
/// six OpenCLIP names). `model_save_path` and `model_save_kwargs` are accepted and ignored: the
/// host saves the merged model (`merged_model_save_path`).
pub struct ModelStock {
    ignore_keys: HashSet<String>,
}

impl FromConfig for ModelStock {
    fn from_config(config: &Config) -> Result<Self> {
        let ignore: Vec<String> = config.get_or("ignore_keys", Vec::new())?;
        if config.get::<String>("model_save_path")?.is_some() {
            tracing::info!("model_stock: `model_save_path` is ignored; save with the program's `merged_model_save_path`");
        }
        config.accept("model_save_kwargs");
        Ok(ModelStock {
            ignore_keys: ignore.into_iter().collect(),
        })
    }
}

impl Algorithm for ModelStock {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        params::compute(ctx, "model_stock")?;
        let inputs = Inputs::open(pool, "model_stock", true, 2)?;
        tracing::info!(models = inputs.models.len(), "model stock");
        let merge = StockTensor {
            inputs: inputs.clone(),
            ignore: self.ignore_keys.clone(),
        };
        Merged::model(ctx, inputs, merge)
    }
}

/// The interpolation ratio `t = k·cos θ / ((k − 1)·cos θ + 1 + ε)` for `k` models whose task
/// vectors make the average angle `angle_deg` (FusionBench `compute_ratio`).
pub fn model_stock_ratio(k: usize, angle_deg: f64) -> f64 {
    let cos = angle_deg.to_radians().cos();
    k as f64 * cos / ((k as f64 - 1.0) * cos + 1.0 + EPS)
}

/// The angle in degrees between two task vectors from their dot product and squared norms
/// (FusionBench `compute_angle`: an f32 cosine, clamped, `acos` in f32).
pub fn model_stock_angle(dot: f64, sq0: f64, sq1: f64) -> f64 {
    let cos = (dot / ((sq0 * sq1).sqrt() + EPS)) as f32;
    f64::from(cos.clamp(-1.0, 1.0).acos()).to_degrees()
}

struct StockTensor {
    inputs: Inputs,
    ignore: HashSet<String>,
}

impl TensorMerge for StockTensor {
    fn merge<'c>(&self, c: &'c dyn Compute, name: &str, info: &TensorInfo) -> Result<Gpu<'c>> {
        let b = self.inputs.base();
        let base = upload(c, &b.model, &b.name, name)?;
        let k = self.inputs.models.len();
        let sum = Gpu::zeros(c, DType::F32, &info.shape)?;
        let ignored = self.ignore.contains(name);
        // The pairwise angles need every task vector of this tensor at once (k of them).
        let mut tvs = Vec::with_capacity(if ignored { 0 } else { k });
        for m in &self.inputs.models {
            let x = upload(c, &m.model, &m.name, name)?;
            fusion_kernels::accumulate(c, sum.id(), &[(x.id(), 1.0)])?;
            if !ignored {
                tvs.push(Gpu::adopt(
                    c,
                    fusion_kernels::task_vector(c, x.id(), base.id(), DType::F32)?,
                ));
            }
        }
        let inv_k = 1.0 / k as f32;
        let dtype = kernel_dtype(info.dtype);
        if ignored {
            return Ok(Gpu::adopt(
                c,
                fusion_kernels::weighted_sum(c, &[(sum.id(), inv_k)], dtype)?,
            ));
        }
        let sq = tvs
            .iter()
            .map(|t| fusion_kernels::sum_squares(c, t.id()).map(f64::from))
            .collect::<Result<Vec<_>>>()?;
        let (mut total, mut pairs) = (0.0, 0usize);
        for i in 0..k {
            for j in i + 1..k {
                let dot = f64::from(fusion_kernels::dot(c, tvs[i].id(), tvs[j].id())?);
                total += model_stock_angle(dot, sq[i], sq[j]);
                pairs += 1;
            }
        }
        drop(tvs);
        let ratio = model_stock_ratio(k, total / pairs as f64);
        // θ = r·mean(θᵢ) + (1 − r)·θ₀; the mean is formed first, as FusionBench does.
        let mean = Gpu::adopt(
            c,
            fusion_kernels::weighted_sum(c, &[(sum.id(), inv_k)], DType::F32)?,
        );
        drop(sum);
        let out = fusion_kernels::weighted_sum(
            c,
            &[(mean.id(), ratio as f32), (base.id(), (1.0 - ratio) as f32)],
            dtype,
        )?;
        Ok(Gpu::adopt(c, out))
    }
}
