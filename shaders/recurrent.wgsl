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
// a request whose slot is negative is padding: its output is zero and no
// state is touched.

@group(0) @binding(2) var<storage, read> q: array<Stored>;
@group(0) @binding(3) var<storage, read> k: array<Stored>;
@group(0) @binding(4) var<storage, read> v: array<Stored>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
@group(0) @binding(7) var<storage, read> slots: array<i32>;

const COLUMN_QUADS: u32 = 32u;
const STEP: u32 = COLUMN_QUADS; // between the four columns of a lane
const ROW_LANES: u32 = THREADS / COLUMN_QUADS;

var<workgroup> partial: array<vec4<f32>, THREADS>;
var<workgroup> slot_shared: i32;

@compute @workgroup_size(THREADS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let e_tiles = (params.dim_v + 4u * COLUMN_QUADS - 1u) / (4u * COLUMN_QUADS);
    let g = group_index(wid, groups);
    if g >= params.bh_count * e_tiles {
        return;
    }
    let bh = params.bh_start + g / e_tiles;
    let col = (g % e_tiles) * 4u * COLUMN_QUADS + tid % COLUMN_QUADS;
    let lane = tid / COLUMN_QUADS;
    let b = bh / params.heads;
    let h = bh - b * params.heads;
    let size = params.dim_k * params.dim_v;
    let live = vec4<bool>(col < params.dim_v, col + STEP < params.dim_v, col + 2u * STEP < params.dim_v, col + 3u * STEP < params.dim_v);
    var origin = params.state_base + (bh - params.bh_start) * size;
    if params.slotted != 0u {
        if tid == 0u {
            slot_shared = slots[b];
        }
        // One read for the workgroup, so the early exit below is uniform.
        let slot = workgroupUniformLoad(&slot_shared);
        if slot < 0 {
            // Padding: no state is touched; its output is defined as zero.
            for (var i = 0u; i < params.rows; i++) {
                if lane == 0u {
                    store_out(offset_of(params.o_stride, bh, i, col), live, vec4<f32>(0.0));
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
                s = load_state(at, live);
            }
            s = lambda * s + read_k(offset_of(params.k_stride, bh, i, r)) * vi;
            store_state(at, live, s);
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
            store_out(offset_of(params.o_stride, bh, i, col), live, partial[tid] * params.scale);
        }
        workgroupBarrier();
    }
}

fn store_out(at: u32, live: vec4<bool>, x: vec4<f32>) {
    if live.x { o[at] = x.x; }
    if live.y { o[at + STEP] = x.y; }
    if live.z { o[at + 2u * STEP] = x.z; }
    if live.w { o[at + 3u * STEP] = x.w; }
}

fn load_state(at: u32, live: vec4<bool>) -> vec4<f32> {
    var s = vec4<f32>(0.0);
    if live.x { s.x = state[at]; }
    if live.y { s.y = state[at + STEP]; }
    if live.z { s.z = state[at + 2u * STEP]; }
    if live.w { s.w = state[at + 3u * STEP]; }
    return s;
}

fn store_state(at: u32, live: vec4<bool>, s: vec4<f32>) {
    if live.x { state[at] = s.x; }
    if live.y { state[at + STEP] = s.y; }
    if live.z { state[at + 2u * STEP] = s.z; }
    if live.w { state[at + 3u * STEP] = s.w; }
}

// q, k and v as f32 whatever their storage (see `widen` in common.wgsl).
fn read_q(i: u32) -> f32 {
    return widen(q[i >> PACK], i);
}

fn read_k(i: u32) -> f32 {
    return widen(k[i >> PACK], i);
}

fn read_v(i: u32) -> f32 {
    return widen(v[i >> PACK], i);
}
