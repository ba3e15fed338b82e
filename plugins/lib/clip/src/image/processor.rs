//! `CLIPImageProcessor`: settings from `preprocessor_config.json`, and the pipeline (resize,
//! center crop, rescale, normalize, channels first).

use std::path::Path;

use serde::Deserialize;

use crate::error::{ClipError, Result};
use crate::image::decode::{decode_image, RgbImage};
use crate::image::resample::{center_crop, resize, Resample};
use crate::tensor::Tensor;

/// The mean OpenAI's CLIP was trained with (`OPENAI_CLIP_MEAN`).
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// The standard deviation OpenAI's CLIP was trained with (`OPENAI_CLIP_STD`).
// Written as transformers writes them, so the two can be compared by eye; f32 rounds them.
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// `size` / `crop_size` in `preprocessor_config.json`: a bare integer (configs written before
/// transformers 4.26) or a dictionary.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Int(usize),
    Dict {
        shortest_edge: Option<usize>,
        height: Option<usize>,
        width: Option<usize>,
    },
}

/// How to resize, resolved from `size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Scale so the shorter side has this length, keeping the aspect ratio.
    ShortestEdge(usize),
    /// Resize to exactly this size.
    Exact {
        /// Target height.
        height: usize,
        /// Target width.
        width: usize,
    },
}

#[derive(Deserialize)]
struct RawProcessorConfig {
    #[serde(default = "yes")]
    do_convert_rgb: bool,
    #[serde(default = "yes")]
    do_resize: bool,
    size: Option<SizeSpec>,
    #[serde(default = "bicubic")]
    resample: u32,
    #[serde(default = "yes")]
    do_center_crop: bool,
    crop_size: Option<SizeSpec>,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "inv_255")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_normalize: bool,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
}

fn yes() -> bool {
    true
}
fn bicubic() -> u32 {
    3
}
fn inv_255() -> f64 {
    1.0 / 255.0
}

/// `CLIPImageProcessor`'s settings. Missing keys take transformers' defaults (224, bicubic,
/// OpenAI's mean and std).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessorConfig {
    /// Whether to resize, and to what.
    pub resize: Option<ResizeTarget>,
    /// The resampling filter.
    pub resample: Resample,
    /// The center-crop size `(height, width)`, if cropping.
    pub crop: Option<(usize, usize)>,
    /// Multiplier applied to the 0-255 values, if rescaling.
    pub rescale_factor: Option<f64>,
    /// Per-channel `(mean, std)`, if normalizing.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ClipError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a `preprocessor_config.json`; `path` names it in errors.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let raw: RawProcessorConfig =
            serde_json::from_str(text).map_err(|source| ClipError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let bad = |message: String| ClipError::Config {
            path: path.to_path_buf(),
            message,
        };
        if !raw.do_convert_rgb {
            // Decoding always yields RGB; a checkpoint that asks otherwise expects other input.
            return Err(bad(
                "do_convert_rgb: false is not supported (images are always converted to RGB)"
                    .into(),
            ));
        }
        let resize = if raw.do_resize {
            Some(match raw.size.unwrap_or(SizeSpec::Int(224)) {
                // CLIP resizes with default_to_square=False: an integer is the shortest edge.
                SizeSpec::Int(n) => ResizeTarget::ShortestEdge(n),
                SizeSpec::Dict {
                    shortest_edge: Some(n),
                    ..
                } => ResizeTarget::ShortestEdge(n),
                SizeSpec::Dict {
                    height: Some(height),
                    width: Some(width),
                    ..
                } => ResizeTarget::Exact { height, width },
                other => return Err(bad(format!("unsupported size {other:?}"))),
            })
        } else {
            None
        };
        let crop = if raw.do_center_crop {
            Some(match raw.crop_size.unwrap_or(SizeSpec::Int(224)) {
                SizeSpec::Int(n) => (n, n),
                SizeSpec::Dict {
                    height: Some(h),
                    width: Some(w),
                    ..
                } => (h, w),
                other => return Err(bad(format!("unsupported crop_size {other:?}"))),
            })
        } else {
            None
        };
        let three = |v: Option<Vec<f32>>, default: [f32; 3], key: &str| -> Result<[f32; 3]> {
            match v {
                None => Ok(default),
                Some(v) => <[f32; 3]>::try_from(v.as_slice())
                    .map_err(|_| bad(format!("{key} has {} values, expected 3", v.len()))),
            }
        };
        let normalize = if raw.do_normalize {
            Some((
                three(raw.image_mean, OPENAI_CLIP_MEAN, "image_mean")?,
                three(raw.image_std, OPENAI_CLIP_STD, "image_std")?,
            ))
        } else {
            None
        };
        Ok(Self {
            resize,
            resample: Resample::from_pil(raw.resample)
                .ok_or_else(|| bad(format!("unknown resample code {}", raw.resample)))?,
            crop,
            rescale_factor: raw.do_rescale.then_some(raw.rescale_factor),
            normalize,
        })
    }
}

/// Turns images into `pixel_values` like `CLIPImageProcessor`.
#[derive(Clone, Debug)]
pub struct ImageProcessor {
    config: ImageProcessorConfig,
}

impl ImageProcessor {
    /// A processor with the given settings.
    pub fn new(config: ImageProcessorConfig) -> Self {
        Self { config }
    }

    /// Reads `preprocessor_config.json` from a checkpoint directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(ImageProcessorConfig::from_file(
            dir.as_ref().join("preprocessor_config.json"),
        )?))
    }

    /// The settings.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// The size of the output, `(height, width)`, for an input of `width x height`.
    fn resized_size(&self, width: usize, height: usize) -> Option<(usize, usize)> {
        match self.config.resize? {
            // transformers' get_resize_output_image_size(default_to_square=False): the long
            // side is truncated, not rounded.
            ResizeTarget::ShortestEdge(n) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                let new_long = (n as f64 * long as f64 / short as f64) as usize;
                Some(if width <= height {
                    (new_long, n)
                } else {
                    (n, new_long)
                })
            }
            ResizeTarget::Exact { height, width } => Some((height, width)),
        }
    }

    /// Resizes and crops, returning the 8-bit image the model will see.
    pub fn resize_and_crop(&self, image: &RgbImage) -> Result<RgbImage> {
        let mut image = match self.resized_size(image.width, image.height) {
            Some((h, w)) if (h, w) != (image.height, image.width) => {
                resize(image, w, h, self.config.resample)?
            }
            _ => image.clone(),
        };
        if let Some((h, w)) = self.config.crop {
            image = center_crop(&image, w, h);
        }
        Ok(image)
    }

    /// One image to `[3, height, width]` values.
    pub fn preprocess(&self, image: &RgbImage) -> Result<Tensor> {
        let image = self.resize_and_crop(image)?;
        let (w, h) = (image.width, image.height);
        let mut out = vec![0.0f32; 3 * h * w];
        for (i, px) in image.data.chunks_exact(3).enumerate() {
            for ch in 0..3 {
                // As transformers: rescale in f64 then cast to f32; normalize in f32.
                let mut v = match self.config.rescale_factor {
                    Some(f) => (f64::from(px[ch]) * f) as f32,
                    None => f32::from(px[ch]),
                };
                if let Some((mean, std)) = &self.config.normalize {
                    v = (v - mean[ch]) / std[ch];
                }
                out[ch * h * w + i] = v;
            }
        }
        Tensor::new(vec![3, h, w], out)
    }

    /// Encoded image bytes (PNG or JPEG) to `[3, height, width]` values.
    pub fn preprocess_bytes(&self, bytes: &[u8]) -> Result<Tensor> {
        self.preprocess(&decode_image(bytes)?)
    }

    /// Several images to `[batch, 3, height, width]`; they must all end up the same size
    /// (true whenever center cropping is on).
    pub fn preprocess_batch(&self, images: &[RgbImage]) -> Result<Tensor> {
        let mut shape: Option<Vec<usize>> = None;
        let mut data = Vec::new();
        for image in images {
            let t = self.preprocess(image)?;
            match &shape {
                None => shape = Some(t.shape().to_vec()),
                Some(s) if s.as_slice() != t.shape() => {
                    return Err(ClipError::input(
                        "ImageProcessor::preprocess_batch",
                        format!(
                            "images preprocess to different shapes: {s:?} and {:?}",
                            t.shape()
                        ),
                    ))
                }
                Some(_) => {}
            }
            data.extend(t.into_data());
        }
        let mut full = vec![images.len()];
        full.extend(shape.unwrap_or_else(|| vec![3, 0, 0]));
        Tensor::new(full, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_integer_sizes_parse() {
        let cfg = ImageProcessorConfig::from_json_str(
            r#"{"size": 224, "crop_size": 224, "resample": 3}"#,
            "p.json",
        )
        .unwrap();
        assert_eq!(cfg.resize, Some(ResizeTarget::ShortestEdge(224)));
        assert_eq!(cfg.crop, Some((224, 224)));
        assert_eq!(cfg.normalize, Some((OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)));
    }
    #[test]
    fn rejects_unknown_resample() {
        let err = ImageProcessorConfig::from_json_str(r#"{"resample": 9}"#, "p.json").unwrap_err();
        assert!(err.to_string().contains("resample"), "{err}");
    }
}
