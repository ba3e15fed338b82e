//! `slerp` (FusionBench `SlerpMergeAlgorithm`): spherical interpolation of each tensor of two
//! models, `v0` the pool's first model and `v1` its second.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use crate::device::{kernel_dtype, upload, Gpu};
use crate::inputs::Inputs;
use crate::lazy::{Merged, TensorMerge};
use crate::params;

/// SLERP: `t` 0.5, `DOT_THRESHOLD` 0.9995 (above it, linear interpolation), `epsilon` 1e-8
/// (norms at or below it are not normalized). The pool must hold exactly two models, counting
/// `_pretrained_` as FusionBench's `all_model_names` does.
pub struct Slerp {
    t: f64,
    dot_threshold: f64,
    epsilon: f64,
}

impl FromConfig for Slerp {
    fn from_config(config: &Config) -> Result<Self> {
        Ok(Slerp {
            t: config.get_or("t", 0.5)?,
            dot_threshold: config.get_or("DOT_THRESHOLD", 0.9995)?,
            epsilon: config.get_or("epsilon", 1e-8)?,
        })
    }
}

impl Algorithm for Slerp {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        params::compute(ctx, "slerp")?;
        let names = pool.all_model_names()?;
        if names.len() != 2 {
            return Err(Error::config(format!(
                "slerp merges exactly 2 models, the pool has {}: {}",
                names.len(),
                names.join(", ")
            )));
        }
        let inputs = Inputs::open_named(pool, "slerp", false, &names, 2)?;
        tracing::info!(v0 = %names[0], v1 = %names[1], t = self.t, "slerp");
        let merge = SlerpTensor {
            inputs: inputs.clone(),
            t: self.t,
            dot_threshold: self.dot_threshold,
            epsilon: self.epsilon,
        };
        Merged::model(ctx, inputs, merge)
    }
}

struct SlerpTensor {
    inputs: Inputs,
    t: f64,
    dot_threshold: f64,
    epsilon: f64,
}

/// The coefficients `(s0, s1)` of `s0·v0 + s1·v1` (FusionBench `slerp_utils.slerp`), from the
/// norms and the dot product of the two tensors.
pub fn slerp_coefficients(
    t: f64,
    norm0: f64,
    norm1: f64,
    dot: f64,
    dot_threshold: f64,
    eps: f64,
) -> (f64, f64) {
    let n0 = if norm0 > eps { norm0 } else { 1.0 };
    let n1 = if norm1 > eps { norm1 } else { 1.0 };
    let dot = dot / (n0 * n1);
    if dot.abs() > dot_threshold {
        return (1.0 - t, t);
    }
    let theta0 = dot.acos();
    let sin0 = theta0.sin();
    let theta_t = theta0 * t;
    ((theta0 - theta_t).sin() / sin0, theta_t.sin() / sin0)
}

impl TensorMerge for SlerpTensor {
    fn merge<'c>(&self, c: &'c dyn Compute, name: &str, info: &TensorInfo) -> Result<Gpu<'c>> {
        let [a, b] = [&self.inputs.models[0], &self.inputs.models[1]];
        let v0 = upload(c, &a.model, &a.name, name)?;
        let v1 = upload(c, &b.model, &b.name, name)?;
        let norm0 = f64::from(fusion_kernels::l2_norm(c, v0.id())?);
        let norm1 = f64::from(fusion_kernels::l2_norm(c, v1.id())?);
        let dot = f64::from(fusion_kernels::dot(c, v0.id(), v1.id())?);
        let (s0, s1) =
            slerp_coefficients(self.t, norm0, norm1, dot, self.dot_threshold, self.epsilon);
        let out = fusion_kernels::weighted_sum(
            c,
            &[(v0.id(), s0 as f32), (v1.id(), s1 as f32)],
            kernel_dtype(info.dtype),
        )?;
        Ok(Gpu::adopt(c, out))
    }
}
