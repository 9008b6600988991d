//! The portable chunk path: f32 arithmetic in plain registers, 4x4 tiles
//! per invocation, on every adapter (browsers included).

use super::ChunkPath;
use crate::kernels::{Kernel, KernelSpec, OutStore, Setup, Storage};
use crate::layout::Dims;
use crate::plan::Segment;
use crate::tensor::DType;

pub(crate) struct Portable;

pub(crate) static PATH: Portable = Portable;

impl ChunkPath for Portable {
    fn name(&self) -> &'static str {
        "portable"
    }

    fn runs(&self, _: &Setup, _: Storage, _: &Dims) -> bool {
        true
    }

    fn block_state_bytes(&self) -> u64 {
        4
    }

    fn output_store(&self, _: Storage, dtype: DType) -> Option<OutStore> {
        (dtype == DType::F32).then_some(OutStore::F32)
    }

    fn kernels(&self, setup: &Setup, storage: Storage, _: OutStore) -> [KernelSpec; 3] {
        [Kernel::BlockState, Kernel::StateScan, Kernel::BlockOutput]
            .map(|k| KernelSpec::new(k, storage, setup.config))
    }

    fn state_groups(&self, s: &Segment, dims: &Dims, setup: &Setup) -> u64 {
        // One workgroup per (bh, stripe, d tile, e tile).
        let tile = setup.config.rows as usize;
        let tiles = |w: usize| w.div_ceil(tile);
        let stripes = s.blocks.div_ceil(crate::kernels::spec::STRIPE as usize);
        (s.bh_count * stripes * tiles(dims.d) * tiles(dims.e)) as u64
    }

    fn binds_halves(&self) -> bool {
        false
    }
}
