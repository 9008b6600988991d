//! The context: a runtime (one device and its caches) and the setup the
//! kernels run with on it, decided once when it is opened.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kernels::chunk::tensor_core;
use crate::kernels::{BlockConfig, Setup};
use crate::runtime::device::{self, AdapterSummary};
use crate::runtime::switches::{
    self, ADAPTER_ENV, BLOCK_ENV, CHECKED_ENV, COOP_ENV, DEPTH_ENV, PACKED_F16_ENV,
};
use crate::runtime::{Opened, Runtime};

/// Features the kernels use when the adapter has them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY);

/// How to open a [`Context`]. `Default` reads the environment variables
/// of [`switches`](crate::switches) and wgpu's `WGPU_BACKEND`; a field
/// that is set overrides its variable.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Adapter name substring or index; overrides [`ADAPTER_ENV`].
    pub adapter: Option<String>,
    /// Backends to look at; overrides `WGPU_BACKEND`.
    pub backends: Option<wgpu::Backends>,
    /// Keep wgpu's shader bounds checks on; overrides [`CHECKED_ENV`].
    /// Browsers always check whatever this says.
    pub checked: Option<bool>,
    /// Rows per block, 32 or 64; overrides [`BLOCK_ENV`]. By default the
    /// largest the adapter's workgroup limits allow.
    pub block_rows: Option<u32>,
    /// Read f16 packed in u32 words even where the adapter has SHADER_F16;
    /// overrides [`PACKED_F16_ENV`]. Both paths give the same results.
    pub packed_f16: Option<bool>,
    /// Lowers the largest storage binding the host will use (bytes). Tensors
    /// beyond it are processed in several dispatches over windows; useful to
    /// bound scratch memory, and to test that path on small tensors.
    pub max_binding_bytes: Option<u64>,
    /// Lowers the largest buffer the host will allocate (bytes, at least
    /// 4096): tensors beyond it are refused, and a [`crate::StateCache`]
    /// spreads over more buffers; useful to test that on small caches.
    pub max_buffer_bytes: Option<u64>,
    /// Run f16 and bf16 forwards (and backwards) on the tensor cores
    /// (cooperative matrices, f16 operands): `Some(true)` requires them (an
    /// error where the adapter lacks them), `Some(false)` never uses them;
    /// `None` reads [`COOP_ENV`], else uses them where the adapter has them.
    /// They round the masked scores and the carried state to f16.
    pub cooperative_matrix: Option<bool>,
}

/// One GPU device and everything cached on it. Cheap to clone (shared).
///
/// ```no_run
/// let ctx = lightning_wgpu::Context::new()?;
/// println!("running on {}", ctx.adapter_info().name);
/// # Ok::<(), lightning_wgpu::Error>(())
/// ```
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    rt: Runtime,
    setup: Setup,
}

fn backends(options: &ContextOptions) -> wgpu::Backends {
    options
        .backends
        .unwrap_or_else(|| wgpu::Backends::all().with_env())
}

/// Every adapter wgpu finds for the configured backends, in a stable order.
pub async fn adapters_async(options: &ContextOptions) -> Vec<AdapterSummary> {
    let backends = backends(options);
    let instance = device::instance(backends);
    device::list(&instance, backends)
        .await
        .iter()
        .enumerate()
        .map(|(index, a)| device::summary(index, a))
        .collect()
}

/// Blocking form of [`adapters_async`].
#[cfg(not(target_arch = "wasm32"))]
pub fn adapters(options: &ContextOptions) -> Vec<AdapterSummary> {
    pollster::block_on(adapters_async(options))
}

impl Context {
    /// Opens the default adapter (see [`ContextOptions`] for the environment
    /// variables that steer the choice). Blocks; see [`Context::new_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        Self::with_options(ContextOptions::default())
    }

    /// Blocking form of [`Context::with_options_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(options: ContextOptions) -> Result<Self> {
        pollster::block_on(Self::with_options_async(options))
    }

    /// Opens the default adapter.
    pub async fn new_async() -> Result<Self> {
        Self::with_options_async(ContextOptions::default()).await
    }

    /// Opens an adapter chosen by `options`, with the features that help
    /// where present and the adapter's own limits.
    pub async fn with_options_async(options: ContextOptions) -> Result<Self> {
        // Every switch is read (and a bad one refused) before any GPU work.
        let packed = match options.packed_f16 {
            Some(p) => p,
            None => switches::switch(PACKED_F16_ENV)?.unwrap_or(false),
        };
        let coop_wanted = match options.cooperative_matrix {
            Some(c) => Some(c),
            None => switches::switch(COOP_ENV)?,
        };
        let checked_wanted = match options.checked {
            Some(c) => c,
            None => switches::switch(CHECKED_ENV)?.unwrap_or(false),
        };
        let rows = match options.block_rows {
            Some(r) => Some(r),
            None => switches::number(BLOCK_ENV, "must be 32 or 64")?,
        };
        let depth = switches::number(DEPTH_ENV, "must be 8, 16 or 32")?;

        let backends = backends(&options);
        let instance = device::instance(backends);
        let wanted = options
            .adapter
            .clone()
            .or_else(|| switches::text(ADAPTER_ENV));
        let adapter = device::choose(device::list(&instance, backends).await, wanted.as_deref())?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let config = BlockConfig::for_limits(&limits, rows, depth)?;
        let tensor_cores = match coop_wanted {
            Some(false) => false,
            wanted => {
                let support = tensor_core::adapter_support(&adapter, packed).and_then(|()| {
                    if config.rows == tensor_core::BLOCK_ROWS {
                        Ok(())
                    } else {
                        Err(format!(
                            "runs blocks of {} rows here (the tensor-core kernels need {})",
                            config.rows,
                            tensor_core::BLOCK_ROWS
                        ))
                    }
                });
                match support {
                    Ok(()) => true,
                    Err(reason) if wanted == Some(true) => {
                        return Err(Error::MissingFeature {
                            option: "cooperative_matrix",
                            feature: "cooperative matrices (16x16x16, f16 -> f32)",
                            adapter: info.name.clone(),
                            reason,
                        })
                    }
                    Err(_) => false,
                }
            }
        };
        let mut features = adapter.features() & WANTED_FEATURES;
        if tensor_cores {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let (device, queue) = device::open(&adapter, features).await?;
        Self::assemble(
            &adapter,
            device,
            queue,
            &options,
            checked_wanted,
            packed,
            config,
            tensor_cores,
            false,
        )
    }

    /// Adopts a device the caller opened (an engine's, a framework's such as
    /// burn's wgpu backend), with the default options: see
    /// [`Context::from_wgpu_with`].
    ///
    /// ```no_run
    /// # async fn demo() -> lightning_wgpu::Result<()> {
    /// use lightning_wgpu::{wgpu, Context};
    /// let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    /// let adapter = instance.request_adapter(&Default::default()).await.expect("an adapter");
    /// let (device, queue) = adapter.request_device(&Default::default()).await.expect("a device");
    /// let ctx = Context::from_wgpu(&adapter, device.clone(), queue.clone())?;
    /// // ctx's kernels and the caller's share `device` and `queue`.
    /// # Ok(()) }
    /// ```
    pub fn from_wgpu(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<Self> {
        Self::from_wgpu_with(adapter, device, queue, ContextOptions::default())
    }

    /// Adopts a device the caller opened on `adapter`, reading what it can
    /// do from the device itself: the features it was created with (f16
    /// natively only with SHADER_F16, the tensor cores only with
    /// EXPERIMENTAL_COOPERATIVE_MATRIX) and its limits (the block size, the
    /// largest binding). The caller keeps its device's error handler and
    /// lost callback: this context installs none, and reports its own GPU
    /// errors through error scopes. `options.adapter` and `options.backends`
    /// do not apply.
    pub fn from_wgpu_with(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: ContextOptions,
    ) -> Result<Self> {
        let packed = match options.packed_f16 {
            Some(p) => p,
            None => switches::switch(PACKED_F16_ENV)?.unwrap_or(false),
        };
        let coop_wanted = match options.cooperative_matrix {
            Some(c) => Some(c),
            None => switches::switch(COOP_ENV)?,
        };
        let checked_wanted = match options.checked {
            Some(c) => c,
            None => switches::switch(CHECKED_ENV)?.unwrap_or(false),
        };
        let rows = match options.block_rows {
            Some(r) => Some(r),
            None => switches::number(BLOCK_ENV, "must be 32 or 64")?,
        };
        let depth = switches::number(DEPTH_ENV, "must be 8, 16 or 32")?;
        let config = BlockConfig::for_limits(&device.limits(), rows, depth)?;
        let has = device
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        let tensor_cores = match coop_wanted {
            Some(false) => false,
            wanted => {
                let support = if has {
                    tensor_core::adapter_support(adapter, packed)
                } else {
                    Err("was given a device created without EXPERIMENTAL_COOPERATIVE_MATRIX".into())
                };
                match support {
                    Ok(()) if config.rows == tensor_core::BLOCK_ROWS => true,
                    Err(reason) if wanted == Some(true) => {
                        return Err(Error::MissingFeature {
                            option: "cooperative_matrix",
                            feature: "cooperative matrices (16x16x16, f16 -> f32)",
                            adapter: adapter.get_info().name,
                            reason,
                        })
                    }
                    _ => false,
                }
            }
        };
        Self::assemble(
            adapter,
            device,
            queue,
            &options,
            checked_wanted,
            packed,
            config,
            tensor_cores,
            true,
        )
    }

    /// The context of an open device.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &ContextOptions,
        checked: bool,
        packed: bool,
        config: BlockConfig,
        tensor_cores: bool,
        adopted: bool,
    ) -> Result<Self> {
        let info = adapter.get_info();
        let features = device.features();
        let limits = device.limits();
        let checked = checked || info.backend == wgpu::Backend::BrowserWebGpu;
        let max_buffer = options
            .max_buffer_bytes
            .map_or(limits.max_buffer_size, |cap| cap.max(4096))
            .min(limits.max_buffer_size);
        let mut max_binding = limits.max_storage_buffer_binding_size.min(max_buffer);
        if let Some(cap) = options.max_binding_bytes {
            max_binding = max_binding.min(cap.max(1024));
        }
        let native_f16 = features.contains(wgpu::Features::SHADER_F16) && !packed;
        let rt = Runtime::new(Opened {
            info,
            device,
            queue,
            features,
            limits,
            checked,
            max_binding,
            max_buffer,
            adopted,
        });
        Ok(Context {
            inner: Arc::new(Inner {
                rt,
                setup: Setup {
                    config,
                    native_f16,
                    tensor_cores,
                },
            }),
        })
    }

    pub(crate) fn rt(&self) -> &Runtime {
        &self.inner.rt
    }

    pub(crate) fn setup(&self) -> &Setup {
        &self.inner.setup
    }

    /// The adapter this context runs on.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        self.rt().info()
    }

    /// Features enabled on the device (a subset of what the kernels can use).
    pub fn features(&self) -> wgpu::Features {
        self.rt().features()
    }

    /// The device's limits (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        self.rt().limits()
    }

    /// True when shaders keep wgpu's runtime bounds checks.
    pub fn checked(&self) -> bool {
        self.rt().checked()
    }

    /// True when f16 tensors are read as WGSL `f16` (SHADER_F16, not forced
    /// packed); false when they are unpacked from u32 words.
    pub fn native_f16(&self) -> bool {
        self.setup().native_f16
    }

    /// True when f16 and bf16 forwards and backwards run on the tensor cores
    /// (cooperative matrices) where their shapes allow (d and e multiples of
    /// 16, at most 128); see [`ContextOptions::cooperative_matrix`].
    pub fn cooperative_matrix(&self) -> bool {
        self.setup().tensor_cores
    }

    /// Rows per block the kernels use on this device.
    pub fn block_rows(&self) -> u32 {
        self.setup().config.rows
    }

    /// The wgpu device, for interop.
    pub fn device(&self) -> &wgpu::Device {
        self.rt().device()
    }

    /// The wgpu queue, for interop.
    pub fn queue(&self) -> &wgpu::Queue {
        self.rt().queue()
    }

    /// How many buffers this context has created on the device so far.
    /// Repeated calls with the same shapes reuse pooled buffers, so this stays
    /// put once a workload is warm.
    pub fn buffers_created(&self) -> u64 {
        self.rt().pool().created()
    }

    /// How many times this context has read a buffer back to the host
    /// (each [`Context::read`], and timing's results). Work that stays on
    /// the GPU leaves it where it was.
    pub fn readbacks(&self) -> u64 {
        self.rt().readbacks()
    }

    /// Frees the pooled buffers not in use.
    pub fn trim_pool(&self) {
        self.rt().pool().clear();
    }

    /// Device memory this context's buffers hold now (in use or pooled),
    /// in bytes.
    pub fn memory_allocated(&self) -> u64 {
        self.rt().pool().memory().0
    }

    /// The most device memory held since the last
    /// [`Context::reset_peak_memory`], in bytes.
    pub fn peak_memory(&self) -> u64 {
        self.rt().pool().memory().1
    }

    /// Starts a new peak-memory measurement from what is held now.
    pub fn reset_peak_memory(&self) {
        self.rt().pool().reset_peak();
    }

    /// True when the device can time GPU work with timestamp queries.
    pub fn can_time(&self) -> bool {
        self.rt().can_time()
    }

    /// Starts timing: until [`Context::finish_timing`], every op records the
    /// GPU time of its compute passes (up to `passes` of them). While timing
    /// is on, an op of several kernels runs each in a pass of its own, so
    /// [`Context::finish_timing_by_pass`] can tell them apart. Needs the
    /// `TIMESTAMP_QUERY` feature ([`Context::can_time`]).
    pub fn start_timing(&self, passes: u32) -> Result<()> {
        self.rt().start_timing(passes)
    }

    /// How many passes have been timed since [`Context::start_timing`]
    /// (0 when timing is off): an op may run several passes, so callers
    /// group [`Context::finish_timing`]'s times by the difference.
    pub fn timed_passes(&self) -> usize {
        self.rt().timed_passes()
    }

    /// True between [`Context::start_timing`] and [`Context::finish_timing`].
    pub fn is_timing(&self) -> bool {
        self.rt().is_timing()
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
    /// the kernel (`block_state`, `state_scan`, `block_output`, `recurrent`,
    /// `pack output`, ...), whichever path runs it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish_timing_by_pass(&self) -> Result<Vec<(&'static str, f64)>> {
        pollster::block_on(self.finish_timing_by_pass_async())
    }

    /// Async form of [`Context::finish_timing_by_pass`].
    pub async fn finish_timing_by_pass_async(&self) -> Result<Vec<(&'static str, f64)>> {
        self.rt().finish_timing().await
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.adapter_info();
        f.debug_struct("Context")
            .field("adapter", &i.name)
            .field("backend", &i.backend)
            .field("checked", &self.checked())
            .field("block_rows", &self.block_rows())
            .field("tensor_cores", &self.cooperative_matrix())
            .finish()
    }
}
