//! Buffer pool: buffers are recycled by (size, usage), so repeated calls of
//! the same shape allocate nothing new on the device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// How many idle buffers of one (size, usage) the pool keeps.
const KEEP_PER_KEY: usize = 4;

type Key = (u64, wgpu::BufferUsages);

#[derive(Default)]
pub(crate) struct BufferPool {
    idle: Mutex<HashMap<Key, Vec<wgpu::Buffer>>>,
    created: AtomicU64,
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
        lock(&self.idle).clear();
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        let mut idle = lock(&self.idle);
        let list = idle.entry((buffer.size(), buffer.usage())).or_default();
        if list.len() < KEEP_PER_KEY {
            list.push(buffer);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave the map inconsistent: keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
