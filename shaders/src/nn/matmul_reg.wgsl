// Register-blocked matrix product for software adapters (llvmpipe/lavapipe and the like).
//
// The same operation, operand layout and uniform block as `nn_matmul.wgsl` (see there):
//
//     C[z][m, n] = alpha * sum_k A[z][m, k] * B[z][k, n]  (+ bias[n])
//
// but without workgroup memory or barriers. On a CPU adapter the invocations of a SIMD batch
// are vector lanes, a storage load with a per-lane address becomes one scalar load per lane,
// and a barrier switches between coroutines; the tiled kernel, which moves every value through
// workgroup memory between barriers, spends its time there. Here each invocation keeps an
// 8 x 8 block of C in registers and reads A and B straight from storage: 16 loads per 64
// multiply-adds (a 4 x 4 block does 8 per 16).
//
// Invocation g (flat over the dispatch: workgroups over x, y and z, 64 invocations each)
// computes block g of the job, numbered by batch, then row block, then column block. With this
// kernel the Params fields tiles_m / tiles_n / total_tiles count 8 x 8 blocks. Rows and columns
// past the edge load a clamped (valid) index and are not stored, so every load is in bounds and
// the k loop has no branches.
//
// Entry points:
//   matmul_reg       bindings 0 = A, 1 = B, 2 = C (read_write), 3 = uniform Params
//   matmul_reg_bias  bindings 0 = A, 1 = B, 2 = C (read_write), 3 = bias [N], 4 = uniform Params

override B_TRANS: bool = false;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch1: u32,
    tiles_m: u32,
    tiles_n: u32,
    total_tiles: u32,
    alpha: f32,
    a_off: u32,
    lda: u32,
    a_s0: u32,
    a_s1: u32,
    b_off: u32,
    ldb: u32,
    b_s0: u32,
    b_s1: u32,
    c_off: u32,
    ldc: u32,
    c_s0: u32,
    c_s1: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p_plain: Params;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<uniform> p_bias: Params;

// B[kk, nn] of this batch.
fn load_b(p: Params, base: u32, kk: u32, nn: u32) -> f32 {
    if (B_TRANS) {
        return b[base + nn * p.ldb + kk];
    }
    return b[base + kk * p.ldb + nn];
}

fn store_row(p: Params, c_base: u32, r: u32, col: u32, lo: vec4<f32>, hi: vec4<f32>, bias_lo: vec4<f32>, bias_hi: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    let v0 = p.alpha * lo + bias_lo;
    let v1 = p.alpha * hi + bias_hi;
    let base = c_base + r * p.ldc + col;
    for (var j = 0u; j < 4u; j++) {
        if (col + j < p.n) {
            c[base + j] = v0[j];
        }
        if (col + 4u + j < p.n) {
            c[base + 4u + j] = v1[j];
        }
    }
}

// The block's first row and column and the batch's C offset, or `valid = false` past the job.
struct Where {
    row: u32,
    col: u32,
    z0: u32,
    z1: u32,
    valid: bool,
}

fn locate(p: Params, wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> Where {
    let g = (wid.x + nwg.x * (wid.y + nwg.y * wid.z)) * 64u + li;
    var w: Where;
    w.valid = g < p.total_tiles;
    let per_batch = p.tiles_m * p.tiles_n;
    let z = g / per_batch;
    let in_batch = g % per_batch;
    w.z0 = z / p.batch1;
    w.z1 = z % p.batch1;
    w.row = (in_batch / p.tiles_n) * 8u;
    w.col = (in_batch % p.tiles_n) * 8u;
    return w;
}

fn gemm_block(p: Params, w: Where, bias_lo: vec4<f32>, bias_hi: vec4<f32>) {
    let row = w.row;
    let col = w.col;
    let a_base = p.a_off + w.z0 * p.a_s0 + w.z1 * p.a_s1;
    let b_base = p.b_off + w.z0 * p.b_s0 + w.z1 * p.b_s1;
    let c_base = p.c_off + w.z0 * p.c_s0 + w.z1 * p.c_s1;
    let ar0 = a_base + min(row + 0u, p.m - 1u) * p.lda;
    let ar1 = a_base + min(row + 1u, p.m - 1u) * p.lda;
    let ar2 = a_base + min(row + 2u, p.m - 1u) * p.lda;
    let ar3 = a_base + min(row + 3u, p.m - 1u) * p.lda;
    let ar4 = a_base + min(row + 4u, p.m - 1u) * p.lda;
    let ar5 = a_base + min(row + 5u, p.m - 1u) * p.lda;
    let ar6 = a_base + min(row + 6u, p.m - 1u) * p.lda;
    let ar7 = a_base + min(row + 7u, p.m - 1u) * p.lda;
    let bc0 = min(col + 0u, p.n - 1u);
    let bc1 = min(col + 1u, p.n - 1u);
    let bc2 = min(col + 2u, p.n - 1u);
    let bc3 = min(col + 3u, p.n - 1u);
    let bc4 = min(col + 4u, p.n - 1u);
    let bc5 = min(col + 5u, p.n - 1u);
    let bc6 = min(col + 6u, p.n - 1u);
    let bc7 = min(col + 7u, p.n - 1u);
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
    for (var kk = 0u; kk < p.k; kk++) {
        let b0 = load_b(p, b_base, kk, bc0);
        let b1 = load_b(p, b_base, kk, bc1);
        let b2 = load_b(p, b_base, kk, bc2);
        let b3 = load_b(p, b_base, kk, bc3);
        let b4 = load_b(p, b_base, kk, bc4);
        let b5 = load_b(p, b_base, kk, bc5);
        let b6 = load_b(p, b_base, kk, bc6);
        let b7 = load_b(p, b_base, kk, bc7);
        let b_lo = vec4<f32>(b0, b1, b2, b3);
        let b_hi = vec4<f32>(b4, b5, b6, b7);
        let a0 = a[ar0 + kk];
        acc0_0 += a0 * b_lo;
        acc0_1 += a0 * b_hi;
        let a1 = a[ar1 + kk];
        acc1_0 += a1 * b_lo;
        acc1_1 += a1 * b_hi;
        let a2 = a[ar2 + kk];
        acc2_0 += a2 * b_lo;
        acc2_1 += a2 * b_hi;
        let a3 = a[ar3 + kk];
        acc3_0 += a3 * b_lo;
        acc3_1 += a3 * b_hi;
        let a4 = a[ar4 + kk];
        acc4_0 += a4 * b_lo;
        acc4_1 += a4 * b_hi;
        let a5 = a[ar5 + kk];
        acc5_0 += a5 * b_lo;
        acc5_1 += a5 * b_hi;
        let a6 = a[ar6 + kk];
        acc6_0 += a6 * b_lo;
        acc6_1 += a6 * b_hi;
        let a7 = a[ar7 + kk];
        acc7_0 += a7 * b_lo;
        acc7_1 += a7 * b_hi;
    }
    store_row(p, c_base, row + 0u, col, acc0_0, acc0_1, bias_lo, bias_hi);
    store_row(p, c_base, row + 1u, col, acc1_0, acc1_1, bias_lo, bias_hi);
    store_row(p, c_base, row + 2u, col, acc2_0, acc2_1, bias_lo, bias_hi);
    store_row(p, c_base, row + 3u, col, acc3_0, acc3_1, bias_lo, bias_hi);
    store_row(p, c_base, row + 4u, col, acc4_0, acc4_1, bias_lo, bias_hi);
    store_row(p, c_base, row + 5u, col, acc5_0, acc5_1, bias_lo, bias_hi);
    store_row(p, c_base, row + 6u, col, acc6_0, acc6_1, bias_lo, bias_hi);
    store_row(p, c_base, row + 7u, col, acc7_0, acc7_1, bias_lo, bias_hi);
}

@compute @workgroup_size(64)
fn matmul_reg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let p = p_plain;
    let w = locate(p, wid, nwg, li);
    if (!w.valid) {
        return;
    }
    gemm_block(p, w, vec4<f32>(0.0), vec4<f32>(0.0));
}

@compute @workgroup_size(64)
fn matmul_reg_bias(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let p = p_bias;
    let w = locate(p, wid, nwg, li);
    if (!w.valid) {
        return;
    }
    // Columns past N read a clamped (valid) index; store_row drops them.
    let last = p.n - 1u;
    let bias_lo = vec4<f32>(
        bias[min(w.col, last)],
        bias[min(w.col + 1u, last)],
        bias[min(w.col + 2u, last)],
        bias[min(w.col + 3u, last)],
    );
    let bias_hi = vec4<f32>(
        bias[min(w.col + 4u, last)],
        bias[min(w.col + 5u, last)],
        bias[min(w.col + 6u, last)],
        bias[min(w.col + 7u, last)],
    );
    gemm_block(p, w, bias_lo, bias_hi);
}
