//! The context: one adapter, its device and queue, the limits the kernels are
//! sized from, a pipeline cache and a buffer pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::kernels::{KernelConfig, Pass, Storage};
use crate::pool::BufferPool;
use crate::tensor::{DType, Tensor};

/// Environment variable choosing the adapter: a case-insensitive substring of
/// its name, or its index in `lightning-wgpu info`.
pub const ADAPTER_ENV: &str = "LIGHTNING_ADAPTER";
/// Environment variable forcing wgpu's shader runtime bounds checks on (`1`)
/// or letting proven-safe kernels run without them (`0`, the default).
pub const CHECKED_ENV: &str = "LIGHTNING_CHECKED";
/// Environment variable forcing the tile (block) size: 32 or 64.
pub const TILE_ENV: &str = "LIGHTNING_TILE";
/// Environment variable setting the reduction depth staged per step: 8 (the
/// default), 16 or 32. A tuning knob for measurements.
pub const CHUNK_ENV: &str = "LIGHTNING_CHUNK";
/// Environment variable forcing f16 to be read packed two to a u32
/// (`unpack2x16float`) even where the adapter has SHADER_F16 (`1`).
pub const PACKED_F16_ENV: &str = "LIGHTNING_PACKED_F16";

/// Environment variable choosing the cooperative-matrix (tensor-core) path
/// for f16 and bf16: `0` never, `1` required (an error where the adapter lacks it);
/// unset, it is used where the adapter has it.
pub const COOP_ENV: &str = "LIGHTNING_COOP";

/// Features the kernels use when the adapter has them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY);

/// How to open a [`Context`]. `Default` reads the environment:
/// [`ADAPTER_ENV`], [`CHECKED_ENV`], [`TILE_ENV`] and wgpu's `WGPU_BACKEND`.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Adapter name substring or index; overrides [`ADAPTER_ENV`].
    pub adapter: Option<String>,
    /// Backends to look at; overrides `WGPU_BACKEND`.
    pub backends: Option<wgpu::Backends>,
    /// Keep wgpu's shader bounds checks on; overrides [`CHECKED_ENV`].
    /// Browsers always check whatever this says.
    pub checked: Option<bool>,
    /// Rows per block, 32 or 64; overrides [`TILE_ENV`]. By default the largest
    /// the adapter's workgroup limits allow.
    pub tile: Option<u32>,
    /// Read f16 packed in u32 words even where the adapter has SHADER_F16;
    /// overrides [`PACKED_F16_ENV`]. Both paths give the same results.
    pub packed_f16: Option<bool>,
    /// Lowers the largest storage binding the host will use (bytes). Tensors
    /// beyond it are processed in several dispatches over windows; useful to
    /// bound scratch memory, and to test that path on small tensors.
    pub max_binding_bytes: Option<u64>,
    /// Run f16 and bf16 forwards (and backwards) on cooperative matrices
    /// (tensor cores, f16 operands): `Some(true)` requires them (an error
    /// where the adapter lacks them), `Some(false)` never uses them; `None`
    /// (the default) reads [`COOP_ENV`], else uses them where the adapter
    /// has them. They round the masked scores and the carried state to f16
    /// (see docs/BENCHMARKS.md for the error this gives), and read bf16
    /// inputs as f16: exact for magnitudes up to 65504 (and down to 2^-14;
    /// smaller ones lose bits), infinite beyond. For bf16 tensors with
    /// larger values choose `Some(false)`.
    pub cooperative_matrix: Option<bool>,
}

/// What an adapter is, as `lightning-wgpu info` prints it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
}

pub(crate) struct Inner {
    pub(crate) id: u64,
    pub(crate) adapter_info: wgpu::AdapterInfo,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) features: wgpu::Features,
    pub(crate) limits: wgpu::Limits,
    pub(crate) checked: bool,
    pub(crate) native_f16: bool,
    pub(crate) cooperative: bool,
    pub(crate) config: KernelConfig,
    pub(crate) max_binding: u64,
    pub(crate) pool: Arc<BufferPool>,
    pipelines: Mutex<HashMap<(Pass, Storage), wgpu::ComputePipeline>>,
    lost: Arc<Mutex<Option<String>>>,
    pub(crate) timer: crate::timing::TimerSlot,
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
    pub(crate) inner: Arc<Inner>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.trim().is_empty())
}

fn env_flag(name: &str) -> Option<bool> {
    env(name).map(|s| !matches!(s.trim(), "0" | "false" | "no" | "off"))
}

fn backends(options: &ContextOptions) -> wgpu::Backends {
    options
        .backends
        .unwrap_or_else(|| wgpu::Backends::all().with_env())
}

fn instance(options: &ContextOptions) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends(options);
    wgpu::Instance::new(desc)
}

/// Whether the adapter can run the cooperative-matrix passes, or why not.
fn coop_support(adapter: &wgpu::Adapter, packed_f16: bool) -> std::result::Result<(), String> {
    let features = adapter.features();
    let info = adapter.get_info();
    let limits = adapter.limits();
    if !features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        return Err("has no EXPERIMENTAL_COOPERATIVE_MATRIX".into());
    }
    if !features.contains(wgpu::Features::SHADER_F16) || packed_f16 {
        return Err("has no SHADER_F16 (or packed f16 was forced)".into());
    }
    let f16_16 = adapter.cooperative_matrix_properties().iter().any(|p| {
        (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
            && p.ab_type == wgpu::CooperativeScalarType::F16
            && p.cr_type == wgpu::CooperativeScalarType::F32
    });
    if !f16_16 {
        return Err("lists no 16x16x16 f16 x f16 -> f32 configuration".into());
    }
    if (info.subgroup_min_size, info.subgroup_max_size) != (32, 32) {
        return Err(format!(
            "has subgroups of {}..{} invocations (the passes are laid out for 32)",
            info.subgroup_min_size, info.subgroup_max_size
        ));
    }
    if limits.max_compute_workgroup_storage_size < crate::kernels::COOP_WORKGROUP_BYTES
        || limits.max_compute_invocations_per_workgroup < crate::kernels::COOP_MAX_INVOCATIONS
        || limits.max_compute_workgroup_size_x < crate::kernels::COOP_MAX_INVOCATIONS
    {
        return Err("has workgroup limits below what the passes declare".into());
    }
    Ok(())
}

/// Preference among adapters when none is named: real GPUs first, then
/// software ones, and the native APIs before GL.
fn rank(info: &wgpu::AdapterInfo) -> u32 {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 40,
        wgpu::DeviceType::IntegratedGpu => 30,
        wgpu::DeviceType::VirtualGpu => 20,
        wgpu::DeviceType::Cpu => 10,
        wgpu::DeviceType::Other => 0,
    };
    kind + u32::from(info.backend != wgpu::Backend::Gl)
}

/// Every adapter wgpu finds for the configured backends, in a stable order.
pub async fn adapters_async(options: &ContextOptions) -> Vec<AdapterSummary> {
    let instance = instance(options);
    list(&instance, options)
        .await
        .into_iter()
        .enumerate()
        .map(|(index, a)| summary(index, &a))
        .collect()
}

/// Blocking form of [`adapters_async`].
#[cfg(not(target_arch = "wasm32"))]
pub fn adapters(options: &ContextOptions) -> Vec<AdapterSummary> {
    pollster::block_on(adapters_async(options))
}

fn summary(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    AdapterSummary {
        index,
        info: a.get_info(),
        features: a.features(),
        limits: a.limits(),
    }
}

async fn list(instance: &wgpu::Instance, options: &ContextOptions) -> Vec<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        instance.enumerate_adapters(backends(options)).await
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = options;
        let request = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        };
        instance
            .request_adapter(&request)
            .await
            .into_iter()
            .collect()
    }
}

fn choose(adapters: Vec<wgpu::Adapter>, wanted: Option<&str>) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        return Err(Error::NoAdapter(
            " (install a Vulkan driver, e.g. Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
                .into(),
        ));
    }
    match wanted {
        None => {
            let best = adapters
                .iter()
                .map(|a| rank(&a.get_info()))
                .max()
                .unwrap_or(0);
            // First of the best rank, so the choice is stable.
            adapters
                .into_iter()
                .find(|a| rank(&a.get_info()) == best)
                .ok_or_else(|| Error::NoAdapter(String::new()))
        }
        Some(w) => {
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            let pick = match w.trim().parse::<usize>() {
                Ok(i) if i < adapters.len() => Some(i),
                Ok(_) => None,
                Err(_) => names
                    .iter()
                    .position(|n| n.to_lowercase().contains(&w.to_lowercase())),
            };
            match pick {
                Some(i) => Ok(adapters
                    .into_iter()
                    .nth(i)
                    .ok_or_else(|| Error::NoAdapter(String::new()))?),
                None => Err(Error::NoAdapter(format!(
                    " matching `{w}` (have: {})",
                    names.join(", ")
                ))),
            }
        }
    }
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
        let instance = instance(&options);
        let wanted = options.adapter.clone().or_else(|| env(ADAPTER_ENV));
        let adapter = choose(list(&instance, &options).await, wanted.as_deref())?;
        let adapter_info = adapter.get_info();
        let mut features = adapter.features() & WANTED_FEATURES;
        let limits = adapter.limits();
        let packed = options
            .packed_f16
            .or_else(|| env_flag(PACKED_F16_ENV))
            .unwrap_or(false);
        let cooperative = match options.cooperative_matrix.or_else(|| env_flag(COOP_ENV)) {
            Some(false) => false,
            wanted => match coop_support(&adapter, packed) {
                Ok(()) => true,
                Err(reason) if wanted == Some(true) => {
                    return Err(Error::MissingFeature {
                        option: "cooperative_matrix",
                        feature: "cooperative matrices (16x16x16, f16 -> f32)",
                        adapter: adapter_info.name.clone(),
                        reason,
                    })
                }
                Err(_) => false,
            },
        };
        let experimental = if cooperative {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            // SAFETY: the experimental feature is used only by the two
            // cooperative-matrix passes, whose configuration (16x16x16,
            // f16 x f16 -> f32, subgroups of 32) `coop_support` checked
            // against what the adapter reports.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("lightning-wgpu"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: experimental,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: adapter_info.name.clone(),
                reason: e.to_string(),
            })?;

        // Errors in our own work are caught by error scopes; anything else
        // must not abort the host program (wgpu's default handler panics).
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            eprintln!("lightning-wgpu: uncaptured GPU error: {e}");
        }));
        let lost = Arc::new(Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *flag.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("{reason:?}: {message}"));
        });

        let checked = options
            .checked
            .or_else(|| env_flag(CHECKED_ENV))
            .unwrap_or(false)
            || adapter_info.backend == wgpu::Backend::BrowserWebGpu;
        let tile = match (options.tile, env(TILE_ENV)) {
            (Some(t), _) => Some(t),
            (None, Some(s)) => Some(s.trim().parse().map_err(|_| Error::InvalidValue {
                arg: TILE_ENV,
                value: s.clone(),
                reason: "must be 32 or 64",
            })?),
            (None, None) => None,
        };
        let chunk = match env(CHUNK_ENV) {
            Some(s) => Some(s.trim().parse().map_err(|_| Error::InvalidValue {
                arg: CHUNK_ENV,
                value: s.clone(),
                reason: "must be 8, 16 or 32",
            })?),
            None => None,
        };
        let config = KernelConfig::for_limits(&limits, tile, chunk)?;
        let required = options.cooperative_matrix.or_else(|| env_flag(COOP_ENV)) == Some(true);
        if cooperative && config.tile != 64 && required {
            return Err(Error::InvalidValue {
                arg: "tile",
                value: config.tile.to_string(),
                reason: "the cooperative-matrix passes need blocks of 64",
            });
        }
        let cooperative = cooperative && config.tile == 64;
        let native_f16 = features.contains(wgpu::Features::SHADER_F16) && !packed;
        let mut max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if let Some(cap) = options.max_binding_bytes {
            max_binding = max_binding.min(cap.max(1024));
        }
        Ok(Context {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                adapter_info,
                device,
                queue,
                features,
                limits,
                checked,
                native_f16,
                cooperative,
                config,
                max_binding,
                pool: Arc::new(BufferPool::default()),
                pipelines: Mutex::new(HashMap::new()),
                lost,
                timer: Mutex::new(None),
            }),
        })
    }

    /// The adapter this context runs on.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.adapter_info
    }

    /// Features enabled on the device (a subset of what the kernels can use).
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }

    /// The device's limits (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// True when shaders keep wgpu's runtime bounds checks.
    pub fn checked(&self) -> bool {
        self.inner.checked
    }

    /// True when f16 tensors are read as WGSL `f16` (SHADER_F16, not forced
    /// packed); false when they are unpacked from u32 words.
    pub fn native_f16(&self) -> bool {
        self.inner.native_f16
    }

    /// True when f16 and bf16 forwards and backwards run on cooperative matrices
    /// (tensor cores) where their shapes allow (d and e multiples of 16, at
    /// most 128); see [`ContextOptions::cooperative_matrix`].
    pub fn cooperative_matrix(&self) -> bool {
        self.inner.cooperative
    }

    /// How the kernels read q, k and v stored as `dtype` on this device.
    pub(crate) fn storage(&self, dtype: DType) -> Storage {
        match dtype {
            DType::F32 => Storage::F32,
            DType::F16 if self.inner.native_f16 => Storage::F16Native,
            DType::F16 => Storage::F16Packed,
            DType::BF16 => Storage::Bf16,
        }
    }

    /// Rows per block the kernels use on this device.
    pub fn tile(&self) -> u32 {
        self.inner.config.tile
    }

    /// The wgpu device, for interop.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue, for interop.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// How many buffers this context has created on the device so far.
    /// Repeated calls with the same shapes reuse pooled buffers, so this stays
    /// put once a workload is warm.
    pub fn buffers_created(&self) -> u64 {
        self.inner.pool.created()
    }

    /// Frees the pooled buffers not in use.
    pub fn trim_pool(&self) {
        self.inner.pool.clear();
    }

    /// Device memory this context's buffers hold now (in use or pooled),
    /// in bytes.
    pub fn memory_allocated(&self) -> u64 {
        self.inner.pool.memory().0
    }

    /// The most device memory held since the last
    /// [`Context::reset_peak_memory`], in bytes.
    pub fn peak_memory(&self) -> u64 {
        self.inner.pool.memory().1
    }

    /// Starts a new peak-memory measurement from what is held now.
    pub fn reset_peak_memory(&self) {
        self.inner.pool.reset_peak();
    }

    /// Fails with [`Error::DeviceLost`] once the device is gone.
    pub(crate) fn check_lost(&self) -> Result<()> {
        match &*self.inner.lost.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(Error::DeviceLost(why.clone())),
            None => Ok(()),
        }
    }

    /// Checks that `t` lives on this context.
    pub(crate) fn owns(&self, arg: &'static str, t: &Tensor) -> Result<()> {
        if t.owner == self.inner.id {
            Ok(())
        } else {
            Err(Error::ForeignTensor(arg))
        }
    }

    /// The compiled pipeline of a pass, built on first use.
    pub(crate) async fn pipeline(
        &self,
        pass: Pass,
        storage: Storage,
    ) -> Result<wgpu::ComputePipeline> {
        let key = (pass, storage);
        let cached = self
            .inner
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(p) = cached {
            return Ok(p);
        }
        let device = &self.inner.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let source = crate::kernels::wgsl(pass, self.inner.config, storage);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(pass.name()),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        let module = if self.inner.checked {
            device.create_shader_module(desc)
        } else {
            // SAFETY: every index in our kernels is bounded either by the
            // loop structure (workgroup arrays) or by the windows and shapes
            // the host validated before dispatch (storage buffers); the test
            // suite runs the same kernels checked and unchecked.
            unsafe {
                device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        };
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(pass.name()),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu {
                op: pass.name(),
                reason: e.to_string(),
            });
        }
        self.inner
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Uploads `data` as an f32 tensor of `shape`.
    pub fn tensor(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.tensor_as(data, shape, DType::F32)
    }

    /// Uploads `data` as a tensor of `shape` stored as `dtype` (rounded to
    /// nearest even on the host for f16 and bf16).
    pub fn tensor_as(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.empty_as(shape, dtype, "data")?;
        if data.len() != t.len() {
            return Err(Error::DataLength {
                arg: "data",
                shape: shape.to_vec(),
                expected: t.len(),
                got: data.len(),
            });
        }
        let mut bytes = crate::tensor::encode(data, dtype);
        // Buffers hold whole 32-bit words.
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        if !bytes.is_empty() {
            self.inner.queue.write_buffer(t.buffer(), 0, &bytes);
        }
        Ok(t)
    }

    /// An f32 tensor of `shape` with unspecified contents.
    pub(crate) fn empty(&self, shape: &[usize], arg: &'static str) -> Result<Tensor> {
        self.empty_as(shape, DType::F32, arg)
    }

    /// A tensor of `shape` stored as `dtype`, with unspecified contents.
    pub(crate) fn empty_as(
        &self,
        shape: &[usize],
        dtype: DType,
        arg: &'static str,
    ) -> Result<Tensor> {
        self.check_lost()?;
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let bytes = elements
            .and_then(|e| e.checked_mul(dtype.size()))
            .map(|b| b as u64);
        let limit = self.inner.limits.max_buffer_size;
        let bytes = match bytes {
            Some(b) if b <= limit => b,
            _ => {
                return Err(Error::TooLarge {
                    arg,
                    bytes: bytes.unwrap_or(u64::MAX),
                    limit,
                    which: "max_buffer_size",
                })
            }
        };
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let buffer = self.inner.pool.take(&self.inner.device, arg, bytes, usage);
        Ok(Tensor {
            buffer,
            shape: shape.to_vec(),
            dtype,
            owner: self.inner.id,
        })
    }

    /// Reads a tensor back to the host. Blocks; see [`Context::read_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read_async(t))
    }

    /// Reads a tensor back to the host once the GPU work writing it is done.
    pub async fn read_async(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.owns("tensor", t)?;
        self.check_lost()?;
        // Copies move whole 32-bit words; a half tensor of odd length has a
        // padding half at the end of its buffer.
        let bytes = t.size_bytes().next_multiple_of(4);
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let staging = self
            .inner
            .pool
            .take(&self.inner.device, "readback", bytes, usage);
        let mut encoder = self
            .inner
            .device
            .create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(t.buffer(), 0, staging.buffer(), 0, bytes);
        self.inner.queue.submit([encoder.finish()]);

        let (tx, rx) = futures_channel::oneshot::channel();
        staging
            .buffer()
            .map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
                let _ = tx.send(r);
            });
        #[cfg(not(target_arch = "wasm32"))]
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                op: "readback",
                reason: e.to_string(),
            })?;
        match rx.await {
            Ok(Ok(())) => {}
            _ => {
                self.check_lost()?;
                return Err(Error::Readback("tensor"));
            }
        }
        let out = {
            let view = staging
                .buffer()
                .get_mapped_range(0..bytes)
                .map_err(|_| Error::Readback("tensor"))?;
            crate::tensor::decode(&view, t.dtype(), t.len())
        };
        staging.buffer().unmap();
        Ok(out)
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner.adapter_info;
        f.debug_struct("Context")
            .field("adapter", &i.name)
            .field("backend", &i.backend)
            .field("checked", &self.inner.checked)
            .field("tile", &self.inner.config.tile)
            .finish()
    }
}
