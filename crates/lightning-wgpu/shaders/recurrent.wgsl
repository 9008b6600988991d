// Recurrent pass: the token-by-token form, for decoding and as the
// `recurrent` method over whole sequences,
//     S(i) = lambda S(i-1) + k_i^T v_i        o_i = scale q_i S(i)
// with the f32 state in storage: each step reads and writes every state
// element once, and carries nothing else between tokens.
//
// One workgroup per (bh, 128 columns of e). Its THREADS invocations are
// 32 column lanes by THREADS/32 row lanes that split d; q_i S(i) is summed
// over the row lanes through workgroup memory. Column lane c holds columns
// c, c + 32, c + 64 and c + 96 of the tile in a vec4, so each access of a
// warp covers 32 consecutive columns: 128 contiguous bytes.
//
// The state of (b, h) lives at `state_base + (bh - bh_start) * d * e` in
// sequence mode, or, in slot mode (params.slotted = 1, decoding a batch of
// requests of different ages), at `state_base + (slots[b] * heads + h) * d * e`;
// a request whose slot is -1 is padding: its output is zero and no state is
// touched; below -1, the request's state is in another window of the cache
// and this dispatch does nothing for it.
//
// Bindings: q, k, v (read), o (f32), state (read and written), slots (the
// slot of each request in slot mode; not read otherwise).

const COLUMN_QUADS: u32 = 32u;
const STEP: u32 = COLUMN_QUADS; // between the four columns of a lane
const ROW_LANES: u32 = THREADS / COLUMN_QUADS;

var<workgroup> partial: array<vec4<f32>, THREADS>;
var<workgroup> slot_shared: i32;

@compute @workgroup_size(THREADS)
fn main(grid: Grid, @builtin(local_invocation_index) tid: u32) {
    let e_tiles = (params.dim_v + 4u * COLUMN_QUADS - 1u) / (4u * COLUMN_QUADS);
    let g = group_index(grid);
    if g >= params.bh_count * e_tiles {
        return;
    }
    let bh = params.bh_start + g / e_tiles;
    let col = (g % e_tiles) * 4u * COLUMN_QUADS + tid % COLUMN_QUADS;
    let lane = tid / COLUMN_QUADS;
    let b = bh / params.heads;
    let h = bh - b * params.heads;
    let size = params.dim_k * params.dim_v;
    let live = live4(col, STEP, params.dim_v);
    var origin = params.state_base + (bh - params.bh_start) * size;
    if params.slotted != 0u {
        if tid == 0u {
            slot_shared = slots[b];
        }
        // One read for the workgroup, so the early exit below is uniform.
        let slot = workgroupUniformLoad(&slot_shared);
        if slot < -1 {
            return;
        }
        if slot < 0 {
            // Padding: no state is touched; its output is defined as zero.
            for (var i = 0u; i < params.rows; i++) {
                if lane == 0u {
                    store4_o(offset_of(params.o_stride, bh, i, col), STEP, live, vec4<f32>(0.0));
                }
            }
            return;
        }
        origin = params.state_base + (u32(slot) * params.heads + h) * size;
    }
    let lambda = decay(slope_of(bh), 1u);

    for (var i = 0u; i < params.rows; i++) {
        let vo = offset_of(params.v_stride, bh, i, col);
        var vi = vec4<f32>(0.0);
        if live.x { vi.x = read_v(vo); }
        if live.y { vi.y = read_v(vo + STEP); }
        if live.z { vi.z = read_v(vo + 2u * STEP); }
        if live.w { vi.w = read_v(vo + 3u * STEP); }
        var acc = vec4<f32>(0.0);
        for (var r = lane; r < params.dim_k; r += ROW_LANES) {
            let at = origin + r * params.dim_v + col;
            var s = vec4<f32>(0.0);
            if params.has_state != 0u || i > 0u {
                s = load4_state(at, STEP, live);
            }
            s = lambda * s + read_k(offset_of(params.k_stride, bh, i, r)) * vi;
            store4_state(at, STEP, live, s);
            acc = fma(vec4<f32>(read_q(offset_of(params.q_stride, bh, i, r))), s, acc);
        }
        partial[tid] = acc;
        workgroupBarrier();
        // Sum the row lanes: lane 0 ends up with q_i S(i) for its 4 columns.
        for (var half = ROW_LANES / 2u; half > 0u; half /= 2u) {
            if lane < half {
                partial[tid] += partial[tid + half * COLUMN_QUADS];
            }
            workgroupBarrier();
        }
        if lane == 0u {
            store4_o(offset_of(params.o_stride, bh, i, col), STEP, live, partial[tid] * params.scale);
        }
        workgroupBarrier();
    }
}
