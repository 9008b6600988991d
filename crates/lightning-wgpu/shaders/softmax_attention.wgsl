// Causal softmax attention, FlashAttention-style, the baseline Lightning
// Attention is measured against on the same GPU and API:
//     o_i = sum_{j <= i} softmax_j(scale q_i . k_j - s_h (i - j)) v_j
// (s_h = 0: plain causal attention; s_h > 0: an ALiBi bias.)
//
// Bindings: q, k, v (read), o (f32). One workgroup per (bh, block of
// query rows, TILE columns of e). It walks the key blocks up to the
// diagonal with an online softmax: scores in workgroup memory, a running
// maximum and sum per row, the output tile rescaled as the maximum grows.
// Never materialises the n x n matrix.

// A finite "minus infinity": exp(x - NEG) stays 0 and never makes inf - inf.
const NEG: f32 = -3.0e38;

var<workgroup> q_tile: array<vec4<f32>, DEPTH * QUADS>;  // [kk][row / 4]
var<workgroup> kv_tile: array<vec4<f32>, DEPTH * QUADS>; // K as [kk][col / 4], then V as [c][e / 4]
var<workgroup> scores: array<vec4<f32>, BLOCK * QUADS>;  // [row][col / 4]: logits, then probabilities
var<workgroup> row_max: array<f32, BLOCK>;
var<workgroup> row_sum: array<f32, BLOCK>;
var<workgroup> row_rescale: array<f32, BLOCK>;

@compute @workgroup_size(THREADS)
fn main(grid: Grid, @builtin(local_invocation_index) tid: u32) {
    let e_tiles = (params.dim_v + TILE - 1u) / TILE;
    var g = group_index(grid);
    if g >= params.bh_count * params.blocks * e_tiles {
        return;
    }
    let e0 = (g % e_tiles) * TILE;
    g /= e_tiles;
    let t = g % params.blocks;
    let bh = params.bh_start + g / params.blocks;
    let row0 = t * BLOCK;
    let len = block_len(t);
    let slope = slope_of(bh);
    let tx = tid % QUADS;
    let ty = tid / QUADS;
    let r0 = ty * 4u;
    let c0 = tx * 4u;

    if tid < BLOCK {
        row_max[tid] = NEG;
        row_sum[tid] = 0.0;
    }
    var o = Rows4();

    for (var kb = 0u; kb <= t; kb++) {
        let key0 = kb * BLOCK;
        let key_len = block_len(kb);
        // Logits of this key block.
        var s = Rows4();
        for (var k0 = 0u; k0 < params.dim_k; k0 += DEPTH) {
            for (var i = tid; i < BLOCK * DEPTH; i += THREADS) {
                let r = i / DEPTH;
                let kk = i % DEPTH;
                var qx = 0.0;
                var kx = 0.0;
                if k0 + kk < params.dim_k {
                    if r < len {
                        qx = read_q(offset_of(params.q_stride, bh, row0 + r, k0 + kk));
                    }
                    if r < key_len {
                        kx = read_k(offset_of(params.k_stride, bh, key0 + r, k0 + kk));
                    }
                }
                q_tile[kk * QUADS + r / 4u][r % 4u] = qx;
                kv_tile[kk * QUADS + r / 4u][r % 4u] = kx;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < DEPTH; kk++) {
                let a = q_tile[kk * QUADS + ty];
                let b = kv_tile[kk * QUADS + tx];
                s = outer4(s, a, b);
            }
            workgroupBarrier();
        }
        let diagonal = kb == t;
        scores[(r0 + 0u) * QUADS + tx] = logits(s.r0, row0 + r0 + 0u, key0 + c0, key0 + key_len, slope);
        scores[(r0 + 1u) * QUADS + tx] = logits(s.r1, row0 + r0 + 1u, key0 + c0, key0 + key_len, slope);
        scores[(r0 + 2u) * QUADS + tx] = logits(s.r2, row0 + r0 + 2u, key0 + c0, key0 + key_len, slope);
        scores[(r0 + 3u) * QUADS + tx] = logits(s.r3, row0 + r0 + 3u, key0 + c0, key0 + key_len, slope);
        workgroupBarrier();

        // Online softmax, one invocation per row: new maximum, probabilities,
        // and the factor that rescales what the row has summed so far.
        if tid < BLOCK {
            var m = row_max[tid];
            for (var c = 0u; c < QUADS; c++) {
                let x = scores[tid * QUADS + c];
                m = max(m, max(max(x.x, x.y), max(x.z, x.w)));
            }
            var sum = 0.0;
            for (var c = 0u; c < QUADS; c++) {
                let p = exp(scores[tid * QUADS + c] - vec4<f32>(m));
                scores[tid * QUADS + c] = p;
                sum += p.x + p.y + p.z + p.w;
            }
            let rescale = exp(row_max[tid] - m);
            row_rescale[tid] = rescale;
            row_sum[tid] = row_sum[tid] * rescale + sum;
            row_max[tid] = m;
        }
        workgroupBarrier();

        o = scale_rows(o, vec4<f32>(row_rescale[r0], row_rescale[r0 + 1u], row_rescale[r0 + 2u], row_rescale[r0 + 3u]));
        for (var cb = 0u; cb < key_len; cb += DEPTH) {
            for (var i = tid; i < TILE * DEPTH; i += THREADS) {
                let cc = i / TILE;
                let ee = i % TILE;
                var vx = 0.0;
                if cb + cc < key_len && e0 + ee < params.dim_v {
                    vx = read_v(offset_of(params.v_stride, bh, key0 + cb + cc, e0 + ee));
                }
                kv_tile[cc * QUADS + ee / 4u][ee % 4u] = vx;
            }
            workgroupBarrier();
            for (var cc = 0u; cc < DEPTH; cc++) {
                let c = cb + cc;
                let vv = kv_tile[cc * QUADS + tx];
                let w = vec4<f32>(
                    scores[(r0 + 0u) * QUADS + c / 4u][c % 4u],
                    scores[(r0 + 1u) * QUADS + c / 4u][c % 4u],
                    scores[(r0 + 2u) * QUADS + c / 4u][c % 4u],
                    scores[(r0 + 3u) * QUADS + c / 4u][c % 4u],
                );
                o = outer4(o, w, vv);
            }
            workgroupBarrier();
        }
    }
    store_row(bh, row0, r0 + 0u, len, e0 + c0, o.r0 / row_sum[r0 + 0u]);
    store_row(bh, row0, r0 + 1u, len, e0 + c0, o.r1 / row_sum[r0 + 1u]);
    store_row(bh, row0, r0 + 2u, len, e0 + c0, o.r2 / row_sum[r0 + 2u]);
    store_row(bh, row0, r0 + 3u, len, e0 + c0, o.r3 / row_sum[r0 + 3u]);
}

// scale q_i . k_j - s (i - j) for keys j <= i that exist, else NEG.
fn logits(s: vec4<f32>, i: u32, j0: u32, keys_end: u32, slope: f32) -> vec4<f32> {
    let j = vec4<u32>(j0, j0 + 1u, j0 + 2u, j0 + 3u);
    let seen = (j <= vec4<u32>(i)) & (j < vec4<u32>(keys_end));
    let dist = select(vec4<u32>(0u), vec4<u32>(i) - j, seen);
    return select(vec4<f32>(NEG), s * params.scale - slope * vec4<f32>(dist), seen);
}

fn store_row(bh: u32, row0: u32, r: u32, len: u32, col: u32, x: vec4<f32>) {
    if r < len {
        store4_o(offset_of(params.o_stride, bh, row0 + r, col), 1u, live4(col, 1u, params.dim_v), x);
    }
}
