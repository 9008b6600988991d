// Scales each (batch, head) state in place by lambda scale = exp(-slope)
// scale: the backward's dS0 from the final state of its reversed dv pass
// (see src/ops/backward.rs). One invocation per element; `bh_count`
// states of d x e from the start of the bound window.

@group(0) @binding(2) var<storage, read_write> states: array<f32>; // [bh][d][e]

@compute @workgroup_size(THREADS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let size = params.dim_k * params.dim_v;
    let idx = group_index(wid, groups) * THREADS + tid;
    if idx >= params.bh_count * size {
        return;
    }
    states[idx] *= decay(slope_of(params.bh_start + idx / size), 1u) * params.scale;
}
