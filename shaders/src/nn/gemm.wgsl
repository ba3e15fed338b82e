// The general strided, batched product with transposed operands, accumulation and a fused
// epilogue (bias, activation, residual): the operation, its overrides, uniform block and bindings
// are those of `include/gemm_common.wgsl`, which this file is compiled after. The backward
// passes need the transposed operands and accumulation (for C = A B, dA = dC Bᵀ with B_TRANS and
// dB = Aᵀ dC with A_TRANS, accumulated over batches); the forward passes (nn.Linear, attention)
// the epilogue.
//
// Two entry points compute the same thing and are chosen (and tuned) per adapter by the host:
//
//   gemm_tiled  workgroups of T x T invocations, each a 4 x 4 block of a (4T x 4T) tile of C;
//               K-slices of depth 16 staged in workgroup memory (2 x 256 vec4 = 8 KiB, sized for
//               T = 16). For hardware GPUs. Workgroup w handles tile w (flat over x, y, z);
//               workgroups past the job skip loads and stores but reach every barrier.
//   gemm_reg    64 invocations per workgroup, each an 8 x 8 block of C in registers, read
//               straight from storage (no workgroup memory, no barriers). For software adapters
//               (llvmpipe), where barriers are coroutine switches. Invocation g (flat) handles
//               block g. Rows and columns past the edge load clamped, valid indices and are not
//               stored, so the k loop has no branches.
//
// The Params fields tiles_m / tiles_n / total_tiles count the entry point's tiles (tiled) or
// blocks (reg).

override T: u32 = 16u;

const TK: u32 = 16u;

var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

// Batch bases of tile (or block) `tile`, and its index inside the batch.
struct Batch {
    a_base: u32,
    b_base: u32,
    c_base: u32,
    in_batch: u32,
}

fn batch_of(tile: u32) -> Batch {
    let per_batch = p.tiles_m * p.tiles_n;
    let z = bases_of(tile / per_batch);
    var out: Batch;
    out.a_base = z.a;
    out.b_base = z.b;
    out.c_base = z.c;
    out.in_batch = tile % per_batch;
    return out;
}

@compute @workgroup_size(T, T)
fn gemm_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let w = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
    let valid = w < p.total_tiles;
    let bt = batch_of(select(0u, w, valid));
    let tile_row = (bt.in_batch / p.tiles_n) * 4u * T;
    let tile_col = (bt.in_batch % p.tiles_n) * 4u * T;
    let flat = lid.y * T + lid.x;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    let slots_per_inv = TK / T;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var s = 0u; s < slots_per_inv; s++) {
            let slot = flat + s * T * T;
            let kk = slot % TK;
            let quad = slot / TK;
            let kg = k0 + kk;
            let r = tile_row + 4u * quad;
            var av = vec4<f32>(0.0);
            var bv = vec4<f32>(0.0);
            if (valid && kg < p.k) {
                for (var i = 0u; i < 4u; i++) {
                    if (r + i < p.m) {
                        av[i] = a_at(bt.a_base, r + i, kg);
                    }
                    if (tile_col + 4u * quad + i < p.n) {
                        bv[i] = b_at(bt.b_base, kg, tile_col + 4u * quad + i);
                    }
                }
            }
            a_tile[kk * T + quad] = av;
            b_tile[kk * T + quad] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let av = a_tile[kk * T + lid.y];
            let bv = b_tile[kk * T + lid.x];
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    if (!valid) {
        return;
    }
    let row = tile_row + 4u * lid.y;
    let col = tile_col + 4u * lid.x;
    for (var i = 0u; i < 4u; i++) {
        store_row(bt.c_base, row + i, col, acc[i]);
    }
}

@compute @workgroup_size(64)
fn gemm_reg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let g = (wid.x + nwg.x * (wid.y + nwg.y * wid.z)) * 64u + li;
    if (g >= p.total_tiles) {
        return;
    }
    let bt = batch_of(g);
    let row = (bt.in_batch / p.tiles_n) * 8u;
    let col = (bt.in_batch % p.tiles_n) * 8u;
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
    let c4 = min(col + 4u, p.n - 1u);
    let c5 = min(col + 5u, p.n - 1u);
    let c6 = min(col + 6u, p.n - 1u);
    let c7 = min(col + 7u, p.n - 1u);
    var acc0_0 = vec4<f32>(0.0);
    var acc0_1 = vec4<f32>(0.0);
    var acc1_0 = vec4<f32>(0.0);
    var acc1_1 = vec4<f32>(0.0);
    var acc2_0 = vec4<f32>(0.0);
    var acc2_1 = vec4<f32>(0.0);
    var acc3_0 = vec4<f32>(0.0);
    var acc3_1 = vec4<f32>(0.0);
    var acc4_0 = vec4<f32>(0.0);
    var acc4_1 = vec4<f32>(0.0);
    var acc5_0 = vec4<f32>(0.0);
    var acc5_1 = vec4<f32>(0.0);
    var acc6_0 = vec4<f32>(0.0);
    var acc6_1 = vec4<f32>(0.0);
    var acc7_0 = vec4<f32>(0.0);
    var acc7_1 = vec4<f32>(0.0);
    let ab = bt.a_base;
    let bb = bt.b_base;
    for (var kk = 0u; kk < p.k; kk++) {
        let b_lo = vec4<f32>(b_at(bb, kk, c0), b_at(bb, kk, c1), b_at(bb, kk, c2), b_at(bb, kk, c3));
        let b_hi = vec4<f32>(b_at(bb, kk, c4), b_at(bb, kk, c5), b_at(bb, kk, c6), b_at(bb, kk, c7));
        let a0 = a_at(ab, r0, kk);
        acc0_0 += a0 * b_lo;
        acc0_1 += a0 * b_hi;
        let a1 = a_at(ab, r1, kk);
        acc1_0 += a1 * b_lo;
        acc1_1 += a1 * b_hi;
        let a2 = a_at(ab, r2, kk);
        acc2_0 += a2 * b_lo;
        acc2_1 += a2 * b_hi;
        let a3 = a_at(ab, r3, kk);
        acc3_0 += a3 * b_lo;
        acc3_1 += a3 * b_hi;
        let a4 = a_at(ab, r4, kk);
        acc4_0 += a4 * b_lo;
        acc4_1 += a4 * b_hi;
        let a5 = a_at(ab, r5, kk);
        acc5_0 += a5 * b_lo;
        acc5_1 += a5 * b_hi;
        let a6 = a_at(ab, r6, kk);
        acc6_0 += a6 * b_lo;
        acc6_1 += a6 * b_hi;
        let a7 = a_at(ab, r7, kk);
        acc7_0 += a7 * b_lo;
        acc7_1 += a7 * b_hi;
    }
    let cb = bt.c_base;
    store_row8(cb, row + 0u, col, acc0_0, acc0_1);
    store_row8(cb, row + 1u, col, acc1_0, acc1_1);
    store_row8(cb, row + 2u, col, acc2_0, acc2_1);
    store_row8(cb, row + 3u, col, acc3_0, acc3_1);
    store_row8(cb, row + 4u, col, acc4_0, acc4_1);
    store_row8(cb, row + 5u, col, acc5_0, acc5_1);
    store_row8(cb, row + 6u, col, acc6_0, acc6_1);
    store_row8(cb, row + 7u, col, acc7_0, acc7_1);
}

fn store_row8(c_base: u32, r: u32, col: u32, lo: vec4<f32>, hi: vec4<f32>) {
    store_row(c_base, r, col, lo);
    store_row(c_base, r, col + 4u, hi);
}
