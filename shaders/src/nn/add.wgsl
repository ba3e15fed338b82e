// Residual addition in place over a flat buffer of n values: x[i] += y[i]; and the copy of y
// into x at an offset, x[offset + i] = y[i] (stacking tensors into one). Invocation t
// (numbered flat over the x, y and z workgroup dimensions) handles element t.
//
// Entry points add_inplace, copy_at: bindings 0 = x (read_write), 1 = y, 2 = uniform Params.

// Invocations per workgroup, set by the host from the device limits.
override WG: u32 = 256u;

struct Params {
    n: u32,
    // Where copy_at writes y's first value in x (0 for add_inplace).
    offset: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn add_inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
    if (i >= p.n) {
        return;
    }
    x[i] = x[i] + y[i];
}

@compute @workgroup_size(WG)
fn copy_at(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
    if (i >= p.n) {
        return;
    }
    x[p.offset + i] = y[i];
}
