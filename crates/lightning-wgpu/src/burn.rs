//! Lightning Attention on [burn](https://burn.dev) tensors (feature `burn`).
//!
//! The op runs on the buffers of burn's own wgpu device, read and written in
//! place (no copy to the host, none between the frameworks), and its
//! backward is registered under burn's autodiff, so `loss.backward()`
//! reaches q, k, v and the initial state through this crate's kernels.
//!
//! ```no_run
//! use burn::tensor::{Distribution, Tensor};
//! use lightning_wgpu::burn::{init, lightning_attention, AttentionOptions};
//!
//! let (device, ctx) = init()?;          // burn's wgpu device, and ours on it
//! let device = device.autodiff();        // gradients wanted
//! let x = || Tensor::<4>::random([1, 4, 128, 32], Distribution::Normal(0.0, 0.2), &device).require_grad();
//! let (q, k, v) = (x(), x(), x());
//! let opts = AttentionOptions { slopes: Some(lightning_wgpu::alibi_slopes(4)), ..Default::default() };
//! let out = lightning_attention(&ctx, q.clone(), k, v, None, &opts)?;
//! let grads = out.o.sum().backward();
//! let dq = q.grad(&grads);
//! # Ok::<(), lightning_wgpu::Error>(())
//! ```
//!
//! burn 0.23 is a pre-release (pinned to `=0.23.0-pre.1`, the first burn on
//! wgpu 30); burn's `fusion` feature must stay off, since the op reads the
//! tensors' buffers. burn's device is opened without cooperative matrices,
//! so the op runs the portable kernels.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients as BurnGradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::wgpu::{AutoCompiler, CubeTensor};
use burn::backend::{Autodiff, Cube, DispatchKindConversion};
use burn::cubecl::wgpu::WgpuServer;
use burn::tensor::{
    DType as BurnDType, Device, DispatchTensor, GradientCheckpointingStrategy, Shape,
    Tensor as BurnTensor,
};

use crate::{
    problem_dims, validate, BackwardOptions, Context, DType, DecodeOptions, Error, ForwardOptions,
    Gradients, Layout, Result, Tensor,
};

/// Opens burn's wgpu runtime on the default adapter and a [`Context`] on
/// the same device and queue (so tensors move between them by reference).
///
/// burn registers its wgpu runtime once per process: the first call opens
/// it, later calls return the same pair. Call it before anything else
/// creates burn's default wgpu device.
pub fn init() -> Result<(Device, Context)> {
    static OPENED: std::sync::OnceLock<std::result::Result<(Device, Context), String>> =
        std::sync::OnceLock::new();
    let opened = OPENED.get_or_init(|| {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| e.to_string())?;
        let ctx = Context::from_wgpu(&setup.adapter, setup.device.clone(), setup.queue.clone())
            .map_err(|e| e.to_string())?;
        Ok((device, ctx))
    });
    opened.clone().map_err(|reason| Error::RequestDevice {
        adapter: "burn's wgpu runtime".into(),
        reason,
    })
}

/// Options of [`lightning_attention`], as [`ForwardOptions`]'.
#[derive(Clone, Debug)]
pub struct AttentionOptions {
    /// Per-head decay slopes (`None`: no decay).
    pub slopes: Option<Vec<f32>>,
    /// Multiplies q.
    pub scale: f32,
    /// Layout of q, k, v and o.
    pub layout: Layout,
}

impl Default for AttentionOptions {
    fn default() -> Self {
        AttentionOptions {
            slopes: None,
            scale: 1.0,
            layout: Layout::Bhnd,
        }
    }
}

/// The results of [`lightning_attention`].
#[derive(Clone, Debug)]
pub struct AttentionOutput {
    /// Shaped like v.
    pub o: BurnTensor<4>,
    /// The state after the last position, `(b, h, d, e)`, f32: use it (or
    /// not) as any other tensor; its gradient flows back through the op.
    pub final_state: BurnTensor<4>,
}

/// Lightning Attention on burn tensors of burn's wgpu backend (see
/// [`Context::forward`]): q, k `(b, h, n, d)`, v `(b, h, n, e)` (or as
/// `opts.layout` says), an optional initial state `(b, h, d, e)`. Under an
/// autodiff device the gradients of q, k, v and the initial state come from
/// this crate's backward, the final state's gradient included. Errors in
/// the inputs are returned; an error on the GPU later, inside burn's
/// graph, panics as burn's own ops do.
pub fn lightning_attention(
    ctx: &Context,
    q: BurnTensor<4>,
    k: BurnTensor<4>,
    v: BurnTensor<4>,
    initial_state: Option<BurnTensor<4>>,
    opts: &AttentionOptions,
) -> Result<AttentionOutput> {
    let dims = problem_dims(opts.layout, &q.dims(), &k.dims(), &v.dims())?;
    validate::slopes(opts.slopes.as_deref(), dims.h)?;
    validate::scale(opts.scale)?;
    let state_shape = dims.state_shape();
    if let Some(s0) = &initial_state {
        if s0.dims() != state_shape {
            return Err(Error::ShapeMismatch {
                arg: "initial_state",
                dim: "shape",
                got: s0.dims().iter().product(),
                reference: "state (batch, heads, d, e)",
                expected: state_shape.iter().product(),
            });
        }
    }
    for (arg, t) in [("q", &q), ("k", &k), ("v", &v)] {
        f32_only(arg, t.dtype())?;
    }
    if let Some(s0) = &initial_state {
        f32_only("initial_state", s0.dtype())?;
    }
    let device = q.device();
    let has_s0 = initial_state.is_some();
    let s0 = initial_state.unwrap_or_else(|| BurnTensor::zeros(state_shape, &device));
    let call = Call {
        ctx: ctx.clone(),
        opts: opts.clone(),
        o_shape: v.dims(),
        state_shape,
        has_s0,
    };
    let packed: BurnTensor<1> = match device.gradient_checkpointing_strategy() {
        None => {
            let [q, k, v, s0] = [cube(q)?, cube(k)?, cube(v)?, cube(s0)?];
            BurnTensor::from_primitive::<Cube>(call.forward([&q, &k, &v, &s0])?)
        }
        Some(GradientCheckpointingStrategy::Disabled) => {
            call.clone().tracked::<NoCheckpointing>([q, k, v, s0])?
        }
        Some(GradientCheckpointingStrategy::Balanced) => call
            .clone()
            .tracked::<BalancedCheckpointing>([q, k, v, s0])?,
    };
    let len_o: usize = call.o_shape.iter().product();
    let len_s: usize = state_shape.iter().product();
    Ok(AttentionOutput {
        o: packed.clone().narrow(0, 0, len_o).reshape(call.o_shape),
        final_state: packed.narrow(0, len_o, len_s).reshape(state_shape),
    })
}

/// The wgpu backend's tensor under a burn tensor of no autodiff.
fn cube<const D: usize>(t: BurnTensor<D>) -> Result<CubeTensor> {
    t.try_into_primitive::<Cube>().map_err(not_wgpu)
}

fn not_wgpu(e: burn::tensor::PrimitiveConversionError) -> Error {
    Error::InvalidValue {
        arg: "tensor",
        value: format!("{e:?}"),
        reason: "the burn ops take tensors of burn's wgpu backend, without fusion",
    }
}

/// burn's work so far (that wrote our inputs) goes to the queue first.
fn flush(t: &CubeTensor) -> Result<()> {
    t.client.flush().map_err(|e| Error::Gpu {
        op: "burn's pending work",
        reason: format!("{e:?}"),
    })
}

/// `t`'s buffer as a contiguous tensor of `shape` (as many elements).
fn reshaped(t: CubeTensor, shape: Vec<usize>) -> CubeTensor {
    CubeTensor::new_contiguous(
        t.client,
        t.device,
        Shape::from(shape),
        t.handle,
        BurnDType::F32,
    )
}

/// One call of the op: what the forward and the backward both need.
#[derive(Clone, Debug)]
struct Call {
    ctx: Context,
    opts: AttentionOptions,
    o_shape: [usize; 4],
    state_shape: [usize; 4],
    has_s0: bool,
}

/// Views of burn tensors' buffers, held (so burn neither frees nor moves
/// them) until this crate's work on them is submitted.
struct Views {
    // cubecl's `ManagedResource`s, whose type is not exported.
    resources: Vec<Box<dyn std::any::Any>>,
}

impl Views {
    fn new() -> Self {
        Views {
            resources: Vec::new(),
        }
    }

    /// A view of `t` (contiguous f32) as a tensor of `shape` from element `first`.
    fn of(
        &mut self,
        ctx: &Context,
        t: &CubeTensor,
        first: usize,
        shape: &[usize],
    ) -> Result<Tensor> {
        let resource = t
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone())
            .map_err(|e| Error::Gpu {
                op: "a burn tensor's buffer",
                reason: format!("{e:?}"),
            })?;
        let r = resource.resource();
        let view = Tensor::from_buffer(
            ctx,
            &r.buffer,
            r.offset + first as u64 * 4,
            shape,
            DType::F32,
        )?;
        self.resources.push(Box::new(resource));
        Ok(view)
    }
}

/// A new contiguous f32 burn tensor of `len` elements on `like`'s device.
fn new_like(like: &CubeTensor, len: usize) -> CubeTensor {
    let handle = like.client.empty(len * 4);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::new([len]),
        handle,
        BurnDType::F32,
    )
}

fn contiguous(t: &CubeTensor) -> CubeTensor {
    burn::backend::wgpu::into_contiguous(t.clone())
}

impl Call {
    fn forward_options<'a>(&'a self, s0: Option<&'a Tensor>) -> ForwardOptions<'a> {
        ForwardOptions {
            slopes: self.opts.slopes.as_deref(),
            scale: self.opts.scale,
            layout: self.opts.layout,
            initial_state: s0,
            ..Default::default()
        }
    }

    /// The forward on cube tensors: o and the final state, packed in one
    /// f32 tensor (so that autodiff sees one output).
    fn forward(&self, [q, k, v, s0]: [&CubeTensor; 4]) -> Result<CubeTensor> {
        let [q, k, v, s0] = [q, k, v, s0].map(contiguous);
        let len_o: usize = self.o_shape.iter().product();
        let len_s: usize = self.state_shape.iter().product();
        let out = new_like(&q, len_o + len_s);
        let ctx = &self.ctx;
        let mut views = Views::new();
        let qk_shape = q.meta.shape().to_vec();
        let (q_t, k_t) = (
            views.of(ctx, &q, 0, &qk_shape)?,
            views.of(ctx, &k, 0, &qk_shape)?,
        );
        let v_t = views.of(ctx, &v, 0, &self.o_shape)?;
        let s0_t = views.of(ctx, &s0, 0, &self.state_shape)?;
        let mut o_t = views.of(ctx, &out, 0, &self.o_shape)?;
        let mut sn_t = views.of(ctx, &out, len_o, &self.state_shape)?;
        flush(&q)?;
        let opts = self.forward_options(self.has_s0.then_some(&s0_t));
        ctx.forward_into(&q_t, &k_t, &v_t, &opts, &mut o_t, Some(&mut sn_t))?;
        drop(views);
        Ok(out)
    }

    /// The op under autodiff with checkpoint strategy `C`.
    fn tracked<C: CheckpointStrategy>(self, inputs: [BurnTensor<4>; 4]) -> Result<BurnTensor<1>>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Cube, C>>,
    {
        let [q, k, v, s0] = inputs;
        let [q, k, v, s0] = [q, k, v, s0].map(|t| t.try_into_primitive::<Autodiff<Cube, C>>());
        let [q, k, v, s0] = [
            q.map_err(not_wgpu)?,
            k.map_err(not_wgpu)?,
            v.map_err(not_wgpu)?,
            s0.map_err(not_wgpu)?,
        ];
        let nodes = [q.node(), k.node(), v.node(), s0.node()];
        let prims = [q.primitive(), k.primitive(), v.primitive(), s0.primitive()];
        let out = match LightningBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = self.forward(prims)?;
                let state = State {
                    call: self,
                    inputs: prims.map(Clone::clone),
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(self.forward(prims)?),
        };
        Ok(BurnTensor::from_primitive::<Autodiff<Cube, C>>(out))
    }
}

/// The backward of the op, registered with burn's autodiff.
#[derive(Debug)]
struct LightningBackward;

/// What the backward keeps of its forward: the call and its inputs.
#[derive(Clone, Debug)]
struct State {
    call: Call,
    inputs: [CubeTensor; 4],
}

impl Backward<Cube, 4> for LightningBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 4>, grads: &mut BurnGradients, _: &mut Checkpointer) {
        let State { call, inputs } = ops.state;
        let [q, k, v, s0] = inputs.map(|t| contiguous(&t));
        let packed = contiguous(&grads.consume::<Cube>(&ops.node));
        let len_o: usize = call.o_shape.iter().product();
        let ctx = &call.ctx;
        let mut views = Views::new();
        // burn's backward has no error path: a failure here panics, as
        // burn's own ops do.
        let fail = |e: Error| -> ! { panic!("lightning_attention backward: {e}") };
        let mut view = |t: &CubeTensor, first: usize, shape: &[usize]| {
            views.of(ctx, t, first, shape).unwrap_or_else(|e| fail(e))
        };
        let qk_shape = q.meta.shape().to_vec();
        let (q_t, k_t) = (view(&q, 0, &qk_shape), view(&k, 0, &qk_shape));
        let v_t = view(&v, 0, &call.o_shape);
        let s0_t = view(&s0, 0, &call.state_shape);
        let d_o = view(&packed, 0, &call.o_shape);
        let dsn = view(&packed, len_o, &call.state_shape);
        let outputs = [&qk_shape[..], &qk_shape, &call.o_shape, &call.state_shape]
            .map(|shape| new_like(&q, shape.iter().product()));
        let [dq, dk, dv, ds0] = &outputs;
        let mut g = Gradients {
            dq: view(dq, 0, &qk_shape),
            dk: view(dk, 0, &qk_shape),
            dv: view(dv, 0, &call.o_shape),
            d_initial_state: view(ds0, 0, &call.state_shape),
        };
        flush(&q).unwrap_or_else(|e| fail(e));
        let opts = BackwardOptions {
            forward: call.forward_options(call.has_s0.then_some(&s0_t)),
            d_final_state: Some(&dsn),
        };
        ctx.backward_into(&q_t, &k_t, &v_t, &d_o, &opts, &mut g)
            .unwrap_or_else(|e| fail(e));
        drop(views);
        let shapes = [
            qk_shape.clone(),
            qk_shape,
            call.o_shape.to_vec(),
            call.state_shape.to_vec(),
        ];
        for ((parent, grad), shape) in ops.parents.into_iter().zip(outputs).zip(shapes) {
            if let Some(node) = parent {
                grads.register::<Cube>(node.id, reshaped(grad, shape));
            }
        }
    }
}

/// One decoding step ([`Context::decode_step`]) on burn tensors: q, k
/// `(batch, h, d)`, v `(batch, h, e)`, f32 (under autodiff, their values:
/// decoding records no gradient). The state cache is this crate's
/// [`Tensor`] `(slots, h, d, e)`, updated in place; fill a slot from a
/// prefill's final state with [`write_states`]. Returns o `(batch, h, e)`.
pub fn decode_step(
    ctx: &Context,
    q: BurnTensor<3>,
    k: BurnTensor<3>,
    v: BurnTensor<3>,
    cache: &mut Tensor,
    slots: &[i32],
    opts: &DecodeOptions,
) -> Result<BurnTensor<3>> {
    let [q, k, v] = [q, k, v].map(plain);
    for (arg, t) in [("q", &q), ("k", &k), ("v", &v)] {
        f32_only(arg, t.dtype())?;
    }
    let [b, h, e] = v.dims();
    let [q, k, v] = [cube(q)?, cube(k)?, cube(v)?].map(|t| contiguous(&t));
    let out = new_like(&q, b * h * e);
    let mut views = Views::new();
    let q_t = views.of(ctx, &q, 0, &q.meta.shape().to_vec())?;
    let k_t = views.of(ctx, &k, 0, &k.meta.shape().to_vec())?;
    let v_t = views.of(ctx, &v, 0, &[b, h, e])?;
    let mut o_t = views.of(ctx, &out, 0, &[b, h, e])?;
    flush(&q)?;
    ctx.decode_step_into(&q_t, &k_t, &v_t, cache, slots, opts, &mut o_t)?;
    drop(views);
    Ok(BurnTensor::from_primitive::<Cube>(reshaped(
        out,
        vec![b, h, e],
    )))
}

/// Copies states `(batch, h, d, e)` (a prefill's final state) into slots
/// `slots[i]` of a decode cache `(cache_slots, h, d, e)`, on the GPU.
pub fn write_states(
    ctx: &Context,
    states: BurnTensor<4>,
    cache: &mut Tensor,
    slots: &[usize],
) -> Result<()> {
    let states = plain(states);
    f32_only("states", states.dtype())?;
    let dims = states.dims();
    let per_slot: usize = dims[1..].iter().product();
    let cache_shape = cache.shape().to_vec();
    if cache.dtype() != DType::F32 || cache_shape.len() != 4 || cache_shape[1..] != dims[1..] {
        return Err(Error::InvalidValue {
            arg: "cache",
            value: format!("{cache_shape:?} {:?}", cache.dtype()),
            reason: "the cache must be f32 (slots, h, d, e) with the states' h, d, e",
        });
    }
    if slots.len() != dims[0] {
        return Err(Error::ShapeMismatch {
            arg: "slots",
            dim: "len",
            got: slots.len(),
            reference: "states (batch)",
            expected: dims[0],
        });
    }
    if let Some(&slot) = slots.iter().find(|&&s| s >= cache_shape[0]) {
        return Err(Error::InvalidValue {
            arg: "slots",
            value: slot.to_string(),
            reason: "a slot beyond the cache",
        });
    }
    let states = contiguous(&cube(states)?);
    let mut views = Views::new();
    flush(&states)?;
    for (i, &slot) in slots.iter().enumerate() {
        let src = views.of(ctx, &states, i * per_slot, &dims[1..])?;
        ctx.copy_into(&src, cache, slot * per_slot)?;
    }
    drop(views);
    Ok(())
}

/// The values of `t` without autodiff.
fn plain<const D: usize>(t: BurnTensor<D>) -> BurnTensor<D> {
    if t.is_autodiff() {
        t.inner()
    } else {
        t
    }
}

fn f32_only(arg: &'static str, dtype: BurnDType) -> Result<()> {
    if dtype == BurnDType::F32 {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            arg,
            value: format!("{dtype:?}"),
            reason: "the burn ops take f32 tensors",
        })
    }
}
