// Block-state pass on the tensor cores (cooperative matrices, 16x16x16, f16
// operands, f32 accumulation): the same states as block_state.wgsl,
//     L_{t+1} = lambda^L L_t + (Lambda_K K_t)^T V_t,
// walked block by block through each stripe with the state held in the
// subgroups' accumulators, and written before each block (in f16: the
// output pass rounds the state it carries to f16 anyway, and this halves
// the scratch and its traffic) and at the stripe's end (in f32, for the
// stripe scan). Accumulators reach storage through workgroup memory, half
// of the subgroups at a time.
//
// Bindings: k, v (read, a word of two elements at a time), states
// (written): [bh][block][d][e] holds L_t in f16, two to a word; then, from
// stripe_states(), [bh][stripe][d][e] in f32 bits.
//
// One workgroup of thirty-two subgroups (32 invocations each) per (bh,
// stripe, 64 columns of e); subgroup g owns the 16 x 16 tile at state rows
// 16 (g % 8) and columns 16 (g / 8) of those: more, smaller subgroups keep
// more loads in flight. Each block's K and V are loaded with ordinary
// bounds-checked reads (zero past the block, d or e) into registers while
// the block before is multiplied, then decayed (K) and converted to f16
// into workgroup memory; the matrix loads read only workgroup memory.
// Needs d and e multiples of 16, at most MAX_D and MAX_E (the host checks),
// so every 16 x 16 tile of the state is inside it or wholly outside. Every
// subgroup runs the same products (a branch on the subgroup around a
// matrix operation is slower); only the stores of rows past d are skipped.

const MAX_D: u32 = 128u;   // widest d: eight subgroups of 16 rows
const MAX_E: u32 = 128u;   // widest e
const COLUMNS: u32 = 64u;  // columns of e per workgroup: four tiles per subgroup
const LANES: u32 = 1024u;  // thirty-two subgroups of 32

// Row pitches, in elements, padded by 16 bytes so the 16 rows (columns) a
// matrix load reads start in different banks.
const K_PITCH: u32 = MAX_D + 8u;
const V_PITCH: u32 = COLUMNS + 8u;

var<workgroup> k_rows: array<f16, BLOCK * K_PITCH>; // lambda^(L-1-c) k_c as [c][dd]
var<workgroup> v_rows: array<f16, BLOCK * V_PITCH>; // v_c as [c][e - e0]
// Half of the subgroups' f32 tiles at a time, on their way to storage.
var<workgroup> exchange: array<f32, 16u * 256u>;

// A subgroup stages its tile only in its half's turn and for rows inside
// d: a branch on the subgroup index, uniform within each subgroup (the
// scope of the store).
@diagnostic(off, derivative_uniformity)
@compute @workgroup_size(LANES)
fn main(grid: Grid, @builtin(local_invocation_index) tid: u32) {
    let stripes = stripe_count();
    let halves = (params.dim_v + COLUMNS - 1u) / COLUMNS;
    var g = group_index(grid);
    if g >= params.bh_count * stripes * halves {
        return;
    }
    let e0 = (g % halves) * COLUMNS;
    g /= halves;
    let at = stripe_at(g, stripes);
    let size = params.dim_k * params.dim_v;
    let r16 = ((tid / 32u) % 8u) * 16u;
    let ec = (tid / 256u) * 16u; // this subgroup's first column, from e0
    // Whether this subgroup's rows are inside d (uniform per subgroup).
    let mine = r16 < params.dim_k;
    let kb = offset_of(params.k_stride, at.bh, 0u, 0u);
    let vb = offset_of(params.v_stride, at.bh, 0u, 0u);

    var a0 = Acc();
    let first = at.stripe * STRIPE;
    let end = min(first + STRIPE, params.blocks);
    var kn = fetch_k(kb, first, tid);
    var vn = fetch_v(vb, first, e0, tid);
    for (var t = first; t < end; t++) {
        let len = block_len(t);
        put(kn, vn, len, at.slope, tid);
        if t + 1u < end {
            kn = fetch_k(kb, t + 1u, tid);
            vn = fetch_v(vb, t + 1u, e0, tid);
        }
        // L_t to storage in f16: half of the tiles, then the other half,
        // whose copy out of `exchange` overlaps the products (it is next
        // written after the barrier that ends them).
        let slot = (at.local_bh * params.blocks + t) * (size / 2u);
        stage(a0, 0u, tid, mine);
        workgroupBarrier();
        save_half(slot, e0, 0u, tid);
        workgroupBarrier();
        stage(a0, 1u, tid, mine);
        let carry = decay(at.slope, len);
        a0 = a0 * carry;
        workgroupBarrier();
        save_half(slot, e0, 1u, tid);
        for (var c0 = 0u; c0 < len; c0 += 16u) {
            // (Lambda_K K)^T: element (dd, c) is k_rows[c K_PITCH + dd], column-major.
            let at = c0 * K_PITCH + r16;
            let a = coopLoad<MatA>(&k_rows[at], K_PITCH);
            let b = c0 * V_PITCH + ec;
            a0 = coopMultiplyAdd(a, coopLoadT<MatB>(&v_rows[b], V_PITCH), a0);
        }
        workgroupBarrier();
    }
    let base = stripe_states() + (at.local_bh * stripes + at.stripe) * size;
    stage(a0, 0u, tid, mine);
    workgroupBarrier();
    save_full(base, e0, 0u, tid);
    workgroupBarrier();
    stage(a0, 1u, tid, mine);
    workgroupBarrier();
    save_full(base, e0, 1u, tid);
}

// Elements each invocation stages per block: of K (BLOCK x MAX_D) and of V
// (BLOCK x COLUMNS). Element j of an invocation is element element_of(tid,
// j, LANES); the loops over j have constant bounds, so the arrays live in
// registers and the loads of a block are all in flight together.
const K_PER: u32 = BLOCK * MAX_D / LANES;
const V_PER: u32 = BLOCK * COLUMNS / LANES;

// Block t's k_c, zero past the block or d, a word (two elements of one
// row) at a time, held as loaded.
fn fetch_k(kb: u32, t: u32, tid: u32) -> array<Stored, K_PER / 2u> {
    let len = block_len(t);
    var x: array<Stored, K_PER / 2u>;
    for (var p = 0u; p < K_PER / 2u; p++) {
        let i = element_of(tid, 2u * p, LANES);
        let c = i / MAX_D;
        let w = i % MAX_D;
        if c < len && w < params.dim_k {
            x[p] = k[(kb + (t * BLOCK + c) * params.k_stride.z + w) >> 1u];
        }
    }
    return x;
}

// Block t's v_c, columns e0 .. e0 + COLUMNS, zero past the block or e.
fn fetch_v(vb: u32, t: u32, e0: u32, tid: u32) -> array<Stored, V_PER / 2u> {
    let len = block_len(t);
    var x: array<Stored, V_PER / 2u>;
    for (var p = 0u; p < V_PER / 2u; p++) {
        let i = element_of(tid, 2u * p, LANES);
        let c = i / COLUMNS;
        let w = e0 + i % COLUMNS;
        if c < len && w < params.dim_v {
            x[p] = v[(vb + (t * BLOCK + c) * params.v_stride.z + w) >> 1u];
        }
    }
    return x;
}

// A block of `len` rows into workgroup memory in f16: lambda^(L-1-c) k_c
// and v_c, a pair at a time with one exp.
fn put(x: array<Stored, K_PER / 2u>, y: array<Stored, V_PER / 2u>, len: u32, slope: f32, tid: u32) {
    for (var p = 0u; p < K_PER / 2u; p++) {
        let i = element_of(tid, 2u * p, LANES);
        let c = i / MAX_D;
        let at = c * K_PITCH + i % MAX_D;
        let h = vec2<f16>(pair_of(x[p]) * decay(slope, len - 1u - min(c, len - 1u)));
        k_rows[at] = h.x;
        k_rows[at + 1u] = h.y;
    }
    for (var p = 0u; p < V_PER / 2u; p++) {
        let i = element_of(tid, 2u * p, LANES);
        let at = (i / COLUMNS) * V_PITCH + i % COLUMNS;
        let h = halves_of(y[p]);
        v_rows[at] = h.x;
        v_rows[at + 1u] = h.y;
    }
}

// Subgroups 16 round .. 16 round + 15 (columns 32 round .. + 31 of the 64)
// put their tiles in `exchange`; subgroup g's tile is at 256 (g % 16),
// row-major.
fn stage(a0: Acc, round: u32, tid: u32, mine: bool) {
    let g = tid / 32u;
    if mine && g / 16u == round {
        let at = (g % 16u) * 256u;
        let pitch = 16u;
        coopStoreT(a0, &exchange[at], pitch);
    }
}

// Element (row, col) of the staged half (col < 32) in `exchange`.
fn staged(row: u32, col: u32) -> u32 {
    return ((col / 16u) * 8u + row / 16u) * 256u + (row % 16u) * 16u + col % 16u;
}

// The staged half as f16 pairs at word `slot` + (row e + col) / 2.
fn save_half(slot: u32, e0: u32, round: u32, tid: u32) {
    for (var j = 0u; j < 2u; j++) {
        let w = tid + j * LANES;
        let row = w / 16u;
        let cl = 2u * (w % 16u);
        let col = e0 + 32u * round + cl;
        if row < params.dim_k && col < params.dim_v {
            let at = staged(row, cl);
            let pair = pack2x16float(vec2<f32>(exchange[at], exchange[at + 1u]));
            states[slot + (row * params.dim_v + col) / 2u] = pair;
        }
    }
}

// The staged half as f32 bits at word `base` + row e + col.
fn save_full(base: u32, e0: u32, round: u32, tid: u32) {
    for (var j = 0u; j < 4u; j++) {
        let w = tid + j * LANES;
        let row = w / 32u;
        let cl = w % 32u;
        let col = e0 + 32u * round + cl;
        if row < params.dim_k && col < params.dim_v {
            states[base + row * params.dim_v + col] = bitcast<u32>(exchange[staged(row, cl)]);
        }
    }
}
