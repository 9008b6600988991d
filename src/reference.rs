//! CPU reference in f64, for checking the GPU kernels on your own inputs.
//!
//! ```
//! use lightning_wgpu::{reference, Dims, Layout};
//! let dims = Dims { b: 1, h: 1, n: 3, d: 1, e: 1 };
//! let ones = [1.0f32; 3];
//! let out = reference::forward(dims, Layout::Bhnd, &ones, &ones, &ones, &[0.0], 1.0, None);
//! assert_eq!(out.o, vec![1.0, 2.0, 3.0]); // no decay: a running sum
//! ```

use crate::layout::{Dims, Layout};

/// Outputs of [`forward`].
#[derive(Clone, Debug)]
pub struct Output {
    /// `o`, in the layout of the inputs, shape of `v`.
    pub o: Vec<f64>,
    /// The state after the last position, `(b, h, d, e)`.
    pub final_state: Vec<f64>,
}

/// Lightning Attention forward in f64:
/// `o_i = sum_{j <= i} exp(-s_h (i - j)) (scale q_i . k_j) v_j + exp(-s_h (i+1)) scale q_i S0`,
/// computed through the recurrence `S(i) = lambda S(i-1) + k_i^T v_i`,
/// `o_i = scale q_i S(i)` (exact in real arithmetic, O(n d e) work).
///
/// Inputs are in `layout`, `slopes` has `h` entries, `initial_state` is
/// `(b, h, d, e)`. Panics if a slice is shorter than its shape says.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    dims: Dims,
    layout: Layout,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    slopes: &[f32],
    scale: f32,
    initial_state: Option<&[f32]>,
) -> Output {
    let Dims { b, h, n, d, e } = dims;
    let mut o = vec![0.0f64; b * h * n * e];
    let mut final_state = vec![0.0f64; b * h * d * e];
    let at = |width: usize, bi: usize, hi: usize, i: usize, c: usize| {
        layout.index(h, n, width, [bi, hi, i, c])
    };
    for bi in 0..b {
        for hi in 0..h {
            let lambda = (-(slopes[hi] as f64)).exp();
            let s0 = (bi * h + hi) * d * e;
            let state = &mut final_state[s0..s0 + d * e];
            if let Some(init) = initial_state {
                for (x, &y) in state.iter_mut().zip(&init[s0..s0 + d * e]) {
                    *x = y as f64;
                }
            }
            for i in 0..n {
                for r in 0..d {
                    let kr = k[at(d, bi, hi, i, r)] as f64;
                    for c in 0..e {
                        let cell = &mut state[r * e + c];
                        *cell = lambda * *cell + kr * v[at(e, bi, hi, i, c)] as f64;
                    }
                }
                for c in 0..e {
                    let mut acc = 0.0;
                    for r in 0..d {
                        acc += q[at(d, bi, hi, i, r)] as f64 * state[r * e + c];
                    }
                    o[at(e, bi, hi, i, c)] = scale as f64 * acc;
                }
            }
        }
    }
    Output { o, final_state }
}

/// Causal softmax attention in f64:
/// `o_i = sum_{j <= i} softmax_j(scale q_i . k_j - s_h (i - j)) v_j`
/// (`alibi` slopes `s_h`, all zero for plain attention).
#[allow(clippy::too_many_arguments)]
pub fn softmax_attention(
    dims: Dims,
    layout: Layout,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    alibi: &[f32],
    scale: f32,
) -> Vec<f64> {
    let Dims { b, h, n, d, e } = dims;
    let at = |width: usize, bi: usize, hi: usize, i: usize, c: usize| {
        layout.index(h, n, width, [bi, hi, i, c])
    };
    let mut o = vec![0.0f64; b * h * n * e];
    let mut logits = vec![0.0f64; n];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..n {
                for (j, l) in logits.iter_mut().enumerate().take(i + 1) {
                    let dot: f64 = (0..d)
                        .map(|r| q[at(d, bi, hi, i, r)] as f64 * k[at(d, bi, hi, j, r)] as f64)
                        .sum();
                    *l = scale as f64 * dot - alibi[hi] as f64 * (i - j) as f64;
                }
                let max = logits[..=i]
                    .iter()
                    .cloned()
                    .fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = logits[..=i].iter().map(|l| (l - max).exp()).sum();
                for c in 0..e {
                    let acc: f64 = (0..=i)
                        .map(|j| (logits[j] - max).exp() * v[at(e, bi, hi, j, c)] as f64)
                        .sum();
                    o[at(e, bi, hi, i, c)] = acc / total;
                }
            }
        }
    }
    o
}

/// `||got - want|| / ||want||` (Frobenius norms, in f64). Returns the
/// absolute norm of the difference when `want` is all zeros, and infinity
/// when the lengths differ or `got` holds a NaN.
pub fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let mut diff = 0.0;
    let mut norm = 0.0;
    for (&g, &w) in got.iter().zip(want) {
        let g = g as f64;
        if g.is_nan() != w.is_nan() {
            return f64::INFINITY;
        }
        if !w.is_nan() {
            diff += (g - w) * (g - w);
            norm += w * w;
        }
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}
