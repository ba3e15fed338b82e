// requires: common.wgsl (fusion_kernels::wgsl::COMMON is prepended by src/kernels.rs)
//
// Kernels for mergekit's generalized task arithmetic (breadcrumbs, DELLA) that the shared
// kernel library does not have. All tensors here are f32 task vectors (the plugin computes
// them in f32 with fusion_kernels), one element per invocation.
//
// Entry points (each binds its own resources; shared binding numbers belong to different entry
// points, which WGSL allows):
//   abs_into:      0 = out (rw), 1 = x (read), 2 = uniform Params        out = |x|
//   band_keep:     0 = out (rw), 1 = x (read), 2 = uniform Params        out = x where
//                  lo <= abs_bits(x) (< hi when has_hi), else 0 (breadcrumbs' outlier band)
//   consensus_add: 0 = mixed (rw), 1 = div (rw), 2 = s (read), 3 = x (read), 4 = uniform Params
//                  with wx = w * x: where sign(wx) equals the majority sign of s (+1 where
//                  s >= 0, else -1), mixed += wx and div += w (mergekit get_mask "sum")
//   safe_divide:   0 = mixed (rw), 1 = div (read), 2 = uniform Params    mixed /= (div == 0 ? 1 : div)
//   della_keep:    0 = out (rw), 1 = x (read), 2 = uniform DellaParams  (see below)

struct Params {
    n: u32,
    lo: u32,
    hi: u32,
    has_hi: u32,
    w: f32,
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read_write> div_acc: array<f32>;
@group(0) @binding(2) var<storage, read> s_in: array<f32>;
@group(0) @binding(3) var<storage, read> x_in: array<f32>;
@group(0) @binding(4) var<uniform> pc: Params;

@group(0) @binding(1) var<storage, read> div_in: array<f32>;

@compute @workgroup_size(WG)
fn abs_into(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    out[i] = abs(x[i]);
}

@compute @workgroup_size(WG)
fn band_keep(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let v = x[i];
    let b = abs_bits(v);
    let keep = b >= p.lo && (p.has_hi == 0u || b < p.hi);
    out[i] = select(0.0, v, keep);
}

@compute @workgroup_size(WG)
fn consensus_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= pc.n) {
        return;
    }
    let wx = pc.w * x_in[i];
    let majority = select(-1.0, 1.0, s_in[i] >= 0.0);
    // sign(0) == 0 matches neither majority, so pruned entries never count (as in mergekit).
    if (sign(wx) == majority) {
        out[i] = out[i] + wx;
        div_acc[i] = div_acc[i] + pc.w;
    }
}

@compute @workgroup_size(WG)
fn safe_divide(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let d = div_in[i];
    out[i] = out[i] / select(d, 1.0, d == 0.0);
}

// DELLA's MagPrune (mergekit sparsify.della_magprune): within each row, rank the entries by
// magnitude (rank r = 1 + number of entries that are smaller, ties broken by position, i.e. a
// stable argsort of an argsort), keep each entry with probability
// p = (density - epsilon) + (r - 1) / (row_len - 1) * 2 epsilon, drop it otherwise.
//
// The draw is counter-based like fusion-kernels' DARE: Philox4x32-10 of the counter
// (global index lo, hi, key lo, hi) under the key (seed lo, hi), u = (word0 >> 8) * 2^-24, and
// the entry is kept when u < p (torch.bernoulli(p) is 1 with probability p). So the mask
// depends only on (seed, key, index), never on launch order or chunking.
//
// A launch covers whole rows: elements [skew, skew + n) of the bound range, rows of row_len
// starting at skew. The rank loop reads the whole row (O(row_len) per element).

struct DellaParams {
    n: u32,
    skew: u32,
    row_len: u32,
    first_lo: u32,
    first_hi: u32,
    seed_lo: u32,
    seed_hi: u32,
    key_lo: u32,
    key_hi: u32,
    p_low: f32,
    p_span: f32,
    inv_last: f32,
}

@group(0) @binding(2) var<uniform> dp: DellaParams;

fn mulhi(a: u32, b: u32) -> u32 {
    let a_lo = a & 0xffffu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let lo_lo = a_lo * b_lo;
    let hi_lo = a_hi * b_lo;
    let lo_hi = a_lo * b_hi;
    // At most (2^16 - 1) + (2^16 - 1) + (2^16 - 1)^2 < 2^32: no overflow.
    let cross = (lo_lo >> 16u) + (hi_lo & 0xffffu) + lo_hi;
    return a_hi * b_hi + (hi_lo >> 16u) + (cross >> 16u);
}

fn philox4x32_10(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = ctr;
    var k = key;
    for (var r = 0u; r < 10u; r++) {
        let hi0 = mulhi(0xD2511F53u, c.x);
        let lo0 = 0xD2511F53u * c.x;
        let hi1 = mulhi(0xCD9E8D57u, c.z);
        let lo1 = 0xCD9E8D57u * c.z;
        c = vec4<u32>(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
        k = vec2<u32>(k.x + 0x9E3779B9u, k.y + 0xBB67AE85u);
    }
    return c;
}

@compute @workgroup_size(WG)
fn della_keep(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_index(gid, nwg);
    if (e >= dp.n) {
        return;
    }
    let pos = e % dp.row_len;
    let row0 = dp.skew + e - pos;
    let v = x[dp.skew + e];
    let me = abs_bits(v);
    var below = 0u;
    for (var j = 0u; j < dp.row_len; j++) {
        let o = abs_bits(x[row0 + j]);
        below += select(0u, 1u, o < me || (o == me && j < pos));
    }
    let prob = dp.p_low + (f32(below) * dp.inv_last) * dp.p_span;
    let g_lo = dp.first_lo + e;
    let g_hi = dp.first_hi + select(0u, 1u, g_lo < e);
    let r = philox4x32_10(vec4<u32>(g_lo, g_hi, dp.key_lo, dp.key_hi), vec2<u32>(dp.seed_lo, dp.seed_hi));
    let u = f32(r.x >> 8u) * 5.9604644775390625e-8;
    out[dp.skew + e] = select(0.0, v, u < prob);
}
