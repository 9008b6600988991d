// Shared by every pass: the dispatch parameters, tensor addressing and the
// decay. The host prepends this file to each pass and may rewrite the lines
// marked `// specialise` (see src/kernels.rs); the values here are the
// portable defaults, so each pass also validates as written.

const TILE: u32 = 64u;       // specialise: rows per block (also the output tile width)
const CHUNK: u32 = 8u;       // specialise: reduction depth staged per step
const THREADS: u32 = 256u;   // specialise: (TILE / 4)^2, each thread owns a 4x4 tile
const STRIPE: u32 = 16u;     // specialise: blocks per stripe of the chunked forward

const QUADS: u32 = TILE / 4u; // threads along one side of a tile

// Storage of q, k and v. f32 as written; the host rewrites these three lines
// for f16 (native with `enable f16;`, or packed two to a u32 word) and for
// bf16 (packed). Arithmetic is f32 whatever the storage.
alias Stored = f32;                               // specialise: storage word
const PACK: u32 = 0u;                             // specialise: log2(elements per word)
fn widen(w: Stored, i: u32) -> f32 { return w; }  // specialise: element i of word w

// One dispatch covers `bh_count` consecutive (batch, head) pairs starting at
// `bh_start`, and `rows` consecutive positions of the sequence. Tensor
// addresses are element offsets inside the bound window: the host binds each
// tensor at an aligned offset and folds the remainder into `base` (w), so a
// tensor larger than one binding is reached through several windows.
struct Params {
    heads: u32,
    rows: u32,
    dim_k: u32,
    dim_v: u32,
    blocks: u32,
    bh_start: u32,
    bh_count: u32,
    b_first: u32,
    q_stride: vec4<u32>, // (batch, head, row, base)
    k_stride: vec4<u32>,
    v_stride: vec4<u32>,
    o_stride: vec4<u32>,
    state_base: u32,     // element offset of bh_start's d x e state in the state window
    has_state: u32,      // 1 when the state window holds a state to start from
    scale: f32,
    slotted: u32,        // recurrent pass: states found through the slot map
    stripe_base: u32,    // chunked forward: 32-bit word offset of the per-stripe states
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> slopes: array<f32>;

// Element offset of (bh, row, col) for a tensor with the given strides.
// Arithmetic wraps on purpose: `base` may be "negative" when the window starts
// past the first batch's origin, and the sum lands back in range.
fn offset_of(stride: vec4<u32>, bh: u32, row: u32, col: u32) -> u32 {
    let b = bh / params.heads;
    let h = bh - b * params.heads;
    return stride.w + (b - params.b_first) * stride.x + h * stride.y + row * stride.z + col;
}

// Which element of a staged slice element j of an invocation's register
// array is, for a workgroup of `lanes` invocations (the loops over j have
// constant bounds, so the arrays stay in registers): elements in pairs,
// each pair's two to one invocation, consecutive invocations side by side,
// so a word of packed q, k and v is loaded once. In the tensor-core passes
// on the H100 (b = 4, h = 32, n = 32K, d = e = 128), against one element
// per invocation: bf16 output pass 14.2 -> 8.6 ms, f16 state pass 4.17 ->
// 3.91 and output pass 7.23 -> 7.09. `j` runs over an even count.
fn element_of(tid: u32, j: u32, lanes: u32) -> u32 {
    return 2u * (tid + (j / 2u) * lanes) + j % 2u;
}

fn slope_of(bh: u32) -> f32 {
    return slopes[bh % params.heads];
}

// lambda^k = exp(-s k), computed directly: never as a ratio of two decays
// (which overflows) nor by repeated multiplication (which drifts).
fn decay(slope: f32, k: u32) -> f32 {
    return exp(-slope * f32(k));
}

// Linear workgroup index; the host folds grids wider than 65535 into y.
fn group_index(wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wid.x + wid.y * groups.x;
}

// Rows of block t of this dispatch: TILE, or fewer for the last block.
fn block_len(t: u32) -> u32 {
    return min(TILE, params.rows - t * TILE);
}

// Stripes of STRIPE blocks in this dispatch (the last may be shorter).
fn stripe_count() -> u32 {
    return (params.blocks + STRIPE - 1u) / STRIPE;
}

// Offset in 32-bit words, in the chunked forward's scratch, of the f32
// per-stripe states [bh][stripe][d][e]; the per-block states come first (f32
// on the portable path, f16 on the tensor cores), so the host says where.
fn stripe_states() -> u32 {
    return params.stripe_base;
}
