//! Every check of a call's inputs, made once per call on the host before
//! anything is recorded: a bad input is a typed [`Error`] naming the
//! argument (and the dimension), never a panic or a GPU fault.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::layout::{Dims, Layout};
use crate::ops::backward::BackwardOptions;
use crate::ops::decode::DecodeOptions;
use crate::ops::forward::ForwardOptions;
use crate::plan::{HeadView, Sequence};
use crate::tensor::{DType, Tensor};

/// Largest `d` and `e` the kernels accept.
pub const MAX_HEAD_DIM: usize = 1024;

/// A forward call, checked: its sizes, its sequences, the shape of its states.
pub(crate) struct Call {
    pub dims: Dims,
    pub sequences: Vec<Sequence>,
    pub state_shape: [usize; 4],
    /// A packed batch (`cu_seqlens`): one sequence per entry.
    pub packed: bool,
    /// q heads per kv head (1 but for grouped heads; `dims.h` counts kv heads).
    pub group: usize,
}

/// The names of the four dimensions of q, k, v or o in `layout`.
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

/// `t` lives on this context and is stored as `dtype`.
pub(crate) fn tensor(ctx: &Context, arg: &'static str, t: &Tensor, dtype: DType) -> Result<()> {
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

/// `h` finite slopes, each at least 0.
pub(crate) fn slopes(slopes: Option<&[f32]>, h: usize) -> Result<()> {
    let Some(s) = slopes else {
        return Ok(());
    };
    if s.len() != h {
        return Err(Error::Slopes(format!(
            "expected {h} slopes (one per head), got {}",
            s.len()
        )));
    }
    match s
        .iter()
        .enumerate()
        .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
    {
        Some((i, x)) => Err(Error::Slopes(format!(
            "slope {i} is {x}: slopes must be finite and >= 0"
        ))),
        None => Ok(()),
    }
}

pub(crate) fn scale(scale: f32) -> Result<()> {
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

pub(crate) fn head_dims(d: usize, e: usize) -> Result<()> {
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

/// `t` has shape `want`, dimension `i` called `names[i]`.
pub(crate) fn shape(
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

/// A decode cache's shards: f32 tensors `(slots_i, h, d, e)`, the same but
/// for their slots, every one but the last holding the first's slots and
/// the last no more. Returns `(h, d, e)`.
pub(crate) fn cache_shards(ctx: &Context, shards: &[Tensor]) -> Result<[usize; 3]> {
    let Some(first) = shards.first() else {
        return Err(Error::Empty {
            arg: "cache",
            dim: "slots",
        });
    };
    let names = ["slots", "heads", "d", "e"];
    let what = "(slots, heads, d, e)";
    for t in shards {
        tensor(ctx, "cache", t, DType::F32)?;
    }
    let [per, h, d, e] = match *first.shape() {
        [per, h, d, e] => [per, h, d, e],
        _ => {
            return Err(Error::Rank {
                arg: "cache",
                expected: 4,
                what,
                got: first.shape().to_vec(),
            })
        }
    };
    let last = shards.len() - 1;
    for (i, t) in shards.iter().enumerate() {
        let slots = if i < last {
            per
        } else {
            t.shape().first().copied().unwrap_or(0).min(per)
        };
        shape(
            "cache",
            t,
            &[slots, h, d, e],
            names,
            "the first shard (slots, heads, d, e); the last may hold fewer slots",
        )?;
        if let Some(i) = t.shape().iter().position(|&x| x == 0) {
            return Err(Error::Empty {
                arg: "cache",
                dim: names[i],
            });
        }
    }
    Ok([h, d, e])
}

/// `t` is an f32 state tensor of shape `want`.
pub(crate) fn state(ctx: &Context, arg: &'static str, t: &Tensor, want: &[usize; 4]) -> Result<()> {
    tensor(ctx, arg, t, DType::F32)?;
    shape(
        arg,
        t,
        want,
        ["batch", "heads", "d", "e"],
        "state (batch, heads, d, e)",
    )
}

/// The sizes of a problem from the shapes of q, k and v in `layout`, or the
/// typed error naming what is wrong: rank, an empty dimension, a mismatch, a
/// head dimension over [`MAX_HEAD_DIM`]. This is the check the forward pass
/// makes before anything else, exposed so callers can fail before touching
/// the GPU. q, k and v have the same heads here; [`grouped_problem`] also
/// takes q with a multiple of k's and v's heads.
///
/// ```
/// use lightning_wgpu::{problem_dims, Dims, Layout};
/// let dims = problem_dims(Layout::Bnhd, &[2, 100, 4, 64], &[2, 100, 4, 64], &[2, 100, 4, 32])?;
/// assert_eq!(dims, Dims { b: 2, h: 4, n: 100, d: 64, e: 32 });
/// assert!(problem_dims(Layout::Bhnd, &[2, 4, 100, 64], &[2, 4, 99, 64], &[2, 4, 100, 32]).is_err());
/// # Ok::<(), lightning_wgpu::Error>(())
/// ```
pub fn problem_dims(layout: Layout, q: &[usize], k: &[usize], v: &[usize]) -> Result<Dims> {
    let (dims, group) = grouped_problem(layout, q, k, v)?;
    if group > 1 {
        return Err(Error::ShapeMismatch {
            arg: "k",
            dim: "heads",
            got: dims.h,
            reference: "q (grouped heads are not taken here)",
            expected: dims.h * group,
        });
    }
    Ok(dims)
}

/// [`problem_dims`] with grouped heads (GQA, as ONNX's `q_num_heads` and
/// `kv_num_heads`): q may have `group` times the heads of k and v, the q
/// heads `g * group .. (g + 1) * group` reading the state of kv head `g`.
/// Returns the sizes with `h` the kv heads (the states' and the slopes'),
/// and `group`.
///
/// ```
/// use lightning_wgpu::{grouped_problem, Dims, Layout};
/// let (dims, group) = grouped_problem(Layout::Bhnd, &[1, 8, 50, 16], &[1, 2, 50, 16], &[1, 2, 50, 24])?;
/// assert_eq!((dims, group), (Dims { b: 1, h: 2, n: 50, d: 16, e: 24 }, 4));
/// assert!(grouped_problem(Layout::Bhnd, &[1, 6, 50, 16], &[1, 4, 50, 16], &[1, 4, 50, 24]).is_err());
/// # Ok::<(), lightning_wgpu::Error>(())
/// ```
pub fn grouped_problem(
    layout: Layout,
    q: &[usize],
    k: &[usize],
    v: &[usize],
) -> Result<(Dims, usize)> {
    let qs = rank4("q", q, layout)?;
    let ks = rank4("k", k, layout)?;
    let vs = rank4("v", v, layout)?;
    for (arg, shape, width) in [("q", qs, "d"), ("k", ks, "d"), ("v", vs, "e")] {
        if let Some(i) = shape.iter().position(|&x| x == 0) {
            return Err(Error::Empty {
                arg,
                dim: dim_names(layout, width)[i],
            });
        }
    }
    let names = dim_names(layout, "d");
    let heads = layout.split(&[0, 1, 2, 3]).1;
    let mismatch = |arg, i: usize, got: &[usize; 4], reference, want: &[usize; 4]| {
        Err(Error::ShapeMismatch {
            arg,
            dim: names[i],
            got: got[i],
            reference,
            expected: want[i],
        })
    };
    if let Some(i) = (0..4).find(|&i| i != heads && ks[i] != qs[i]) {
        return mismatch("k", i, &ks, "q", &qs);
    }
    if ks[heads] > qs[heads] || !qs[heads].is_multiple_of(ks[heads]) {
        return mismatch("k", heads, &ks, GROUPED, &qs);
    }
    if let Some(i) = (0..3).find(|&i| vs[i] != ks[i]) {
        return mismatch("v", i, &vs, "k", &ks);
    }
    let (b, hq, n, d) = layout.split(&qs);
    let h = ks[heads];
    let e = vs[3];
    head_dims(d, e)?;
    let fits = |x: Option<usize>| x.is_some_and(|x| u32::try_from(x).is_ok());
    if !fits(b.checked_mul(hq)) || !fits(Some(n)) {
        return Err(Error::InvalidValue {
            arg: "q",
            value: format!("{q:?}"),
            reason: "batch x heads and n must each be below 2^32",
        });
    }
    Ok((Dims { b, h, n, d, e }, hq / h))
}

/// `shape` with its heads divided by `view.step` (an internal view's
/// tensors always divide).
fn viewed_shape(layout: Layout, shape: &[usize], view: HeadView) -> Vec<usize> {
    let mut s = shape.to_vec();
    let heads = layout.split(&[0, 1, 2, 3]).1;
    if s.len() == 4 {
        s[heads] /= view.step;
    }
    s
}

/// What q's heads are checked against when k's do not divide them.
pub(crate) const GROUPED: &str = "q (whose heads must be k's, or a multiple of them)";

/// The sequences of a call: the whole batch, or the packed ones.
fn sequences(dims: &Dims, cu_seqlens: Option<&[usize]>) -> Result<Vec<Sequence>> {
    let Some(cu) = cu_seqlens else {
        return Ok(vec![Sequence {
            start: 0,
            len: dims.n,
            first_state: 0,
        }]);
    };
    let bad = |reason: String| Err(Error::CuSeqlens(reason));
    if dims.b != 1 {
        return bad(format!("a packed batch needs batch = 1, got {}", dims.b));
    }
    if cu.len() < 2 {
        return bad(format!("needs at least 2 offsets, got {}", cu.len()));
    }
    if cu[0] != 0 {
        return bad(format!("must start at 0, starts at {}", cu[0]));
    }
    if let Some(i) = (1..cu.len()).find(|&i| cu[i] <= cu[i - 1]) {
        return bad(format!(
            "must be strictly increasing: offset {i} is {} after {}",
            cu[i],
            cu[i - 1]
        ));
    }
    let last = cu[cu.len() - 1];
    if last != dims.n {
        return bad(format!("must end at n = {}, ends at {last}", dims.n));
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

/// Checks every input of a forward call.
pub(crate) fn forward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &ForwardOptions,
) -> Result<Call> {
    forward_viewed(ctx, q, k, v, opts, &Default::default())
}

/// [`forward`] of a call reading q, k and v at `heads` (a member of every
/// group of heads: see [`HeadView`]): each tensor counts `1 / step` of its heads.
pub(crate) fn forward_viewed(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &ForwardOptions,
    heads: &[HeadView; 4],
) -> Result<Call> {
    ctx.rt().check_lost()?;
    // q, k and v share one storage type, any of them; states are f32.
    for (arg, t) in [("q", q), ("k", k), ("v", v)] {
        tensor(ctx, arg, t, q.dtype())?;
    }
    let [qs, ks, vs] = [(q, heads[0]), (k, heads[1]), (v, heads[2])]
        .map(|(t, view)| viewed_shape(opts.layout, t.shape(), view));
    let (dims, group) = grouped_problem(opts.layout, &qs, &ks, &vs)?;
    slopes(opts.slopes, dims.h)?;
    scale(opts.scale)?;
    let sequences = sequences(&dims, opts.cu_seqlens)?;
    let states = if opts.cu_seqlens.is_some() {
        sequences.len()
    } else {
        dims.b
    };
    let state_shape = [states, dims.h, dims.d, dims.e];
    if let Some(s0) = opts.initial_state {
        state(ctx, "initial_state", s0, &state_shape)?;
    }
    Ok(Call {
        dims,
        sequences,
        state_shape,
        packed: opts.cu_seqlens.is_some(),
        group,
    })
}

impl Call {
    /// The shape of o (and of dO): q's heads, v's width.
    pub(crate) fn output_shape(&self, layout: Layout) -> [usize; 4] {
        let d = &self.dims;
        layout.shape(d.b, d.h * self.group, d.n, d.e)
    }
}

/// Checks the outputs a caller gives a forward call: `o` shaped like `v`
/// but with q's heads (in v's storage, or f32), the final state shaped like
/// the states.
pub(crate) fn forward_outputs(
    ctx: &Context,
    call: &Call,
    layout: Layout,
    v: &Tensor,
    (o, o_view): (&Tensor, HeadView),
    final_state: Option<&Tensor>,
) -> Result<()> {
    ctx.owns("o", o)?;
    if o.dtype() != v.dtype() && o.dtype() != DType::F32 {
        return Err(Error::DType {
            arg: "o",
            got: o.dtype(),
            expected: v.dtype(),
        });
    }
    let mut want = call.output_shape(layout);
    want[layout.split(&[0, 1, 2, 3]).1] *= o_view.step;
    shape("o", o, &want, dim_names(layout, "e"), "v with q's heads")?;
    if let Some(t) = final_state {
        state(ctx, "final_state", t, &call.state_shape)?;
    }
    Ok(())
}

/// Checks every input of a backward call: the forward's checks, `d_o`
/// stored like q and shaped like o, `dS_n` shaped like the states.
pub(crate) fn backward(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    d_o: &Tensor,
    opts: &BackwardOptions,
) -> Result<Call> {
    let fwd = &opts.forward;
    let call = forward(ctx, q, k, v, fwd)?;
    tensor(ctx, "d_o", d_o, q.dtype())?;
    shape(
        "d_o",
        d_o,
        &call.output_shape(fwd.layout),
        dim_names(fwd.layout, "e"),
        "o (v with q's heads)",
    )?;
    if let Some(ds) = opts.d_final_state {
        state(ctx, "d_final_state", ds, &call.state_shape)?;
    }
    Ok(call)
}

/// Checks the gradients a caller gives a backward call: dq, dk, dv shaped
/// like q, k, v and stored like q (or in f32), dS0 shaped like the states.
pub(crate) fn gradients(
    ctx: &Context,
    call: &Call,
    layout: Layout,
    q: &Tensor,
    g: &crate::ops::backward::Gradients,
) -> Result<()> {
    let Dims { b, h, n, d, e } = call.dims;
    let heads = [h * call.group, h, h];
    for ((arg, t, width), heads) in [("dq", &g.dq, d), ("dk", &g.dk, d), ("dv", &g.dv, e)]
        .into_iter()
        .zip(heads)
    {
        ctx.owns(arg, t)?;
        if t.dtype() != q.dtype() && t.dtype() != DType::F32 {
            return Err(Error::DType {
                arg,
                got: t.dtype(),
                expected: q.dtype(),
            });
        }
        let names = dim_names(layout, if width == d { "d" } else { "e" });
        shape(
            arg,
            t,
            &layout.shape(b, heads, n, width),
            names,
            "the input it is the gradient of",
        )?;
    }
    state(
        ctx,
        "d_initial_state",
        &g.d_initial_state,
        &call.state_shape,
    )
}

/// Checks the output a caller gives a decode step: `(batch, q heads, e)`,
/// stored like v or in f32.
pub(crate) fn decode_output(
    ctx: &Context,
    (dims, group): (&Dims, usize),
    v: &Tensor,
    o: &Tensor,
) -> Result<()> {
    ctx.owns("o", o)?;
    if o.dtype() != v.dtype() && o.dtype() != DType::F32 {
        return Err(Error::DType {
            arg: "o",
            got: o.dtype(),
            expected: v.dtype(),
        });
    }
    shape(
        "o",
        o,
        &[dims.b, dims.h * group, dims.e],
        ["batch", "heads", "e", ""],
        "v with q's heads",
    )
}

/// Checks slot indices against a cache of `cache_slots`: in range or
/// negative (padding), and no slot named twice (their updates would race).
fn slots(slots: &[i32], cache_slots: usize) -> Result<()> {
    let mut owner = vec![usize::MAX; cache_slots];
    for (request, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let s = slot as usize;
        if s >= cache_slots {
            return Err(Error::SlotOutOfRange {
                request,
                slot: slot as i64,
                slots: cache_slots,
            });
        }
        if owner[s] != usize::MAX {
            return Err(Error::DuplicateSlot {
                slot: slot as i64,
                first: owner[s],
                second: request,
            });
        }
        owner[s] = request;
    }
    Ok(())
}

/// Checks every input of a decode step and returns its sizes (`n` = 1, `h`
/// the kv heads) and the q heads per kv head.
pub(crate) fn decode(
    ctx: &Context,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &[Tensor],
    slot_map: &[i32],
    opts: &DecodeOptions,
) -> Result<(Dims, usize)> {
    ctx.rt().check_lost()?;
    for (arg, t) in [("q", q), ("k", k), ("v", v)] {
        tensor(ctx, arg, t, q.dtype())?;
    }
    let names = ["batch", "heads", "d", "e"];
    let qs = q.shape();
    if qs.len() != 3 {
        return Err(Error::Rank {
            arg: "q",
            expected: 3,
            what: "(batch, heads, d)",
            got: qs.to_vec(),
        });
    }
    if let Some(i) = qs.iter().position(|&x| x == 0) {
        return Err(Error::Empty {
            arg: "q",
            dim: names[i],
        });
    }
    let (batch, hq, d) = (qs[0], qs[1], qs[2]);
    // Grouped heads: k and v may have a divisor of q's heads.
    let h = match *k.shape() {
        [_, h, _] if h > 0 && hq.is_multiple_of(h) => h,
        [_, h, _] => {
            return Err(Error::ShapeMismatch {
                arg: "k",
                dim: "heads",
                got: h,
                reference: GROUPED,
                expected: hq,
            })
        }
        _ => hq,
    };
    shape("k", k, &[batch, h, d], ["batch", "heads", "d", ""], "q")?;
    let e = v.shape().get(2).copied().unwrap_or(0);
    if v.shape().len() == 3 && e == 0 {
        return Err(Error::Empty { arg: "v", dim: "e" });
    }
    shape("v", v, &[batch, h, e], ["batch", "heads", "e", ""], "k")?;
    head_dims(d, e)?;
    let [ch, cd, ce] = cache_shards(ctx, cache)?;
    for (dim, got, expected, reference) in
        [("heads", ch, h, "k"), ("d", cd, d, "k"), ("e", ce, e, "v")]
    {
        if got != expected {
            return Err(Error::ShapeMismatch {
                arg: "cache",
                dim,
                got,
                reference,
                expected,
            });
        }
    }
    let cache_slots = crate::cache::slot_count(cache);
    if slot_map.len() != batch {
        return Err(Error::ShapeMismatch {
            arg: "slots",
            dim: "batch",
            got: slot_map.len(),
            reference: "q",
            expected: batch,
        });
    }
    slots(slot_map, cache_slots)?;
    slopes(opts.slopes, h)?;
    scale(opts.scale)?;
    if u32::try_from(batch.saturating_mul(h)).is_err() {
        return Err(Error::InvalidValue {
            arg: "q",
            value: format!("{qs:?}"),
            reason: "batch x heads must be below 2^32",
        });
    }
    let dims = Dims {
        b: batch,
        h,
        n: 1,
        d,
        e,
    };
    Ok((dims, hq / h))
}
