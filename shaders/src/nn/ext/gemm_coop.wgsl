// The product of `gemm.wgsl` with its epilogue (the operation, overrides, uniform block and
// bindings of `include/gemm_common.wgsl`)
// on tensor cores through wgpu's experimental cooperative matrices (`EXPERIMENTAL_COOPERATIVE_
// MATRIX`): operands rounded to f16, products accumulated in f32 (mixed precision, used only when
// the run asks for it: FusionBench's `fabric.precision` of `16-mixed` or `bf16-mixed`).
//
// One workgroup is one subgroup (WG invocations, set by the host to the subgroup width) and
// computes a 16 x 16 tile of C: per K-slice of depth 16 the invocations stage the A and B tiles
// in workgroup memory as f16 (zero past the edges, so the matrix operations never read out of
// bounds), load them as 16 x 16 cooperative matrices and multiply-add into an f32 accumulator.
// The accumulator goes through workgroup memory on the way out, so edges, strides, alpha and
// beta are handled by ordinary stores. Workgroup w (flat over x, y, z) handles tile w; one past
// the job skips its loads and stores but reaches every barrier.
//
// Unverified on hardware: lavapipe has no cooperative matrices; it is validated with naga only.
//
// Composed (`wgsl.rs`) as `enable f16; enable wgpu_cooperative_matrix;` (enables come first in
// WGSL), then `include/act.wgsl`, `include/gemm_common.wgsl` and this file.
//
// Entry point gemm_coop.

override WG: u32 = 32u;

// Row-major 16 x 16 tiles.
var<workgroup> a_sh: array<f16, 256>;
var<workgroup> b_sh: array<f16, 256>;
var<workgroup> c_sh: array<f32, 256>;

@compute @workgroup_size(WG)
fn gemm_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let flat = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
    let valid = flat < p.total_tiles;
    let w = select(0u, flat, valid);
    let per_batch = p.tiles_m * p.tiles_n;
    let z = w / per_batch;
    let in_batch = w % per_batch;
    let zb = bases_of(z);
    let ab = zb.a;
    let bb = zb.b;
    let cb = zb.c;
    let row0 = (in_batch / p.tiles_n) * 16u;
    let col0 = (in_batch % p.tiles_n) * 16u;

    var acc = coop_mat16x16<f32, C>();
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        for (var e = li; e < 256u; e += WG) {
            let r = e / 16u;
            let q = e % 16u;
            var av = 0.0;
            if (valid && row0 + r < p.m && k0 + q < p.k) {
                av = a_at(ab, row0 + r, k0 + q);
            }
            a_sh[e] = f16(av);
            var bv = 0.0;
            if (valid && k0 + r < p.k && col0 + q < p.n) {
                bv = b_at(bb, k0 + r, col0 + q);
            }
            b_sh[e] = f16(bv);
        }
        workgroupBarrier();
        let am = coopLoadT<coop_mat16x16<f16, A>>(&a_sh[0], 16u);
        let bm = coopLoadT<coop_mat16x16<f16, B>>(&b_sh[0], 16u);
        acc = coopMultiplyAdd(am, bm, acc);
        workgroupBarrier();
    }
    coopStoreT(acc, &c_sh[0], 16u);
    workgroupBarrier();
    for (var e = li; e < 256u; e += WG) {
        let r = row0 + e / 16u;
        let q = col0 + e % 16u;
        if (valid && r < p.m && q < p.n) {
            store_one(cb + r * p.ldc + q, q, c_sh[e]);
        }
    }
}
