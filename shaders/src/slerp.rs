//! Spherical linear interpolation of two tensors (FusionBench `method/slerp/slerp_utils.py`,
//! adapted from mergekit): the angle comes from the GPU reductions, the blend is one weighted
//! sum.

use fusion_plugin_api::{Compute, DType, GpuTensor, Result};

/// Above this |cos θ| the tensors are treated as colinear and linearly interpolated.
pub const SLERP_DOT_THRESHOLD: f64 = 0.9995;
/// Norms at or below this are not divided by (FusionBench `normalize`'s `eps`).
pub const SLERP_EPS: f64 = 1e-8;

/// The weights `(s0, s1)` of `slerp = s0·v0 + s1·v1`, from `|v0|`, `|v1|`, `v0·v1` and `t`.
///
/// As FusionBench: each tensor is normalized by its norm unless that norm is `<= 1e-8`;
/// `dot` of the normalized tensors above 0.9995 in magnitude falls back to `lerp`
/// (`1 - t`, `t`); otherwise `θ = acos(dot)`, `s0 = sin((1 - t)θ) / sin θ`, `s1 = sin(tθ) / sin θ`.
pub fn slerp_weights(norm0: f64, norm1: f64, dot: f64, t: f64) -> (f64, f64) {
    let d0 = if norm0 > SLERP_EPS { norm0 } else { 1.0 };
    let d1 = if norm1 > SLERP_EPS { norm1 } else { 1.0 };
    let cos = dot / (d0 * d1);
    if cos.abs() > SLERP_DOT_THRESHOLD {
        return (1.0 - t, t);
    }
    let theta = cos.acos();
    let sin = theta.sin();
    ((theta - t * theta).sin() / sin, (t * theta).sin() / sin)
}

/// SLERP of `v0` and `v1` at `t` (0 gives `v0`), into a new tensor of `dtype`. Three
/// reductions (two norms, one dot) and one weighted sum; the angle is computed on the host in
/// f64.
pub fn slerp(
    c: &dyn Compute,
    v0: GpuTensor,
    v1: GpuTensor,
    t: f64,
    dtype: DType,
) -> Result<GpuTensor> {
    let n0 = f64::from(crate::l2_norm(c, v0)?);
    let n1 = f64::from(crate::l2_norm(c, v1)?);
    let dot = f64::from(crate::dot(c, v0, v1)?);
    let (s0, s1) = slerp_weights(n0, n1, dot, t);
    crate::weighted_sum(c, &[(v0, s0 as f32), (v1, s1 as f32)], dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_interpolate_the_angle() {
        // Orthogonal unit vectors: θ = π/2, so s0 = cos(tπ/2), s1 = sin(tπ/2).
        let (s0, s1) = slerp_weights(1.0, 1.0, 0.0, 0.5);
        assert!((s0 - 0.5f64.sqrt()).abs() < 1e-12 && (s1 - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(slerp_weights(2.0, 3.0, 6.0, 0.25), (0.75, 0.25)); // colinear: lerp
        let (s0, s1) = slerp_weights(1.0, 1.0, 0.3, 0.0);
        assert!((s0 - 1.0).abs() < 1e-12 && s1.abs() < 1e-12);
        // A zero tensor is not normalized: cos = 0, so still the orthogonal case.
        assert_eq!(
            slerp_weights(0.0, 1.0, 0.0, 0.5),
            slerp_weights(1.0, 1.0, 0.0, 0.5)
        );
    }
}
