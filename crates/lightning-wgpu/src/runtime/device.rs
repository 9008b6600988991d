//! Finding adapters, choosing one, and opening a device on it.

use crate::error::{Error, Result};

/// What an adapter is, as `lightning-wgpu info` prints it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
}

pub(crate) fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter of `backends`, in wgpu's (stable) order; in a browser, the
/// one the page is given.
pub(crate) async fn list(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
) -> Vec<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        instance.enumerate_adapters(backends).await
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = backends;
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

pub(crate) fn summary(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    AdapterSummary {
        index,
        info: a.get_info(),
        features: a.features(),
        limits: a.limits(),
    }
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

/// The adapter named by `wanted` (an index, or a case-insensitive substring
/// of its name), else the best ranked one (the first of them, so the choice
/// is stable).
pub(crate) fn choose(adapters: Vec<wgpu::Adapter>, wanted: Option<&str>) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        return Err(Error::NoAdapter(
            " (install a Vulkan driver, e.g. Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
                .into(),
        ));
    }
    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    let pick = match wanted {
        None => {
            let ranks: Vec<u32> = adapters.iter().map(|a| rank(&a.get_info())).collect();
            let best = ranks.iter().copied().max().unwrap_or(0);
            ranks.iter().position(|&r| r == best)
        }
        Some(w) => match w.trim().parse::<usize>() {
            Ok(i) => (i < adapters.len()).then_some(i),
            Err(_) => names
                .iter()
                .position(|n| n.to_lowercase().contains(&w.trim().to_lowercase())),
        },
    };
    match pick.and_then(|i| adapters.into_iter().nth(i)) {
        Some(a) => Ok(a),
        None => Err(Error::NoAdapter(format!(
            " matching `{}` (have: {})",
            wanted.unwrap_or_default(),
            names.join(", ")
        ))),
    }
}

/// Whether the adapter lists cooperative matrices of 16x16x16 f16 x f16 ->
/// f32, the configuration the tensor-core kernels are written for.
pub(crate) fn has_f16_matrices(adapter: &wgpu::Adapter) -> bool {
    adapter
        .features()
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        && adapter.cooperative_matrix_properties().iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
}

/// Opens a device on `adapter` with `features` and the adapter's own limits.
pub(crate) async fn open(
    adapter: &wgpu::Adapter,
    features: wgpu::Features,
) -> Result<(wgpu::Device, wgpu::Queue)> {
    let experimental = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        // SAFETY: the experimental feature is used only by the tensor-core
        // kernels, whose configuration (16x16x16, f16 x f16 -> f32,
        // subgroups of 32) was checked against what the adapter reports
        // before the feature was asked for.
        unsafe { wgpu::ExperimentalFeatures::enabled() }
    } else {
        wgpu::ExperimentalFeatures::disabled()
    };
    adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("lightning-wgpu"),
            required_features: features,
            required_limits: adapter.limits(),
            experimental_features: experimental,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        })
        .await
        .map_err(|e| Error::RequestDevice {
            adapter: adapter.get_info().name,
            reason: e.to_string(),
        })
}
