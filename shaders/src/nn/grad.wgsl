// Backward passes of the row and elementwise operations (reverse mode; the CPU model is
// fusion-clip's `autograd`). Rows are numbered flat over the x, y and z workgroup dimensions
// (row kernels: one workgroup of WG invocations per row) or invocations are (column and
// elementwise kernels: WG invocations per workgroup). Compiled after `include/act.wgsl` (its
// erf_approx).
//
// Entry points:
//   bias_grad            db[j] (+)= Σ_r dy[r, j]; one invocation per column, Kahan-summed.
//                        bindings 0 = dy [rows, cols], 1 = db [cols] (read_write), 2 = Params
//   activation_backward  dy[i] *= act'(x[i]), act = quick_gelu (p.act = 0) or gelu (1).
//                        bindings 0 = x, 1 = dy (read_write), 2 = Params
//   softmax_backward     in place: dy[r] = y[r] ⊙ (dy[r] - Σ_j y[r, j] dy[r, j]).
//                        bindings 0 = y, 1 = dy (read_write), 2 = Params
//   layer_norm_backward  per row, with the row's mean and rstd = 1/sqrt(var + eps) recomputed
//                        (two passes, as the forward), x̂ = (x - mean) rstd, g = dy ⊙ w:
//                        dx (+)= rstd (g - mean(g) - x̂ mean(g x̂)); stats[2r..2r+2] =
//                        (mean, rstd) for layer_norm_params.
//                        bindings 0 = x, 1 = weight, 2 = dy, 3 = dx (read_write),
//                        4 = stats [rows, 2] (read_write), 5 = Params
//   layer_norm_params    dw[j] (+)= Σ_r dy[r, j] x̂[r, j], db[j] (+)= Σ_r dy[r, j]; one
//                        invocation per column. bindings 0 = x, 1 = dy, 2 = stats,
//                        3 = dw (read_write), 4 = db (read_write), 5 = Params
//
// Params (one layout for all): rows, cols, accumulate (add into the outputs instead of
// overwriting them), act, eps.

override WG: u32 = 64u;

struct Params {
    rows: u32,
    cols: u32,
    accumulate: u32,
    act: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> in0: array<f32>;
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(1) var<storage, read_write> io1: array<f32>;
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(2) var<uniform> p2: Params;
@group(0) @binding(3) var<storage, read_write> io3: array<f32>;
@group(0) @binding(4) var<storage, read_write> io4: array<f32>;
@group(0) @binding(5) var<uniform> p5: Params;

var<workgroup> scratch: array<f32, 256>;

fn flat_invocation(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
}

fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + nwg.x * (wid.y + nwg.y * wid.z);
}

fn reduce_sum(v: f32, lid: u32) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            scratch[lid] = scratch[lid] + scratch[lid + s];
        }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn bias_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = p2;
    let j = flat_invocation(gid, nwg);
    if (j >= p.cols) {
        return;
    }
    var sum = 0.0;
    var comp = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let y = in0[r * p.cols + j] - comp;
        let t = sum + y;
        comp = (t - sum) - y;
        sum = t;
    }
    if (p.accumulate != 0u) {
        sum += io1[j];
    }
    io1[j] = sum;
}

@compute @workgroup_size(WG)
fn activation_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = p2;
    let i = flat_invocation(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    let v = in0[i];
    var d: f32;
    if (p.act == 0u) {
        // quick_gelu: σ + 1.702 v σ (1 - σ), σ = sigmoid(1.702 v).
        let s = 1.0 / (1.0 + exp(-1.702 * v));
        d = s + 1.702 * v * s * (1.0 - s);
    } else {
        // gelu: Φ(v) + v φ(v). For |v| large, φ underflows to 0 and Φ to 0 or 1.
        let cdf = 0.5 * (1.0 + erf_approx(v * 0.70710678118654752));
        let pdf = exp(-0.5 * v * v) * 0.39894228040143268;
        d = cdf + v * pdf;
    }
    io1[i] = io1[i] * d;
}

@compute @workgroup_size(WG)
fn softmax_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = p2;
    let row = flat_group(wid, nwg);
    let valid = row < p.rows;
    let base = row * p.cols;
    var s = 0.0;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            s += in0[base + j] * io1[base + j];
        }
    }
    let dot = reduce_sum(s, lid);
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            io1[base + j] = in0[base + j] * (io1[base + j] - dot);
        }
    }
}

@compute @workgroup_size(WG)
fn layer_norm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = p5;
    let row = flat_group(wid, nwg);
    let valid = row < p.rows;
    let base = row * p.cols;
    let n = f32(p.cols);

    var s = 0.0;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            s += in0[base + j];
        }
    }
    let mean = reduce_sum(s, lid) / n;
    var q = 0.0;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            let d = in0[base + j] - mean;
            q += d * d;
        }
    }
    let rstd = inverseSqrt(reduce_sum(q, lid) / n + p.eps);

    var sg = 0.0;
    var sgx = 0.0;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            let g = in2[base + j] * in1[j];
            sg += g;
            sgx += g * (in0[base + j] - mean) * rstd;
        }
    }
    let mg = reduce_sum(sg, lid) / n;
    let mgx = reduce_sum(sgx, lid) / n;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            let xh = (in0[base + j] - mean) * rstd;
            var d = rstd * (in2[base + j] * in1[j] - mg - xh * mgx);
            if (p.accumulate != 0u) {
                d += io3[base + j];
            }
            io3[base + j] = d;
        }
        if (lid == 0u) {
            io4[2u * row] = mean;
            io4[2u * row + 1u] = rstd;
        }
    }
}

@compute @workgroup_size(WG)
fn layer_norm_params(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = p5;
    let j = flat_invocation(gid, nwg);
    if (j >= p.cols) {
        return;
    }
    var dw = 0.0;
    var db = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let g = in1[r * p.cols + j];
        let xh = (in0[r * p.cols + j] - in2[2u * r]) * in2[2u * r + 1u];
        dw += g * xh;
        db += g;
    }
    if (p.accumulate != 0u) {
        dw += io3[j];
        db += io4[j];
    }
    io3[j] = dw;
    io4[j] = db;
}

// ---------------------------------------------------------------------------------------------
// Training helpers: the layer-wise merge θ = θ0 + Σ_i λ_i τ_i and the reduction behind
// ∂L/∂λ_{i,l} = <∂L/∂θ_l, τ_{i,l}>.
//
//   scaled_add    y[i] += alpha x[i] for i < n (n in p.rows, alpha in p.eps).
//                 bindings 0 = x, 1 = y (read_write), 2 = Params
//   dot_partials  workgroup w of a fixed grid of G workgroups (G = nwg.x, one dimension) sums
//                 a[i] b[i] over i = w WG + lid + k G WG (Kahan per invocation, then a tree)
//                 into partials[w]; n in rows.
//                 bindings 0 = a, 1 = b, 2 = partials [G] (read_write), 3 = Params
//   sum_partials  one workgroup: out[p.cols] (+)= Σ_{w < p.rows} partials[w] (accumulate adds).
//                 bindings 0 = partials, 1 = out (read_write), 2 = Params

@group(0) @binding(2) var<storage, read_write> io2: array<f32>;
@group(0) @binding(3) var<uniform> p3: Params;

@compute @workgroup_size(WG)
fn scaled_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = p2;
    let i = flat_invocation(gid, nwg);
    if (i >= p.rows) {
        return;
    }
    io1[i] = io1[i] + p.eps * in0[i];
}

@compute @workgroup_size(WG)
fn dot_partials(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = p3;
    let stride = nwg.x * WG;
    var sum = 0.0;
    var comp = 0.0;
    for (var i = wid.x * WG + lid; i < p.rows; i += stride) {
        let y = in0[i] * in1[i] - comp;
        let t = sum + y;
        comp = (t - sum) - y;
        sum = t;
    }
    let total = reduce_sum(sum, lid);
    if (lid == 0u) {
        io2[wid.x] = total;
    }
}

@compute @workgroup_size(WG)
fn sum_partials(@builtin(local_invocation_index) lid: u32) {
    let p = p2;
    var sum = 0.0;
    for (var w = lid; w < p.rows; w += WG) {
        sum += in0[w];
    }
    var total = reduce_sum(sum, lid);
    if (lid == 0u) {
        if (p.accumulate != 0u) {
            total += io1[p.cols];
        }
        io1[p.cols] = total;
    }
}
