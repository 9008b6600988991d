// Tensor addressing, the grid, the decay, blocks and stripes: shared by the
// attention kernels (after the prelude's `params` and `slopes`).

// Element offset of (bh, row, col) for a tensor with these strides
// (batch, head, row, base). Arithmetic wraps on purpose: `base` may be
// "negative" when the window starts past the first batch's origin, and a
// reversed view's row stride is negative; the sum lands back in range.
fn offset_of(stride: vec4<u32>, bh: u32, row: u32, col: u32) -> u32 {
    let b = bh / params.heads;
    let h = bh - b * params.heads;
    return stride.w + (b - params.b_first) * stride.x + h * stride.y + row * stride.z + col;
}

// Which element of a staged slice element j of an invocation's register
// array is, for a workgroup of `lanes` invocations: elements in pairs, each
// pair's two to one invocation, consecutive invocations side by side, so a
// word of packed q, k and v is loaded once. `j` runs over an even count.
fn element_of(tid: u32, j: u32, lanes: u32) -> u32 {
    return 2u * (tid + (j / 2u) * lanes) + j % 2u;
}

fn slope_of(bh: u32) -> f32 {
    return slopes[bh % params.heads];
}

// lambda^k = exp(-s k), computed directly: never as a ratio of two decays
// (which overflows) nor by repeated multiplication (which drifts). The
// exponent is held above -1e4, where exp is 0 in f32 anyway, because
// -s k overflows to -inf for the steepest finite slopes and some exp
// implementations (llvmpipe's) turn exp(-inf) into NaN.
fn decay(slope: f32, k: u32) -> f32 {
    return exp(max(-slope * f32(k), -1e4));
}

// The same for four distances at once.
fn decay4(slope: f32, k: vec4<u32>) -> vec4<f32> {
    return exp(max(-slope * vec4<f32>(k), vec4<f32>(-1e4)));
}

// Where a workgroup is in the grid: every kernel's `main` takes one, and
// its invocation index apart (a struct holding that index too would make
// uniformity analysis (Tint's) take the whole struct as non-uniform).
struct Grid {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
}

// Linear workgroup index; the host folds grids wider than its limit into y.
fn group_index(grid: Grid) -> u32 {
    return grid.wid.x + grid.wid.y * grid.groups.x;
}

// Rows of block t of this dispatch: BLOCK, or fewer for the last block.
fn block_len(t: u32) -> u32 {
    return min(BLOCK, params.rows - t * BLOCK);
}

// Stripes of STRIPE blocks in this dispatch (the last may be shorter).
fn stripe_count() -> u32 {
    return (params.blocks + STRIPE - 1u) / STRIPE;
}

// The (bh, stripe) a block-state workgroup walks, from its index `g`
// counted past its tiles of the state (the innermost part of the grid).
struct StripeAt {
    local_bh: u32,
    bh: u32,
    stripe: u32,
    slope: f32,
}

fn stripe_at(g: u32, stripes: u32) -> StripeAt {
    var s: StripeAt;
    s.stripe = g % stripes;
    s.local_bh = g / stripes;
    s.bh = params.bh_start + s.local_bh;
    s.slope = slope_of(s.bh);
    return s;
}

// Offset in 32-bit words, in the chunked forward's scratch, of the f32
// per-stripe states [bh][stripe][d][e]; the per-block states come first
// (f32 on the portable path, f16 on the tensor cores), so the host says where.
fn stripe_states() -> u32 {
    return params.stripe_base;
}

// Which of columns col, col + step, col + 2 step, col + 3 step lie below `limit`.
fn live4(col: u32, step: u32, limit: u32) -> vec4<bool> {
    return vec4<u32>(col, col + step, col + 2u * step, col + 3u * step) < vec4<u32>(limit);
}

// Four rows of four columns in registers: an invocation's 4x4 tile of a
// product (named members, so the tile stays in registers even with the
// runtime bounds checks on). Declare it with `= Rows4()`: a plain `var t:
// Rows4;` inside a loop was zeroed only once by one compiler (Tint, for
// SwiftShader), so sums carried over between iterations.
struct Rows4 {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// t + a^T b: row i gains a[i] times the row b.
fn outer4(t: Rows4, a: vec4<f32>, b: vec4<f32>) -> Rows4 {
    return Rows4(
        fma(vec4<f32>(a.x), b, t.r0),
        fma(vec4<f32>(a.y), b, t.r1),
        fma(vec4<f32>(a.z), b, t.r2),
        fma(vec4<f32>(a.w), b, t.r3),
    );
}

// Row i of t times f[i].
fn scale_rows(t: Rows4, f: vec4<f32>) -> Rows4 {
    return Rows4(t.r0 * f.x, t.r1 * f.y, t.r2 * f.z, t.r3 * f.w);
}
