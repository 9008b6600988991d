// Stripe scan: chains the stripes' own contributions (left by the
// block-state pass) into the state each stripe starts from,
//     S_j = lambda^(rows of stripe j) S_{j-1} + C_j,
// sequentially over the stripes and in parallel over every (bh, d, e)
// element. In place: slot j ends up holding the state before stripe j, the
// one the output pass decays and adds to the stripe's own block states.
//
// Bindings: states (the per-stripe part, [bh][stripe][d][e], from
// stripe_states()), carry ([bh][d][e]): the state before the first block on
// entry (ignored when params.has_state is 0), the state after the last
// block on exit. With params.scan_keeps 1 only the carry is written: the
// stripes' own states stay for a later scan from another carry.

@compute @workgroup_size(THREADS)
fn main(grid: Grid, @builtin(local_invocation_index) tid: u32) {
    // The host caps the grid (see `scan_groups` in src/kernels/chunk), so
    // where there are many (bh) and few stripes (short sequences) an
    // invocation takes several elements in turn rather than the GPU
    // starting a short workgroup for every THREADS of them.
    let size = params.dim_k * params.dim_v;
    let total = params.bh_count * size;
    let step = grid.groups.x * grid.groups.y * THREADS;
    for (var idx = group_index(grid) * THREADS + tid; idx < total; idx += step) {
        scan(idx, size);
    }
}

// The chain of element `idx` of [bh][d][e] through every stripe.
fn scan(idx: u32, size: u32) {
    let local_bh = idx / size;
    let within = idx % size;
    let slope = slope_of(params.bh_start + local_bh);
    let stripes = stripe_count();
    let full = decay(slope, STRIPE * BLOCK);

    var s = 0.0;
    if params.has_state != 0u {
        s = carry[params.state_base + idx];
    }
    // Eight stripes at a time: their contributions are loaded before the
    // chain uses them, so the loads overlap instead of each waiting for the
    // store before it (which the compiler cannot move them past). Every
    // stripe but the last is full.
    let first = stripe_states() + local_bh * stripes * size + within;
    var j = 0u;
    for (; j + 8u < stripes; j += 8u) {
        let at = first + j * size;
        let c0 = states[at];
        let c1 = states[at + size];
        let c2 = states[at + 2u * size];
        let c3 = states[at + 3u * size];
        let c4 = states[at + 4u * size];
        let c5 = states[at + 5u * size];
        let c6 = states[at + 6u * size];
        let c7 = states[at + 7u * size];
        put(at, s);
        s = fma(full, s, c0);
        put(at + size, s);
        s = fma(full, s, c1);
        put(at + 2u * size, s);
        s = fma(full, s, c2);
        put(at + 3u * size, s);
        s = fma(full, s, c3);
        put(at + 4u * size, s);
        s = fma(full, s, c4);
        put(at + 5u * size, s);
        s = fma(full, s, c5);
        put(at + 6u * size, s);
        s = fma(full, s, c6);
        put(at + 7u * size, s);
        s = fma(full, s, c7);
    }
    // The rest, the last stripe among them (at most eight, the last
    // perhaps short): loaded together too, then chained.
    let rest = stripes - j;
    var c: array<f32, 8>;
    for (var u = 0u; u < 8u; u++) {
        if u < rest {
            c[u] = states[first + (j + u) * size];
        }
    }
    for (var u = 0u; u < 8u; u++) {
        if u < rest {
            let jj = j + u;
            let rows = min(STRIPE * BLOCK, params.rows - jj * STRIPE * BLOCK);
            put(first + jj * size, s);
            s = decay(slope, rows) * s + c[u];
        }
    }
    carry[params.state_base + idx] = s;
}

// Slot `at` of the scratch takes the state before its stripe, unless the
// scan only carries.
fn put(at: u32, s: f32) {
    if params.scan_keeps == 0u {
        states[at] = s;
    }
}
