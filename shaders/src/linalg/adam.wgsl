// One fused Adam step (torch.optim.Adam's single-tensor update: no weight decay, no AMSGrad,
// not maximizing) on a parameter `x` whose gradient is g = scale·(p − q), for a loss whose
// gradient is an affine function of x computed by products beforehand (p = x·A, q = B for
// WUDI's interference loss). The moments `m1`, `m2` live beside the parameter; the step's
// scalars (bias corrections, step size) come from the host in the order torch forms them:
//   m1 += (g − m1)·(1 − β1)              (exp_avg.lerp_(grad, 1 − β1))
//   m2  = m2·β2 + (1 − β2)·g·g           (exp_avg_sq.mul_(β2).addcmul_(grad, grad, 1 − β2))
//   x  −= step_size·(m1 / (√m2 / √bc2 + ε))
//
// Entry point step: `count` invocations flat over x/y/z; bindings 0 = x, 1 = m1, 2 = m2,
// 3 = p (read), 4 = q (read), 5 = uniform Params.

const WG: u32 = 64u;

struct Params {
    count: u32,
    scale: f32,
    // 1 − β1
    w1: f32,
    beta2: f32,
    // 1 − β2
    w2: f32,
    // lr / (1 − β1^t)
    step_size: f32,
    // √(1 − β2^t)
    bc2_sqrt: f32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> m1: array<f32>;
@group(0) @binding(2) var<storage, read_write> m2: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<f32>;
@group(0) @binding(4) var<storage, read> q: array<f32>;
@group(0) @binding(5) var<uniform> u: Params;

@compute @workgroup_size(WG)
fn step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
    if (i >= u.count) {
        return;
    }
    let g = u.scale * (p[i] - q[i]);
    let a = m1[i] + (g - m1[i]) * u.w1;
    let b = m2[i] * u.beta2 + u.w2 * g * g;
    m1[i] = a;
    m2[i] = b;
    let denom = sqrt(b) / u.bc2_sqrt + u.eps;
    x[i] = x[i] - u.step_size * (a / denom);
}
