// One-sided Jacobi (Hestenes) SVD sweeps for a batch of matrices, on the device.
//
// The tall matrix T (M x N, M >= N) of each batch item is held by its columns: `w` is
// [batch, N, M], row j of an item being column j of T. `v` ([batch, N, N]) holds the
// accumulated rotation V the same way (row j is column j of V; the identity at the start).
// One dispatch is one round of the round-robin ("circle") ordering: for N' = N rounded up to
// even, round r pairs column 0 with 1 + r mod (N'-1) and, for i = 1 .. N'/2 - 1, column
// 1 + (r + i) mod (N'-1) with 1 + (r - i) mod (N'-1). The N'/2 pairs of a round are disjoint,
// so workgroup (i, b) rotates pair i of item b alone; N'-1 rounds visit every pair once (a
// sweep). A pair whose columns are not orthogonal to `tol` (|γ| > tol·√(αβ)) is rotated to
// make them orthogonal, and `rotated[b]` counts it; the host repeats sweeps until a sweep
// rotates nothing.
//
// At convergence the norms of w's rows are the singular values (norms.wgsl) and the
// normalized rows the left singular vectors.
//
// Entry point rotate: workgroups (N'/2, batch); bindings 0 = w, 1 = v, 2 = rotated (atomic
// u32 per item), 3 = uniform Params.

const WG: u32 = 64u;

struct Params {
    batch: u32,
    // N: rows of w per item (columns of T).
    rows: u32,
    // M: length of each row of w.
    len: u32,
    // N rounded up to even.
    n_even: u32,
    // The round of the sweep, 0 .. N'-2.
    round: u32,
    // Orthogonality threshold (relative).
    tol: f32,
}

@group(0) @binding(0) var<storage, read_write> w: array<f32>;
@group(0) @binding(1) var<storage, read_write> v: array<f32>;
@group(0) @binding(2) var<storage, read_write> rotated: array<atomic<u32>>;
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> red: array<vec3<f32>, WG>;

fn pair(i: u32) -> vec2<u32> {
    let m = p.n_even - 1u;
    if (i == 0u) {
        return vec2<u32>(0u, 1u + p.round % m);
    }
    return vec2<u32>(1u + (p.round + i) % m, 1u + (p.round + m - i) % m);
}

@compute @workgroup_size(WG)
fn rotate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.y;
    let pq = pair(wid.x);
    let a = min(pq.x, pq.y);
    let c = max(pq.x, pq.y);
    if (c >= p.rows || b >= p.batch) {
        return;
    }
    let wp = (b * p.rows + a) * p.len;
    let wq = (b * p.rows + c) * p.len;
    var s = vec3<f32>(0.0);
    for (var k = lid; k < p.len; k += WG) {
        let x = w[wp + k];
        let y = w[wq + k];
        s += vec3<f32>(x * x, y * y, x * y);
    }
    red[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let t = red[0];
    let alpha = t.x;
    let beta = t.y;
    let gamma = t.z;
    if (gamma == 0.0 || abs(gamma) <= p.tol * sqrt(alpha) * sqrt(beta)) {
        return;
    }
    // tan θ of the rotation that zeroes γ: t = sign(ζ) / (|ζ| + √(1 + ζ²)), ζ = (β − α) / 2γ,
    // written so that a huge ζ does not overflow.
    let zeta = (beta - alpha) / (2.0 * gamma);
    let az = abs(zeta);
    var tn = 1.0;
    if (az > 0.0) {
        let root = select(sqrt(1.0 + az * az), az * sqrt(1.0 + 1.0 / (az * az)), az > 1.0e10);
        tn = select(-1.0, 1.0, zeta >= 0.0) / (az + root);
    }
    let cs = 1.0 / sqrt(1.0 + tn * tn);
    let sn = cs * tn;
    if (sn == 0.0) {
        return;
    }
    if (lid == 0u) {
        atomicAdd(&rotated[b], 1u);
    }
    // Rutishauser's form of (x, y) ← (c·x − s·y, s·x + c·y), with τ = tan(θ/2) = s/(1 + c):
    // x − s·(y + τ·x), y + s·(x − τ·y). For a small angle c rounds to 1 while s does not, and
    // the plain form then grows both columns by s² each rotation: thousands of rotations per
    // column drifted every singular value up by some 1e-5 relative. This form keeps the
    // rotation orthogonal to rounding.
    let tau = sn / (1.0 + cs);
    for (var k = lid; k < p.len; k += WG) {
        let x = w[wp + k];
        let y = w[wq + k];
        w[wp + k] = x - sn * (y + tau * x);
        w[wq + k] = y + sn * (x - tau * y);
    }
    let vp = (b * p.rows + a) * p.rows;
    let vq = (b * p.rows + c) * p.rows;
    for (var k = lid; k < p.rows; k += WG) {
        let x = v[vp + k];
        let y = v[vq + k];
        v[vp + k] = x - sn * (y + tau * x);
        v[vq + k] = y + sn * (x - tau * y);
    }
}
