//! CLIP for fusion-host: Hugging Face checkpoints (`CLIPModel` and `CLIPVisionModel`), the CLIP
//! BPE tokenizer, `CLIPImageProcessor` preprocessing, and both towers defined once over an op
//! API that runs natively on the CPU or as WGSL kernels on the compute device.
//!
//! - [`arch`]: the architecture written down once: the encoder's dimensions, the attention
//!   shape, and each tower's parameter table (checkpoint names, shapes, transformers' order).
//! - [`gpu`]: the towers and the whole model over the op API ([`gpu::Backend`]), loaded
//!   through that table from a checkpoint or from a merged model on the device. This is what
//!   runs.
//! - [`autograd`]: the vision tower forward and backward on the CPU over the same parameter
//!   table: the gradient of a loss with respect to every weight and to layer-wise merge
//!   coefficients (AdaMerging).
//! - `oracle` (tests and the `oracle` feature only): a plain f32 CPU model that loads on its
//!   own, the reference the other two are tested against, itself checked against golden
//!   outputs of transformers (`tests/data/clip-tiny`).
//!
//! Weights load strictly: a missing, mis-shaped or unused tensor is an error naming it; nothing
//! is silently initialized. See [`gpu`] for an example.

pub mod arch;
pub mod autograd;
mod config;
mod error;
pub mod gpu;
mod image;
#[cfg(any(test, feature = "oracle"))]
pub mod oracle;
mod output;
mod tensor;
mod tokenizer;
mod weights;

pub use arch::EncoderDims;
pub use config::{Activation, CheckpointConfig, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use error::{ClipError, Result};
pub use image::decode::{decode_image, RgbImage};
pub use image::processor::{
    ImageProcessor, ImageProcessorConfig, ResizeTarget, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub use image::resample::{center_crop, resize, Resample};
pub use output::{ClipOutput, TextOutput, VisionOutput};
pub use tensor::{l2_normalize_rows, matmul_transposed, Tensor};
pub use tokenizer::{ClipTokenizer, Padding, TokenBatch};
pub use weights::{VarBuilder, WeightStore, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};
