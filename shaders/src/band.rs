//! Magnitude-band masks for Model Breadcrumbs (Davari & Belilovsky 2023), following mergekit's
//! `magnitude_outliers` (`mergekit/sparsify.py`): per tensor, drop the `gamma` fraction of
//! largest magnitudes and enough of the smallest to keep `density` of the entries.

use fusion_plugin_api::{Compute, DType, DeviceTensor, GpuTensor, KernelCall, Result};

use crate::launch::{chunks, constants, dispatch_1d, dtype_code, info, workgroup_size};
use crate::select::kth_largest_magnitude;
use crate::uniforms::{len32, BandParams};
use crate::wgsl;

/// Keep the entries of `x` with `lower <= |x|` and, if `upper` is given, `|x| < upper`; the rest
/// become 0. The result is a new tensor of `dtype`.
pub fn magnitude_band(
    c: &dyn Compute,
    x: GpuTensor,
    lower: f32,
    upper: Option<f32>,
    dtype: DType,
) -> Result<GpuTensor> {
    let (x_dtype, shape, n) = info(c, x)?;
    let out = DeviceTensor::zeros(c, dtype, &shape)?;
    let l = c.limits();
    let wg = workgroup_size(&l);
    let consts = constants(
        &l,
        &[
            ("OUT_DTYPE", dtype_code("magnitude_band", dtype)?),
            ("X_DTYPE", dtype_code("magnitude_band", x_dtype)?),
        ],
    );
    let bits = |t: f32| if t <= 0.0 { 0 } else { t.to_bits() };
    for ch in chunks(&l, n) {
        let bindings = [
            ch.binding(out.id(), dtype, false),
            ch.binding(x, x_dtype, true),
        ];
        let uniforms = BandParams {
            n: len32(ch.len),
            lower: bits(lower),
            upper: upper.map_or(0, bits),
            has_upper: u32::from(upper.is_some()),
        };
        c.dispatch(&KernelCall {
            label: "magnitude_band",
            source: wgsl::BAND,
            entry_point: "magnitude_band",
            constants: &consts,
            bindings: &bindings,
            uniforms: bytemuck::bytes_of(&uniforms),
            workgroups: dispatch_1d(&l, ch.len.div_ceil(2), wg),
        })?;
    }
    Ok(out.into_raw())
}

/// How many of `n` entries mergekit's `magnitude_outliers` drops: `(n_bottom, n_top)`, the
/// smallest and the largest magnitudes. `n_top == 0` keeps *nothing* (mergekit's slice
/// `[n_bot:-0]` is empty): that quirk is reproduced.
pub fn breadcrumbs_counts(n: u64, density: f64, gamma: f64) -> (u64, u64) {
    let target = (density * n as f64) as i64;
    let mut n_top = (gamma * n as f64) as i64;
    let mut n_bot = n as i64 - target - n_top;
    if n_bot < 0 {
        n_top += n_bot;
        n_bot = 0;
    }
    (n_bot.max(0) as u64, n_top.max(0) as u64)
}

/// Model Breadcrumbs' mask of one task-vector tensor, into a new tensor of `dtype`: drop the
/// `gamma` fraction of largest magnitudes and the smallest ones so that about `density` of the
/// entries stay (no rescaling, mergekit's default).
///
/// Thresholds come from [`kth_largest_magnitude`]; where mergekit breaks ties in |x| by sort
/// order, here equal magnitudes at a boundary share one fate (ties at 0 do not change the
/// result; exact ties of non-zero magnitudes are rare in trained weights).
pub fn breadcrumbs(
    c: &dyn Compute,
    x: GpuTensor,
    density: f64,
    gamma: f64,
    dtype: DType,
) -> Result<GpuTensor> {
    let (_, shape, n) = info(c, x)?;
    if density >= 1.0 {
        return crate::convert(c, x, dtype);
    }
    let (n_bot, n_top) = breadcrumbs_counts(n, density, gamma);
    if n_top == 0 || n == 0 {
        return c.create(dtype, &shape, None);
    }
    // Keep sorted positions n_bot .. n - n_top: at least the (n - n_bot)-th largest magnitude,
    // and below the n_top-th largest.
    let lower = if n_bot == 0 {
        0.0
    } else {
        kth_largest_magnitude(c, &[x], n - n_bot)?
    };
    let upper = kth_largest_magnitude(c, &[x], n_top)?;
    magnitude_band(c, x, lower, Some(upper), dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_mergekit() {
        assert_eq!(breadcrumbs_counts(1000, 0.9, 0.01), (90, 10));
        assert_eq!(breadcrumbs_counts(50, 0.9, 0.01), (5, 0)); // n_top = 0: keeps nothing
        assert_eq!(breadcrumbs_counts(100, 0.995, 0.01), (0, 1));
        assert_eq!(breadcrumbs_counts(1000, 0.995, 0.01), (0, 5));
    }
}
