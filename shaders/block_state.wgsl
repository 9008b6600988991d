// Block-state pass: each block's own contribution to the key-value state,
//     KV_t = sum_{c < L} lambda^(L-1-c) k_{tB+c}^T v_{tB+c}       (d x e)
// a (d x L) by (L x e) product per block, all blocks in parallel. The state
// scan then chains these into the running state.
//
// One workgroup per (bh, block, d tile, e tile), TILE x TILE outputs, each
// thread a 4x4 tile in four vec4 registers.

@group(0) @binding(2) var<storage, read> k: array<Stored>;
@group(0) @binding(3) var<storage, read> v: array<Stored>;
@group(0) @binding(4) var<storage, read_write> states: array<f32>; // [bh][block][d][e]

var<workgroup> k_tile: array<vec4<f32>, CHUNK * QUADS>; // decayed K as [c][dd / 4]
var<workgroup> v_tile: array<vec4<f32>, CHUNK * QUADS>; // V as [c][ee / 4]

@compute @workgroup_size(THREADS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let d_tiles = (params.dim_k + TILE - 1u) / TILE;
    let e_tiles = (params.dim_v + TILE - 1u) / TILE;
    var g = group_index(wid, groups);
    if g >= params.bh_count * params.blocks * d_tiles * e_tiles {
        return;
    }
    let d0 = (g % d_tiles) * TILE;
    g /= d_tiles;
    let e0 = (g % e_tiles) * TILE;
    g /= e_tiles;
    let t = g % params.blocks;
    let local_bh = g / params.blocks;
    let bh = params.bh_start + local_bh;
    let row0 = t * TILE;
    let len = block_len(t);
    let slope = slope_of(bh);
    let tx = tid % QUADS;
    let ty = tid / QUADS;
    // Offsets of the block's first row, stepped by the row stride below.
    let k0 = offset_of(params.k_stride, bh, row0, 0u);
    let v0 = offset_of(params.v_stride, bh, row0, 0u);

    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var cb = 0u; cb < len; cb += CHUNK) {
        for (var i = tid; i < TILE * CHUNK; i += THREADS) {
            let cc = i / TILE;
            let x = i % TILE;
            let c = cb + cc;
            var kx = 0.0;
            var vx = 0.0;
            if c < len {
                if d0 + x < params.dim_k {
                    kx = read_k(k0 + c * params.k_stride.z + d0 + x) * decay(slope, len - 1u - c);
                }
                if e0 + x < params.dim_v {
                    vx = read_v(v0 + c * params.v_stride.z + e0 + x);
                }
            }
            k_tile[cc * QUADS + x / 4u][x % 4u] = kx;
            v_tile[cc * QUADS + x / 4u][x % 4u] = vx;
        }
        workgroupBarrier();
        for (var cc = 0u; cc < CHUNK; cc++) {
            let a = k_tile[cc * QUADS + ty];
            let b = v_tile[cc * QUADS + tx];
            a0 = fma(vec4<f32>(a.x), b, a0);
            a1 = fma(vec4<f32>(a.y), b, a1);
            a2 = fma(vec4<f32>(a.z), b, a2);
            a3 = fma(vec4<f32>(a.w), b, a3);
        }
        workgroupBarrier();
    }
    let base = (local_bh * params.blocks + t) * params.dim_k * params.dim_v;
    store_state_row(base, d0 + ty * 4u + 0u, e0 + tx * 4u, a0);
    store_state_row(base, d0 + ty * 4u + 1u, e0 + tx * 4u, a1);
    store_state_row(base, d0 + ty * 4u + 2u, e0 + tx * 4u, a2);
    store_state_row(base, d0 + ty * 4u + 3u, e0 + tx * 4u, a3);
}

fn store_state_row(base: u32, dd: u32, ee: u32, x: vec4<f32>) {
    if dd >= params.dim_k {
        return;
    }
    let at = base + dd * params.dim_v + ee;
    if ee < params.dim_v { states[at] = x.x; }
    if ee + 1u < params.dim_v { states[at + 1u] = x.y; }
    if ee + 2u < params.dim_v { states[at + 2u] = x.z; }
    if ee + 3u < params.dim_v { states[at + 3u] = x.w; }
}

// q, k and v as f32 whatever their storage (see `widen` in common.wgsl).
fn read_k(i: u32) -> f32 {
    return widen(k[i >> PACK], i);
}

fn read_v(i: u32) -> f32 {
    return widen(v[i >> PACK], i);
}
