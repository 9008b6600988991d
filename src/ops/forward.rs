//! The forward pass: options, validation, and the public entry points. The
//! recording lives in `chunk` (blockwise) and `recurrent` (token by token).

use crate::context::Context;
use crate::error::{Error, Result};
use crate::layout::{Dims, Layout};
use crate::ops::plan::{self, Sequence};
use crate::ops::{chunk, recurrent, Io, Launch, Output};
use crate::tensor::{DType, Tensor};

/// Largest `d` and `e` the kernels accept.
pub const MAX_HEAD_DIM: usize = 1024;

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
        match s {
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

pub(crate) fn dim_names(layout: Layout, width: &'static str) -> [&'static str; 4] {
    match layout {
        Layout::Bhnd => ["batch", "heads", "n", width],
        Layout::Bnhd => ["batch", "n", "heads", width],
    }
}

fn rank4(arg: &'static str, shape: &[usize], layout: Layout) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(shape).map_err(|_| Error::Rank {
        arg,
        expected: 4,
        what: match layout {
            Layout::Bhnd => "(batch, heads, n, width)",
            Layout::Bnhd => "(batch, n, heads, width)",
        },
        got: shape.to_vec(),
    })
}

/// Checks that `t` lives on this context and is stored as `dtype`.
pub(crate) fn check_tensor(
    ctx: &Context,
    arg: &'static str,
    t: &Tensor,
    dtype: DType,
) -> Result<()> {
    ctx.owns(arg, t)?;
    if t.dtype() != dtype {
        return Err(Error::DType {
            arg,
            got: t.dtype(),
            expected: dtype,
        });
    }
    Ok(())
}

pub(crate) fn check_slopes(slopes: Option<&[f32]>, h: usize) -> Result<()> {
    if let Some(s) = slopes {
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
    Ok(())
}

pub(crate) fn check_scale(scale: f32) -> Result<()> {
    if scale.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            arg: "scale",
            value: scale.to_string(),
            reason: "must be finite",
        })
    }
}

pub(crate) fn check_head_dims(d: usize, e: usize) -> Result<()> {
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
    Ok(())
}

/// The sequences of a call: the whole batch, or the packed ones.
fn sequences(dims: &Dims, cu_seqlens: Option<&[usize]>) -> Result<Vec<Sequence>> {
    let Some(cu) = cu_seqlens else {
        return Ok(vec![Sequence {
            start: 0,
            len: dims.n,
            first_state: 0,
        }]);
    };
    if dims.b != 1 {
        return Err(Error::CuSeqlens(format!(
            "a packed batch needs batch = 1, got {}",
            dims.b
        )));
    }
    if cu.len() < 2 {
        return Err(Error::CuSeqlens(format!(
            "needs at least 2 offsets, got {}",
            cu.len()
        )));
    }
    if cu[0] != 0 {
        return Err(Error::CuSeqlens(format!(
            "must start at 0, starts at {}",
            cu[0]
        )));
    }
    if let Some(i) = (1..cu.len()).find(|&i| cu[i] <= cu[i - 1]) {
        return Err(Error::CuSeqlens(format!(
            "must be strictly increasing: offset {i} is {} after {}",
            cu[i],
            cu[i - 1]
        )));
    }
    let last = cu[cu.len() - 1];
    if last != dims.n {
        return Err(Error::CuSeqlens(format!(
            "must end at n = {}, ends at {last}",
            dims.n
        )));
    }
    Ok(cu
        .windows(2)
        .enumerate()
        .map(|(i, w)| Sequence {
            start: w[0],
            len: w[1] - w[0],
            first_state: i * dims.h,
        })
        .collect())
}

/// A call, validated: sizes, sequences, and the shape of its states.
pub(crate) struct Checked {
    pub dims: Dims,
    pub sequences: Vec<Sequence>,
    pub state_shape: [usize; 4],
}

/// The sizes of a problem from the shapes of q, k and v in `layout`, or the
/// typed error naming what is wrong: rank, an empty dimension, a mismatch, a
/// head dimension over [`MAX_HEAD_DIM`]. This is the check the forward pass
/// makes before anything else, exposed so callers can fail before touching
/// the GPU.
///
/// ```
/// use lightning_wgpu::{problem_dims, Dims, Layout};
/// let dims = problem_dims(Layout::Bnhd, &[2, 100, 4, 64], &[2, 100, 4, 64], &[2, 100, 4, 32])?;
/// assert_eq!(dims, Dims { b: 2, h: 4, n: 100, d: 64, e: 32 });
/// assert!(problem_dims(Layout::Bhnd, &[2, 4, 100, 64], &[2, 4, 99, 64], &[2, 4, 100, 32]).is_err());
/// # Ok::<(), lightning_wgpu::Error>(())
/// ```
pub fn problem_dims(layout: Layout, q: &[usize], k: &[usize], v: &[usize]) -> Result<Dims> {
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
    check_head_dims(d, e)?;
    if u32::try_from(b * h).is_err() || u32::try_from(n).is_err() {
        return Err(Error::InvalidValue {
            arg: "q",
            value: format!("{q:?}"),
            reason: "batch x heads and n must each be below 2^32",
        });
    }
    Ok(Dims { b, h, n, d, e })
}

/// Checks every input of a forward call.
pub(crate) fn validate(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &ForwardOptions,
) -> Result<Checked> {
    // q, k and v share one storage type, any of them; states are f32.
    for (arg, t) in [("q", q), ("k", k), ("v", v)] {
        check_tensor(ctx, arg, t, q.dtype())?;
    }
    let dims = problem_dims(opts.layout, q.shape(), k.shape(), v.shape())?;
    let Dims { b, h, d, e, .. } = dims;
    check_slopes(opts.slopes, h)?;
    check_scale(opts.scale)?;
    let sequences = sequences(&dims, opts.cu_seqlens)?;
    let states = if opts.cu_seqlens.is_some() {
        sequences.len()
    } else {
        b
    };
    let state_shape = [states, h, d, e];
    if let Some(s0) = opts.initial_state {
        check_state(ctx, "initial_state", s0, &state_shape)?;
    }
    Ok(Checked {
        dims,
        sequences,
        state_shape,
    })
}

pub(crate) fn check_state(
    ctx: &Context,
    arg: &'static str,
    t: &Tensor,
    want: &[usize; 4],
) -> Result<()> {
    check_tensor(ctx, arg, t, DType::F32)?;
    check_shape(
        arg,
        t,
        want,
        ["batch", "heads", "d", "e"],
        "state (batch, heads, d, e)",
    )
}

pub(crate) fn check_shape(
    arg: &'static str,
    t: &Tensor,
    want: &[usize],
    names: [&'static str; 4],
    what: &'static str,
) -> Result<()> {
    if t.shape().len() != want.len() {
        return Err(Error::Rank {
            arg,
            expected: want.len(),
            what,
            got: t.shape().to_vec(),
        });
    }
    match (0..want.len()).find(|&i| t.shape()[i] != want[i]) {
        Some(i) => Err(Error::ShapeMismatch {
            arg,
            dim: names[i],
            got: t.shape()[i],
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
        let checked = validate(self, q, k, v, opts)?;
        let mut o = self.empty_as(v.shape(), v.dtype(), "o")?;
        let mut state = if opts.output_final_state {
            Some(self.empty(&checked.state_shape, "final_state")?)
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
    /// `v`, and `final_state` shaped like the initial state (written whatever
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
        self.forward_views(q, k, v, opts, o, final_state, [false; 4])
            .await
    }

    /// The forward pass with q, k, v and o each optionally viewed in
    /// reversed time (row i read or written at row n - 1 - i), without a
    /// copy: the backward's reversed-time passes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward_views(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        opts: &ForwardOptions<'_>,
        o: &Tensor,
        final_state: Option<&mut Tensor>,
        reversed: [bool; 4],
    ) -> Result<()> {
        self.check_lost()?;
        let Checked {
            dims,
            sequences,
            state_shape,
        } = validate(self, q, k, v, opts)?;
        check_tensor(self, "o", o, v.dtype())?;
        let o_shape = opts.layout.shape(dims.b, dims.h, dims.n, dims.e);
        check_shape("o", o, &o_shape, dim_names(opts.layout, "e"), "v")?;
        let scratch_state;
        let state: &Tensor = match final_state {
            Some(t) => {
                check_state(self, "final_state", t, &state_shape)?;
                t
            }
            None => {
                scratch_state = self.empty(&state_shape, "state")?;
                &scratch_state
            }
        };
        let needs = match opts.method {
            Method::Chunk => plan::Needs::CHUNK,
            Method::Recurrent => plan::Needs::RECURRENT,
        };
        let storage = self.storage(q.dtype());
        // The tensor-core passes keep the per-block states in f16, and their
        // output pass writes o in its own storage (native f16, or bf16 two
        // to a word).
        let coop = opts.method == Method::Chunk && chunk::uses_coop(self, storage, &dims);
        let direct = coop && storage.coop_writes_output();
        let mut limits = super::limits(self, q.dtype());
        limits.reversed = reversed;
        if coop {
            limits.block_state_bytes = 2;
        }
        if direct {
            limits.output_bytes = 2;
        }
        let segments = plan::plan(opts.layout, &dims, &limits, &sequences, needs)?;
        if let Some(s0) = opts.initial_state {
            super::submit(self, "initial state", |encoder| {
                encoder.copy_buffer_to_buffer(s0.buffer(), 0, state.buffer(), 0, s0.size_bytes());
            })
            .await?;
        }
        let launch = Launch {
            dims,
            layout: opts.layout,
            scale: opts.scale,
            slopes: opts.slopes,
            starts_from_state: opts.initial_state.is_some(),
            slotted: false,
            storage,
            reversed,
            segments,
        };
        let output = if direct {
            Output::direct(o)
        } else {
            Output::new(self, o)?
        };
        let io = Io {
            q,
            k,
            v,
            o: output.buffer(),
            state,
        };
        match opts.method {
            Method::Chunk => chunk::record(self, &launch, &io).await?,
            Method::Recurrent => recurrent::record(self, &launch, &io, None).await?,
        }
        output.finish(self).await
    }
}
