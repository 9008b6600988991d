//! `lightning-wgpu bench`: the paper's speed-versus-length figure on the
//! adapter at hand. Sequence lengths are swept at a fixed number of tokens
//! `b * n`, so a provider whose cost is linear in n shows as a flat line of
//! tokens per second, and softmax attention falls away.
//!
//! Every case and provider comes from `lightning_wgpu_bench`, the one place
//! that names them. Results go to a table on stdout, and optionally to JSON
//! (`--json`) and an SVG plot (`--plot`); `--anchors` merges the CUDA
//! anchors measured by `bench_anchors.py` into both.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use lightning_wgpu::{Context, ContextOptions, DType, Dims};
use lightning_wgpu_bench::{
    measure, measure_checkpoints, measure_decode, measure_decode_draft, measure_forward_backward,
    Inputs, Provider, Repeat, Sweep,
};
use serde::{Deserialize, Serialize};

/// Arguments of `bench`. Every size defaults to the adapter's own sweep: a
/// small one on a software adapter, 1K to 128K tokens on a GPU.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Sequence lengths, comma separated (default: the adapter's sweep).
    #[arg(long, value_delimiter = ',')]
    pub lengths: Vec<usize>,
    /// Total tokens b * n of every case (b = tokens / n).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Fixed batch size instead of a fixed number of tokens.
    #[arg(long, conflicts_with = "tokens")]
    pub b: Option<usize>,
    /// Heads (of q).
    #[arg(long)]
    pub h: Option<usize>,
    /// Heads of k and v, a divisor of --h: grouped heads (GQA); default --h.
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Width of q and k.
    #[arg(long)]
    pub d: Option<usize>,
    /// Width of v and the output (default: d).
    #[arg(long)]
    pub e: Option<usize>,
    /// Providers, comma separated: lightning-chunk, recurrent, softmax.
    #[arg(long, value_delimiter = ',')]
    pub providers: Vec<String>,
    /// Storage types of q, k, v and o, comma separated: f32, f16, bf16.
    #[arg(long, value_delimiter = ',', default_value = DTYPE)]
    pub dtype: Vec<String>,
    /// Untimed runs before timing (default: 2 on a GPU, 1 on a CPU adapter).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Keep warming up until the untimed runs took this long, ms (default:
    /// 1000 on a GPU, whose clock takes a while to come up; 0 on a CPU adapter).
    #[arg(long, allow_hyphen_values = true)]
    pub warmup_ms: Option<f64>,
    /// Timed runs; the median is reported (default: 7 on a GPU, 3 on a CPU adapter).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Skip a provider's longer lengths once one case is predicted to take
    /// longer than this (milliseconds, all runs of the case together).
    #[arg(long, default_value_t = MAX_MS, allow_hyphen_values = true)]
    pub max_ms: f64,
    /// Also time forward + backward of the lightning provider (wall clock:
    /// the backward moves its small states through the host).
    #[arg(long)]
    pub backward: bool,
    /// Measure decoding steps instead of the length sweep: one new token for
    /// each of a batch of requests against their cached states.
    #[arg(long)]
    pub decode: bool,
    /// Batch sizes of --decode, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 64, 256])]
    pub decode_batches: Vec<usize>,
    /// Tokens per request of --decode, comma separated: 1 is a decode step;
    /// more is a draft (speculative verify) and its commit, wall clock.
    #[arg(long, value_delimiter = ',', default_values_t = [1])]
    pub decode_tokens: Vec<usize>,
    /// Also time the chunked forward keeping a state checkpoint every C
    /// positions against the plain one (both wall clock; a multiple of the
    /// block rows).
    #[arg(long, value_name = "C", conflicts_with = "decode")]
    pub checkpoint_every: Option<usize>,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw time and tokens/s against length (SVG, log scales).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Draw --plot from a results file written by --json, measuring nothing.
    #[arg(long, value_name = "RESULTS.json", requires = "plot")]
    pub replot: Option<PathBuf>,
    /// Merge anchors measured by shared/tools/bench_anchors.py (its JSON).
    #[arg(long, value_name = "ANCHORS.json")]
    pub anchors: Option<PathBuf>,
    /// Also print the GPU time of each kernel (always in --json's rows).
    #[arg(long)]
    pub passes: bool,
}

const DTYPE: &str = "f32";
const MAX_MS: f64 = 20_000.0;

impl Default for Args {
    /// The command line's defaults, for running the sweep without a subcommand.
    fn default() -> Self {
        Args {
            lengths: Vec::new(),
            tokens: None,
            b: None,
            h: None,
            kv_heads: None,
            d: None,
            e: None,
            providers: Vec::new(),
            dtype: vec![DTYPE.into()],
            warmup: None,
            warmup_ms: None,
            reps: None,
            max_ms: MAX_MS,
            backward: false,
            decode: false,
            decode_batches: vec![1, 8, 64, 256],
            decode_tokens: vec![1],
            checkpoint_every: None,
            json: None,
            plot: None,
            replot: None,
            anchors: None,
            passes: false,
        }
    }
}

/// One line of results, in the JSON schema of docs/BENCHMARKS.md.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub provider: String,
    pub dtype: String,
    pub b: usize,
    pub h: usize,
    /// Heads of k and v where fewer than q's (grouped heads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    pub n: usize,
    pub d: usize,
    pub e: usize,
    pub fwd_ms: Option<f64>,
    pub fwd_bwd_ms: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub tflops: Option<f64>,
    pub peak_mem_mb: Option<f64>,
    /// With `--checkpoint-every`: the plain forward and the forward keeping
    /// checkpoints, both by the wall clock, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints_wall_ms: Option<f64>,
    /// Decode rows: state bytes read and written per second, GB/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_gb_per_s: Option<f64>,
    /// Where the row was measured: `lightning-wgpu` or `bench_anchors.py`.
    pub source: String,
    /// Median GPU time of each kernel of the op, ms, in the order it runs
    /// them (with GPU timestamps only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passes_ms: Vec<PassTime>,
}

/// The GPU time of one kernel within a measured op.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PassTime {
    pub pass: String,
    pub ms: f64,
}

fn pass_times(passes: &[(&'static str, f64)]) -> Vec<PassTime> {
    passes
        .iter()
        .map(|&(pass, ms)| PassTime {
            pass: pass.into(),
            ms,
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct Adapter {
    name: String,
    backend: String,
    driver: String,
    driver_info: String,
    /// f16 rows ran on cooperative matrices (tensor cores).
    cooperative_matrix: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    adapter: Adapter,
    date: String,
    command: String,
    timer: String,
    rows: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anchors: Option<serde_json::Value>,
}

/// The anchors file: rows as bench_anchors.py writes them.
#[derive(Debug, Deserialize)]
struct AnchorRow {
    dtype: String,
    b: usize,
    h: usize,
    n: usize,
    d: usize,
    provider: String,
    fwd_ms: Option<f64>,
    fwd_bwd_ms: Option<f64>,
    #[serde(rename = "peak_mem_MB")]
    peak_mem_mb: Option<f64>,
}

/// The anchors' provider names in this project's vocabulary.
fn anchor_name(p: &str) -> String {
    match p {
        "la2" => "official-la2".into(),
        "la2_nodecay" => "official-la2-nodecay".into(),
        "fla_chunk" => "fla-chunk".into(),
        "sdpa_causal" => "torch-sdpa".into(),
        other => other.replace('_', "-"),
    }
}

fn read_anchors(path: &Path) -> Result<(Vec<Row>, serde_json::Value)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read anchors file {}", path.display()))?;
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("anchors file {} is not JSON", path.display()))?;
    let rows: Vec<AnchorRow> =
        serde_json::from_value(value.get("rows").cloned().unwrap_or_default())
            .with_context(|| format!("anchors file {} has no valid `rows`", path.display()))?;
    if let Some(obj) = value.as_object_mut() {
        obj.remove("rows");
    }
    let rows = rows
        .into_iter()
        .map(|a| {
            let tokens = (a.b * a.n) as f64;
            Row {
                provider: anchor_name(&a.provider),
                dtype: if a.dtype == "fp32" {
                    "f32".into()
                } else {
                    a.dtype
                },
                b: a.b,
                h: a.h,
                kv_heads: None,
                n: a.n,
                d: a.d,
                e: a.d,
                tokens_per_s: a.fwd_ms.map(|ms| tokens / (ms * 1e-3)),
                tflops: None,
                fwd_ms: a.fwd_ms,
                fwd_bwd_ms: a.fwd_bwd_ms,
                peak_mem_mb: a.peak_mem_mb,
                state_gb_per_s: None,
                wall_ms: None,
                checkpoints_wall_ms: None,
                source: "bench_anchors.py".into(),
                passes_ms: Vec::new(),
            }
        })
        .collect();
    Ok((rows, value))
}

fn providers(args: &Args) -> Result<Vec<Provider>> {
    // Softmax attention takes one head each: grouped runs leave it out.
    let grouped = args.kv_heads.is_some_and(|kv| Some(kv) != args.h);
    if args.providers.is_empty() {
        return Ok(Provider::ALL
            .into_iter()
            .filter(|&p| !(grouped && p == Provider::Softmax))
            .collect());
    }
    let chosen: Vec<Provider> = args
        .providers
        .iter()
        .map(|p| {
            Provider::parse(p.trim()).with_context(|| {
                let known: Vec<&str> = Provider::ALL.iter().map(|p| p.name()).collect();
                format!("unknown provider `{p}` (known: {})", known.join(", "))
            })
        })
        .collect::<Result<_>>()?;
    if grouped && chosen.contains(&Provider::Softmax) {
        bail!("--kv-heads: the softmax provider takes q, k and v with the same heads");
    }
    Ok(chosen)
}

fn sweep(args: &Args, ctx: &Context) -> Result<(Sweep, Option<usize>)> {
    let mut sweep = Sweep::for_adapter(ctx.adapter_info());
    if !args.lengths.is_empty() {
        sweep.lengths = args.lengths.clone();
    }
    if let Some(t) = args.tokens {
        sweep.tokens = t;
    }
    if let Some(h) = args.h {
        sweep.h = h;
    }
    if let Some(d) = args.d {
        sweep.d = d;
        sweep.e = d;
    }
    if let Some(e) = args.e {
        sweep.e = e;
    }
    if sweep.lengths.contains(&0)
        || sweep.h == 0
        || sweep.d == 0
        || sweep.e == 0
        || args.b == Some(0)
    {
        bail!("lengths, b, h, d and e must be at least 1");
    }
    if args.b.is_none() {
        if let Some(&n) = sweep
            .lengths
            .iter()
            .find(|&&n| !sweep.tokens.is_multiple_of(n) || n > sweep.tokens)
        {
            bail!(
                "length {n} does not divide the {} tokens of the sweep (--tokens, or fix --b)",
                sweep.tokens
            );
        }
    }
    Ok((sweep, args.b))
}

/// Most runs of one case, untimed or timed.
const MAX_RUNS: usize = 10_000;
/// Longest warm-up, ms (an hour).
const MAX_WARMUP_MS: f64 = 3.6e6;

/// Refuses counts and durations no run could honour, before anything runs.
fn check_args(args: &Args) -> Result<()> {
    for (option, value) in [("reps", args.reps), ("warmup", args.warmup)] {
        if let Some(x) = value {
            if x > MAX_RUNS || (option == "reps" && x == 0) {
                bail!(
                    "--{option} {x}: must be from {} to {MAX_RUNS}",
                    usize::from(option == "reps")
                );
            }
        }
    }
    if let Some(ms) = args.warmup_ms {
        if !(ms.is_finite() && (0.0..=MAX_WARMUP_MS).contains(&ms)) {
            bail!("--warmup-ms {ms}: must be a duration from 0 to {MAX_WARMUP_MS} ms");
        }
    }
    if !(args.max_ms.is_finite() && args.max_ms >= 0.0) {
        bail!("--max-ms {}: must be a finite duration >= 0", args.max_ms);
    }
    let below_2_32 = |x: usize| u32::try_from(x).is_ok();
    for (option, x) in [
        ("tokens", args.tokens),
        ("b", args.b),
        ("h", args.h),
        ("d", args.d),
        ("e", args.e),
    ] {
        if let Some(x) = x {
            if !below_2_32(x) {
                bail!("--{option} {x}: must be below 2^32");
            }
        }
    }
    if let Some(n) = args.lengths.iter().find(|&&n| !below_2_32(n)) {
        bail!("--lengths {n}: must be below 2^32");
    }
    if let (Some(b), Some(&n)) = (args.b, args.lengths.iter().max()) {
        if b.checked_mul(n).is_none_or(|t| !below_2_32(t)) {
            bail!("--b {b} with --lengths {n}: b * n must be below 2^32");
        }
    }
    if let Some(b) = args
        .decode_batches
        .iter()
        .find(|&&b| b == 0 || !below_2_32(b))
    {
        bail!("--decode-batches {b}: must be from 1 to 2^32 - 1");
    }
    if let Some(t) = args.decode_tokens.iter().find(|&&t| t == 0 || t > 1024) {
        bail!("--decode-tokens {t}: must be from 1 to 1024");
    }
    if args.checkpoint_every == Some(0) {
        bail!("--checkpoint-every 0: must be a positive multiple of the block rows");
    }
    Ok(())
}

/// Runs the sweep and prints the table; writes JSON and SVG when asked.
pub fn run(args: &Args, options: ContextOptions) -> Result<ExitCode> {
    check_args(args)?;
    let dtypes: Vec<DType> = args
        .dtype
        .iter()
        .map(|d| d.trim().parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    if let (Some(from), Some(plot)) = (&args.replot, &args.plot) {
        let text = std::fs::read_to_string(from)
            .with_context(|| format!("cannot read {}", from.display()))?;
        let report: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", from.display()))?;
        let rows: Vec<Row> = serde_json::from_value(report["rows"].clone())
            .with_context(|| format!("{} has no valid `rows`", from.display()))?;
        let adapter = report["adapter"]["name"]
            .as_str()
            .unwrap_or("unknown adapter");
        crate::plot::draw(plot, adapter, &rows)?;
        println!("wrote {}", plot.display());
        return Ok(ExitCode::SUCCESS);
    }
    let providers = providers(args)?;
    let anchors = args.anchors.as_deref().map(read_anchors).transpose()?;
    let ctx = Context::with_options(options)?;
    let (sweep, fixed_b) = sweep(args, &ctx)?;
    let info = ctx.adapter_info().clone();
    let default = Repeat::for_adapter(&info);
    let repeat = Repeat {
        warmup: args.warmup.unwrap_or(default.warmup),
        warmup_ms: args.warmup_ms.unwrap_or(default.warmup_ms),
        reps: args.reps.unwrap_or(default.reps),
    };
    println!(
        "bench on {} ({:?}, {} {}{}): h={} d={} e={}, {}, {} warm-up runs (and {} ms at least) + {} timed runs, median",
        info.name,
        info.backend,
        info.driver,
        info.driver_info,
        if ctx.cooperative_matrix() { ", f16/bf16 on cooperative matrices" } else { "" },
        sweep.h,
        sweep.d,
        sweep.e,
        match fixed_b {
            Some(b) => format!("b={b}"),
            None => format!("b*n={}", sweep.tokens),
        },
        repeat.warmup,
        repeat.warmup_ms,
        repeat.reps
    );
    if args.decode {
        let rows = decode_rows(args, &ctx, &sweep, repeat)?;
        return finish(args, &ctx, rows, None, "decode");
    }
    let cases: Vec<Dims> = sweep
        .lengths
        .iter()
        .map(|&n| match fixed_b {
            Some(b) => Dims { b, ..sweep.dims(n) },
            None => sweep.dims(n),
        })
        .collect();
    let progress =
        indicatif::ProgressBar::new((dtypes.len() * cases.len() * providers.len()) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    let mut timer = "";
    // Storage types outermost: inputs are made once per type and reused by
    // every length of the same b * n.
    for &dtype in &dtypes {
        let mut inputs: Option<Inputs> = None;
        let mut predicted: Vec<Option<f64>> = vec![None; providers.len()];
        for dims in &cases {
            let tokens = dims.b * dims.n;
            if inputs.as_ref().is_none_or(|i| i.tokens() != tokens) {
                // Free the old inputs, and what the pool kept of the last
                // cases, so each peak counts only this case's buffers.
                drop(inputs.take());
                ctx.trim_pool();
                let heads = (dims.h, args.kv_heads.unwrap_or(dims.h));
                inputs = Some(Inputs::grouped(&ctx, tokens, heads, dims.d, dims.e, dtype)?);
            }
            let Some(inputs) = inputs.as_mut() else {
                continue;
            };
            for (p, provider) in providers.iter().enumerate() {
                progress.set_message(format!("{} {dtype} n={}", provider.name(), dims.n));
                let runs = (repeat.warmup + repeat.reps) as f64;
                if predicted[p].is_some_and(|ms| ms * runs > args.max_ms) {
                    progress.inc(1);
                    continue;
                }
                let m = pollster::block_on(measure(&ctx, *provider, dims, inputs, repeat))
                    .with_context(|| format!("{} {dtype} at n = {}", provider.name(), dims.n))?;
                timer = m.timer;
                // Work per case at fixed b*n: linear providers stay put, softmax grows with n.
                let growth = match provider {
                    Provider::Softmax => 2.0,
                    _ => 1.0,
                };
                predicted[p] = Some(m.fwd_ms * growth * if fixed_b.is_some() { 2.0 } else { 1.0 });
                let fwd_bwd_ms = if args.backward && *provider == Provider::Lightning {
                    let m =
                        pollster::block_on(measure_forward_backward(&ctx, dims, inputs, repeat))
                            .with_context(|| {
                                format!("forward + backward {dtype} at n = {}", dims.n)
                            })?;
                    Some(m.fwd_ms)
                } else {
                    None
                };
                let (wall_ms, checkpoints_wall_ms) = match args.checkpoint_every {
                    Some(every) if *provider == Provider::Lightning && every <= dims.n => {
                        let (plain, kept) = pollster::block_on(measure_checkpoints(
                            &ctx, dims, inputs, every, repeat,
                        ))
                        .with_context(|| {
                            format!("checkpoints every {every}, {dtype} at n = {}", dims.n)
                        })?;
                        (Some(plain), Some(kept))
                    }
                    _ => (None, None),
                };
                let flops = provider.forward_flops(dims, ctx.block_rows() as usize);
                rows.push(Row {
                    provider: provider.name().into(),
                    dtype: dtype.to_string(),
                    b: dims.b,
                    h: dims.h,
                    kv_heads: args.kv_heads.filter(|&kv| kv != dims.h),
                    n: dims.n,
                    d: dims.d,
                    e: dims.e,
                    fwd_ms: Some(m.fwd_ms),
                    fwd_bwd_ms,
                    tokens_per_s: Some(tokens as f64 / (m.fwd_ms * 1e-3)),
                    tflops: Some(flops / (m.fwd_ms * 1e-3) / 1e12),
                    peak_mem_mb: Some(m.peak_mem_mb),
                    state_gb_per_s: None,
                    wall_ms,
                    checkpoints_wall_ms,
                    source: "lightning-wgpu".into(),
                    passes_ms: pass_times(&m.passes_ms),
                });
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    let (anchor_rows, anchor_meta) = match anchors {
        Some((r, meta)) => (r, Some(meta)),
        None => (Vec::new(), None),
    };
    rows.extend(anchor_rows);
    finish(args, &ctx, rows, anchor_meta, timer)
}

/// Decode steps for each batch size of `--decode-batches` and each token
/// count of `--decode-tokens`. A size past the device's limits is reported
/// and skipped, keeping the rows measured; it is an error only when every
/// size is.
fn decode_rows(args: &Args, ctx: &Context, sweep: &Sweep, repeat: Repeat) -> Result<Vec<Row>> {
    let (h, d, e) = (sweep.h, sweep.d, sweep.e);
    let mut rows = Vec::new();
    let (mut skipped, mut last) = (Vec::new(), None);
    for &tokens in &args.decode_tokens {
        for &batch in &args.decode_batches {
            let m = match tokens {
                1 => pollster::block_on(measure_decode(ctx, batch, h, d, e, repeat)),
                t => pollster::block_on(measure_decode_draft(ctx, batch, t, h, d, e, repeat)),
            };
            let m = match m {
                Err(err @ lightning_wgpu::Error::TooLarge { .. }) => {
                    skipped.push(format!("batch {batch}, {tokens} tokens: {err}"));
                    last = Some(err);
                    continue;
                }
                m => m.with_context(|| format!("decode with batch {batch}, {tokens} tokens"))?,
            };
            // Each token's pass reads and writes every state; a draft also
            // copies the states in, after each token, and the accepted ones back.
            let passes = if tokens == 1 { 2 } else { 4 * tokens + 4 };
            let state_bytes = (passes * batch * h * d * e * 4) as f64;
            rows.push(Row {
                provider: if tokens == 1 {
                    "decode".into()
                } else {
                    "decode-draft".into()
                },
                dtype: "f32".into(),
                b: batch,
                h,
                kv_heads: None,
                n: tokens,
                d,
                e,
                fwd_ms: Some(m.fwd_ms),
                fwd_bwd_ms: None,
                tokens_per_s: Some((batch * tokens) as f64 / (m.fwd_ms * 1e-3)),
                tflops: Some(4.0 * (tokens * batch * h * d * e) as f64 / (m.fwd_ms * 1e-3) / 1e12),
                peak_mem_mb: Some(m.peak_mem_mb),
                state_gb_per_s: Some(state_bytes / (m.fwd_ms * 1e-3) / 1e9),
                wall_ms: None,
                checkpoints_wall_ms: None,
                source: "lightning-wgpu".into(),
                passes_ms: pass_times(&m.passes_ms),
            });
        }
    }
    if let (true, Some(err)) = (rows.is_empty(), last) {
        return Err(err).context("every decode size was skipped");
    }
    for s in skipped {
        eprintln!("bench: skipped decode with {s}");
    }
    Ok(rows)
}

/// Prints the table and writes what was asked for.
fn finish(
    args: &Args,
    ctx: &Context,
    rows: Vec<Row>,
    anchors: Option<serde_json::Value>,
    timer: &str,
) -> Result<ExitCode> {
    let info = ctx.adapter_info();
    print_table(&rows);
    if args.passes {
        print_passes(&rows);
    }
    if let Some(every) = args.checkpoint_every {
        print_checkpoints(&rows, every);
    }
    let report = Report {
        adapter: Adapter {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            cooperative_matrix: ctx.cooperative_matrix(),
        },
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        timer: timer.into(),
        rows,
        anchors,
    };
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        crate::plot::draw(path, &report.adapter.name, &report.rows)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<22} {:>5} {:>4} {:>4} {:>7} {:>4} {:>4} {:>10} {:>12} {:>8} {:>9} {:>10} {:>10}",
        "provider",
        "dtype",
        "b",
        "h",
        "n",
        "d",
        "e",
        "fwd ms",
        "tokens/s",
        "TFLOP/s",
        "peak MiB",
        "state GB/s",
        "fwd+bwd ms"
    );
    let show = |x: Option<f64>, prec: usize| x.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for r in rows {
        println!(
            "{:<22} {:>5} {:>4} {:>4} {:>7} {:>4} {:>4} {:>10} {:>12} {:>8} {:>9} {:>10} {:>10}",
            r.provider,
            r.dtype,
            r.b,
            r.h,
            r.n,
            r.d,
            r.e,
            show(r.fwd_ms, 3),
            r.tokens_per_s.map_or("-".into(), |t| format!("{:.3e}", t)),
            show(r.tflops, 2),
            show(r.peak_mem_mb, 0),
            show(r.state_gb_per_s, 1),
            show(r.fwd_bwd_ms, 3),
        );
    }
}

/// One line per row measured with `--checkpoint-every`: what the
/// checkpoints cost over the plain forward.
fn print_checkpoints(rows: &[Row], every: usize) {
    println!("State checkpoints every {every} positions (wall clock, median):");
    for r in rows {
        if let (Some(plain), Some(kept)) = (r.wall_ms, r.checkpoints_wall_ms) {
            println!(
                "  {} {} b={} n={}: {kept:.3} ms against {plain:.3} ({:+.1}%)",
                r.provider,
                r.dtype,
                r.b,
                r.n,
                (kept / plain - 1.0) * 100.0
            );
        }
    }
}

/// One line per measured row: each kernel's share of the GPU time.
fn print_passes(rows: &[Row]) {
    println!("GPU time by kernel (ms, median):");
    for r in rows.iter().filter(|r| !r.passes_ms.is_empty()) {
        let parts: Vec<String> = r
            .passes_ms
            .iter()
            .map(|p| format!("{} {:.3}", p.pass, p.ms))
            .collect();
        println!(
            "  {} {} b={} n={}: {}",
            r.provider,
            r.dtype,
            r.b,
            r.n,
            parts.join(", ")
        );
    }
}
