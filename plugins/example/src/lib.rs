//! A template fusion algorithm for fusion-host: copy this folder, rename it, change the math.
//!
//! `interpolate` moves the pretrained model towards the average of the fine-tuned models:
//!
//! θ = (1 − α)·θ₀ + α·mean(θ₁ … θₙ)
//!
//! with `alpha` (α, default 0.5) from the config. Tensors listed in `keep_pretrained` are copied
//! from the pretrained model unchanged. The merged model is *lazy*: each tensor is computed when
//! the host asks for it (to save or evaluate it), so memory stays at a few tensors whatever the
//! model size.

use std::borrow::Cow;
use std::collections::HashSet;

use fusion_plugin_api::prelude::*;

/// The algorithm and its parameters.
pub struct Interpolate {
    alpha: f32,
    keep_pretrained: HashSet<String>,
}

impl FromConfig for Interpolate {
    fn from_config(config: &Config) -> Result<Self> {
        let alpha: f32 = config.get_or("alpha", 0.5)?;
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::config(format!(
                "`alpha` must be between 0 and 1, got {alpha}"
            )));
        }
        let keep: Vec<String> = config.get_or("keep_pretrained", Vec::new())?;
        Ok(Self {
            alpha,
            keep_pretrained: keep.into_iter().collect(),
        })
    }
}

impl Algorithm for Interpolate {
    fn run(&self, pool: &dyn ModelPool, _ctx: &Context) -> Result<Model> {
        let base = pool.load_pretrained()?;
        let names = pool.model_names()?;
        if names.is_empty() {
            return Err(Error::config(
                "interpolate needs at least one model besides `_pretrained_`",
            ));
        }
        let others = names
            .iter()
            .map(|n| pool.load_model(n))
            .collect::<Result<Vec<_>>>()?;
        // Check names and shapes up front, so a mismatch is reported before any work.
        for name in base.names()? {
            let info = base.info(&name)?;
            for (model, model_name) in others.iter().zip(&names) {
                let other = model
                    .info(&name)
                    .map_err(|e| e.context(format!("model `{model_name}`")))?;
                if other.shape != info.shape {
                    return Err(Error::model(format!(
                        "tensor `{name}`: `_pretrained_` has shape {:?}, `{model_name}` has {:?}",
                        info.shape, other.shape
                    )));
                }
            }
        }
        tracing::info!(models = others.len(), alpha = self.alpha, "interpolating");
        Ok(Model::new(Lazy {
            base,
            others,
            alpha: self.alpha,
            keep: self.keep_pretrained.clone(),
        }))
    }
}

/// The merged model, computed tensor by tensor on request.
struct Lazy {
    base: Model,
    others: Vec<Model>,
    alpha: f32,
    keep: HashSet<String>,
}

impl StateDict for Lazy {
    fn names(&self) -> Result<Vec<String>> {
        self.base.names()
    }

    fn info(&self, name: &str) -> Result<TensorInfo> {
        self.base.info(name)
    }

    fn data(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let info = self.base.info(name)?;
        if self.keep.contains(name) || !info.dtype.is_float() {
            return Ok(Cow::Owned(self.base.data(name)?.into_owned()));
        }
        let (mut out, _) = self.base.to_f32(name)?;
        let weight = self.alpha / self.others.len() as f32;
        for v in out.iter_mut() {
            *v *= 1.0 - self.alpha;
        }
        for model in &self.others {
            let (x, _) = model.to_f32(name)?;
            for (o, x) in out.iter_mut().zip(x) {
                *o += weight * x;
            }
        }
        // Written back in the input dtype (f32, f16 or bf16).
        Ok(Cow::Owned(fusion_plugin_api::f32_to_bytes(
            &out, info.dtype,
        )?))
    }

    fn file_names(&self) -> Result<Vec<String>> {
        self.base.file_names()
    }

    fn file(&self, name: &str) -> Result<Vec<u8>> {
        self.base.file(name)
    }
}

fusion_plugin_api::export_plugin! {
    algorithm Interpolate {
        names: ["interpolate", "fusion_example.Interpolate"],
        description: "Template: move the pretrained model towards the mean of the others, θ = (1−α)θ₀ + α·mean(θᵢ).",
    }
}
