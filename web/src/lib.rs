//! The wasm half of the npm package `lightning-wgpu`: an engine on the
//! browser's WebGPU adapter and tensors resident on it. `js/index.js` wraps
//! it into the documented API (typed arrays in and out, option objects);
//! this layer takes tensors and plain arguments only.
//!
//! Every failure rejects (or throws) a JS `Error` whose message is the
//! library's [`lightning_wgpu::Error`] text.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Object, Promise, Reflect};
use lightning_wgpu::{
    Context, DType, DecodeOptions, Draft, ForwardOptions, Layout, Method, SoftmaxOptions,
    Tensor as Inner,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

/// Runs when the module is instantiated: panics go to the console.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("lightning-wgpu panicked: {info}").into());
    }));
}

fn js(e: lightning_wgpu::Error) -> JsValue {
    JsError::new(&e.to_string()).into()
}

fn bad(message: String) -> JsValue {
    JsError::new(&message).into()
}

fn dtype(name: &str) -> Result<DType, JsValue> {
    match name {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(bad(format!(
            "dtype `{other}`: expected \"f32\", \"f16\" or \"bf16\""
        ))),
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "unknown",
    }
}

fn layout(name: &str) -> Result<Layout, JsValue> {
    name.parse()
        .map_err(|_| bad(format!("layout `{name}`: expected \"bhnd\" or \"bnhd\"")))
}

fn method(name: &str) -> Result<Method, JsValue> {
    match name {
        "chunk" => Ok(Method::Chunk),
        "recurrent" => Ok(Method::Recurrent),
        other => Err(bad(format!(
            "method `{other}`: expected \"chunk\" or \"recurrent\""
        ))),
    }
}

fn shape(dims: &[u32]) -> Vec<usize> {
    dims.iter().map(|&x| x as usize).collect()
}

/// A plain JS object built field by field.
struct Obj(Object);

impl Obj {
    fn new() -> Obj {
        Obj(Object::new())
    }

    fn set(self, key: &str, value: impl Into<JsValue>) -> Obj {
        // Setting a property of a fresh plain object cannot fail.
        let _ = Reflect::set(&self.0, &JsValue::from_str(key), &value.into());
        self
    }

    fn build(self) -> JsValue {
        self.0.into()
    }
}

/// A tensor resident on the engine's GPU.
#[wasm_bindgen]
pub struct GpuTensor {
    ctx: Context,
    t: Rc<RefCell<Inner>>,
}

impl GpuTensor {
    fn wrap(ctx: &Context, t: Inner) -> GpuTensor {
        GpuTensor {
            ctx: ctx.clone(),
            t: Rc::new(RefCell::new(t)),
        }
    }
}

#[wasm_bindgen]
impl GpuTensor {
    #[wasm_bindgen(getter)]
    pub fn shape(&self) -> Vec<u32> {
        self.t.borrow().shape().iter().map(|&x| x as u32).collect()
    }

    #[wasm_bindgen(getter)]
    pub fn dtype(&self) -> String {
        dtype_name(self.t.borrow().dtype()).into()
    }

    /// Resolves to the values as a `Float32Array` (half types widened).
    pub fn read(&self) -> Promise {
        let (ctx, t) = (self.ctx.clone(), self.t.clone());
        future_to_promise(async move {
            let data = ctx.read_async(&t.borrow()).await.map_err(js)?;
            Ok(js_sys::Float32Array::from(&data[..]).into())
        })
    }

    /// Resolves to the 16-bit words of an f16 or bf16 tensor (`Uint16Array`).
    #[wasm_bindgen(js_name = readBits)]
    pub fn read_bits(&self) -> Promise {
        let (ctx, t) = (self.ctx.clone(), self.t.clone());
        future_to_promise(async move {
            let data = ctx.read_bits_async(&t.borrow()).await.map_err(js)?;
            Ok(js_sys::Uint16Array::from(&data[..]).into())
        })
    }
}

/// The arguments of one forward call, owned by its future.
struct Call {
    q: Rc<RefCell<Inner>>,
    k: Rc<RefCell<Inner>>,
    v: Rc<RefCell<Inner>>,
    s0: Option<Rc<RefCell<Inner>>>,
    slopes: Option<Vec<f32>>,
    scale: f32,
    output_final_state: bool,
    cu_seqlens: Option<Vec<u32>>,
    checkpoint_every: Option<u32>,
}

/// The per-token states of a multi-token decoding step, until committed.
#[wasm_bindgen]
pub struct GpuDraft {
    d: Rc<Draft>,
}

#[wasm_bindgen]
impl GpuDraft {
    /// The draft tokens of each request.
    #[wasm_bindgen(getter)]
    pub fn tokens(&self) -> Vec<u32> {
        self.d.tokens().iter().map(|&t| t as u32).collect()
    }
}

/// One device on the browser's WebGPU adapter.
#[wasm_bindgen]
pub struct Engine {
    ctx: Context,
}

/// Opens the browser's WebGPU adapter (`powerPreference`-free: the one the
/// page is given). Rejects when there is none.
#[wasm_bindgen]
pub async fn open() -> Result<Engine, JsValue> {
    let ctx = Context::new_async().await.map_err(js)?;
    Ok(Engine { ctx })
}

#[wasm_bindgen]
impl Engine {
    /// What the adapter is and what the kernels use of it.
    #[wasm_bindgen(js_name = adapterInfo)]
    pub fn adapter_info(&self) -> JsValue {
        let ctx = &self.ctx;
        let info = ctx.adapter_info();
        let limits = ctx.limits();
        let features = Array::new();
        for (flag, name) in [
            (wgpu::Features::SHADER_F16, "shader-f16"),
            (wgpu::Features::SUBGROUP, "subgroups"),
            (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        ] {
            if ctx.features().contains(flag) {
                features.push(&JsValue::from_str(name));
            }
        }
        Obj::new()
            .set("name", info.name.as_str())
            .set("vendor", info.vendor.to_string())
            .set("driver", info.driver.as_str())
            .set("driverInfo", info.driver_info.as_str())
            .set("backend", format!("{:?}", info.backend))
            .set("deviceType", format!("{:?}", info.device_type))
            .set("blockRows", ctx.block_rows())
            .set("features", features)
            .set(
                "maxStorageBufferBindingSize",
                limits.max_storage_buffer_binding_size as f64,
            )
            .set("maxBufferSize", limits.max_buffer_size as f64)
            .build()
    }

    /// Uploads f32 `data` of `shape`, stored as `dtype` (rounded; values
    /// beyond a half type's range are an error).
    #[wasm_bindgen(js_name = tensorF32)]
    pub fn tensor_f32(
        &self,
        data: &[f32],
        dims: &[u32],
        dtype: &str,
    ) -> Result<GpuTensor, JsValue> {
        let t = self
            .ctx
            .tensor_as(data, &shape(dims), self::dtype(dtype)?)
            .map_err(js)?;
        Ok(GpuTensor::wrap(&self.ctx, t))
    }

    /// Uploads the 16-bit words of f16 or bf16 data.
    #[wasm_bindgen(js_name = tensorBits)]
    pub fn tensor_bits(
        &self,
        bits: &[u16],
        dims: &[u32],
        dtype: &str,
    ) -> Result<GpuTensor, JsValue> {
        let t = self
            .ctx
            .tensor_from_bits(bits, &shape(dims), self::dtype(dtype)?)
            .map_err(js)?;
        Ok(GpuTensor::wrap(&self.ctx, t))
    }

    /// The forward pass from a zero state; resolves to `[o, finalState |
    /// undefined, checkpoints | undefined]` (checkpoints with
    /// `checkpoint_every`: the state after every that many positions).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        slopes: Option<Vec<f32>>,
        scale: f32,
        layout_name: &str,
        output_final_state: bool,
        cu_seqlens: Option<Vec<u32>>,
        method_name: &str,
        checkpoint_every: Option<u32>,
    ) -> Promise {
        let call = Call {
            q: q.t.clone(),
            k: k.t.clone(),
            v: v.t.clone(),
            s0: None,
            slopes,
            scale,
            output_final_state,
            cu_seqlens,
            checkpoint_every,
        };
        self.run(call, layout_name, method_name)
    }

    /// [`Engine::forward`] from an initial state (f32 `(b, h, d, e)`).
    #[wasm_bindgen(js_name = forwardFrom)]
    #[allow(clippy::too_many_arguments)]
    pub fn forward_from(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        initial_state: &GpuTensor,
        slopes: Option<Vec<f32>>,
        scale: f32,
        layout_name: &str,
        output_final_state: bool,
        cu_seqlens: Option<Vec<u32>>,
        method_name: &str,
        checkpoint_every: Option<u32>,
    ) -> Promise {
        let call = Call {
            q: q.t.clone(),
            k: k.t.clone(),
            v: v.t.clone(),
            s0: Some(initial_state.t.clone()),
            slopes,
            scale,
            output_final_state,
            cu_seqlens,
            checkpoint_every,
        };
        self.run(call, layout_name, method_name)
    }

    /// One decoding step against `cache` (f32 `(slots, h, d, e)`, updated in
    /// place); resolves to o `(batch, h, e)`.
    #[wasm_bindgen(js_name = decodeStep)]
    #[allow(clippy::too_many_arguments)]
    pub fn decode_step(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        cache: &GpuTensor,
        slots: Vec<i32>,
        slopes: Option<Vec<f32>>,
        scale: f32,
    ) -> Promise {
        let ctx = self.ctx.clone();
        let (q, k, v, cache) = (q.t.clone(), k.t.clone(), v.t.clone(), cache.t.clone());
        future_to_promise(async move {
            let opts = DecodeOptions {
                slopes: slopes.as_deref(),
                scale,
            };
            let mut cache = cache
                .try_borrow_mut()
                .map_err(|_| bad("`cache` is also an input of this step".into()))?;
            let o = ctx
                .decode_step_async(
                    &q.borrow(),
                    &k.borrow(),
                    &v.borrow(),
                    &mut *cache,
                    &slots,
                    &opts,
                )
                .await
                .map_err(js)?;
            Ok(GpuTensor::wrap(&ctx, o).into())
        })
    }

    /// Up to t tokens per request (q, k `(t, batch, h, d)`, v `(t, batch, h,
    /// e)`, token-major) from `cache`, which stays untouched; request r uses
    /// its first `tokens[r]`. Resolves to `[o (t, batch, h, e) f32, draft]`.
    #[wasm_bindgen(js_name = decodeDraft)]
    #[allow(clippy::too_many_arguments)]
    pub fn decode_draft(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        cache: &GpuTensor,
        slots: Vec<i32>,
        tokens: Vec<u32>,
        slopes: Option<Vec<f32>>,
        scale: f32,
    ) -> Promise {
        let ctx = self.ctx.clone();
        let (q, k, v, cache) = (q.t.clone(), k.t.clone(), v.t.clone(), cache.t.clone());
        future_to_promise(async move {
            let opts = DecodeOptions {
                slopes: slopes.as_deref(),
                scale,
            };
            let tokens: Vec<usize> = tokens.iter().map(|&t| t as usize).collect();
            let (o, draft) = ctx
                .decode_draft_async(
                    &q.borrow(),
                    &k.borrow(),
                    &v.borrow(),
                    &*cache.borrow(),
                    &slots,
                    &tokens,
                    &opts,
                )
                .await
                .map_err(js)?;
            let pair = Array::new();
            pair.push(&GpuTensor::wrap(&ctx, o).into());
            pair.push(&GpuDraft { d: Rc::new(draft) }.into());
            Ok(pair.into())
        })
    }

    /// Sets each request's slot of `cache` to its state after its first
    /// `accepted[r]` draft tokens (0: unchanged).
    #[wasm_bindgen(js_name = commitDraft)]
    pub fn commit_draft(&self, cache: &GpuTensor, draft: &GpuDraft, accepted: Vec<u32>) -> Promise {
        let ctx = self.ctx.clone();
        let (cache, draft) = (cache.t.clone(), draft.d.clone());
        future_to_promise(async move {
            let mut cache = cache
                .try_borrow_mut()
                .map_err(|_| bad("`cache` is in use by another call".into()))?;
            let accepted: Vec<usize> = accepted.iter().map(|&t| t as usize).collect();
            ctx.commit_draft_async(&mut *cache, &draft, &accepted)
                .await
                .map_err(js)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Causal softmax attention (the quadratic baseline) in `(b, h, n, d)`.
    #[wasm_bindgen(js_name = softmaxAttention)]
    pub fn softmax_attention(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        scale: f32,
    ) -> Promise {
        let ctx = self.ctx.clone();
        let (q, k, v) = (q.t.clone(), k.t.clone(), v.t.clone());
        future_to_promise(async move {
            let opts = SoftmaxOptions {
                scale: Some(scale),
                alibi: None,
                layout: Layout::Bhnd,
            };
            let o = ctx
                .softmax_attention_async(&q.borrow(), &k.borrow(), &v.borrow(), &opts)
                .await
                .map_err(js)?;
            Ok(GpuTensor::wrap(&ctx, o).into())
        })
    }

    /// Copies all of `src` into `dst` from element `at`, on the GPU.
    #[wasm_bindgen(js_name = copyInto)]
    pub fn copy_into(&self, src: &GpuTensor, dst: &GpuTensor, at: u32) -> Promise {
        let ctx = self.ctx.clone();
        let (src, dst) = (src.t.clone(), dst.t.clone());
        future_to_promise(async move {
            if Rc::ptr_eq(&src, &dst) {
                return Err(bad("copyInto: `src` and `dst` are the same tensor".into()));
            }
            let src = src
                .try_borrow()
                .map_err(|_| bad("`src` is being written by another call".into()))?;
            let mut dst = dst
                .try_borrow_mut()
                .map_err(|_| bad("`dst` is in use by another call".into()))?;
            ctx.copy_into_async(&src, &mut dst, at as usize)
                .await
                .map_err(js)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Resolves when the GPU has finished everything submitted so far (for
    /// timing with the wall clock).
    pub fn synchronize(&self) -> Promise {
        let queue = self.ctx.queue().clone();
        Promise::new(&mut |resolve, _reject| {
            queue.on_submitted_work_done(move || {
                let _ = resolve.call0(&JsValue::UNDEFINED);
            });
        })
    }
}

impl Engine {
    fn run(&self, call: Call, layout_name: &str, method_name: &str) -> Promise {
        let ctx = self.ctx.clone();
        let parsed = layout(layout_name).and_then(|l| Ok((l, method(method_name)?)));
        future_to_promise(async move {
            let (layout, method) = parsed?;
            let cu: Option<Vec<usize>> = call
                .cu_seqlens
                .map(|c| c.iter().map(|&x| x as usize).collect());
            let s0 = call.s0.as_ref().map(|s| s.borrow());
            let (q, k, v) = (call.q.borrow(), call.k.borrow(), call.v.borrow());
            let opts = ForwardOptions {
                slopes: call.slopes.as_deref(),
                scale: call.scale,
                layout,
                initial_state: s0.as_deref(),
                output_final_state: call.output_final_state,
                method,
                cu_seqlens: cu.as_deref(),
            };
            let (out, checkpoints) = match call.checkpoint_every {
                Some(every) => {
                    let (out, ck) = ctx
                        .forward_with_checkpoints_async(&q, &k, &v, &opts, every as usize)
                        .await
                        .map_err(js)?;
                    (out, Some(ck))
                }
                None => (
                    ctx.forward_async(&q, &k, &v, &opts).await.map_err(js)?,
                    None,
                ),
            };
            let triple = Array::new();
            let wrap = |t: Option<Inner>| -> JsValue {
                t.map_or(JsValue::UNDEFINED, |t| GpuTensor::wrap(&ctx, t).into())
            };
            triple.push(&wrap(Some(out.o)));
            triple.push(&wrap(out.final_state));
            triple.push(&wrap(checkpoints));
            Ok(triple.into())
        })
    }
}
