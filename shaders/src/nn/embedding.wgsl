// Embedding lookups: rows of a table picked by index.
//   gather_rows           out[r, :] = table[idx[r], :]
//   token_position_embed  out[r, :] = table[idx[r], :] + pos[r % seq, :]   (CLIPTextEmbeddings)
// `gather_rows` also pools the text tower (the row of each sequence's end-of-text token).
// Indices are checked on the host; here they are clamped to the table so a bad one cannot read
// outside it. Invocation t (numbered flat over the x, y and z workgroup dimensions) writes
// element t of out [rows, dim].
//
// Entry points:
//   gather_rows           bindings 0 = table, 1 = idx (u32), 2 = out (read_write), 3 = uniform
//   token_position_embed  bindings 0 = table, 1 = idx (u32), 2 = out (read_write), 3 = pos,
//                         4 = uniform

// Invocations per workgroup, set by the host from the device limits.
override WG: u32 = 256u;

struct Params {
    rows: u32,
    dim: u32,
    table_rows: u32,
    seq: u32,
}

@group(0) @binding(0) var<storage, read> table: array<f32>;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p_gather: Params;
@group(0) @binding(3) var<storage, read> pos: array<f32>;
@group(0) @binding(4) var<uniform> p_embed: Params;

fn index_of(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
}

fn table_value(p: Params, r: u32, d: u32) -> f32 {
    return table[min(idx[r], p.table_rows - 1u) * p.dim + d];
}

@compute @workgroup_size(WG)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = p_gather;
    let i = index_of(gid, nwg);
    if (i >= p.rows * p.dim) {
        return;
    }
    out[i] = table_value(p, i / p.dim, i % p.dim);
}

@compute @workgroup_size(WG)
fn token_position_embed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = p_embed;
    let i = index_of(gid, nwg);
    if (i >= p.rows * p.dim) {
        return;
    }
    let r = i / p.dim;
    let d = i % p.dim;
    out[i] = table_value(p, r, d) + pos[(r % p.seq) * p.dim + d];
}
