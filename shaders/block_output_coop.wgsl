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
// rows in 15.8; staging the state and V 32 rows per step instead of 16 took
// it to 8.9 ms; K 64 columns per step instead of 32 (10.6), the state read
// as vec4 (10.8) and a smaller fw (no change) did not help.
// Every global read is an ordinary bounds-checked load (zero past the
// block, d or e) into registers, one slice ahead, held there in f16 (8.9 ->
// 8.4 ms against f32 registers), then stored to workgroup memory; the
// matrix loads read only workgroup memory, at offsets inside the arrays.
// What is rounded to f16 beyond the inputs: the per-block states (stored so
// by the block-state pass), the masked, decayed, scaled scores, the carried
// state and the rows of Q scaled by scale lambda^(r+1). Accumulation is f32.
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
// where q, k and v are native f16, and the pass stores the output itself.
alias Out = f32;
@group(0) @binding(6) var<storage, read_write> o: array<Out>;
// The same scratch as f16 elements.
@group(0) @binding(7) var<storage, read> halves: array<f16>;

const DK: u32 = 128u;    // widest d
const DV: u32 = 128u;    // widest e
const EW: u32 = DV / 2u; // output columns per subgroup: four 16-wide tiles
const KS: u32 = 32u;     // columns of K staged per step (scores)
const XS: u32 = 32u;     // rows of the state or of V staged per step
const LANES: u32 = 256u; // eight subgroups of 32
const FW: u32 = 32u;     // columns of fw: 16 per half of the subgroups

// Row pitches, in elements, padded by 16 bytes so the 16 rows a matrix
// load reads start in different banks.
const QP: u32 = DK + 8u;
const PP: u32 = TILE + 8u;
const KP: u32 = KS + 8u;
const XP: u32 = DV + 8u;

var<workgroup> qw: array<f16, TILE * QP>; // Q, then diag(scale lambda^(r+1)) Q
var<workgroup> pw: array<f16, TILE * PP>; // masked scores
var<workgroup> xw: array<f16, XS * XP>; // K as [c][KP]; S as [dd][XP]; V as [c][XP]
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

    // Q, all of it (rows 0 .. TILE, columns 0 .. DK); then K, KS columns
    // at a time, each slice fetched into registers while the one before is
    // multiplied.
    let qx = fetch_q(q0, len, tid);
    var kn = fetch_k(k0, 0u, len, tid);
    put_q(qx, tid);

    // Scores Q K^T: this subgroup's rows, columns 32 eh .. 32 eh + 31.
    var s0 = Acc();
    var s1 = Acc();
    for (var ds = 0u; ds < params.dim_k; ds += KS) {
        put_k(kn, tid);
        workgroupBarrier();
        if ds + KS < params.dim_k {
            kn = fetch_k(k0, ds + KS, len, tid);
        }
        for (var kk = 0u; kk < KS; kk += 16u) {
            let at = rq * QP + ds + kk;
            let a = coopLoadT<MatA>(&qw[at], QP);
            // K^T: element (dd, c) is xw[c KP + dd], column-major.
            let b0 = eh * 32u * KP + kk;
            s0 = coopMultiplyAdd(a, coopLoad<MatB>(&xw[b0], KP), s0);
            let b1 = b0 + 16u * KP;
            s1 = coopMultiplyAdd(a, coopLoad<MatB>(&xw[b1], KP), s1);
        }
        workgroupBarrier();
    }
    // The first slice of the carried state (or of V) is fetched now, so its
    // latency hides behind the masking.
    // Block 0 of a sequence with no initial state carries nothing in.
    let carried = t > 0u || params.has_state != 0u;
    var xn: array<f16, XPER>;
    if carried {
        xn = fetch_s(state, stripe_state, stripe_decay, 0u, tid);
    } else {
        xn = fetch_v(v0, 0u, len, tid);
    }
    // Mask, decay and scale the scores into f16; scale the rows of Q for
    // the carried part.
    // fw holds each subgroup's tile s0 (then s1) at columns 16 eh.
    let f0 = rq * FW + eh * 16u;
    coopStoreT(s0, &fw[f0], FW);
    workgroupBarrier();
    mask_part(slope, 0u, tid);
    workgroupBarrier();
    coopStoreT(s1, &fw[f0], FW);
    workgroupBarrier();
    mask_part(slope, 16u, tid);
    for (var j = 0u; j < TILE * DK / LANES; j++) {
        let i = tid + j * LANES;
        let r = i / DK;
        let at = r * QP + i % DK;
        qw[at] = f16(f32(qw[at]) * decay(slope, r + 1u) * params.scale);
    }
    workgroupBarrier();

    var o0 = Acc();
    var o1 = Acc();
    var o2 = Acc();
    var o3 = Acc();
    let ob = eh * EW; // this subgroup's first column in xw
    if carried {
        for (var ds = 0u; ds < params.dim_k; ds += XS) {
            // Rows ds .. ds + XS of the carried state, as [dd][e].
            put_x(xn, tid);
            workgroupBarrier();
            if ds + XS < params.dim_k {
                xn = fetch_s(state, stripe_state, stripe_decay, ds + XS, tid);
            } else {
                xn = fetch_v(v0, 0u, len, tid);
            }
            for (var kk = 0u; kk < XS; kk += 16u) {
                let at = rq * QP + ds + kk;
                let a = coopLoadT<MatA>(&qw[at], QP);
                let b0 = kk * XP + ob;
                o0 = coopMultiplyAdd(a, coopLoadT<MatB>(&xw[b0], XP), o0);
                let b1 = b0 + 16u;
                o1 = coopMultiplyAdd(a, coopLoadT<MatB>(&xw[b1], XP), o1);
                let b2 = b0 + 32u;
                o2 = coopMultiplyAdd(a, coopLoadT<MatB>(&xw[b2], XP), o2);
                let b3 = b0 + 48u;
                o3 = coopMultiplyAdd(a, coopLoadT<MatB>(&xw[b3], XP), o3);
            }
            workgroupBarrier();
        }
    }

    // + masked scores x V, XS rows of V at a time (all of them for every
    // subgroup: see above).
    for (var cs = 0u; cs < len; cs += XS) {
        put_x(xn, tid);
        workgroupBarrier();
        if cs + XS < len {
            xn = fetch_v(v0, cs + XS, len, tid);
        }
        for (var kk = 0u; kk < XS; kk += 16u) {
            let at = rq * PP + cs + kk;
            let a = coopLoadT<MatA>(&pw[at], PP);
            let b0 = kk * XP + ob;
            o0 = coopMultiplyAdd(a, coopLoadT<MatB>(&xw[b0], XP), o0);
            let b1 = b0 + 16u;
            o1 = coopMultiplyAdd(a, coopLoadT<MatB>(&xw[b1], XP), o1);
            let b2 = b0 + 32u;
            o2 = coopMultiplyAdd(a, coopLoadT<MatB>(&xw[b2], XP), o2);
            let b3 = b0 + 48u;
            o3 = coopMultiplyAdd(a, coopLoadT<MatB>(&xw[b3], XP), o3);
        }
        workgroupBarrier();
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

// Elements each invocation stages per step: of Q, of a TILE x KS slice of
// K, of an XS x DV slice of the state or of V. Element j of an invocation is
// element tid + j LANES of the slice; the loops over j have constant
// bounds, so the arrays live in registers and the loads of a slice are all
// in flight together.
const QPER: u32 = TILE * DK / LANES;
const KPER: u32 = TILE * KS / LANES;
const XPER: u32 = XS * DV / LANES;

// Q as [r][DK] (zero past the block or d).
fn fetch_q(base: u32, len: u32, tid: u32) -> array<f16, QPER> {
    var x: array<f16, QPER>;
    for (var j = 0u; j < QPER; j++) {
        let i = tid + j * LANES;
        let r = i / DK;
        let c = i % DK;
        if r < len && c < params.dim_k {
            x[j] = f16(read_q(base + r * params.q_stride.z + c));
        }
    }
    return x;
}

fn put_q(x: array<f16, QPER>, tid: u32) {
    for (var j = 0u; j < QPER; j++) {
        let i = tid + j * LANES;
        qw[(i / DK) * QP + i % DK] = x[j];
    }
}

// Columns ds .. ds + KS of the block's K, as [c][KS].
fn fetch_k(base: u32, ds: u32, len: u32, tid: u32) -> array<f16, KPER> {
    var x: array<f16, KPER>;
    for (var j = 0u; j < KPER; j++) {
        let i = tid + j * LANES;
        let c = i / KS;
        let dd = ds + i % KS;
        if c < len && dd < params.dim_k {
            x[j] = f16(read_k(base + c * params.k_stride.z + dd));
        }
    }
    return x;
}

fn put_k(x: array<f16, KPER>, tid: u32) {
    for (var j = 0u; j < KPER; j++) {
        let i = tid + j * LANES;
        xw[(i / KS) * KP + i % KS] = x[j];
    }
}

// Rows ds .. ds + XS of the carried state L_t + f S_j, as [dd][e].
fn fetch_s(at: u32, stripe_at: u32, f: f32, ds: u32, tid: u32) -> array<f16, XPER> {
    var x: array<f16, XPER>;
    for (var j = 0u; j < XPER; j++) {
        let i = tid + j * LANES;
        let dd = ds + i / DV;
        let e = i % DV;
        if dd < params.dim_k && e < params.dim_v {
            let w = dd * params.dim_v + e;
            let s = bitcast<f32>(states[stripe_at + w]);
            x[j] = f16(fma(f, s, f32(halves[at + w])));
        }
    }
    return x;
}

// Rows cs .. cs + XS of the block's V, as [c][e].
fn fetch_v(base: u32, cs: u32, len: u32, tid: u32) -> array<f16, XPER> {
    var x: array<f16, XPER>;
    for (var j = 0u; j < XPER; j++) {
        let i = tid + j * LANES;
        let c = cs + i / DV;
        let e = i % DV;
        if c < len && e < params.dim_v {
            x[j] = f16(read_v(base + c * params.v_stride.z + e));
        }
    }
    return x;
}

fn put_x(x: array<f16, XPER>, tid: u32) {
    for (var j = 0u; j < XPER; j++) {
        let i = tid + j * LANES;
        xw[(i / DV) * XP + i % DV] = x[j];
    }
}

// Scores in fw into pw: fw column cf holds score column 32 (cf / 16) + c0
// + cf % 16; scale lambda^(r-c) for c <= r, else exactly 0.
fn mask_part(slope: f32, c0: u32, tid: u32) {
    for (var j = 0u; j < TILE * FW / LANES; j++) {
        let i = tid + j * LANES;
        let r = i / FW;
        let cf = i % FW;
        let c = 32u * (cf / 16u) + c0 + cf % 16u;
        let w = fw[i] * exp(-slope * f32(r - min(c, r))) * params.scale;
        pw[r * PP + c] = f16(select(0.0, w, c <= r));
    }
}

// fw to the output: fw column cf holds column EW (cf / 16) + e0 + cf % 16
// (see the stores above). `obase` is the block's first row.
fn store_part(obase: u32, len: u32, e0: u32, tid: u32) {
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
