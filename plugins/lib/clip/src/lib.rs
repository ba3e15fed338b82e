//! CLIP for fusion-host: Hugging Face checkpoints (`CLIPModel` and `CLIPVisionModel`), the CLIP
//! BPE tokenizer, `CLIPImageProcessor` preprocessing, and a plain f32 CPU forward pass of both
//! towers.
//!
//! The model code mirrors transformers' `modeling_clip.py` (config → embeddings → encoder
//! layers → pooling → projection) and descends weight names the way candle's `VarBuilder` does,
//! so each struct's fields are the checkpoint's names. The CPU forward pass is the reference
//! the WGSL kernels are tested against; the crate's tests check it against golden outputs of
//! transformers (`tests/data/clip-tiny`).
//!
//! The [`gpu`] module runs the same model as WGSL kernels through the host's compute handle.
//! The [`autograd`] module runs the vision tower forward and backward on the CPU: the gradient
//! of a loss with respect to every weight and to layer-wise merge coefficients (AdaMerging).
//!
//! Weights load strictly: a missing, mis-shaped or unused tensor is an error naming it; nothing
//! is silently initialized.
//!
//! ```no_run
//! use fusion_clip::{ClipModel, ClipTokenizer, ImageProcessor, Padding, Tensor};
//!
//! # fn main() -> fusion_clip::Result<()> {
//! let dir = std::path::Path::new("clip-vit-base-patch32");
//! let model = ClipModel::from_pretrained_dir(dir)?;
//! let tokenizer = ClipTokenizer::from_dir(dir)?;
//! let processor = ImageProcessor::from_dir(dir)?;
//!
//! let texts = tokenizer.encode_batch(&["a photo of a cat.", "a photo of a dog."], Padding::Longest, 77)?;
//! let pixels = processor.preprocess_bytes(&std::fs::read("cat.png").unwrap())?;
//! let pixels = pixels.reshape(vec![1, 3, 224, 224])?;
//! let out = model.forward(&pixels, &texts)?;
//! println!("{:?}", out.logits_per_image.data()); // [1, 2]: cat should win
//! # Ok(())
//! # }
//! ```

pub mod autograd;
mod config;
mod encoder;
mod error;
pub mod gpu;
mod image;
mod model;
mod nn;
mod tensor;
mod text;
mod tokenizer;
mod vision;
mod weights;

pub use config::{Activation, CheckpointConfig, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use encoder::{
    AttentionMask, ClipAttention, ClipEncoder, ClipEncoderLayer, ClipMlp, EncoderDims,
    EncoderOutput,
};
pub use error::{ClipError, Result};
pub use image::decode::{decode_image, RgbImage};
pub use image::processor::{
    ImageProcessor, ImageProcessorConfig, ResizeTarget, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub use image::resample::{center_crop, resize, Resample};
pub use model::{ClipModel, ClipOutput, ClipVisionModel};
pub use nn::{Embedding, LayerNorm, Linear};
pub use tensor::{l2_normalize_rows, matmul_transposed, Tensor};
pub use text::{ClipTextEmbeddings, ClipTextTransformer, TextOutput, TokenBatch};
pub use tokenizer::{ClipTokenizer, Padding};
pub use vision::{ClipVisionEmbeddings, ClipVisionTransformer, VisionOutput};
pub use weights::{VarBuilder, WeightStore, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};
