//! The browser demo of lightning-wgpu: what `static/main.js` calls.
//!
//! The page opens the browser's WebGPU adapter through wgpu's `webgpu`
//! backend, checks the forward pass against the f64 CPU reference (computed
//! here, in wasm), and times the providers of the benchmark registry
//! ([`lightning_wgpu_bench`]) over sequence lengths. Everything returned to
//! JavaScript is a plain object; every failure is a JS `Error` whose message
//! is the library's [`lightning_wgpu::Error`] text.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Object, Promise, Reflect};
use lightning_wgpu::{
    alibi_slopes, reference, Context, Dims, ForwardOptions, Layout, Method, SoftmaxOptions,
};
use lightning_wgpu_bench::{self as bench, Inputs, Provider, Repeat, Sweep};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

/// Largest relative error `||gpu - ref|| / ||ref||` the page accepts.
pub const TOLERANCE: f64 = 1e-4;

/// Runs when the module is instantiated: panics go to the console.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("lightning-web panicked: {info}").into());
    }));
}

/// [`TOLERANCE`], for the page.
#[wasm_bindgen]
pub fn tolerance() -> f64 {
    TOLERANCE
}

/// A library error as a JS `Error` carrying its text.
fn js(e: lightning_wgpu::Error) -> JsValue {
    JsError::new(&e.to_string()).into()
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

    fn num(self, key: &str, value: impl Into<f64>) -> Obj {
        self.set(key, JsValue::from_f64(value.into()))
    }

    fn build(self) -> JsValue {
        self.0.into()
    }
}

/// Deterministic pseudo-random values in `[-s, s)` (xorshift32).
fn random(len: usize, seed: u32, s: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ((x as f64 / u32::MAX as f64) * 2.0 - 1.0) as f32 * s
        })
        .collect()
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// The open adapter and the benchmark inputs of the last sweep.
#[wasm_bindgen]
pub struct Demo {
    ctx: Context,
    /// `(tokens, h, d, e)` and the uploaded inputs of that size.
    inputs: Rc<RefCell<Option<((usize, usize, usize, usize), Inputs)>>>,
}

/// Opens the browser's default WebGPU adapter. Rejects with the library's
/// error text when there is none or it refuses a device.
#[wasm_bindgen]
pub async fn open() -> Result<Demo, JsValue> {
    let ctx = Context::new_async().await.map_err(js)?;
    Ok(Demo {
        ctx,
        inputs: Rc::new(RefCell::new(None)),
    })
}

#[wasm_bindgen]
impl Demo {
    /// What the adapter is and the limits the kernels are sized from.
    pub fn adapter(&self) -> JsValue {
        let ctx = &self.ctx;
        let info = ctx.adapter_info();
        let limits = ctx.limits();
        let features = ctx.features();
        let names = Array::new();
        for (flag, name) in [
            (wgpu::Features::SHADER_F16, "shader-f16"),
            (wgpu::Features::SUBGROUP, "subgroups"),
            (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        ] {
            if features.contains(flag) {
                names.push(&JsValue::from_str(name));
            }
        }
        let limits = Obj::new()
            .num(
                "maxComputeInvocationsPerWorkgroup",
                limits.max_compute_invocations_per_workgroup,
            )
            .num(
                "maxComputeWorkgroupStorageSize",
                limits.max_compute_workgroup_storage_size,
            )
            .num(
                "maxStorageBufferBindingSize",
                limits.max_storage_buffer_binding_size as f64,
            )
            .num("maxBufferSize", limits.max_buffer_size as f64)
            .num(
                "maxComputeWorkgroupsPerDimension",
                limits.max_compute_workgroups_per_dimension,
            )
            .build();
        Obj::new()
            .set("name", info.name.as_str())
            .set("backend", format!("{:?}", info.backend))
            .set("webgpu", info.backend == wgpu::Backend::BrowserWebGpu)
            .set("deviceType", format!("{:?}", info.device_type))
            .num("blockRows", ctx.block_rows())
            .set("checked", ctx.checked())
            .set(
                "timer",
                if ctx.can_time() {
                    "gpu-timestamps"
                } else {
                    "wall-clock"
                },
            )
            .set("features", names)
            .set("limits", limits)
            .build()
    }

    /// Runs Lightning Attention (chunked and recurrent) and softmax attention
    /// on random `(b, h, n, d)` / `(b, h, n, e)` inputs and compares each with
    /// the f64 reference. Decay: ALiBi slopes, or none. Resolves to an array of
    /// `{ provider, relErr, pass, gpuMs, refMs }`.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        b: usize,
        h: usize,
        n: usize,
        d: usize,
        e: usize,
        decay: bool,
        seed: u32,
    ) -> Promise {
        let ctx = self.ctx.clone();
        let dims = Dims { b, h, n, d, e };
        future_to_promise(async move { check(&ctx, dims, decay, seed).await.map_err(js) })
    }

    /// Times one case of a sweep with [`bench::measure`]: `provider` (a
    /// [`Provider`] name) at length `n`, batch `tokens / n`. Resolves to
    /// `{ provider, n, b, ms, samples, timer, peakMemMb, gflops }`.
    #[allow(clippy::too_many_arguments)]
    pub fn measure(
        &self,
        provider: String,
        tokens: usize,
        h: usize,
        d: usize,
        e: usize,
        n: usize,
        warmup: usize,
        reps: usize,
    ) -> Promise {
        let ctx = self.ctx.clone();
        let cache = self.inputs.clone();
        future_to_promise(async move {
            let Some(provider) = Provider::parse(&provider) else {
                return Err(JsError::new(&format!("unknown provider `{provider}`")).into());
            };
            let key = (tokens, h, d, e);
            let held = cache.borrow_mut().take();
            let mut inputs = match held {
                Some((k, inputs)) if k == key => inputs,
                other => {
                    drop(other);
                    Inputs::new(&ctx, tokens, h, d, e).map_err(js)?
                }
            };
            let sweep = Sweep {
                tokens,
                h,
                d,
                e,
                lengths: vec![n],
            };
            let dims = sweep.dims(n);
            let repeat = Repeat {
                warmup,
                warmup_ms: 0.0,
                reps,
            };
            let result = bench::measure(&ctx, provider, &dims, &mut inputs, repeat).await;
            *cache.borrow_mut() = Some((key, inputs));
            let m = result.map_err(js)?;
            let flops = provider.forward_flops(&dims, ctx.block_rows() as usize);
            let samples: Array = m.samples_ms.iter().map(|&s| JsValue::from_f64(s)).collect();
            Ok(Obj::new()
                .set("provider", provider.name())
                .num("n", dims.n as f64)
                .num("b", dims.b as f64)
                .num("ms", m.fwd_ms)
                .set("samples", samples)
                .set("timer", m.timer)
                .num("peakMemMb", m.peak_mem_mb)
                .num("gflops", flops / (m.fwd_ms * 1e6))
                .build())
        })
    }
}

async fn check(
    ctx: &Context,
    dims: Dims,
    decay: bool,
    seed: u32,
) -> lightning_wgpu::Result<JsValue> {
    let Dims { b, h, n, d, e } = dims;
    let s = 1.0 / (d.max(1) as f32).sqrt();
    let q = random(b * h * n * d, seed, s);
    let k = random(b * h * n * d, seed.wrapping_add(1), s);
    let v = random(b * h * n * e, seed.wrapping_add(2), 1.0);
    let slopes = if decay { alibi_slopes(h) } else { vec![0.0; h] };
    let decay_slopes = decay.then_some(&slopes[..]);
    let qt = ctx.tensor(&q, &[b, h, n, d])?;
    let kt = ctx.tensor(&k, &[b, h, n, d])?;
    let vt = ctx.tensor(&v, &[b, h, n, e])?;

    let start = now_ms();
    let linear = reference::forward(dims, Layout::Bhnd, &q, &k, &v, &slopes, 1.0, None).o;
    let linear_ms = now_ms() - start;
    let scale = 1.0 / (d.max(1) as f32).sqrt();
    let start = now_ms();
    let softmax = reference::softmax_attention(dims, Layout::Bhnd, &q, &k, &v, &slopes, scale);
    let softmax_ms = now_ms() - start;

    let rows = Array::new();
    for provider in [Provider::Lightning, Provider::Recurrent, Provider::Softmax] {
        let start = now_ms();
        let got = match provider {
            Provider::Lightning | Provider::Recurrent => {
                let opts = ForwardOptions {
                    slopes: decay_slopes,
                    method: if provider == Provider::Lightning {
                        Method::Chunk
                    } else {
                        Method::Recurrent
                    },
                    ..Default::default()
                };
                let out = ctx.forward_async(&qt, &kt, &vt, &opts).await?;
                ctx.read_async(&out.o).await?
            }
            Provider::Softmax => {
                let opts = SoftmaxOptions {
                    scale: Some(scale),
                    alibi: decay_slopes,
                    layout: Layout::Bhnd,
                };
                let o = ctx.softmax_attention_async(&qt, &kt, &vt, &opts).await?;
                ctx.read_async(&o).await?
            }
        };
        let gpu_ms = now_ms() - start;
        let (want, ref_ms) = if provider == Provider::Softmax {
            (&softmax, softmax_ms)
        } else {
            (&linear, linear_ms)
        };
        let rel = reference::relative_error(&got, want);
        rows.push(
            &Obj::new()
                .set("provider", provider.name())
                .num("relErr", rel)
                .set("pass", rel <= TOLERANCE)
                .num("gpuMs", gpu_ms)
                .num("refMs", ref_ms)
                .build(),
        );
    }
    Ok(rows.into())
}
