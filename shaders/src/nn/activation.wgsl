// The MLP activations of CLIP, in place over a flat buffer of n values:
//   quick_gelu(x) = x * sigmoid(1.702 x)              (OpenAI checkpoints)
//   gelu(x)       = 0.5 x (1 + erf(x / sqrt(2)))      (exact GELU, hidden_act: gelu)
// Invocation t (numbered flat over the x, y and z workgroup dimensions) handles element t.
//
// Entry points quick_gelu, gelu: bindings 0 = x (read_write), 1 = uniform Params.

// Invocations per workgroup, set by the host from the device limits.
override WG: u32 = 256u;

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

fn index_of(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
}

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

@compute @workgroup_size(WG)
fn quick_gelu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index_of(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let v = x[i];
    // v / (1 + e^(-1.702 v)): for very negative v the exponential overflows to +inf and the
    // quotient is -0, the right limit.
    x[i] = v / (1.0 + exp(-1.702 * v));
}

@compute @workgroup_size(WG)
fn gelu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index_of(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let v = x[i];
    x[i] = 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
}
