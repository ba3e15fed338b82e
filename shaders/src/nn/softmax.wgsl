// Row-wise softmax in place, with the masks attention needs. One workgroup per row (rows are
// numbered flat over the x, y and z workgroup dimensions); its WG invocations stride over the
// row's `cols` values and combine their partial max and sum in workgroup memory.
//
// Row r of the scores [batch, heads, q_len, cols] belongs to query i = r % q_len of sequence
// b = r / (heads * q_len). Key j is masked when `causal != 0` and j > i, or, in the masked entry
// point, when key_mask[b * cols + j] == 0. A masked score gets f32's most negative finite value
// added rather than being set to -inf, like transformers' eager attention: a row whose keys are
// all masked then becomes uniform instead of NaN.
//
// Entry points:
//   softmax_rows         bindings 0 = x (read_write), 1 = uniform Params
//   softmax_rows_masked  bindings 0 = x (read_write), 1 = key_mask [batch, cols] (u32),
//                        2 = uniform Params

// Invocations per workgroup: a power of two, set by the host from the row length and the
// device limit.
override WG: u32 = 64u;

// f32::MIN, written out exactly.
const MASKED: f32 = -3.40282346638528859811704183484516925440e+38;

struct Params {
    rows: u32,
    cols: u32,
    q_len: u32,
    heads: u32,
    causal: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p_plain: Params;
@group(0) @binding(1) var<storage, read> key_mask: array<u32>;
@group(0) @binding(2) var<uniform> p_masked: Params;

var<workgroup> scratch: array<f32, 256>;

fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + nwg.x * (wid.y + nwg.y * wid.z);
}

// Tree reduction over the workgroup (WG is a power of two); every invocation gets the result.
fn reduce_max(v: f32, lid: u32) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            scratch[lid] = max(scratch[lid], scratch[lid + s]);
        }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(v: f32, lid: u32) -> f32 {
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            scratch[lid] = scratch[lid] + scratch[lid + s];
        }
        workgroupBarrier();
    }
    let r = scratch[0];
    workgroupBarrier();
    return r;
}

fn causal_masked(p: Params, row: u32, j: u32) -> bool {
    return p.causal != 0u && j > row % p.q_len;
}

// The second and third passes: exponentiate (in place) and normalize. `m` is the row maximum.
fn normalize_row(p: Params, base: u32, m: f32, lid: u32, valid: bool) {
    var sum = 0.0;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            let e = exp(x[base + j] - m);
            x[base + j] = e;
            sum += e;
        }
    }
    let total = reduce_sum(sum, lid);
    if (valid) {
        let inv = 1.0 / total;
        for (var j = lid; j < p.cols; j += WG) {
            x[base + j] = x[base + j] * inv;
        }
    }
}

@compute @workgroup_size(WG)
fn softmax_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = p_plain;
    let row = row_of(wid, nwg);
    let valid = row < p.rows;
    let base = row * p.cols;
    var m = MASKED;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            let v = x[base + j] + select(0.0, MASKED, causal_masked(p, row, j));
            x[base + j] = v;
            m = max(m, v);
        }
    }
    normalize_row(p, base, reduce_max(m, lid), lid, valid);
}

@compute @workgroup_size(WG)
fn softmax_rows_masked(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = p_masked;
    let row = row_of(wid, nwg);
    let valid = row < p.rows;
    let base = row * p.cols;
    let seq = row / (p.heads * p.q_len);
    var m = MASKED;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            // Masked once however many masks hide the key, as the reference does.
            let hidden = causal_masked(p, row, j) || key_mask[seq * p.cols + j] == 0u;
            let v = x[base + j] + select(0.0, MASKED, hidden);
            x[base + j] = v;
            m = max(m, v);
        }
    }
    normalize_row(p, base, reduce_max(m, lid), lid, valid);
}
