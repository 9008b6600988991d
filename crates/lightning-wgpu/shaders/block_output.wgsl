// Output pass: the whole output of one block t of one (batch, head),
//     o_t = [(scale Q_t K_t^T) (.) M] V_t  +  Lambda scale Q_t S_{t-1}
// with M_rc = lambda^(r-c) for c <= r (0 above the diagonal) and
// Lambda = diag(lambda^(r+1)). The quadratic intra-block part and the state
// carried in from earlier blocks (put together while staged, see
// lib/blocks.wgsl) are summed in registers, so each output element is
// written once.
//
// Bindings: q, k, v (read), states (the block-state pass's scratch), o (f32).
// One workgroup per (bh, block). Scores are built in DEPTH-deep slices of d
// and kept in workgroup memory; then, 2 TILE columns of e at a time, the
// carried part is reduced over d and the masked scores are multiplied by V.
// For the scores the first (QUADS)(QUADS + 1)/2 invocations own a 4x4 tile
// each, those at or below the diagonal (the other warps skip the products);
// for the output every invocation owns a 4x8 one (columns tx + QUADS j and
// TILE + tx + QUADS j, j = 0..3, so that a warp's stores are contiguous),
// all in vec4 registers: constant-indexed, so the loops stay fast even when
// the runtime bounds checks are on. The wide output tile stages q once for
// both halves of e.
// Addresses are computed once per tensor (the block's first row) and
// stepped by the row stride, which wraps like `offset_of` does.

// vec4s per staged row, plus one of padding so the transposed stores of q
// and k (consecutive threads walk down a column) spread over the banks.
const PITCH: u32 = QUADS + 1u;
const WIDE: u32 = 2u * TILE;          // output columns per step
const WIDE_PITCH: u32 = 2u * QUADS + 1u;

var<workgroup> q_slice: array<vec4<f32>, DEPTH * PITCH>;          // Q as [kk][row / 4]
var<workgroup> kv_slice: array<vec4<f32>, DEPTH * WIDE_PITCH>;    // K as [kk][col / 4]; S as [kk][e / 4]; V as [c][e / 4]
var<workgroup> scores: array<vec4<f32>, BLOCK * QUADS>;           // [row][col / 4], masked, decayed, scaled

@compute @workgroup_size(THREADS)
fn main(grid: Grid, @builtin(local_invocation_index) tid: u32) {
    let at = block_at(grid);
    if !at.inside {
        return;
    }
    let tx = tid % QUADS;
    let ty = tid / QUADS;
    let r0 = ty * 4u;

    // scores = Q_t K_t^T at and below the diagonal only: the LOWER 4x4
    // tiles there go to the first LOWER invocations, row by row of tiles
    // (tile (si, sj), rows 4 si.., columns 4 sj..), so the warps past them
    // skip the products (those above the diagonal are never read: the
    // product with V selects c <= r).
    let lower = tid < LOWER;
    let si = select(0u, lower_row(tid), lower);
    let sj = select(0u, tid - si * (si + 1u) / 2u, lower);
    var s = Rows4();
    // Each step's slices are loaded into registers during the step before,
    // so their global-memory latency hides behind that step's arithmetic.
    var qn = fetch_qk(Q, at.q0, 0u, at.len, tid);
    var kn = fetch_qk(K, at.k0, 0u, at.len, tid);
    for (var d0 = 0u; d0 < params.dim_k; d0 += DEPTH) {
        put_qk(Q, qn, tid);
        put_qk(K, kn, tid);
        workgroupBarrier();
        if d0 + DEPTH < params.dim_k {
            qn = fetch_qk(Q, at.q0, d0 + DEPTH, at.len, tid);
            kn = fetch_qk(K, at.k0, d0 + DEPTH, at.len, tid);
        }
        if lower {
            for (var kk = 0u; kk < DEPTH; kk++) {
                s = outer4(s, q_slice[kk * PITCH + si], kv_slice[kk * WIDE_PITCH + sj]);
            }
        }
        workgroupBarrier();
    }
    // Read only after the barrier inside the first staging step below.
    if lower {
        let sr = si * 4u;
        let sc = sj * 4u;
        scores[(sr + 0u) * QUADS + sj] = masked_row(s.r0, sr + 0u, sc, at.slope);
        scores[(sr + 1u) * QUADS + sj] = masked_row(s.r1, sr + 1u, sc, at.slope);
        scores[(sr + 2u) * QUADS + sj] = masked_row(s.r2, sr + 2u, sc, at.slope);
        scores[(sr + 3u) * QUADS + sj] = masked_row(s.r3, sr + 3u, sc, at.slope);
    }

    // Block 0 of a sequence with no initial state carries nothing in (the
    // scan left zeros there): skip the product. Uniform per workgroup.
    let carried = at.carried;
    for (var e0 = 0u; e0 < params.dim_v; e0 += WIDE) {
        // Whether the right half of this step exists (uniform): e <= TILE
        // skips its arithmetic.
        let wide = e0 + TILE < params.dim_v;
        // Rows r0.., columns e0 + tx + QUADS j (o) and e0 + TILE + tx + QUADS j (p)
        // for j = 0..3 (see put_wide).
        var o = Rows4();
        var p = Rows4();
        if carried {
            // Q_t S_{t-1} for these columns, then the per-row decay.
            qn = fetch_qk(Q, at.q0, 0u, at.len, tid);
            var sn = fetch_state(at.own_state, at.stripe_state, at.stripe_decay, 0u, e0, tid);
            for (var d0 = 0u; d0 < params.dim_k; d0 += DEPTH) {
                put_qk(Q, qn, tid);
                put_wide(sn, tid);
                workgroupBarrier();
                if d0 + DEPTH < params.dim_k {
                    qn = fetch_qk(Q, at.q0, d0 + DEPTH, at.len, tid);
                    sn = fetch_state(at.own_state, at.stripe_state, at.stripe_decay, d0 + DEPTH, e0, tid);
                }
                for (var kk = 0u; kk < DEPTH; kk++) {
                    let a = q_slice[kk * PITCH + ty];
                    o = outer4(o, a, kv_slice[kk * WIDE_PITCH + tx]);
                    if wide {
                        p = outer4(p, a, kv_slice[kk * WIDE_PITCH + QUADS + tx]);
                    }
                }
                workgroupBarrier();
            }
            let f = vec4<f32>(decay(at.slope, r0 + 1u), decay(at.slope, r0 + 2u), decay(at.slope, r0 + 3u), decay(at.slope, r0 + 4u)) * params.scale;
            o = scale_rows(o, f);
            p = scale_rows(p, f);
        }
        // + scores V: only columns c <= row contribute.
        var vn = fetch_v(at.v0, 0u, e0, at.len, tid);
        for (var cb = 0u; cb < at.len; cb += DEPTH) {
            put_wide(vn, tid);
            workgroupBarrier();
            if cb + DEPTH < at.len {
                vn = fetch_v(at.v0, cb + DEPTH, e0, at.len, tid);
            }
            if cb + DEPTH <= r0 + 1u {
                // The whole slice lies at or before every row of this thread.
                for (var cc = 0u; cc < DEPTH; cc += 4u) {
                    let w0 = scores[(r0 + 0u) * QUADS + (cb + cc) / 4u];
                    let w1 = scores[(r0 + 1u) * QUADS + (cb + cc) / 4u];
                    let w2 = scores[(r0 + 2u) * QUADS + (cb + cc) / 4u];
                    let w3 = scores[(r0 + 3u) * QUADS + (cb + cc) / 4u];
                    let x = vec4<f32>(w0.x, w1.x, w2.x, w3.x);
                    let y = vec4<f32>(w0.y, w1.y, w2.y, w3.y);
                    let z = vec4<f32>(w0.z, w1.z, w2.z, w3.z);
                    let w = vec4<f32>(w0.w, w1.w, w2.w, w3.w);
                    o = outer4(o, x, kv_slice[(cc + 0u) * WIDE_PITCH + tx]);
                    o = outer4(o, y, kv_slice[(cc + 1u) * WIDE_PITCH + tx]);
                    o = outer4(o, z, kv_slice[(cc + 2u) * WIDE_PITCH + tx]);
                    o = outer4(o, w, kv_slice[(cc + 3u) * WIDE_PITCH + tx]);
                    if wide {
                        p = outer4(p, x, kv_slice[(cc + 0u) * WIDE_PITCH + QUADS + tx]);
                        p = outer4(p, y, kv_slice[(cc + 1u) * WIDE_PITCH + QUADS + tx]);
                        p = outer4(p, z, kv_slice[(cc + 2u) * WIDE_PITCH + QUADS + tx]);
                        p = outer4(p, w, kv_slice[(cc + 3u) * WIDE_PITCH + QUADS + tx]);
                    }
                }
            } else if cb <= r0 + 3u {
                // The diagonal slice: select, not a multiply by zero, so a
                // NaN in v at a later position cannot reach earlier rows.
                for (var cc = 0u; cc < DEPTH; cc++) {
                    let c = cb + cc;
                    let vv = kv_slice[cc * WIDE_PITCH + tx];
                    let uu = kv_slice[cc * WIDE_PITCH + QUADS + tx];
                    let w = vec4<f32>(
                        scores[(r0 + 0u) * QUADS + c / 4u][c % 4u],
                        scores[(r0 + 1u) * QUADS + c / 4u][c % 4u],
                        scores[(r0 + 2u) * QUADS + c / 4u][c % 4u],
                        scores[(r0 + 3u) * QUADS + c / 4u][c % 4u],
                    );
                    let seen = vec4<u32>(c) <= vec4<u32>(r0, r0 + 1u, r0 + 2u, r0 + 3u);
                    o.r0 += select(vec4<f32>(0.0), w.x * vv, seen.x);
                    o.r1 += select(vec4<f32>(0.0), w.y * vv, seen.y);
                    o.r2 += select(vec4<f32>(0.0), w.z * vv, seen.z);
                    o.r3 += select(vec4<f32>(0.0), w.w * vv, seen.w);
                    p.r0 += select(vec4<f32>(0.0), w.x * uu, seen.x);
                    p.r1 += select(vec4<f32>(0.0), w.y * uu, seen.y);
                    p.r2 += select(vec4<f32>(0.0), w.z * uu, seen.z);
                    p.r3 += select(vec4<f32>(0.0), w.w * uu, seen.w);
                }
            }
            workgroupBarrier();
        }
        store_row(at.bh, at.row0, r0 + 0u, at.len, e0 + tx, o.r0);
        store_row(at.bh, at.row0, r0 + 1u, at.len, e0 + tx, o.r1);
        store_row(at.bh, at.row0, r0 + 2u, at.len, e0 + tx, o.r2);
        store_row(at.bh, at.row0, r0 + 3u, at.len, e0 + tx, o.r3);
        store_row(at.bh, at.row0, r0 + 0u, at.len, e0 + TILE + tx, p.r0);
        store_row(at.bh, at.row0, r0 + 1u, at.len, e0 + TILE + tx, p.r1);
        store_row(at.bh, at.row0, r0 + 2u, at.len, e0 + TILE + tx, p.r2);
        store_row(at.bh, at.row0, r0 + 3u, at.len, e0 + TILE + tx, p.r3);
    }
}

// Elements each invocation stages per step: of a BLOCK x DEPTH slice of q
// or k, and of a DEPTH x WIDE slice of the state or v. Element j of a thread is
// element tid + j THREADS of the slice; the loops over j have constant
// bounds, so the arrays live in registers.
const QK_PER: u32 = BLOCK * DEPTH / THREADS;
const ROW_PER: u32 = WIDE * DEPTH / THREADS;

const Q: u32 = 0u;
const K: u32 = 1u;

// Columns d0 .. d0 + DEPTH of the block's rows of q or k (`which`, a
// constant at every call; zero past the block or past d). Consecutive
// invocations read along a row.
fn fetch_qk(which: u32, base: u32, d0: u32, len: u32, tid: u32) -> array<f32, QK_PER> {
    var x: array<f32, QK_PER>;
    for (var j = 0u; j < QK_PER; j++) {
        let i = tid + j * THREADS;
        let r = i / DEPTH;
        let kk = i % DEPTH;
        if r < len && d0 + kk < params.dim_k {
            if which == Q {
                x[j] = read_q(base + r * params.q_stride.z + d0 + kk);
            } else {
                x[j] = read_k(base + r * params.k_stride.z + d0 + kk);
            }
        }
    }
    return x;
}

// A fetched slice of q (into q_slice) or k (into kv_slice), transposed as
// [kk][row / 4].
fn put_qk(which: u32, x: array<f32, QK_PER>, tid: u32) {
    for (var j = 0u; j < QK_PER; j++) {
        let i = tid + j * THREADS;
        let r = i / DEPTH;
        if which == Q {
            q_slice[(i % DEPTH) * PITCH + r / 4u][r % 4u] = x[j];
        } else {
            kv_slice[(i % DEPTH) * WIDE_PITCH + r / 4u][r % 4u] = x[j];
        }
    }
}

// Rows d0 .. d0 + DEPTH, columns e0 .. e0 + WIDE of the block's carried
// state: its own part `at` plus `f` times its stripe's `stripe_at`.
fn fetch_state(at: u32, stripe_at: u32, f: f32, d0: u32, e0: u32, tid: u32) -> array<f32, ROW_PER> {
    var x: array<f32, ROW_PER>;
    for (var j = 0u; j < ROW_PER; j++) {
        let i = tid + j * THREADS;
        let kk = i / WIDE;
        let ee = i % WIDE;
        if d0 + kk < params.dim_k && e0 + ee < params.dim_v {
            let e = (d0 + kk) * params.dim_v + e0 + ee;
            x[j] = fma(f, states[stripe_at + e], states[at + e]);
        }
    }
    return x;
}

// A fetched DEPTH x WIDE slice into kv_slice, each TILE-wide half as
// [row][col % QUADS][col / QUADS]: the vec4 a thread reads holds columns
// tx, tx + QUADS, tx + 2 QUADS, tx + 3 QUADS, so its outputs, stored column
// by column, are written by a warp's threads side by side (coalesced).
fn put_wide(x: array<f32, ROW_PER>, tid: u32) {
    for (var j = 0u; j < ROW_PER; j++) {
        let i = tid + j * THREADS;
        let ee = i % WIDE;
        let w = ee % TILE;
        kv_slice[(i / WIDE) * WIDE_PITCH + (ee / TILE) * QUADS + w % QUADS][w / QUADS] = x[j];
    }
}

// Rows cb .. cb + DEPTH of the block's v, columns e0 .. e0 + WIDE.
fn fetch_v(base: u32, cb: u32, e0: u32, len: u32, tid: u32) -> array<f32, ROW_PER> {
    var x: array<f32, ROW_PER>;
    for (var j = 0u; j < ROW_PER; j++) {
        let i = tid + j * THREADS;
        let cc = i / WIDE;
        let ee = i % WIDE;
        if cb + cc < len && e0 + ee < params.dim_v {
            x[j] = read_v(base + (cb + cc) * params.v_stride.z + e0 + ee);
        }
    }
    return x;
}

// 4x4 tiles of the scores at or below the diagonal.
const LOWER: u32 = QUADS * (QUADS + 1u) / 2u;

// Row of tiles of the i-th tile at or below the diagonal, counted row by
// row: the largest si with si (si + 1) / 2 <= i (the f32 square root is
// exact to one either way for these sizes; the two steps correct it).
fn lower_row(i: u32) -> u32 {
    var r = u32((sqrt(8.0 * f32(i) + 1.0) - 1.0) * 0.5);
    if (r + 1u) * (r + 2u) / 2u <= i {
        r += 1u;
    }
    if r * (r + 1u) / 2u > i {
        r -= 1u;
    }
    return r;
}

// scale * lambda^(r-c) * s for c <= r, else exactly 0 (select keeps a NaN in
// a later key from leaking into this row).
fn masked_row(s: vec4<f32>, r: u32, c0: u32, slope: f32) -> vec4<f32> {
    let c = vec4<u32>(c0, c0 + 1u, c0 + 2u, c0 + 3u);
    let seen = c <= vec4<u32>(r);
    let dist = select(vec4<u32>(0u), vec4<u32>(r) - c, seen);
    let w = decay4(slope, dist) * params.scale;
    return select(vec4<f32>(0.0), s * w, seen);
}

// Row r of the block, columns col, col + QUADS, col + 2 QUADS, col + 3 QUADS
// (see put_wide).
fn store_row(bh: u32, row0: u32, r: u32, len: u32, col: u32, x: vec4<f32>) {
    if r < len {
        store4_o(offset_of(params.o_stride, bh, row0 + r, col), QUADS, live4(col, QUADS, params.dim_v), x);
    }
}
