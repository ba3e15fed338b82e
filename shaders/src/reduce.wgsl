// requires: common.wgsl
//
// Sums over a chunk, one partial per workgroup: sum (MODE 0), sum of squares (MODE 1), or the
// dot product of two tensors (reduce_dot). The host reduces the partials again with MODE 0
// until one value is left (a tree of launches), so any size and any dispatch limit work, and
// rounding error grows with log(n), not n.
//
// Partial of workgroup w goes to partials[offset + w], w the flat workgroup index.
// WG must be a power of two no larger than 256 (the workgroup array below).
//
// Entry points:
//   reduce_partial: 0 = partials (read_write f32), 1 = a (read, A_DTYPE), 2 = uniform Params
//   reduce_dot:     0 = partials, 1 = a, 2 = b (read, B_DTYPE), 3 = uniform Params

override MODE: u32 = 0u;
override A_DTYPE: u32 = 0u;
override B_DTYPE: u32 = 0u;

struct Params {
    n: u32,
    offset: u32,
}

@group(0) @binding(0) var<storage, read_write> partials: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<uniform> pd: Params;

var<workgroup> scratch: array<f32, 256>;

fn load_a(t: u32, n: u32) -> vec2<f32> {
    let v = decode_pair(a[word_lo(t, A_DTYPE)], a[word_hi(t, A_DTYPE, n)], A_DTYPE);
    // The second element of the last pair of an odd chunk does not exist.
    return select(v, vec2<f32>(v.x, 0.0), 2u * t + 1u >= n);
}

fn load_b(t: u32, n: u32) -> vec2<f32> {
    let v = decode_pair(b[word_lo(t, B_DTYPE)], b[word_hi(t, B_DTYPE, n)], B_DTYPE);
    return select(v, vec2<f32>(v.x, 0.0), 2u * t + 1u >= n);
}

// Tree-sum `value` over the workgroup and store it as the workgroup's partial.
fn workgroup_sum(value: f32, lid: u32, wid: vec3<u32>, nwg: vec3<u32>, offset: u32) {
    scratch[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            scratch[lid] = scratch[lid] + scratch[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let w = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
        partials[offset + w] = bitcast<u32>(scratch[0]);
    }
}

@compute @workgroup_size(WG)
fn reduce_partial(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = flat_index(gid, nwg);
    var value = 0.0;
    if (t < pair_count(p.n)) {
        let v = load_a(t, p.n);
        if (MODE == 1u) {
            value = dot(v, v);
        } else {
            value = v.x + v.y;
        }
    }
    workgroup_sum(value, lid, wid, nwg, p.offset);
}

@compute @workgroup_size(WG)
fn reduce_dot(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = flat_index(gid, nwg);
    var value = 0.0;
    if (t < pair_count(pd.n)) {
        value = dot(load_a(t, pd.n), load_b(t, pd.n));
    }
    workgroup_sum(value, lid, wid, nwg, pd.offset);
}

// The number of NaN and ±Inf values of `a`, added into counts[p.offset] (the chunk's slot).
// Tested on the bits (exponent all ones), since WGSL lets an implementation assume that float
// values are finite. Each invocation counts the words t, t + grid, t + 2 grid, ... (neighbouring
// invocations read neighbouring words) and adds its count once, only when it is not zero: a
// finite tensor costs one read of it, with no atomics, barriers or workgroup memory (barriers
// are costly on software adapters).
//
// Entry point:
//   count_nonfinite: 0 = counts (read_write u32), 1 = a (read, A_DTYPE), 2 = uniform Params

@group(0) @binding(0) var<storage, read_write> counts: array<atomic<u32>>;

// Whether the 16-bit float `h` (f16 or bf16, per A_DTYPE) is NaN or infinite.
fn half_nonfinite(h: u32) -> u32 {
    let exponent = select(0x7f80u, 0x7c00u, A_DTYPE == DT_F16);
    return select(0u, 1u, (h & exponent) == exponent);
}

@compute @workgroup_size(WG)
fn count_nonfinite(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let grid = nwg.x * nwg.y * nwg.z * WG;
    let t = flat_index(gid, nwg);
    let words = select(pair_count(p.n), p.n, A_DTYPE == DT_F32);
    var k = 0u;
    for (var w = t; w < words; w = w + grid) {
        let x = a[w];
        if (A_DTYPE == DT_F32) {
            k = k + select(0u, 1u, (x & 0x7f800000u) == 0x7f800000u);
        } else {
            k = k + half_nonfinite(x & 0xffffu);
            // The upper half of the last word of an odd count is padding.
            if (2u * w + 1u < p.n) {
                k = k + half_nonfinite(x >> 16u);
            }
        }
    }
    if (k > 0u) {
        atomicAdd(&counts[p.offset], k);
    }
}
