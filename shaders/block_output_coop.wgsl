// Output pass on the tensor cores (cooperative matrices, 16x16x16, f16
// operands, f32 accumulation): the same output as block_output.wgsl,
//     o_t = [(scale Q_t K_t^T) (.) M] V_t  +  Lambda scale Q_t S_{t-1},
// with S_{t-1} = L_t + lambda^(TILE (t - t_j)) S_j put together while staged.
//
// One workgroup of eight subgroups (32 invocations each) per (bh, block);
// subgroup g owns rows 16 (g % 4) .. + 15 of the block and columns
// 64 (g / 4) .. + 63 of the output (and of the scores, 32 (g / 4) .. + 31).
// On the H100 (b = 4, h = 32, n = 32K, d = e = 128) this split ran the pass
// in 10.6 ms, four subgroups of whole rows in 16.8 and sixteen of quarter
// rows in 15.8.
//
// Few steps: the pass is bound by the wait for each staged slice and by
// barriers, not by the products (without any matrix product it still took
// 7.4 of 8.4 ms). So K is staged whole with Q (not 32 columns at a time),
// the masked scores times V come before the carried state, and one
// workgroup array (uw) holds in turn K, then the masked scores and a slice
// of V, then a slice of the state: 8.3 -> 7.2 ms. Slices of the state of
// 64 rows instead of 32 (which uw has room for) ran no faster (7.22 against
// 7.18).
// Every global read is an ordinary bounds-checked load (zero past the
// block, d or e) into registers, a step ahead, held there as loaded: q, k
// and v a word (two elements, f16 or bf16) per register, the carried
// state's f16 and f32 parts as they are. Only when a slice is stored to
// workgroup memory is it converted to f16, a pair at a time (and the state
// put together). Converting as loaded made the compiler wait for the loads
// there, so the prefetch hid nothing: on the H100, holding the
// state's parts raw took the pass from 6.77 to 6.00 ms (f16) and 6.13 to
// 5.47 (bf16), f16 q, k, v read as words 6.00 -> 5.58, bf16 pairs converted
// at store 8.14 -> 6.13, while converting pairs as loaded ran it in 12 to
// 21 ms. The matrix loads read only workgroup memory, at offsets inside
// the arrays. What is rounded to f16 beyond the inputs: the per-block
// states (stored so by the block-state pass), the masked, decayed, scaled
// scores, the carried state and the rows of Q scaled by scale lambda^(r+1).
// Accumulation is f32.
//
// Needs d and e multiples of 16 and at most DK and DV (the host checks).
// Every subgroup runs the same products (no branch on the subgroup around a
// matrix operation: on the H100 that was slower than the wasted products
// above the diagonal). The masked scores there are exact zeros, but a zero
// times a NaN in a later value is NaN: on this path a NaN in v reaches the
// earlier rows of its block.

@group(0) @binding(2) var<storage, read> q: array<Stored>;
@group(0) @binding(3) var<storage, read> k: array<Stored>;
@group(0) @binding(4) var<storage, read> v: array<Stored>;
// The block-state pass's scratch (see block_state_coop.wgsl): the
// per-block states [bh][block][d][e] in f16, read through `halves`, then
// from stripe_states() the per-stripe ones [bh][stripe][d][e] in f32 bits.
@group(0) @binding(5) var<storage, read> states: array<u32>;
// o in f32 (packed into halves afterwards); the host writes `f16` here
// where q, k and v are native f16, and `u32` with OUT_BF16 = 1 where they
// are bf16: the pass then stores the output itself, bf16 two to a word.
alias Out = f32;
const OUT_BF16: u32 = 0u;
@group(0) @binding(6) var<storage, read_write> o: array<Out>;
// The same scratch as f16 elements.
@group(0) @binding(7) var<storage, read> halves: array<f16>;

const DK: u32 = 128u;    // widest d
const DV: u32 = 128u;    // widest e
const EW: u32 = DV / 2u; // output columns per subgroup: four 16-wide tiles
const VS: u32 = 32u;     // rows of V staged per step
const SS: u32 = 32u;     // rows of the state staged per step
const LANES: u32 = 256u; // eight subgroups of 32
const FW: u32 = 32u;     // columns of fw: 16 per half of the subgroups

// Row pitches, in elements, padded by 16 bytes so the 16 rows a matrix
// load reads start in different banks.
const QP: u32 = DK + 8u;
const KP: u32 = DK + 8u;
const PP: u32 = TILE + 8u;
const XP: u32 = DV + 8u;
// Where the slice of V starts in uw, after the masked scores.
const VAT: u32 = TILE * PP;

var<workgroup> qw: array<f16, TILE * QP>; // Q, then diag(scale lambda^(r+1)) Q
// K as [c][KP]; then the masked scores as [r][PP] and, from VAT, V as
// [c][XP]; then the state as [dd][XP].
var<workgroup> uw: array<f16, TILE * PP + VS * XP>;
var<workgroup> fw: array<f32, TILE * FW>; // a quarter of the f32 scores or of the output

alias Acc = coop_mat16x16<f32, C>;
alias MatA = coop_mat16x16<f16, A>;
alias MatB = coop_mat16x16<f16, B>;

// naga's uniformity analysis does not see that the branch on `carried`
// (which depends on the workgroup and the parameters only) is uniform.
@diagnostic(off, derivative_uniformity)
@compute @workgroup_size(LANES)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let g = group_index(wid, groups);
    if g >= params.bh_count * params.blocks {
        return;
    }
    let local_bh = g / params.blocks;
    let bh = params.bh_start + local_bh;
    let t = g % params.blocks;
    let row0 = t * TILE;
    let len = block_len(t);
    let slope = slope_of(bh);
    let sg = tid / 32u;
    let rq = (sg % 4u) * 16u; // this subgroup's rows
    let eh = sg / 4u;         // and half of the columns
    let q0 = offset_of(params.q_stride, bh, row0, 0u);
    let k0 = offset_of(params.k_stride, bh, row0, 0u);
    let v0 = offset_of(params.v_stride, bh, row0, 0u);
    let size = params.dim_k * params.dim_v;
    let state = (local_bh * params.blocks + t) * size;
    let stripe = t / STRIPE;
    let stripe_state = stripe_states() + (local_bh * stripe_count() + stripe) * size;
    let stripe_decay = decay(slope, (t - stripe * STRIPE) * TILE);
    // Block 0 of a sequence with no initial state carries nothing in.
    let carried = t > 0u || params.has_state != 0u;

    // Q and K, all of them, in one step.
    put_q(fetch_q(q0, len, tid), tid);
    put_k(fetch_k(k0, len, tid), tid);
    workgroupBarrier();

    // Scores Q K^T: this subgroup's rows, columns 32 eh .. 32 eh + 31.
    var s0 = Acc();
    var s1 = Acc();
    for (var ds = 0u; ds < params.dim_k; ds += 16u) {
        let at = rq * QP + ds;
        let a = coopLoadT<MatA>(&qw[at], QP);
        // K^T: element (dd, c) is uw[c KP + dd], column-major.
        let b0 = eh * 32u * KP + ds;
        s0 = coopMultiplyAdd(a, coopLoad<MatB>(&uw[b0], KP), s0);
        let b1 = b0 + 16u * KP;
        s1 = coopMultiplyAdd(a, coopLoad<MatB>(&uw[b1], KP), s1);
    }
    // The first slice of V is fetched now, so its latency hides behind the
    // masking.
    var vn = fetch_v(v0, 0u, len, tid);
    // Mask, decay and scale the scores into f16 (over K: every subgroup is
    // past its products at the first barrier); scale the rows of Q for the
    // carried part. fw holds each subgroup's tile s0 (then s1) at columns
    // 16 eh.
    let f0 = rq * FW + eh * 16u;
    coopStoreT(s0, &fw[f0], FW);
    workgroupBarrier();
    mask_part(slope, 0u, tid);
    workgroupBarrier();
    coopStoreT(s1, &fw[f0], FW);
    workgroupBarrier();
    mask_part(slope, 16u, tid);
    // Row r of pair p is 2 tid / DK + (2 LANES / DK) p: its factor is
    // stepped, not recomputed (one exp per invocation, not one per
    // element: 7.00 -> 6.95 ms on the H100). Pairs are converted together
    // (here and in mask_part: 6.92 -> 6.77 ms).
    var rf = decay(slope, (2u * tid) / DK + 1u) * params.scale;
    let rstep = decay(slope, 2u * LANES / DK);
    for (var p = 0u; p < TILE * DK / (2u * LANES); p++) {
        let i = first_of(tid, p);
        let at = (i / DK) * QP + i % DK;
        let h = vec2<f16>(vec2<f32>(f32(qw[at]), f32(qw[at + 1u])) * rf);
        qw[at] = h.x;
        qw[at + 1u] = h.y;
        rf *= rstep;
    }

    // Masked scores x V, VS rows of V at a time (all of them for every
    // subgroup: see above); the first slice of the state is fetched during
    // the last of them.
    var o0 = Acc();
    var o1 = Acc();
    var o2 = Acc();
    var o3 = Acc();
    let ob = eh * EW; // this subgroup's first column of V and of the state
    var sn: StateSlice;
    for (var cs = 0u; cs < len; cs += VS) {
        put_v(vn, tid);
        workgroupBarrier();
        if cs + VS < len {
            vn = fetch_v(v0, cs + VS, len, tid);
        } else if carried {
            sn = fetch_s(state, stripe_state, 0u, tid);
        }
        for (var kk = 0u; kk < VS; kk += 16u) {
            let at = rq * PP + cs + kk;
            let a = coopLoadT<MatA>(&uw[at], PP);
            let b0 = VAT + kk * XP + ob;
            o0 = coopMultiplyAdd(a, coopLoadT<MatB>(&uw[b0], XP), o0);
            let b1 = b0 + 16u;
            o1 = coopMultiplyAdd(a, coopLoadT<MatB>(&uw[b1], XP), o1);
            let b2 = b0 + 32u;
            o2 = coopMultiplyAdd(a, coopLoadT<MatB>(&uw[b2], XP), o2);
            let b3 = b0 + 48u;
            o3 = coopMultiplyAdd(a, coopLoadT<MatB>(&uw[b3], XP), o3);
        }
        workgroupBarrier();
    }

    // + the carried state, SS of its rows at a time, over the scores and V.
    if carried {
        for (var ds = 0u; ds < params.dim_k; ds += SS) {
            put_s(sn, stripe_decay, tid);
            workgroupBarrier();
            if ds + SS < params.dim_k {
                sn = fetch_s(state, stripe_state, ds + SS, tid);
            }
            for (var kk = 0u; kk < SS; kk += 16u) {
                let at = rq * QP + ds + kk;
                let a = coopLoadT<MatA>(&qw[at], QP);
                let b0 = kk * XP + ob;
                o0 = coopMultiplyAdd(a, coopLoadT<MatB>(&uw[b0], XP), o0);
                let b1 = b0 + 16u;
                o1 = coopMultiplyAdd(a, coopLoadT<MatB>(&uw[b1], XP), o1);
                let b2 = b0 + 32u;
                o2 = coopMultiplyAdd(a, coopLoadT<MatB>(&uw[b2], XP), o2);
                let b3 = b0 + 48u;
                o3 = coopMultiplyAdd(a, coopLoadT<MatB>(&uw[b3], XP), o3);
            }
            workgroupBarrier();
        }
    }

    // Out through fw, in four rounds of 16 columns per subgroup, so the
    // stores are bounds-checked and coalesced.
    let obase = offset_of(params.o_stride, bh, row0, 0u);
    coopStoreT(o0, &fw[f0], FW);
    workgroupBarrier();
    store_part(obase, len, 0u, tid);
    workgroupBarrier();
    coopStoreT(o1, &fw[f0], FW);
    workgroupBarrier();
    store_part(obase, len, 16u, tid);
    workgroupBarrier();
    coopStoreT(o2, &fw[f0], FW);
    workgroupBarrier();
    store_part(obase, len, 32u, tid);
    workgroupBarrier();
    coopStoreT(o3, &fw[f0], FW);
    workgroupBarrier();
    store_part(obase, len, 48u, tid);
}

// Elements each invocation stages per step: of Q and of K (TILE x DK), of
// a VS x DV slice of V, of an SS x DV slice of the state. Element j of an
// invocation is element element_of(tid, j, LANES) of the slice (in pairs,
// see common.wgsl); the loops have constant bounds, so the arrays live in
// registers and the loads of a slice are all in flight together.
// q, k and v are held as loaded, one word (two elements) per register,
// and converted when stored to workgroup memory.
const QPER: u32 = TILE * DK / LANES;
const VPER: u32 = VS * DV / LANES;
const SPER: u32 = SS * DV / LANES;
const QWORDS: u32 = QPER / 2u;
const VWORDS: u32 = VPER / 2u;

// Pair m of an invocation's share (a word of q, k or v): its first
// element, at element_of.
fn first_of(tid: u32, m: u32) -> u32 {
    return element_of(tid, 2u * m, LANES);
}

// Q as [r][DK] (zero past the block or d).
fn fetch_q(base: u32, len: u32, tid: u32) -> array<Stored, QWORDS> {
    var x: array<Stored, QWORDS>;
    for (var m = 0u; m < QWORDS; m++) {
        let i = first_of(tid, m);
        let r = i / DK;
        let c = i % DK;
        if r < len && c < params.dim_k {
            x[m] = q[(base + r * params.q_stride.z + c) >> 1u];
        }
    }
    return x;
}

fn put_q(x: array<Stored, QWORDS>, tid: u32) {
    for (var m = 0u; m < QWORDS; m++) {
        let i = first_of(tid, m);
        let at = (i / DK) * QP + i % DK;
        let h = halves_of(x[m]);
        qw[at] = h.x;
        qw[at + 1u] = h.y;
    }
}

// K as [c][DK] (zero past the block or d).
fn fetch_k(base: u32, len: u32, tid: u32) -> array<Stored, QWORDS> {
    var x: array<Stored, QWORDS>;
    for (var m = 0u; m < QWORDS; m++) {
        let i = first_of(tid, m);
        let c = i / DK;
        let dd = i % DK;
        if c < len && dd < params.dim_k {
            x[m] = k[(base + c * params.k_stride.z + dd) >> 1u];
        }
    }
    return x;
}

fn put_k(x: array<Stored, QWORDS>, tid: u32) {
    for (var m = 0u; m < QWORDS; m++) {
        let i = first_of(tid, m);
        let at = (i / DK) * KP + i % DK;
        let h = halves_of(x[m]);
        uw[at] = h.x;
        uw[at + 1u] = h.y;
    }
}

// Rows cs .. cs + VS of the block's V, as [c][e] (zero past the block or e).
fn fetch_v(base: u32, cs: u32, len: u32, tid: u32) -> array<Stored, VWORDS> {
    var x: array<Stored, VWORDS>;
    for (var m = 0u; m < VWORDS; m++) {
        let i = first_of(tid, m);
        let c = cs + i / DV;
        let e = i % DV;
        if c < len && e < params.dim_v {
            x[m] = v[(base + c * params.v_stride.z + e) >> 1u];
        }
    }
    return x;
}

fn put_v(x: array<Stored, VWORDS>, tid: u32) {
    for (var m = 0u; m < VWORDS; m++) {
        let i = first_of(tid, m);
        let at = VAT + (i / DV) * XP + i % DV;
        let h = halves_of(x[m]);
        uw[at] = h.x;
        uw[at + 1u] = h.y;
    }
}

// Rows ds .. ds + SS of the carried state L_t + f S_j, as [dd][e] (zero
// past d or e): held as loaded, put together when stored.
struct StateSlice {
    l: array<f16, SPER>,
    s: array<f32, SPER>,
}

fn fetch_s(at: u32, stripe_at: u32, ds: u32, tid: u32) -> StateSlice {
    var x: StateSlice;
    for (var j = 0u; j < SPER; j++) {
        let i = element_of(tid, j, LANES);
        let dd = ds + i / DV;
        let e = i % DV;
        if dd < params.dim_k && e < params.dim_v {
            let w = dd * params.dim_v + e;
            x.l[j] = halves[at + w];
            x.s[j] = bitcast<f32>(states[stripe_at + w]);
        }
    }
    return x;
}

fn put_s(x: StateSlice, f: f32, tid: u32) {
    for (var p = 0u; p < SPER / 2u; p++) {
        let i = first_of(tid, p);
        let at = (i / DV) * XP + i % DV;
        let l = vec2<f32>(f32(x.l[2u * p]), f32(x.l[2u * p + 1u]));
        let h = vec2<f16>(fma(vec2<f32>(f), vec2<f32>(x.s[2u * p], x.s[2u * p + 1u]), l));
        uw[at] = h.x;
        uw[at + 1u] = h.y;
    }
}

// Scores in fw into uw as [r][PP], a pair of columns at a time: fw column
// cf holds score column 32 (cf / 16) + c0 + cf % 16; scale lambda^(r-c)
// for c <= r, else exactly 0.
fn mask_part(slope: f32, c0: u32, tid: u32) {
    for (var p = 0u; p < TILE * FW / (2u * LANES); p++) {
        let i = first_of(tid, p);
        let r = i / FW;
        let cf = i % FW;
        let c = 32u * (cf / 16u) + c0 + cf % 16u;
        let f = vec2<f32>(exp(-slope * f32(r - min(c, r))), exp(-slope * f32(r - min(c + 1u, r))));
        let w = vec2<f32>(fw[i], fw[i + 1u]) * f * params.scale;
        let h = vec2<f16>(select(vec2<f32>(0.0), w, vec2<bool>(c <= r, c + 1u <= r)));
        uw[r * PP + c] = h.x;
        uw[r * PP + c + 1u] = h.y;
    }
}

// fw to the output: fw column cf holds column EW (cf / 16) + e0 + cf % 16
// (see the stores above). `obase` is the block's first row.
fn store_part(obase: u32, len: u32, e0: u32, tid: u32) {
    if OUT_BF16 != 0u {
        store_pairs(obase, len, e0, tid);
        return;
    }
    for (var j = 0u; j < TILE * FW / LANES; j++) {
        let i = tid + j * LANES;
        let r = i / FW;
        let cf = i % FW;
        let c = EW * (cf / 16u) + e0 + cf % 16u;
        if r < len && c < params.dim_v {
            o[obase + r * params.o_stride.z + c] = Out(fw[i]);
        }
    }
}

// The same for bf16 output: one word (two columns) per invocation. Element
// offsets of a row's even columns are even: e is a multiple of 16, and the
// host binds o at a word boundary.
fn store_pairs(obase: u32, len: u32, e0: u32, tid: u32) {
    for (var j = 0u; j < TILE * FW / (2u * LANES); j++) {
        let i = 2u * (tid + j * LANES);
        let r = i / FW;
        let cf = i % FW;
        let c = EW * (cf / 16u) + e0 + cf % 16u;
        if r < len && c < params.dim_v {
            let word = to_bf16(fw[i]) | (to_bf16(fw[i + 1u]) << 16u);
            o[(obase + r * params.o_stride.z + c) >> 1u] = Out(word);
        }
    }
}

// The bf16 bits of x, rounded to nearest even (as pack_output.wgsl rounds),
// NaN kept a quiet NaN.
fn to_bf16(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    if (bits & 0x7fffffffu) > 0x7f800000u {
        return (bits >> 16u) | 0x40u;
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}

// A word of q, k or v as its two elements in f16, converted together:
// the host specialises this pass to read f16 two to a word as it reads
// bf16 (see `wgsl` in src/kernels.rs), and rows start on even elements (d
// and e are multiples of 16 on this path, windows start on whole words).
fn halves_of(w: Stored) -> vec2<f16> {
    return vec2<f16>(vec2<f32>(widen(w, 0u), widen(w, 1u)));
}
