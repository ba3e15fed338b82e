//! A fused Adam step on the device (`adam.wgsl`), for optimizers whose gradient is an affine
//! function of the parameter formed by products beforehand (WUDI merging's interference loss).

use fusion_plugin_api::{Binding, Compute, GpuTensor, KernelCall};

use super::{grid, Params};
use crate::nn::{NnError, Result};

/// `adam.wgsl`.
pub const ADAM: &str = include_str!("adam.wgsl");

/// torch.optim.Adam's hyper-parameters (no weight decay, no AMSGrad) and the step number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// β1, the first moment's decay.
    pub beta1: f64,
    /// β2, the second moment's decay.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// The step, from 1.
    pub step: usize,
}

/// One Adam step on the `count` values of `x` with the gradient `scale·(p − q)`, updating the
/// moments `m1` and `m2` (zeros before the first step) in place. The bias corrections are formed
/// in f64 and used as f32 scalars, as torch does with Python-float hyper-parameters.
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    c: &dyn Compute,
    x: GpuTensor,
    m1: GpuTensor,
    m2: GpuTensor,
    p: GpuTensor,
    q: GpuTensor,
    count: usize,
    scale: f32,
    h: &AdamStep,
) -> Result<()> {
    const OP: &str = "linalg_adam_step";
    if h.step == 0 {
        return Err(NnError::input(OP, "Adam steps count from 1".to_string()));
    }
    for (what, t) in [("x", x), ("m1", m1), ("m2", m2), ("p", p), ("q", q)] {
        let (_, shape) = c
            .describe(t)
            .map_err(NnError::compute(format!("{OP}: describing {what}")))?;
        let have: usize = shape.iter().product();
        if have < count {
            return Err(NnError::input(
                OP,
                format!("{what} holds {have} values, fewer than the {count} being updated"),
            ));
        }
    }
    if count == 0 {
        return Ok(());
    }
    let step = i32::try_from(h.step).unwrap_or(i32::MAX);
    let bc1 = 1.0 - h.beta1.powi(step);
    let bc2 = 1.0 - h.beta2.powi(step);
    let uniforms = Params::default()
        .u(count)
        .f(scale)
        .f((1.0 - h.beta1) as f32)
        .f(h.beta2 as f32)
        .f((1.0 - h.beta2) as f32)
        .f((h.lr / bc1) as f32)
        .f(bc2.sqrt() as f32)
        .f(h.eps as f32);
    c.dispatch(&KernelCall {
        label: OP,
        source: ADAM,
        entry_point: "step",
        constants: &[],
        bindings: &[
            Binding::write(x),
            Binding::write(m1),
            Binding::write(m2),
            Binding::read(p),
            Binding::read(q),
        ],
        uniforms: &uniforms.0,
        workgroups: grid(c, OP, count)?,
    })
    .map_err(NnError::compute(format!("{OP} (step)")))
}
