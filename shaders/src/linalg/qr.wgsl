// Householder QR for a batch of row-major m x n matrices, one reflector at a time.
//
// Step j (j < k = min(m, n)) of item b: `house` forms the reflector H = I − τ v vᵀ that maps
// column j of `a` below the diagonal, x = a[j.., j], onto α e₁ with α = −sign(x₀)‖x‖ (no
// cancellation in v₀ = x₀ − α); it stores v (zero above row j) as row j of `vh` and τ = 2/‖v‖²
// (0 for a zero column: H = I), writes α on the diagonal and zeros below it. `apply` then
// applies H_j to columns col0 .. col0 + count of a row-major [m, width] matrix `a` of each item:
// the trailing columns of the matrix being factored, or (from the last reflector back) the
// columns of the thin Q being accumulated from the identity.
//
// Entry points (bindings 0 = a, 1 = vh, 2 = tau, 3 = uniform Params):
//   house: workgroups (1, batch).
//   apply: workgroups (count, batch), one workgroup per column.

const WG: u32 = 64u;

struct Params {
    batch: u32,
    m: u32,
    // Row length of `a`.
    width: u32,
    // k: reflectors per item (rows of vh).
    k: u32,
    // The reflector.
    j: u32,
    // The first column `apply` updates.
    col0: u32,
}

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> vh: array<f32>;
@group(0) @binding(2) var<storage, read_write> tau: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

fn reduce_sum(lid: u32, value: f32) -> f32 {
    red[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    let total = workgroupUniformLoad(&red[0]);
    return total;
}

fn reduce_max(lid: u32, value: f32) -> f32 {
    red[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red[lid] = max(red[lid], red[lid + stride]);
        }
        workgroupBarrier();
    }
    let total = workgroupUniformLoad(&red[0]);
    return total;
}

@compute @workgroup_size(WG)
fn house(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.y;
    if (b >= p.batch) {
        return;
    }
    let j = p.j;
    let base = b * p.m * p.width;
    let vrow = (b * p.k + j) * p.m;
    // Scaled sums of squares: no under- or overflow for tiny or huge columns.
    var mx = 0.0;
    for (var i = j + lid; i < p.m; i += WG) {
        mx = max(mx, abs(a[base + i * p.width + j]));
    }
    let scale = reduce_max(lid, mx);
    var tail = 0.0;
    if (scale > 0.0) {
        for (var i = j + 1u + lid; i < p.m; i += WG) {
            let y = a[base + i * p.width + j] / scale;
            tail += y * y;
        }
    }
    let tail_sum = reduce_sum(lid, tail);
    let x0 = a[base + j * p.width + j];
    for (var i = lid; i < p.m; i += WG) {
        vh[vrow + i] = 0.0;
    }
    storageBarrier();
    if (scale == 0.0) {
        if (lid == 0u) {
            tau[b * p.k + j] = 0.0;
        }
        return;
    }
    let y0 = x0 / scale;
    let norm = sqrt(y0 * y0 + tail_sum);
    let alpha = -select(-1.0, 1.0, x0 >= 0.0) * norm;
    // v / scale: v₀ = y₀ − α, vᵢ = yᵢ; τ = 2 / ‖v‖² for the scaled v (H is scale-free).
    let v0 = y0 - alpha;
    for (var i = j + 1u + lid; i < p.m; i += WG) {
        vh[vrow + i] = a[base + i * p.width + j] / scale;
        a[base + i * p.width + j] = 0.0;
    }
    if (lid == 0u) {
        vh[vrow + j] = v0;
        tau[b * p.k + j] = 2.0 / (v0 * v0 + tail_sum);
        a[base + j * p.width + j] = alpha * scale;
    }
}

@compute @workgroup_size(WG)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.y;
    let col = p.col0 + wid.x;
    if (b >= p.batch || col >= p.width) {
        return;
    }
    let j = p.j;
    let base = b * p.m * p.width;
    let vrow = (b * p.k + j) * p.m;
    var d = 0.0;
    for (var i = j + lid; i < p.m; i += WG) {
        d += vh[vrow + i] * a[base + i * p.width + col];
    }
    let dot = reduce_sum(lid, d);
    let f = tau[b * p.k + j] * dot;
    for (var i = j + lid; i < p.m; i += WG) {
        a[base + i * p.width + col] -= f * vh[vrow + i];
    }
}
