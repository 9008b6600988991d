// Block-state pass on the tensor cores (cooperative matrices, 16x16x16, f16
// operands, f32 accumulation): the same states as block_state.wgsl,
//     L_{t+1} = lambda^L L_t + (Lambda_K K_t)^T V_t,
// walked block by block through each stripe with the state held in the
// subgroups' accumulators, and written before each block (in f16: the
// output pass rounds the state it carries to f16 anyway, and this halves
// the scratch and its traffic; on the H100 the pass went from 4.47 to 4.16
// ms) and at the stripe's end (in f32, for the stripe scan). Accumulators
// reach storage through workgroup memory, half of the subgroups at a time.
//
// One workgroup of thirty-two subgroups (32 invocations each) per (bh,
// stripe, 64 columns of e); subgroup g owns the 16 x 16 tile at state rows
// 16 (g % 8) and columns 16 (g / 8) of those. On the H100 (b = 4, h = 32,
// n = 32K, d = e = 128) this ran the pass in 4.5 ms; sixteen subgroups of
// two tiles took 5.7, eight of four 7.2: more, smaller subgroups keep more
// loads in flight. Each block's K and V are loaded with ordinary
// bounds-checked reads (zero past the block, d or e) into registers while
// the block before is multiplied, then decayed (K) and converted to f16
// into workgroup memory; the matrix loads read only workgroup memory. Needs d
// and e multiples of 16, at most DK and DV (the host checks), so every
// 16 x 16 tile of the state is inside it or wholly outside. Every subgroup runs the
// same products (a branch on the subgroup around a matrix operation was
// slow on the H100); only the stores of rows past d are skipped.

@group(0) @binding(2) var<storage, read> k: array<Stored>;
@group(0) @binding(3) var<storage, read> v: array<Stored>;
// [bh][block][d][e]: L_t in f16, two to a word; then, from stripe_states(),
// [bh][stripe][d][e] in f32 bits.
@group(0) @binding(4) var<storage, read_write> states: array<u32>;

const DK: u32 = 128u;    // widest d: eight subgroups of 16 rows
const DV: u32 = 128u;    // widest e
const EW: u32 = 64u;     // columns of e per workgroup: four tiles per subgroup
const LANES: u32 = 1024u; // thirty-two subgroups of 32

// Row pitches, in elements, padded by 16 bytes so the 16 rows (columns) a
// matrix load reads start in different banks.
const KP: u32 = DK + 8u;
const VP: u32 = EW + 8u;

var<workgroup> kw: array<f16, TILE * KP>; // lambda^(L-1-c) k_c as [c][dd]
var<workgroup> vw: array<f16, TILE * VP>; // v_c as [c][e - e0]
// Half of the subgroups' f32 tiles at a time, on their way to storage.
var<workgroup> sw: array<f32, 16u * 256u>;

alias Acc = coop_mat16x16<f32, C>;
alias MatA = coop_mat16x16<f16, A>;
alias MatB = coop_mat16x16<f16, B>;

// A subgroup stages its tile only in its half's turn and for rows inside
// d: a branch on the subgroup index, uniform within each subgroup (the
// scope of the store).
@diagnostic(off, derivative_uniformity)
@compute @workgroup_size(LANES)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let stripes = stripe_count();
    let halves = (params.dim_v + EW - 1u) / EW;
    var g = group_index(wid, groups);
    if g >= params.bh_count * stripes * halves {
        return;
    }
    let e0 = (g % halves) * EW;
    g /= halves;
    let stripe = g % stripes;
    let local_bh = g / stripes;
    let bh = params.bh_start + local_bh;
    let slope = slope_of(bh);
    let size = params.dim_k * params.dim_v;
    let r16 = ((tid / 32u) % 8u) * 16u;
    let ec = (tid / 256u) * 16u; // this subgroup's first column, from e0
    // Whether this subgroup's rows are inside d (uniform per subgroup).
    let mine = r16 < params.dim_k;
    let kb = offset_of(params.k_stride, bh, 0u, 0u);
    let vb = offset_of(params.v_stride, bh, 0u, 0u);

    var a0 = Acc();
    let first = stripe * STRIPE;
    let end = min(first + STRIPE, params.blocks);
    var kn = fetch_k(kb, first, tid);
    var vn = fetch_v(vb, first, e0, tid);
    for (var t = first; t < end; t++) {
        let len = block_len(t);
        put(kn, vn, len, slope, tid);
        if t + 1u < end {
            kn = fetch_k(kb, t + 1u, tid);
            vn = fetch_v(vb, t + 1u, e0, tid);
        }
        // L_t to storage in f16: half of the tiles, then the other half,
        // whose copy out of sw overlaps the products (sw is next written
        // after the barrier that ends them).
        let slot = (local_bh * params.blocks + t) * (size / 2u);
        stage(a0, 0u, tid, mine);
        workgroupBarrier();
        save_half(slot, e0, 0u, tid);
        workgroupBarrier();
        stage(a0, 1u, tid, mine);
        let carry = decay(slope, len);
        a0 = a0 * carry;
        workgroupBarrier();
        save_half(slot, e0, 1u, tid);
        for (var c0 = 0u; c0 < len; c0 += 16u) {
            // (Lambda_K K)^T: element (dd, c) is kw[c KP + dd], column-major.
            let at = c0 * KP + r16;
            let a = coopLoad<MatA>(&kw[at], KP);
            let b = c0 * VP + ec;
            a0 = coopMultiplyAdd(a, coopLoadT<MatB>(&vw[b], VP), a0);
        }
        workgroupBarrier();
    }
    let base = stripe_states() + (local_bh * stripes + stripe) * size;
    stage(a0, 0u, tid, mine);
    workgroupBarrier();
    save_full(base, e0, 0u, tid);
    workgroupBarrier();
    stage(a0, 1u, tid, mine);
    workgroupBarrier();
    save_full(base, e0, 1u, tid);
}

// Elements each invocation stages per block: of K (TILE x DK) and of V
// (TILE x EW). Element j of an invocation is element element_of(tid, j,
// LANES) (in pairs, see common.wgsl); the loops over j have constant
// bounds, so the arrays live in registers and the loads of a block are all
// in flight together.
const KPER: u32 = TILE * DK / LANES;
const VPER: u32 = TILE * EW / LANES;

// Block t's k_c, zero past the block or d, a word (two elements of one
// row) at a time, held as loaded.
fn fetch_k(kb: u32, t: u32, tid: u32) -> array<Stored, KPER / 2u> {
    let len = block_len(t);
    var x: array<Stored, KPER / 2u>;
    for (var p = 0u; p < KPER / 2u; p++) {
        let i = element_of(tid, 2u * p, LANES);
        let c = i / DK;
        let w = i % DK;
        if c < len && w < params.dim_k {
            x[p] = k[(kb + (t * TILE + c) * params.k_stride.z + w) >> 1u];
        }
    }
    return x;
}

// Block t's v_c, columns e0 .. e0 + EW, zero past the block or e.
fn fetch_v(vb: u32, t: u32, e0: u32, tid: u32) -> array<Stored, VPER / 2u> {
    let len = block_len(t);
    var x: array<Stored, VPER / 2u>;
    for (var p = 0u; p < VPER / 2u; p++) {
        let i = element_of(tid, 2u * p, LANES);
        let c = i / EW;
        let w = e0 + i % EW;
        if c < len && w < params.dim_v {
            x[p] = v[(vb + (t * TILE + c) * params.v_stride.z + w) >> 1u];
        }
    }
    return x;
}

// A block of `len` rows into workgroup memory in f16: lambda^(L-1-c) k_c
// and v_c.
fn put(x: array<Stored, KPER / 2u>, y: array<Stored, VPER / 2u>, len: u32, slope: f32, tid: u32) {
    for (var p = 0u; p < KPER / 2u; p++) {
        let i = element_of(tid, 2u * p, LANES);
        let c = i / DK;
        let at = c * KP + i % DK;
        let h = vec2<f16>(pair_of(x[p]) * decay(slope, len - 1u - min(c, len - 1u)));
        kw[at] = h.x;
        kw[at + 1u] = h.y;
    }
    for (var p = 0u; p < VPER / 2u; p++) {
        let i = element_of(tid, 2u * p, LANES);
        let at = (i / EW) * VP + i % EW;
        let h = vec2<f16>(pair_of(y[p]));
        vw[at] = h.x;
        vw[at + 1u] = h.y;
    }
}

// Subgroups 16 round .. 16 round + 15 (columns 32 round .. + 31 of the 64)
// put their tiles in sw; subgroup g's tile is at 256 (g % 16), row-major.
fn stage(a0: Acc, round: u32, tid: u32, mine: bool) {
    let g = tid / 32u;
    if mine && g / 16u == round {
        let at = (g % 16u) * 256u;
        let pitch = 16u;
        coopStoreT(a0, &sw[at], pitch);
    }
}

// Element (row, col) of the staged half (col < 32) in sw.
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
            let pair = pack2x16float(vec2<f32>(sw[at], sw[at + 1u]));
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
            states[base + row * params.dim_v + col] = bitcast<u32>(sw[staged(row, cl)]);
        }
    }
}

// A word of k or v as its two elements (first the lower half): this pass
// reads f16 two to a word as it reads bf16 (the host specialises it so,
// see `wgsl` in src/kernels.rs), and every row starts on an even element
// (d and e are multiples of 16 on this path, windows start on whole
// words). The words are held as loaded and widened, decayed and converted
// to f16 only when stored to workgroup memory, a pair at a time with one
// exp: on the H100 (b = 4, h = 32, n = 32K, d = e = 128) reading pairs
// took this pass from 3.78 to 3.19 ms in f16 (3.81 to 3.23 in bf16), and
// converting them at the store rather than as loaded to 3.00 (3.01).
fn pair_of(w: Stored) -> vec2<f32> {
    return vec2<f32>(widen(w, 0u), widen(w, 1u));
}
