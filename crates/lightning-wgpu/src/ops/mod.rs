//! The operations, one module per family: each validates its inputs once
//! (`validate`), plans its dispatches (`plan`), records its kernels into one
//! encoder and submits it once.

pub mod backward;
pub mod convert;
pub mod decode;
pub mod draft;
pub mod forward;
#[cfg(not(target_arch = "wasm32"))]
pub mod parallel;
pub mod softmax;

use crate::context::Context;
use crate::plan::Limits;
use crate::tensor::DType;

/// The plan limits of this context for inputs stored as `input`, writing
/// `output_bytes` per element of o and keeping `block_state_bytes` per
/// element of the per-block states.
pub(crate) fn limits(
    ctx: &Context,
    input: DType,
    output_bytes: u64,
    block_state_bytes: u64,
) -> Limits {
    let rt = ctx.rt();
    Limits {
        block_rows: ctx.setup().config.rows as usize,
        input_bytes: input.size() as u64,
        output_bytes,
        block_state_bytes,
        reversed: [false; 4],
        at: Default::default(),
        heads: Default::default(),
        max_binding: rt.max_binding(),
        offset_align: rt.limits().min_storage_buffer_offset_alignment as u64,
        max_groups: rt.limits().max_compute_workgroups_per_dimension as u64,
    }
}
