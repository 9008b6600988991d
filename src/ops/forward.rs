//! The chunked forward pass: intra-block, block states, state scan,
//! inter-block (see `shaders/`).

use std::num::NonZeroU64;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::Pass;
use crate::layout::{Dims, Layout};
use crate::ops::plan::{self, Segment, Window};
use crate::tensor::{DType, Tensor};

/// Largest `d` and `e` the kernels accept.
pub const MAX_HEAD_DIM: usize = 1024;

/// How the forward pass is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// Blockwise (Lightning Attention-2): masked attention inside blocks, a
    /// key-value state across them.
    #[default]
    Chunk,
}

/// Options of [`Context::forward`]. `Default` is: no decay, scale 1, layout
/// `(b, h, n, d)`, zero initial state, no final state.
#[derive(Clone, Copy, Debug)]
pub struct ForwardOptions<'a> {
    /// Per-head decay slopes `s_h >= 0` (`lambda = exp(-s_h)`), `h` of them;
    /// `None` for no decay. See [`alibi_slopes`](crate::alibi_slopes).
    pub slopes: Option<&'a [f32]>,
    /// Multiplies `q` (1 in the official kernel; `1/sqrt(d)` in FLA's).
    pub scale: f32,
    /// Layout of q, k, v and o.
    pub layout: Layout,
    /// The state before the first position, `(b, h, d, e)`.
    pub initial_state: Option<&'a Tensor>,
    /// Also return the state after the last position.
    pub output_final_state: bool,
    /// Algorithm.
    pub method: Method,
}

impl Default for ForwardOptions<'_> {
    fn default() -> Self {
        ForwardOptions {
            slopes: None,
            scale: 1.0,
            layout: Layout::Bhnd,
            initial_state: None,
            output_final_state: false,
            method: Method::Chunk,
        }
    }
}

/// Results of [`Context::forward`].
#[derive(Debug)]
pub struct ForwardOutput {
    /// The attention output, shaped like `v`.
    pub o: Tensor,
    /// The state after the last position, `(b, h, d, e)`, when asked for.
    pub final_state: Option<Tensor>,
}

/// Uniform block of every pass (`Params` in shaders/common.wgsl).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
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
    _pad: u32,
}

fn dim_names(layout: Layout, width: &'static str) -> [&'static str; 4] {
    match layout {
        Layout::Bhnd => ["batch", "heads", "n", width],
        Layout::Bnhd => ["batch", "n", "heads", width],
    }
}

fn rank4(arg: &'static str, t: &Tensor, layout: Layout) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(t.shape()).map_err(|_| Error::Rank {
        arg,
        expected: 4,
        what: match layout {
            Layout::Bhnd => "(batch, heads, n, width)",
            Layout::Bnhd => "(batch, n, heads, width)",
        },
        got: t.shape().to_vec(),
    })
}

fn check_tensor(ctx: &Context, arg: &'static str, t: &Tensor) -> Result<()> {
    ctx.owns(arg, t)?;
    if t.dtype() != DType::F32 {
        return Err(Error::DType {
            arg,
            got: t.dtype(),
            expected: DType::F32,
        });
    }
    Ok(())
}

/// Checks every input and returns the problem's sizes.
pub(crate) fn validate(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &ForwardOptions,
) -> Result<Dims> {
    for (arg, t) in [("q", q), ("k", k), ("v", v)] {
        check_tensor(ctx, arg, t)?;
    }
    let layout = opts.layout;
    let qs = rank4("q", q, layout)?;
    let ks = rank4("k", k, layout)?;
    let vs = rank4("v", v, layout)?;
    for (arg, shape, width) in [("q", qs, "d"), ("k", ks, "d"), ("v", vs, "e")] {
        let names = dim_names(layout, width);
        if let Some(i) = shape.iter().position(|&x| x == 0) {
            return Err(Error::Empty { arg, dim: names[i] });
        }
    }
    let names = dim_names(layout, "d");
    for i in 0..4 {
        if ks[i] != qs[i] {
            return Err(Error::ShapeMismatch {
                arg: "k",
                dim: names[i],
                got: ks[i],
                reference: "q",
                expected: qs[i],
            });
        }
        if i < 3 && vs[i] != qs[i] {
            return Err(Error::ShapeMismatch {
                arg: "v",
                dim: names[i],
                got: vs[i],
                reference: "q",
                expected: qs[i],
            });
        }
    }
    let (b, h, n, d) = layout.split(&qs);
    let e = vs[3];
    for (arg, dim, x) in [("q", "d", d), ("v", "e", e)] {
        if x > MAX_HEAD_DIM {
            return Err(Error::DimTooLarge {
                arg,
                dim,
                got: x,
                max: MAX_HEAD_DIM,
            });
        }
    }
    if u32::try_from(b * h).is_err() || u32::try_from(n).is_err() {
        return Err(Error::InvalidValue {
            arg: "q",
            value: format!("{:?}", q.shape()),
            reason: "batch x heads and n must each be below 2^32",
        });
    }
    if let Some(s) = opts.slopes {
        if s.len() != h {
            return Err(Error::Slopes(format!(
                "expected {h} slopes (one per head), got {}",
                s.len()
            )));
        }
        if let Some((i, x)) = s
            .iter()
            .enumerate()
            .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
        {
            return Err(Error::Slopes(format!(
                "slope {i} is {x}: slopes must be finite and >= 0"
            )));
        }
    }
    if !opts.scale.is_finite() {
        return Err(Error::InvalidValue {
            arg: "scale",
            value: opts.scale.to_string(),
            reason: "must be finite",
        });
    }
    let dims = Dims { b, h, n, d, e };
    if let Some(s0) = opts.initial_state {
        check_state(ctx, "initial_state", s0, &dims)?;
    }
    Ok(dims)
}

fn check_state(ctx: &Context, arg: &'static str, t: &Tensor, dims: &Dims) -> Result<()> {
    check_tensor(ctx, arg, t)?;
    check_shape(
        arg,
        t,
        &dims.state_shape(),
        ["batch", "heads", "d", "e"],
        "state (batch, heads, d, e)",
    )
}

fn check_shape(
    arg: &'static str,
    t: &Tensor,
    want: &[usize; 4],
    names: [&'static str; 4],
    what: &'static str,
) -> Result<()> {
    let got = <[usize; 4]>::try_from(t.shape()).map_err(|_| Error::Rank {
        arg,
        expected: 4,
        what,
        got: t.shape().to_vec(),
    })?;
    match (0..4).find(|&i| got[i] != want[i]) {
        Some(i) => Err(Error::ShapeMismatch {
            arg,
            dim: names[i],
            got: got[i],
            reference: what,
            expected: want[i],
        }),
        None => Ok(()),
    }
}

impl Context {
    /// Lightning Attention forward:
    /// `o_i = sum_{j <= i} lambda_h^(i-j) (scale q_i . k_j) v_j`, plus
    /// `lambda_h^(i+1) scale q_i S0` with an initial state.
    ///
    /// The work is submitted before this returns; reading a result waits for it.
    ///
    /// ```no_run
    /// use lightning_wgpu::{alibi_slopes, Context, ForwardOptions};
    /// let ctx = Context::new()?;
    /// let (b, h, n, d) = (1, 4, 300, 32);
    /// let x: Vec<f32> = (0..b * h * n * d).map(|i| ((i % 7) as f32 - 3.0) / 10.0).collect();
    /// let q = ctx.tensor(&x, &[b, h, n, d])?;
    /// let k = ctx.tensor(&x, &[b, h, n, d])?;
    /// let v = ctx.tensor(&x, &[b, h, n, d])?;
    /// let slopes = alibi_slopes(h);
    /// let out = ctx.forward(&q, &k, &v, &ForwardOptions { slopes: Some(&slopes), ..Default::default() })?;
    /// let o: Vec<f32> = ctx.read(&out.o)?;
    /// # Ok::<(), lightning_wgpu::Error>(())
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        pollster::block_on(self.forward_async(q, k, v, opts))
    }

    /// Async form of [`Context::forward`] (the one to use in a browser).
    pub async fn forward_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
    ) -> Result<ForwardOutput> {
        let dims = validate(self, q, k, v, opts)?;
        let mut o = self.empty(v.shape(), "o")?;
        let mut state = if opts.output_final_state {
            Some(self.empty(&dims.state_shape(), "final_state")?)
        } else {
            None
        };
        self.forward_into_async(q, k, v, opts, &mut o, state.as_mut())
            .await?;
        Ok(ForwardOutput {
            o,
            final_state: state,
        })
    }

    /// [`Context::forward`] into tensors the caller owns: `o` shaped like
    /// `v`, and `final_state` `(b, h, d, e)` (written whatever
    /// `opts.output_final_state` says).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_into(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions,
        o: &mut Tensor,
        final_state: Option<&mut Tensor>,
    ) -> Result<()> {
        pollster::block_on(self.forward_into_async(q, k, v, opts, o, final_state))
    }

    /// Async form of [`Context::forward_into`].
    pub async fn forward_into_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
        o: &mut Tensor,
        final_state: Option<&mut Tensor>,
    ) -> Result<()> {
        self.check_lost()?;
        let dims = validate(self, q, k, v, opts)?;
        check_tensor(self, "o", o)?;
        let [b, h, n, e] = opts.layout.shape(dims.b, dims.h, dims.n, dims.e);
        check_shape("o", o, &[b, h, n, e], dim_names(opts.layout, "e"), "v")?;
        let mut scratch_state;
        let state: &Tensor = match final_state {
            Some(t) => {
                check_state(self, "final_state", t, &dims)?;
                t
            }
            None => {
                scratch_state = self.empty(&dims.state_shape(), "state")?;
                &mut scratch_state
            }
        };
        let inner = &self.inner;
        let limits = plan::Limits {
            tile: inner.config.tile as usize,
            max_binding: inner.max_binding,
            offset_align: inner.limits.min_storage_buffer_offset_alignment as u64,
            max_groups: inner.limits.max_compute_workgroups_per_dimension as u64,
        };
        let segments = plan::plan(opts.layout, &dims, &limits)?;

        let mut pipelines = Vec::with_capacity(Pass::ALL.len());
        for pass in Pass::ALL {
            pipelines.push(self.pipeline(pass).await?);
        }
        let device = &inner.device;
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);

        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let scratch_bytes = segments.iter().map(|s| s.scratch_bytes).max().unwrap_or(4);
        let scratch = inner.pool.take(
            device,
            "block states",
            scratch_bytes,
            wgpu::BufferUsages::STORAGE,
        );
        let slopes = inner
            .pool
            .take(device, "slopes", (dims.h * 4) as u64, storage);
        let no_decay = vec![0.0f32; dims.h];
        inner.queue.write_buffer(
            slopes.buffer(),
            0,
            bytemuck::cast_slice(opts.slopes.unwrap_or(&no_decay)),
        );

        let params_size = std::mem::size_of::<Params>() as u64;
        let stride =
            params_size.next_multiple_of(inner.limits.min_uniform_buffer_offset_alignment as u64);
        let uniforms = inner.pool.take(
            device,
            "params",
            stride * segments.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        let mut bytes = vec![0u8; (stride * segments.len() as u64) as usize];
        for (i, s) in segments.iter().enumerate() {
            let p = params(&dims, opts, s);
            let at = i * stride as usize;
            bytes[at..at + params_size as usize].copy_from_slice(bytemuck::bytes_of(&p));
        }
        inner.queue.write_buffer(uniforms.buffer(), 0, &bytes);

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("forward"),
        });
        if let Some(s0) = opts.initial_state {
            encoder.copy_buffer_to_buffer(s0.buffer(), 0, state.buffer(), 0, s0.size_bytes());
        }
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            });
            for (i, s) in segments.iter().enumerate() {
                let params = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: uniforms.buffer(),
                    offset: i as u64 * stride,
                    size: NonZeroU64::new(params_size),
                });
                let slopes = bind(
                    slopes.buffer(),
                    Window {
                        offset: 0,
                        size: (dims.h * 4) as u64,
                        base: 0,
                    },
                );
                let states = bind(
                    scratch.buffer(),
                    Window {
                        offset: 0,
                        size: s.scratch_bytes,
                        base: 0,
                    },
                );
                let tile = inner.config.tile as usize;
                let threads = inner.config.threads() as usize;
                let tiles = |w: usize| w.div_ceil(tile);
                let work: [(&[wgpu::BindingResource], usize); 4] = [
                    (
                        &[
                            bind(q.buffer(), s.q),
                            bind(k.buffer(), s.k),
                            bind(v.buffer(), s.v),
                            bind(o.buffer(), s.o),
                        ],
                        s.bh_count * s.blocks,
                    ),
                    (
                        &[bind(k.buffer(), s.k), bind(v.buffer(), s.v), states.clone()],
                        s.bh_count * s.blocks * tiles(dims.d) * tiles(dims.e),
                    ),
                    (
                        &[states.clone(), bind(state.buffer(), s.state)],
                        (s.bh_count * dims.d * dims.e).div_ceil(threads),
                    ),
                    (
                        &[bind(q.buffer(), s.q), states.clone(), bind(o.buffer(), s.o)],
                        s.bh_count * s.blocks * tiles(dims.e),
                    ),
                ];
                for (pipeline, (bindings, groups)) in pipelines.iter().zip(work) {
                    let mut entries = vec![
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: params.clone(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: slopes.clone(),
                        },
                    ];
                    entries.extend(bindings.iter().enumerate().map(|(j, r)| {
                        wgpu::BindGroupEntry {
                            binding: 2 + j as u32,
                            resource: r.clone(),
                        }
                    }));
                    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &pipeline.get_bind_group_layout(0),
                        entries: &entries,
                    });
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, &group, &[]);
                    let (x, y) = fold(groups as u64, limits.max_groups);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
        }
        inner.queue.submit([encoder.finish()]);
        let oom = memory.pop().await;
        let invalid = validation.pop().await;
        if let Some(e) = oom.or(invalid) {
            self.check_lost()?;
            return Err(Error::Gpu {
                op: "forward",
                reason: e.to_string(),
            });
        }
        Ok(())
    }
}

fn bind(buffer: &wgpu::Buffer, w: Window) -> wgpu::BindingResource<'_> {
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

fn params(dims: &Dims, opts: &ForwardOptions, s: &Segment) -> Params {
    let stride = |width: usize, w: &Window| {
        let (sb, sh, sn) = opts.layout.strides(dims.h, dims.n, width);
        // Truncation is intended: the kernels compute offsets modulo 2^32
        // and every true offset inside a window is below 2^32.
        [sb as u32, sh as u32, sn as u32, w.base]
    };
    Params {
        heads: dims.h as u32,
        rows: s.rows as u32,
        dim_k: dims.d as u32,
        dim_v: dims.e as u32,
        blocks: s.blocks as u32,
        bh_start: s.bh_start as u32,
        bh_count: s.bh_count as u32,
        b_first: (s.bh_start / dims.h) as u32,
        q_stride: stride(dims.d, &s.q),
        k_stride: stride(dims.d, &s.k),
        v_stride: stride(dims.e, &s.v),
        o_stride: stride(dims.e, &s.o),
        state_base: s.state_base,
        has_state: u32::from(opts.initial_state.is_some() || s.n0 > 0),
        scale: opts.scale,
        _pad: 0,
    }
}
