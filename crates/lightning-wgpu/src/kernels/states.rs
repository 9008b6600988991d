//! Recording maps over small `(.., rows, cols)` states on the GPU: the
//! backward's transposed initial state and its dS0.

use super::launch::{bind, whole};
use super::params::StateMap;
use super::{BlockConfig, Compiled, Kernel, KernelSpec, Storage};
use crate::error::{Error, Result};
use crate::plan::Window;
use crate::runtime::recorder::Recorder;

/// A term `exp(-slope steps) scale X` of a map: X's buffer and the
/// element at which its states start (`steps` -1 undoes a step's decay).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Term<'a> {
    pub states: (&'a wgpu::Buffer, u64),
    pub steps: i32,
    pub scale: f32,
}

/// The state-map kernel, compiled for reading `x` and `y` and writing `out`.
pub(crate) async fn kernel(
    rt: &crate::runtime::Runtime,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Compiled> {
    let shared = super::shared_reads(&[("x", x), ("y", y)], &[out]);
    KernelSpec::new(Kernel::StateMap, Storage::F32, BlockConfig::default())
        .sharing(&shared)
        .compile(rt)
        .await
}

/// Records `out = x_term (transposed when asked) + y_term` over the states
/// `states` of `rows x cols` each (of `out`; X is `cols x rows` when
/// transposed), state i of head `i % heads`, in windows of whole states
/// that fit a binding.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record(
    rec: &mut Recorder<'_>,
    slopes: &[f32],
    states: std::ops::Range<usize>,
    (rows, cols): (usize, usize),
    x: Term<'_>,
    transpose: bool,
    y: Option<Term<'_>>,
    (out, out_first): (&wgpu::Buffer, u64),
) -> Result<()> {
    let y_buffer = y.map_or(x.states.0, |t| t.states.0);
    let kernel = kernel(rec.runtime(), x.states.0, y_buffer, out).await?;
    let map = Map {
        slopes,
        states,
        shape: (rows, cols),
        transpose,
    };
    record_with(rec, &kernel, &map, x, y, (out, out_first, 1))
}

/// What a state map covers.
pub(crate) struct Map<'a> {
    pub slopes: &'a [f32],
    pub states: std::ops::Range<usize>,
    /// `(rows, cols)` of each state of out.
    pub shape: (usize, usize),
    pub transpose: bool,
}

/// [`record`] with the kernel compiled beforehand (by [`kernel`], for these
/// buffers), state i of out `out_step` states after state i - 1.
pub(crate) fn record_with(
    rec: &mut Recorder<'_>,
    kernel: &Compiled,
    map: &Map<'_>,
    x: Term<'_>,
    y: Option<Term<'_>>,
    (out, out_first, out_step): (&wgpu::Buffer, u64, u64),
) -> Result<()> {
    let rt = rec.runtime();
    let (rows, cols) = map.shape;
    let slopes = map.slopes;
    let size = (rows * cols) as u64;
    let step = out_step.max(1);
    let align = rt.limits().min_storage_buffer_offset_alignment as u64;
    // Whole states per window, leaving room for the alignment of its start
    // (out's states spread `step` apart).
    let fit = rt.max_binding().saturating_sub(align) / (size * 4);
    let per = match fit {
        0 => 0,
        f => ((f - 1) / step + 1).min(u32::MAX as u64 / (size * step)),
    };
    if per == 0 {
        return Err(Error::TooLarge {
            arg: "state",
            bytes: size * 4,
            limit: rt.max_binding(),
            which: "max_storage_buffer_binding_size",
        });
    }
    let slope_buffer = rec.upload(
        "slopes",
        bytemuck::cast_slice(slopes),
        wgpu::BufferUsages::STORAGE,
    );
    // A window of states `[first, first + n)`, `step` apart, of a buffer
    // whose states start at element `at`, bound from the aligned offset
    // below them.
    let window = |at: u64, first: u64, n: u64, step: u64| {
        let lo = (at + first * step * size) * 4;
        let start = lo / align * align;
        let w = Window {
            offset: start,
            size: lo + ((n - 1) * step + 1) * size * 4 - start,
            base: 0,
        };
        (w, ((lo - start) / 4) as u32)
    };
    let mut first = map.states.start as u64;
    while first < map.states.end as u64 {
        let n = per.min(map.states.end as u64 - first);
        let (xw, x_base) = window(x.states.1, first, n, 1);
        let y_at = y.map_or(x.states, |t| t.states);
        let (yw, y_base) = window(y_at.1, first, n, 1);
        let (ow, out_base) = window(out_first, first, n, step);
        let params = StateMap {
            heads: slopes.len() as u32,
            first: first as u32,
            count: n as u32,
            x_base,
            y_base,
            out_base,
            rows: rows as u32,
            cols: cols as u32,
            transpose: u32::from(map.transpose),
            x_steps: x.steps,
            x_scale: x.scale,
            y_steps: y.map_or(0, |t| t.steps),
            y_scale: y.map_or(0.0, |t| t.scale),
            out_step: step as u32,
            ..Default::default()
        };
        let uniform = rec.upload(
            "state map",
            bytemuck::bytes_of(&params),
            wgpu::BufferUsages::UNIFORM,
        );
        kernel.dispatch(
            rec,
            "state map",
            &[
                (
                    "map",
                    whole(&uniform, std::mem::size_of::<StateMap>() as u64),
                ),
                ("slopes", whole(&slope_buffer, (slopes.len() * 4) as u64)),
                ("x", bind(x.states.0, xw)),
                ("y", bind(y_at.0, yw)),
                ("out", bind(out, ow)),
            ],
            (n * size).div_ceil(256),
        );
        first += n;
    }
    Ok(())
}

/// Records the final-state gradient's term `out_i += lambda^(n-1-i) x_i A`
/// over every segment of `launch` (x read through q's strides, out through
/// o's; `launch.transposed_state` says how A is laid out).
pub(crate) async fn record_term(
    rec: &mut Recorder<'_>,
    setup: &super::Setup,
    launch: &super::launch::Launch<'_>,
    x: &wgpu::Buffer,
    a: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    let shared = super::shared_reads(&[("x", x), ("a", a)], &[out]);
    let kernel = KernelSpec::new(Kernel::StateTerm, launch.storage, setup.config)
        .sharing(&shared)
        .compile(rec.runtime())
        .await?;
    let uniforms = super::launch::Uniforms::new(rec, launch);
    let threads = u64::from(setup.config.threads());
    for (i, s) in launch.segments.iter().enumerate() {
        let mut named = uniforms.named(i);
        named.extend([
            ("x", bind(x, s.q)),
            ("a", bind(a, s.state)),
            ("out", bind(out, s.o)),
        ]);
        let groups = ((s.bh_count * s.rows * launch.dims.e) as u64).div_ceil(threads);
        kernel.dispatch(rec, "state term", &named, groups);
    }
    Ok(())
}
