//! DARE (Yu et al. 2024, "Language Models are Super Mario"): drop each task-vector entry with
//! probability `p` and rescale the survivors by `1 / (1 - p)`.
//!
//! FusionBench draws from torch's global RNG (`rand_like(x) > p`), so its masks depend on visit
//! order and cannot be reproduced outside torch. Here the draw for element `i` of a tensor is
//! Philox4x32-10 of the counter `(i, key(name))` under the key `seed`: the mask depends only on
//! (seed, tensor name, index), is the same in every run, chunking and visit order, and
//! [`dare_keep`] reproduces it bit for bit on the CPU. Keep/drop follows torch's comparison:
//! `u > p` with `u` a 24-bit uniform in [0, 1) and `p` rounded to f32.
//!
//! Rescaling multiplies by the f32 `1 / (1 - p)` (one correctly rounded product) where torch
//! divides by `1 - p`; results may differ from torch's in the last bit.

use fusion_plugin_api::{Compute, DType, DeviceTensor, Error, GpuTensor, KernelCall, Result};

use crate::launch::{chunks, constants, dispatch_1d, dtype_code, info, same_shape, workgroup_size};
use crate::uniforms::{len32, DareParams};
use crate::wgsl;

/// DARE's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dare {
    /// Drop probability (FusionBench `sparsity_ratio`), in `[0, 1]`.
    pub p: f64,
    /// Divide survivors by `1 - p` (FusionBench `rescale`).
    pub rescale: bool,
    /// The run's seed.
    pub seed: u64,
}

impl Dare {
    /// The factor applied to kept entries.
    pub fn scale(&self) -> f32 {
        if self.rescale {
            (1.0 / (1.0 - f64::from(self.p as f32))) as f32
        } else {
            1.0
        }
    }

    /// Kernel threshold: an element is kept when its 24-bit draw is greater than this.
    /// `u * 2^-24 > p` with `u` an integer is `u > floor(p * 2^24)`, exact for `p` rounded to f32.
    pub fn keep_above(&self) -> u32 {
        let p = f64::from(self.p as f32);
        (p * 16_777_216.0).floor().clamp(0.0, 16_777_216.0) as u32
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.p) {
            return Err(Error::config(format!(
                "dare: drop probability {} is outside [0, 1]",
                self.p
            )));
        }
        if self.rescale && self.p as f32 >= 1.0 {
            return Err(Error::config(
                "dare: cannot rescale with drop probability 1 (division by zero)",
            ));
        }
        Ok(())
    }
}

/// The per-tensor key of a name: 64-bit FNV-1a of its UTF-8 bytes.
pub fn tensor_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11), as in the kernel.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for _ in 0..10 {
        let p0 = u64::from(0xD251_1F53u32) * u64::from(c[0]);
        let p1 = u64::from(0xCD9E_8D57u32) * u64::from(c[2]);
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [
            k[0].wrapping_add(0x9E37_79B9),
            k[1].wrapping_add(0xBB67_AE85),
        ];
    }
    c
}

/// Whether DARE keeps element `index` of the tensor with key `key` (CPU reference of the kernel).
pub fn dare_keep(params: &Dare, key: u64, index: u64) -> bool {
    let r = philox4x32_10(
        [
            index as u32,
            (index >> 32) as u32,
            key as u32,
            (key >> 32) as u32,
        ],
        [params.seed as u32, (params.seed >> 32) as u32],
    );
    (r[0] >> 8) > params.keep_above()
}

/// DARE applied to a task vector `x` (the tensor whose name gives `key`), into a new tensor of
/// `dtype`.
pub fn dare(
    c: &dyn Compute,
    x: GpuTensor,
    key: u64,
    params: &Dare,
    dtype: DType,
) -> Result<GpuTensor> {
    launch(c, x, None, key, params, dtype)
}

/// DARE applied to the task vector `finetuned - base` without materializing it.
pub fn dare_delta(
    c: &dyn Compute,
    finetuned: GpuTensor,
    base: GpuTensor,
    key: u64,
    params: &Dare,
    dtype: DType,
) -> Result<GpuTensor> {
    launch(c, finetuned, Some(base), key, params, dtype)
}

fn launch(
    c: &dyn Compute,
    x: GpuTensor,
    base: Option<GpuTensor>,
    key: u64,
    params: &Dare,
    dtype: DType,
) -> Result<GpuTensor> {
    params.validate()?;
    let (x_dtype, shape, n) = info(c, x)?;
    let base_dtype = match base {
        Some(b) => Some(same_shape(c, "dare", &[b], &shape)?[0]),
        None => None,
    };
    let out = DeviceTensor::zeros(c, dtype, &shape)?;
    let l = c.limits();
    let wg = workgroup_size(&l);
    let mut extra = vec![
        ("OUT_DTYPE", dtype_code("dare", dtype)?),
        ("X_DTYPE", dtype_code("dare", x_dtype)?),
    ];
    if let Some(bd) = base_dtype {
        extra.push(("BASE_DTYPE", dtype_code("dare", bd)?));
    }
    let consts = constants(&l, &extra);
    for ch in chunks(&l, n) {
        let mut bindings = vec![
            ch.binding(out.id(), dtype, false),
            ch.binding(x, x_dtype, true),
        ];
        if let (Some(b), Some(bd)) = (base, base_dtype) {
            bindings.push(ch.binding(b, bd, true));
        }
        let uniforms = DareParams {
            n: len32(ch.len),
            first_lo: ch.start as u32,
            first_hi: (ch.start >> 32) as u32,
            seed_lo: params.seed as u32,
            seed_hi: (params.seed >> 32) as u32,
            key_lo: key as u32,
            key_hi: (key >> 32) as u32,
            keep_above: params.keep_above(),
            scale: params.scale(),
            _pad: [0; 3],
        };
        c.dispatch(&KernelCall {
            label: "dare",
            source: wgsl::DARE,
            entry_point: if base.is_some() { "dare_delta" } else { "dare" },
            constants: &consts,
            bindings: &bindings,
            uniforms: bytemuck::bytes_of(&uniforms),
            workgroups: dispatch_1d(&l, ch.len.div_ceil(2), wg),
        })?;
    }
    Ok(out.into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answers() {
        // Random123 kat_vectors, philox4x32_10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn thresholds_follow_torch_comparison() {
        let d = |p| Dare {
            p,
            rescale: true,
            seed: 0,
        };
        assert_eq!(d(0.0).keep_above(), 0);
        assert_eq!(d(0.5).keep_above(), 1 << 23);
        assert_eq!(d(1.0).keep_above(), 1 << 24);
        assert_eq!(d(0.5).scale(), 2.0);
        assert_eq!(
            Dare {
                p: 0.9,
                rescale: false,
                seed: 0
            }
            .scale(),
            1.0
        );
        assert!(d(1.0).validate().is_err());
        assert!(d(-0.1).validate().is_err());
        assert_ne!(tensor_key("a.weight"), tensor_key("a.bias"));
        assert_eq!(tensor_key(""), 0xcbf2_9ce4_8422_2325);
    }
}
