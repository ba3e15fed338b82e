// The MLP activations of CLIP as functions (no bindings, no entry points), shared by
// `activation.wgsl` (in place over a buffer) and the gemm epilogue (`include/gemm_common.wgsl`):
//   quick_gelu(x) = x * sigmoid(1.702 x)              (OpenAI checkpoints)
//   gelu(x)       = 0.5 x (1 + erf(x / sqrt(2)))      (exact GELU, hidden_act: gelu)

// erf from Numerical Recipes' erfcc (a Chebyshev fit of exp(z^2) erfc(z), relative error of
// erfc below 1.2e-7 for every z), so |error| < 1.2e-7 plus f32 rounding. WGSL has no erf.
fn erf_approx(v: f32) -> f32 {
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * exp(poly);
    return select(erfc - 1.0, 1.0 - erfc, v >= 0.0);
}

// v / (1 + e^(-1.702 v)): for very negative v the exponential overflows to +inf and the
// quotient is -0, the right limit.
fn act_quick_gelu(v: f32) -> f32 {
    return v / (1.0 + exp(-1.702 * v));
}

fn act_gelu(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
}
