//! Decoding: one new token for each of a batch of requests, against a cache
//! of their states.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::launch::{Io, Launch};
use crate::kernels::pack::Output;
use crate::kernels::recurrent::{self, SlotMaps};
use crate::layout::Layout;
use crate::plan::{self, Needs, Segment, Sequence, Window};
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
        let dims = validate::decode(self, q, k, v, cache, slots, opts)?;
        let whole = [Sequence {
            start: 0,
            len: 1,
            first_state: 0,
        }];
        let mut rec = Recorder::new(self.rt(), "decode");
        let o = self.new_tensor(&[dims.b, dims.h, dims.e], v.dtype(), "o")?;
        let output = Output::new(&mut rec, &o)?;
        let limits = super::limits(self, q.dtype(), output.element_bytes(), 4);
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
            ..Launch::new(dims, Layout::Bhnd, setup.storage(q.dtype()), segments)
        };
        let io = Io {
            q: q.buffer(),
            k: k.buffer(),
            v: v.buffer(),
            o: output.buffer(),
            state: cache.buffer(),
        };
        recurrent::record(&mut rec, &setup, &launch, &io, Some(&maps)).await?;
        output.finish(&mut rec).await?;
        rec.submit().await?;
        Ok(o)
    }
}

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
        if slot < 0 {
            return if first_window { -1 } else { -2 };
        }
        let s = slot as usize;
        if (self.first..self.end).contains(&s) {
            (s - self.first) as i32
        } else {
            -2
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
    Ok((0..slots)
        .step_by(per)
        .map(|first| {
            let end = (first + per).min(slots);
            let start = first as u64 * slot_bytes / align * align;
            CacheWindow {
                first,
                end,
                window: Window {
                    offset: start,
                    size: end as u64 * slot_bytes - start,
                    base: 0,
                },
                base: ((first as u64 * slot_bytes - start) / 4) as u32,
            }
        })
        .collect())
}
