// requires: ties_fused.wgsl
//
// TIES while the thresholds are still bracketed: the bracket pass of the thresholds, the
// election and the merge of one chunk in one launch (compiled after common.wgsl,
// ties_merge.wgsl and ties_fused.wgsl, whose quad helpers it shares).
//
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
