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

/// Gradients of [`forward`], from [`backward`].
#[derive(Clone, Debug)]
pub struct Gradients {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    /// Gradient of the initial state, `(b, h, d, e)`.
    pub d_initial_state: Vec<f64>,
}

/// Backward of [`forward`] in f64, summed directly from the definitions
/// (O(n^2) per head: for checking on small inputs). `d_o` is shaped like `v`,
/// `d_final_state` (the incoming gradient of the final state) like the state.
/// With `M_ij = lambda^(i-j)` for `j <= i` and `q~ = scale q`:
/// `dq_i = scale (sum_{j<=i} M_ij (dO_i . v_j) k_j + lambda^(i+1) dO_i S0^T)`,
/// `dk_j = sum_{i>=j} M_ij (dO_i . v_j) q~_i + lambda^(n-1-j) dS_n v_j`,
/// `dv_j = sum_{i>=j} M_ij (q~_i . k_j) dO_i + lambda^(n-1-j) k_j dS_n`,
/// `dS0 = sum_i lambda^(i+1) q~_i^T dO_i + lambda^n dS_n`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dims: Dims,
    layout: Layout,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
    slopes: &[f32],
    scale: f32,
    initial_state: Option<&[f32]>,
    d_final_state: Option<&[f32]>,
) -> Gradients {
    let Dims { b, h, n, d, e } = dims;
    let at = |width: usize, bi: usize, hi: usize, i: usize, c: usize| {
        layout.index(h, n, width, [bi, hi, i, c])
    };
    let sc = scale as f64;
    let mut g = Gradients {
        dq: vec![0.0; b * h * n * d],
        dk: vec![0.0; b * h * n * d],
        dv: vec![0.0; b * h * n * e],
        d_initial_state: vec![0.0; b * h * d * e],
    };
    for bi in 0..b {
        for hi in 0..h {
            let s = slopes[hi] as f64;
            let m = |i: usize, j: usize| (-s * (i - j) as f64).exp();
            let st = (bi * h + hi) * d * e;
            let s0 = |r: usize, c: usize| initial_state.map_or(0.0, |x| x[st + r * e + c] as f64);
            let dsn = |r: usize, c: usize| d_final_state.map_or(0.0, |x| x[st + r * e + c] as f64);
            let dot = |x: &[f32], wx: usize, i: usize, y: &[f32], j: usize| -> f64 {
                (0..wx)
                    .map(|c| x[at(wx, bi, hi, i, c)] as f64 * y[at(wx, bi, hi, j, c)] as f64)
                    .sum()
            };
            for i in 0..n {
                for j in 0..=i {
                    let w = m(i, j);
                    let dov = w * dot(d_o, e, i, v, j); // M_ij (dO_i . v_j)
                    let qk = w * sc * dot(q, d, i, k, j); // M_ij (q~_i . k_j)
                    for r in 0..d {
                        g.dq[at(d, bi, hi, i, r)] += sc * dov * k[at(d, bi, hi, j, r)] as f64;
                        g.dk[at(d, bi, hi, j, r)] += dov * sc * q[at(d, bi, hi, i, r)] as f64;
                    }
                    for c in 0..e {
                        g.dv[at(e, bi, hi, j, c)] += qk * d_o[at(e, bi, hi, i, c)] as f64;
                    }
                }
                let li = (-s * (i + 1) as f64).exp();
                let tail = (-s * (n - 1 - i) as f64).exp();
                for r in 0..d {
                    let carried: f64 = (0..e)
                        .map(|c| d_o[at(e, bi, hi, i, c)] as f64 * s0(r, c))
                        .sum();
                    g.dq[at(d, bi, hi, i, r)] += sc * li * carried;
                    let from_end: f64 = (0..e)
                        .map(|c| dsn(r, c) * v[at(e, bi, hi, i, c)] as f64)
                        .sum();
                    g.dk[at(d, bi, hi, i, r)] += tail * from_end;
                    for c in 0..e {
                        g.d_initial_state[st + r * e + c] += li
                            * sc
                            * q[at(d, bi, hi, i, r)] as f64
                            * d_o[at(e, bi, hi, i, c)] as f64;
                    }
                }
                for c in 0..e {
                    let from_end: f64 = (0..d)
                        .map(|r| k[at(d, bi, hi, i, r)] as f64 * dsn(r, c))
                        .sum();
                    g.dv[at(e, bi, hi, i, c)] += tail * from_end;
                }
            }
            let ln = (-s * n as f64).exp();
            for r in 0..d {
                for c in 0..e {
                    g.d_initial_state[st + r * e + c] += ln * dsn(r, c);
                }
            }
        }
    }
    g
}
