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
// The fused one-launch merges (trim, elect and merge of a key at once) are ties_fused.wgsl, the
// merge under bracketed thresholds ties_bracket.wgsl; both build on the helpers here.
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
