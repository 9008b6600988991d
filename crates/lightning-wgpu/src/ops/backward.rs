//! The backward pass, built from the forward's blockwise kernels: every
//! gradient of Lightning Attention is itself a decayed causal linear
//! attention, forward in time (dq) or backward in time (dk, dv, dS0):
//!
//! - `dq = forward(q = dO, k = v, v = k, S0 = S0^T)` (scaled like q);
//! - in reversed time, `dk = forward(q = v, k = dO, v = q)` and
//!   `dv = forward(q = k, k = q, v = dO)`, both scaled like q;
//! - the final-state gradient adds `lambda^(n-1-j) v_j dS_n^T` to dk and
//!   `lambda^(n-1-j) k_j dS_n` to dv. Where its magnitude is known and
//!   `dS_n / (scale lambda)` stays far inside f32, that is the reversed
//!   passes' initial state (`dS_n^T / (scale lambda)` for dk), which costs
//!   nothing more; otherwise a pass of its own, each factor one exp:
//!   nothing is divided by a decay or by the scale, so any finite slopes
//!   and scale give finite gradients;
//! - `dS0 = lambda scale S' + lambda^n dS_n`, `S'` the final state of the
//!   dv pass (with dS_n folded in as above, `dS0 = lambda scale S'`).
//!
//! Like the official kernels it recomputes block states instead of storing
//! an n x d x e history: memory stays linear in n. Time is reversed without
//! a copy, through views whose row stride is negative (see `plan::window`);
//! the small states are transposed and combined on the GPU. Packed batches
//! run as one call, each sequence with its own states. All of it is one
//! submission.

use crate::context::Context;
use crate::error::Result;
use crate::kernels::launch::Launch;
use crate::kernels::{pack, states};
use crate::layout::{Dims, Layout};
use crate::ops::forward::{ForwardOptions, Views};
use crate::plan::{self, HeadView, Needs};
use crate::runtime::recorder::Recorder;
use crate::tensor::{DType, Tensor};
use crate::validate::{self, Call};

/// Largest `1 / (scale lambda)` the final-state gradient is folded with.
const FOLD_FACTOR: f64 = (1u64 << 20) as f64;

/// Largest magnitude a folded final-state gradient may reach.
const FOLD_MAGNITUDE: f64 = 1e30;

/// Options of [`Context::backward`]: the forward's, plus the gradient of
/// its final state.
#[derive(Clone, Copy, Debug, Default)]
pub struct BackwardOptions<'a> {
    /// The options the forward pass ran with (slopes, scale, layout, initial
    /// state, `cu_seqlens`).
    pub forward: ForwardOptions<'a>,
    /// Incoming gradient of the final state `dS_n`, shaped like the states; zero if `None`.
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

impl Context {
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
        let call = validate::backward(self, q, k, v, d_o, opts)?;
        let g = Gradients {
            dq: self.new_tensor(q.shape(), q.dtype(), "dq")?,
            dk: self.new_tensor(k.shape(), q.dtype(), "dk")?,
            dv: self.new_tensor(v.shape(), q.dtype(), "dv")?,
            d_initial_state: self.new_f32(&call.state_shape, "d_initial_state")?,
        };
        let mut rec = Recorder::new(self.rt(), "backward");
        self.record_backward(&mut rec, q, k, v, d_o, opts, &g)
            .await?;
        rec.submit().await?;
        Ok(g)
    }

    /// [`Context::backward`] into gradients the caller owns: `dq`, `dk`,
    /// `dv` shaped like q, k, v (stored like them, or in f32), and
    /// `d_initial_state` shaped like the states (f32).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward_into(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_o: &Tensor,
        opts: &BackwardOptions,
        grads: &mut Gradients,
    ) -> Result<()> {
        pollster::block_on(self.backward_into_async(q, k, v, d_o, opts, grads))
    }

    /// Async form of [`Context::backward_into`].
    pub async fn backward_into_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_o: &Tensor,
        opts: &BackwardOptions<'_>,
        grads: &mut Gradients,
    ) -> Result<()> {
        let mut rec = Recorder::new(self.rt(), "backward");
        self.record_backward(&mut rec, q, k, v, d_o, opts, grads)
            .await?;
        rec.submit().await
    }

    /// Records [`Context::backward_into`] into the caller's `encoder`, which
    /// the caller submits (with its own work, in one submission). Blocks
    /// only while the pipelines are first compiled.
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    pub fn encode_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_o: &Tensor,
        opts: &BackwardOptions,
        grads: &mut Gradients,
    ) -> Result<()> {
        pollster::block_on(self.encode_backward_async(encoder, q, k, v, d_o, opts, grads))
    }

    /// Async form of [`Context::encode_backward`].
    #[allow(clippy::too_many_arguments)]
    pub async fn encode_backward_async(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_o: &Tensor,
        opts: &BackwardOptions<'_>,
        grads: &mut Gradients,
    ) -> Result<()> {
        let mut rec = Recorder::into_encoder(self.rt(), "backward", encoder);
        self.record_backward(&mut rec, q, k, v, d_o, opts, grads)
            .await?;
        rec.finish().await
    }

    /// Records the whole backward into `rec`.
    #[allow(clippy::too_many_arguments)]
    async fn record_backward(
        &self,
        rec: &mut Recorder<'_>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_o: &Tensor,
        opts: &BackwardOptions<'_>,
        g: &Gradients,
    ) -> Result<()> {
        let call = &validate::backward(self, q, k, v, d_o, opts)?;
        validate::gradients(self, call, opts.forward.layout, q, g)?;
        for t in [&g.dq, &g.dk, &g.dv, &g.d_initial_state] {
            t.written();
        }
        let fwd = &opts.forward;
        let Dims { h, d, e, .. } = call.dims;
        let states = call.state_shape[0] * h;
        let slopes: Vec<f32> = fwd.slopes.map_or(vec![0.0; h], <[f32]>::to_vec);
        let plain = ForwardOptions {
            slopes: fwd.slopes,
            scale: fwd.scale,
            layout: fwd.layout,
            cu_seqlens: fwd.cu_seqlens,
            ..Default::default()
        };

        // dq: forward in time, S0^T as the initial state.
        let s0t = match fwd.initial_state {
            Some(s0) => {
                let [count, heads, _, _] = call.state_shape;
                let t = self.new_f32(&[count, heads, e, d], "initial_state transposed")?;
                t.max_abs.set(s0.max_abs());
                let x = states::Term {
                    states: (s0.buffer(), s0.first_element()),
                    steps: 0,
                    scale: 1.0,
                };
                states::record(
                    rec,
                    &slopes,
                    0..states,
                    (e, d),
                    x,
                    true,
                    None,
                    (t.buffer(), 0),
                )
                .await?;
                Some(t)
            }
            None => None,
        };
        let dq = &g.dq;
        let with_s0t = ForwardOptions {
            initial_state: s0t.as_ref(),
            ..plain
        };
        self.record_forward(rec, d_o, v, k, &with_s0t, dq, None, Views::default())
            .await?;

        // dk and dv: backward in time, through reversed views of q, k, v, dO
        // and of the outputs (no copies). With dS_n their outputs stay in
        // f32 until its term is added (unless it is folded into their
        // initial states); with grouped heads, until every member's share
        // is summed.
        let group = call.group;
        let folded = match opts.d_final_state {
            Some(dsn) if group == 1 => {
                self.fold_final_gradient(rec, call, fwd, &slopes, dsn)
                    .await?
            }
            _ => None,
        };
        let term = opts.d_final_state.filter(|_| folded.is_none());
        let views = Views {
            reversed: [true; 4],
            wide_output: term.is_some() || group > 1,
            ..Views::default()
        };
        // Grouped heads: member m's pass reads the q and dO heads m, m +
        // group, ... as the keys and values of a call with kv heads.
        let member = |m: usize| Views {
            heads: if group > 1 {
                let view = HeadView {
                    step: group,
                    first: m,
                };
                [HeadView::default(), view, view, HeadView::default()]
            } else {
                Default::default()
            },
            ..views
        };
        let (dk, dv) = (&g.dk, &g.dv);
        let (for_dk, for_dv) = match &folded {
            Some((sk, sv)) => (
                ForwardOptions {
                    initial_state: Some(sk),
                    ..plain
                },
                ForwardOptions {
                    initial_state: Some(sv),
                    ..plain
                },
            ),
            None => (plain, plain),
        };
        let dk_wide = self
            .record_forward(rec, v, d_o, q, &for_dk, dk, None, member(0))
            .await?;
        let s_prime = self.new_f32(&call.state_shape, "state of the dv pass")?;
        let dv_wide = self
            .record_forward(rec, k, q, d_o, &for_dv, dv, Some(&s_prime), member(0))
            .await?;
        let mut temporaries = Vec::new();
        if let (Some(dk_wide), Some(dv_wide)) = (dk_wide, dv_wide) {
            if group > 1 {
                let part_k = self.new_f32(k.shape(), "dk of one member")?;
                let part_v = self.new_f32(v.shape(), "dv of one member")?;
                let part_s = self.new_f32(&call.state_shape, "dv pass state of one member")?;
                let state_len = call.state_shape.iter().product::<usize>() as u64;
                for m in 1..group {
                    self.record_forward(rec, v, d_o, q, &plain, &part_k, None, member(m))
                        .await?;
                    self.record_forward(rec, k, q, d_o, &plain, &part_v, Some(&part_s), member(m))
                        .await?;
                    for (part, (sum, first)) in [(&part_k, &dk_wide), (&part_v, &dv_wide)] {
                        let x = (part.buffer(), part.first_element());
                        pack::accumulate(rec, x, (sum, *first), part.len() as u64).await?;
                    }
                    let x = (part_s.buffer(), part_s.first_element());
                    let sum = (s_prime.buffer(), s_prime.first_element());
                    pack::accumulate(rec, x, sum, state_len).await?;
                }
                temporaries.extend([part_k, part_v, part_s]);
            }
            if let Some(dsn) = term {
                self.record_state_term(rec, call, fwd, v, dsn, true, (e, d), &dk_wide)
                    .await?;
                self.record_state_term(rec, call, fwd, k, dsn, false, (d, e), &dv_wide)
                    .await?;
            }
            for ((wide, first), t) in [(&dk_wide, dk), (&dv_wide, dv)] {
                if t.dtype() != DType::F32 {
                    pack::pack(rec, (wide, *first), t).await?;
                }
            }
        }

        // dS0 = lambda scale S' + lambda^n dS_n, per sequence (n its length).
        let d_initial_state = &g.d_initial_state;
        let x = states::Term {
            states: (s_prime.buffer(), 0),
            steps: 1,
            scale: fwd.scale,
        };
        let runs: Vec<(std::ops::Range<usize>, usize)> = match fwd.cu_seqlens {
            Some(_) => call
                .sequences
                .iter()
                .map(|s| (s.first_state..s.first_state + h, s.len))
                .collect(),
            None => vec![(0..states, call.dims.n)],
        };
        for (range, n) in runs {
            let y = term.map(|t| states::Term {
                states: (t.buffer(), t.first_element()),
                steps: i32::try_from(n).unwrap_or(i32::MAX),
                scale: 1.0,
            });
            let out = (d_initial_state.buffer(), d_initial_state.first_element());
            states::record(rec, &slopes, range, (d, e), x, false, y, out).await?;
        }
        // The temporaries (S0^T, S') are read by work not yet submitted:
        // they stay out of the pool until it is.
        let folded = folded.into_iter().flat_map(|(sk, sv)| [sk, sv]);
        for buffer in s0t
            .into_iter()
            .chain(folded)
            .chain([s_prime])
            .chain(temporaries)
            .filter_map(Tensor::into_buffer)
        {
            rec.keep(buffer);
        }
        Ok(())
    }

    /// The initial states of the reversed dk and dv passes that carry the
    /// final-state gradient: `dS_n^T / (scale lambda)` (e x d) and `dS_n /
    /// (scale lambda)` (d x e), or `None` where that is not safely inside
    /// f32 (dS_n's magnitude unknown, a tiny scale, a steep slope): then
    /// the state term adds it.
    async fn fold_final_gradient(
        &self,
        rec: &mut Recorder<'_>,
        call: &Call,
        fwd: &ForwardOptions<'_>,
        slopes: &[f32],
        dsn: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let Some(magnitude) = dsn.max_abs() else {
            return Ok(None);
        };
        // 1 / (scale lambda) for the steepest head; the bound keeps the
        // folded states (and what the passes add to them) finite.
        let steepest = slopes.iter().copied().fold(0.0f32, f32::max) as f64;
        let factor = steepest.exp() / (fwd.scale as f64).abs();
        if !(factor.is_finite()
            && factor <= FOLD_FACTOR
            && magnitude as f64 * factor <= FOLD_MAGNITUDE)
        {
            return Ok(None);
        }
        let Dims { h, d, e, .. } = call.dims;
        let [count, heads, _, _] = call.state_shape;
        let x = states::Term {
            states: (dsn.buffer(), dsn.first_element()),
            steps: -1,
            scale: 1.0 / fwd.scale,
        };
        let magnitude = (magnitude as f64 * factor) as f32;
        let mut fold = async |shape: [usize; 4], transpose: bool| -> Result<Tensor> {
            let t = self.new_f32(&shape, "final-state gradient, folded")?;
            t.max_abs.set(Some(magnitude));
            let out = (t.buffer(), 0);
            states::record(
                rec,
                slopes,
                0..count * h,
                (shape[2], shape[3]),
                x,
                transpose,
                None,
                out,
            )
            .await?;
            Ok(t)
        };
        let sk = fold([count, heads, e, d], true).await?;
        let sv = fold([count, heads, d, e], false).await?;
        Ok(Some((sk, sv)))
    }

    /// Records `out_i += lambda^(n-1-i) x_i A`, A the final-state gradient
    /// (transposed for dk), over every sequence; `widths` = (of x, of out).
    #[allow(clippy::too_many_arguments)]
    async fn record_state_term(
        &self,
        rec: &mut Recorder<'_>,
        call: &Call,
        fwd: &ForwardOptions<'_>,
        x: &Tensor,
        a: &Tensor,
        transposed: bool,
        (width_in, width_out): (usize, usize),
        (out, out_first): &(wgpu::Buffer, u64),
    ) -> Result<()> {
        let dims = Dims {
            d: width_in,
            e: width_out,
            ..call.dims
        };
        let layout: Layout = fwd.layout;
        let mut limits = super::limits(self, x.dtype(), 4, 4);
        limits.at = crate::plan::Starts {
            q: x.first_element(),
            o: *out_first,
            state: a.first_element(),
            ..Default::default()
        };
        let segments = plan::plan(
            layout,
            &dims,
            &limits,
            &call.sequences,
            Needs::recurrent(usize::MAX),
        )?;
        let setup = *self.setup();
        let launch = Launch {
            slopes: fwd.slopes,
            transposed_state: transposed,
            ..Launch::new(dims, layout, setup.storage(x.dtype()), segments)
        };
        states::record_term(rec, &setup, &launch, x.buffer(), a.buffer(), out).await
    }
}
