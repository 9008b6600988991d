//! Decoding: one new token for each of a batch of requests, against a cache
//! of their states.

use crate::cache::{self, Cache};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::launch::{Io, Launch};
use crate::kernels::pack::Output;
use crate::kernels::recurrent::{self, SlotMaps};
use crate::layout::{Dims, Layout};
use crate::plan::{self, HeadView, Needs, Segment, Sequence, Starts, Window};
use crate::runtime::recorder::Recorder;
use crate::tensor::Tensor;
use crate::validate;

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

impl Context {
    /// One decoding step for a batch of requests: for request `r` and head
    /// `h`, with `S = cache[slots[r], h]`,
    /// `S = lambda_h S + k^T v; o = scale q S`, the state updated in place.
    ///
    /// `q`, `k`: `(batch, h, d)`; `v`: `(batch, h, e)`; `cache`: an f32
    /// tensor `(cache_slots, h, d, e)`, or a [`crate::StateCache`] where
    /// one buffer cannot hold them all; `slots`: one per request, a negative
    /// slot marks padding (its output is zero, no state is touched). Each
    /// step reads and writes each used state once: memory stays flat
    /// however long the conversation. Returns `o`, `(batch, h, e)`.
    ///
    /// Grouped heads: q (and o) may have `G` times the heads of k, v and
    /// the cache; q heads `g G .. (g + 1) G` read kv head g's state, which
    /// the step updates once.
    ///
    /// A new request starts from a zeroed slot (write zeros, or the state a
    /// prefill returned, into the cache).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_step(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut (impl Cache + ?Sized),
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
        cache: &mut (impl Cache + ?Sized),
        slots: &[i32],
        opts: &DecodeOptions<'_>,
    ) -> Result<Tensor> {
        let (dims, group) = validate::decode(self, q, k, v, cache.shards(), slots, opts)?;
        let mut o = self.new_tensor(&[dims.b, dims.h * group, dims.e], v.dtype(), "o")?;
        self.decode_step_into_async(q, k, v, cache, slots, opts, &mut o)
            .await?;
        Ok(o)
    }

    /// [`Context::decode_step`] into an output the caller owns, `(batch,
    /// h, e)`, stored like v or in f32.
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    pub fn decode_step_into(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut (impl Cache + ?Sized),
        slots: &[i32],
        opts: &DecodeOptions,
        o: &mut Tensor,
    ) -> Result<()> {
        pollster::block_on(self.decode_step_into_async(q, k, v, cache, slots, opts, o))
    }

    /// Async form of [`Context::decode_step_into`].
    #[allow(clippy::too_many_arguments)]
    pub async fn decode_step_into_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut (impl Cache + ?Sized),
        slots: &[i32],
        opts: &DecodeOptions<'_>,
        o: &mut Tensor,
    ) -> Result<()> {
        let mut rec = Recorder::new(self.rt(), "decode");
        self.record_decode(&mut rec, q, k, v, cache.shards(), slots, opts, o)
            .await?;
        rec.submit().await
    }

    /// Records [`Context::decode_step_into`] into the caller's `encoder`,
    /// which the caller submits. Blocks only while the pipeline is first
    /// compiled.
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    pub fn encode_decode_step(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut (impl Cache + ?Sized),
        slots: &[i32],
        opts: &DecodeOptions,
        o: &mut Tensor,
    ) -> Result<()> {
        pollster::block_on(self.encode_decode_step_async(encoder, q, k, v, cache, slots, opts, o))
    }

    /// Async form of [`Context::encode_decode_step`].
    #[allow(clippy::too_many_arguments)]
    pub async fn encode_decode_step_async(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut (impl Cache + ?Sized),
        slots: &[i32],
        opts: &DecodeOptions<'_>,
        o: &mut Tensor,
    ) -> Result<()> {
        let mut rec = Recorder::into_encoder(self.rt(), "decode", encoder);
        self.record_decode(&mut rec, q, k, v, cache.shards(), slots, opts, o)
            .await?;
        rec.finish().await
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record_decode(
        &self,
        rec: &mut Recorder<'_>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &[Tensor],
        slots: &[i32],
        opts: &DecodeOptions<'_>,
        o: &Tensor,
    ) -> Result<()> {
        let (dims, group) = validate::decode(self, q, k, v, cache, slots, opts)?;
        validate::decode_output(self, (&dims, group), v, o)?;
        for shard in cache {
            shard.written();
        }
        o.written();
        let output = if o.dtype() == crate::DType::F32 {
            Output::direct(o)
        } else {
            Output::new(rec, o)?
        };
        let member = |first: usize| HeadView { step: group, first };
        // Grouped heads: member m of every group reads its q heads (and
        // writes its o heads) in place, one call each. All read the
        // requests' states from before this step: members but 0 from a copy
        // of them (request r in slot r, padding kept), member 0 from the
        // cache, which it updates.
        if group > 1 {
            for shard in cache {
                shard.needs("cache", wgpu::BufferUsages::COPY_SRC, "COPY_SRC")?;
            }
            let shape = [dims.b, dims.h, dims.d, dims.e];
            let taken = self.new_f32(&shape, "the requests' states")?;
            let work = self.new_f32(&shape, "one member's states")?;
            let slot_bytes = (dims.h * dims.d * dims.e * 4) as u64;
            take_states(rec, cache, slots, &taken);
            let own: Vec<i32> = (0..dims.b as i32)
                .zip(slots)
                .map(|(r, &s)| if s < 0 { -1 } else { r })
                .collect();
            for m in 1..group {
                rec.copy(
                    taken.buffer(),
                    taken.offset(),
                    work.buffer(),
                    work.offset(),
                    slot_bytes * dims.b as u64,
                );
                let call = ((q, k, v), (dims, member(m)), &output);
                self.record_slotted(rec, call, &work, &own, opts).await?;
            }
            for t in [taken, work] {
                if let Some(buffer) = t.into_buffer() {
                    rec.keep(buffer);
                }
            }
        }
        // A cache over several buffers: one call per shard, each updating
        // the requests whose slots it holds (the first writing the padding's
        // zero outputs) and skipping the rest.
        for (i, shard) in cache.iter().enumerate() {
            // Every negative slot the caller gave is padding (-1): SKIP
            // (-2) must mean only "another shard's".
            let local: Vec<i32> = slots
                .iter()
                .map(|&s| match s {
                    s if s < 0 && i == 0 => -1,
                    s if s < 0 => SKIP,
                    s => match cache::locate(cache, s as usize) {
                        (j, within) if j == i => within as i32,
                        _ => SKIP,
                    },
                })
                .collect();
            let call = ((q, k, v), (dims, member(0)), &output);
            self.record_slotted(rec, call, shard, &local, opts).await?;
        }
        output.finish(rec).await
    }

    /// Records one slotted recurrent call of `dims` (kv heads) against
    /// `cache`, q and o read (written) at `heads`.
    #[allow(clippy::type_complexity)]
    async fn record_slotted(
        &self,
        rec: &mut Recorder<'_>,
        ((q, k, v), (dims, heads), output): (
            (&Tensor, &Tensor, &Tensor),
            (Dims, HeadView),
            &Output<'_>,
        ),
        cache: &Tensor,
        slots: &[i32],
        opts: &DecodeOptions<'_>,
    ) -> Result<()> {
        let whole = [Sequence {
            start: 0,
            len: 1,
            first_state: 0,
        }];
        let mut limits = super::limits(self, q.dtype(), output.element_bytes(), 4);
        limits.heads = [heads, HeadView::default(), HeadView::default(), heads];
        limits.at = Starts {
            q: q.first_element(),
            k: k.first_element(),
            v: v.first_element(),
            o: output.first_element(),
            state: 0,
        };
        let segments = plan::plan(Layout::Bhnd, &dims, &limits, &whole, Needs::recurrent(1))?;
        // Slots can point anywhere in the cache: it is bound a window of
        // whole slots at a time, each window dispatched for every request
        // with a slot map of its own (requests elsewhere skip it).
        let windows = cache_windows(self, cache, dims.h * dims.d * dims.e)?;
        let mut all = Vec::with_capacity(windows.len() * segments.len());
        let mut maps = SlotMaps::default();
        for (i, w) in windows.iter().enumerate() {
            maps.push(slots.iter().map(|&s| w.local(s, i == 0)).collect());
            for s in &segments {
                all.push(Segment {
                    state: w.window,
                    state_base: w.base,
                    ..*s
                });
                maps.of_segment.push(i);
            }
        }
        let segments = all;
        let setup = *self.setup();
        let launch = Launch {
            scale: opts.scale,
            slopes: opts.slopes,
            starts_from_state: true,
            slotted: true,
            heads: limits.heads,
            ..Launch::new(dims, Layout::Bhnd, setup.storage(q.dtype()), segments)
        };
        let io = Io {
            q: q.buffer(),
            k: k.buffer(),
            v: v.buffer(),
            o: output.buffer(),
            state: cache.buffer(),
        };
        recurrent::record(rec, &setup, &launch, &io, Some(&maps)).await
    }
}

/// Records copying the state of each request from its slot of `cache` (its
/// shards) to slot r of `to` (one state per request); padding is skipped.
pub(crate) fn take_states(rec: &mut Recorder<'_>, cache: &[Tensor], slots: &[i32], to: &Tensor) {
    let slot_bytes = (cache[0].shape()[1..].iter().product::<usize>() * 4) as u64;
    for (r, &s) in slots.iter().enumerate().filter(|(_, &s)| s >= 0) {
        let (shard, within) = cache::locate(cache, s as usize);
        let from = &cache[shard];
        rec.copy(
            from.buffer(),
            from.offset() + within as u64 * slot_bytes,
            to.buffer(),
            to.offset() + r as u64 * slot_bytes,
            slot_bytes,
        );
    }
}

/// A request slot a call skips: its slot is in another shard (or, past the
/// first shard, it is padding whose zero output the first wrote).
const SKIP: i32 = -2;

/// A window of the cache: slots `[first, end)` bound at an aligned offset,
/// `base` the element offset of slot `first` inside it.
struct CacheWindow {
    first: usize,
    end: usize,
    window: Window,
    base: u32,
}

impl CacheWindow {
    /// Where request slot `slot` is in this window: its slot from the
    /// window's first, -1 for padding (in the first window only, which
    /// writes its zero output), and -2 for a slot elsewhere (skipped).
    fn local(&self, slot: i32, first_window: bool) -> i32 {
        if slot == SKIP {
            return SKIP;
        }
        if slot < 0 {
            return if first_window { -1 } else { SKIP };
        }
        let s = slot as usize;
        if (self.first..self.end).contains(&s) {
            (s - self.first) as i32
        } else {
            SKIP
        }
    }
}

/// The windows of whole slots of `size` elements each that cover the cache.
fn cache_windows(ctx: &Context, cache: &Tensor, size: usize) -> Result<Vec<CacheWindow>> {
    let rt = ctx.rt();
    let align = rt.limits().min_storage_buffer_offset_alignment as u64;
    let slot_bytes = (size * 4) as u64;
    let slots = cache.shape()[0];
    let per = (rt.max_binding().saturating_sub(align) / slot_bytes) as usize;
    if per == 0 {
        return Err(Error::TooLarge {
            arg: "cache slot",
            bytes: slot_bytes,
            limit: rt.max_binding(),
            which: "max_storage_buffer_binding_size",
        });
    }
    let at = cache.offset();
    Ok((0..slots)
        .step_by(per)
        .map(|first| {
            let end = (first + per).min(slots);
            let lo = at + first as u64 * slot_bytes;
            let start = lo / align * align;
            CacheWindow {
                first,
                end,
                window: Window {
                    offset: start,
                    size: at + end as u64 * slot_bytes - start,
                    base: 0,
                },
                base: ((lo - start) / 4) as u32,
            }
        })
        .collect())
}
