//! The benchmark registry of lightning-wgpu: every provider and case that
//! the runner (`lightning-wgpu bench`), the criterion benches and the
//! browser package measure is named here, and measured the same way.

use lightning_wgpu::{
    alibi_slopes, BackwardOptions, Context, DType, DecodeOptions, Dims, Error, ForwardOptions,
    Method, Result, SoftmaxOptions, Tensor,
};

/// What computes the attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Lightning Attention, blockwise (the four-pass chunked schedule).
    Lightning,
    /// The token-by-token recurrence: linear too, but sequential in n (the
    /// cumsum-style baseline the paper beats).
    Recurrent,
    /// Causal softmax attention, FlashAttention-style (quadratic in n).
    Softmax,
}

impl Provider {
    /// Every provider, in the order tables list them.
    pub const ALL: [Provider; 3] = [Provider::Lightning, Provider::Recurrent, Provider::Softmax];

    /// The name used on the command line, in tables and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Lightning => "lightning-chunk",
            Provider::Recurrent => "recurrent",
            Provider::Softmax => "softmax",
        }
    }

    /// Parses [`Provider::name`] (also `lightning` for the chunked one).
    pub fn parse(name: &str) -> Option<Provider> {
        match name {
            "lightning" | "lightning-chunk" | "chunk" => Some(Provider::Lightning),
            "recurrent" => Some(Provider::Recurrent),
            "softmax" => Some(Provider::Softmax),
            _ => None,
        }
    }

    /// Useful floating-point operations of one forward pass: what the
    /// algorithm must do, not what a kernel happens to do.
    /// Lightning: `2nB(d+e)` inside blocks (masked products, counted whole as
    /// the official kernels count them) plus `4nde` for the states;
    /// recurrent: `4nde`; softmax: `n^2 (d+e)` (the causal half).
    pub fn forward_flops(self, dims: &Dims, block: usize) -> f64 {
        let Dims { b, h, n, d, e } = *dims;
        let (n, d, e, bh) = (n as f64, d as f64, e as f64, (b * h) as f64);
        bh * match self {
            Provider::Lightning => 2.0 * n * block as f64 * (d + e) + 4.0 * n * d * e,
            Provider::Recurrent => 4.0 * n * d * e,
            Provider::Softmax => n * n * (d + e),
        }
    }
}

/// How to repeat a measurement.
#[derive(Clone, Copy, Debug)]
pub struct Repeat {
    /// Untimed runs first (pipeline compilation, caches).
    pub warmup: usize,
    /// Keep warming up until the untimed runs have taken this long (wall
    /// clock, ms): an idle GPU runs at a low clock and takes a while to come
    /// up, so a fixed number of runs is not always enough.
    pub warmup_ms: f64,
    /// Timed runs; the median is reported.
    pub reps: usize,
}

impl Repeat {
    /// Fewer runs on a software adapter, where one run takes long and the
    /// numbers are not performance numbers anyway.
    pub fn for_adapter(info: &wgpu::AdapterInfo) -> Repeat {
        if info.device_type == wgpu::DeviceType::Cpu {
            Repeat {
                warmup: 1,
                warmup_ms: 0.0,
                reps: 3,
            }
        } else {
            Repeat::default()
        }
    }

    /// Whether a run after `runs` warm-up runs, the first begun at `since`,
    /// is still a warm-up run.
    fn warming(&self, runs: usize, since: web_time::Instant) -> bool {
        runs < self.warmup || since.elapsed().as_secs_f64() * 1e3 < self.warmup_ms
    }
}

impl Default for Repeat {
    fn default() -> Self {
        Repeat {
            warmup: 2,
            warmup_ms: 1000.0,
            reps: 7,
        }
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// Median forward time, milliseconds.
    pub fwd_ms: f64,
    /// Every timed run, milliseconds.
    pub samples_ms: Vec<f64>,
    /// Peak device memory held by the context during the runs (inputs
    /// included), MiB.
    pub peak_mem_mb: f64,
    /// `gpu-timestamps` or `wall-clock`.
    pub timer: &'static str,
    /// With GPU timestamps: the median time of each kernel over the timed
    /// runs (summed over its dispatches in one run), milliseconds, in the
    /// order the op runs them. Empty with the wall clock.
    pub passes_ms: Vec<(&'static str, f64)>,
}

/// Inputs of a sweep: q, k and v for `tokens = b * n` tokens of `h` heads
/// (k and v of `kv_heads`, grouped heads, where that is fewer), reshaped for
/// each case without a copy (every case of a sweep has the same `b * n`).
/// Values are deterministic, O(1/sqrt(d)).
pub struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tokens: usize,
    kv_heads: usize,
}

/// Whether a tensor of `shape` stored as `dtype` fits the device, checked
/// before the host allocates its data.
pub fn fits(ctx: &Context, arg: &'static str, shape: &[usize], dtype: DType) -> Result<()> {
    let limit = ctx.limits().max_buffer_size;
    fits_within(arg, shape, dtype, (limit, "max_buffer_size"))
}

/// Whether a tensor of `shape` stored as `dtype` takes at most `limit`
/// bytes (`which` names the limit in the error).
fn fits_within(
    arg: &'static str,
    shape: &[usize],
    dtype: DType,
    (limit, which): (u64, &'static str),
) -> Result<()> {
    let bytes = shape
        .iter()
        .try_fold(dtype.size(), |acc, &x| acc.checked_mul(x))
        .and_then(|b| u64::try_from(b).ok());
    match bytes {
        Some(b) if b <= limit => Ok(()),
        _ => Err(Error::TooLarge {
            arg,
            bytes: bytes.unwrap_or(u64::MAX),
            limit,
            which,
        }),
    }
}

/// Cheap deterministic values in [-s, s).
fn pattern(len: usize, seed: u32, s: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * s
        })
        .collect()
}

impl Inputs {
    /// Uploads inputs for `tokens` tokens of `h` heads, widths `d` and `e`.
    pub fn new(ctx: &Context, tokens: usize, h: usize, d: usize, e: usize) -> Result<Inputs> {
        Self::with_dtype(ctx, tokens, h, d, e, DType::F32)
    }

    /// Inputs stored as `dtype`.
    pub fn with_dtype(
        ctx: &Context,
        tokens: usize,
        h: usize,
        d: usize,
        e: usize,
        dtype: DType,
    ) -> Result<Inputs> {
        Self::grouped(ctx, tokens, (h, h), d, e, dtype)
    }

    /// Inputs with grouped heads: q of `heads.0` heads, k and v of `heads.1`
    /// (a divisor of it; the library refuses others when a case runs).
    pub fn grouped(
        ctx: &Context,
        tokens: usize,
        (h, kv): (usize, usize),
        d: usize,
        e: usize,
        dtype: DType,
    ) -> Result<Inputs> {
        let s = 1.0 / (d as f32).sqrt();
        // Sizes are checked before the host allocates anything for them.
        fits(ctx, "q", &[tokens, h, d], dtype)?;
        fits(ctx, "v", &[tokens, kv, e], dtype)?;
        let q = ctx.tensor_as(&pattern(tokens * h * d, 1, s), &[1, h, tokens, d], dtype)?;
        let k = ctx.tensor_as(&pattern(tokens * kv * d, 2, s), &[1, kv, tokens, d], dtype)?;
        let v = ctx.tensor_as(
            &pattern(tokens * kv * e, 3, 1.0),
            &[1, kv, tokens, e],
            dtype,
        )?;
        Ok(Inputs {
            q,
            k,
            v,
            tokens,
            kv_heads: kv,
        })
    }

    /// Storage type of the inputs (and so of the outputs).
    pub fn dtype(&self) -> DType {
        self.q.dtype()
    }

    /// Tokens these inputs hold.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    fn view(&mut self, dims: &Dims) -> Result<()> {
        let (qs, vs) = (self.q.shape(), self.v.shape());
        let widths = (qs[3], vs[3]) != (dims.d, dims.e);
        if dims.b * dims.n != self.tokens || qs[1] != dims.h || widths {
            return Err(Error::InvalidValue {
                arg: "dims",
                value: format!("{dims:?}"),
                reason: "a case must have the tokens (b * n), heads and widths of its inputs",
            });
        }
        let kv = self.kv_heads;
        self.q.reshape(&[dims.b, dims.h, dims.n, dims.d])?;
        self.k.reshape(&[dims.b, kv, dims.n, dims.d])?;
        self.v.reshape(&[dims.b, kv, dims.n, dims.e])
    }
}

async fn run_once(
    ctx: &Context,
    provider: Provider,
    inputs: &Inputs,
    slopes: &[f32],
) -> Result<Tensor> {
    let (q, k, v) = (&inputs.q, &inputs.k, &inputs.v);
    match provider {
        Provider::Lightning | Provider::Recurrent => {
            let method = if provider == Provider::Lightning {
                Method::Chunk
            } else {
                Method::Recurrent
            };
            let opts = ForwardOptions {
                slopes: Some(slopes),
                method,
                ..Default::default()
            };
            Ok(ctx.forward_async(q, k, v, &opts).await?.o)
        }
        Provider::Softmax => {
            ctx.softmax_attention_async(q, k, v, &SoftmaxOptions::default())
                .await
        }
    }
}

/// Waits until the device is idle (native), or until `t` can be read.
async fn settle(ctx: &Context, t: &Tensor) -> Result<()> {
    // Reading one element back waits for everything submitted before.
    let probe = ctx.tensor(&[0.0], &[1])?;
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(t.buffer(), 0, probe.buffer(), 0, 4);
    ctx.queue().submit([encoder.finish()]);
    ctx.read_async(&probe).await.map(|_| ())
}

/// Measures `provider` on `dims` (decay from [`alibi_slopes`]): warm-up, then
/// the median of timed runs, by timestamp queries where the adapter has them
/// and by the wall clock around a device wait otherwise.
pub async fn measure(
    ctx: &Context,
    provider: Provider,
    dims: &Dims,
    inputs: &mut Inputs,
    repeat: Repeat,
) -> Result<Measurement> {
    inputs.view(dims)?;
    let slopes = alibi_slopes(inputs.kv_heads);
    ctx.reset_peak_memory();
    let inputs = &*inputs;
    time_runs(ctx, repeat, async || {
        run_once(ctx, provider, inputs, &slopes).await
    })
    .await
}

/// The median of `samples` (ms) and the peak memory since the last reset.
fn summarize(
    ctx: &Context,
    samples: Vec<f64>,
    timer: &'static str,
    passes_ms: Vec<(&'static str, f64)>,
) -> Measurement {
    Measurement {
        fwd_ms: median(samples.clone()),
        samples_ms: samples,
        peak_mem_mb: ctx.peak_memory() as f64 / (1 << 20) as f64,
        timer,
        passes_ms,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Most compute passes one measured op runs while timed (each kernel of
/// each window of the planned dispatches in a pass of its own).
const PASSES_PER_OP: usize = 256;

/// Runs `op` `repeat.warmup` times untimed, then `repeat.reps` times timed:
/// by timestamp queries over the op's compute passes where the adapter has
/// them, else by the wall clock around a device wait.
async fn time_runs(
    ctx: &Context,
    repeat: Repeat,
    mut op: impl AsyncFnMut() -> Result<Tensor>,
) -> Result<Measurement> {
    let start = web_time::Instant::now();
    let mut runs = 0;
    while repeat.warming(runs, start) {
        let o = op().await?;
        settle(ctx, &o).await?;
        runs += 1;
    }
    let reps = repeat.reps.max(1);
    let mut samples = Vec::with_capacity(reps);
    let mut passes_ms = Vec::new();
    let timer = if ctx.can_time() {
        // An op runs one pass or a few (half-precision outputs are packed by
        // a second one): each sample is the sum of one op's passes.
        ctx.start_timing((reps * PASSES_PER_OP) as u32)?;
        let mut last = None;
        let mut ends = Vec::with_capacity(reps);
        for _ in 0..reps {
            last = Some(op().await?);
            ends.push(ctx.timed_passes());
        }
        if let Some(o) = &last {
            settle(ctx, o).await?;
        }
        let passes = ctx.finish_timing_by_pass_async().await?;
        let mut start = 0;
        let mut per_kernel: Vec<(&'static str, Vec<f64>)> = Vec::new();
        for end in ends {
            let run = &passes[start..end];
            samples.push(run.iter().map(|(_, s)| s).sum::<f64>() * 1e3);
            for (label, _) in run {
                if !per_kernel.iter().any(|(l, _)| l == label) {
                    per_kernel.push((label, Vec::new()));
                }
            }
            for (label, times) in &mut per_kernel {
                let ms = run
                    .iter()
                    .filter(|(l, _)| l == label)
                    .map(|(_, s)| s)
                    .sum::<f64>();
                times.push(ms * 1e3);
            }
            start = end;
        }
        passes_ms = per_kernel
            .into_iter()
            .map(|(label, times)| (label, median(times)))
            .collect();
        "gpu-timestamps"
    } else {
        for _ in 0..reps {
            let start = web_time::Instant::now();
            let o = op().await?;
            settle(ctx, &o).await?;
            samples.push(start.elapsed().as_secs_f64() * 1e3);
        }
        "wall-clock"
    };
    Ok(summarize(ctx, samples, timer, passes_ms))
}

/// Measures a Lightning forward pass followed by its backward (output
/// gradient a fixed pattern), by the wall clock around a device wait, as a
/// training step sees it.
pub async fn measure_forward_backward(
    ctx: &Context,
    dims: &Dims,
    inputs: &mut Inputs,
    repeat: Repeat,
) -> Result<Measurement> {
    inputs.view(dims)?;
    let slopes = alibi_slopes(inputs.kv_heads);
    // dO is shaped like o: v's width, q's heads.
    let o_shape = [dims.b, dims.h, dims.n, dims.e];
    let d_o = ctx.tensor_as(
        &pattern(o_shape.iter().product(), 8, 1.0),
        &o_shape,
        inputs.dtype(),
    )?;
    ctx.reset_peak_memory();
    let fwd = ForwardOptions {
        slopes: Some(&slopes),
        ..Default::default()
    };
    let (q, k, v) = (&inputs.q, &inputs.k, &inputs.v);
    wall_runs(ctx, repeat, async || {
        let o = ctx.forward_async(q, k, v, &fwd).await?.o;
        let g = ctx
            .backward_async(
                q,
                k,
                v,
                &d_o,
                &BackwardOptions {
                    forward: fwd,
                    d_final_state: None,
                },
            )
            .await?;
        drop(o);
        Ok(g.dq)
    })
    .await
}

/// Warm-up, then the median of timed runs of `op` by the wall clock around
/// a wait for the tensor it returns: for ops whose copies or host steps GPU
/// timestamps would not see.
async fn wall_runs(
    ctx: &Context,
    repeat: Repeat,
    mut op: impl AsyncFnMut() -> Result<Tensor>,
) -> Result<Measurement> {
    let mut samples = Vec::new();
    let warm = web_time::Instant::now();
    let mut warmups = 0;
    while samples.len() < repeat.reps.max(1) {
        let start = web_time::Instant::now();
        let last = op().await?;
        settle(ctx, &last).await?;
        if repeat.warming(warmups, warm) {
            warmups += 1;
        } else {
            samples.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(summarize(ctx, samples, "wall-clock", Vec::new()))
}

/// What keeping state checkpoints costs: the chunked forward plain and with
/// a checkpoint every `every` positions ([`Context::forward_with_checkpoints`]),
/// alternating, each by the wall clock around a device wait (the checkpoint
/// copies are not compute passes, which GPU timestamps would miss). Returns
/// the two medians, ms: (plain, with checkpoints).
#[cfg(not(target_arch = "wasm32"))]
pub async fn measure_checkpoints(
    ctx: &Context,
    dims: &Dims,
    inputs: &mut Inputs,
    every: usize,
    repeat: Repeat,
) -> Result<(f64, f64)> {
    inputs.view(dims)?;
    let slopes = alibi_slopes(inputs.kv_heads);
    let opts = ForwardOptions {
        slopes: Some(&slopes),
        ..Default::default()
    };
    let (q, k, v) = (&inputs.q, &inputs.k, &inputs.v);
    let (mut plain, mut kept) = (Vec::new(), Vec::new());
    let warm = web_time::Instant::now();
    let mut warmups = 0;
    while plain.len() < repeat.reps.max(1) {
        let start = web_time::Instant::now();
        let o = ctx.forward_async(q, k, v, &opts).await?.o;
        settle(ctx, &o).await?;
        let plain_ms = start.elapsed().as_secs_f64() * 1e3;
        drop(o);
        let start = web_time::Instant::now();
        let (out, checkpoints) = ctx
            .forward_with_checkpoints_async(q, k, v, &opts, every)
            .await?;
        settle(ctx, &checkpoints).await?;
        let kept_ms = start.elapsed().as_secs_f64() * 1e3;
        drop((out, checkpoints));
        if repeat.warming(warmups, warm) {
            warmups += 1;
        } else {
            plain.push(plain_ms);
            kept.push(kept_ms);
        }
    }
    Ok((median(plain), median(kept)))
}

/// The most buffers of the device's largest size a decode benchmark's cache
/// may take.
const CACHE_BUFFERS: u64 = 4;

/// Measures one decoding step ([`Context::decode_step`]) for `batch` requests
/// of `h` heads against a cache of `batch` states (`d x e`, f32; a
/// [`lightning_wgpu::StateCache`], over several buffers where one cannot
/// hold them): warm-up,
/// then the median of timed steps. Each step reads and writes every state
/// once, so `2 * batch * h * d * e * 4` bytes over the step time is the state
/// traffic rate.
pub async fn measure_decode(
    ctx: &Context,
    batch: usize,
    h: usize,
    d: usize,
    e: usize,
    repeat: Repeat,
) -> Result<Measurement> {
    let slopes = alibi_slopes(h);
    let opts = DecodeOptions {
        slopes: Some(&slopes),
        scale: 1.0 / (d as f32).sqrt(),
    };
    ctx.reset_peak_memory();
    fits(ctx, "q", &[batch, h, d], DType::F32)?;
    // The cache may span buffers, but not the host or the GPU: at most
    // CACHE_BUFFERS of the largest buffer (16 GiB on the H200).
    let cap = ctx.limits().max_buffer_size.saturating_mul(CACHE_BUFFERS);
    let which = "4 x max_buffer_size, the benchmark's cap";
    fits_within("cache", &[batch, h, d, e], DType::F32, (cap, which))?;
    let s = 1.0 / (d as f32).sqrt();
    let q = ctx.tensor(&pattern(batch * h * d, 4, s), &[batch, h, d])?;
    let k = ctx.tensor(&pattern(batch * h * d, 5, s), &[batch, h, d])?;
    let v = ctx.tensor(&pattern(batch * h * e, 6, 1.0), &[batch, h, e])?;
    let mut cache = ctx.state_cache_async(batch, h, d, e).await?;
    // Filled a run of slots at a time: the whole cache may pass one buffer.
    let run = ((64 << 20) / (h * d * e * 4)).max(1);
    for first in (0..batch).step_by(run) {
        let count = run.min(batch - first);
        let states = ctx.tensor(
            &pattern(count * h * d * e, 7 + first as u32, 0.1),
            &[count, h, d, e],
        )?;
        ctx.write_slots_async(&mut cache, first, &states).await?;
    }
    let slots: Vec<i32> = (0..batch as i32).collect();
    let cache = &mut cache;
    time_runs(ctx, repeat, async || {
        ctx.decode_step_async(&q, &k, &v, cache, &slots, &opts)
            .await
    })
    .await
}

/// Measures a multi-token decoding step ([`Context::decode_draft`] with
/// `tokens` tokens per request, then [`Context::commit_draft`] of all of
/// them) for `batch` requests, by the wall clock around a device wait: the
/// copies of the states are part of its cost, and GPU timestamps see only
/// the passes.
pub async fn measure_decode_draft(
    ctx: &Context,
    batch: usize,
    tokens: usize,
    h: usize,
    d: usize,
    e: usize,
    repeat: Repeat,
) -> Result<Measurement> {
    let slopes = alibi_slopes(h);
    let opts = DecodeOptions {
        slopes: Some(&slopes),
        scale: 1.0 / (d as f32).sqrt(),
    };
    ctx.reset_peak_memory();
    fits(ctx, "q", &[tokens, batch, h, d], DType::F32)?;
    fits(ctx, "draft states", &[tokens, batch, h, d, e], DType::F32)?;
    let s = 1.0 / (d as f32).sqrt();
    let q = ctx.tensor(
        &pattern(tokens * batch * h * d, 4, s),
        &[tokens, batch, h, d],
    )?;
    let k = ctx.tensor(
        &pattern(tokens * batch * h * d, 5, s),
        &[tokens, batch, h, d],
    )?;
    let v = ctx.tensor(
        &pattern(tokens * batch * h * e, 6, 1.0),
        &[tokens, batch, h, e],
    )?;
    let mut cache = ctx.tensor(&pattern(batch * h * d * e, 7, 0.1), &[batch, h, d, e])?;
    let slots: Vec<i32> = (0..batch as i32).collect();
    let counts = vec![tokens; batch];
    let cache = &mut cache;
    wall_runs(ctx, repeat, async || {
        let (o, draft) = ctx
            .decode_draft_async(&q, &k, &v, cache, &slots, &counts, &opts)
            .await?;
        ctx.commit_draft_async(cache, &draft, &counts).await?;
        Ok(o)
    })
    .await
}

/// A sweep of sequence lengths at a fixed number of tokens `b * n`.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub tokens: usize,
    pub h: usize,
    pub d: usize,
    pub e: usize,
    pub lengths: Vec<usize>,
}

impl Sweep {
    /// The default sweep for an adapter: on a CPU (software) adapter a small
    /// one that ends in about a minute; on a GPU 1K to 128K tokens at
    /// `b * n = 128K`, 32 heads of width 128 (the paper's figure, and the
    /// anchors' shape).
    pub fn for_adapter(info: &wgpu::AdapterInfo) -> Sweep {
        if info.device_type == wgpu::DeviceType::Cpu {
            Sweep {
                tokens: 2048,
                h: 4,
                d: 64,
                e: 64,
                lengths: vec![128, 256, 512, 1024, 2048],
            }
        } else {
            let lengths = (10..=17).map(|p| 1usize << p).collect();
            Sweep {
                tokens: 1 << 17,
                h: 32,
                d: 128,
                e: 128,
                lengths,
            }
        }
    }

    /// The case of length `n`.
    pub fn dims(&self, n: usize) -> Dims {
        Dims {
            b: (self.tokens / n).max(1),
            h: self.h,
            n,
            d: self.d,
            e: self.e,
        }
    }
}

/// Fixed shapes the criterion benches time, per provider: small enough for a
/// software adapter.
pub const CRITERION_CASES: [(Provider, Dims); 4] = [
    (
        Provider::Lightning,
        Dims {
            b: 1,
            h: 4,
            n: 1024,
            d: 64,
            e: 64,
        },
    ),
    (
        Provider::Lightning,
        Dims {
            b: 2,
            h: 4,
            n: 512,
            d: 128,
            e: 96,
        },
    ),
    (
        Provider::Recurrent,
        Dims {
            b: 1,
            h: 4,
            n: 1024,
            d: 64,
            e: 64,
        },
    ),
    (
        Provider::Softmax,
        Dims {
            b: 1,
            h: 4,
            n: 1024,
            d: 64,
            e: 64,
        },
    ),
];
