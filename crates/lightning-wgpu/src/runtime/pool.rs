//! Buffer pool: buffers are recycled by (size, usage), so repeated calls of
//! the same shape allocate nothing new on the device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::lock;

/// How many idle buffers of one (size, usage) the pool keeps.
const KEEP_PER_KEY: usize = 4;

type Key = (u64, wgpu::BufferUsages);

#[derive(Default)]
pub(crate) struct BufferPool {
    idle: Mutex<HashMap<Key, Vec<wgpu::Buffer>>>,
    created: AtomicU64,
    /// Bytes of device memory held through the pool (in use or idle), and
    /// the most it has held since the last `reset_peak`.
    allocated: AtomicU64,
    peak: AtomicU64,
}

impl BufferPool {
    /// A buffer of at least `size` bytes (rounded up to 4) with exactly `usage`.
    pub(crate) fn take(
        self: &Arc<Self>,
        device: &wgpu::Device,
        label: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> PooledBuffer {
        let size = size.max(4).next_multiple_of(4);
        let key = (size, usage);
        let reused = lock(&self.idle).get_mut(&key).and_then(Vec::pop);
        let buffer = reused.unwrap_or_else(|| {
            self.created.fetch_add(1, Ordering::Relaxed);
            let now = self.allocated.fetch_add(size, Ordering::Relaxed) + size;
            self.peak.fetch_max(now, Ordering::Relaxed);
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        });
        PooledBuffer {
            buffer,
            pool: Arc::downgrade(self),
        }
    }

    /// Buffers created on the device since the context was made.
    pub(crate) fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Drops every idle buffer.
    pub(crate) fn clear(&self) {
        let freed: u64 = lock(&self.idle)
            .drain()
            .flat_map(|(_, list)| list)
            .map(|b| b.size())
            .sum();
        self.allocated.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Bytes held now, and the most held since the last reset.
    pub(crate) fn memory(&self) -> (u64, u64) {
        (
            self.allocated.load(Ordering::Relaxed),
            self.peak.load(Ordering::Relaxed),
        )
    }

    /// Starts a new peak from what is held now.
    pub(crate) fn reset_peak(&self) {
        self.peak
            .store(self.allocated.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        let mut idle = lock(&self.idle);
        let list = idle.entry((buffer.size(), buffer.usage())).or_default();
        if list.len() < KEEP_PER_KEY {
            list.push(buffer);
        } else {
            self.allocated.fetch_sub(buffer.size(), Ordering::Relaxed);
        }
    }
}

/// A buffer that goes back to its pool when dropped.
pub(crate) struct PooledBuffer {
    buffer: wgpu::Buffer,
    pool: Weak<BufferPool>,
}

impl PooledBuffer {
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        // wgpu buffers are reference counted: the pool keeps a handle, this
        // one goes away with `self`.
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(self.buffer.clone());
        }
    }
}
