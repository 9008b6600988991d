//! Multi-token decoding with rollback, for speculative decoding: a request
//! verifies several draft tokens in one call, the cache stays as it was,
//! and the caller then commits how many tokens each request accepted. The
//! state after every draft token is kept (on the GPU), so neither a
//! rejected token nor an accepted one is computed twice.
//!
//! It runs the decode kernel once per draft position on a scratch copy of
//! the requests' states, keeping a copy after each, all in one submission.

use crate::cache::Cache;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::ops::decode::DecodeOptions;
use crate::runtime::recorder::Recorder;
use crate::tensor::{DType, Tensor};

/// The states of a [`Context::decode_draft`] call, until
/// [`Context::commit_draft`] takes the accepted ones.
#[derive(Debug)]
pub struct Draft {
    /// `(t, batch, h, d, e)` f32: request r's state after draft token i at `[i, r]`.
    states: Tensor,
    slots: Vec<i32>,
    tokens: Vec<usize>,
    /// `(h, d, e)` of a state, to check the cache it is committed to.
    state_dims: [usize; 3],
}

impl Draft {
    /// The state of every request after each draft token, `(t, batch, h, d,
    /// e)` f32 (entries past a request's token count are unspecified).
    pub fn states(&self) -> &Tensor {
        &self.states
    }

    /// The draft tokens of each request.
    pub fn tokens(&self) -> &[usize] {
        &self.tokens
    }
}

impl Context {
    /// Decodes up to `t` tokens per request without touching the cache:
    /// `q` `(t, batch, hq, d)`, `k` `(t, batch, h, d)` and `v` `(t, batch, h,
    /// e)`, token-major (each token's `(batch, heads, *)` contiguous), `hq`
    /// equal to `h` or a multiple of it (grouped heads: q heads `g G ..
    /// (g+1) G` read kv head g's state, as in [`Context::decode_step`]);
    /// request r uses the first `tokens[r]` of them (0 to t; the rest is
    /// padding) from state `cache[slots[r]]` (a negative slot: padding).
    /// Returns o `(t, batch, hq, e)` in f32 (zero past a request's tokens)
    /// and the [`Draft`] of per-token states (per kv head), `t * batch * h *
    /// d * e * 4` bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_draft(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &(impl Cache + ?Sized),
        slots: &[i32],
        tokens: &[usize],
        opts: &DecodeOptions,
    ) -> Result<(Tensor, Draft)> {
        pollster::block_on(self.decode_draft_async(q, k, v, cache, slots, tokens, opts))
    }

    /// Async form of [`Context::decode_draft`].
    #[allow(clippy::too_many_arguments)]
    pub async fn decode_draft_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &(impl Cache + ?Sized),
        slots: &[i32],
        tokens: &[usize],
        opts: &DecodeOptions<'_>,
    ) -> Result<(Tensor, Draft)> {
        let (t, batch, hq, h, d, e) = draft_dims(q, k, v)?;
        if tokens.len() != batch {
            return Err(Error::ShapeMismatch {
                arg: "tokens",
                dim: "len",
                got: tokens.len(),
                reference: "q (batch)",
                expected: batch,
            });
        }
        if let Some((r, &n)) = tokens.iter().enumerate().find(|(_, &n)| n > t) {
            return Err(Error::InvalidValue {
                arg: "tokens",
                value: format!("tokens[{r}] = {n}"),
                reason: "a request cannot take more tokens than q holds (t)",
            });
        }
        let size = h * d * e;
        let scratch = self.new_f32(&[batch, h, d, e], "draft state")?;
        let states = self.new_f32(&[t, batch, h, d, e], "draft states")?;
        let o = self.new_f32(&[t, batch, hq, e], "o")?;
        // A token's slice of a token-major tensor: `(batch, heads, width)` at row i.
        let token = |x: &Tensor, i: usize, width: usize| {
            let heads = x.shape()[2];
            let bytes = (batch * heads * width * x.dtype().size()) as u64;
            Tensor::from_buffer(
                self,
                x.buffer(),
                x.offset() + i as u64 * bytes,
                &[batch, heads, width],
                x.dtype(),
            )
        };
        // The caller's slots against the real cache: range, duplicates, shapes
        // (draft_dims took k and v with the same heads, q with a multiple).
        crate::validate::decode(
            self,
            &token(q, 0, d)?,
            &token(k, 0, d)?,
            &token(v, 0, e)?,
            cache.shards(),
            slots,
            opts,
        )?;
        let mut rec = Recorder::new(self.rt(), "decode draft");
        let slot_bytes = (size * 4) as u64;
        super::decode::take_states(&mut rec, cache.shards(), slots, &scratch);
        for i in 0..t {
            // Request r in slot r of the scratch while it has tokens left.
            let step: Vec<i32> = (0..batch)
                .map(|r| {
                    if slots.get(r).is_some_and(|&s| s >= 0) && tokens[r] > i {
                        r as i32
                    } else {
                        -1
                    }
                })
                .collect();
            let o_i = Tensor::from_buffer(
                self,
                o.buffer(),
                o.offset() + (i * batch * hq * e * 4) as u64,
                &[batch, hq, e],
                DType::F32,
            )?;
            self.record_decode(
                &mut rec,
                &token(q, i, d)?,
                &token(k, i, d)?,
                &token(v, i, e)?,
                std::slice::from_ref(&scratch),
                &step,
                opts,
                &o_i,
            )
            .await?;
            rec.copy(
                scratch.buffer(),
                scratch.offset(),
                states.buffer(),
                states.offset() + i as u64 * batch as u64 * slot_bytes,
                batch as u64 * slot_bytes,
            );
        }
        rec.submit().await?;
        let draft = Draft {
            states,
            slots: slots.to_vec(),
            tokens: tokens.to_vec(),
            state_dims: [h, d, e],
        };
        Ok((o, draft))
    }

    /// Commits a draft: `cache[slots[r]]` becomes request r's state after
    /// `accepted[r]` of its draft tokens (0 leaves it as it was; at most
    /// `tokens[r]`).
    pub fn commit_draft(
        &self,
        cache: &mut (impl Cache + ?Sized),
        draft: &Draft,
        accepted: &[usize],
    ) -> Result<()> {
        pollster::block_on(self.commit_draft_async(cache, draft, accepted))
    }

    /// Async form of [`Context::commit_draft`].
    pub async fn commit_draft_async(
        &self,
        cache: &mut (impl Cache + ?Sized),
        draft: &Draft,
        accepted: &[usize],
    ) -> Result<()> {
        let [h, d, e] = draft.state_dims;
        let shards = cache.shards();
        let slot_shape = crate::validate::cache_shards(self, shards)?;
        if slot_shape != [h, d, e] {
            return Err(Error::InvalidValue {
                arg: "cache",
                value: format!("slots of {slot_shape:?}"),
                reason: "must be the f32 (slots, h, d, e) cache the draft was decoded from",
            });
        }
        let cache_slots = crate::cache::slot_count(shards);
        if accepted.len() != draft.tokens.len() {
            return Err(Error::ShapeMismatch {
                arg: "accepted",
                dim: "len",
                got: accepted.len(),
                reference: "the draft's requests",
                expected: draft.tokens.len(),
            });
        }
        if let Some((r, (&a, &t))) = accepted
            .iter()
            .zip(&draft.tokens)
            .enumerate()
            .find(|(_, (&a, &t))| a > t)
        {
            return Err(Error::InvalidValue {
                arg: "accepted",
                value: format!("accepted[{r}] = {a} of {t} draft tokens"),
                reason: "a request cannot accept more tokens than it drafted",
            });
        }
        let batch = draft.tokens.len();
        let slot_bytes = (h * d * e * 4) as u64;
        for shard in shards {
            shard.written();
        }
        let mut rec = Recorder::new(self.rt(), "commit draft");
        for (r, (&a, &slot)) in accepted.iter().zip(&draft.slots).enumerate() {
            if a == 0 || slot < 0 {
                continue;
            }
            if slot as usize >= cache_slots {
                return Err(Error::SlotOutOfRange {
                    request: r,
                    slot: slot as i64,
                    slots: cache_slots,
                });
            }
            let (shard, within) = crate::cache::locate(shards, slot as usize);
            let at = ((a - 1) * batch + r) as u64 * slot_bytes;
            rec.copy(
                draft.states.buffer(),
                draft.states.offset() + at,
                shards[shard].buffer(),
                shards[shard].offset() + within as u64 * slot_bytes,
                slot_bytes,
            );
        }
        rec.submit().await
    }
}

/// `(t, batch, h, d, e)` of token-major q, k, v, with their errors.
/// `(t, batch, q heads, kv heads, d, e)` of a draft's inputs: k and v with
/// the same heads, q with those or a multiple (grouped heads).
fn draft_dims(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<(usize, usize, usize, usize, usize, usize)> {
    for (arg, x) in [("q", q), ("k", k), ("v", v)] {
        if x.shape().len() != 4 {
            return Err(Error::Rank {
                arg,
                expected: 4,
                what: "(t, batch, heads, width), token-major",
                got: x.shape().to_vec(),
            });
        }
    }
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    for (i, dim) in ["t", "batch", "heads", "d"].iter().enumerate() {
        // Grouped heads: k may have a divisor of q's heads (v has k's).
        let grouped = i == 2 && ks[2] > 0 && qs[2].is_multiple_of(ks[2]);
        if ks[i] != qs[i] && !grouped {
            return Err(Error::ShapeMismatch {
                arg: "k",
                dim,
                got: ks[i],
                reference: if i == 2 {
                    crate::validate::GROUPED
                } else {
                    "q"
                },
                expected: qs[i],
            });
        }
        if i < 3 && vs[i] != ks[i] {
            return Err(Error::ShapeMismatch {
                arg: "v",
                dim,
                got: vs[i],
                reference: "k",
                expected: ks[i],
            });
        }
    }
    if let Some(i) = qs.iter().position(|&x| x == 0) {
        return Err(Error::Empty {
            arg: "q",
            dim: ["t", "batch", "heads", "d"][i],
        });
    }
    let (t, batch, hq, h, d, e) = (qs[0], qs[1], qs[2], ks[2], qs[3], vs[3]);
    // Each token's slice must start on a 4-byte boundary.
    let odd = [batch * hq * d, batch * h * d, batch * h * e]
        .iter()
        .any(|x| x % 2 == 1);
    if q.dtype() != DType::F32 && odd {
        return Err(Error::InvalidValue {
            arg: "q",
            value: format!("{qs:?} {}", q.dtype()),
            reason: "half-precision drafts need batch * heads * d (of q and of k) and batch * heads * e even (each token's slice starts on a 4-byte boundary)",
        });
    }
    Ok((t, batch, hq, h, d, e))
}
