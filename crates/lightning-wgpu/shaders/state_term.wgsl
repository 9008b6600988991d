// The final-state gradient's term of the backward: for every row i of a
// sequence of n rows,
//     out_i += lambda^(n-1-i) x_i A
// with x = v and A = dS_n^T (giving dk), or x = k and A = dS_n (dv). The
// decay is one exp of the whole exponent, so at any slope it underflows to
// 0 rather than overflowing, and nothing is divided by it or by the scale.
//
// Bindings: x (read, the inputs' storage; addressed through q_stride, its
// width dim_k), a (the states, [bh][dim_k][dim_v], or [bh][dim_v][dim_k]
// when params.transposed is 1), out (f32, added to; o_stride, width dim_v).
// One invocation per element of out.

@compute @workgroup_size(THREADS)
fn main(grid: Grid, @builtin(local_invocation_index) tid: u32) {
    let idx = group_index(grid) * THREADS + tid;
    let per_bh = params.rows * params.dim_v;
    if idx >= params.bh_count * per_bh {
        return;
    }
    let local_bh = idx / per_bh;
    let row = (idx / params.dim_v) % params.rows;
    let c = idx % params.dim_v;
    let bh = params.bh_start + local_bh;
    let size = params.dim_k * params.dim_v;
    let state = params.state_base + local_bh * size;
    let xrow = offset_of(params.q_stride, bh, row, 0u);
    var acc = 0.0;
    for (var r = 0u; r < params.dim_k; r++) {
        var at = state + r * params.dim_v + c;
        if params.transposed != 0u {
            at = state + c * params.dim_k + r;
        }
        acc = fma(read_x(xrow + r), a[at], acc);
    }
    let from_end = params.seq_rows - 1u - (params.row_start + row);
    let o_at = offset_of(params.o_stride, bh, row, c);
    out[o_at] += decay(slope_of(bh), from_end) * acc;
}
