//! Decoding: one new token for each of a batch of requests, against a cache
//! of their states.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::launch::{Io, Launch};
use crate::kernels::pack::Output;
use crate::kernels::recurrent;
use crate::layout::Layout;
use crate::plan::{self, Needs, Sequence, Window};
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
        let o = self.empty_as(&[dims.b, dims.h, dims.e], v.dtype(), "o")?;
        let output = Output::new(&mut rec, &o)?;
        let limits = super::limits(self, q.dtype(), output.element_bytes(), 4);
        let mut segments = plan::plan(Layout::Bhnd, &dims, &limits, &whole, Needs::recurrent(1))?;
        // Slots can point anywhere in the cache: bind all of it.
        let cache_bytes = cache.size_bytes();
        let max_binding = self.rt().max_binding();
        if cache_bytes > max_binding {
            return Err(Error::TooLarge {
                arg: "cache",
                bytes: cache_bytes,
                limit: max_binding,
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
        recurrent::record(&mut rec, &setup, &launch, &io, Some(slots)).await?;
        output.finish(&mut rec).await?;
        rec.submit().await?;
        Ok(o)
    }
}
