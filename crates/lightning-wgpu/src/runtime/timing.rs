//! GPU timing with timestamp queries: while timing is on, each compute
//! pass writes a timestamp at its start and end.

use std::sync::Mutex;

use super::{lock, Runtime};
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

impl Runtime {
    pub(crate) fn can_time(&self) -> bool {
        self.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    pub(crate) fn start_timing(&self, passes: u32) -> Result<()> {
        if !self.can_time() {
            return Err(Error::InvalidValue {
                arg: "timing",
                value: self.info().name.clone(),
                reason: "this adapter has no TIMESTAMP_QUERY: time with the wall clock instead",
            });
        }
        let capacity = passes.clamp(1, wgpu::QUERY_SET_MAX_QUERIES / 2) * 2;
        let queries = self.device().create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timing"),
            ty: wgpu::QueryType::Timestamp,
            count: capacity,
        });
        *lock(self.timer()) = Some(Timer {
            queries,
            capacity,
            used: 0,
            overflow: false,
            labels: Vec::new(),
        });
        Ok(())
    }

    pub(crate) fn timed_passes(&self) -> usize {
        lock(self.timer())
            .as_ref()
            .map_or(0, |t| t.used as usize / 2)
    }

    pub(crate) fn is_timing(&self) -> bool {
        lock(self.timer()).is_some()
    }

    /// The timestamp pair of the next pass, named `label`, while timing is on.
    pub(crate) fn next_stamps(&self, label: &'static str) -> Option<Stamps> {
        let mut slot = lock(self.timer());
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

    pub(crate) async fn finish_timing(&self) -> Result<Vec<(&'static str, f64)>> {
        let Some(timer) = lock(self.timer()).take() else {
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
        let resolve = self.buffer(
            "timestamps",
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        );
        let mut encoder = self.device().create_command_encoder(&Default::default());
        encoder.resolve_query_set(&timer.queries, 0..timer.used, resolve.buffer(), 0);
        self.queue().submit([encoder.finish()]);
        let raw = self
            .read_bytes(resolve.buffer(), 0, bytes, "timestamps")
            .await?;
        let ticks: Vec<u64> = raw
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect();
        let period = self.queue().get_timestamp_period() as f64 * 1e-9;
        Ok(timer
            .labels
            .iter()
            .zip(ticks.chunks(2))
            .map(|(&label, p)| (label, p[1].saturating_sub(p[0]) as f64 * period))
            .collect())
    }
}
