//! Shared test helpers: contexts, random inputs with fresh seeds, poison.
#![allow(dead_code)]

use lightning_wgpu::{Context, ContextOptions, Dims, Layout, Tensor};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Written into outputs before a run: any element a kernel forgets to write
/// stays NaN and fails the comparison.
pub const POISON: f32 = f32::NAN;

/// A seed from the environment (`LIGHTNING_SEED`, to replay a failure) or
/// fresh from the OS; printed so a failing run can be repeated.
pub fn seed() -> u64 {
    let s = std::env::var("LIGHTNING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {s} (replay with LIGHTNING_SEED={s})");
    s
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Uniform in [-1, 1) scaled by `1/sqrt(width)` so sums stay O(1).
pub fn random(rng: &mut StdRng, len: usize, width: usize) -> Vec<f32> {
    let s = 1.0 / (width as f32).sqrt();
    (0..len)
        .map(|_| rng.random_range(-1.0f32..1.0) * s)
        .collect()
}

/// A context on the default adapter with shader bounds checks on or off.
pub fn context(checked: bool) -> Context {
    context_with(ContextOptions {
        checked: Some(checked),
        ..Default::default()
    })
}

pub fn context_with(options: ContextOptions) -> Context {
    match Context::with_options(options) {
        Ok(c) => c,
        Err(e) => {
            panic!("no GPU context ({e}): run `cargo xtask test`, which installs Mesa's lavapipe")
        }
    }
}

pub fn poisoned(ctx: &Context, shape: &[usize]) -> Tensor {
    let len = shape.iter().product();
    ctx.tensor(&vec![POISON; len], shape)
        .expect("poisoned tensor")
}

/// Rows `[r0, r1)` of a `(b, h, n, w)` tensor in layout `l`, as the data of
/// a `(b, h, r1 - r0, w)` tensor in the same layout.
pub fn rows(x: &[f32], l: Layout, dims: &Dims, w: usize, r0: usize, r1: usize) -> Vec<f32> {
    let len = r1 - r0;
    let mut out = vec![0.0; dims.b * dims.h * len * w];
    for b in 0..dims.b {
        for h in 0..dims.h {
            for i in r0..r1 {
                for c in 0..w {
                    out[l.index(dims.h, len, w, [b, h, i - r0, c])] =
                        x[l.index(dims.h, dims.n, w, [b, h, i, c])];
                }
            }
        }
    }
    out
}

/// One sequence of a call, to compare with the reference on its own: a
/// plain batch is one part (all rows, every batch entry's states), a packed
/// batch (`cu_seqlens`) one per sequence.
pub struct Part {
    /// Its rows `[r0, r1)` of the call.
    pub rows: (usize, usize),
    /// The dims of the part alone.
    pub dims: Dims,
    /// Its range in the call's state tensors.
    pub states: std::ops::Range<usize>,
}

impl Part {
    /// The part's rows of a `(b, h, n, width)` tensor of the call.
    pub fn of(&self, x: &[f32], l: Layout, call: &Dims, width: usize) -> Vec<f32> {
        rows(x, l, call, width, self.rows.0, self.rows.1)
    }
}

/// The parts of a call of `dims` with these `cu_seqlens`, whose state
/// tensors hold `states_len` values.
pub fn parts(dims: &Dims, cu: Option<&[usize]>, states_len: usize) -> Vec<Part> {
    let bounds = cu.map_or(vec![0, dims.n], <[usize]>::to_vec);
    let per = states_len / (bounds.len() - 1);
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| Part {
            rows: (w[0], w[1]),
            // A packed batch has b = 1, and so has each of its sequences.
            dims: Dims {
                n: w[1] - w[0],
                ..*dims
            },
            states: i * per..(i + 1) * per,
        })
        .collect()
}
