//! Layer-wise task arithmetic on the device, `θ_l = θ0_l + Σ_i λ_{i,l} τ_{i,l}`, and the
//! gradient of a loss with respect to its coefficients, `∂L/∂λ_{i,l} = ⟨∂L/∂θ_l, τ_{i,l}⟩`, as
//! [`crate::autograd::LayerWiseMerge`] on the CPU (FusionBench's `LayerWiseMergedModel` with
//! `clamp_weights: false`).

use fusion_kernels::nn;
use fusion_plugin_api::Compute;

use super::tower::{upload_params, zeros_like, DeviceParams};
use crate::arch::VisionParams;
use crate::error::{ClipError, Result};

/// The pretrained tower and the task vectors on the device. Coefficients are `[models,
/// tensors]`, tensors in the parameter table's order ([`VisionParams::names`]).
pub struct DeviceLayerWiseMerge<'c> {
    c: &'c dyn Compute,
    pretrained: DeviceParams<'c>,
    task_vectors: Vec<DeviceParams<'c>>,
    /// Elements of each parameter tensor, in order.
    sizes: Vec<usize>,
}

impl<'c> DeviceLayerWiseMerge<'c> {
    /// From a pretrained tower and task vectors `τ_i = θ_i - θ0` already on the device.
    pub fn new(
        c: &'c dyn Compute,
        pretrained: DeviceParams<'c>,
        task_vectors: Vec<DeviceParams<'c>>,
    ) -> Result<Self> {
        if let Some(i) = task_vectors
            .iter()
            .position(|t| t.config != pretrained.config)
        {
            return Err(ClipError::input(
                "DeviceLayerWiseMerge::new",
                format!("task vector {i} has another configuration than the pretrained tower"),
            ));
        }
        let sizes = pretrained
            .names()
            .iter()
            .map(|(_, shape)| shape.iter().product())
            .collect();
        Ok(Self {
            c,
            pretrained,
            task_vectors,
            sizes,
        })
    }

    /// Uploads a pretrained tower and task vectors from the host.
    pub fn upload(
        c: &'c dyn Compute,
        pretrained: &VisionParams,
        task_vectors: &[VisionParams],
    ) -> Result<Self> {
        let tvs = task_vectors
            .iter()
            .map(|t| upload_params(c, t))
            .collect::<Result<Vec<_>>>()?;
        Self::new(c, upload_params(c, pretrained)?, tvs)
    }

    /// Number of task vectors (rows of the coefficients).
    pub fn num_models(&self) -> usize {
        self.task_vectors.len()
    }

    /// Number of parameter tensors (columns of the coefficients).
    pub fn num_tensors(&self) -> usize {
        self.sizes.len()
    }

    fn check(&self, op: &'static str, what: &str, len: usize) -> Result<()> {
        let want = self.num_models() * self.num_tensors();
        if len != want {
            return Err(ClipError::input(
                op,
                format!(
                    "{what} holds {len} values, [{} models, {} tensors] needs {want}",
                    self.num_models(),
                    self.num_tensors()
                ),
            ));
        }
        Ok(())
    }

    /// The merged tower for coefficients `lambdas: [models, tensors]`, on the device.
    pub fn merge(&self, lambdas: &[f32]) -> Result<DeviceParams<'c>> {
        self.check("DeviceLayerWiseMerge::merge", "lambdas", lambdas.len())?;
        let c = self.c;
        let t = self.num_tensors();
        let merged = zeros_like(c, &self.pretrained)?;
        for (l, (m, p)) in merged
            .params()
            .into_iter()
            .zip(self.pretrained.params())
            .enumerate()
        {
            let n = self.sizes[l];
            nn::copy_into(c, p.id(), m.id(), 0, n)?;
            for (i, tv) in self.task_vectors.iter().enumerate() {
                nn::scaled_add(c, tv.params()[l].id(), m.id(), n, lambdas[i * t + l])?;
            }
        }
        Ok(merged)
    }

    /// `∂L/∂λ_{i,l} = ⟨∂L/∂θ_l, τ_{i,l}⟩`, `[models, tensors]`, from the weight gradients at
    /// the merged tower: every dot product reduced on the device into one tensor, read back
    /// once.
    pub fn lambda_gradients(&self, weight_grads: &DeviceParams<'_>) -> Result<Vec<f32>> {
        if weight_grads.config != self.pretrained.config {
            return Err(ClipError::input(
                "DeviceLayerWiseMerge::lambda_gradients",
                "the gradients are of a tower with another configuration",
            ));
        }
        let c = self.c;
        let t = self.num_tensors();
        let out = nn::zeros(c, &[self.num_models().max(1), t])?;
        let grads = weight_grads.params();
        for (i, tv) in self.task_vectors.iter().enumerate() {
            for (l, (tau, g)) in tv.params().into_iter().zip(&grads).enumerate() {
                nn::dot(
                    c,
                    g.id(),
                    tau.id(),
                    self.sizes[l],
                    out.id(),
                    i * t + l,
                    false,
                )?;
            }
        }
        let mut v = nn::read_f32(c, out.id())?;
        v.truncate(self.num_models() * t);
        Ok(v)
    }
}
