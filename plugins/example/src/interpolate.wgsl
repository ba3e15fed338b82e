// The template's kernel: y = a·y + b·x over the first `len` elements of the bound ranges.
//
// The uniform block sits at binding 0 and the storage tensors after it; the host binds each where
// this file declares it. `flat_index` comes from plugin-api's prelude (`Kernel::with_prelude`):
// the grid may be spread over x/y/z for large tensors, so the flat index is rebuilt from the
// workgroup counts and bounds-checked.

struct Params {
    len: u32,
    a: f32,
    b: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

@compute @workgroup_size(256)
fn axpby(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 256u);
    if (i < p.len) {
        y[i] = p.a * y[i] + p.b * x[i];
    }
}
