// Data movement for the linear-algebra ops, over a batch of matrices; invocation t (numbered
// flat over the x, y and z workgroup dimensions) handles element t of the output.
//
// Entry points (bindings 0 = src (read), 1 = dst, 2 = aux (read), 3 = uniform Params):
//   copy:   dst[b*db + r*dr + c*dc] = src[b*sb + r*sr + c*sc] for r < rows, c < cols: copies,
//           transposes and sub-blocks, by the strides.
//   gather: the rows of src chosen and scaled by aux: aux holds, per item, `cols` pairs
//           (row index as f32 bits, factor); output row k of item b is factor_k · src row
//           index_k (length `rows`), written as a row (dst[b*db + k*dr + x]) or, with dc = 1,
//           as a column (dst[b*db + x*dr + k]).
//   eye:    dst[b*db + r*dr + c] = (r == c) for r < rows, c < cols (src, aux unused).
//   shift:  dst[b*db + r*(dr + 1)] += aux[b] for r < rows (the diagonal of a square item).

override WG: u32 = 256u;

struct Params {
    batch: u32,
    rows: u32,
    cols: u32,
    sb: u32,
    sr: u32,
    sc: u32,
    db: u32,
    dr: u32,
    dc: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> aux: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
}

@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat(gid, nwg);
    let per = p.rows * p.cols;
    if (t >= per * p.batch) {
        return;
    }
    let b = t / per;
    let r = (t % per) / p.cols;
    let c = t % p.cols;
    dst[b * p.db + r * p.dr + c * p.dc] = src[b * p.sb + r * p.sr + c * p.sc];
}

// rows = row length of src (and of each output row), cols = rows chosen per item; sb = src
// item stride, sr = src row stride; db, dr as above; dc = 1 writes columns.
@compute @workgroup_size(WG)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat(gid, nwg);
    let per = p.rows * p.cols;
    if (t >= per * p.batch) {
        return;
    }
    let b = t / per;
    let k = (t % per) / p.rows;
    let x = t % p.rows;
    let sel = 2u * (b * p.cols + k);
    let row = bitcast<u32>(aux[sel]);
    let value = aux[sel + 1u] * src[b * p.sb + row * p.sr + x];
    if (p.dc == 1u) {
        dst[b * p.db + x * p.dr + k] = value;
    } else {
        dst[b * p.db + k * p.dr + x] = value;
    }
}

@compute @workgroup_size(WG)
fn eye(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat(gid, nwg);
    let per = p.rows * p.cols;
    if (t >= per * p.batch) {
        return;
    }
    let b = t / per;
    let r = (t % per) / p.cols;
    let c = t % p.cols;
    dst[b * p.db + r * p.dr + c] = select(0.0, 1.0, r == c);
}

@compute @workgroup_size(WG)
fn shift(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat(gid, nwg);
    if (t >= p.rows * p.batch) {
        return;
    }
    let b = t / p.rows;
    let r = t % p.rows;
    let i = b * p.db + r * (p.dr + 1u);
    dst[i] = dst[i] + aux[b];
}
