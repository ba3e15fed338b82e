// requires: common.wgsl
//
// TIES disjoint merge (FusionBench ties_merging_utils.disjoint_merge), given S from
// ties_elect.wgsl. The elected sign is s = sign(S), with s = 0 replaced by the global majority
// sign (resolve_zero_signs "majority"). An entry v (trimmed) is kept when
// (s > 0 ? v > 0 : v < 0), exactly torch.where(s > 0, v > 0, v < 0). Then
//   MERGE 0 (sum):  sum of kept entries
//   MERGE 1 (mean): sum of kept entries / max(count of kept entries, 1)
//   MERGE 2 (max):  max of |kept entries| times s
//
// Models are visited in batches (ties_merge_sum, with ACCUMULATE after the first) into f32
// accumulators A (sum or max) and C (count), then ties_finalize writes the result in OUT_DTYPE.
//
// ties_merge_sum binds 0 = A (read_write), 1 = C (read_write), 2 = S (read), 3..N+2 = x0..x{N-1},
// 11 = uniform Params. ties_merge_delta takes one fine-tuned tensor and the base instead of a
// task vector (v = x - base in f32 after decoding, as task_vector computes it): 0 = A, 1 = C,
// 2 = S, 3 = x (X0_DTYPE), 4 = base (B_DTYPE), 5 = uniform Params. ties_finalize binds 0 = out (read_write), 1 = A, 2 = C, 3 = S,
// 4 = uniform FinalParams.

override MERGE: u32 = 0u;
override ACCUMULATE: bool = false;
override OUT_DTYPE: u32 = 0u;
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
    majority: f32,
    _pad0: u32,
    _pad1: u32,
    thr: array<vec4<u32>, 2>,
}

struct FinalParams {
    n: u32,
    majority: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> acc_a: array<u32>;
@group(0) @binding(1) var<storage, read_write> acc_c: array<u32>;
@group(0) @binding(2) var<storage, read> s_in: array<u32>;
@group(0) @binding(3) var<storage, read> x0: array<u32>;
@group(0) @binding(4) var<storage, read> x1: array<u32>;
@group(0) @binding(5) var<storage, read> x2: array<u32>;
@group(0) @binding(6) var<storage, read> x3: array<u32>;
@group(0) @binding(7) var<storage, read> x4: array<u32>;
@group(0) @binding(8) var<storage, read> x5: array<u32>;
@group(0) @binding(9) var<storage, read> x6: array<u32>;
@group(0) @binding(10) var<storage, read> x7: array<u32>;
@group(0) @binding(4) var<storage, read> delta_base: array<u32>;
@group(0) @binding(5) var<uniform> p2: Params;

@group(0) @binding(0) var<storage, read_write> fin_out: array<u32>;
@group(0) @binding(1) var<storage, read> fin_a: array<u32>;
@group(0) @binding(2) var<storage, read> fin_c: array<u32>;
@group(0) @binding(3) var<storage, read> fin_s: array<u32>;
@group(0) @binding(4) var<uniform> pf: FinalParams;

fn ld0(t: u32, n: u32) -> vec2<f32> { return decode_pair(x0[word_lo(t, X0_DTYPE)], x0[word_hi(t, X0_DTYPE, n)], X0_DTYPE); }
fn ld1(t: u32, n: u32) -> vec2<f32> { return decode_pair(x1[word_lo(t, X1_DTYPE)], x1[word_hi(t, X1_DTYPE, n)], X1_DTYPE); }
fn ld2(t: u32, n: u32) -> vec2<f32> { return decode_pair(x2[word_lo(t, X2_DTYPE)], x2[word_hi(t, X2_DTYPE, n)], X2_DTYPE); }
fn ld3(t: u32, n: u32) -> vec2<f32> { return decode_pair(x3[word_lo(t, X3_DTYPE)], x3[word_hi(t, X3_DTYPE, n)], X3_DTYPE); }
fn ld4(t: u32, n: u32) -> vec2<f32> { return decode_pair(x4[word_lo(t, X4_DTYPE)], x4[word_hi(t, X4_DTYPE, n)], X4_DTYPE); }
fn ld5(t: u32, n: u32) -> vec2<f32> { return decode_pair(x5[word_lo(t, X5_DTYPE)], x5[word_hi(t, X5_DTYPE, n)], X5_DTYPE); }
fn ld6(t: u32, n: u32) -> vec2<f32> { return decode_pair(x6[word_lo(t, X6_DTYPE)], x6[word_hi(t, X6_DTYPE, n)], X6_DTYPE); }
fn ld7(t: u32, n: u32) -> vec2<f32> { return decode_pair(x7[word_lo(t, X7_DTYPE)], x7[word_hi(t, X7_DTYPE, n)], X7_DTYPE); }

// Accumulator state of one pair: a (sum or max |.|), c (count).
struct Acc {
    a: vec2<f32>,
    c: vec2<f32>,
}

fn elected(sv: f32, majority: f32) -> f32 {
    return select(sign(sv), majority, sv == 0.0);
}

fn trim1(v: f32, thr: u32) -> f32 {
    return select(0.0, v, abs_bits(v) >= thr);
}

fn kept(v: f32, s: f32) -> bool {
    return select((v < 0.0), (v > 0.0), (s > 0.0));
}

fn add1(a: f32, c: f32, v: f32, s: f32) -> vec2<f32> {
    if (!kept(v, s)) {
        return vec2<f32>(a, c);
    }
    if (MERGE == 2u) {
        return vec2<f32>(max(a, abs(v)), c);
    }
    return vec2<f32>(a + v, c + 1.0);
}

fn add(st: Acc, x: vec2<f32>, thr: u32, s: vec2<f32>) -> Acc {
    let e0 = add1(st.a.x, st.c.x, trim1(x.x, thr), s.x);
    let e1 = add1(st.a.y, st.c.y, trim1(x.y, thr), s.y);
    return Acc(vec2<f32>(e0.x, e1.x), vec2<f32>(e0.y, e1.y));
}

fn load_f32(t: u32, n: u32, which: u32) -> vec2<f32> {
    let lo = 2u * t;
    let hi = min(2u * t + 1u, n - 1u);
    if (which == 0u) {
        return vec2<f32>(bitcast<f32>(acc_a[lo]), bitcast<f32>(acc_a[hi]));
    }
    if (which == 1u) {
        return vec2<f32>(bitcast<f32>(acc_c[lo]), bitcast<f32>(acc_c[hi]));
    }
    return vec2<f32>(bitcast<f32>(s_in[lo]), bitcast<f32>(s_in[hi]));
}

fn begin(t: u32, n: u32) -> Acc {
    if (ACCUMULATE) {
        var c = vec2<f32>(0.0);
        if (MERGE == 1u) {
            c = load_f32(t, n, 1u);
        }
        return Acc(load_f32(t, n, 0u), c);
    }
    return Acc(vec2<f32>(0.0), vec2<f32>(0.0));
}

fn finish(t: u32, st: Acc, n: u32) {
    acc_a[2u * t] = bitcast<u32>(st.a.x);
    if (MERGE == 1u) {
        acc_c[2u * t] = bitcast<u32>(st.c.x);
    }
    if (2u * t + 1u < n) {
        acc_a[2u * t + 1u] = bitcast<u32>(st.a.y);
        if (MERGE == 1u) {
            acc_c[2u * t + 1u] = bitcast<u32>(st.c.y);
        }
    }
}

fn ld_base(t: u32, n: u32) -> vec2<f32> { return decode_pair(delta_base[word_lo(t, B_DTYPE)], delta_base[word_hi(t, B_DTYPE, n)], B_DTYPE); }

@compute @workgroup_size(WG)
fn ties_merge_delta(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = p2.n;
    if (t >= pair_count(n)) {
        return;
    }
    let sv = load_f32(t, n, 2u);
    let s = vec2<f32>(elected(sv.x, p2.majority), elected(sv.y, p2.majority));
    var st = begin(t, n);
    st = add(st, ld0(t, n) - ld_base(t, n), p2.thr[0].x, s);
    finish(t, st, n);
}

// ties_merge_sum: one batch of N task vectors into the accumulators. A template line
// (`//@each`, see weighted_sum.wgsl) writes one step per input; fusion_kernels::wgsl::
// ties_merge_sum(N) expands it. Binds 0 = A, 1 = C, 2 = S, 3 + k = x_k, 11 = uniform Params
// (a fixed binding after the eight input slots, whatever N).

@group(0) @binding(11) var<uniform> pm: Params;

@compute @workgroup_size(WG)
fn ties_merge_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = pm.n;
    if (t >= pair_count(n)) {
        return;
    }
    let sv = load_f32(t, n, 2u);
    let s = vec2<f32>(elected(sv.x, pm.majority), elected(sv.y, pm.majority));
    var st = begin(t, n);
//@each     st = add(st, ld{k}(t, n), pm.thr[{k/4}][{k%4}], s);
    finish(t, st, n);
}

@compute @workgroup_size(WG)
fn ties_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg);
    let n = pf.n;
    if (t >= pair_count(n)) {
        return;
    }
    let lo = 2u * t;
    let hi = min(2u * t + 1u, n - 1u);
    let a = vec2<f32>(bitcast<f32>(fin_a[lo]), bitcast<f32>(fin_a[hi]));
    var v = a;
    if (MERGE == 1u) {
        let c = vec2<f32>(bitcast<f32>(fin_c[lo]), bitcast<f32>(fin_c[hi]));
        v = a / max(c, vec2<f32>(1.0));
    } else if (MERGE == 2u) {
        let sv = vec2<f32>(bitcast<f32>(fin_s[lo]), bitcast<f32>(fin_s[hi]));
        v = a * vec2<f32>(elected(sv.x, pf.majority), elected(sv.y, pf.majority));
    }
    if (OUT_DTYPE == DT_F32) {
        fin_out[lo] = bitcast<u32>(v.x);
        if (lo + 1u < n) {
            fin_out[lo + 1u] = bitcast<u32>(v.y);
        }
    } else {
        fin_out[t] = encode_pair16(v, OUT_DTYPE);
    }
}

// ties_merge_delta_n: the whole merge of one key from up to eight fine-tuned tensors and the
// base in one launch, written as the merged *model* tensor: out = base * W_BASE + v * LAMBDA
// (the two-input weighted sum's arithmetic, in OUT_DTYPE), where v is what INPUTS launches of
// ties_merge_delta and ties_finalize give. Nothing but S and the inputs is read, and only out
// is written (no accumulators). It also adds to slot `slot` of a 64-bit counter the entries
// that ties_undecided would count (S == 0 with a kept entry, or every S == 0 for `max`),
// so that a merge done before the majority sign is known can be checked against it.
//
// Binds 0 = out (read_write, OUT_DTYPE), 1 = base (B_DTYPE), 2 = S (read f32), 3..10 = x0..x7
// (slots past INPUTS are bound to x0 and never read), 11 = counters (read_write, (lo, hi) per
// slot), 12 = uniform MergeNParams.

override INPUTS: u32 = 8u;
override ANY_ZERO: bool = false;

struct MergeNParams {
    n: u32,
    majority: f32,
    w_base: f32,
    lambda: f32,
    thr: array<vec4<u32>, 2>,
    slot: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(1) var<storage, read> n_base: array<u32>;
@group(0) @binding(11) var<storage, read_write> n_counters: array<atomic<u32>>;
@group(0) @binding(12) var<uniform> pn: MergeNParams;

var<workgroup> n_undecided: atomic<u32>;

fn ld_n_base(t: u32, n: u32) -> vec2<f32> { return decode_pair(n_base[word_lo(t, B_DTYPE)], n_base[word_hi(t, B_DTYPE, n)], B_DTYPE); }

fn n_undecided_at(s: f32, a: f32) -> u32 {
    return select(0u, 1u, s == 0.0 && (ANY_ZERO || a != 0.0));
}

@compute @workgroup_size(WG)
fn ties_merge_delta_n(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid == 0u) {
        atomicStore(&n_undecided, 0u);
    }
    workgroupBarrier();
    let t = flat_index(gid, nwg);
    let n = pn.n;
    if (t < pair_count(n)) {
        let b = ld_n_base(t, n);
        let sv = vec2<f32>(bitcast<f32>(s_in[2u * t]), bitcast<f32>(s_in[min(2u * t + 1u, n - 1u)]));
        let s = vec2<f32>(elected(sv.x, pn.majority), elected(sv.y, pn.majority));
        var st = Acc(vec2<f32>(0.0), vec2<f32>(0.0));
        st = add(st, ld0(t, n) - b, pn.thr[0].x, s);
        if (INPUTS > 1u) { st = add(st, ld1(t, n) - b, pn.thr[0].y, s); }
        if (INPUTS > 2u) { st = add(st, ld2(t, n) - b, pn.thr[0].z, s); }
        if (INPUTS > 3u) { st = add(st, ld3(t, n) - b, pn.thr[0].w, s); }
        if (INPUTS > 4u) { st = add(st, ld4(t, n) - b, pn.thr[1].x, s); }
        if (INPUTS > 5u) { st = add(st, ld5(t, n) - b, pn.thr[1].y, s); }
        if (INPUTS > 6u) { st = add(st, ld6(t, n) - b, pn.thr[1].z, s); }
        if (INPUTS > 7u) { st = add(st, ld7(t, n) - b, pn.thr[1].w, s); }
        var c = n_undecided_at(sv.x, st.a.x);
        if (2u * t + 1u < n) {
            c += n_undecided_at(sv.y, st.a.y);
        }
        if (c != 0u) {
            atomicAdd(&n_undecided, c);
        }
        // ties_finalize's arithmetic, then the weighted sum's (out = 0 + base * w + v * lambda).
        var v = st.a;
        if (MERGE == 1u) {
            v = st.a / max(st.c, vec2<f32>(1.0));
        } else if (MERGE == 2u) {
            v = st.a * s;
        }
        var r = vec2<f32>(0.0);
        r += pn.w_base * b;
        r += pn.lambda * v;
        if (OUT_DTYPE == DT_F32) {
            fin_out[2u * t] = bitcast<u32>(r.x);
            if (2u * t + 1u < n) {
                fin_out[2u * t + 1u] = bitcast<u32>(r.y);
            }
        } else {
            fin_out[t] = encode_pair16(r, OUT_DTYPE);
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        let v = atomicLoad(&n_undecided);
        if (v != 0u) {
            let i = 2u * pn.slot;
            let old = atomicAdd(&n_counters[i], v);
            if (old > 0xffffffffu - v) {
                atomicAdd(&n_counters[i + 1u], 1u);
            }
        }
    }
}

// ties_merge_delta_q: ties_merge_delta_n where every tensor (inputs, base and out) is f32, four
// elements per invocation through vec4 loads. Same bindings and arithmetic; elements past n
// (the padding of the last quad, zeros in the inputs) are written but not counted.

@group(0) @binding(0) var<storage, read_write> q_out: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> q_base: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> q_s: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> q_x0: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> q_x1: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> q_x2: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> q_x3: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> q_x4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> q_x5: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> q_x6: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read> q_x7: array<vec4<f32>>;

fn trim4(v: vec4<f32>, thr: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), v, (bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu)) >= vec4<u32>(thr));
}

// add1 over four lanes: a (sum or max |v|) and c (count) of the entries kept under signs s.
struct Acc4 {
    a: vec4<f32>,
    c: vec4<f32>,
}

fn add4(st: Acc4, v: vec4<f32>, s: vec4<f32>) -> Acc4 {
    let keep = select((v < vec4<f32>(0.0)), (v > vec4<f32>(0.0)), (s > vec4<f32>(0.0)));
    if (MERGE == 2u) {
        return Acc4(select(st.a, max(st.a, abs(v)), keep), st.c);
    }
    return Acc4(select(st.a, st.a + v, keep), select(st.c, st.c + 1.0, keep));
}

// ties_finalize's arithmetic, then the weighted sum's: base * w_base + v * lambda.
fn finish4(st: Acc4, s: vec4<f32>, b: vec4<f32>, w_base: f32, lambda: f32) -> vec4<f32> {
    var v = st.a;
    if (MERGE == 1u) {
        v = st.a / max(st.c, vec4<f32>(1.0));
    } else if (MERGE == 2u) {
        v = st.a * s;
    }
    var r = vec4<f32>(0.0);
    r += w_base * b;
    r += lambda * v;
    return r;
}

// Add v to the 64-bit counter (lo, hi) at word i of the counters, or of the votes.
fn counter_add(i: u32, v: u32) {
    if (v != 0u) {
        let old = atomicAdd(&n_counters[i], v);
        if (old > 0xffffffffu - v) {
            atomicAdd(&n_counters[i + 1u], 1u);
        }
    }
}

fn vote_add(i: u32, v: u32) {
    if (v != 0u) {
        let old = atomicAdd(&q_votes[i], v);
        if (old > 0xffffffffu - v) {
            atomicAdd(&q_votes[i + 1u], 1u);
        }
    }
}

// The trimmed task vectors of up to eight models at one quad; slots past INPUTS stay zero and
// are neither summed nor merged.
struct Quads8 {
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
    v4: vec4<f32>,
    v5: vec4<f32>,
    v6: vec4<f32>,
    v7: vec4<f32>,
}

// Quad t of every input less the base quad b, trimmed at each model's threshold bits.
fn trimmed8(t: u32, b: vec4<f32>, thr: array<vec4<u32>, 2>) -> Quads8 {
    let z = vec4<f32>(0.0);
    var q = Quads8(z, z, z, z, z, z, z, z);
    q.v0 = trim4(q_x0[t] - b, thr[0].x);
    if (INPUTS > 1u) { q.v1 = trim4(q_x1[t] - b, thr[0].y); }
    if (INPUTS > 2u) { q.v2 = trim4(q_x2[t] - b, thr[0].z); }
    if (INPUTS > 3u) { q.v3 = trim4(q_x3[t] - b, thr[0].w); }
    if (INPUTS > 4u) { q.v4 = trim4(q_x4[t] - b, thr[1].x); }
    if (INPUTS > 5u) { q.v5 = trim4(q_x5[t] - b, thr[1].y); }
    if (INPUTS > 6u) { q.v6 = trim4(q_x6[t] - b, thr[1].z); }
    if (INPUTS > 7u) { q.v7 = trim4(q_x7[t] - b, thr[1].w); }
    return q;
}

// The elected sum S, in model order (ties_elect_delta_q's arithmetic).
fn elected8(q: Quads8) -> vec4<f32> {
    var sv = vec4<f32>(0.0);
    sv += q.v0;
    if (INPUTS > 1u) { sv += q.v1; }
    if (INPUTS > 2u) { sv += q.v2; }
    if (INPUTS > 3u) { sv += q.v3; }
    if (INPUTS > 4u) { sv += q.v4; }
    if (INPUTS > 5u) { sv += q.v5; }
    if (INPUTS > 6u) { sv += q.v6; }
    if (INPUTS > 7u) { sv += q.v7; }
    return sv;
}

// The elected sign of S: sign(S), the majority where S = 0.
fn sign4(sv: vec4<f32>, majority: f32) -> vec4<f32> {
    return select(sign(sv), vec4<f32>(majority), (sv == vec4<f32>(0.0)));
}

// The kept entries under signs s, in model order.
fn kept8(q: Quads8, s: vec4<f32>) -> Acc4 {
    var st = Acc4(vec4<f32>(0.0), vec4<f32>(0.0));
    st = add4(st, q.v0, s);
    if (INPUTS > 1u) { st = add4(st, q.v1, s); }
    if (INPUTS > 2u) { st = add4(st, q.v2, s); }
    if (INPUTS > 3u) { st = add4(st, q.v3, s); }
    if (INPUTS > 4u) { st = add4(st, q.v4, s); }
    if (INPUTS > 5u) { st = add4(st, q.v5, s); }
    if (INPUTS > 6u) { st = add4(st, q.v6, s); }
    if (INPUTS > 7u) { st = add4(st, q.v7, s); }
    return st;
}

// 1 for each of the `lanes` another majority would change (what ties_undecided counts).
fn undecided4(lanes: vec4<bool>, sv: vec4<f32>, st: Acc4) -> vec4<u32> {
    let und = lanes & (sv == vec4<f32>(0.0)) & (vec4<bool>(ANY_ZERO) | (st.a != vec4<f32>(0.0)));
    return select(vec4<u32>(0u), vec4<u32>(1u), und);
}

@compute @workgroup_size(WG)
fn ties_merge_delta_q(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = pn.n;
    let quads = (n + 3u) / 4u;
    let grid = nwg.x * nwg.y * nwg.z * WG;
    var undecided = vec4<u32>(0u);
    let f = flat_index(gid, nwg);
    for (var i = 0u; row_item(f, i, grid) < quads; i++) {
        let t = row_item(f, i, grid);
        let b = q_base[t];
        let sv = q_s[t];
        let s = sign4(sv, pn.majority);
        let st = kept8(trimmed8(t, b, pn.thr), s);
        let lanes = (vec4<u32>(4u * t) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(n);
        undecided += undecided4(lanes, sv, st);
        q_out[t] = finish4(st, s, b, pn.w_base, pn.lambda);
    }
    // Few invocations loop over the chunk: each adds its count itself (no barrier, which
    // software adapters pay dearly for).
    counter_add(2u * pn.slot, undecided.x + undecided.y + undecided.z + undecided.w);
}

// ties_elect_merge_delta_q: ties_elect_delta_q and ties_merge_delta_q of one chunk in one
// launch, for when the majority sign is assumed (or known): each quad of every input is read
// once, the elected sum stays in registers (S is never written), and the same arithmetic in the
// same order gives the same bits as the two launches. The elected signs of S are counted as
// ties_elect_delta_q counts them, the undecided entries as ties_merge_delta_q does.
//
// Binds 0 = out (read_write f32), 1 = base, 2 = vote counters (read_write: pos_lo, pos_hi,
// neg_lo, neg_hi), 3..10 = x0..x7, 11 = counters (read_write, (lo, hi) per slot),
// 12 = uniform MergeNParams.

@group(0) @binding(2) var<storage, read_write> q_votes: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn ties_elect_merge_delta_q(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = pn.n;
    let quads = (n + 3u) / 4u;
    let grid = nwg.x * nwg.y * nwg.z * WG;
    var undecided = vec4<u32>(0u);
    var pos = vec4<u32>(0u);
    var neg = vec4<u32>(0u);
    let f = flat_index(gid, nwg);
    for (var i = 0u; row_item(f, i, grid) < quads; i++) {
        let t = row_item(f, i, grid);
        let b = q_base[t];
        let q = trimmed8(t, b, pn.thr);
        let sv = elected8(q);
        let lanes = (vec4<u32>(4u * t) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(n);
        pos += select(vec4<u32>(0u), vec4<u32>(1u), lanes & (sv > vec4<f32>(0.0)));
        neg += select(vec4<u32>(0u), vec4<u32>(1u), lanes & (sv < vec4<f32>(0.0)));
        let s = sign4(sv, pn.majority);
        let st = kept8(q, s);
        undecided += undecided4(lanes, sv, st);
        q_out[t] = finish4(st, s, b, pn.w_base, pn.lambda);
    }
    // One atomic per invocation and counter (64-bit: lo, then hi on carry).
    vote_add(0u, pos.x + pos.y + pos.z + pos.w);
    vote_add(2u, neg.x + neg.y + neg.z + neg.w);
    counter_add(2u * pn.slot, undecided.x + undecided.y + undecided.z + undecided.w);
}

// ties_bracket_merge_delta_q: the thresholds' bracket pass (radix_bracket_delta_q in
// select.wgsl), the election and the merge of one chunk in one launch, before the thresholds
// are known exactly: each model's threshold lies in its bracket [lo, hi) of |τ| bits, so an
// entry with bits >= hi is kept whatever it is, one below lo dropped, and one inside the
// bracket is undecided until the counts settle the threshold. Such entries count in their
// bracket's bins as radix_bracket_delta_q counts them, and mark their position dirty (one bit
// per element); the merge treats them as dropped (trim at hi). The votes and the undecided
// count take clean positions only: the caller merges the dirty ones again with the exact
// thresholds (ties_elect_merge_delta over the gathered entries) and counts them there.
//
// Binds 0 = out, 1 = base, 2 = votes, 3..10 = x0..x7, 11 = counters (as
// ties_elect_merge_delta_q), 12 = bracket counts (read_write: per model k, from word off_k,
// above as 64 bits, then bin b at off_k + 2 + 2b), 13 = dirty bits (read_write: element i of
// the chunk is bit i % 32 of word dirty_at + i / 32), 14 = uniform BracketMergeParams.

struct BracketMergeParams {
    n: u32,
    majority: f32,
    w_base: f32,
    lambda: f32,
    lo: array<vec4<u32>, 2>,
    hi: array<vec4<u32>, 2>,
    off: array<vec4<u32>, 2>,
    slot: u32,
    dirty_at: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(12) var<storage, read_write> bm_counts: array<atomic<u32>>;
@group(0) @binding(13) var<storage, read_write> bm_dirty: array<atomic<u32>>;
@group(0) @binding(14) var<uniform> pbm: BracketMergeParams;

fn bm_add64(w: u32, c: u32) {
    if (c == 0u) {
        return;
    }
    let old = atomicAdd(&bm_counts[w], c);
    if (old > 0xffffffffu - c) {
        atomicAdd(&bm_counts[w + 1u], 1u);
    }
}

// Model k's quad v on the `lanes` that are elements: counts those inside the bracket in their
// bins and returns (entries kept whatever the threshold: v where bits >= hi, else 0; the
// lanes inside the bracket as 1s; the count above the bracket).
struct Classified {
    kept: vec4<f32>,
    inside: vec4<u32>,
    above: u32,
}

fn bm_classify(k: u32, v: vec4<f32>, lanes: vec4<bool>) -> Classified {
    let lo = pbm.lo[k / 4u][k % 4u];
    let hi = pbm.hi[k / 4u][k % 4u];
    let bits = bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu);
    let up = bits >= vec4<u32>(hi);
    let inside = lanes & !up & (bits >= vec4<u32>(lo));
    if (any(inside)) {
        let off = pbm.off[k / 4u][k % 4u];
        for (var j = 0u; j < 4u; j++) {
            if (inside[j]) {
                bm_add64(off + 2u + 2u * (bits[j] - lo), 1u);
            }
        }
    }
    let a = select(vec4<u32>(0u), vec4<u32>(1u), lanes & up);
    return Classified(
        select(vec4<f32>(0.0), v, up),
        select(vec4<u32>(0u), vec4<u32>(1u), inside),
        a.x + a.y + a.z + a.w,
    );
}

@compute @workgroup_size(WG)
fn ties_bracket_merge_delta_q(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = pbm.n;
    let quads = (n + 3u) / 4u;
    let grid = nwg.x * nwg.y * nwg.z * WG;
    var undecided = vec4<u32>(0u);
    var pos = vec4<u32>(0u);
    var neg = vec4<u32>(0u);
    // Counts above each bracket, models 0..3 and 4..7.
    var above_a = vec4<u32>(0u);
    var above_b = vec4<u32>(0u);
    let f = flat_index(gid, nwg);
    for (var i = 0u; row_item(f, i, grid) < quads; i++) {
        let t = row_item(f, i, grid);
        let b = q_base[t];
        let lanes = (vec4<u32>(4u * t) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(n);
        var inside = vec4<u32>(0u);
        let c0 = bm_classify(0u, q_x0[t] - b, lanes);
        above_a.x += c0.above;
        inside |= c0.inside;
        var c1 = Classified(vec4<f32>(0.0), vec4<u32>(0u), 0u);
        var c2 = c1;
        var c3 = c1;
        var c4 = c1;
        var c5 = c1;
        var c6 = c1;
        var c7 = c1;
        if (INPUTS > 1u) { c1 = bm_classify(1u, q_x1[t] - b, lanes); above_a.y += c1.above; inside |= c1.inside; }
        if (INPUTS > 2u) { c2 = bm_classify(2u, q_x2[t] - b, lanes); above_a.z += c2.above; inside |= c2.inside; }
        if (INPUTS > 3u) { c3 = bm_classify(3u, q_x3[t] - b, lanes); above_a.w += c3.above; inside |= c3.inside; }
        if (INPUTS > 4u) { c4 = bm_classify(4u, q_x4[t] - b, lanes); above_b.x += c4.above; inside |= c4.inside; }
        if (INPUTS > 5u) { c5 = bm_classify(5u, q_x5[t] - b, lanes); above_b.y += c5.above; inside |= c5.inside; }
        if (INPUTS > 6u) { c6 = bm_classify(6u, q_x6[t] - b, lanes); above_b.z += c6.above; inside |= c6.inside; }
        if (INPUTS > 7u) { c7 = bm_classify(7u, q_x7[t] - b, lanes); above_b.w += c7.above; inside |= c7.inside; }
        // ties_elect_merge_delta_q with every threshold at its bracket's top.
        let q = Quads8(c0.kept, c1.kept, c2.kept, c3.kept, c4.kept, c5.kept, c6.kept, c7.kept);
        let sv = elected8(q);
        let clean = lanes & (inside == vec4<u32>(0u));
        pos += select(vec4<u32>(0u), vec4<u32>(1u), clean & (sv > vec4<f32>(0.0)));
        neg += select(vec4<u32>(0u), vec4<u32>(1u), clean & (sv < vec4<f32>(0.0)));
        let s = sign4(sv, pbm.majority);
        let st = kept8(q, s);
        undecided += undecided4(clean, sv, st);
        q_out[t] = finish4(st, s, b, pbm.w_base, pbm.lambda);
        if (any(inside != vec4<u32>(0u))) {
            let shift = 4u * (t % 8u);
            let bits = (inside.x | (inside.y << 1u) | (inside.z << 2u) | (inside.w << 3u)) << shift;
            atomicOr(&bm_dirty[pbm.dirty_at + t / 8u], bits);
        }
    }
    bm_add64(pbm.off[0].x, above_a.x);
    if (INPUTS > 1u) { bm_add64(pbm.off[0].y, above_a.y); }
    if (INPUTS > 2u) { bm_add64(pbm.off[0].z, above_a.z); }
    if (INPUTS > 3u) { bm_add64(pbm.off[0].w, above_a.w); }
    if (INPUTS > 4u) { bm_add64(pbm.off[1].x, above_b.x); }
    if (INPUTS > 5u) { bm_add64(pbm.off[1].y, above_b.y); }
    if (INPUTS > 6u) { bm_add64(pbm.off[1].z, above_b.z); }
    if (INPUTS > 7u) { bm_add64(pbm.off[1].w, above_b.w); }
    vote_add(0u, pos.x + pos.y + pos.z + pos.w);
    vote_add(2u, neg.x + neg.y + neg.z + neg.w);
    counter_add(2u * pbm.slot, undecided.x + undecided.y + undecided.z + undecided.w);
}
