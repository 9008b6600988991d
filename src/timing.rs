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
    /// The name of each timed pass, in submission order.
    labels: Vec<&'static str>,
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
    /// GPU time of its compute passes (up to `passes` of them). While timing
    /// is on, an op of several kernels runs each in a pass of its own, so
    /// [`Context::finish_timing_by_pass`] can tell them apart. Needs the
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
            labels: Vec::new(),
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

    /// True between [`Context::start_timing`] and [`Context::finish_timing`].
    pub fn is_timing(&self) -> bool {
        self.timer()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The timestamp pair of the next pass, named `label`, while timing is on.
    pub(crate) fn next_stamps(&self, label: &'static str) -> Option<Stamps> {
        let mut slot = self.timer().lock().unwrap_or_else(|p| p.into_inner());
        let timer = slot.as_mut()?;
        if timer.used + 2 > timer.capacity {
            timer.overflow = true;
            return None;
        }
        let begin = timer.used;
        timer.used += 2;
        timer.labels.push(label);
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
        let passes = self.finish_timing_by_pass_async().await?;
        Ok(passes.into_iter().map(|(_, s)| s).collect())
    }

    /// As [`Context::finish_timing`], each time with the name of its pass:
    /// the kernel's file stem under `shaders/` (`block_output`, ...) or, for
    /// an op of one pass, the op (`recurrent`, `pack output`, ...).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish_timing_by_pass(&self) -> Result<Vec<(&'static str, f64)>> {
        pollster::block_on(self.finish_timing_by_pass_async())
    }

    /// Async form of [`Context::finish_timing_by_pass`].
    pub async fn finish_timing_by_pass_async(&self) -> Result<Vec<(&'static str, f64)>> {
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
        Ok(timer
            .labels
            .iter()
            .zip(ticks.chunks(2))
            .map(|(&label, p)| (label, p[1].saturating_sub(p[0]) as f64 * period))
            .collect())
    }
}
