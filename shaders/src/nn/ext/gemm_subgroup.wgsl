// The product of `gemm.wgsl` with its epilogue (the operation, overrides, uniform block and
// bindings of `include/gemm_common.wgsl`, which this file is compiled after)
// for adapters with subgroup operations (wgpu `Features::SUBGROUP`). Each subgroup of S lanes
// computes an 8 x 4S tile of C: lane l owns columns 4l..4l+3 of it for all 8 rows. Per K-slice of
// depth S, lane l loads the 8 values of A at depth k0 + l, and for every depth s of the slice the
// lanes take the 8 values of lane s with subgroupShuffle; B is read as one 4-wide row piece per
// lane and depth. A is thus read once per subgroup instead of once per lane, and no workgroup
// memory or barrier is needed.
//
// The subgroup size is read from the builtin, not assumed: tiles are numbered per batch as
// row block, then column block of width 4S, and subgroup g of the dispatch (flat over workgroups
// and subgroup_id) handles tiles g, g + G, g + 2G, ... with G the subgroups in the dispatch. The
// host sizes the dispatch from the subgroup size its probe measured; any size gives correct
// results. Every loop bound is the same for all lanes of a subgroup (uniform control flow, as
// shuffles require); rows and columns past the edge load clamped, valid indices and are not
// stored.
//
// Params: as `gemm.wgsl`, with total_tiles = the number of batches (batch0 * batch1) and
// tiles_m / tiles_n unused.
//
// Entry point gemm_subgroup.

@compute @workgroup_size(64)
fn gemm_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sid: u32,
    @builtin(num_subgroups) nsg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg: u32,
) {
    let width = 4u * sg;
    let tiles_m = (p.m + 7u) / 8u;
    let tiles_n = (p.n + width - 1u) / width;
    let per_batch = tiles_m * tiles_n;
    let total = per_batch * p.total_tiles;
    let first = (wid.x + nwg.x * (wid.y + nwg.y * wid.z)) * nsg + sid;
    let stride = nwg.x * nwg.y * nwg.z * nsg;
    for (var t = first; t < total; t += stride) {
        let z = t / per_batch;
        let in_batch = t % per_batch;
        let zb = bases_of(z);
        let ab = zb.a;
        let bb = zb.b;
        let cb = zb.c;
        let row = (in_batch / tiles_n) * 8u;
        let col = (in_batch % tiles_n) * width + 4u * lane;
        let r0 = min(row + 0u, p.m - 1u);
        let r1 = min(row + 1u, p.m - 1u);
        let r2 = min(row + 2u, p.m - 1u);
        let r3 = min(row + 3u, p.m - 1u);
        let r4 = min(row + 4u, p.m - 1u);
        let r5 = min(row + 5u, p.m - 1u);
        let r6 = min(row + 6u, p.m - 1u);
        let r7 = min(row + 7u, p.m - 1u);
        let c0 = min(col + 0u, p.n - 1u);
        let c1 = min(col + 1u, p.n - 1u);
        let c2 = min(col + 2u, p.n - 1u);
        let c3 = min(col + 3u, p.n - 1u);
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        var acc2 = vec4<f32>(0.0);
        var acc3 = vec4<f32>(0.0);
        var acc4 = vec4<f32>(0.0);
        var acc5 = vec4<f32>(0.0);
        var acc6 = vec4<f32>(0.0);
        var acc7 = vec4<f32>(0.0);
        for (var k0 = 0u; k0 < p.k; k0 += sg) {
            let kl = min(k0 + lane, p.k - 1u);
            let x0 = a_at(ab, r0, kl);
            let x1 = a_at(ab, r1, kl);
            let x2 = a_at(ab, r2, kl);
            let x3 = a_at(ab, r3, kl);
            let x4 = a_at(ab, r4, kl);
            let x5 = a_at(ab, r5, kl);
            let x6 = a_at(ab, r6, kl);
            let x7 = a_at(ab, r7, kl);
            let steps = min(sg, p.k - k0);
            for (var s = 0u; s < steps; s++) {
                let kk = k0 + s;
                let bv = vec4<f32>(b_at(bb, kk, c0), b_at(bb, kk, c1), b_at(bb, kk, c2), b_at(bb, kk, c3));
                acc0 += subgroupShuffle(x0, s) * bv;
                acc1 += subgroupShuffle(x1, s) * bv;
                acc2 += subgroupShuffle(x2, s) * bv;
                acc3 += subgroupShuffle(x3, s) * bv;
                acc4 += subgroupShuffle(x4, s) * bv;
                acc5 += subgroupShuffle(x5, s) * bv;
                acc6 += subgroupShuffle(x6, s) * bv;
                acc7 += subgroupShuffle(x7, s) * bv;
            }
        }
        store_row(cb, row + 0u, col, acc0);
        store_row(cb, row + 1u, col, acc1);
        store_row(cb, row + 2u, col, acc2);
        store_row(cb, row + 3u, col, acc3);
        store_row(cb, row + 4u, col, acc4);
        store_row(cb, row + 5u, col, acc5);
        store_row(cb, row + 6u, col, acc6);
        store_row(cb, row + 7u, col, acc7);
    }
}
