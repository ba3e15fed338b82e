// requires: common.wgsl
//
// Weighted sum of N tensors over one chunk: out = [out +] sum_k w_k * x_k, arithmetic in f32.
// Also the task vector (w = 1, -1), scale-and-add (w = 1, lambda) and, with ACCUMULATE, the
// running accumulation of more inputs than one launch can bind.
//
// WGSL cannot vary the number of bindings with an override, so there is one entry point per
// input count, weighted_sum_1 .. weighted_sum_8. Each entry point only touches its own inputs
// and its own uniform block (bound right after its inputs, as plugin-api requires); resources
// that share a binding number belong to different entry points, which WGSL allows.
//
// Bindings of weighted_sum_N: 0 = out (read_write), 1..N = x0..x{N-1}, N+1 = uniform Params.

override ACCUMULATE: bool = false;
override OUT_DTYPE: u32 = 0u;

override X0_DTYPE: u32 = 0u;
override X1_DTYPE: u32 = 0u;
override X2_DTYPE: u32 = 0u;
override X3_DTYPE: u32 = 0u;
override X4_DTYPE: u32 = 0u;
override X5_DTYPE: u32 = 0u;
override X6_DTYPE: u32 = 0u;
override X7_DTYPE: u32 = 0u;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    w: array<vec4<f32>, 2>,
}

@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> x0: array<u32>;
@group(0) @binding(2) var<storage, read> x1: array<u32>;
@group(0) @binding(3) var<storage, read> x2: array<u32>;
@group(0) @binding(4) var<storage, read> x3: array<u32>;
@group(0) @binding(5) var<storage, read> x4: array<u32>;
@group(0) @binding(6) var<storage, read> x5: array<u32>;
@group(0) @binding(7) var<storage, read> x6: array<u32>;
@group(0) @binding(8) var<storage, read> x7: array<u32>;
@group(0) @binding(2) var<uniform> p1: Params;
@group(0) @binding(3) var<uniform> p2: Params;
@group(0) @binding(4) var<uniform> p3: Params;
@group(0) @binding(5) var<uniform> p4: Params;
@group(0) @binding(6) var<uniform> p5: Params;
@group(0) @binding(7) var<uniform> p6: Params;
@group(0) @binding(8) var<uniform> p7: Params;
@group(0) @binding(9) var<uniform> p8: Params;

fn ld0(t: u32, n: u32) -> vec2<f32> { return decode_pair(x0[word_lo(t, X0_DTYPE)], x0[word_hi(t, X0_DTYPE, n)], X0_DTYPE); }
fn ld1(t: u32, n: u32) -> vec2<f32> { return decode_pair(x1[word_lo(t, X1_DTYPE)], x1[word_hi(t, X1_DTYPE, n)], X1_DTYPE); }
fn ld2(t: u32, n: u32) -> vec2<f32> { return decode_pair(x2[word_lo(t, X2_DTYPE)], x2[word_hi(t, X2_DTYPE, n)], X2_DTYPE); }
fn ld3(t: u32, n: u32) -> vec2<f32> { return decode_pair(x3[word_lo(t, X3_DTYPE)], x3[word_hi(t, X3_DTYPE, n)], X3_DTYPE); }
fn ld4(t: u32, n: u32) -> vec2<f32> { return decode_pair(x4[word_lo(t, X4_DTYPE)], x4[word_hi(t, X4_DTYPE, n)], X4_DTYPE); }
fn ld5(t: u32, n: u32) -> vec2<f32> { return decode_pair(x5[word_lo(t, X5_DTYPE)], x5[word_hi(t, X5_DTYPE, n)], X5_DTYPE); }
fn ld6(t: u32, n: u32) -> vec2<f32> { return decode_pair(x6[word_lo(t, X6_DTYPE)], x6[word_hi(t, X6_DTYPE, n)], X6_DTYPE); }
fn ld7(t: u32, n: u32) -> vec2<f32> { return decode_pair(x7[word_lo(t, X7_DTYPE)], x7[word_hi(t, X7_DTYPE, n)], X7_DTYPE); }

fn start(t: u32, n: u32) -> vec2<f32> {
    if (ACCUMULATE) {
        return decode_pair(out[word_lo(t, OUT_DTYPE)], out[word_hi(t, OUT_DTYPE, n)], OUT_DTYPE);
    }
    return vec2<f32>(0.0);
}

fn store(t: u32, v: vec2<f32>, n: u32) {
    if (OUT_DTYPE == DT_F32) {
        out[2u * t] = bitcast<u32>(v.x);
        if (2u * t + 1u < n) {
            out[2u * t + 1u] = bitcast<u32>(v.y);
        }
    } else {
        out[t] = encode_pair16(v, OUT_DTYPE);
    }
}

@compute @workgroup_size(WG)
fn weighted_sum_1(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p1.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = start(t, n);
    acc += p1.w[0].x * ld0(t, n);
    store(t, acc, n);
}

@compute @workgroup_size(WG)
fn weighted_sum_2(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p2.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = start(t, n);
    acc += p2.w[0].x * ld0(t, n);
    acc += p2.w[0].y * ld1(t, n);
    store(t, acc, n);
}

@compute @workgroup_size(WG)
fn weighted_sum_3(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p3.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = start(t, n);
    acc += p3.w[0].x * ld0(t, n);
    acc += p3.w[0].y * ld1(t, n);
    acc += p3.w[0].z * ld2(t, n);
    store(t, acc, n);
}

@compute @workgroup_size(WG)
fn weighted_sum_4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p4.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = start(t, n);
    acc += p4.w[0].x * ld0(t, n);
    acc += p4.w[0].y * ld1(t, n);
    acc += p4.w[0].z * ld2(t, n);
    acc += p4.w[0].w * ld3(t, n);
    store(t, acc, n);
}

@compute @workgroup_size(WG)
fn weighted_sum_5(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p5.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = start(t, n);
    acc += p5.w[0].x * ld0(t, n);
    acc += p5.w[0].y * ld1(t, n);
    acc += p5.w[0].z * ld2(t, n);
    acc += p5.w[0].w * ld3(t, n);
    acc += p5.w[1].x * ld4(t, n);
    store(t, acc, n);
}

@compute @workgroup_size(WG)
fn weighted_sum_6(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p6.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = start(t, n);
    acc += p6.w[0].x * ld0(t, n);
    acc += p6.w[0].y * ld1(t, n);
    acc += p6.w[0].z * ld2(t, n);
    acc += p6.w[0].w * ld3(t, n);
    acc += p6.w[1].x * ld4(t, n);
    acc += p6.w[1].y * ld5(t, n);
    store(t, acc, n);
}

@compute @workgroup_size(WG)
fn weighted_sum_7(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p7.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = start(t, n);
    acc += p7.w[0].x * ld0(t, n);
    acc += p7.w[0].y * ld1(t, n);
    acc += p7.w[0].z * ld2(t, n);
    acc += p7.w[0].w * ld3(t, n);
    acc += p7.w[1].x * ld4(t, n);
    acc += p7.w[1].y * ld5(t, n);
    acc += p7.w[1].z * ld6(t, n);
    store(t, acc, n);
}

@compute @workgroup_size(WG)
fn weighted_sum_8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p8.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = start(t, n);
    acc += p8.w[0].x * ld0(t, n);
    acc += p8.w[0].y * ld1(t, n);
    acc += p8.w[0].z * ld2(t, n);
    acc += p8.w[0].w * ld3(t, n);
    acc += p8.w[1].x * ld4(t, n);
    acc += p8.w[1].y * ld5(t, n);
    acc += p8.w[1].z * ld6(t, n);
    acc += p8.w[1].w * ld7(t, n);
    store(t, acc, n);
}

// weighted_sum_q: weighted_sum_N for INPUTS (1 to 8) f32 inputs into an f32 out, four elements
// per invocation through vec4 loads (software adapters run it about twice as fast as pairs of
// scalar loads). Same arithmetic in the same order; binds 0 = out, 1..8 = x0..x7 (slots past
// INPUTS are bound to x0 and never read), 9 = uniform Params. Tensors are padded to 16 bytes
// by the runtime, so the last quad reads zeros past n and writes into the padding.

override INPUTS: u32 = 8u;

@group(0) @binding(0) var<storage, read_write> q_out: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> q_x0: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> q_x1: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> q_x2: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> q_x3: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> q_x4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> q_x5: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> q_x6: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> q_x7: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn weighted_sum_q(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    if (t >= (p8.n + 3u) / 4u) {
        return;
    }
    var acc = vec4<f32>(0.0);
    if (ACCUMULATE) {
        acc = q_out[t];
    }
    acc += p8.w[0].x * q_x0[t];
    if (INPUTS > 1u) { acc += p8.w[0].y * q_x1[t]; }
    if (INPUTS > 2u) { acc += p8.w[0].z * q_x2[t]; }
    if (INPUTS > 3u) { acc += p8.w[0].w * q_x3[t]; }
    if (INPUTS > 4u) { acc += p8.w[1].x * q_x4[t]; }
    if (INPUTS > 5u) { acc += p8.w[1].y * q_x5[t]; }
    if (INPUTS > 6u) { acc += p8.w[1].z * q_x6[t]; }
    if (INPUTS > 7u) { acc += p8.w[1].w * q_x7[t]; }
    q_out[t] = acc;
}
