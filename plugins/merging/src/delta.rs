//! Task vectors τ = θ − θ₀, plain or with DARE's random drop and rescale, in f32.

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::TensorInfo;

use crate::device::Gpu;
use crate::params;

/// DARE's settings (FusionBench `sparsity_ratio`, `rescale`, `only_on_linear_weights`) plus
/// the seed of its draws.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DareSpec {
    pub dare: fusion_kernels::Dare,
    pub only_on_linear_weights: bool,
}

impl DareSpec {
    /// Read FusionBench's DARE parameters (`sparsity_ratio` 0.5, `rescale` true,
    /// `only_on_linear_weights` false) and this plugin's `seed` (the program seed when absent).
    pub(crate) fn read(config: &Config) -> Result<(f64, bool, bool, Option<u64>)> {
        let p = params::unit_interval(
            config.get_or("sparsity_ratio", 0.5)?,
            "sparsity_ratio",
            config.target(),
        )?;
        let rescale = config.get_or("rescale", true)?;
        if rescale && p as f32 >= 1.0 {
            return Err(Error::config(format!(
                "{}: `sparsity_ratio` 1 with `rescale` divides by zero",
                config.target()
            )));
        }
        let only = config.get_or("only_on_linear_weights", false)?;
        let seed: Option<u64> = config.get("seed")?;
        Ok((p, rescale, only, seed))
    }

    /// Whether the drop applies to tensor `name`: every tensor, or with
    /// `only_on_linear_weights` only the weights of linear layers. A state dict does not say
    /// which module a tensor belongs to, so a linear weight is recognised as a 2-D `*.weight`
    /// whose name does not mention an embedding (`embed`), which holds for Hugging Face
    /// CLIP, ViT, BERT, T5 and Llama checkpoints.
    pub(crate) fn applies(&self, name: &str, info: &TensorInfo) -> bool {
        !self.only_on_linear_weights || is_linear_weight(name, info)
    }
}

/// A 2-D `*.weight` that is not an embedding table (see [`DareSpec::applies`]).
pub(crate) fn is_linear_weight(name: &str, info: &TensorInfo) -> bool {
    info.shape.len() == 2
        && name.ends_with(".weight")
        && !name.to_ascii_lowercase().contains("embed")
}

/// The random key of one model's tensor: masks differ between models (as torch's draws do,
/// one model after another) and depend only on names, never on visiting order.
pub(crate) fn random_key(model: &str, tensor: &str) -> u64 {
    fusion_kernels::tensor_key(&format!("{model}\u{1f}{tensor}"))
}

/// How a task vector is formed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Delta {
    /// τ = θ − θ₀.
    Plain,
    /// τ = DARE(θ − θ₀).
    Dare(DareSpec),
}

impl Delta {
    /// The f32 task vector of `model`'s tensor `name` (`x` on the device) against `base`.
    pub(crate) fn compute<'c>(
        &self,
        c: &'c dyn Compute,
        x: &Gpu<'_>,
        base: &Gpu<'_>,
        model: &str,
        name: &str,
        info: &TensorInfo,
    ) -> Result<Gpu<'c>> {
        let t = match self {
            Delta::Dare(spec) if spec.applies(name, info) => fusion_kernels::dare_delta(
                c,
                x.id(),
                base.id(),
                random_key(model, name),
                &spec.dare,
                DType::F32,
            )?,
            _ => fusion_kernels::task_vector(c, x.id(), base.id(), DType::F32)?,
        };
        Ok(Gpu::adopt(c, t))
    }
}
