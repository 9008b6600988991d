//! The runtime: one wgpu device and what is cached on it. Nothing here
//! knows what attention is; the kernels and ops use it through a small API
//! (buffers from the pool, pipelines by key, a recorder per call, uploads
//! and readbacks, timing).

pub(crate) mod device;
pub(crate) mod io;
pub(crate) mod pipelines;
pub(crate) mod pool;
pub(crate) mod recorder;
pub mod switches;
pub(crate) mod timing;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use pool::{BufferPool, PooledBuffer};

/// One device, its queue, what it can do, and its caches.
pub(crate) struct Runtime {
    id: u64,
    info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    features: wgpu::Features,
    limits: wgpu::Limits,
    /// Shader modules keep wgpu's runtime bounds checks.
    checked: bool,
    /// The largest storage binding the host plans with (bytes).
    max_binding: u64,
    /// The largest buffer the host allocates (bytes).
    max_buffer: u64,
    pool: Arc<BufferPool>,
    pipelines: pipelines::PipelineCache,
    lost: Arc<Mutex<Option<String>>>,
    timer: timing::TimerSlot,
    /// Buffers mapped to read back to the host so far.
    readbacks: AtomicU64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What a runtime is opened with.
pub(crate) struct Opened {
    pub info: wgpu::AdapterInfo,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    pub checked: bool,
    pub max_binding: u64,
    pub max_buffer: u64,
    /// The caller opened the device and keeps its error handler and
    /// lost-device callback; ours are installed only on devices we open.
    pub adopted: bool,
}

impl Runtime {
    pub(crate) fn new(o: Opened) -> Runtime {
        let lost = Arc::new(Mutex::new(None));
        if !o.adopted {
            // Errors in our own work are caught by error scopes; anything
            // else must not abort the host program (wgpu's default panics).
            o.device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
                eprintln!("lightning-wgpu: uncaptured GPU error: {e}");
            }));
            let flag = lost.clone();
            o.device.set_device_lost_callback(move |reason, message| {
                *lock(&flag) = Some(format!("{reason:?}: {message}"));
            });
        }
        Runtime {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            info: o.info,
            device: o.device,
            queue: o.queue,
            features: o.features,
            limits: o.limits,
            checked: o.checked,
            max_binding: o.max_binding,
            max_buffer: o.max_buffer,
            pool: Arc::new(BufferPool::default()),
            pipelines: Default::default(),
            lost,
            timer: Mutex::new(None),
            readbacks: AtomicU64::new(0),
        }
    }

    /// Counts a readback (see [`Runtime::readbacks`]).
    pub(crate) fn count_readback(&self) {
        self.readbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// How many buffers were mapped to read back to the host so far.
    pub(crate) fn readbacks(&self) -> u64 {
        self.readbacks.load(Ordering::Relaxed)
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    pub(crate) fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub(crate) fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    pub(crate) fn features(&self) -> wgpu::Features {
        self.features
    }

    pub(crate) fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    pub(crate) fn checked(&self) -> bool {
        self.checked
    }

    pub(crate) fn max_binding(&self) -> u64 {
        self.max_binding
    }

    pub(crate) fn max_buffer(&self) -> u64 {
        self.max_buffer
    }

    pub(crate) fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// A pooled buffer of at least `bytes` bytes with exactly `usage`.
    pub(crate) fn buffer(
        &self,
        label: &'static str,
        bytes: u64,
        usage: wgpu::BufferUsages,
    ) -> PooledBuffer {
        self.pool.take(&self.device, label, bytes, usage)
    }

    /// A pooled buffer holding `bytes` (written through the queue, so before
    /// the next submission runs).
    pub(crate) fn buffer_with(
        &self,
        label: &'static str,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> PooledBuffer {
        let buffer = self.buffer(
            label,
            bytes.len() as u64,
            usage | wgpu::BufferUsages::COPY_DST,
        );
        if !bytes.is_empty() {
            self.queue.write_buffer(buffer.buffer(), 0, bytes);
        }
        buffer
    }

    /// Fails with [`Error::DeviceLost`] once the device is gone.
    pub(crate) fn check_lost(&self) -> Result<()> {
        match &*lock(&self.lost) {
            Some(why) => Err(Error::DeviceLost(why.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn timer(&self) -> &timing::TimerSlot {
        &self.timer
    }

    pub(crate) fn pipelines(&self) -> &pipelines::PipelineCache {
        &self.pipelines
    }
}

/// A lock that a panic elsewhere cannot poison for good: the data behind it
/// stays consistent, so keep going.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
