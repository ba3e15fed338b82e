//! The MLP activations (`quick_gelu`, exact `gelu`) with their derivatives.

use rayon::prelude::*;

use super::check_len;
use crate::config::Activation;
use crate::error::Result;

/// Chunk of values per rayon task for elementwise work.
const CHUNK: usize = 16384;

/// `d act(x) / dx`.
///
/// quick_gelu `x σ(1.702 x)`: `σ + 1.702 x σ (1 - σ)`. gelu `x Φ(x)`: `Φ(x) + x φ(x)`, in
/// f64 like the forward.
pub fn activation_derivative(act: Activation, x: f32) -> f32 {
    match act {
        Activation::QuickGelu => {
            let s = 1.0 / (1.0 + (-1.702 * x).exp());
            s + 1.702 * x * s * (1.0 - s)
        }
        Activation::Gelu => {
            let x = f64::from(x);
            let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (cdf + x * pdf) as f32
        }
    }
}

/// `act(x)` elementwise.
pub fn activation_forward(act: Activation, x: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    y.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|v| *v = act.apply(*v)));
    y
}

/// `∂L/∂x = act'(x) · ∂L/∂y`, from the forward input `x`.
pub fn activation_backward(act: Activation, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    check_len("activation_backward", "dy", dy.len(), x.len())?;
    let mut dx = dy.to_vec();
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(d, x)| {
            d.iter_mut()
                .zip(x)
                .for_each(|(d, &x)| *d *= activation_derivative(act, x))
        });
    Ok(dx)
}
