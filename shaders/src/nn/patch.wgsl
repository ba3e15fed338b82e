// The vision tower's patch embedding, a Conv2d with kernel = stride = patch and no bias, done
// as im2col followed by a matrix product (nn_matmul.wgsl) with the conv weight [D, C, P, P]
// read as [D, C*P*P]; then the class token and the position embeddings.
//
//   im2col          pixels [B, C, S, S] -> patches [B * G * G, C * P * P], G = S / P, each patch
//                   flattened in the weight's (c, y, x) order, patches in row-major grid order.
//   class_position  on hidden [B, G*G + 1, D] whose rows 1.. hold the patch embeddings:
//                   row 0 = class + pos[0], row t += pos[t].
// Invocation t (numbered flat over the x, y and z workgroup dimensions) handles element t of
// the output.
//
// Entry points:
//   im2col          bindings 0 = pixels, 1 = patches (read_write), 2 = uniform Params
//   class_position  bindings 0 = hidden (read_write), 1 = class [D], 2 = pos [G*G + 1, D],
//                   3 = uniform Params

// Invocations per workgroup, set by the host from the device limits.
override WG: u32 = 256u;

struct Params {
    // Elements of the output.
    n: u32,
    channels: u32,
    image: u32,
    patch_size: u32,
    // Patches per side.
    grid: u32,
    // Hidden width and positions per image (class_position).
    dim: u32,
    positions: u32,
}

@group(0) @binding(0) var<storage, read> pixels: array<f32>;
@group(0) @binding(1) var<storage, read_write> patches: array<f32>;
@group(0) @binding(2) var<uniform> p_im2col: Params;

@group(0) @binding(0) var<storage, read_write> hidden: array<f32>;
@group(0) @binding(1) var<storage, read> class_emb: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<f32>;
@group(0) @binding(3) var<uniform> p_class: Params;

fn index_of(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + nwg.x * WG * (gid.y + nwg.y * gid.z);
}

@compute @workgroup_size(WG)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = p_im2col;
    let i = index_of(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let patch_len = p.channels * p.patch_size * p.patch_size;
    let row = i / patch_len;
    let e = i % patch_len;
    let per_image = p.grid * p.grid;
    let b = row / per_image;
    let g = row % per_image;
    let c = e / (p.patch_size * p.patch_size);
    let y = (e / p.patch_size) % p.patch_size;
    let x = e % p.patch_size;
    let py = (g / p.grid) * p.patch_size + y;
    let px = (g % p.grid) * p.patch_size + x;
    patches[i] = pixels[((b * p.channels + c) * p.image + py) * p.image + px];
}

@compute @workgroup_size(WG)
fn class_position(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = p_class;
    let i = index_of(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let d = i % p.dim;
    let t = (i / p.dim) % p.positions;
    let e = pos[t * p.dim + d];
    if (t == 0u) {
        hidden[i] = class_emb[d] + e;
    } else {
        hidden[i] = hidden[i] + e;
    }
}
