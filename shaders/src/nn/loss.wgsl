// Losses on classification logits [rows, cols] with their gradients, both means over rows (as
// fusion-clip's `autograd::loss` and torch): one workgroup of WG invocations per row (rows
// numbered flat over x, y, z), the maximum subtracted before exponentiating.
//
//   cross_entropy_rows  loss_r = logsumexp(z_r) - z_r[label_r];
//                       dz_r = (softmax(z_r) - onehot(label_r)) / rows.
//                       bindings 0 = logits, 1 = labels [rows] u32, 2 = dlogits (read_write),
//                       3 = row_loss [rows] (read_write), 4 = uniform Params
//   entropy_rows        AdaMerging's loss: loss_r = -Σ_j p_j log(p_j + eps), p = softmax(z_r);
//                       with h_j = -(log(p_j + eps) + p_j / (p_j + eps)) / rows,
//                       dz_r = p ⊙ (h - Σ_j p_j h_j).
//                       bindings 0 = logits, 1 = dlogits (read_write), 2 = row_loss (read_write),
//                       3 = uniform Params
//
// The host sums row_loss (in f64) and divides by rows.

override WG: u32 = 64u;

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> ce_dlogits: array<f32>;
@group(0) @binding(3) var<storage, read_write> ce_loss: array<f32>;
@group(0) @binding(4) var<uniform> ce_p: Params;
@group(0) @binding(1) var<storage, read_write> h_dlogits: array<f32>;
@group(0) @binding(2) var<storage, read_write> h_loss: array<f32>;
@group(0) @binding(3) var<uniform> h_p: Params;

var<workgroup> scratch: array<f32, 256>;

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

struct RowStats {
    max: f32,
    sum: f32,
}

// The row maximum and Σ exp(z - max).
fn row_stats(base: u32, cols: u32, lid: u32, valid: bool) -> RowStats {
    var m = -3.40282346638528859811704183484516925440e+38;
    if (valid) {
        for (var j = lid; j < cols; j += WG) {
            m = max(m, logits[base + j]);
        }
    }
    var out: RowStats;
    out.max = reduce_max(m, lid);
    var s = 0.0;
    if (valid) {
        for (var j = lid; j < cols; j += WG) {
            s += exp(logits[base + j] - out.max);
        }
    }
    out.sum = reduce_sum(s, lid);
    return out;
}

@compute @workgroup_size(WG)
fn cross_entropy_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = ce_p;
    let row = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
    let valid = row < p.rows;
    let base = row * p.cols;
    let st = row_stats(base, p.cols, lid, valid);
    if (!valid) {
        return;
    }
    let label = labels[row];
    let inv_rows = 1.0 / f32(p.rows);
    for (var j = lid; j < p.cols; j += WG) {
        var g = exp(logits[base + j] - st.max) / st.sum;
        if (j == label) {
            g -= 1.0;
        }
        ce_dlogits[base + j] = g * inv_rows;
    }
    if (lid == 0u) {
        ce_loss[row] = st.max + log(st.sum) - logits[base + label];
    }
}

@compute @workgroup_size(WG)
fn entropy_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = h_p;
    let row = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
    let valid = row < p.rows;
    let base = row * p.cols;
    let st = row_stats(base, p.cols, lid, valid);
    let inv_rows = 1.0 / f32(p.rows);
    // Σ p log(p + eps) and Σ p h.
    var ent = 0.0;
    var ph = 0.0;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            let pj = exp(logits[base + j] - st.max) / st.sum;
            let lg = log(pj + p.eps);
            ent += pj * lg;
            ph += pj * (-(lg + pj / (pj + p.eps)) * inv_rows);
        }
    }
    let ent_sum = reduce_sum(ent, lid);
    let ph_sum = reduce_sum(ph, lid);
    if (!valid) {
        return;
    }
    for (var j = lid; j < p.cols; j += WG) {
        let pj = exp(logits[base + j] - st.max) / st.sum;
        let h = -(log(pj + p.eps) + pj / (pj + p.eps)) * inv_rows;
        h_dlogits[base + j] = pj * (h - ph_sum);
    }
    if (lid == 0u) {
        h_loss[row] = -ent_sum;
    }
}

// The zero-shot head's row normalization y = x / ‖x‖ and its backward pass, one workgroup per
// row (the same bindings as entropy_rows):
//
//   l2_normalize_rows      y_r = x_r / ‖x_r‖, norms[r] = ‖x_r‖.
//                          bindings 0 = x, 1 = y (read_write), 2 = norms [rows] (read_write),
//                          3 = uniform Params
//   l2_normalize_backward  in place over dy: dy_r ← (dy_r - y_r (y_r · dy_r)) / norms[r].
//                          bindings 0 = y, 1 = dy (read_write), 2 = norms (only read),
//                          3 = uniform Params

@compute @workgroup_size(WG)
fn l2_normalize_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = h_p;
    let row = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
    let valid = row < p.rows;
    let base = row * p.cols;
    var s = 0.0;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            s += logits[base + j] * logits[base + j];
        }
    }
    let norm = sqrt(reduce_sum(s, lid));
    if (!valid) {
        return;
    }
    for (var j = lid; j < p.cols; j += WG) {
        h_dlogits[base + j] = logits[base + j] / norm;
    }
    if (lid == 0u) {
        h_loss[row] = norm;
    }
}

@compute @workgroup_size(WG)
fn l2_normalize_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = h_p;
    let row = wid.x + nwg.x * (wid.y + nwg.y * wid.z);
    let valid = row < p.rows;
    let base = row * p.cols;
    var s = 0.0;
    if (valid) {
        for (var j = lid; j < p.cols; j += WG) {
            s += logits[base + j] * h_dlogits[base + j];
        }
    }
    let dot = reduce_sum(s, lid);
    if (!valid) {
        return;
    }
    let inv = 1.0 / h_loss[row];
    for (var j = lid; j < p.cols; j += WG) {
        h_dlogits[base + j] = (h_dlogits[base + j] - logits[base + j] * dot) * inv;
    }
}
