// nn.LayerNorm over rows: y = (x - mean) / sqrt(var + eps) * weight + bias, with the biased
// variance, computed in two passes (mean, then the mean of squared deviations) so that a large
// mean does not cancel the variance away.
//
// One workgroup per row, rows numbered flat over the x, y and z workgroup dimensions. Input row
// r starts at in_off + r * in_stride and output row r at r * out_stride (elements), so the
// vision tower's post_layernorm reads only the class token of each image ([batch, positions,
// D] with in_stride = positions * D) straight out of the hidden states.
//
// Entry point layer_norm: bindings 0 = x, 1 = weight [cols], 2 = bias [cols],
// 3 = y (read_write), 4 = uniform Params.

// Invocations per workgroup: a power of two, set by the host.
override WG: u32 = 256u;

struct Params {
    rows: u32,
    cols: u32,
    in_off: u32,
    in_stride: u32,
    out_stride: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> scratch: array<f32, 256>;

// Tree sum over the workgroup (WG is a power of two); every invocation gets the result.
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
fn layer_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
    let valid = row < p.rows;
    let src = p.in_off + row * p.in_stride;
    let n = f32(p.cols);

    var s = 0.0;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            s += x[src + j];
        }
    }
    let mean = reduce_sum(s, lid) / n;

    var q = 0.0;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            let d = x[src + j] - mean;
            q += d * d;
        }
    }
    let inv_std = inverseSqrt(reduce_sum(q, lid) / n + p.eps);

    if (valid) {
        let dst = row * p.out_stride;
        for (var j = lid; j < p.cols; j += WG) {
            y[dst + j] = (x[src + j] - mean) * inv_std * weight[j] + bias[j];
        }
    }
}
