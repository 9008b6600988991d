// lambda^k as lib/addressing.wgsl computes it (this kernel has no params),
// k signed: -1 is the inverse of one step's decay.
fn decay(slope: f32, k: i32) -> f32 {
    return exp(max(-slope * f32(k), -1e4));
}

// A map over `map.count` states of rows x cols, state i of head i % heads:
//     out = x_factor X + y_factor Y,   factor = exp(-slope steps) scale
// with X read transposed (cols x rows in memory) when map.transpose is 1,
// and Y left out when y_scale is 0, state i of out `map.out_step` states
// after state i - 1 (0 counts as 1). The backward's small state work: S0^T
// for the dq pass, dS0 = lambda scale S' + lambda^n dS_n; the forward's
// checkpoints, carried states copied out to every head's run of them. Each factor is
// one exp of the whole exponent, never a product of decays, so it
// underflows to 0 rather than overflowing.
//
// Bindings: map, slopes, x and y (read), out (written), each a window of
// whole states with state `map.first` at its own base. One invocation per
// element of out.

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    let size = map.rows * map.cols;
    if i >= map.count * size {
        return;
    }
    let state = i / size;
    let within = i % size;
    let slope = slopes[(map.first + state) % map.heads];
    var source = map.x_base + i;
    if map.transpose != 0u {
        let r = within / map.cols;
        let c = within % map.cols;
        source = map.x_base + state * size + c * map.rows + r;
    }
    var value = x[source] * (decay(slope, map.x_steps) * map.x_scale);
    if map.y_scale != 0.0 {
        value += y[map.y_base + i] * (decay(slope, map.y_steps) * map.y_scale);
    }
    out[map.out_base + state * max(map.out_step, 1u) * size + within] = value;
}
