// Intra-block pass: o_t = [(scale Q_t K_t^T) (.) M] V_t for one block t of one
// (batch, head), with M_rc = lambda^(r-c) for c <= r and 0 above the diagonal.
// Quadratic in the block, linear in the sequence. It writes every output
// element of the block; the inter-block pass then adds the carried state.
//
// One workgroup per (bh, block). Scores are built in CHUNK-deep slices of d,
// kept in workgroup memory, then multiplied by V one TILE-wide slice of e at a
// time, so any d and e work and the scores are computed once per block.
// Every thread owns a 4x4 tile held in four vec4 registers: constant-indexed,
// so the loops stay fast even when the runtime bounds checks are on.

@group(0) @binding(2) var<storage, read> q: array<Stored>;
@group(0) @binding(3) var<storage, read> k: array<Stored>;
@group(0) @binding(4) var<storage, read> v: array<Stored>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;

var<workgroup> q_tile: array<vec4<f32>, CHUNK * QUADS>;  // [kk][row / 4]
var<workgroup> kv_tile: array<vec4<f32>, CHUNK * QUADS>; // K as [kk][col / 4], then V as [c][e / 4]
var<workgroup> scores: array<vec4<f32>, TILE * QUADS>;   // [row][col / 4], masked and decayed

@compute @workgroup_size(THREADS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let g = group_index(wid, groups);
    if g >= params.bh_count * params.blocks {
        return;
    }
    let bh = params.bh_start + g / params.blocks;
    let t = g % params.blocks;
    let row0 = t * TILE;
    let len = block_len(t);
    let slope = slope_of(bh);
    let tx = tid % QUADS;
    let ty = tid / QUADS;

    // scores = Q_t K_t^T, rows ty*4.. and columns tx*4..
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < params.dim_k; k0 += CHUNK) {
        for (var i = tid; i < TILE * CHUNK; i += THREADS) {
            let r = i / CHUNK;
            let kk = i % CHUNK;
            var qx = 0.0;
            var kx = 0.0;
            if r < len && k0 + kk < params.dim_k {
                qx = read_q(offset_of(params.q_stride, bh, row0 + r, k0 + kk));
                kx = read_k(offset_of(params.k_stride, bh, row0 + r, k0 + kk));
            }
            q_tile[kk * QUADS + r / 4u][r % 4u] = qx;
            kv_tile[kk * QUADS + r / 4u][r % 4u] = kx;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < CHUNK; kk++) {
            let a = q_tile[kk * QUADS + ty];
            let b = kv_tile[kk * QUADS + tx];
            s0 = fma(vec4<f32>(a.x), b, s0);
            s1 = fma(vec4<f32>(a.y), b, s1);
            s2 = fma(vec4<f32>(a.z), b, s2);
            s3 = fma(vec4<f32>(a.w), b, s3);
        }
        workgroupBarrier();
    }
    let r0 = ty * 4u;
    let c0 = tx * 4u;
    scores[(r0 + 0u) * QUADS + tx] = masked_row(s0, r0 + 0u, c0, slope);
    scores[(r0 + 1u) * QUADS + tx] = masked_row(s1, r0 + 1u, c0, slope);
    scores[(r0 + 2u) * QUADS + tx] = masked_row(s2, r0 + 2u, c0, slope);
    scores[(r0 + 3u) * QUADS + tx] = masked_row(s3, r0 + 3u, c0, slope);
    workgroupBarrier();

    // o = scores V, one TILE-wide slice of e at a time.
    for (var e0 = 0u; e0 < params.dim_v; e0 += TILE) {
        var o0 = vec4<f32>(0.0);
        var o1 = vec4<f32>(0.0);
        var o2 = vec4<f32>(0.0);
        var o3 = vec4<f32>(0.0);
        for (var cb = 0u; cb < len; cb += CHUNK) {
            for (var i = tid; i < TILE * CHUNK; i += THREADS) {
                let cc = i / TILE;
                let ee = i % TILE;
                var vx = 0.0;
                if cb + cc < len && e0 + ee < params.dim_v {
                    vx = read_v(offset_of(params.v_stride, bh, row0 + cb + cc, e0 + ee));
                }
                kv_tile[cc * QUADS + ee / 4u][ee % 4u] = vx;
            }
            workgroupBarrier();
            // Only columns c <= row contribute; a thread whose rows all lie
            // above this slice skips it.
            if cb <= r0 + 3u {
                for (var cc = 0u; cc < CHUNK; cc++) {
                    let c = cb + cc;
                    let vv = kv_tile[cc * QUADS + tx];
                    // select, not a multiply by zero: a NaN in v at a later
                    // position must not reach earlier rows.
                    o0 += select(vec4<f32>(0.0), scores[(r0 + 0u) * QUADS + c / 4u][c % 4u] * vv, c <= r0 + 0u);
                    o1 += select(vec4<f32>(0.0), scores[(r0 + 1u) * QUADS + c / 4u][c % 4u] * vv, c <= r0 + 1u);
                    o2 += select(vec4<f32>(0.0), scores[(r0 + 2u) * QUADS + c / 4u][c % 4u] * vv, c <= r0 + 2u);
                    o3 += select(vec4<f32>(0.0), scores[(r0 + 3u) * QUADS + c / 4u][c % 4u] * vv, c <= r0 + 3u);
                }
            }
            workgroupBarrier();
        }
        store_row(bh, row0, r0 + 0u, len, e0 + c0, o0);
        store_row(bh, row0, r0 + 1u, len, e0 + c0, o1);
        store_row(bh, row0, r0 + 2u, len, e0 + c0, o2);
        store_row(bh, row0, r0 + 3u, len, e0 + c0, o3);
    }
}

// scale * lambda^(r-c) * s for c <= r, else exactly 0 (select keeps a NaN in
// a later key from leaking into this row).
fn masked_row(s: vec4<f32>, r: u32, c0: u32, slope: f32) -> vec4<f32> {
    let c = vec4<u32>(c0, c0 + 1u, c0 + 2u, c0 + 3u);
    let seen = c <= vec4<u32>(r);
    let dist = select(vec4<u32>(0u), vec4<u32>(r) - c, seen);
    let w = exp(-slope * vec4<f32>(dist)) * params.scale;
    return select(vec4<f32>(0.0), s * w, seen);
}

fn store_row(bh: u32, row0: u32, r: u32, len: u32, col: u32, x: vec4<f32>) {
    if r >= len {
        return;
    }
    let base = offset_of(params.o_stride, bh, row0 + r, col);
    if col < params.dim_v { o[base] = x.x; }
    if col + 1u < params.dim_v { o[base + 1u] = x.y; }
    if col + 2u < params.dim_v { o[base + 2u] = x.z; }
    if col + 3u < params.dim_v { o[base + 3u] = x.w; }
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
