//! The plain f32 CPU model of CLIP: the test oracle, compiled for this crate's tests and with
//! the `oracle` feature only, never on a run-time path.
//!
//! It mirrors transformers' `modeling_clip.py` (config → embeddings → encoder layers → pooling
//! → projection) and loads by name the way candle's `VarBuilder` does, on its own rather than
//! through [`crate::arch`], so that it checks the op-API towers ([`crate::gpu`]) and the
//! autograd tower ([`crate::autograd`]) independently. Its tests hold it to golden outputs of
//! transformers (`tests/golden.rs`, `tests/data/clip-tiny`).
//!
//! ```no_run
//! use fusion_clip::oracle::ClipModel;
//! use fusion_clip::{ClipTokenizer, ImageProcessor, Padding};
//!
//! # fn main() -> fusion_clip::Result<()> {
//! let dir = std::path::Path::new("clip-vit-base-patch32");
//! let model = ClipModel::from_pretrained_dir(dir)?;
//! let tokenizer = ClipTokenizer::from_dir(dir)?;
//! let processor = ImageProcessor::from_dir(dir)?;
//! let texts = tokenizer.encode_batch(&["a photo of a cat.", "a photo of a dog."], Padding::Longest, 77)?;
//! let pixels = processor.preprocess_bytes(&std::fs::read("cat.png").unwrap())?;
//! let out = model.forward(&pixels.reshape(vec![1, 3, 224, 224])?, &texts)?;
//! println!("{:?}", out.logits_per_image.data()); // [1, 2]: cat should win
//! # Ok(())
//! # }
//! ```

mod encoder;
mod model;
mod nn;
mod text;
mod vision;

pub use encoder::{
    AttentionMask, ClipAttention, ClipEncoder, ClipEncoderLayer, ClipMlp, EncoderOutput,
};
pub use model::{ClipModel, ClipVisionModel};
pub use nn::{Embedding, LayerNorm, Linear};
pub use text::{ClipTextEmbeddings, ClipTextTransformer};
pub use vision::{ClipVisionEmbeddings, ClipVisionTransformer};
