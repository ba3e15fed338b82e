// requires: ties_merge.wgsl
//
// TIES in one launch per chunk of a key: trim, elect and disjoint merge fused, for up to eight
// fine-tuned tensors and the base (the task vectors are never written). Compiled after
// common.wgsl and ties_merge.wgsl, whose helpers (Acc, elected, trim1, add, the ld0..ld7 input
// loads and their X<k>_DTYPE overrides) it shares; the input count is the INPUTS override, every
// input slot is bound (slots past INPUTS to x0, never read), and the uniform block sits at a
// fixed binding after them.
//
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
