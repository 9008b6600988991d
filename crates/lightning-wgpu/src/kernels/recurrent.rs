//! Recording the token-by-token recurrence: the recurrent forward method
//! and decoding against a slot cache.

use super::launch::{whole, Io, Launch, Uniforms};
use super::{Kernel, KernelSpec, Setup};
use crate::error::Result;
use crate::runtime::recorder::Recorder;

/// Columns of e one workgroup covers (`4 * COLUMN_QUADS` in
/// shaders/recurrent.wgsl).
const COLUMNS: usize = 128;

/// Most rows one dispatch walks: an invocation steps through every row of
/// its segment, and some drivers cap the iterations one invocation may run
/// (llvmpipe returns zeros past about 65535 of them, a watchdog can end a
/// long one), so the plan splits rows into dispatches that carry the state.
/// Counted in inner-loop iterations: a row costs `d / 8 + 8` of them.
pub(crate) fn max_rows(d: usize) -> usize {
    (16384 / (d.div_ceil(8) + 8)).max(1)
}

/// Records the recurrence over every segment of `launch`. `slots` maps each
/// batch entry to its state in slot mode (decoding); unused otherwise.
pub(crate) async fn record(
    rec: &mut Recorder<'_>,
    setup: &Setup,
    launch: &Launch<'_>,
    io: &Io<'_>,
    slots: Option<&[i32]>,
) -> Result<()> {
    let kernel = KernelSpec::new(Kernel::Recurrent, launch.storage, setup.config)
        .compile(rec.runtime())
        .await?;
    let uniforms = Uniforms::new(rec, launch);
    // The slot map is bound in either mode; sequence mode never reads it.
    let map = slots.unwrap_or(&[0]);
    let slot_buffer = rec.upload(
        "slots",
        bytemuck::cast_slice(map),
        wgpu::BufferUsages::STORAGE,
    );
    let e_tiles = launch.dims.e.div_ceil(COLUMNS);
    for (i, s) in launch.segments.iter().enumerate() {
        let mut named = uniforms.named(i);
        named.extend(io.named(s, &["q", "k", "v", "o", "state"]));
        named.push(("slots", whole(&slot_buffer, (map.len() * 4) as u64)));
        kernel.dispatch(rec, "recurrent", &named, (s.bh_count * e_tiles) as u64);
    }
    Ok(())
}
