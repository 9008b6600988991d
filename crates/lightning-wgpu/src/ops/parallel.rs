//! Sequence parallelism (LASP-2): a sequence longer than one device holds is
//! split into contiguous slices, one per rank. The ranks exchange one state
//! each (`b h d e` f32, whatever n; two in the backward), so the
//! communication does not grow with the sequence:
//!
//! - forward: rank r's contribution `M_r` is the final state of its slice
//!   from a zero state (rank 0's from the initial state); one all-gather,
//!   then rank r's incoming state is `S_r = sum_{r' < r} L(r'+1..r-1) M_r'`,
//!   `L(a..b)` the decay over the ranks a..b. `M_r` comes from the block
//!   states and a scan; the block states wait on the GPU through the
//!   exchange, then a second scan from `S_r` and the output pass finish the
//!   forward. The final state, the same sum over every rank, lands on all.
//! - backward: rank r's own gradient of its incoming state `G_r` (its
//!   backward with no final-state gradient; the last rank's with the given
//!   `dS_n`, which makes its `G` the whole gradient and its run the answer),
//!   sent with the forward's `M_r` in one all-gather; the gradient of rank
//!   r's final state is `sum_{r' > r} L(r+1..r'-1) G_r'`, and its backward
//!   runs from `S_r` with that.
//!
//! The exchange is a trait, so any transport carries it: MPI (feature
//! `mpi`), threads, a framework's collectives. The states are combined on
//! the host in f64.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::ops::backward::{BackwardOptions, Gradients};
use crate::ops::forward::{ForwardOptions, ForwardOutput};
use crate::tensor::Tensor;
use crate::validate;

/// What carries the ranks' bytes to each other: a blocking all-gather.
pub trait Exchange {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// How many ranks take part.
    fn ranks(&self) -> usize;
    /// Every rank's `mine` (the same length on every rank), in rank order.
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<u8>>;
}

/// What each rank sends: its slice length, then a state (f32).
fn payload(len: usize, state: &[f32]) -> Vec<u8> {
    let mut out = (len as u64).to_le_bytes().to_vec();
    out.extend_from_slice(bytemuck::cast_slice(state));
    out
}

/// The ranks' slice lengths and states out of an all-gather.
fn unpack(all: &[u8], ranks: usize, state_len: usize) -> Result<Vec<(usize, Vec<f64>)>> {
    let each = 8 + 4 * state_len;
    if all.len() != each * ranks {
        return Err(Error::Gpu {
            op: "sequence-parallel exchange",
            reason: format!(
                "the all-gather returned {} bytes, expected {ranks} x {each}",
                all.len()
            ),
        });
    }
    Ok(all
        .chunks_exact(each)
        .map(|c| {
            let len = u64::from_le_bytes(c[..8].try_into().expect("8 bytes")) as usize;
            let state = c[8..]
                .chunks_exact(4)
                .map(|w| f32::from_le_bytes(w.try_into().expect("4 bytes")) as f64)
                .collect();
            (len, state)
        })
        .collect())
}

/// `(count, h, d, e)` states from `(count, h group, d e)` ones: q heads
/// `g group .. (g + 1) group` summed into kv head g.
fn sum_groups(states: &[f32], per_head: usize, group: usize) -> Vec<f32> {
    if group == 1 {
        return states.to_vec();
    }
    states
        .chunks_exact(per_head * group)
        .flat_map(|members| {
            let mut sum = vec![0.0f64; per_head];
            for m in members.chunks_exact(per_head) {
                sum.iter_mut().zip(m).for_each(|(s, x)| *s += *x as f64);
            }
            sum.into_iter().map(|x| x as f32)
        })
        .collect()
}

/// The decays of the problem, per head.
struct Decay {
    slopes: Vec<f64>,
    /// `d * e`: elements of one head's state.
    per_head: usize,
    heads: usize,
}

impl Decay {
    /// `lambda_h^steps * factor` of every head (one exp each, not one per
    /// element: a state has `d e` of them).
    fn factors(&self, factor: f64, steps: usize) -> Vec<f64> {
        self.slopes
            .iter()
            .map(|s| (-s * steps as f64).exp() * factor)
            .collect()
    }

    /// `acc += lambda^steps * state` per head, over a `(b, h, d, e)` state.
    fn add_decayed(&self, acc: &mut [f64], state: &[f64], steps: usize) {
        let factors = self.factors(1.0, steps);
        let heads = acc
            .chunks_exact_mut(self.per_head)
            .zip(state.chunks_exact(self.per_head));
        for (i, (a, s)) in heads.enumerate() {
            let f = factors[i % self.heads];
            a.iter_mut().zip(s).for_each(|(a, s)| *a += f * s);
        }
    }

    /// `state *= factor * lambda^steps` per head.
    fn scale(&self, state: &mut [f32], factor: f64, steps: usize) {
        let factors = self.factors(factor, steps);
        for (i, head) in state.chunks_exact_mut(self.per_head).enumerate() {
            let f = factors[i % self.heads];
            head.iter_mut().for_each(|s| *s = (*s as f64 * f) as f32);
        }
    }
}

/// One rank's part of a sequence-parallel call: the checks and what the
/// combining steps need.
struct Split<'a> {
    ctx: &'a Context,
    exchange: &'a dyn Exchange,
    decay: Decay,
    /// q heads per kv head.
    group: usize,
    state_shape: [usize; 4],
    len: usize,
}

impl<'a> Split<'a> {
    fn new(
        ctx: &'a Context,
        exchange: &'a dyn Exchange,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<Split<'a>> {
        let (dims, group) =
            validate::grouped_problem(opts.layout, q.shape(), k.shape(), v.shape())?;
        validate::slopes(opts.slopes, dims.h)?;
        if opts.cu_seqlens.is_some() {
            return Err(Error::InvalidValue {
                arg: "cu_seqlens",
                value: "Some(..)".into(),
                reason:
                    "packed batches are not split across ranks: give b sequences of equal length",
            });
        }
        if exchange.ranks() == 0 || exchange.rank() >= exchange.ranks() {
            return Err(Error::InvalidValue {
                arg: "exchange",
                value: format!("rank {} of {}", exchange.rank(), exchange.ranks()),
                reason: "the rank must lie in 0..ranks",
            });
        }
        let slopes = match opts.slopes {
            Some(s) => s.iter().map(|&x| x as f64).collect(),
            None => vec![0.0; dims.h],
        };
        Ok(Split {
            ctx,
            exchange,
            decay: Decay {
                slopes,
                per_head: dims.d * dims.e,
                heads: dims.h,
            },
            state_shape: dims.state_shape(),
            len: dims.n,
            group,
        })
    }

    /// Every rank's (slice length, state) after one all-gather of ours.
    fn gather(&self, state: &Tensor) -> Result<Vec<(usize, Vec<f64>)>> {
        self.gather_values(&self.ctx.read(state)?)
    }

    fn gather_values(&self, mine: &[f32]) -> Result<Vec<(usize, Vec<f64>)>> {
        let all = self.exchange.all_gather(&payload(self.len, mine))?;
        let ranks = unpack(&all, self.exchange.ranks(), mine.len())?;
        if let Some((r, _)) = ranks.iter().enumerate().find(|(_, (len, _))| *len == 0) {
            return Err(Error::InvalidValue {
                arg: "q",
                value: format!("rank {r}"),
                reason: "every rank must hold at least one position",
            });
        }
        Ok(ranks)
    }

    /// `sum over ranks in `range` of L(r+1..end) x_r`, the decay taken over
    /// the ranks between each and `end` (exclusive).
    fn combine(
        &self,
        ranks: &[(usize, Vec<f64>)],
        range: std::ops::Range<usize>,
        end: usize,
    ) -> Vec<f64> {
        let mut acc = vec![0.0; ranks[0].1.len()];
        for r in range {
            let steps: usize = ranks[r + 1..end].iter().map(|(len, _)| len).sum();
            self.decay.add_decayed(&mut acc, &ranks[r].1, steps);
        }
        acc
    }

    fn upload(&self, state: &[f64]) -> Result<Tensor> {
        let s: Vec<f32> = state.iter().map(|&x| x as f32).collect();
        self.ctx.tensor(&s, &self.state_shape)
    }

    /// The incoming state of this rank (None on rank 0: its own initial
    /// state) and the final state of the whole sequence, from every rank's
    /// `contribution` (the final state of its slice from a zero state, rank
    /// 0's from the initial state).
    fn combined(&self, contribution: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        let rank = self.exchange.rank();
        let ranks = self.gather(contribution)?;
        let all = ranks.len();
        let incoming = (rank > 0)
            .then(|| self.upload(&self.combine(&ranks, 0..rank, rank)))
            .transpose()?;
        let final_state = self.upload(&self.combine(&ranks, 0..all, all))?;
        Ok((incoming, final_state))
    }

    /// The options of this rank's own pass before the exchange: from the
    /// initial state on rank 0, from zero elsewhere.
    fn local<'o>(&self, opts: &ForwardOptions<'o>) -> ForwardOptions<'o> {
        ForwardOptions {
            initial_state: if self.exchange.rank() == 0 {
                opts.initial_state
            } else {
                None
            },
            output_final_state: true,
            ..*opts
        }
    }
}

impl Context {
    /// The forward pass over a sequence split across ranks: `q`, `k`, `v`
    /// are this rank's contiguous slice of the positions (any length >= 1,
    /// the same b, h, d, e everywhere), `opts` the same on every rank (the
    /// initial state is read on rank 0). Returns this rank's slice of o and,
    /// when asked for, the final state of the whole sequence (on every
    /// rank). One all-gather of `8 + 4 b h d e` bytes per rank.
    ///
    /// Equals [`Context::forward`] over the whole sequence to rounding.
    /// Grouped heads (q with a multiple of k's heads) split like any call;
    /// packed batches (`cu_seqlens`) are not split.
    pub fn forward_sequence_parallel(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions,
        exchange: &dyn Exchange,
    ) -> Result<ForwardOutput> {
        let split = Split::new(self, exchange, q, k, v, opts)?;
        let call = validate::forward(self, q, k, v, opts)?;
        let o = self.new_tensor(&call.output_shape(opts.layout), v.dtype(), "o")?;
        // Block states and a scan to this slice's contribution; the block
        // states wait on the GPU while the ranks exchange, then a second
        // scan from the incoming state and the outputs finish the forward.
        let local = split.local(opts);
        let (contribution, kept) =
            pollster::block_on(self.forward_keep_async(q, k, v, &local, &o))?;
        let (incoming, final_state) = split.combined(&contribution)?;
        let from = ForwardOptions {
            initial_state: incoming.as_ref().or(local.initial_state),
            output_final_state: false,
            ..*opts
        };
        pollster::block_on(self.forward_resume_async(q, k, v, &from, &o, kept))?;
        Ok(ForwardOutput {
            o,
            final_state: opts.output_final_state.then_some(final_state),
        })
    }

    /// The backward pass over a sequence split across ranks, as
    /// [`Context::forward_sequence_parallel`]: `d_o` is this rank's slice of
    /// the output gradient; `opts.d_final_state`, the gradient of the whole
    /// sequence's final state, is read on the last rank. Returns this
    /// rank's slice of dq, dk, dv, and the initial state's gradient (that
    /// of the whole sequence on rank 0; elsewhere, that of the rank's
    /// incoming state). One all-gather of `8 + 8 b h d e` bytes per rank;
    /// every rank runs one backward and two states-only passes (about a
    /// third of a forward each).
    pub fn backward_sequence_parallel(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d_o: &Tensor,
        opts: &BackwardOptions,
        exchange: &dyn Exchange,
    ) -> Result<Gradients> {
        let fwd = &opts.forward;
        let split = Split::new(self, exchange, q, k, v, fwd)?;
        let (rank, all) = (exchange.rank(), exchange.ranks());
        let last = rank + 1 == all;
        // Neither needs the other ranks: this slice's contribution to the
        // state, and G_r, the gradient of its incoming state through its own
        // outputs, sum_t scale lambda^(t+1) q_t dO_t^T: scale lambda times
        // the final state of a states-only pass in reversed time with k = q
        // and v = dO. Both go out in the one exchange. dO, shaped like o,
        // stands in for the outputs neither pass writes.
        let local = split.local(fwd);
        let contribution =
            pollster::block_on(self.final_state_only_async(q, k, v, &local, d_o, false))?;
        // With grouped heads that pass runs over q's heads, each with its kv
        // head's slope, and a group's states are summed.
        let group = split.group;
        let q_slopes: Option<Vec<f32>> = fwd
            .slopes
            .map(|s| (0..s.len() * group).map(|j| s[j / group]).collect());
        let reversed = ForwardOptions {
            initial_state: None,
            output_final_state: true,
            slopes: q_slopes.as_deref(),
            ..*fwd
        };
        let s_rev =
            pollster::block_on(self.final_state_only_async(q, q, d_o, &reversed, d_o, true))?;
        let mut mine = self.read(&contribution)?;
        let state_len = mine.len();
        let mut g = sum_groups(&self.read(&s_rev)?, split.decay.per_head, group);
        split.decay.scale(&mut g, fwd.scale as f64, 1);
        // The last rank's final state is the sequence's, whose gradient is
        // given: what it sends is the whole gradient of its incoming state,
        // G + lambda^len dS_n.
        if let (true, Some(dsn)) = (last, opts.d_final_state) {
            let dsn: Vec<f64> = self.read(dsn)?.iter().map(|&x| x as f64).collect();
            let mut whole: Vec<f64> = g.iter().map(|&x| x as f64).collect();
            split.decay.add_decayed(&mut whole, &dsn, split.len);
            g = whole.into_iter().map(|x| x as f32).collect();
        }
        mine.extend_from_slice(&g);
        let (states, gradients): (Vec<_>, Vec<_>) = split
            .gather_values(&mine)?
            .into_iter()
            .map(|(len, mut both)| {
                let g = both.split_off(state_len);
                ((len, both), (len, g))
            })
            .unzip();
        let incoming = (rank > 0)
            .then(|| split.upload(&split.combine(&states, 0..rank, rank)))
            .transpose()?;
        // The gradient of this rank's final state: each later rank's G,
        // decayed over the ranks between (the given dS_n on the last).
        let d_final = match last {
            true => None,
            false => {
                let mut acc = vec![0.0; state_len];
                for r in rank + 1..all {
                    let steps: usize = gradients[rank + 1..r].iter().map(|(len, _)| len).sum();
                    split.decay.add_decayed(&mut acc, &gradients[r].1, steps);
                }
                Some(split.upload(&acc)?)
            }
        };
        let from = ForwardOptions {
            initial_state: incoming.as_ref().or(fwd.initial_state),
            output_final_state: false,
            ..*fwd
        };
        self.backward(
            q,
            k,
            v,
            d_o,
            &BackwardOptions {
                forward: from,
                d_final_state: d_final.as_ref().or(opts.d_final_state),
            },
        )
    }
}
