//! Operations, one module per family. Each validates its inputs on the host,
//! plans its dispatches (see [`plan`]) and records them; the pieces they
//! share — the uniform block, bindings, grid folding, submission under error
//! scopes — live here.

pub mod backward;
mod chunk;
pub mod forward;
pub(crate) mod plan;
pub mod recurrent;
pub mod softmax;

use std::num::NonZeroU64;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::{Pass, Storage};
use crate::layout::{Dims, Layout};
use crate::pool::PooledBuffer;
use crate::tensor::{DType, Tensor};
use plan::{Segment, Window};

/// Uniform block of every pass (`Params` in shaders/common.wgsl).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    heads: u32,
    rows: u32,
    dim_k: u32,
    dim_v: u32,
    blocks: u32,
    bh_start: u32,
    bh_count: u32,
    b_first: u32,
    q_stride: [u32; 4],
    k_stride: [u32; 4],
    v_stride: [u32; 4],
    o_stride: [u32; 4],
    state_base: u32,
    has_state: u32,
    scale: f32,
    slotted: u32,
    stripe_base: u32,
    _pad: [u32; 3],
}

/// Everything one recorded call needs besides its tensors.
pub(crate) struct Launch<'a> {
    pub dims: Dims,
    pub layout: Layout,
    pub scale: f32,
    pub slopes: Option<&'a [f32]>,
    /// The state tensor holds a state to start from (an initial state, or a
    /// decode cache).
    pub starts_from_state: bool,
    /// Decode: states are found through a slot per batch entry.
    pub slotted: bool,
    /// How the kernels read q, k and v.
    pub storage: Storage,
    /// q, k, v and o viewed in reversed time (see `plan::Limits::reversed`).
    pub reversed: [bool; 4],
    pub segments: Vec<Segment>,
}

impl Launch<'_> {
    fn params(&self, s: &Segment) -> Params {
        let dims = &self.dims;
        let stride = |width: usize, w: &Window, reversed: bool| {
            let (sb, sh, sn) = self.layout.strides(dims.h, dims.n, width);
            // Truncation is intended: the kernels compute offsets modulo 2^32
            // and every true offset inside a window is below 2^32; so is a
            // reversed view's negative row stride.
            let row = if reversed {
                (sn as u32).wrapping_neg()
            } else {
                sn as u32
            };
            [sb as u32, sh as u32, row, w.base]
        };
        let [rq, rk, rv, ro] = self.reversed;
        Params {
            heads: dims.h as u32,
            rows: s.rows as u32,
            dim_k: dims.d as u32,
            dim_v: dims.e as u32,
            blocks: s.blocks as u32,
            bh_start: s.bh_start as u32,
            bh_count: s.bh_count as u32,
            b_first: (s.bh_start / dims.h) as u32,
            q_stride: stride(dims.d, &s.q, rq),
            k_stride: stride(dims.d, &s.k, rk),
            v_stride: stride(dims.e, &s.v, rv),
            o_stride: stride(dims.e, &s.o, ro),
            state_base: s.state_base,
            has_state: u32::from(self.starts_from_state || s.n0 > s.seq_start),
            scale: self.scale,
            slotted: u32::from(self.slotted),
            stripe_base: s.stripe_base,
            _pad: [0; 3],
        }
    }
}

/// GPU-side inputs every pass binds at 0 and 1: the uniform blocks of all
/// segments, and the slopes.
pub(crate) struct Common {
    uniforms: PooledBuffer,
    stride: u64,
    slopes: PooledBuffer,
    heads: usize,
}

impl Common {
    pub(crate) fn new(ctx: &Context, launch: &Launch) -> Self {
        let inner = &ctx.inner;
        let size = std::mem::size_of::<Params>() as u64;
        let stride = size.next_multiple_of(inner.limits.min_uniform_buffer_offset_alignment as u64);
        let count = launch.segments.len() as u64;
        let uniforms = inner.pool.take(
            &inner.device,
            "params",
            stride * count,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        let mut bytes = vec![0u8; (stride * count) as usize];
        for (i, s) in launch.segments.iter().enumerate() {
            let at = i * stride as usize;
            bytes[at..at + size as usize].copy_from_slice(bytemuck::bytes_of(&launch.params(s)));
        }
        inner.queue.write_buffer(uniforms.buffer(), 0, &bytes);

        let heads = launch.dims.h;
        let slopes = inner.pool.take(
            &inner.device,
            "slopes",
            (heads * 4) as u64,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        );
        let no_decay = vec![0.0f32; heads];
        inner.queue.write_buffer(
            slopes.buffer(),
            0,
            bytemuck::cast_slice(launch.slopes.unwrap_or(&no_decay)),
        );
        Common {
            uniforms,
            stride,
            slopes,
            heads,
        }
    }

    /// Bind group of `pipeline` for segment `index`: params, slopes, then
    /// `rest` from binding 2 on.
    fn group(
        &self,
        device: &wgpu::Device,
        pipeline: &wgpu::ComputePipeline,
        index: usize,
        rest: &[wgpu::BindingResource],
    ) -> wgpu::BindGroup {
        let params = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.uniforms.buffer(),
            offset: index as u64 * self.stride,
            size: NonZeroU64::new(std::mem::size_of::<Params>() as u64),
        });
        let slopes = bind(
            self.slopes.buffer(),
            Window {
                offset: 0,
                size: (self.heads * 4) as u64,
                base: 0,
            },
        );
        let mut entries = vec![
            wgpu::BindGroupEntry {
                binding: 0,
                resource: params,
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: slopes,
            },
        ];
        entries.extend(rest.iter().enumerate().map(|(j, r)| wgpu::BindGroupEntry {
            binding: 2 + j as u32,
            resource: r.clone(),
        }));
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }
}

/// A dispatch of `groups` workgroups of `pipeline` for segment `index`.
pub(crate) fn dispatch(
    ctx: &Context,
    pass: &mut wgpu::ComputePass,
    common: &Common,
    pipeline: &wgpu::ComputePipeline,
    index: usize,
    bindings: &[wgpu::BindingResource],
    groups: usize,
) {
    let group = common.group(&ctx.inner.device, pipeline, index, bindings);
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, &group, &[]);
    let (x, y) = fold(
        groups as u64,
        ctx.inner.limits.max_compute_workgroups_per_dimension as u64,
    );
    pass.dispatch_workgroups(x, y, 1);
}

pub(crate) fn bind(buffer: &wgpu::Buffer, w: Window) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: w.offset,
        size: NonZeroU64::new(w.size),
    })
}

/// A grid of `groups` workgroups as (x, y) within the per-dimension limit;
/// the kernels skip the indices past `groups` in the last row.
fn fold(groups: u64, max: u64) -> (u32, u32) {
    if groups <= max {
        (groups as u32, 1)
    } else {
        (max as u32, groups.div_ceil(max) as u32)
    }
}

/// The plan limits of this context.
pub(crate) fn limits(ctx: &Context, input: DType) -> plan::Limits {
    let inner = &ctx.inner;
    plan::Limits {
        tile: inner.config.tile as usize,
        input_bytes: input.size() as u64,
        output_bytes: 4,
        block_state_bytes: 4,
        reversed: [false; 4],
        max_binding: inner.max_binding,
        offset_align: inner.limits.min_storage_buffer_offset_alignment as u64,
        max_groups: inner.limits.max_compute_workgroups_per_dimension as u64,
    }
}

/// The pipelines of `passes`, compiled on first use.
pub(crate) async fn pipelines<const N: usize>(
    ctx: &Context,
    passes: [Pass; N],
    storage: Storage,
) -> Result<[wgpu::ComputePipeline; N]> {
    let mut out = Vec::with_capacity(N);
    for pass in passes {
        out.push(ctx.pipeline(pass, storage).await?);
    }
    out.try_into().map_err(|_| Error::Gpu {
        op: "pipelines",
        reason: "pipeline count".into(),
    })
}

/// Records with `record` into one encoder and submits, under error scopes so
/// a GPU-side failure comes back as an [`Error`] rather than a panic.
pub(crate) async fn submit(
    ctx: &Context,
    op: &'static str,
    record: impl FnOnce(&mut wgpu::CommandEncoder),
) -> Result<()> {
    let device = &ctx.inner.device;
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let mut encoder =
        device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
    record(&mut encoder);
    ctx.inner.queue.submit([encoder.finish()]);
    let oom = memory.pop().await;
    let invalid = validation.pop().await;
    if let Some(e) = oom.or(invalid) {
        ctx.check_lost()?;
        return Err(Error::Gpu {
            op,
            reason: e.to_string(),
        });
    }
    Ok(())
}

/// Records one compute pass with `record` and submits it (see [`submit`]).
/// While timing is on, the pass writes its start and end timestamps.
pub(crate) async fn submit_pass(
    ctx: &Context,
    op: &'static str,
    record: impl FnOnce(&mut wgpu::ComputePass),
) -> Result<()> {
    submit_passes(ctx, op, |passes| record(passes.pass(op))).await
}

/// As [`submit_pass`] for an op of several kernels: `record` asks
/// [`Passes::pass`] for the pass of each dispatch, naming its kernel. One
/// compute pass holds them all, except while timing is on: then each kernel
/// runs in a pass of its own with its own timestamps.
pub(crate) async fn submit_passes(
    ctx: &Context,
    op: &'static str,
    record: impl FnOnce(&mut Passes),
) -> Result<()> {
    let split = ctx.is_timing();
    submit(ctx, op, |encoder| {
        let mut passes = Passes {
            ctx,
            encoder,
            split,
            current: None,
        };
        record(&mut passes);
    })
    .await
}

/// The compute passes of one [`submit_passes`].
pub(crate) struct Passes<'a> {
    ctx: &'a Context,
    encoder: &'a mut wgpu::CommandEncoder,
    split: bool,
    current: Option<wgpu::ComputePass<'static>>,
}

impl Passes<'_> {
    /// The pass to record the next dispatch of kernel `label` into.
    pub(crate) fn pass(&mut self, label: &'static str) -> &mut wgpu::ComputePass<'static> {
        if self.split {
            // Ends the previous pass, so the encoder can begin the next.
            self.current = None;
        }
        let (ctx, encoder) = (self.ctx, &mut *self.encoder);
        self.current.get_or_insert_with(|| {
            let stamps = ctx.next_stamps(label);
            encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label),
                    timestamp_writes: stamps.as_ref().map(|s| s.writes()),
                })
                .forget_lifetime()
        })
    }
}

/// Where a pass writes its output: the tensor itself when it is f32, else
/// an f32 scratch that [`Output::finish`] packs into the tensor's halves
/// (packing in place would make neighbouring invocations share words).
pub(crate) struct Output<'a> {
    target: &'a Tensor,
    wide: Option<PooledBuffer>,
}

impl<'a> Output<'a> {
    pub(crate) fn new(ctx: &Context, target: &'a Tensor) -> Result<Self> {
        let wide = match target.dtype() {
            DType::F32 => None,
            DType::F16 | DType::BF16 => {
                let bytes = (target.len() * 4) as u64;
                let limit = ctx.inner.limits.max_buffer_size;
                if bytes > limit {
                    return Err(Error::TooLarge {
                        arg: "o (f32 while computed)",
                        bytes,
                        limit,
                        which: "max_buffer_size",
                    });
                }
                Some(ctx.inner.pool.take(
                    &ctx.inner.device,
                    "o in f32",
                    bytes,
                    wgpu::BufferUsages::STORAGE,
                ))
            }
        };
        Ok(Output { target, wide })
    }

    /// Where the passes write the target itself, in its own storage type
    /// (the tensor-core output pass writing f16).
    pub(crate) fn direct(target: &'a Tensor) -> Self {
        Output { target, wide: None }
    }

    /// The buffer the passes write: in f32, or the target itself.
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.wide
            .as_ref()
            .map_or(self.target.buffer(), |w| w.buffer())
    }

    /// Packs the f32 result into the target, when it is stored in halves.
    pub(crate) async fn finish(self, ctx: &Context) -> Result<()> {
        match &self.wide {
            Some(wide) => pack(ctx, wide.buffer(), self.target).await,
            None => Ok(()),
        }
    }
}

/// Packs the f32 elements of `wide` into `target`'s f16 or bf16 words, on the GPU.
pub(crate) async fn pack(ctx: &Context, wide: &wgpu::Buffer, target: &Tensor) -> Result<()> {
    let [pipe] = pipelines(ctx, [Pass::PackOutput], Storage::F32).await?;
    let inner = &ctx.inner;
    let elements = target.len() as u64;
    // Chunks of whole words that fit one binding on both sides, starting
    // on aligned offsets (a multiple of 128 elements: 512 B of f32, 256 B of halves).
    let per_chunk = (inner.max_binding / 4 / 128 * 128).max(128);
    let chunks: Vec<(u64, u64)> = (0..elements)
        .step_by(per_chunk as usize)
        .map(|e0| (e0, per_chunk.min(elements - e0)))
        .collect();
    let stride = 16u64.next_multiple_of(inner.limits.min_uniform_buffer_offset_alignment as u64);
    let jobs = inner.pool.take(
        &inner.device,
        "pack jobs",
        stride * chunks.len() as u64,
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    );
    let bf16 = u32::from(target.dtype() == DType::BF16);
    let mut bytes = vec![0u8; (stride * chunks.len() as u64) as usize];
    for (i, &(_, n)) in chunks.iter().enumerate() {
        let job = [n.div_ceil(2) as u32, n as u32, bf16, 0];
        let at = i * stride as usize;
        bytes[at..at + 16].copy_from_slice(bytemuck::cast_slice(&job));
    }
    inner.queue.write_buffer(jobs.buffer(), 0, &bytes);
    submit_pass(ctx, "pack output", |pass| {
        pass.set_pipeline(&pipe);
        for (i, &(e0, n)) in chunks.iter().enumerate() {
            let entries = [
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: jobs.buffer(),
                        offset: i as u64 * stride,
                        size: NonZeroU64::new(16),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: bind(
                        wide,
                        Window {
                            offset: e0 * 4,
                            size: n * 4,
                            base: 0,
                        },
                    ),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: bind(
                        target.buffer(),
                        Window {
                            offset: e0 * 2,
                            size: n.div_ceil(2) * 4,
                            base: 0,
                        },
                    ),
                },
            ];
            let group = inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipe.get_bind_group_layout(0),
                entries: &entries,
            });
            pass.set_bind_group(0, &group, &[]);
            let (x, y) = fold(
                n.div_ceil(2).div_ceil(256),
                inner.limits.max_compute_workgroups_per_dimension as u64,
            );
            pass.dispatch_workgroups(x, y, 1);
        }
    })
    .await
}

/// The tensors of one call.
pub(crate) struct Io<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// The f32 buffer the passes write o into (see [`Output`]).
    pub o: &'a wgpu::Buffer,
    pub state: &'a Tensor,
}

impl Context {
    /// Converts an f32 tensor to `dtype` on the GPU (f16 and bf16 round to
    /// nearest even, as the kernels' outputs do). Blocks.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn convert(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        pollster::block_on(self.convert_async(t, dtype))
    }

    /// Async form of [`Context::convert`].
    pub async fn convert_async(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        forward::check_tensor(self, "tensor", t, DType::F32)?;
        let out = self.empty_as(t.shape(), dtype, "converted")?;
        match dtype {
            DType::F32 => {
                let bytes = t.size_bytes();
                submit(self, "copy", |e| {
                    e.copy_buffer_to_buffer(t.buffer(), 0, out.buffer(), 0, bytes)
                })
                .await?
            }
            DType::F16 | DType::BF16 => pack(self, t.buffer(), &out).await?,
        }
        Ok(out)
    }
}

/// Scales each `d x e` state of `states` (f32, `(.., h, d, e)`) in place by
/// `exp(-slope) scale` of its head, on the GPU. Returns false, doing
/// nothing, where the tensor is larger than one binding (the caller then
/// scales on the host).
pub(crate) async fn scale_states(
    ctx: &Context,
    states: &Tensor,
    (h, d, e): (usize, usize, usize),
    slopes: Option<&[f32]>,
    scale: f32,
) -> Result<bool> {
    let bytes = states.size_bytes();
    if bytes > ctx.inner.max_binding {
        return Ok(false);
    }
    let count = states.len() / (d * e);
    let window = Window {
        offset: 0,
        size: bytes,
        base: 0,
    };
    let launch = Launch {
        dims: Dims {
            b: count / h,
            h,
            n: 1,
            d,
            e,
        },
        layout: Layout::Bhnd,
        scale,
        slopes,
        starts_from_state: false,
        slotted: false,
        storage: Storage::F32,
        reversed: [false; 4],
        segments: vec![Segment {
            seq_start: 0,
            bh_start: 0,
            bh_count: count,
            n0: 0,
            rows: 0,
            blocks: 0,
            q: window,
            k: window,
            v: window,
            o: window,
            state: window,
            state_base: 0,
            stripe_base: 0,
            scratch_bytes: 0,
        }],
    };
    let [pipe] = pipelines(ctx, [Pass::ScaleStates], Storage::F32).await?;
    let common = Common::new(ctx, &launch);
    let threads = ctx.inner.config.threads() as usize;
    submit_passes(ctx, "scale states", |passes| {
        dispatch(
            ctx,
            passes.pass(Pass::ScaleStates.name()),
            &common,
            &pipe,
            0,
            &[bind(states.buffer(), window)],
            states.len().div_ceil(threads),
        );
    })
    .await?;
    Ok(true)
}
