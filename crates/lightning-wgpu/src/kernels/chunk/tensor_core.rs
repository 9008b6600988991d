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

/// Largest magnitude this path lets reach an f16 value: half of f16's, so
/// rounding and accumulation order cannot push a bounded value over.
const F16_SAFE: f64 = 32752.0;

/// Smallest largest-magnitude of a bf16 input this path takes: below f16's
/// smallest normal the conversion keeps fewer bits than bf16 has.
const BF16_SMALLEST_MAX: f64 = 6.103_515_625e-5;

/// Whether every value this path rounds to f16 stays within f16's range for
/// inputs of these magnitudes: q, k and v as converted; the scores
/// `scale lambda^(r-c) q.k` (at most `|scale| d |q| |k|`); the scaled rows
/// of Q; the per-block states (at most `|k| |v|` times the rows of a stripe,
/// or the decay's geometric sum) and the carried state (the same over the
/// whole sequence, plus the initial state). An unknown magnitude is out of
/// range.
pub(crate) fn in_range(storage: Storage, dims: &Dims, m: &super::Magnitudes) -> bool {
    let (Some(q), Some(k), Some(v), Some(s0)) = (m.q, m.k, m.v, m.initial_state) else {
        return false;
    };
    let (q, k, v, s0) = (q as f64, k as f64, v as f64, s0 as f64);
    let scale = (m.scale as f64).abs();
    let lambda = (-(m.min_slope as f64)).exp();
    // Sum over i of lambda^i, over at most `rows` rows.
    let sum = |rows: usize| {
        if lambda < 1.0 {
            (rows as f64).min(1.0 / (1.0 - lambda))
        } else {
            rows as f64
        }
    };
    let stripe_rows = (crate::kernels::spec::STRIPE * BLOCK_ROWS) as usize;
    let bounds = [
        q.max(k).max(v),
        scale * dims.d as f64 * q * k,
        scale * q,
        k * v * sum(stripe_rows),
        k * v * sum(m.longest) + s0,
    ];
    let small =
        storage == Storage::Bf16 && [q, k, v].iter().any(|&x| x > 0.0 && x < BF16_SMALLEST_MAX);
    !small && bounds.iter().all(|b| b.is_finite() && *b <= F16_SAFE)
}

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

#[cfg(test)]
mod tests {
    use super::in_range;
    use crate::kernels::chunk::Magnitudes;
    use crate::kernels::Storage;
    use crate::layout::Dims;

    fn magnitudes(q: f32, k: f32, v: f32, min_slope: f32, longest: usize) -> Magnitudes {
        Magnitudes {
            q: Some(q),
            k: Some(k),
            v: Some(v),
            initial_state: Some(1.0),
            scale: 1.0,
            min_slope,
            longest,
        }
    }

    #[test]
    fn only_calls_whose_f16_values_are_bounded_take_the_tensor_cores() {
        let dims = Dims {
            b: 4,
            h: 32,
            n: 32768,
            d: 128,
            e: 128,
        };
        let bf16 = Storage::Bf16;
        // Typical inputs with decay: in range.
        assert!(in_range(
            bf16,
            &dims,
            &magnitudes(3.0, 3.0, 3.0, 0.004, 32768)
        ));
        // bf16 values f16 cannot hold.
        assert!(!in_range(
            bf16,
            &dims,
            &magnitudes(1e5, 1.0, 1.0, 0.5, 32768)
        ));
        assert!(!in_range(
            bf16,
            &dims,
            &magnitudes(1.0, 1.0, 1e30, 0.5, 32768)
        ));
        // A long sequence without decay: the carried state can pass f16's range.
        assert!(!in_range(
            bf16,
            &dims,
            &magnitudes(1.0, 1.0, 1.0, 0.0, 131072)
        ));
        assert!(in_range(
            bf16,
            &dims,
            &magnitudes(1.0, 1.0, 1.0, 0.0, 16384)
        ));
        // Scores: d |q| |k| scale.
        assert!(!in_range(
            bf16,
            &dims,
            &magnitudes(30.0, 30.0, 1.0, 0.5, 100)
        ));
        // bf16 inputs below f16's normal range lose bits; f16 ones are f16 already.
        assert!(!in_range(
            bf16,
            &dims,
            &magnitudes(1e-6, 1.0, 1.0, 0.5, 100)
        ));
        assert!(in_range(
            Storage::F16Native,
            &dims,
            &magnitudes(1e-6, 1.0, 1.0, 0.5, 100)
        ));
        // Unknown magnitudes are out of range.
        let unknown = Magnitudes {
            v: None,
            ..magnitudes(1.0, 1.0, 1.0, 0.5, 100)
        };
        assert!(!in_range(bf16, &dims, &unknown));
    }
}
