// Whether subgroup operations work on this device, and their width: the host dispatches one
// workgroup of 64 and reads back out[0] = subgroup_size, out[1] = subgroupAdd(1) of invocation 0's
// subgroup (equal to the size when the operations work) and out[2] = num_subgroups. A device
// without wgpu's SUBGROUP feature rejects this source, which is the other half of the answer.
//
// Entry point subgroup_probe: binding 0 = out [4] u32 (read_write).

@group(0) @binding(0) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn subgroup_probe(
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_size) sg: u32,
    @builtin(num_subgroups) nsg: u32,
) {
    let total = subgroupAdd(1u);
    if (li == 0u) {
        out[0] = sg;
        out[1] = total;
        out[2] = nsg;
    }
}
