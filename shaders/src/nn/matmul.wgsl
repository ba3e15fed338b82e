// Strided, batched matrix product with an optional bias: for every batch z = (z0, z1),
//
//     C[z][m, n] = alpha * sum_k A[z][m, k] * B[z][k, n]  (+ bias[n])
//
// A is row-major with row stride lda. B is row-major [K, N] with row stride ldb, or, with
// B_TRANS, stored as [N, K] (nn.Linear's weight layout, W[out, in]) so that B[k, n] = W[n, k].
// Every operand has a base offset and two batch strides (z0 outer, z1 inner, z1 < batch1), all in
// elements. That one form covers nn.Linear (one batch), the patch embedding (one batch per image,
// writing rows into the hidden-state buffer) and attention: with z0 = image/sequence and z1 =
// head, the head split and merge are only strides into the fused QKV and context buffers, so
// no transpose kernel is needed.
//
// Tiling: each workgroup computes a (4T x 4T) tile of C from K-slices of depth 16 staged in
// workgroup memory; each of its T x T invocations keeps a 4 x 4 block in registers and reads
// the staged slices as vec4s. T (the override below) is 16 where the device runs 256
// invocations per workgroup, 8 otherwise; the staging arrays are sized for T = 16
// (2 x 256 vec4 = 8 KiB of workgroup memory), so they fit the 16 KiB WebGPU guarantees.
//
// Workgroups are numbered flat over x, y and z (the host spreads them over dimensions to stay
// under max_workgroups_per_dimension); workgroup w handles batch w / (tiles_m * tiles_n).
// Workgroups past the end of the job skip their loads and stores but still reach every barrier,
// so control flow stays uniform.
//
// Entry points:
//   matmul       bindings 0 = A, 1 = B, 2 = C (read_write), 3 = uniform Params
//   matmul_bias  bindings 0 = A, 1 = B, 2 = C (read_write), 3 = bias [N], 4 = uniform Params

override T: u32 = 16u;
override B_TRANS: bool = false;

const TK: u32 = 16u;

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

// Staged K-slices: a_tile[k * 16 + i] holds rows 4i..4i+3 of the tile at depth k, b_tile the
// same for columns.
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

struct Tile {
    acc: array<vec4<f32>, 4>,
    // First row and column of this invocation's 4 x 4 block.
    row: u32,
    col: u32,
    // Where batch z of C starts.
    c_base: u32,
    valid: bool,
}

fn load_a(p: Params, base: u32, row: u32, col: u32, valid: bool) -> f32 {
    if (!valid || row >= p.m || col >= p.k) {
        return 0.0;
    }
    return a[base + row * p.lda + col];
}

// B[kk, nn] of this batch, zero outside [K, N].
fn load_b(p: Params, base: u32, kk: u32, nn: u32, valid: bool) -> f32 {
    if (!valid || kk >= p.k || nn >= p.n) {
        return 0.0;
    }
    if (B_TRANS) {
        return b[base + nn * p.ldb + kk];
    }
    return b[base + kk * p.ldb + nn];
}

fn gemm_tile(p: Params, wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> Tile {
    let w = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
    let valid = w < p.total_tiles;
    let per_batch = p.tiles_m * p.tiles_n;
    let z = select(0u, w / per_batch, valid);
    let in_batch = select(0u, w % per_batch, valid);
    let z0 = z / p.batch1;
    let z1 = z % p.batch1;
    let tile_row = (in_batch / p.tiles_n) * 4u * T;
    let tile_col = (in_batch % p.tiles_n) * 4u * T;
    let a_base = p.a_off + z0 * p.a_s0 + z1 * p.a_s1;
    let b_base = p.b_off + z0 * p.b_s0 + z1 * p.b_s1;

    let flat = lid.y * T + lid.x;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    // vec4 slots per staged slice: 16 * T; each invocation fills 16 / T of them.
    let slots_per_inv = TK / T;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var s = 0u; s < slots_per_inv; s++) {
            let slot = flat + s * T * T;
            let kk = slot % TK;
            let quad = slot / TK;
            let r = tile_row + 4u * quad;
            a_tile[kk * T + quad] = vec4<f32>(
                load_a(p, a_base, r, k0 + kk, valid),
                load_a(p, a_base, r + 1u, k0 + kk, valid),
                load_a(p, a_base, r + 2u, k0 + kk, valid),
                load_a(p, a_base, r + 3u, k0 + kk, valid),
            );
            let col = tile_col + 4u * quad;
            b_tile[kk * T + quad] = vec4<f32>(
                load_b(p, b_base, k0 + kk, col, valid),
                load_b(p, b_base, k0 + kk, col + 1u, valid),
                load_b(p, b_base, k0 + kk, col + 2u, valid),
                load_b(p, b_base, k0 + kk, col + 3u, valid),
            );
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
    var out: Tile;
    out.acc = acc;
    out.row = tile_row + 4u * lid.y;
    out.col = tile_col + 4u * lid.x;
    out.c_base = p.c_off + z0 * p.c_s0 + z1 * p.c_s1;
    out.valid = valid;
    return out;
}

fn store_tile(p: Params, t: Tile, bias4: vec4<f32>) {
    if (!t.valid) {
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        let r = t.row + i;
        if (r >= p.m) {
            return;
        }
        let v = p.alpha * t.acc[i] + bias4;
        let base = t.c_base + r * p.ldc + t.col;
        for (var j = 0u; j < 4u; j++) {
            if (t.col + j < p.n) {
                c[base + j] = v[j];
            }
        }
    }
}

@compute @workgroup_size(T, T)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let p = p_plain;
    let t = gemm_tile(p, wid, nwg, lid);
    store_tile(p, t, vec4<f32>(0.0));
}

@compute @workgroup_size(T, T)
fn matmul_bias(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let p = p_bias;
    let t = gemm_tile(p, wid, nwg, lid);
    // Columns past N read a clamped (valid) index; store_tile drops them.
    let last = p.n - 1u;
    let bias4 = vec4<f32>(
        bias[min(t.col, last)],
        bias[min(t.col + 1u, last)],
        bias[min(t.col + 2u, last)],
        bias[min(t.col + 3u, last)],
    );
    store_tile(p, t, bias4);
}
