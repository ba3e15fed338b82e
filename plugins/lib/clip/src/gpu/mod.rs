//! CLIP on the compute device: the vision and text towers written once over an op API
//! ([`Backend`]), run as the kernel library's dense operations ([`fusion_kernels::nn`]) launched through the
//! host's [`Compute`](fusion_plugin_api::Compute) handle, so a plugin that only sees `&dyn Compute` can
//! run them, or, when that handle's adapter is the CPU itself (lavapipe), as native code
//! ([`native`]) on every core ([`BackendChoice`]; `FUSION_CLIP_BACKEND=wgsl` forces the
//! kernels).
//!
//! The towers are defined once (the encoder's pre-LN blocks, the vision and text towers over
//! it) and load their weights through the parameter table of [`crate::arch`], from a
//! [`WeightStore`](crate::WeightStore) or a plugin-api [`Model`](fusion_plugin_api::Model), as
//! f32 tensors on the backend: a merged model whose tensors are already on the device
//! ([`Model::device_tensor`](fusion_plugin_api::Model::device_tensor)) hands them to the WGSL
//! backend where they are, with no read-back and no upload ([`GpuClipVision::from_model`]);
//! activations stay on the device, and only the requested outputs are read back. The plain
//! f32 model of the `oracle` feature is the reference every kernel and tower is tested
//! against; no run-time path uses it.
//!
//! Limits come from the device: a batch whose activations would exceed one storage binding is
//! split into passes ([`GpuClipVision::max_batch`]), workgroups are spread over x/y/z, and a
//! weight too large for one binding is an error naming it.
//!
//! ```no_run
//! # fn demo(compute: &dyn fusion_plugin_api::Compute, merged: &fusion_plugin_api::Model,
//! #         pixels: &fusion_clip::Tensor, prompts: &fusion_clip::TokenBatch) -> fusion_clip::Result<()> {
//! use fusion_clip::gpu::{GpuClipModel, GpuClipVision};
//! use fusion_clip::{CheckpointConfig, WeightStore};
//!
//! let dir = std::path::Path::new("clip-vit-base-patch32");
//! let CheckpointConfig::Clip(config) = CheckpointConfig::from_file(dir.join("config.json"))? else {
//!     unreachable!("a CLIPModel checkpoint")
//! };
//! // The text side once: zero-shot head from the class prompts.
//! let clip = GpuClipModel::load_text_only(compute, &WeightStore::open_dir(dir)?, &config)?;
//! let head = clip.encode_texts(prompts)?;
//! // Each merged vision tower, read lazily from the state dict.
//! let vision = GpuClipVision::from_model(compute, merged, &config.vision_config)?;
//! let image_embeds = clip.encode_images_with(&vision, pixels)?;
//! let logits = clip.logits(&image_embeds, &head)?; // [images, classes]
//! # let _ = logits; Ok(()) }
//! ```

pub mod backend;
mod encoder;
mod model;
pub mod moe;
pub mod native;
mod text;
pub mod train;
pub(crate) mod vision;

pub use backend::{Backend, BackendChoice, BackendKind};

/// Sets the matrix-product kernel ([`fusion_kernels::nn::GemmKernel`] by name: `registers`,
/// `tiled8`, `tiled16`, `subgroup`, `cooperative`, or `auto` / `None` for the tuned choice) of
/// every later WGSL product in this process, from the run's configuration key `key` (named in
/// errors). It takes precedence over the `FUSION_GEMM` environment variable. The native path
/// is not affected.
pub fn set_gemm_kernel(key: &'static str, name: Option<&str>) -> crate::Result<()> {
    fusion_kernels::nn::set_gemm_override(key, name)?;
    Ok(())
}
pub use model::GpuClipModel;
pub use text::GpuClipText;
pub use vision::GpuClipVision;
