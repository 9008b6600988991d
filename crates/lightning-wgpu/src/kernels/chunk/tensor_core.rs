//! The tensor-core chunk path: cooperative matrices (16x16x16, f16
//! operands, f32 accumulation) for f16 and bf16 inputs, where the adapter
//! has them (e.g. NVIDIA on Vulkan). It rounds the masked scores and the
//! carried state to f16, and keeps the per-block states in f16.

use super::ChunkPath;
use crate::kernels::{Kernel, KernelSpec, OutStore, Setup, Storage};
use crate::layout::Dims;
use crate::plan::Segment;
use crate::tensor::DType;

/// Widest d and e (the kernels' workgroup arrays are sized for it).
pub const MAX_DIM: usize = 128;

/// Rows per block the kernels are written for.
pub(crate) const BLOCK_ROWS: u32 = 64;

/// Workgroup memory the kernels declare, in bytes: the output pass's Q,
/// masked scores and one staged slice (f16, rows padded by 8 elements) and
/// its f32 exchange; the state pass's arrays take less.
pub(crate) const WORKGROUP_BYTES: u32 = 2 * (64 * 136 + 64 * 72 + 32 * 136) + 4 * 64 * 32;

/// Invocations per workgroup of the widest kernel (the block-state pass:
/// 32 subgroups of 32).
pub(crate) const MAX_INVOCATIONS: u32 = 1024;

/// Columns of e one workgroup of the block-state pass covers.
const STATE_COLUMNS: usize = 64;

/// Whether the adapter can run these kernels, or why not.
pub(crate) fn adapter_support(
    adapter: &wgpu::Adapter,
    packed_f16: bool,
) -> std::result::Result<(), String> {
    let features = adapter.features();
    let info = adapter.get_info();
    let limits = adapter.limits();
    if !crate::runtime::device::has_f16_matrices(adapter) {
        return Err("lists no 16x16x16 f16 x f16 -> f32 cooperative matrices".into());
    }
    if !features.contains(wgpu::Features::SHADER_F16) || packed_f16 {
        return Err("has no SHADER_F16 (or packed f16 was forced)".into());
    }
    if (info.subgroup_min_size, info.subgroup_max_size) != (32, 32) {
        return Err(format!(
            "has subgroups of {}..{} invocations (the kernels are laid out for 32)",
            info.subgroup_min_size, info.subgroup_max_size
        ));
    }
    if limits.max_compute_workgroup_storage_size < WORKGROUP_BYTES
        || limits.max_compute_invocations_per_workgroup < MAX_INVOCATIONS
        || limits.max_compute_workgroup_size_x < MAX_INVOCATIONS
    {
        return Err("has workgroup limits below what the kernels declare".into());
    }
    Ok(())
}

pub(crate) struct TensorCore;

pub(crate) static PATH: TensorCore = TensorCore;

impl ChunkPath for TensorCore {
    fn name(&self) -> &'static str {
        "tensor-core"
    }

    fn runs(&self, setup: &Setup, storage: Storage, dims: &Dims) -> bool {
        let fits = |w: usize| w.is_multiple_of(16) && w <= MAX_DIM;
        setup.tensor_cores
            && setup.config.rows == BLOCK_ROWS
            && storage.is_half()
            && fits(dims.d)
            && fits(dims.e)
    }

    fn block_state_bytes(&self) -> u64 {
        2
    }

    fn output_store(&self, storage: Storage, dtype: DType) -> Option<OutStore> {
        match (storage, dtype) {
            (_, DType::F32) => Some(OutStore::F32),
            (Storage::F16Native, DType::F16) => Some(OutStore::F16),
            (Storage::Bf16, DType::BF16) => Some(OutStore::Bf16Pairs),
            _ => None,
        }
    }

    fn kernels(&self, setup: &Setup, storage: Storage, out: OutStore) -> [KernelSpec; 3] {
        // These kernels read native f16 two to a word, as packed f16.
        let words = match storage {
            Storage::F16Native => Storage::F16Packed,
            other => other,
        };
        [
            KernelSpec::new(Kernel::BlockStateTc, words, setup.config),
            KernelSpec::new(Kernel::StateScan, storage, setup.config),
            KernelSpec {
                out,
                ..KernelSpec::new(Kernel::BlockOutputTc, words, setup.config)
            },
        ]
    }

    fn state_groups(&self, s: &Segment, dims: &Dims, _: &Setup) -> u64 {
        // One workgroup per (bh, stripe, 64 columns of e).
        let stripes = s.blocks.div_ceil(crate::kernels::spec::STRIPE as usize);
        (s.bh_count * stripes * dims.e.div_ceil(STATE_COLUMNS)) as u64
    }

    fn binds_halves(&self) -> bool {
        true
    }
}
