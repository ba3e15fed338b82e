// LU factorization with partial pivoting (P A = L U, L unit lower triangular) for a batch of
// row-major n x n matrices, and the solves that use it.
//
// Step k of item b: `pivot` (one workgroup per item) finds the row p >= k of largest |a[p, k]|,
// swaps rows k and p across the whole row, records p in piv[k], and divides the entries below
// the diagonal of column k by the pivot (the multipliers, L's column). A zero pivot (the
// column is zero from row k down) leaves the column, records k + 1 in status[b] if no earlier
// step did, and the host reports the matrix singular. `update` then subtracts the outer
// product of L's column k and U's row k from the trailing block. `solve` (one invocation per
// right-hand side column and item) applies the row swaps in order, then forward substitution
// with L and back substitution with U, in place in x ([batch, n, nrhs]).
//
// Entry points (bindings 0 = a, 1 = piv (u32), 2 = status (u32), 3 = x, 4 = uniform Params):
//   pivot:  workgroups (1, batch).
//   update: (n-k-1)² x batch invocations, flat over x/y/z.
//   solve:  nrhs x batch invocations, flat over x/y/z.

const WG: u32 = 64u;

struct Params {
    batch: u32,
    n: u32,
    k: u32,
    nrhs: u32,
}

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> piv: array<u32>;
@group(0) @binding(2) var<storage, read_write> status: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> best: array<f32, WG>;
var<workgroup> best_row: array<u32, WG>;
var<workgroup> chosen: u32;

@compute @workgroup_size(WG)
fn pivot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.y;
    if (b >= p.batch) {
        return;
    }
    let n = p.n;
    let k = p.k;
    let base = b * n * n;
    var m = -1.0;
    var r = k;
    for (var i = k + lid; i < n; i += WG) {
        let v = abs(a[base + i * n + k]);
        if (v > m) {
            m = v;
            r = i;
        }
    }
    best[lid] = m;
    best_row[lid] = r;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let o = best[lid + stride];
            let orow = best_row[lid + stride];
            // The largest magnitude; the first row among equals (as LAPACK's isamax).
            if (o > best[lid] || (o == best[lid] && orow < best_row[lid])) {
                best[lid] = o;
                best_row[lid] = orow;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        chosen = best_row[0];
        piv[b * n + k] = best_row[0];
        if (best[0] == 0.0 && status[b] == 0u) {
            status[b] = k + 1u;
        }
    }
    let pr = workgroupUniformLoad(&chosen);
    if (pr != k) {
        for (var c = lid; c < n; c += WG) {
            let t = a[base + k * n + c];
            a[base + k * n + c] = a[base + pr * n + c];
            a[base + pr * n + c] = t;
        }
    }
    storageBarrier();
    let d = a[base + k * n + k];
    if (d == 0.0) {
        return;
    }
    for (var i = k + 1u + lid; i < n; i += WG) {
        a[base + i * n + k] = a[base + i * n + k] / d;
    }
}

@compute @workgroup_size(WG)
fn update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
    let n = p.n;
    let k = p.k;
    let side = n - k - 1u;
    let per = side * side;
    if (t >= per * p.batch) {
        return;
    }
    let b = t / per;
    let i = k + 1u + (t % per) / side;
    let j = k + 1u + t % side;
    let base = b * n * n;
    if (a[base + k * n + k] == 0.0) {
        return;
    }
    a[base + i * n + j] = a[base + i * n + j] - a[base + i * n + k] * a[base + k * n + j];
}

@compute @workgroup_size(WG)
fn solve(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
    if (t >= p.nrhs * p.batch) {
        return;
    }
    let n = p.n;
    let b = t / p.nrhs;
    let r = t % p.nrhs;
    let base = b * n * n;
    let xb = b * n * p.nrhs + r;
    for (var k = 0u; k < n; k++) {
        let q = piv[b * n + k];
        if (q != k) {
            let s = x[xb + k * p.nrhs];
            x[xb + k * p.nrhs] = x[xb + q * p.nrhs];
            x[xb + q * p.nrhs] = s;
        }
    }
    for (var i = 1u; i < n; i++) {
        var s = x[xb + i * p.nrhs];
        for (var j = 0u; j < i; j++) {
            s -= a[base + i * n + j] * x[xb + j * p.nrhs];
        }
        x[xb + i * p.nrhs] = s;
    }
    for (var ii = 0u; ii < n; ii++) {
        let i = n - 1u - ii;
        var s = x[xb + i * p.nrhs];
        for (var j = i + 1u; j < n; j++) {
            s -= a[base + i * n + j] * x[xb + j * p.nrhs];
        }
        x[xb + i * p.nrhs] = s / a[base + i * n + i];
    }
}
