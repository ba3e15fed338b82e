//! A port of Pillow's `ImagingResample` (`src/libImaging/Resample.c`) for 8-bit images:
//! separable passes, horizontal then vertical, whose filter support widens with the downscale
//! factor (antialiasing), with 22-bit fixed-point coefficients and rounding to 8 bits after each
//! pass. A plain Catmull-Rom sampler differs by whole intensity levels when downscaling
//! photographs; this port gives the same bytes as Pillow. Also transformers' `center_crop`.

use crate::error::{ClipError, Result};
use crate::image::decode::RgbImage;

/// A Pillow resampling filter (`preprocessor_config.json`'s `resample`, PIL's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// 0: nearest neighbour.
    Nearest,
    /// 1: Lanczos (a = 3).
    Lanczos,
    /// 2: bilinear (triangle).
    Bilinear,
    /// 3: bicubic (a = -0.5): what CLIP uses.
    Bicubic,
    /// 4: box.
    Box,
    /// 5: Hamming.
    Hamming,
}

impl Resample {
    /// From PIL's integer code.
    pub fn from_pil(code: u32) -> Option<Self> {
        Some(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            _ => return None,
        })
    }

    /// Half-width of the kernel at scale 1 (Pillow's `filter.support`).
    fn support(self) -> f64 {
        match self {
            Resample::Nearest | Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    /// The kernel, exactly as Pillow writes it.
    fn kernel(self, x: f64) -> f64 {
        use std::f64::consts::PI;
        let sinc = |x: f64| {
            if x == 0.0 {
                1.0
            } else {
                (x * PI).sin() / (x * PI)
            }
        };
        match self {
            Resample::Nearest | Resample::Box => {
                // Pillow's interval is (-0.5, 0.5].
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Resample::Bilinear => (1.0 - x.abs()).max(0.0),
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point precision of Pillow's 8-bit resampler.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: the first input index, the number of taps, and `ksize` fixed-point
/// weights (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, out_size: usize, filter: Resample) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    // Downscaling widens the kernel by the scale factor: this is the antialiasing.
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // `(int)` truncation as in C, then clamping.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.kernel((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, &kx) in k.iter().enumerate().take(xmax) {
            let kx = if ww != 0.0 { kx / ww } else { kx };
            let fixed = kx * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if fixed < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(ss: i64) -> u8 {
    if ss >= 1 << (PRECISION_BITS + 8) {
        255
    } else if ss <= 0 {
        0
    } else {
        (ss >> PRECISION_BITS) as u8
    }
}

/// Resizes to `width x height` like `PIL.Image.resize(size, resample)` on an RGB image.
pub fn resize(image: &RgbImage, width: usize, height: usize, filter: Resample) -> Result<RgbImage> {
    if width == 0 || height == 0 || image.width == 0 || image.height == 0 {
        return Err(ClipError::input(
            "resize",
            format!(
                "cannot resize {}x{} to {width}x{height}",
                image.width, image.height
            ),
        ));
    }
    if filter == Resample::Nearest {
        return Ok(resize_nearest(image, width, height));
    }
    let mut current = image.clone();
    if width != current.width {
        current = resample_horizontal(&current, width, filter);
    }
    if height != current.height {
        current = resample_vertical(&current, height, filter);
    }
    Ok(current)
}

fn resample_horizontal(image: &RgbImage, width: usize, filter: Resample) -> RgbImage {
    let c = precompute_coeffs(image.width, width, filter);
    let mut out = Vec::with_capacity(width * image.height * 3);
    for row in image.data.chunks_exact(image.width * 3) {
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..][..n];
            for ch in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (x, &kx) in k.iter().enumerate() {
                    ss += i64::from(row[(xmin + x) * 3 + ch]) * i64::from(kx);
                }
                out.push(clip8(ss));
            }
        }
    }
    RgbImage {
        width,
        height: image.height,
        data: out,
    }
}

fn resample_vertical(image: &RgbImage, height: usize, filter: Resample) -> RgbImage {
    let c = precompute_coeffs(image.height, height, filter);
    let stride = image.width * 3;
    let mut out = Vec::with_capacity(stride * height);
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..][..n];
        for i in 0..stride {
            let mut ss: i64 = 1 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                ss += i64::from(image.data[(ymin + y) * stride + i]) * i64::from(ky);
            }
            out.push(clip8(ss));
        }
    }
    RgbImage {
        width: image.width,
        height,
        data: out,
    }
}

/// Pillow's nearest resize (`ImagingScaleAffine`): the source pixel under each output pixel's
/// center. The position is accumulated by repeated addition, as Pillow does, because the
/// rounding of that sum decides which pixel is taken at exact ties.
fn resize_nearest(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    let positions = |out_size: usize, in_size: usize| -> Vec<usize> {
        let step = in_size as f64 / out_size as f64;
        let mut pos = step * 0.5;
        (0..out_size)
            .map(|_| {
                let p = (pos as usize).min(in_size - 1);
                pos += step;
                p
            })
            .collect()
    };
    let (xs, ys) = (
        positions(width, image.width),
        positions(height, image.height),
    );
    let mut data = Vec::with_capacity(width * height * 3);
    for &sy in &ys {
        for &sx in &xs {
            let p = (sy * image.width + sx) * 3;
            data.extend_from_slice(&image.data[p..p + 3]);
        }
    }
    RgbImage {
        width,
        height,
        data,
    }
}

/// Crops the centered `width x height` window, padding with black where the image is
/// smaller, exactly as transformers' `center_crop` (offsets rounded down).
pub fn center_crop(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (w, h) = (image.width as i64, image.height as i64);
    let (cw, ch) = (width as i64, height as i64);
    // transformers pads to at least the crop size with the image centered (ceil), then takes
    // the window at the floor offset shifted by that padding.
    let pad_top = (ch - h).max(0).div_euclid(2) + (ch - h).max(0).rem_euclid(2);
    let pad_left = (cw - w).max(0).div_euclid(2) + (cw - w).max(0).rem_euclid(2);
    let top = (h - ch).div_euclid(2) + pad_top;
    let left = (w - cw).div_euclid(2) + pad_left;
    let mut data = vec![0u8; width * height * 3];
    for y in 0..ch {
        // Row in the original image.
        let sy = top + y - pad_top;
        if !(0..h).contains(&sy) {
            continue;
        }
        for x in 0..cw {
            let sx = left + x - pad_left;
            if !(0..w).contains(&sx) {
                continue;
            }
            let src = ((sy * w + sx) * 3) as usize;
            let dst = ((y * cw + x) * 3) as usize;
            data[dst..dst + 3].copy_from_slice(&image.data[src..src + 3]);
        }
    }
    RgbImage {
        width,
        height,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(width: usize, height: usize, f: impl Fn(usize, usize) -> u8) -> RgbImage {
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&[f(x, y); 3]);
            }
        }
        RgbImage::new(width, height, data).unwrap()
    }

    #[test]
    fn box_halving_averages_blocks() {
        let img = gray(4, 2, |x, y| (x * 10 + y * 100) as u8);
        let out = resize(&img, 2, 1, Resample::Box).unwrap();
        // Block (0..2, 0..2): 0, 10, 100, 110 -> 55; block (2..4): 20, 30, 120, 130 -> 75.
        assert_eq!(out.data(), &[55, 55, 55, 75, 75, 75]);
    }
    #[test]
    fn constant_image_stays_constant_under_every_filter() {
        let img = gray(13, 7, |_, _| 77);
        for f in [
            Resample::Bicubic,
            Resample::Bilinear,
            Resample::Lanczos,
            Resample::Hamming,
            Resample::Box,
            Resample::Nearest,
        ] {
            for (w, h) in [(5, 3), (29, 17), (13, 20)] {
                let out = resize(&img, w, h, f).unwrap();
                assert!(out.data().iter().all(|&v| v == 77), "{f:?} {w}x{h}");
            }
        }
    }
    #[test]
    fn nearest_doubling_repeats_pixels() {
        let img = gray(2, 1, |x, _| x as u8 * 200);
        let out = resize(&img, 4, 1, Resample::Nearest).unwrap();
        assert_eq!(
            out.data().chunks(3).map(|p| p[0]).collect::<Vec<_>>(),
            vec![0, 0, 200, 200]
        );
    }
    #[test]
    fn center_crop_floors_offsets_and_pads_small_images() {
        let img = gray(5, 1, |x, _| x as u8);
        let out = center_crop(&img, 2, 1);
        assert_eq!(
            out.data().chunks(3).map(|p| p[0]).collect::<Vec<_>>(),
            vec![1, 2]
        );
        // Too small: the image is centered (ceil) in black.
        let out = center_crop(&gray(1, 1, |_, _| 9), 2, 3);
        assert_eq!(
            out.data().chunks(3).map(|p| p[0]).collect::<Vec<_>>(),
            vec![0, 0, 0, 9, 0, 0]
        );
    }
}
