// Inter-block pass: adds what earlier blocks carry in,
//     o_i += lambda^(r+1) * scale * q_i S_{t-1}          (row r of block t)
// a (L x d) by (d x e) product per block against the state the scan left in
// slot t. Linear in the sequence.
//
// One workgroup per (bh, block, e tile); each thread a 4x4 tile in four vec4
// registers, d reduced CHUNK rows at a time through workgroup memory.

@group(0) @binding(2) var<storage, read> q: array<Stored>;
@group(0) @binding(3) var<storage, read> states: array<f32>; // [bh][block][d][e]
@group(0) @binding(4) var<storage, read_write> o: array<f32>;

var<workgroup> q_tile: array<vec4<f32>, CHUNK * QUADS>; // [kk][row / 4]
var<workgroup> s_tile: array<vec4<f32>, CHUNK * QUADS>; // [kk][ee / 4]

@compute @workgroup_size(THREADS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let e_tiles = (params.dim_v + TILE - 1u) / TILE;
    var g = group_index(wid, groups);
    if g >= params.bh_count * params.blocks * e_tiles {
        return;
    }
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
    let state = (local_bh * params.blocks + t) * params.dim_k * params.dim_v;

    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < params.dim_k; k0 += CHUNK) {
        for (var i = tid; i < TILE * CHUNK; i += THREADS) {
            // q is read along d (CHUNK wide), the state along e (TILE wide).
            let r = i / CHUNK;
            let kk = i % CHUNK;
            var qx = 0.0;
            if r < len && k0 + kk < params.dim_k {
                qx = read_q(offset_of(params.q_stride, bh, row0 + r, k0 + kk));
            }
            q_tile[kk * QUADS + r / 4u][r % 4u] = qx;
            let sk = i / TILE;
            let se = i % TILE;
            var sx = 0.0;
            if k0 + sk < params.dim_k && e0 + se < params.dim_v {
                sx = states[state + (k0 + sk) * params.dim_v + e0 + se];
            }
            s_tile[sk * QUADS + se / 4u][se % 4u] = sx;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < CHUNK; kk++) {
            let a = q_tile[kk * QUADS + ty];
            let b = s_tile[kk * QUADS + tx];
            a0 = fma(vec4<f32>(a.x), b, a0);
            a1 = fma(vec4<f32>(a.y), b, a1);
            a2 = fma(vec4<f32>(a.z), b, a2);
            a3 = fma(vec4<f32>(a.w), b, a3);
        }
        workgroupBarrier();
    }
    let r0 = ty * 4u;
    let col = e0 + tx * 4u;
    add_row(bh, row0, r0 + 0u, len, col, a0 * (decay(slope, r0 + 1u) * params.scale));
    add_row(bh, row0, r0 + 1u, len, col, a1 * (decay(slope, r0 + 2u) * params.scale));
    add_row(bh, row0, r0 + 2u, len, col, a2 * (decay(slope, r0 + 3u) * params.scale));
    add_row(bh, row0, r0 + 3u, len, col, a3 * (decay(slope, r0 + 4u) * params.scale));
}

fn add_row(bh: u32, row0: u32, r: u32, len: u32, col: u32, x: vec4<f32>) {
    if r >= len {
        return;
    }
    let base = offset_of(params.o_stride, bh, row0 + r, col);
    if col < params.dim_v { o[base] += x.x; }
    if col + 1u < params.dim_v { o[base + 1u] += x.y; }
    if col + 2u < params.dim_v { o[base + 2u] += x.z; }
    if col + 3u < params.dim_v { o[base + 3u] += x.w; }
}

// q, k and v as f32 whatever their storage (see `widen` in common.wgsl).
fn read_q(i: u32) -> f32 {
    return widen(q[i >> PACK], i);
}
