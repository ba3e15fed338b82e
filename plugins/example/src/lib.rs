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
//!
//! The arithmetic runs on the host's GPU through the template's own WGSL kernel
//! (`src/interpolate.wgsl`, `y = a·y + b·x`), launched with plugin-api's [`kernel`] layer: tensors
//! owned by [`DeviceTensor`] (freed on drop, f16/bf16 converted to f32 at the edges), the uniform
//! block a `#[repr(C)]` struct, the grid and the chunks fitted to the device.
//!
//! [`kernel`]: fusion_plugin_api::kernel

use std::borrow::Cow;
use std::collections::HashSet;

use fusion_plugin_api::kernel::chunks;
use fusion_plugin_api::prelude::*;

/// The uniform block of `interpolate.wgsl`, field for field.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[bytemuck(crate = "fusion_plugin_api::bytemuck")]
struct Axpby {
    len: u32,
    a: f32,
    b: f32,
}

/// `y = a·y + b·x`, one invocation per element.
fn axpby_kernel() -> Kernel {
    Kernel::with_prelude(
        "interpolate_axpby",
        include_str!("interpolate.wgsl"),
        "axpby",
    )
    .workgroup_size(256)
}

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
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        // Fail now, not at the first tensor, when the run has no device.
        ctx.compute()?;
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
            ctx: ctx.clone(),
            kernel: axpby_kernel(),
        }))
    }
}

/// The merged model, computed tensor by tensor on request.
struct Lazy {
    base: Model,
    others: Vec<Model>,
    alpha: f32,
    keep: HashSet<String>,
    /// Holds the host's compute handle for as long as the model lives.
    ctx: Context,
    kernel: Kernel,
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
        let c = self.ctx.compute()?;
        // The running result starts as θ₀ on the device; each model then adds its share:
        // y = (1 − α)·θ₀ + w·θ₁ for the first, y = y + w·θᵢ for the rest, w = α / n.
        let acc = DeviceTensor::from_model_f32(c, &self.base, name)?;
        let weight = self.alpha / self.others.len() as f32;
        for (i, model) in self.others.iter().enumerate() {
            let x = DeviceTensor::from_model_f32(c, model, name)?;
            let a = if i == 0 { 1.0 - self.alpha } else { 1.0 };
            // A tensor larger than one storage binding is done in chunks.
            for chunk in chunks(&c.limits(), info.numel() as u64) {
                let params = Axpby {
                    len: chunk.len as u32,
                    a,
                    b: weight,
                };
                let bindings = [
                    chunk.binding(acc.id(), DType::F32, false),
                    chunk.binding(x.id(), DType::F32, true),
                ];
                self.kernel.launch_1d(c, &bindings, &params, chunk.len)?;
            }
        }
        let out = acc.to_f32()?;
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
