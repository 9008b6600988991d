// Output pass on the tensor cores (cooperative matrices, 16x16x16, f16
// operands, f32 accumulation): the same output as block_output.wgsl,
//     o_t = [(scale Q_t K_t^T) (.) M] V_t  +  Lambda scale Q_t S_{t-1},
// with S_{t-1} put together while staged (see lib/blocks.wgsl).
//
// Bindings: q, k, v (read, a word of two elements at a time), states (the
// block-state pass's scratch: the per-block states in f16, read through
// `halves`, then from stripe_states() the per-stripe ones in f32 bits), o
// (f32, or the storage of q, k, v itself: `Out` and OUT_BF16 in the prelude).
//
// One workgroup of eight subgroups (32 invocations each) per (bh, block);
// subgroup g owns rows 16 (g % 4) .. + 15 of the block and columns
// 64 (g / 4) .. + 63 of the output (and of the scores, 32 (g / 4) .. + 31).
// The pass is bound by the wait for each staged slice and by barriers, not
// by the products, so it stages in few steps: K whole with Q, the masked
// scores times V before the carried state, and one workgroup array
// (`staged`) holding in turn K, then the masked scores and a slice of V,
// then a slice of the state.
// Every global read is an ordinary bounds-checked load (zero past the
// block, d or e) into registers, a step ahead, held there as loaded: q, k
// and v a word per register, the carried state's f16 and f32 parts as they
// are. Only when a slice is stored to workgroup memory is it converted to
// f16, a pair at a time (and the state put together): converting as loaded
// makes the compiler wait for the loads there, and the prefetch hides
// nothing. The matrix loads read only workgroup memory. What is rounded
// to f16 beyond the inputs: the per-block states, the masked, decayed,
// scaled scores, the carried state and the rows of Q scaled by scale
// lambda^(r+1). Accumulation is f32.
//
// Needs d and e multiples of 16 and at most MAX_D and MAX_E (the host
// checks). Every subgroup runs the same products (no branch on the
// subgroup around a matrix operation, which is slower than the wasted
// products above the diagonal). The masked scores there are exact zeros,
// but a zero times a NaN in a later value is NaN: on this path a NaN in v
// reaches the earlier rows of its block.

const MAX_D: u32 = 128u;       // widest d
const MAX_E: u32 = 128u;       // widest e
const COLUMNS: u32 = MAX_E / 2u; // output columns per subgroup: four 16-wide tiles
const V_STEP: u32 = 32u;       // rows of V staged per step
const S_STEP: u32 = 32u;       // rows of the state staged per step
const LANES: u32 = 256u;       // eight subgroups of 32
const EXCHANGE_W: u32 = 32u;   // columns of `exchange`: 16 per half of the subgroups

// Row pitches, in elements, padded by 16 bytes so the 16 rows a matrix
// load reads start in different banks.
const Q_PITCH: u32 = MAX_D + 8u;
const K_PITCH: u32 = MAX_D + 8u;
const P_PITCH: u32 = BLOCK + 8u;
const X_PITCH: u32 = MAX_E + 8u;
// Where the slice of V starts in `staged`, after the masked scores.
const V_OFFSET: u32 = BLOCK * P_PITCH;

var<workgroup> q_rows: array<f16, BLOCK * Q_PITCH>; // Q, then diag(scale lambda^(r+1)) Q
// K as [c][K_PITCH]; then the masked scores as [r][P_PITCH] and, from
// V_OFFSET, V as [c][X_PITCH]; then the state as [dd][X_PITCH].
var<workgroup> staged: array<f16, BLOCK * P_PITCH + V_STEP * X_PITCH>;
var<workgroup> exchange: array<f32, BLOCK * EXCHANGE_W>; // a quarter of the f32 scores or of the output

// naga's uniformity analysis does not see that the branch on `carried`
// (which depends on the workgroup and the parameters only) is uniform.
@diagnostic(off, derivative_uniformity)
@compute @workgroup_size(LANES)
fn main(grid: Grid, @builtin(local_invocation_index) tid: u32) {
    let at = block_at(grid);
    if !at.inside {
        return;
    }
    let sg = tid / 32u;
    let rq = (sg % 4u) * 16u; // this subgroup's rows
    let eh = sg / 4u;         // and half of the columns

    // Q and K, all of them, in one step.
    put_qk(Q, fetch_qk(Q, at.q0, at.len, tid), tid);
    put_qk(K, fetch_qk(K, at.k0, at.len, tid), tid);
    workgroupBarrier();

    // Scores Q K^T: this subgroup's rows, columns 32 eh .. 32 eh + 31.
    var s0 = Acc();
    var s1 = Acc();
    for (var ds = 0u; ds < params.dim_k; ds += 16u) {
        let qa = rq * Q_PITCH + ds;
        let a = coopLoadT<MatA>(&q_rows[qa], Q_PITCH);
        // K^T: element (dd, c) is staged[c K_PITCH + dd], column-major.
        let b0 = eh * 32u * K_PITCH + ds;
        s0 = coopMultiplyAdd(a, coopLoad<MatB>(&staged[b0], K_PITCH), s0);
        let b1 = b0 + 16u * K_PITCH;
        s1 = coopMultiplyAdd(a, coopLoad<MatB>(&staged[b1], K_PITCH), s1);
    }
    // The first slice of V is fetched now, so its latency hides behind the
    // masking.
    var vn = fetch_v(at.v0, 0u, at.len, tid);
    // Mask, decay and scale the scores into f16 (over K: every subgroup is
    // past its products at the first barrier); scale the rows of Q for the
    // carried part. `exchange` holds each subgroup's tile s0 (then s1) at
    // columns 16 eh.
    let f0 = rq * EXCHANGE_W + eh * 16u;
    coopStoreT(s0, &exchange[f0], EXCHANGE_W);
    workgroupBarrier();
    mask_part(at.slope, 0u, tid);
    workgroupBarrier();
    coopStoreT(s1, &exchange[f0], EXCHANGE_W);
    workgroupBarrier();
    mask_part(at.slope, 16u, tid);
    // Row r of pair p is 2 tid / MAX_D + (2 LANES / MAX_D) p: its factor is
    // stepped, not recomputed (one exp per invocation, not one per element).
    var rf = decay(at.slope, (2u * tid) / MAX_D + 1u) * params.scale;
    let rstep = decay(at.slope, 2u * LANES / MAX_D);
    for (var p = 0u; p < BLOCK * MAX_D / (2u * LANES); p++) {
        let i = first_of(tid, p);
        let qi = (i / MAX_D) * Q_PITCH + i % MAX_D;
        let h = vec2<f16>(vec2<f32>(f32(q_rows[qi]), f32(q_rows[qi + 1u])) * rf);
        q_rows[qi] = h.x;
        q_rows[qi + 1u] = h.y;
        rf *= rstep;
    }

    // Masked scores x V, V_STEP rows of V at a time (all of them for every
    // subgroup: see above); the first slice of the state is fetched during
    // the last of them.
    var o0 = Acc();
    var o1 = Acc();
    var o2 = Acc();
    var o3 = Acc();
    let ob = eh * COLUMNS; // this subgroup's first column of V and of the state
    var sn: StateSlice;
    for (var cs = 0u; cs < at.len; cs += V_STEP) {
        put_v(vn, tid);
        workgroupBarrier();
        if cs + V_STEP < at.len {
            vn = fetch_v(at.v0, cs + V_STEP, at.len, tid);
        } else if at.carried {
            sn = fetch_s(at.own_state, at.stripe_state, 0u, tid);
        }
        for (var kk = 0u; kk < V_STEP; kk += 16u) {
            let pa = rq * P_PITCH + cs + kk;
            let a = coopLoadT<MatA>(&staged[pa], P_PITCH);
            let b0 = V_OFFSET + kk * X_PITCH + ob;
            o0 = coopMultiplyAdd(a, coopLoadT<MatB>(&staged[b0], X_PITCH), o0);
            let b1 = b0 + 16u;
            o1 = coopMultiplyAdd(a, coopLoadT<MatB>(&staged[b1], X_PITCH), o1);
            let b2 = b0 + 32u;
            o2 = coopMultiplyAdd(a, coopLoadT<MatB>(&staged[b2], X_PITCH), o2);
            let b3 = b0 + 48u;
            o3 = coopMultiplyAdd(a, coopLoadT<MatB>(&staged[b3], X_PITCH), o3);
        }
        workgroupBarrier();
    }

    // + the carried state, S_STEP of its rows at a time, over the scores and V.
    if at.carried {
        for (var ds = 0u; ds < params.dim_k; ds += S_STEP) {
            put_s(sn, at.stripe_decay, tid);
            workgroupBarrier();
            if ds + S_STEP < params.dim_k {
                sn = fetch_s(at.own_state, at.stripe_state, ds + S_STEP, tid);
            }
            for (var kk = 0u; kk < S_STEP; kk += 16u) {
                let qa = rq * Q_PITCH + ds + kk;
                let a = coopLoadT<MatA>(&q_rows[qa], Q_PITCH);
                let b0 = kk * X_PITCH + ob;
                o0 = coopMultiplyAdd(a, coopLoadT<MatB>(&staged[b0], X_PITCH), o0);
                let b1 = b0 + 16u;
                o1 = coopMultiplyAdd(a, coopLoadT<MatB>(&staged[b1], X_PITCH), o1);
                let b2 = b0 + 32u;
                o2 = coopMultiplyAdd(a, coopLoadT<MatB>(&staged[b2], X_PITCH), o2);
                let b3 = b0 + 48u;
                o3 = coopMultiplyAdd(a, coopLoadT<MatB>(&staged[b3], X_PITCH), o3);
            }
            workgroupBarrier();
        }
    }

    // Out through `exchange`, in four rounds of 16 columns per subgroup, so
    // the stores are bounds-checked and coalesced.
    let obase = offset_of(params.o_stride, at.bh, at.row0, 0u);
    coopStoreT(o0, &exchange[f0], EXCHANGE_W);
    workgroupBarrier();
    store_part(obase, at.len, 0u, tid);
    workgroupBarrier();
    coopStoreT(o1, &exchange[f0], EXCHANGE_W);
    workgroupBarrier();
    store_part(obase, at.len, 16u, tid);
    workgroupBarrier();
    coopStoreT(o2, &exchange[f0], EXCHANGE_W);
    workgroupBarrier();
    store_part(obase, at.len, 32u, tid);
    workgroupBarrier();
    coopStoreT(o3, &exchange[f0], EXCHANGE_W);
    workgroupBarrier();
    store_part(obase, at.len, 48u, tid);
}

// Elements each invocation stages per step: of Q and of K (BLOCK x MAX_D),
// of a V_STEP x MAX_E slice of V, of an S_STEP x MAX_E slice of the state.
// Element j of an invocation is element element_of(tid, j, LANES) of the
// slice; the loops have constant bounds, so the arrays live in registers
// and the loads of a slice are all in flight together. q, k and v are held
// as loaded, one word (two elements) per register.
const QK_WORDS: u32 = BLOCK * MAX_D / LANES / 2u;
const V_WORDS: u32 = V_STEP * MAX_E / LANES / 2u;
const S_PER: u32 = S_STEP * MAX_E / LANES;

const Q: u32 = 0u;
const K: u32 = 1u;

// Pair m of an invocation's share (a word of q, k or v): its first
// element, at element_of.
fn first_of(tid: u32, m: u32) -> u32 {
    return element_of(tid, 2u * m, LANES);
}

// The block's rows of q or k (`which`, a constant at every call) as
// [r][MAX_D], zero past the block or d.
fn fetch_qk(which: u32, base: u32, len: u32, tid: u32) -> array<Stored, QK_WORDS> {
    var x: array<Stored, QK_WORDS>;
    for (var m = 0u; m < QK_WORDS; m++) {
        let i = first_of(tid, m);
        let r = i / MAX_D;
        let c = i % MAX_D;
        if r < len && c < params.dim_k {
            if which == Q {
                x[m] = q[(base + r * params.q_stride.z + c) >> 1u];
            } else {
                x[m] = k[(base + r * params.k_stride.z + c) >> 1u];
            }
        }
    }
    return x;
}

// Q into q_rows (pitch Q_PITCH), K into staged (pitch K_PITCH), in f16.
fn put_qk(which: u32, x: array<Stored, QK_WORDS>, tid: u32) {
    for (var m = 0u; m < QK_WORDS; m++) {
        let i = first_of(tid, m);
        let h = halves_of(x[m]);
        if which == Q {
            let qi = (i / MAX_D) * Q_PITCH + i % MAX_D;
            q_rows[qi] = h.x;
            q_rows[qi + 1u] = h.y;
        } else {
            let ki = (i / MAX_D) * K_PITCH + i % MAX_D;
            staged[ki] = h.x;
            staged[ki + 1u] = h.y;
        }
    }
}

// Rows cs .. cs + V_STEP of the block's V, as [c][e] (zero past the block or e).
fn fetch_v(base: u32, cs: u32, len: u32, tid: u32) -> array<Stored, V_WORDS> {
    var x: array<Stored, V_WORDS>;
    for (var m = 0u; m < V_WORDS; m++) {
        let i = first_of(tid, m);
        let c = cs + i / MAX_E;
        let e = i % MAX_E;
        if c < len && e < params.dim_v {
            x[m] = v[(base + c * params.v_stride.z + e) >> 1u];
        }
    }
    return x;
}

fn put_v(x: array<Stored, V_WORDS>, tid: u32) {
    for (var m = 0u; m < V_WORDS; m++) {
        let i = first_of(tid, m);
        let vi = V_OFFSET + (i / MAX_E) * X_PITCH + i % MAX_E;
        let h = halves_of(x[m]);
        staged[vi] = h.x;
        staged[vi + 1u] = h.y;
    }
}

// Rows ds .. ds + S_STEP of the carried state L_t + f S_j, as [dd][e]
// (zero past d or e): held as loaded, put together when stored.
struct StateSlice {
    own: array<f16, S_PER>,
    stripe: array<f32, S_PER>,
}

fn fetch_s(own_at: u32, stripe_at: u32, ds: u32, tid: u32) -> StateSlice {
    var x: StateSlice;
    for (var j = 0u; j < S_PER; j++) {
        let i = element_of(tid, j, LANES);
        let dd = ds + i / MAX_E;
        let e = i % MAX_E;
        if dd < params.dim_k && e < params.dim_v {
            let w = dd * params.dim_v + e;
            x.own[j] = halves[own_at + w];
            x.stripe[j] = bitcast<f32>(states[stripe_at + w]);
        }
    }
    return x;
}

fn put_s(x: StateSlice, f: f32, tid: u32) {
    for (var p = 0u; p < S_PER / 2u; p++) {
        let i = first_of(tid, p);
        let si = (i / MAX_E) * X_PITCH + i % MAX_E;
        let own = vec2<f32>(f32(x.own[2u * p]), f32(x.own[2u * p + 1u]));
        let h = vec2<f16>(fma(vec2<f32>(f), vec2<f32>(x.stripe[2u * p], x.stripe[2u * p + 1u]), own));
        staged[si] = h.x;
        staged[si + 1u] = h.y;
    }
}

// Scores in `exchange` into `staged` as [r][P_PITCH], a pair of columns at
// a time: exchange column cf holds score column 32 (cf / 16) + c0 + cf % 16;
// scale lambda^(r-c) for c <= r, else exactly 0.
fn mask_part(slope: f32, c0: u32, tid: u32) {
    for (var p = 0u; p < BLOCK * EXCHANGE_W / (2u * LANES); p++) {
        let i = first_of(tid, p);
        let r = i / EXCHANGE_W;
        let cf = i % EXCHANGE_W;
        let c = 32u * (cf / 16u) + c0 + cf % 16u;
        let f = vec2<f32>(decay(slope, r - min(c, r)), decay(slope, r - min(c + 1u, r)));
        let w = vec2<f32>(exchange[i], exchange[i + 1u]) * f * params.scale;
        let h = vec2<f16>(select(vec2<f32>(0.0), w, vec2<bool>(c <= r, c + 1u <= r)));
        staged[r * P_PITCH + c] = h.x;
        staged[r * P_PITCH + c + 1u] = h.y;
    }
}

// `exchange` to the output: column cf holds column COLUMNS (cf / 16) + e0 +
// cf % 16 (see the stores above). `obase` is the block's first row.
fn store_part(obase: u32, len: u32, e0: u32, tid: u32) {
    if OUT_BF16 {
        store_pairs(obase, len, e0, tid);
        return;
    }
    for (var j = 0u; j < BLOCK * EXCHANGE_W / LANES; j++) {
        let i = tid + j * LANES;
        let r = i / EXCHANGE_W;
        let cf = i % EXCHANGE_W;
        let c = COLUMNS * (cf / 16u) + e0 + cf % 16u;
        if r < len && c < params.dim_v {
            o[obase + r * params.o_stride.z + c] = Out(exchange[i]);
        }
    }
}

// The same for bf16 output: one word (two columns) per invocation. Element
// offsets of a row's even columns are even: e is a multiple of 16, and the
// host binds o at a word boundary.
fn store_pairs(obase: u32, len: u32, e0: u32, tid: u32) {
    for (var j = 0u; j < BLOCK * EXCHANGE_W / (2u * LANES); j++) {
        let i = 2u * (tid + j * LANES);
        let r = i / EXCHANGE_W;
        let cf = i % EXCHANGE_W;
        let c = COLUMNS * (cf / 16u) + e0 + cf % 16u;
        if r < len && c < params.dim_v {
            o[(obase + r * params.o_stride.z + c) >> 1u] = Out(bf16_pair(exchange[i], exchange[i + 1u]));
        }
    }
}
