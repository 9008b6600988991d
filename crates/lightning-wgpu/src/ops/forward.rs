//! The forward pass: options and entry points. Validation is in
//! `validate`, the recording in `kernels::chunk` (blockwise) and
//! `kernels::recurrent` (token by token).

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::chunk::{self, ChunkPath, Magnitudes, Scratch};
use crate::kernels::launch::{Io, Launch};
use crate::kernels::pack::Output;
use crate::kernels::{recurrent, states, OutStore};
use crate::layout::{Dims, Layout};
use crate::plan::{self, HeadView, Needs, Starts};
use crate::runtime::io::TENSOR_USAGE;
use crate::runtime::pool::PooledBuffer;
use crate::runtime::recorder::Recorder;
use crate::tensor::{DType, Tensor};
use crate::validate;

/// How the forward pass is computed. Both give the same result to rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Method {
    /// Blockwise (Lightning Attention-2): masked attention inside blocks, a
    /// key-value state across them. Parallel over blocks: the fast one.
    #[default]
    Chunk,
    /// Token by token through the `d x e` state (FLA's `fused_recurrent`):
    /// sequential in n; for short prompts and for checking.
    Recurrent,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "chunk" => Ok(Method::Chunk),
            "recurrent" => Ok(Method::Recurrent),
            other => Err(format!(
                "unknown method `{other}` (expected chunk or recurrent)"
            )),
        }
    }
}

/// Options of [`Context::forward`]. `Default` is: no decay, scale 1, layout
/// `(b, h, n, d)`, zero initial state, no final state, chunked.
#[derive(Clone, Copy, Debug)]
pub struct ForwardOptions<'a> {
    /// Per-head decay slopes `s_h >= 0` (`lambda = exp(-s_h)`), `h` of them;
    /// `None` for no decay. See [`alibi_slopes`](crate::alibi_slopes).
    pub slopes: Option<&'a [f32]>,
    /// Multiplies `q` (1 in the official kernel; `1/sqrt(d)` in FLA's).
    pub scale: f32,
    /// Layout of q, k, v and o.
    pub layout: Layout,
    /// The state before the first position: `(b, h, d, e)`, or `(N, h, d, e)`
    /// with `cu_seqlens`.
    pub initial_state: Option<&'a Tensor>,
    /// Also return the state after the last position (shaped like the
    /// initial state).
    pub output_final_state: bool,
    /// Algorithm.
    pub method: Method,
    /// Packed variable-length batch (as FLA's `cu_seqlens`): `b` must be 1 and
    /// sequence `i` is rows `cu_seqlens[i]..cu_seqlens[i + 1]`, with its own
    /// initial and final state. `N + 1` strictly increasing offsets from 0 to `n`.
    pub cu_seqlens: Option<&'a [usize]>,
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
            cu_seqlens: None,
        }
    }
}

/// Results of [`Context::forward`].
#[derive(Debug)]
pub struct ForwardOutput {
    /// The attention output, shaped like `v`.
    pub o: Tensor,
    /// The state after the last position, when asked for.
    pub final_state: Option<Tensor>,
}

/// Views of a forward's tensors in reversed time (row i read or written at
/// row n - 1 - i) and how its initial state enters: what the backward's
/// passes need of it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Views {
    /// q, k, v and o reversed.
    pub reversed: [bool; 4],
    /// Write o in f32 even for half inputs, so a term can be added before
    /// packing (the caller packs).
    pub wide_output: bool,
    /// Only the final state (chunked method): the output pass is skipped
    /// and o, which must still be shaped like v, is never written.
    pub states_only: bool,
    /// The heads of q, k, v and o the call reads (writes), for a call of
    /// the same heads throughout (the backward's per-member passes).
    pub heads: [HeadView; 4],
}

impl Context {
    /// Which path the chunked forward takes on this context for inputs
    /// stored as `dtype` with head sizes `d` and `e`: `"tensor-core"`
    /// (cooperative matrices) or `"portable"`. A call takes the tensor cores
    /// only where, besides, the magnitudes of its inputs are known
    /// ([`Tensor::max_abs`]) and bound every value it rounds to f16: inputs
    /// too large or too small for f16, scores, or states that can grow past
    /// f16's range over a long sequence without decay run portable.
    pub fn chunk_path(&self, dtype: DType, d: usize, e: usize) -> &'static str {
        let setup = self.setup();
        let dims = crate::Dims {
            b: 1,
            h: 1,
            n: 1,
            d,
            e,
        };
        chunk::choose(setup, setup.storage(dtype), &dims, None).name()
    }

    /// Which path the chunked forward takes for this call (see
    /// [`Context::chunk_path`]), after the same checks as the call itself.
    pub fn forward_path(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<&'static str> {
        let call = validate::forward(self, q, k, v, opts)?;
        Ok(self.path_of(&call, q, k, v, opts).name())
    }

    fn path_of(
        &self,
        call: &validate::Call,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions,
    ) -> &'static dyn ChunkPath {
        let magnitudes = Magnitudes {
            q: q.max_abs(),
            k: k.max_abs(),
            v: v.max_abs(),
            initial_state: opts.initial_state.map_or(Some(0.0), Tensor::max_abs),
            scale: opts.scale,
            min_slope: opts
                .slopes
                .map_or(0.0, |s| s.iter().copied().fold(f32::INFINITY, f32::min)),
            longest: call.sequences.iter().map(|s| s.len).max().unwrap_or(0),
        };
        let setup = self.setup();
        chunk::choose(
            setup,
            setup.storage(q.dtype()),
            &call.dims,
            Some(&magnitudes),
        )
    }

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
        let call = validate::forward(self, q, k, v, opts)?;
        let mut o = self.new_tensor(&call.output_shape(opts.layout), v.dtype(), "o")?;
        let mut state = if opts.output_final_state {
            Some(self.new_f32(&call.state_shape, "final_state")?)
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

    /// [`Context::forward`] that also keeps the state after every `every`
    /// positions of each sequence (a multiple of [`Context::block_rows`];
    /// chunked method), f32: `(b, h, n / every, d, e)` (`j` holding the state
    /// after `(j + 1) every` positions), or for a packed batch `(K, h, d,
    /// e)`, sequence after sequence, `len_i / every` each. Resuming from
    /// checkpoint `j` with the rest of the sequence equals the whole run.
    /// Where a device splits long runs of rows, `every` must be a power of
    /// two times the block rows (the error says so).
    ///
    /// Rows are planned in runs of at most `every`, each with its own
    /// dispatches and one copy per sequence and head: a small `every` on a
    /// long sequence costs more (`bench --checkpoint-every` measures it).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_with_checkpoints(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions,
        every: usize,
    ) -> Result<(ForwardOutput, Tensor)> {
        pollster::block_on(self.forward_with_checkpoints_async(q, k, v, opts, every))
    }

    /// Async form of [`Context::forward_with_checkpoints`].
    pub async fn forward_with_checkpoints_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
        every: usize,
    ) -> Result<(ForwardOutput, Tensor)> {
        let call = validate::forward(self, q, k, v, opts)?;
        let block = self.block_rows() as usize;
        if every == 0 || !every.is_multiple_of(block) {
            return Err(Error::InvalidValue {
                arg: "checkpoint_every",
                value: format!("{every} (block rows: {block})"),
                reason: "must be a positive multiple of the block rows (Context::block_rows)",
            });
        }
        if opts.method != Method::Chunk {
            return Err(Error::InvalidValue {
                arg: "method",
                value: format!("{:?}", opts.method),
                reason: "checkpoints come from the chunked forward",
            });
        }
        let shape = checkpoint_shape(&call, every);
        if shape.contains(&0) {
            return Err(Error::InvalidValue {
                arg: "checkpoint_every",
                value: every.to_string(),
                reason: "longer than every sequence: there is no checkpoint to write",
            });
        }
        let checkpoints = self.new_f32(&shape, "checkpoints")?;
        let o = self.new_tensor(&call.output_shape(opts.layout), v.dtype(), "o")?;
        let state = match opts.output_final_state {
            true => Some(self.new_f32(&call.state_shape, "final_state")?),
            false => None,
        };
        let mut rec = Recorder::new(self.rt(), "forward");
        self.record_forward_with(
            &mut rec,
            q,
            k,
            v,
            opts,
            &o,
            state.as_ref(),
            Views::default(),
            Some((every, &checkpoints)),
            Scratch::Shared,
        )
        .await?;
        rec.submit().await?;
        Ok((
            ForwardOutput {
                o,
                final_state: state,
            },
            checkpoints,
        ))
    }

    /// [`Context::forward`] into tensors the caller owns: `o` shaped like
    /// `v` (stored like v, or in f32: then a half-precision call's output
    /// is never rounded to halves), and `final_state` shaped like the
    /// initial state (written whatever `opts.output_final_state` says).
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
        let mut rec = Recorder::new(self.rt(), "forward");
        let views = Views::default();
        self.record_forward(&mut rec, q, k, v, opts, o, final_state.map(|t| &*t), views)
            .await?;
        rec.submit().await
    }

    /// Records [`Context::forward_into`] into the caller's `encoder`, which
    /// the caller submits (with its own work, in one submission): the
    /// tensors may be views of the caller's buffers
    /// ([`Tensor::from_buffer`]). Blocks only while the pipelines are first
    /// compiled.
    ///
    /// ```no_run
    /// # fn demo(ctx: &lightning_wgpu::Context, q: &lightning_wgpu::Tensor, o: &lightning_wgpu::Tensor) -> lightning_wgpu::Result<()> {
    /// let mut encoder = ctx.device().create_command_encoder(&Default::default());
    /// // ... the caller's own passes ...
    /// ctx.encode_forward(&mut encoder, q, q, q, &Default::default(), o, None)?;
    /// // ... more of the caller's passes, reading o ...
    /// ctx.queue().submit([encoder.finish()]);
    /// # Ok(()) }
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    pub fn encode_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions,
        o: &Tensor,
        final_state: Option<&Tensor>,
    ) -> Result<()> {
        pollster::block_on(self.encode_forward_async(encoder, q, k, v, opts, o, final_state))
    }

    /// Async form of [`Context::encode_forward`].
    #[allow(clippy::too_many_arguments)]
    pub async fn encode_forward_async(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
        o: &Tensor,
        final_state: Option<&Tensor>,
    ) -> Result<()> {
        let mut rec = Recorder::into_encoder(self.rt(), "forward", encoder);
        self.record_forward(&mut rec, q, k, v, opts, o, final_state, Views::default())
            .await?;
        rec.finish().await
    }

    /// The final state of [`Context::forward`] alone: the block states and
    /// their scan without the output pass (about a third of the work), as a
    /// rank of the sequence-parallel forward needs before it knows its
    /// incoming state; `o`, shaped like the output, stands in for the
    /// output (never written); `reversed` walks the rows from the last.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) async fn final_state_only_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
        o: &Tensor,
        reversed: bool,
    ) -> Result<Tensor> {
        let (_, state) = self
            .states_pass(q, k, v, opts, o, reversed, Scratch::Shared)
            .await?;
        Ok(state)
    }

    /// The block states and their scan of a chunked forward (no output
    /// pass), submitted; returns the call and its final state. `o` is the
    /// output a later half would write (it plans the windows), `scratch`
    /// where the block states go.
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    async fn states_pass(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
        o: &Tensor,
        reversed: bool,
        scratch: Scratch<'_>,
    ) -> Result<(validate::Call, Tensor)> {
        let call = validate::forward(self, q, k, v, opts)?;
        let state = self.new_f32(&call.state_shape, "final_state")?;
        // The chunked plan is the one that can stop before the outputs.
        let opts = ForwardOptions {
            method: Method::Chunk,
            output_final_state: true,
            ..*opts
        };
        let views = Views {
            states_only: true,
            reversed: [reversed; 4],
            ..Views::default()
        };
        let mut rec = Recorder::new(self.rt(), "forward");
        self.record_forward_with(
            &mut rec,
            q,
            k,
            v,
            &opts,
            o,
            Some(&state),
            views,
            None,
            scratch,
        )
        .await?;
        rec.submit().await?;
        Ok((call, state))
    }

    /// The first half of a forward whose initial state is not known yet
    /// (a rank of the sequence-parallel forward): the block states and a
    /// scan that carries `opts.initial_state` (zero without one) to the
    /// returned final state, the block states kept for
    /// [`Context::forward_resume_async`]. `o` is the output the second half
    /// writes. Returns the kept states (empty past `chunk::KEEP_BUDGET`:
    /// then the second half is a whole forward) and the path they are on.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) async fn forward_keep_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
        o: &Tensor,
    ) -> Result<(Tensor, Kept)> {
        let mut kept = Vec::new();
        let (call, state) = self
            .states_pass(q, k, v, opts, o, false, Scratch::Keep(&mut kept))
            .await?;
        let path = self.path_of(&call, q, k, v, opts).name();
        Ok((
            state,
            Kept {
                buffers: kept,
                path,
            },
        ))
    }

    /// The second half of a forward begun by
    /// [`Context::forward_keep_async`] on the same q, k, v and o, now from
    /// `opts.initial_state`: the scan from it and the outputs. Runs the
    /// whole forward instead where nothing was kept or where this initial
    /// state puts the call on another path than the kept states'.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) async fn forward_resume_async(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
        o: &Tensor,
        kept: Kept,
    ) -> Result<()> {
        let opts = ForwardOptions {
            method: Method::Chunk,
            output_final_state: false,
            ..*opts
        };
        let call = validate::forward(self, q, k, v, &opts)?;
        let same_path = self.path_of(&call, q, k, v, &opts).name() == kept.path;
        let scratch = match kept.buffers.is_empty() || !same_path {
            true => Scratch::Shared,
            false => Scratch::Resume(&kept.buffers),
        };
        let mut rec = Recorder::new(self.rt(), "forward");
        self.record_forward_with(
            &mut rec,
            q,
            k,
            v,
            &opts,
            o,
            None,
            Views::default(),
            None,
            scratch,
        )
        .await?;
        rec.submit().await?;
        // The kept states go back to the pool only now that the work
        // reading them is submitted.
        drop(kept);
        Ok(())
    }

    /// Records a forward pass into `rec`: validation, the initial state's
    /// copy, the passes and the packing of a half-precision output.
    /// Returns the f32 buffer o was written to when `views.wide_output`
    /// asked for one (the caller packs it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record_forward(
        &self,
        rec: &mut Recorder<'_>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
        o: &Tensor,
        final_state: Option<&Tensor>,
        views: Views,
    ) -> Result<Option<(wgpu::Buffer, u64)>> {
        self.record_forward_with(
            rec,
            q,
            k,
            v,
            opts,
            o,
            final_state,
            views,
            None,
            Scratch::Shared,
        )
        .await
    }

    /// [`Context::record_forward`], writing checkpoints when asked, its
    /// block states where `scratch` says (a half of a split call with
    /// `Keep` or `Resume`).
    #[allow(clippy::too_many_arguments)]
    async fn record_forward_with(
        &self,
        rec: &mut Recorder<'_>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
        o: &Tensor,
        final_state: Option<&Tensor>,
        views: Views,
        checkpoints: Option<(usize, &Tensor)>,
        scratch: Scratch<'_>,
    ) -> Result<Option<(wgpu::Buffer, u64)>> {
        let call = validate::forward_viewed(self, q, k, v, opts, &views.heads)?;
        validate::forward_outputs(
            self,
            &call,
            opts.layout,
            v,
            (o, views.heads[3]),
            final_state,
        )?;
        // o is v's stand-in when only the states are computed, and stays unwritten.
        if !views.states_only {
            o.written();
        }
        if let Some(t) = final_state {
            t.written();
        }
        let setup = *self.setup();
        let storage = setup.storage(q.dtype());
        let dims = call.dims;
        let path = self.path_of(&call, q, k, v, opts);
        let store = match opts.method {
            Method::Chunk if !views.wide_output => path.output_store(storage, o.dtype()),
            _ => (o.dtype() == DType::F32).then_some(OutStore::F32),
        };
        // Without an output pass there is no f32 scratch to fill.
        let output = match store {
            Some(_) => Output::direct(o),
            None if views.states_only => Output::direct(o),
            None => Output::new(rec, o)?,
        };
        let (needs, block_state_bytes) = match opts.method {
            // Checkpoints fall where segments end: rows split every `every`.
            Method::Chunk => {
                let max_rows = checkpoints.map_or(Needs::CHUNK.max_rows, |(every, _)| every);
                let needs = Needs {
                    max_rows,
                    ..Needs::CHUNK
                };
                (needs, path.block_state_bytes())
            }
            Method::Recurrent => (Needs::recurrent(recurrent::max_rows(dims.d)), 4),
        };
        // The first half of a split call plans as its second will, whose
        // passes write o in f32 where it is packed afterwards.
        let output_bytes = match (&scratch, store) {
            (Scratch::Keep(_), None) => 4,
            _ => output.element_bytes(),
        };
        let state_bytes = (call.state_shape.iter().product::<usize>() * 4) as u64;
        let (state, state_offset) = match final_state {
            Some(t) => (t.buffer().clone(), t.offset()),
            None => {
                let scratch = self.rt().buffer("state", state_bytes, TENSOR_USAGE);
                (rec.keep(scratch), 0)
            }
        };
        if let Some(s0) = opts.initial_state {
            s0.needs("initial_state", wgpu::BufferUsages::COPY_SRC, "COPY_SRC")?;
            if let Some(t) = final_state {
                t.needs("final_state", wgpu::BufferUsages::COPY_DST, "COPY_DST")?;
            }
        }
        // Grouped heads: one call per member of every group, viewing that
        // member's q and o heads in place. All of them carry the same kv
        // states through the one state buffer, each starting afresh from
        // the initial state; the last (member 0) leaves the final state and
        // alone writes the checkpoints.
        let group = call.group;
        let members = if views.states_only { 0..1 } else { 0..group };
        // Only member 0 keeps or resumes block states: the other members of
        // a group run their whole passes, as in any grouped call.
        let mut scratch = Some(scratch);
        for member in members.rev() {
            let scratch = match member {
                0 => scratch.take().unwrap_or(Scratch::Shared),
                _ => Scratch::Shared,
            };
            if let Some(s0) = opts.initial_state {
                rec.copy(s0.buffer(), s0.offset(), &state, state_offset, state_bytes);
            }
            let mut heads = views.heads;
            if group > 1 {
                let view = HeadView {
                    step: group,
                    first: member,
                };
                heads[0] = view;
                heads[3] = view;
            }
            let checkpoints = checkpoints.filter(|_| member == 0);
            let limits = plan::Limits {
                reversed: views.reversed,
                heads,
                at: Starts {
                    q: q.first_element(),
                    k: k.first_element(),
                    v: v.first_element(),
                    o: output.first_element(),
                    state: final_state.map_or(0, Tensor::first_element),
                },
                ..super::limits(self, q.dtype(), output_bytes, block_state_bytes)
            };
            self.record_member(
                rec,
                &call,
                opts,
                (&setup, storage, path, store),
                (limits, needs),
                views,
                &Io {
                    q: q.buffer(),
                    k: k.buffer(),
                    v: v.buffer(),
                    o: output.buffer(),
                    state: &state,
                },
                checkpoints,
                scratch,
            )
            .await?;
        }
        if views.states_only {
            return Ok(None);
        }
        if views.wide_output {
            return Ok(Some((output.buffer().clone(), output.first_element())));
        }
        output.finish(rec).await?;
        Ok(None)
    }
}

impl Context {
    /// Records the passes of one forward call (of one member of every group
    /// of heads) planned with `limits`, carrying the state in `io.state`.
    #[allow(clippy::too_many_arguments)]
    async fn record_member(
        &self,
        rec: &mut Recorder<'_>,
        call: &validate::Call,
        opts: &ForwardOptions<'_>,
        (setup, storage, path, store): (
            &crate::kernels::Setup,
            crate::kernels::Storage,
            &'static dyn ChunkPath,
            Option<OutStore>,
        ),
        (limits, needs): (plan::Limits, Needs),
        views: Views,
        io: &Io<'_>,
        checkpoints: Option<(usize, &Tensor)>,
        scratch: Scratch<'_>,
    ) -> Result<()> {
        let dims = call.dims;
        // In reversed time a packed batch's sequences are mirrored too: the
        // one at rows [a, b) is read as rows [n - b, n - a), its states
        // where they were.
        let mut sequences = call.sequences.clone();
        if views.reversed == [true; 4] {
            for s in &mut sequences {
                s.start = dims.n - s.start - s.len;
            }
        }
        let segments = plan::plan(opts.layout, &dims, &limits, &sequences, needs)?;
        let launch = Launch {
            scale: opts.scale,
            slopes: opts.slopes,
            starts_from_state: opts.initial_state.is_some(),
            reversed: views.reversed,
            states_only: views.states_only,
            heads: limits.heads,
            ..Launch::new(dims, opts.layout, storage, segments)
        };
        match opts.method {
            Method::Chunk => {
                let copy = match checkpoints {
                    Some((_, out)) => {
                        Some(states::kernel(self.rt(), io.state, io.state, out.buffer()).await?)
                    }
                    None => None,
                };
                let mut copier = checkpoints.zip(copy.as_ref()).map(|((every, out), copy)| {
                    Checkpointer::new(call, every, out, io.state, copy)
                });
                let mut after = |rec: &mut Recorder<'_>, s: &plan::Segment| {
                    if let Some(c) = copier.as_mut() {
                        c.after(rec, s);
                    }
                };
                chunk::record(
                    rec,
                    setup,
                    path,
                    &launch,
                    io,
                    store.unwrap_or(OutStore::F32),
                    Some(&mut after),
                    scratch,
                )
                .await?;
                if let Some(c) = copier.as_mut() {
                    c.check()?;
                }
            }
            Method::Recurrent => recurrent::record(rec, setup, &launch, io, None).await?,
        }
        Ok(())
    }
}

/// The block states the first half of a split forward leaves for its
/// second, and the path they were computed on.
pub(crate) struct Kept {
    buffers: Vec<PooledBuffer>,
    path: &'static str,
}

/// The checkpoints' shape: `(b, h, n / every, d, e)`, or `(sum of len_i /
/// every, h, d, e)` for a packed batch.
fn checkpoint_shape(call: &validate::Call, every: usize) -> Vec<usize> {
    let Dims { b, h, n, d, e } = call.dims;
    if call.packed {
        let total = call.sequences.iter().map(|s| s.len / every).sum();
        vec![total, h, d, e]
    } else {
        vec![b, h, n / every, d, e]
    }
}

/// Copies the carried state into the checkpoints at the end of every
/// segment that ends on a multiple of `every`: one dispatch of the state
/// map for all of the segment's heads (copies, one per head, cost more
/// than the passes at small `every`).
struct Checkpointer<'a> {
    every: usize,
    out: &'a Tensor,
    carry: &'a wgpu::Buffer,
    copy: &'a crate::kernels::Compiled,
    /// The first error of a copy's recording, returned by `check`.
    failed: Option<Error>,
    dims: Dims,
    packed: bool,
    /// Per sequence (by first row): its first checkpoint, sequence after sequence.
    firsts: Vec<(usize, usize)>,
    written: usize,
    expected: usize,
}

impl<'a> Checkpointer<'a> {
    fn new(
        call: &validate::Call,
        every: usize,
        out: &'a Tensor,
        carry: &'a wgpu::Buffer,
        copy: &'a crate::kernels::Compiled,
    ) -> Self {
        let mut at = 0;
        let firsts = call
            .sequences
            .iter()
            .map(|s| {
                let first = at;
                at += s.len / every;
                (s.start, first)
            })
            .collect();
        let dims = call.dims;
        let expected = checkpoint_shape(call, every)[..call_rank(call)]
            .iter()
            .product::<usize>();
        Checkpointer {
            every,
            out,
            carry,
            copy,
            failed: None,
            dims,
            packed: call.packed,
            firsts,
            written: 0,
            expected,
        }
    }

    fn after(&mut self, rec: &mut Recorder<'_>, s: &plan::Segment) {
        let end = s.n0 + s.rows - s.seq_start;
        if !end.is_multiple_of(self.every) {
            return;
        }
        let j = end / self.every - 1;
        let size = (self.dims.d * self.dims.e) as u64;
        let first = self
            .firsts
            .iter()
            .find(|(start, _)| *start == s.seq_start)
            .map_or(0, |&(_, f)| f);
        // Head bh's checkpoint j: packed batches have b = 1 and keep a
        // sequence's heads together, (first + j, h); otherwise (bh, j).
        let (slot, step) = if self.packed {
            (((first + j) * self.dims.h + s.bh_start) as u64, 1)
        } else {
            let per_bh = (self.dims.n / self.every) as u64;
            (s.bh_start as u64 * per_bh + j as u64, per_bh)
        };
        let map = states::Map {
            slopes: &[0.0],
            states: 0..s.bh_count,
            shape: (self.dims.d, self.dims.e),
            transpose: false,
        };
        let carry = states::Term {
            states: (self.carry, s.state.offset / 4 + u64::from(s.state_base)),
            steps: 0,
            scale: 1.0,
        };
        let out = (self.out.buffer(), self.out.offset() / 4 + slot * size, step);
        match states::record_with(rec, self.copy, &map, carry, None, out) {
            Ok(()) => self.written += s.bh_count,
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
    }

    /// Every checkpoint was written (segments ended where they fall).
    fn check(&mut self) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.written == self.expected {
            Ok(())
        } else {
            Err(Error::InvalidValue {
                arg: "checkpoint_every",
                value: self.every.to_string(),
                reason: "this device splits the rows where the checkpoints do not fall: use a power of two times the block rows",
            })
        }
    }
}

/// How many leading dimensions of the checkpoints count states: all but (d, e).
fn call_rank(call: &validate::Call) -> usize {
    if call.packed {
        2
    } else {
        3
    }
}
