//! The backward pass, built from the forward's blockwise kernels: every
//! gradient of Lightning Attention is itself a decayed causal linear
//! attention, forward in time (dq) or backward in time (dk, dv, dS0):
//!
//! - `dq = forward(q = dO, k = v, v = k, S0 = S0^T)` (scaled like q);
//! - in reversed time, `dk = forward(q = v, k = dO, v = q)` and
//!   `dv = forward(q = k, k = q, v = dO)`, both scaled like q, the incoming
//!   final-state gradient `dS_n` entering as their initial state (over
//!   `lambda scale`: the forward decays and scales an initial state once
//!   more than `dS_n` needs), and `dS0 = lambda scale S'` from the final
//!   state `S'` of the `dv` pass.
//!
//! Like the official kernels it recomputes block states instead of storing
//! an n x d x e history: memory stays linear in n. Time is reversed without
//! a copy, through views whose row stride is negative (see `plan::window`);
//! only the small `(b, h, d, e)` states are transposed on the host.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::layout::{Dims, Layout};
use crate::ops::forward::{
    check_shape, check_state, check_tensor, dim_names, validate, Checked, ForwardOptions,
};
use crate::tensor::Tensor;

/// Largest slope for which an incoming final-state gradient can be carried:
/// it enters the reversed pass as `dS_n * exp(s)`, which must stay finite.
pub const MAX_SLOPE_WITH_FINAL_STATE_GRAD: f32 = 80.0;

/// Options of [`Context::backward`]: the forward's, plus the gradient of
/// its final state.
#[derive(Clone, Copy, Debug, Default)]
pub struct BackwardOptions<'a> {
    /// The options the forward pass ran with (slopes, scale, layout, initial
    /// state, `cu_seqlens`).
    pub forward: ForwardOptions<'a>,
    /// Incoming gradient of the final state `dS_n`, `(b, h, d, e)`; zero if `None`.
    pub d_final_state: Option<&'a Tensor>,
}

/// Gradients from [`Context::backward`].
#[derive(Debug)]
pub struct Gradients {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    /// Gradient of the initial state, `(b, h, d, e)` (computed whether or not
    /// an initial state was given).
    pub d_initial_state: Tensor,
}

/// Rows `[r0, r1)` of a `(1, h, n, w)` tensor in `layout`, as their own tensor's data.
fn rows(
    x: &[f32],
    layout: Layout,
    h: usize,
    n: usize,
    width: usize,
    (r0, r1): (usize, usize),
) -> Vec<f32> {
    let len = r1 - r0;
    let mut out = vec![0.0; h * len * width];
    for hh in 0..h {
        for i in r0..r1 {
            let from = layout.index(h, n, width, [0, hh, i, 0]);
            let to = layout.index(h, len, width, [0, hh, i - r0, 0]);
            out[to..to + width].copy_from_slice(&x[from..from + width]);
        }
    }
    out
}

/// Writes `part` (rows `[r0, r1)`) back into the `(1, h, n, w)` tensor data `x`.
fn put_rows(
    x: &mut [f32],
    part: &[f32],
    layout: Layout,
    h: usize,
    n: usize,
    width: usize,
    (r0, r1): (usize, usize),
) {
    let len = r1 - r0;
    for hh in 0..h {
        for i in r0..r1 {
            let to = layout.index(h, n, width, [0, hh, i, 0]);
            let from = layout.index(h, len, width, [0, hh, i - r0, 0]);
            x[to..to + width].copy_from_slice(&part[from..from + width]);
        }
    }
}

/// Each `rows x cols` state of a `(b, h, rows, cols)` tensor transposed, times `factor[h]`.
fn transpose_states(x: &[f32], dims: &Dims, rows: usize, cols: usize, factor: &[f64]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (s, (src, dst)) in x
        .chunks(rows * cols)
        .zip(out.chunks_mut(rows * cols))
        .enumerate()
    {
        let f = factor[s % dims.h];
        for r in 0..rows {
            for c in 0..cols {
                dst[c * rows + r] = (src[r * cols + c] as f64 * f) as f32;
            }
        }
    }
    out
}

impl Context {
    /// Checks every input of a backward call, packed or not: the forward's
    /// checks, `d_o` stored like q and shaped like `v`, `dS_n` shaped like
    /// the state.
    fn check_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_o: &Tensor,
        opts: &BackwardOptions<'_>,
    ) -> Result<Checked> {
        let fwd = &opts.forward;
        let checked = validate(self, q, k, v, fwd)?;
        check_tensor(self, "d_o", d_o, q.dtype())?;
        check_shape("d_o", d_o, v.shape(), dim_names(fwd.layout, "e"), "v")?;
        if let Some(ds) = opts.d_final_state {
            check_state(self, "d_final_state", ds, &checked.state_shape)?;
        }
        Ok(checked)
    }

    /// The backward of a packed batch: each sequence on its own, with its
    /// own initial state and final-state gradient, gathered back.
    async fn backward_packed(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_o: &Tensor,
        opts: &BackwardOptions<'_>,
        cu: &[usize],
    ) -> Result<Gradients> {
        let fwd = &opts.forward;
        let checked = self.check_backward(q, k, v, d_o, opts)?;
        let Dims { h, n, d, e, .. } = checked.dims;
        let layout = fwd.layout;
        let (xq, xk, xv, xo) = (
            self.read_async(q).await?,
            self.read_async(k).await?,
            self.read_async(v).await?,
            self.read_async(d_o).await?,
        );
        let s0 = match fwd.initial_state {
            Some(t) => Some(self.read_async(t).await?),
            None => None,
        };
        let dsn = match opts.d_final_state {
            Some(t) => Some(self.read_async(t).await?),
            None => None,
        };
        let state = h * d * e;
        let dtype = q.dtype();
        let (mut dq, mut dk, mut dv) = (
            vec![0.0; xq.len()],
            vec![0.0; xk.len()],
            vec![0.0; xv.len()],
        );
        let mut ds0 = vec![0.0; checked.state_shape.iter().product()];
        for (i, w) in cu.windows(2).enumerate() {
            let (r0, r1) = (w[0], w[1]);
            let qs = layout.shape(1, h, r1 - r0, d);
            let vs = layout.shape(1, h, r1 - r0, e);
            let part = |x: &[f32], width: usize, shape: [usize; 4]| {
                self.tensor_as(&rows(x, layout, h, n, width, (r0, r1)), &shape, dtype)
            };
            let own = |x: &Option<Vec<f32>>| -> Result<Option<Tensor>> {
                x.as_ref()
                    .map(|x| self.tensor(&x[i * state..(i + 1) * state], &[1, h, d, e]))
                    .transpose()
            };
            let (s0_i, dsn_i) = (own(&s0)?, own(&dsn)?);
            let one = BackwardOptions {
                forward: ForwardOptions {
                    cu_seqlens: None,
                    initial_state: s0_i.as_ref(),
                    ..*fwd
                },
                d_final_state: dsn_i.as_ref(),
            };
            let g = self
                .backward_async(
                    &part(&xq, d, qs)?,
                    &part(&xk, d, qs)?,
                    &part(&xv, e, vs)?,
                    &part(&xo, e, vs)?,
                    &one,
                )
                .await?;
            put_rows(
                &mut dq,
                &self.read_async(&g.dq).await?,
                layout,
                h,
                n,
                d,
                (r0, r1),
            );
            put_rows(
                &mut dk,
                &self.read_async(&g.dk).await?,
                layout,
                h,
                n,
                d,
                (r0, r1),
            );
            put_rows(
                &mut dv,
                &self.read_async(&g.dv).await?,
                layout,
                h,
                n,
                e,
                (r0, r1),
            );
            ds0[i * state..(i + 1) * state]
                .copy_from_slice(&self.read_async(&g.d_initial_state).await?);
        }
        // Each part was already rounded to `dtype`: re-encoding is exact.
        Ok(Gradients {
            dq: self.tensor_as(&dq, q.shape(), dtype)?,
            dk: self.tensor_as(&dk, k.shape(), dtype)?,
            dv: self.tensor_as(&dv, v.shape(), dtype)?,
            d_initial_state: self.tensor(&ds0, &checked.state_shape)?,
        })
    }

    /// Gradients of [`Context::forward`] for the output gradient `d_o`
    /// (shaped like `v`, stored like q): `dq`, `dk`, `dv` in the inputs'
    /// storage type and the initial state's `dS0` (f32, like every state).
    /// Arithmetic is f32 whatever the storage. Blocks; see
    /// [`Context::backward_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_o: &Tensor,
        opts: &BackwardOptions,
    ) -> Result<Gradients> {
        pollster::block_on(self.backward_async(q, k, v, d_o, opts))
    }

    /// Async form of [`Context::backward`].
    pub async fn backward_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_o: &Tensor,
        opts: &BackwardOptions<'_>,
    ) -> Result<Gradients> {
        let fwd = &opts.forward;
        if let Some(cu) = fwd.cu_seqlens {
            return Box::pin(self.backward_packed(q, k, v, d_o, opts, cu)).await;
        }
        let checked = self.check_backward(q, k, v, d_o, opts)?;
        let dims = checked.dims;
        let Dims { b, h, n, d, e } = dims;
        let layout = fwd.layout;
        let slopes: Vec<f32> = fwd.slopes.map_or(vec![0.0; h], <[f32]>::to_vec);
        if opts.d_final_state.is_some() {
            if let Some((i, s)) = slopes
                .iter()
                .enumerate()
                .find(|(_, s)| **s > MAX_SLOPE_WITH_FINAL_STATE_GRAD)
            {
                return Err(Error::Slopes(format!(
                    "slope {i} is {s}: with d_final_state the backward takes slopes up to {MAX_SLOPE_WITH_FINAL_STATE_GRAD}"
                )));
            }
        }
        let lambda: Vec<f64> = slopes.iter().map(|&s| (-(s as f64)).exp()).collect();
        let ones = vec![1.0; h];
        let plain = ForwardOptions {
            slopes: fwd.slopes,
            scale: fwd.scale,
            layout,
            ..Default::default()
        };

        // dq: forward in time, S0^T as the initial state.
        let s0t = match fwd.initial_state {
            Some(s0) => Some(self.tensor(
                &transpose_states(&self.read_async(s0).await?, &dims, d, e, &ones),
                &[b, h, e, d],
            )?),
            None => None,
        };
        let dq = self
            .forward_async(
                d_o,
                v,
                k,
                &ForwardOptions {
                    initial_state: s0t.as_ref(),
                    ..plain
                },
            )
            .await?
            .o;

        // dk and dv: backward in time, through reversed views of q, k, v, dO
        // and of the outputs (no copies). The passes scale their queries (v
        // and k), which is where scale q belongs; their initial-state terms
        // get that scale too, so dS_n enters divided by lambda and by scale.
        let qs = layout.shape(b, h, n, d);
        let vs = layout.shape(b, h, n, e);
        let scale = fwd.scale as f64;
        let (dsn_for_dk, dsn_for_dv) = match opts.d_final_state {
            Some(ds) => {
                if scale == 0.0 {
                    return Err(Error::InvalidValue {
                        arg: "scale",
                        value: "0".into(),
                        reason: "the backward with d_final_state needs a nonzero scale",
                    });
                }
                let x = self.read_async(ds).await?;
                let over: Vec<f64> = lambda.iter().map(|l| 1.0 / (l * scale)).collect();
                let dk_init = transpose_states(&x, &dims, d, e, &over);
                let dv_init: Vec<f32> = x
                    .chunks(d * e)
                    .enumerate()
                    .flat_map(|(s, c)| {
                        let f = over[s % h];
                        c.iter().map(move |&y| (y as f64 * f) as f32)
                    })
                    .collect();
                (
                    Some(self.tensor(&dk_init, &[b, h, e, d])?),
                    Some(self.tensor(&dv_init, &[b, h, d, e])?),
                )
            }
            None => (None, None),
        };
        let reversed = [true; 4];
        let dk = self.empty_as(&qs, q.dtype(), "dk")?;
        let opts_dk = ForwardOptions {
            initial_state: dsn_for_dk.as_ref(),
            ..plain
        };
        self.forward_views(v, d_o, q, &opts_dk, &dk, None, reversed)
            .await?;
        let dv = self.empty_as(&vs, q.dtype(), "dv")?;
        let mut final_state = self.empty(&[b, h, d, e], "final state")?;
        let opts_dv = ForwardOptions {
            initial_state: dsn_for_dv.as_ref(),
            ..plain
        };
        self.forward_views(k, q, d_o, &opts_dv, &dv, Some(&mut final_state), reversed)
            .await?;

        // dS0 = lambda scale S', S' the reversed dv pass's final state:
        // sum_i lambda^i q_i^T dO_i + lambda^(n-1) dS_n / scale. Scaled in
        // place on the GPU (no round trip through the host), or on the host
        // where the states exceed one binding.
        let on_gpu =
            super::scale_states(self, &final_state, (h, d, e), fwd.slopes, fwd.scale).await?;
        let d_initial_state = if on_gpu {
            final_state
        } else {
            let ds0: Vec<f32> = self
                .read_async(&final_state)
                .await?
                .iter()
                .enumerate()
                .map(|(i, &s)| (lambda[(i / (d * e)) % h] * scale * s as f64) as f32)
                .collect();
            self.tensor(&ds0, &[b, h, d, e])?
        };
        Ok(Gradients {
            dq,
            dk,
            dv,
            d_initial_state,
        })
    }
}
