//! GPU timing with timestamp queries: each op's compute pass writes a
//! timestamp at its start and end while timing is on.

use std::sync::Mutex;

use crate::context::Context;
use crate::error::{Error, Result};

pub(crate) struct Timer {
    queries: wgpu::QuerySet,
    capacity: u32,
    used: u32,
    overflow: bool,
}

/// Where one pass writes its two timestamps.
pub(crate) struct Stamps {
    pub queries: wgpu::QuerySet,
    pub begin: u32,
}

impl Stamps {
    pub(crate) fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(self.begin),
            end_of_pass_write_index: Some(self.begin + 1),
        }
    }
}

pub(crate) type TimerSlot = Mutex<Option<Timer>>;

impl Context {
    /// True when the device can time GPU work with timestamp queries.
    pub fn can_time(&self) -> bool {
        self.inner
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Starts timing: until [`Context::finish_timing`], every op records the
    /// GPU time of its compute pass (up to `passes` of them). Needs the
    /// `TIMESTAMP_QUERY` feature ([`Context::can_time`]).
    pub fn start_timing(&self, passes: u32) -> Result<()> {
        if !self.can_time() {
            return Err(Error::InvalidValue {
                arg: "timing",
                value: self.inner.adapter_info.name.clone(),
                reason: "this adapter has no TIMESTAMP_QUERY: time with the wall clock instead",
            });
        }
        let capacity = passes.clamp(1, wgpu::QUERY_SET_MAX_QUERIES / 2) * 2;
        let queries = self
            .inner
            .device
            .create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timing"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity,
            });
        *self.timer().lock().unwrap_or_else(|p| p.into_inner()) = Some(Timer {
            queries,
            capacity,
            used: 0,
            overflow: false,
        });
        Ok(())
    }

    fn timer(&self) -> &TimerSlot {
        &self.inner.timer
    }

    /// How many passes have been timed since [`Context::start_timing`]
    /// (0 when timing is off): an op may run several passes, so callers
    /// group [`Context::finish_timing`]'s times by the difference.
    pub fn timed_passes(&self) -> usize {
        self.timer()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |t| t.used as usize / 2)
    }

    /// The timestamp pair of the next pass, while timing is on.
    pub(crate) fn next_stamps(&self) -> Option<Stamps> {
        let mut slot = self.timer().lock().unwrap_or_else(|p| p.into_inner());
        let timer = slot.as_mut()?;
        if timer.used + 2 > timer.capacity {
            timer.overflow = true;
            return None;
        }
        let begin = timer.used;
        timer.used += 2;
        Some(Stamps {
            queries: timer.queries.clone(),
            begin,
        })
    }

    /// Stops timing and returns the GPU time of every pass recorded since
    /// [`Context::start_timing`], in seconds, in submission order. Blocks.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish_timing(&self) -> Result<Vec<f64>> {
        pollster::block_on(self.finish_timing_async())
    }

    /// Async form of [`Context::finish_timing`].
    pub async fn finish_timing_async(&self) -> Result<Vec<f64>> {
        let timer = self
            .timer()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(timer) = timer else {
            return Err(Error::InvalidValue {
                arg: "timing",
                value: "off".into(),
                reason: "start_timing was not called",
            });
        };
        if timer.overflow {
            return Err(Error::InvalidValue {
                arg: "timing",
                value: (timer.capacity / 2).to_string(),
                reason: "more passes ran than start_timing was told to expect",
            });
        }
        if timer.used == 0 {
            return Ok(Vec::new());
        }
        let bytes = timer.used as u64 * 8;
        let inner = &self.inner;
        let resolve = inner.pool.take(
            &inner.device,
            "timestamps",
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        );
        let staging = self.empty(&[bytes as usize / 4], "timestamps")?;
        let mut encoder = inner.device.create_command_encoder(&Default::default());
        encoder.resolve_query_set(&timer.queries, 0..timer.used, resolve.buffer(), 0);
        encoder.copy_buffer_to_buffer(resolve.buffer(), 0, staging.buffer(), 0, bytes);
        inner.queue.submit([encoder.finish()]);
        let raw = self.read_async(&staging).await?;
        let ticks: &[u64] = bytemuck::cast_slice(&raw);
        let period = inner.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(ticks
            .chunks(2)
            .map(|p| p[1].saturating_sub(p[0]) as f64 * period)
            .collect())
    }
}
