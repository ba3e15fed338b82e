// The MLP activations of CLIP, in place over a flat buffer of n values:
//   quick_gelu(x) = x * sigmoid(1.702 x)              (OpenAI checkpoints)
//   gelu(x)       = 0.5 x (1 + erf(x / sqrt(2)))      (exact GELU, hidden_act: gelu)
// Invocation t (numbered flat over the x, y and z workgroup dimensions) handles element t.
// Compiled after `include/act.wgsl` (the functions themselves).
//
// Entry points quick_gelu, gelu: bindings 0 = x (read_write), 1 = uniform Params.

// Invocations per workgroup, set by the host from the device limits.
override WG: u32 = 256u;

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

fn index_of(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
}

@compute @workgroup_size(WG)
fn quick_gelu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index_of(gid, nwg);
    if (i >= p.n) {
        return;
    }
    x[i] = act_quick_gelu(x[i]);
}

@compute @workgroup_size(WG)
fn gelu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index_of(gid, nwg);
    if (i >= p.n) {
        return;
    }
    x[i] = act_gelu(x[i]);
}
