// requires: common.wgsl
//
// TIES sign election, step 2: count the positive and negative elected signs sign(S) over a
// chunk, adding into global 64-bit counters. FusionBench's resolve_zero_signs replaces s = 0 by
// sign(sum of all signs) over the *whole* flattened task vector, so the counts of every tensor
// must be in before any tensor can be merged.
//
// Counters are 64-bit as (lo, hi) word pairs: a model may have more than 2^32 parameters. A
// carry is detected exactly once, by the invocation whose atomicAdd wrapped the low word.
//
// Bindings: 0 = counters (read_write: pos_lo, pos_hi, neg_lo, neg_hi), 1 = S (read f32),
// 2 = uniform Params.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read_write> counters: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> s_in: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> local_pos: atomic<u32>;
var<workgroup> local_neg: atomic<u32>;

fn add64(i: u32, v: u32) {
    if (v != 0u) {
        let old = atomicAdd(&counters[i], v);
        if (old > 0xffffffffu - v) {
            atomicAdd(&counters[i + 1u], 1u);
        }
    }
}

@compute @workgroup_size(WG)
fn ties_votes(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid == 0u) {
        atomicStore(&local_pos, 0u);
        atomicStore(&local_neg, 0u);
    }
    workgroupBarrier();
    let t = flat_index(gid, nwg);
    let n = p.n;
    if (t < pair_count(n)) {
        var pos = 0u;
        var neg = 0u;
        let a = bitcast<f32>(s_in[2u * t]);
        pos += select(0u, 1u, a > 0.0);
        neg += select(0u, 1u, a < 0.0);
        if (2u * t + 1u < n) {
            let b = bitcast<f32>(s_in[2u * t + 1u]);
            pos += select(0u, 1u, b > 0.0);
            neg += select(0u, 1u, b < 0.0);
        }
        if (pos != 0u) {
            atomicAdd(&local_pos, pos);
        }
        if (neg != 0u) {
            atomicAdd(&local_neg, neg);
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        add64(0u, atomicLoad(&local_pos));
        add64(2u, atomicLoad(&local_neg));
    }
}

// ties_undecided: after a disjoint merge accumulated with majority +1 (ties_merge.wgsl), count
// the entries whose merged value another majority sign would change: S == 0 (the majority
// decides their sign) with a kept entry (A != 0: under +1 the positive ones, and S == 0 means
// negative ones cancel them), or, with ANY_ZERO (merge `max`, whose result is multiplied by the
// sign), every S == 0. A merge streamed before the majority is known stands when the count is
// 0 or the majority turns out +1.
//
// Bindings: 0 = counters (read_write: 64-bit (lo, hi) per slot), 1 = S (read f32), 2 = A (read
// f32), 3 = uniform UndecidedParams.

override ANY_ZERO: bool = false;

struct UndecidedParams {
    n: u32,
    slot: u32,
}

@group(0) @binding(2) var<storage, read> und_a: array<u32>;
@group(0) @binding(3) var<uniform> pu: UndecidedParams;

var<workgroup> local_undecided: atomic<u32>;

fn undecided(s: f32, a: f32) -> u32 {
    return select(0u, 1u, s == 0.0 && (ANY_ZERO || a != 0.0));
}

@compute @workgroup_size(WG)
fn ties_undecided(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (lid == 0u) {
        atomicStore(&local_undecided, 0u);
    }
    workgroupBarrier();
    let t = flat_index(gid, nwg);
    let n = pu.n;
    if (t < pair_count(n)) {
        var c = undecided(bitcast<f32>(s_in[2u * t]), bitcast<f32>(und_a[2u * t]));
        if (2u * t + 1u < n) {
            c += undecided(bitcast<f32>(s_in[2u * t + 1u]), bitcast<f32>(und_a[2u * t + 1u]));
        }
        if (c != 0u) {
            atomicAdd(&local_undecided, c);
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        add64(2u * pu.slot, atomicLoad(&local_undecided));
    }
}
