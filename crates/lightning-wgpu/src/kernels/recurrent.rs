//! Recording the token-by-token recurrence: the recurrent forward method
//! and decoding against a slot cache.

use super::launch::{bind, Io, Launch, Uniforms};
use super::{Kernel, KernelSpec, Setup};
use crate::error::Result;
use crate::plan::Window;
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

/// The slot maps of a decode call: one per window of the cache, each giving
/// every request's slot in that window (or -1 padding, -2 elsewhere), and
/// the map of each segment.
#[derive(Default)]
pub(crate) struct SlotMaps {
    maps: Vec<Vec<i32>>,
    pub of_segment: Vec<usize>,
}

impl SlotMaps {
    pub(crate) fn push(&mut self, map: Vec<i32>) {
        self.maps.push(map);
    }
}

/// Records the recurrence over every segment of `launch`. `slots` maps each
/// batch entry to its state in slot mode (decoding); unused otherwise.
pub(crate) async fn record(
    rec: &mut Recorder<'_>,
    setup: &Setup,
    launch: &Launch<'_>,
    io: &Io<'_>,
    slots: Option<&SlotMaps>,
) -> Result<()> {
    let shared = super::shared_reads(&[("q", io.q), ("k", io.k), ("v", io.v)], &[io.o, io.state]);
    let kernel = KernelSpec::new(Kernel::Recurrent, launch.storage, setup.config)
        .sharing(&shared)
        .compile(rec.runtime())
        .await?;
    let uniforms = Uniforms::new(rec, launch);
    // A slot map is bound in either mode; sequence mode never reads it.
    // The maps go in one buffer, each at an aligned offset.
    let maps: &[Vec<i32>] = slots.map_or(&[], |m| &m.maps);
    let len = maps.first().map_or(1, Vec::len);
    let align = rec.runtime().limits().min_storage_buffer_offset_alignment as usize / 4;
    let stride = len.next_multiple_of(align.max(1));
    let mut words = vec![0i32; stride * maps.len().max(1)];
    for (i, m) in maps.iter().enumerate() {
        words[i * stride..i * stride + m.len()].copy_from_slice(m);
    }
    let slot_buffer = rec.upload(
        "slots",
        bytemuck::cast_slice(&words),
        wgpu::BufferUsages::STORAGE,
    );
    let e_tiles = launch.dims.e.div_ceil(COLUMNS);
    for (i, s) in launch.segments.iter().enumerate() {
        let mut named = uniforms.named(i);
        named.extend(io.named(s, &["q", "k", "v", "o", "state"]));
        let map = slots.map_or(0, |m| m.of_segment[i]);
        let window = Window {
            offset: (map * stride * 4) as u64,
            size: (len * 4) as u64,
            base: 0,
        };
        named.push(("slots", bind(&slot_buffer, window)));
        kernel.dispatch(rec, "recurrent", &named, (s.bh_count * e_tiles) as u64);
    }
    Ok(())
}
