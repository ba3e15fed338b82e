//! Training on the compute device: the CLIP vision tower's forward pass that keeps its
//! activations on the device, its backward pass over the WGSL backward kernels of
//! [`fusion_kernels::nn`] (the general product [`gemm`](fusion_kernels::nn::gemm), layer-norm,
//! softmax, activation and attention backward, the two losses), FusionBench's zero-shot head,
//! and the layer-wise task-arithmetic merge `θ_l = θ0_l + Σ_i λ_{i,l} τ_{i,l}` whose
//! coefficients layer-wise AdaMerging trains, with `∂L/∂λ_{i,l} = ⟨∂L/∂θ_l, τ_{i,l}⟩` reduced
//! on the device.
//!
//! It is the device twin of [`crate::autograd`] (the CPU reference, itself checked against
//! PyTorch autograd): the same parameter table ([`crate::arch::VisionParams`], here over
//! device tensors), the same layer structure and the same saved activations, so a test holds
//! the two equal on the same weights and both equal to the PyTorch fixture. Only the loss, the
//! logits and the `[models, tensors]` λ gradients are read back; weights, activations and
//! weight gradients stay on the device.
//!
//! ```no_run
//! # fn demo(c: &dyn fusion_plugin_api::Compute, pre: fusion_clip::autograd::VisionParams,
//! #         tvs: Vec<fusion_clip::autograd::VisionParams>, projection: &[f32],
//! #         text_embeds: &[f32], pixels: &[f32]) -> fusion_clip::Result<()> {
//! use fusion_clip::autograd::Objective;
//! use fusion_clip::gpu::train::{loss_and_gradients, DeviceHead, DeviceLayerWiseMerge};
//!
//! let merge = DeviceLayerWiseMerge::upload(c, &pre, &tvs)?;
//! let head = DeviceHead::new(c, projection, pre.config.hidden_size, text_embeds, 10, 100.0)?;
//! let lambdas = vec![0.3; merge.num_models() * merge.num_tensors()];
//! let merged = merge.merge(&lambdas)?; // θ on the device
//! let g = loss_and_gradients(c, &merged, &head, pixels, 16, Objective::Entropy { eps: 1e-8 })?;
//! let d_lambda = merge.lambda_gradients(&g.weights)?; // [models, tensors], on the host
//! # let _ = d_lambda; Ok(()) }
//! ```

mod head;
mod merge;
mod tower;

pub use head::{loss_and_gradients, pooled_output, DeviceGradients, DeviceHead};
pub use merge::DeviceLayerWiseMerge;
pub use tower::{download_params, upload_params, DeviceParams};
