//! The chunked (blockwise) forward: three passes per planned segment —
//! block states, the stripe scan, block outputs — on one of two paths,
//! each a unit that owns its requirements, encodings, kernels and grids:
//! [`portable`] (every adapter) and [`tensor_core`] (cooperative matrices).
//! The path is chosen once per call; the recording around it is shared.

pub(crate) mod portable;
pub(crate) mod tensor_core;

use super::launch::{bind, Io, Launch, Uniforms};
use super::{Compiled, KernelSpec, OutStore, Setup, Storage};
use crate::error::{Error, Result};
use crate::layout::Dims;
use crate::plan::{Segment, Window};
use crate::runtime::pool::PooledBuffer;
use crate::runtime::recorder::Recorder;
use crate::tensor::DType;

/// The most workgroups the stripe scan is dispatched with; past it each
/// invocation scans several elements (many short sequences otherwise start
/// a short workgroup per few hundred elements).
const SCAN_GROUPS: u64 = 16384;

/// What the host knows of a call's magnitudes (`None`: unknown), for the
/// path that rounds intermediates to f16.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Magnitudes {
    pub q: Option<f32>,
    pub k: Option<f32>,
    pub v: Option<f32>,
    /// Of the initial state; 0 without one.
    pub initial_state: Option<f32>,
    pub scale: f32,
    /// The smallest slope of the call's heads (0 without decay).
    pub min_slope: f32,
    /// Rows of the longest sequence.
    pub longest: usize,
}

/// One way of running the chunked forward's block passes.
pub(crate) trait ChunkPath: Sync {
    /// Its name, as `info` and the benchmarks print it.
    fn name(&self) -> &'static str;
    /// Whether it runs this call, on a context with this setup.
    fn runs(&self, setup: &Setup, storage: Storage, dims: &Dims) -> bool;
    /// Bytes per element of the per-block states it keeps in the scratch.
    fn block_state_bytes(&self) -> u64;
    /// How its output pass stores an output of `dtype` itself, or `None`
    /// where it writes f32 to be packed afterwards.
    fn output_store(&self, storage: Storage, dtype: DType) -> Option<OutStore>;
    /// Its block-state, stripe-scan and block-output kernels.
    fn kernels(&self, setup: &Setup, storage: Storage, out: OutStore) -> [KernelSpec; 3];
    /// Workgroups of its block-state pass for segment `s`.
    fn state_groups(&self, s: &Segment, dims: &Dims, setup: &Setup) -> u64;
    /// Whether its output pass also binds the scratch as f16 (`halves`).
    fn binds_halves(&self) -> bool;
}

/// The path of a call: the tensor cores where they run its shapes and, with
/// `magnitudes` given, where they bound every f16 value it rounds to; else
/// portable.
pub(crate) fn choose(
    setup: &Setup,
    storage: Storage,
    dims: &Dims,
    magnitudes: Option<&Magnitudes>,
) -> &'static dyn ChunkPath {
    let in_range = magnitudes.is_none_or(|m| tensor_core::in_range(storage, dims, m));
    if tensor_core::PATH.runs(setup, storage, dims) && in_range {
        &tensor_core::PATH
    } else {
        &portable::PATH
    }
}

/// Most bytes of block states [`Scratch::Keep`] holds between the halves of
/// a split forward; past it the forward is not split (it runs whole once the
/// carry is known).
pub(crate) const KEEP_BUDGET: u64 = 4 << 30;

/// Where the per-stripe states of a call live between its passes.
pub(crate) enum Scratch<'k> {
    /// One buffer that every segment reuses: each segment's passes run
    /// together.
    Shared,
    /// Block states and a scan that only carries, each segment's states in
    /// a buffer of its own pushed here, kept for [`Scratch::Resume`]: the
    /// first half of a forward whose carry in is not known yet. Nothing is
    /// pushed (and the call runs as states-only) past [`KEEP_BUDGET`].
    Keep(&'k mut Vec<PooledBuffer>),
    /// The other half, on the states kept by `Keep` for the same plan: the
    /// scan from the carry now in `io.state`, then the outputs.
    Resume(&'k [PooledBuffer]),
}

/// What to record after each segment's passes (the state carried out of it
/// is then in `io.state`).
pub(crate) type AfterSegment<'f> = &'f mut dyn FnMut(&mut Recorder<'_>, &Segment);

/// Records the three passes of every segment of `launch` (those `scratch`
/// asks for), then `after`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record(
    rec: &mut Recorder<'_>,
    setup: &Setup,
    path: &dyn ChunkPath,
    launch: &Launch<'_>,
    io: &Io<'_>,
    out: OutStore,
    mut after: Option<AfterSegment<'_>>,
    scratch: Scratch<'_>,
) -> Result<()> {
    let rt = rec.runtime();
    let kept_bytes: u64 = launch.segments.iter().map(|s| s.scratch_bytes).sum();
    let (keep, resume) = match scratch {
        Scratch::Keep(kept) if kept_bytes <= KEEP_BUDGET => (Some(kept), None),
        Scratch::Resume(kept) => {
            let same = kept.len() == launch.segments.len()
                && kept
                    .iter()
                    .zip(&launch.segments)
                    .all(|(k, s)| k.buffer().size() >= s.scratch_bytes);
            if !same {
                return Err(Error::Gpu {
                    op: "forward",
                    reason: "the kept block states do not match this call's plan".into(),
                });
            }
            (None, Some(kept))
        }
        Scratch::Keep(_) | Scratch::Shared => (None, None),
    };
    let keeping = keep.is_some();
    let launch = &Launch {
        scan_keeps: keeping,
        states_only: launch.states_only || keeping,
        ..launch.clone()
    };
    let [state_spec, scan_spec, output_spec] = path.kernels(setup, launch.storage, out);
    let block_state: Compiled = state_spec.compile(rt).await?;
    let scan = scan_spec.compile(rt).await?;
    let shared = super::shared_reads(&[("q", io.q), ("k", io.k), ("v", io.v)], &[io.o]);
    let output = match launch.states_only {
        true => None,
        false => Some(output_spec.sharing(&shared).compile(rt).await?),
    };
    let uniforms = Uniforms::new(rec, launch);
    // Kept states take a buffer per segment; otherwise one serves them all.
    let buffers: Vec<wgpu::Buffer> = match (keep, resume) {
        (Some(kept), _) => launch
            .segments
            .iter()
            .map(|s| {
                let buffer =
                    rt.buffer("block states", s.scratch_bytes, wgpu::BufferUsages::STORAGE);
                let handle = buffer.buffer().clone();
                kept.push(buffer);
                handle
            })
            .collect(),
        (None, Some(kept)) => kept.iter().map(|k| k.buffer().clone()).collect(),
        (None, None) => {
            let bytes = launch.segments.iter().map(|s| s.scratch_bytes).max();
            let one = rt.buffer(
                "block states",
                bytes.unwrap_or(4),
                wgpu::BufferUsages::STORAGE,
            );
            vec![rec.keep(one); launch.segments.len()]
        }
    };
    let dims = &launch.dims;
    let threads = u64::from(setup.config.threads());
    for (i, (s, scratch)) in launch.segments.iter().zip(&buffers).enumerate() {
        let states = || {
            bind(
                scratch,
                Window {
                    offset: 0,
                    size: s.scratch_bytes,
                    base: 0,
                },
            )
        };
        if resume.is_none() {
            let mut state_pass = uniforms.named(i);
            state_pass.extend(io.named(s, &["k", "v"]));
            state_pass.push(("states", states()));
            block_state.dispatch(
                rec,
                "block_state",
                &state_pass,
                path.state_groups(s, dims, setup),
            );
        }
        let mut scan_pass = uniforms.named(i);
        scan_pass.push(("states", states()));
        scan_pass.extend(io.named(s, &["carry"]));
        let scan_groups = ((s.bh_count * dims.d * dims.e) as u64).div_ceil(threads);
        scan.dispatch(rec, "state_scan", &scan_pass, scan_groups.min(SCAN_GROUPS));
        if let Some(output) = &output {
            let mut output_pass = uniforms.named(i);
            output_pass.extend(io.named(s, &["q", "k", "v", "o"]));
            output_pass.push(("states", states()));
            if path.binds_halves() {
                output_pass.push(("halves", states()));
            }
            // Timing labels name the pass, whichever path runs it.
            output.dispatch(
                rec,
                "block_output",
                &output_pass,
                (s.bh_count * s.blocks) as u64,
            );
        }
        if let Some(f) = after.as_mut() {
            f(rec, s);
        }
    }
    Ok(())
}
