//! Image preprocessing with the semantics of transformers' `CLIPImageProcessor`, read from
//! `preprocessor_config.json`: decode and convert to RGB ([`decode`]), resize with Pillow's
//! resampler and center crop ([`resample`]), rescale, normalize, channels first
//! ([`processor`]).

pub(crate) mod decode;
pub(crate) mod processor;
pub(crate) mod resample;
