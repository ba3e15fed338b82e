//! PNG and JPEG bytes to 8-bit RGB, the way `PIL.Image.open(..).convert("RGB")` sees them.

use std::io::Cursor;

use crate::error::{ClipError, Result};

/// An 8-bit RGB image, rows top to bottom, pixels `[r, g, b]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) data: Vec<u8>,
}

impl RgbImage {
    /// Wraps `width * height * 3` bytes.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * 3 {
            return Err(ClipError::input(
                "RgbImage::new",
                format!(
                    "{width}x{height} RGB needs {} bytes, got {}",
                    width * height * 3,
                    data.len()
                ),
            ));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixels, row-major, 3 bytes each.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

/// Decodes PNG or JPEG bytes (detected by their signature) and converts to RGB the way
/// `PIL.Image.convert("RGB")` does: gray is replicated, alpha is dropped (not composited),
/// palettes are expanded. 16-bit PNGs keep their high byte.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(bytes)
    } else {
        Err(ClipError::ImageDecode {
            format: "unknown",
            message: "not a PNG or JPEG (unrecognized signature)".into(),
        })
    }
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage> {
    let err = |e: png::DecodingError| ClipError::ImageDecode {
        format: "png",
        message: e.to_string(),
    };
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // Expand palettes and sub-byte depths to 8 bits, strip 16-bit to 8.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(err)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ClipError::ImageDecode {
            format: "png",
            message: "image too large".into(),
        })?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).map_err(err)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(ClipError::ImageDecode {
                format: "png",
                message: "palette was not expanded".into(),
            })
        }
    };
    let mut rgb = Vec::with_capacity(w * h * 3);
    for row in buf.chunks(info.line_size).take(h) {
        for px in row[..w * channels].chunks_exact(channels) {
            match channels {
                1 | 2 => rgb.extend_from_slice(&[px[0]; 3]),
                _ => rgb.extend_from_slice(&px[..3]),
            }
        }
    }
    RgbImage::new(w, h, rgb)
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(|e| ClipError::ImageDecode {
        format: "jpeg",
        message: format!("{e:?}"),
    })?;
    let info = decoder.info().ok_or_else(|| ClipError::ImageDecode {
        format: "jpeg",
        message: "no image header".into(),
    })?;
    RgbImage::new(usize::from(info.width), usize::from(info.height), pixels)
}
