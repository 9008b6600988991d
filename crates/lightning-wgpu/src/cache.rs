//! Decode caches: the f32 states `(slots, h, d, e)` that decoding updates in
//! place, in one tensor or, past the device's largest buffer, in a
//! [`StateCache`] spread over several.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::runtime::recorder::Recorder;
use crate::tensor::{DType, Tensor};

/// A decode cache: what [`Context::decode_step`] reads and updates. An f32
/// tensor `(slots, h, d, e)` is one; a [`StateCache`] holds more slots than
/// one buffer can.
pub trait Cache {
    /// The tensors holding the slots, in order: each `(slots_i, h, d, e)`
    /// in f32, every one but the last with the same number of slots.
    fn shards(&self) -> &[Tensor];
}

impl Cache for Tensor {
    fn shards(&self) -> &[Tensor] {
        std::slice::from_ref(self)
    }
}

/// A decode cache of `slots` f32 states `(h, d, e)` over as many buffers as
/// it needs: on the H200 one buffer holds at most 4 GiB less 2 MiB, fewer
/// than 2048 states at `h = 32, d = e = 128`. Made by
/// [`Context::state_cache`], zeroed; filled with [`Context::write_slots`].
///
/// ```no_run
/// use lightning_wgpu::{Context, DecodeOptions};
///
/// let ctx = Context::new()?;
/// let (h, d, e) = (4, 64, 64);
/// let mut cache = ctx.state_cache(3000, h, d, e)?;
/// let token = |w: usize| ctx.tensor(&vec![0.1; 2 * h * w], &[2, h, w]);
/// let o = ctx.decode_step(&token(d)?, &token(d)?, &token(e)?, &mut cache, &[2999, 7], &DecodeOptions::default())?;
/// assert_eq!(o.shape(), &[2, h, e]);
/// # Ok::<(), lightning_wgpu::Error>(())
/// ```
#[derive(Debug)]
pub struct StateCache {
    shards: Vec<Tensor>,
    shape: [usize; 4],
}

impl Cache for StateCache {
    fn shards(&self) -> &[Tensor] {
        &self.shards
    }
}

impl StateCache {
    /// `(slots, h, d, e)`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// How many states it holds.
    pub fn slots(&self) -> usize {
        self.shape[0]
    }
}

/// Where slot `slot` is: its shard and its slot within it.
pub(crate) fn locate(shards: &[Tensor], slot: usize) -> (usize, usize) {
    let per = shards[0].shape()[0];
    (slot / per, slot % per)
}

/// The slots of all shards together.
pub(crate) fn slot_count(shards: &[Tensor]) -> usize {
    shards.iter().map(|t| t.shape()[0]).sum()
}

impl Context {
    /// A zeroed decode cache of `slots` states `(h, d, e)` in f32, over
    /// several buffers where one cannot hold them all. Blocks; see
    /// [`Context::state_cache_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn state_cache(&self, slots: usize, h: usize, d: usize, e: usize) -> Result<StateCache> {
        pollster::block_on(self.state_cache_async(slots, h, d, e))
    }

    /// Async form of [`Context::state_cache`].
    pub async fn state_cache_async(
        &self,
        slots: usize,
        h: usize,
        d: usize,
        e: usize,
    ) -> Result<StateCache> {
        if let Some((dim, _)) = [("slots", slots), ("heads", h), ("d", d), ("e", e)]
            .into_iter()
            .find(|&(_, x)| x == 0)
        {
            return Err(Error::Empty { arg: "cache", dim });
        }
        let limit = self.rt().max_buffer();
        let slot_bytes = h
            .checked_mul(d)
            .and_then(|x| x.checked_mul(e))
            .and_then(|x| x.checked_mul(4))
            .map_or(u64::MAX, |b| b as u64);
        // As many slots per buffer as fit: each further buffer's call costs
        // more than a short binding window (docs/perf-log.md).
        let per = (limit / slot_bytes).min(slots as u64) as usize;
        if per == 0 {
            return Err(Error::TooLarge {
                arg: "cache slot",
                bytes: slot_bytes,
                limit,
                which: "max_buffer_size",
            });
        }
        // Pooled buffers hold whatever they held: zero them on the GPU.
        let mut rec = Recorder::new(self.rt(), "state cache");
        let mut shards = Vec::with_capacity(slots.div_ceil(per));
        for first in (0..slots).step_by(per) {
            let t = self.new_f32(&[per.min(slots - first), h, d, e], "cache")?;
            rec.clear(t.buffer(), t.offset(), t.size_bytes());
            shards.push(t);
        }
        rec.submit().await?;
        Ok(StateCache {
            shards,
            shape: [slots, h, d, e],
        })
    }

    /// Writes `states`, f32 `(count, h, d, e)`, into slots `first ..
    /// first + count` of `cache` (a prefill's final states into the slots of
    /// new requests), on the GPU after the work submitted so far. Blocks;
    /// see [`Context::write_slots_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write_slots(
        &self,
        cache: &mut (impl Cache + ?Sized),
        first: usize,
        states: &Tensor,
    ) -> Result<()> {
        pollster::block_on(self.write_slots_async(cache, first, states))
    }

    /// Async form of [`Context::write_slots`].
    pub async fn write_slots_async(
        &self,
        cache: &mut (impl Cache + ?Sized),
        first: usize,
        states: &Tensor,
    ) -> Result<()> {
        let shards = cache.shards();
        let slot = self.slot_shape(shards)?;
        crate::validate::tensor(self, "states", states, DType::F32)?;
        let count = states.shape().first().copied().unwrap_or(0);
        crate::validate::shape(
            "states",
            states,
            &[count, slot[0], slot[1], slot[2]],
            ["count", "heads", "d", "e"],
            "the cache's slots (count, heads, d, e)",
        )?;
        let range = self.slot_range(shards, first, count)?;
        states.needs("states", wgpu::BufferUsages::COPY_SRC, "COPY_SRC")?;
        let slot_bytes = (slot.iter().product::<usize>() * 4) as u64;
        let mut rec = Recorder::new(self.rt(), "write slots");
        for run in range {
            let t = &shards[run.shard];
            t.needs("cache", wgpu::BufferUsages::COPY_DST, "COPY_DST")?;
            rec.copy(
                states.buffer(),
                states.offset() + run.from as u64 * slot_bytes,
                t.buffer(),
                t.offset() + run.within as u64 * slot_bytes,
                run.slots as u64 * slot_bytes,
            );
            t.written();
        }
        rec.submit().await
    }

    /// Reads slots `first .. first + count` of `cache` back to the host,
    /// `(count, h, d, e)` in order. Blocks; see [`Context::read_slots_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_slots(
        &self,
        cache: &(impl Cache + ?Sized),
        first: usize,
        count: usize,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.read_slots_async(cache, first, count))
    }

    /// Async form of [`Context::read_slots`].
    pub async fn read_slots_async(
        &self,
        cache: &(impl Cache + ?Sized),
        first: usize,
        count: usize,
    ) -> Result<Vec<f32>> {
        let shards = cache.shards();
        let slot = self.slot_shape(shards)?;
        let size = slot.iter().product::<usize>();
        let mut out = Vec::with_capacity(count.saturating_mul(size).min(1 << 28));
        for Run {
            shard,
            within,
            slots: n,
            ..
        } in self.slot_range(shards, first, count)?
        {
            let t = &shards[shard];
            t.needs("cache", wgpu::BufferUsages::COPY_SRC, "COPY_SRC")?;
            let bytes = self
                .rt()
                .read_bytes(
                    t.buffer(),
                    t.offset() + (within * size * 4) as u64,
                    (n * size * 4) as u64,
                    "cache",
                )
                .await?;
            out.extend(crate::tensor::decode(&bytes, DType::F32, n * size));
        }
        Ok(out)
    }

    /// The `(h, d, e)` of every slot of a cache whose shards are consistent.
    fn slot_shape(&self, shards: &[Tensor]) -> Result<[usize; 3]> {
        crate::validate::cache_shards(self, shards)
    }

    /// Slots `first .. first + count` as runs within shards.
    fn slot_range(&self, shards: &[Tensor], first: usize, count: usize) -> Result<Vec<Run>> {
        let total = slot_count(shards);
        if first.checked_add(count).is_none_or(|end| end > total) || count == 0 {
            return Err(Error::InvalidValue {
                arg: "first",
                value: format!("{first} (count {count}, cache slots {total})"),
                reason: "the slots must lie inside the cache, at least one",
            });
        }
        let per = shards[0].shape()[0];
        let mut runs = Vec::new();
        let mut slot = first;
        while slot < first + count {
            let (shard, within) = (slot / per, slot % per);
            let slots = (shards[shard].shape()[0] - within).min(first + count - slot);
            runs.push(Run {
                shard,
                within,
                from: slot - first,
                slots,
            });
            slot += slots;
        }
        Ok(runs)
    }
}

/// Consecutive slots of a range that lie in one shard.
struct Run {
    shard: usize,
    /// The first's slot within the shard.
    within: usize,
    /// The first's place in the range.
    from: usize,
    slots: usize,
}
