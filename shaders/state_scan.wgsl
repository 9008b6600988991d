// State scan: chains the per-block contributions into the running state,
//     S_t = lambda^L S_{t-1} + KV_t,
// sequentially over the blocks and in parallel over every (bh, d, e) element.
// In place, slot t of `states` ends up holding S_{t-1}, the state the block
// starts from (the inter-block pass reads it); `carry` holds the state before
// the first block on entry (or is ignored when params.has_state is 0) and the
// state after the last block on exit.

@group(0) @binding(2) var<storage, read_write> states: array<f32>; // [bh][block][d][e]
@group(0) @binding(3) var<storage, read_write> carry: array<f32>;  // [bh][d][e]

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
    let local_bh = idx / size;
    let within = idx % size;
    let slope = slope_of(params.bh_start + local_bh);
    let full = decay(slope, TILE);

    var s = 0.0;
    if params.has_state != 0u {
        s = carry[params.state_base + idx];
    }
    // Eight blocks at a time: their contributions are loaded before the
    // chain uses them, so the loads overlap instead of each waiting for the
    // store before it (which the compiler cannot move them past). Every
    // block but the last is full.
    let first = local_bh * params.blocks * size + within;
    var t = 0u;
    for (; t + 8u < params.blocks; t += 8u) {
        let at = first + t * size;
        let kv0 = states[at];
        let kv1 = states[at + size];
        let kv2 = states[at + 2u * size];
        let kv3 = states[at + 3u * size];
        let kv4 = states[at + 4u * size];
        let kv5 = states[at + 5u * size];
        let kv6 = states[at + 6u * size];
        let kv7 = states[at + 7u * size];
        states[at] = s;
        s = fma(full, s, kv0);
        states[at + size] = s;
        s = fma(full, s, kv1);
        states[at + 2u * size] = s;
        s = fma(full, s, kv2);
        states[at + 3u * size] = s;
        s = fma(full, s, kv3);
        states[at + 4u * size] = s;
        s = fma(full, s, kv4);
        states[at + 5u * size] = s;
        s = fma(full, s, kv5);
        states[at + 6u * size] = s;
        s = fma(full, s, kv6);
        states[at + 7u * size] = s;
        s = fma(full, s, kv7);
    }
    for (; t < params.blocks; t++) {
        let len = block_len(t);
        let at = first + t * size;
        let kv = states[at];
        states[at] = s;
        s = select(decay(slope, len), full, len == TILE) * s + kv;
    }
    carry[params.state_base + idx] = s;
}
