// Euclidean norms of the rows of a batch of row-major matrices: out[b*rows + j] = ‖row j of
// item b‖. One workgroup per (row, item), a strided sum of squares and a tree reduction. The
// row is scaled by its largest magnitude first, so that neither tiny nor huge entries under-
// or overflow f32.
//
// Entry point norms: workgroups (rows, batch); bindings 0 = x (read), 1 = out, 2 = uniform
// Params.

const WG: u32 = 64u;

struct Params {
    batch: u32,
    rows: u32,
    len: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn norms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x;
    let b = wid.y;
    if (j >= p.rows || b >= p.batch) {
        return;
    }
    let base = (b * p.rows + j) * p.len;
    var m = 0.0;
    for (var k = lid; k < p.len; k += WG) {
        m = max(m, abs(x[base + k]));
    }
    red[lid] = m;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red[lid] = max(red[lid], red[lid + stride]);
        }
        workgroupBarrier();
    }
    let scale = workgroupUniformLoad(&red[0]);
    if (scale == 0.0) {
        if (lid == 0u) {
            out[b * p.rows + j] = 0.0;
        }
        return;
    }
    var s = 0.0;
    for (var k = lid; k < p.len; k += WG) {
        let y = x[base + k] / scale;
        s += y * y;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red[lid] += red[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[b * p.rows + j] = scale * sqrt(red[0]);
    }
}
