//! The MLP activations, in place (`activation.wgsl`).

use fusion_plugin_api::{Binding, Compute, GpuTensor};

use super::{check_extent, elementwise, Params, Result};
use crate::wgsl::nn;

/// An activation [`activation`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI's CLIP checkpoints, `hidden_act: quick_gelu`).
    QuickGelu,
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (`hidden_act: gelu`).
    Gelu,
}

/// Applies `act` in place to the first `n` values of `x`.
pub fn activation(c: &dyn Compute, x: GpuTensor, n: usize, act: Activation) -> Result<()> {
    let (op, entry) = match act {
        Activation::QuickGelu => ("nn_quick_gelu", "quick_gelu"),
        Activation::Gelu => ("nn_gelu", "gelu"),
    };
    check_extent(c, op, "x", x, n as u64)?;
    elementwise(
        c,
        op,
        nn::ACTIVATION,
        entry,
        &[Binding::write(x)],
        n,
        Params::default().u(n),
    )
}
