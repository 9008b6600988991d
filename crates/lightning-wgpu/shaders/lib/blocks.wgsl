// Where block t of one (batch, head) lies and what it carries in: the
// prologue of the output passes, one workgroup per (bh, block). The state
// carried in is put together as S_{t-1} = L_t + lambda^(BLOCK (t - t_j)) S_j,
// with L_t the block's state counted from the start t_j of its stripe (the
// block-state pass) and S_j the state before the stripe (the stripe scan).
struct BlockAt {
    // The workgroup has a block (the last row of a folded grid has spares).
    inside: bool,
    local_bh: u32,
    bh: u32,
    t: u32,
    row0: u32,
    len: u32,
    slope: f32,
    // Element offsets of the block's first row of q, k and v.
    q0: u32,
    k0: u32,
    v0: u32,
    // L_t in the per-block states, in elements.
    own_state: u32,
    // S_j in the per-stripe states, in 32-bit words, and its decay to t.
    stripe_state: u32,
    stripe_decay: f32,
    // Block 0 of a sequence with no initial state carries nothing in.
    carried: bool,
}

fn block_at(grid: Grid) -> BlockAt {
    let g = group_index(grid);
    var b: BlockAt;
    b.inside = g < params.bh_count * params.blocks;
    b.local_bh = g / params.blocks;
    b.bh = params.bh_start + b.local_bh;
    b.t = g % params.blocks;
    b.row0 = b.t * BLOCK;
    b.len = block_len(b.t);
    b.slope = slope_of(b.bh);
    b.q0 = offset_of(params.q_stride, b.bh, b.row0, 0u);
    b.k0 = offset_of(params.k_stride, b.bh, b.row0, 0u);
    b.v0 = offset_of(params.v_stride, b.bh, b.row0, 0u);
    let size = params.dim_k * params.dim_v;
    b.own_state = (b.local_bh * params.blocks + b.t) * size;
    let stripe = b.t / STRIPE;
    b.stripe_state = stripe_states() + (b.local_bh * stripe_count() + stripe) * size;
    b.stripe_decay = decay(b.slope, (b.t - stripe * STRIPE) * BLOCK);
    b.carried = b.t > 0u || params.has_state != 0u;
    return b;
}
