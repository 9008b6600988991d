//! The token-by-token recurrence: the `recurrent` forward method, and the
//! decode step that serves a batch of requests against a cache of states.

use super::{bind, dispatch, pipelines, Common, Io, Launch, Output};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::Pass;
use crate::layout::{Dims, Layout};
use crate::ops::forward::{check_head_dims, check_scale, check_shape, check_slopes, check_tensor};
use crate::ops::plan::{self, Sequence, Window};
use crate::tensor::{DType, Tensor};

/// Columns of e one workgroup of the recurrent pass covers
/// (`4 * COLUMN_QUADS` in shaders/recurrent.wgsl).
const COLUMNS: usize = 128;

pub(crate) async fn record(
    ctx: &Context,
    launch: &Launch<'_>,
    io: &Io<'_>,
    slots: Option<&[i32]>,
) -> Result<()> {
    let [pipe] = pipelines(ctx, [Pass::Recurrent], launch.storage).await?;
    let inner = &ctx.inner;
    let common = Common::new(ctx, launch);
    // The slot map is bound in either mode; sequence mode never reads it.
    let map = slots.unwrap_or(&[0]);
    let slot_bytes = (map.len() * 4) as u64;
    let slot_buffer = inner.pool.take(
        &inner.device,
        "slots",
        slot_bytes,
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
    );
    inner
        .queue
        .write_buffer(slot_buffer.buffer(), 0, bytemuck::cast_slice(map));
    let e_tiles = launch.dims.e.div_ceil(COLUMNS);
    super::submit_pass(ctx, "recurrent", |pass| {
        for (i, s) in launch.segments.iter().enumerate() {
            let bindings = [
                bind(io.q.buffer(), s.q),
                bind(io.k.buffer(), s.k),
                bind(io.v.buffer(), s.v),
                bind(io.o, s.o),
                bind(io.state.buffer(), s.state),
                bind(
                    slot_buffer.buffer(),
                    Window {
                        offset: 0,
                        size: slot_bytes,
                        base: 0,
                    },
                ),
            ];
            dispatch(
                ctx,
                pass,
                &common,
                &pipe,
                i,
                &bindings,
                s.bh_count * e_tiles,
            );
        }
    })
    .await
}

/// Options of [`Context::decode_step`].
#[derive(Clone, Copy, Debug)]
pub struct DecodeOptions<'a> {
    /// Per-head decay slopes (`None`: no decay), as in the forward pass.
    pub slopes: Option<&'a [f32]>,
    /// Multiplies `q`.
    pub scale: f32,
}

impl Default for DecodeOptions<'_> {
    fn default() -> Self {
        DecodeOptions {
            slopes: None,
            scale: 1.0,
        }
    }
}

/// Checks slot indices against a cache of `cache_slots` and returns them.
fn check_slots(slots: &[i32], cache_slots: usize) -> Result<()> {
    let mut owner = vec![usize::MAX; cache_slots];
    for (request, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let s = slot as usize;
        if s >= cache_slots {
            return Err(Error::SlotOutOfRange {
                request,
                slot: slot as i64,
                slots: cache_slots,
            });
        }
        if owner[s] != usize::MAX {
            return Err(Error::DuplicateSlot {
                slot: slot as i64,
                first: owner[s],
                second: request,
            });
        }
        owner[s] = request;
    }
    Ok(())
}

impl Context {
    /// One decoding step for a batch of requests: for request `r` and head
    /// `h`, with `S = cache[slots[r], h]`,
    /// `S = lambda_h S + k^T v; o = scale q S`, the state updated in place.
    ///
    /// `q`, `k`: `(batch, h, d)`; `v`: `(batch, h, e)`; `cache`:
    /// `(cache_slots, h, d, e)` in f32; `slots`: one per request, a negative
    /// slot marks padding (its output is zero, no state is touched). Each
    /// step reads and writes each used state once: memory stays flat
    /// however long the conversation. Returns `o`, `(batch, h, e)`.
    ///
    /// A new request starts from a zeroed slot (write zeros, or the state a
    /// prefill returned, into the cache).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_step(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut Tensor,
        slots: &[i32],
        opts: &DecodeOptions,
    ) -> Result<Tensor> {
        pollster::block_on(self.decode_step_async(q, k, v, cache, slots, opts))
    }

    /// Async form of [`Context::decode_step`].
    pub async fn decode_step_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut Tensor,
        slots: &[i32],
        opts: &DecodeOptions<'_>,
    ) -> Result<Tensor> {
        self.check_lost()?;
        for (arg, t) in [("q", q), ("k", k), ("v", v)] {
            check_tensor(self, arg, t, q.dtype())?;
        }
        check_tensor(self, "cache", cache, DType::F32)?;
        let names = ["batch", "heads", "d", "e"];
        let qs = q.shape();
        if qs.len() != 3 {
            return Err(Error::Rank {
                arg: "q",
                expected: 3,
                what: "(batch, heads, d)",
                got: qs.to_vec(),
            });
        }
        if let Some(i) = qs.iter().position(|&x| x == 0) {
            return Err(Error::Empty {
                arg: "q",
                dim: names[i],
            });
        }
        let (batch, h, d) = (qs[0], qs[1], qs[2]);
        check_shape("k", k, qs, ["batch", "heads", "d", ""], "q")?;
        let e = v.shape().get(2).copied().unwrap_or(0);
        if v.shape().len() == 3 && e == 0 {
            return Err(Error::Empty { arg: "v", dim: "e" });
        }
        check_shape("v", v, &[batch, h, e], ["batch", "heads", "e", ""], "q")?;
        check_head_dims(d, e)?;
        let cache_slots = cache.shape().first().copied().unwrap_or(0);
        check_shape(
            "cache",
            cache,
            &[cache_slots, h, d, e],
            names,
            "(slots, heads, d, e)",
        )?;
        if slots.len() != batch {
            return Err(Error::ShapeMismatch {
                arg: "slots",
                dim: "batch",
                got: slots.len(),
                reference: "q",
                expected: batch,
            });
        }
        check_slots(slots, cache_slots)?;
        check_slopes(opts.slopes, h)?;
        check_scale(opts.scale)?;

        let dims = Dims {
            b: batch,
            h,
            n: 1,
            d,
            e,
        };
        let whole = [Sequence {
            start: 0,
            len: 1,
            first_state: 0,
        }];
        let mut segments = plan::plan(
            Layout::Bhnd,
            &dims,
            &super::limits(self, q.dtype()),
            &whole,
            plan::Needs::RECURRENT,
        )?;
        // Slots can point anywhere in the cache: bind all of it.
        let cache_bytes = cache.size_bytes();
        if cache_bytes > self.inner.max_binding {
            return Err(Error::TooLarge {
                arg: "cache",
                bytes: cache_bytes,
                limit: self.inner.max_binding,
                which: "max_storage_buffer_binding_size",
            });
        }
        for s in &mut segments {
            s.state = Window {
                offset: 0,
                size: cache_bytes,
                base: 0,
            };
            s.state_base = 0;
        }
        let o = self.empty_as(&[batch, h, e], v.dtype(), "o")?;
        let launch = Launch {
            dims,
            layout: Layout::Bhnd,
            scale: opts.scale,
            slopes: opts.slopes,
            starts_from_state: true,
            slotted: true,
            storage: self.storage(q.dtype()),
            reversed: [false; 4],
            segments,
        };
        let output = Output::new(self, &o)?;
        let io = Io {
            q,
            k,
            v,
            o: output.buffer(),
            state: cache,
        };
        record(self, &launch, &io, Some(slots)).await?;
        output.finish(self).await?;
        Ok(o)
    }
}
