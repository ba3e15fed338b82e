// requires: common.wgsl
//
// TIES sign election, step 1: the per-element sum over models of the trimmed task vectors,
// S = [S +] sum_k trim(x_k), trim(v) = v where |v| >= threshold_k else 0 (FusionBench
// topk_values_mask keeps |v| >= the k-th value, ties included). S is f32; its sign is the
// elected sign (ties_votes.wgsl counts signs for the global majority).
//
// Thresholds come as f32 bit patterns and are compared as ordered bits (abs_bits), the same
// order the radix select used to find them.
//
// The sum over task vectors is ties_elect_sum.wgsl (one template for any input count). Here:
// ties_elect_delta takes one fine-tuned tensor and the base instead of a task vector:
// S [+]= trim(x - base), the difference in f32 after decoding (as task_vector computes it);
// 0 = S, 1 = x (X0_DTYPE), 2 = base (B_DTYPE), 3 = uniform Params.

override ACCUMULATE: bool = false;
override B_DTYPE: u32 = 0u;

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
    thr: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read_write> s_out: array<u32>;
@group(0) @binding(1) var<storage, read> x0: array<u32>;
@group(0) @binding(2) var<storage, read> x1: array<u32>;
@group(0) @binding(3) var<storage, read> x2: array<u32>;
@group(0) @binding(4) var<storage, read> x3: array<u32>;
@group(0) @binding(5) var<storage, read> x4: array<u32>;
@group(0) @binding(6) var<storage, read> x5: array<u32>;
@group(0) @binding(7) var<storage, read> x6: array<u32>;
@group(0) @binding(8) var<storage, read> x7: array<u32>;
@group(0) @binding(2) var<storage, read> delta_base: array<u32>;
@group(0) @binding(3) var<uniform> p2: Params;

fn ld0(t: u32, n: u32) -> vec2<f32> { return decode_pair(x0[word_lo(t, X0_DTYPE)], x0[word_hi(t, X0_DTYPE, n)], X0_DTYPE); }
fn ld1(t: u32, n: u32) -> vec2<f32> { return decode_pair(x1[word_lo(t, X1_DTYPE)], x1[word_hi(t, X1_DTYPE, n)], X1_DTYPE); }
fn ld2(t: u32, n: u32) -> vec2<f32> { return decode_pair(x2[word_lo(t, X2_DTYPE)], x2[word_hi(t, X2_DTYPE, n)], X2_DTYPE); }
fn ld3(t: u32, n: u32) -> vec2<f32> { return decode_pair(x3[word_lo(t, X3_DTYPE)], x3[word_hi(t, X3_DTYPE, n)], X3_DTYPE); }
fn ld4(t: u32, n: u32) -> vec2<f32> { return decode_pair(x4[word_lo(t, X4_DTYPE)], x4[word_hi(t, X4_DTYPE, n)], X4_DTYPE); }
fn ld5(t: u32, n: u32) -> vec2<f32> { return decode_pair(x5[word_lo(t, X5_DTYPE)], x5[word_hi(t, X5_DTYPE, n)], X5_DTYPE); }
fn ld6(t: u32, n: u32) -> vec2<f32> { return decode_pair(x6[word_lo(t, X6_DTYPE)], x6[word_hi(t, X6_DTYPE, n)], X6_DTYPE); }
fn ld7(t: u32, n: u32) -> vec2<f32> { return decode_pair(x7[word_lo(t, X7_DTYPE)], x7[word_hi(t, X7_DTYPE, n)], X7_DTYPE); }

fn trim(v: vec2<f32>, thr: u32) -> vec2<f32> {
    return vec2<f32>(select(0.0, v.x, abs_bits(v.x) >= thr), select(0.0, v.y, abs_bits(v.y) >= thr));
}

fn start(t: u32, n: u32) -> vec2<f32> {
    if (ACCUMULATE) {
        return decode_pair(s_out[2u * t], s_out[min(2u * t + 1u, n - 1u)], DT_F32);
    }
    return vec2<f32>(0.0);
}

fn store(t: u32, v: vec2<f32>, n: u32) {
    s_out[2u * t] = bitcast<u32>(v.x);
    if (2u * t + 1u < n) {
        s_out[2u * t + 1u] = bitcast<u32>(v.y);
    }
}

fn ld_base(t: u32, n: u32) -> vec2<f32> { return decode_pair(delta_base[word_lo(t, B_DTYPE)], delta_base[word_hi(t, B_DTYPE, n)], B_DTYPE); }

@compute @workgroup_size(WG)
fn ties_elect_delta(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p2.n;
    if (t >= pair_count(n)) {
        return;
    }
    var acc = start(t, n);
    acc += trim(ld0(t, n) - ld_base(t, n), p2.thr[0].x);
    store(t, acc, n);
}

// ties_elect_delta_n: S = trim(x0 - base) + ... + trim(x{INPUTS-1} - base) over up to eight
// fine-tuned tensors in one launch, in model order (the same f32 sums as INPUTS launches of
// ties_elect_delta): each model's tensor and the base are read once instead of S being read and
// written once per model. Binds 0 = S (read_write f32), 1..8 = x0..x7 (slots past INPUTS are
// bound to x0 and never read), 9 = base (B_DTYPE), 10 = uniform Params.

override INPUTS: u32 = 8u;

@group(0) @binding(9) var<storage, read> n_base: array<u32>;
@group(0) @binding(10) var<uniform> pn: Params;

fn ld_n_base(t: u32, n: u32) -> vec2<f32> { return decode_pair(n_base[word_lo(t, B_DTYPE)], n_base[word_hi(t, B_DTYPE, n)], B_DTYPE); }

@compute @workgroup_size(WG)
fn ties_elect_delta_n(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = pn.n;
    if (t >= pair_count(n)) {
        return;
    }
    let b = ld_n_base(t, n);
    var acc = start(t, n);
    acc += trim(ld0(t, n) - b, pn.thr[0].x);
    if (INPUTS > 1u) { acc += trim(ld1(t, n) - b, pn.thr[0].y); }
    if (INPUTS > 2u) { acc += trim(ld2(t, n) - b, pn.thr[0].z); }
    if (INPUTS > 3u) { acc += trim(ld3(t, n) - b, pn.thr[0].w); }
    if (INPUTS > 4u) { acc += trim(ld4(t, n) - b, pn.thr[1].x); }
    if (INPUTS > 5u) { acc += trim(ld5(t, n) - b, pn.thr[1].y); }
    if (INPUTS > 6u) { acc += trim(ld6(t, n) - b, pn.thr[1].z); }
    if (INPUTS > 7u) { acc += trim(ld7(t, n) - b, pn.thr[1].w); }
    store(t, acc, n);
}

// ties_elect_delta_q: ties_elect_delta_n where every tensor is f32, four elements per
// invocation through vec4 loads, counting the elected signs too (what ties_votes.wgsl adds for
// S, into the same 64-bit counters). Invocations loop over rows of quads (row_item, ROWS per
// invocation): on software adapters vec4 loads run about twice as fast as pairs of scalar
// loads, and per-invocation sign counts need one atomic per invocation, not per element.
// Tensors are padded to 16 bytes by the runtime, so the last quad reads zeros past n and
// writes into the padding; those lanes are not counted.
//
// Binds 0 = S (read_write f32), 1..8 = x0..x7, 9 = base, 10 = vote counters (read_write:
// pos_lo, pos_hi, neg_lo, neg_hi), 11 = uniform Params.

@group(0) @binding(0) var<storage, read_write> q_s: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> q_x0: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> q_x1: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> q_x2: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> q_x3: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> q_x4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> q_x5: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> q_x6: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> q_x7: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> q_base: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> q_votes: array<atomic<u32>>;
@group(0) @binding(11) var<uniform> pq: Params;


fn trim4(v: vec4<f32>, thr: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, (bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu)) >= vec4<u32>(thr));
}

fn vote64(i: u32, v: u32) {
    if (v != 0u) {
        let old = atomicAdd(&q_votes[i], v);
        if (old > 0xffffffffu - v) {
            atomicAdd(&q_votes[i + 1u], 1u);
        }
    }
}

@compute @workgroup_size(WG)
fn ties_elect_delta_q(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = pq.n;
    let quads = (n + 3u) / 4u;
    let grid = nwg.x * nwg.y * nwg.z * WG;
    var pos = vec4<u32>(0u);
    var neg = vec4<u32>(0u);
    let f = flat_index(gid, nwg);
    for (var i = 0u; row_item(f, i, grid) < quads; i++) {
        let t = row_item(f, i, grid);
        let b = q_base[t];
        var acc = vec4<f32>(0.0);
        acc += trim4(q_x0[t] - b, pq.thr[0].x);
        if (INPUTS > 1u) { acc += trim4(q_x1[t] - b, pq.thr[0].y); }
        if (INPUTS > 2u) { acc += trim4(q_x2[t] - b, pq.thr[0].z); }
        if (INPUTS > 3u) { acc += trim4(q_x3[t] - b, pq.thr[0].w); }
        if (INPUTS > 4u) { acc += trim4(q_x4[t] - b, pq.thr[1].x); }
        if (INPUTS > 5u) { acc += trim4(q_x5[t] - b, pq.thr[1].y); }
        if (INPUTS > 6u) { acc += trim4(q_x6[t] - b, pq.thr[1].z); }
        if (INPUTS > 7u) { acc += trim4(q_x7[t] - b, pq.thr[1].w); }
        q_s[t] = acc;
        let lanes = (vec4<u32>(4u * t) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(n);
        pos += select(vec4<u32>(0u), vec4<u32>(1u), lanes & (acc > vec4<f32>(0.0)));
        neg += select(vec4<u32>(0u), vec4<u32>(1u), lanes & (acc < vec4<f32>(0.0)));
    }
    vote64(0u, pos.x + pos.y + pos.z + pos.w);
    vote64(2u, neg.x + neg.y + neg.z + neg.w);
}
