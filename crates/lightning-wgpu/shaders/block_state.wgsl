// Block-state pass: the state each block starts from, counted from the
// start of its stripe (STRIPE consecutive blocks),
//     L_t = sum over blocks u of the stripe before t of lambda^(rows after u) K_u^T V_u
// (d x e), and each stripe's whole contribution. Stripes run in parallel;
// inside a stripe the blocks are walked in order with the state in
// registers:
//     L_{t+1} = lambda^L L_t + sum_{c < L} lambda^(L-1-c) k_{tB+c}^T v_{tB+c}
// The stripe scan then chains the stripes, and the output pass adds the
// decayed state of the stripe's start to L_t (see lib/blocks.wgsl).
//
// Bindings: k, v (read), states (written): [bh][block][d][e] holds L_t,
// then from stripe_states() [bh][stripe][d][e] each stripe's contribution.
// One workgroup per (bh, stripe, d tile, e tile), TILE x TILE outputs, each
// invocation a 4x4 tile in four vec4 registers.

var<workgroup> k_tile: array<vec4<f32>, DEPTH * QUADS>; // decayed K as [c][dd / 4]
var<workgroup> v_tile: array<vec4<f32>, DEPTH * QUADS>; // V as [c][ee / 4]

@compute @workgroup_size(THREADS)
fn main(grid: Grid, @builtin(local_invocation_index) tid: u32) {
    let d_tiles = (params.dim_k + TILE - 1u) / TILE;
    let e_tiles = (params.dim_v + TILE - 1u) / TILE;
    let stripes = stripe_count();
    var g = group_index(grid);
    if g >= params.bh_count * stripes * d_tiles * e_tiles {
        return;
    }
    let d0 = (g % d_tiles) * TILE;
    g /= d_tiles;
    let e0 = (g % e_tiles) * TILE;
    g /= e_tiles;
    let at = stripe_at(g, stripes);
    let tx = tid % QUADS;
    let ty = tid / QUADS;
    let size = params.dim_k * params.dim_v;
    let dd = d0 + ty * 4u;
    // This invocation's state columns: ee, ee + QUADS, ee + 2 QUADS, ee + 3
    // QUADS, so a warp stores each row's columns side by side (see put).
    let ee = e0 + tx;

    var acc = Rows4();
    let first = at.stripe * STRIPE;
    let end = min(first + STRIPE, params.blocks);
    // Offsets of the sequence's first row: rows are stepped by the stride.
    let kb = offset_of(params.k_stride, at.bh, 0u, 0u);
    let vb = offset_of(params.v_stride, at.bh, 0u, 0u);
    // Each step's slices are loaded into registers during the step before
    // (across block boundaries too), so their latency hides behind the
    // arithmetic.
    var next = fetch(kb, vb, first, 0u, d0, e0, at.slope, tid);
    for (var t = first; t < end; t++) {
        let base = (at.local_bh * params.blocks + t) * size;
        store_state_row(base, dd + 0u, ee, acc.r0);
        store_state_row(base, dd + 1u, ee, acc.r1);
        store_state_row(base, dd + 2u, ee, acc.r2);
        store_state_row(base, dd + 3u, ee, acc.r3);
        let len = block_len(t);
        acc = scale_rows(acc, vec4<f32>(decay(at.slope, len)));
        for (var cb = 0u; cb < len; cb += DEPTH) {
            put(next, tid);
            workgroupBarrier();
            if cb + DEPTH < len {
                next = fetch(kb, vb, t, cb + DEPTH, d0, e0, at.slope, tid);
            } else if t + 1u < end {
                next = fetch(kb, vb, t + 1u, 0u, d0, e0, at.slope, tid);
            }
            for (var cc = 0u; cc < DEPTH; cc++) {
                acc = outer4(acc, k_tile[cc * QUADS + ty], v_tile[cc * QUADS + tx]);
            }
            workgroupBarrier();
        }
    }
    let base = stripe_states() + (at.local_bh * stripes + at.stripe) * size;
    store_state_row(base, dd + 0u, ee, acc.r0);
    store_state_row(base, dd + 1u, ee, acc.r1);
    store_state_row(base, dd + 2u, ee, acc.r2);
    store_state_row(base, dd + 3u, ee, acc.r3);
}

// Elements of a DEPTH x TILE slice each invocation stages per step: element
// j of an invocation is element element_of(tid, j, THREADS) of the slice;
// the loops over j have constant bounds, so the arrays live in registers.
const PER: u32 = TILE * DEPTH / THREADS;

// Rows cb .. cb + DEPTH of block t: (x) k at columns d0.., decayed by
// lambda^(L-1-c), and (y) v at columns e0..; zero past the block, d or e.
fn fetch(kb: u32, vb: u32, t: u32, cb: u32, d0: u32, e0: u32, slope: f32, tid: u32) -> array<vec2<f32>, PER> {
    let len = block_len(t);
    var x: array<vec2<f32>, PER>;
    for (var j = 0u; j < PER; j++) {
        let i = element_of(tid, j, THREADS);
        let c = cb + i / TILE;
        let w = i % TILE;
        if c < len {
            let row = t * BLOCK + c;
            if d0 + w < params.dim_k {
                x[j].x = read_k(kb + row * params.k_stride.z + d0 + w) * decay(slope, len - 1u - c);
            }
            if e0 + w < params.dim_v {
                x[j].y = read_v(vb + row * params.v_stride.z + e0 + w);
            }
        }
    }
    return x;
}

// A fetched slice into k_tile as [c][col / 4] and v_tile as
// [c][col % QUADS][col / QUADS] (an invocation's vec4 of v holds its columns).
fn put(x: array<vec2<f32>, PER>, tid: u32) {
    for (var j = 0u; j < PER; j++) {
        let i = element_of(tid, j, THREADS);
        let w = i % TILE;
        k_tile[(i / TILE) * QUADS + w / 4u][w % 4u] = x[j].x;
        v_tile[(i / TILE) * QUADS + w % QUADS][w / QUADS] = x[j].y;
    }
}

// Row dd of a state, columns ee, ee + QUADS, ee + 2 QUADS, ee + 3 QUADS.
fn store_state_row(base: u32, dd: u32, ee: u32, x: vec4<f32>) {
    if dd < params.dim_k {
        store4_states(base + dd * params.dim_v + ee, QUADS, live4(ee, QUADS, params.dim_v), x);
    }
}
