//! `lightning-wgpu demo`: a self-check anyone can run after installing. It
//! answers "does it work on my GPU, and roughly how fast" in one command:
//! random inputs, one forward pass, compared against the f64 CPU reference.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use lightning_wgpu::{
    alibi_slopes, reference, Context, ContextOptions, DType, Dims, ForwardOptions, Layout,
};

use crate::forward::DTypeArg;
use crate::random::{fresh_seed, Rng};

/// Largest relative error (Frobenius norm) that still counts as correct.
/// The kernels accumulate in f32 in a different order than the f64
/// reference; 1e-4 leaves two orders of magnitude over what they reach on
/// these sizes while still catching any real indexing or decay bug.
pub const TOLERANCE: f64 = 1e-4;

const DEFAULT_B: usize = 1;
const DEFAULT_H: usize = 4;
const DEFAULT_N: usize = 1000;
const DEFAULT_D: usize = 64;
const DEFAULT_E: usize = 64;

/// Arguments of `demo`. The defaults are small on purpose: the f64 reference
/// runs on one CPU core and software GPUs (lavapipe) are slow.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Sequence length.
    #[arg(long, default_value_t = DEFAULT_N)]
    pub n: usize,
    /// Batch size.
    #[arg(long, default_value_t = DEFAULT_B)]
    pub b: usize,
    /// Heads.
    #[arg(long, default_value_t = DEFAULT_H)]
    pub h: usize,
    /// Width of q and k.
    #[arg(long, default_value_t = DEFAULT_D)]
    pub d: usize,
    /// Width of v and the output.
    #[arg(long, default_value_t = DEFAULT_E)]
    pub e: usize,
    /// Seed of the random inputs (default: a fresh one, printed to replay).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Storage type of q, k, v and o on the GPU.
    #[arg(long, value_enum, default_value_t)]
    pub dtype: DTypeArg,
}

impl Default for Args {
    /// The same values as the command-line defaults, for running `demo`
    /// without a subcommand.
    fn default() -> Self {
        Args {
            n: DEFAULT_N,
            b: DEFAULT_B,
            h: DEFAULT_H,
            d: DEFAULT_D,
            e: DEFAULT_E,
            seed: None,
            dtype: DTypeArg::F32,
        }
    }
}

/// `a * b * c * d` or an error: huge sizes must fail politely, not abort on
/// a capacity overflow.
fn elements(shape: [usize; 4]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &x| acc.checked_mul(x))
        .with_context(|| format!("shape {shape:?} is too large"))
}

/// Runs `demo`; exit status 1 when the GPU result is off.
pub fn run(args: &Args, options: ContextOptions) -> Result<ExitCode> {
    let Args { b, h, n, d, e, .. } = *args;
    let dims = Dims { b, h, n, d, e };
    let layout = Layout::Bhnd;
    let qk_shape = layout.shape(b, h, n, d);
    let v_shape = layout.shape(b, h, n, e);
    let (qk_len, v_len) = (elements(qk_shape)?, elements(v_shape)?);
    lightning_wgpu::problem_dims(layout, &qk_shape, &qk_shape, &v_shape)
        .context("--b, --h, --n, --d and --e")?;

    // Open the device first: its limits bound what the host may allocate.
    let ctx = Context::with_options(options)?;
    let dtype = DType::from(args.dtype);
    for (option, shape) in [("--b --h --n --d", qk_shape), ("--b --h --n --e", v_shape)] {
        lightning_wgpu_bench::fits(&ctx, "demo inputs", &shape, dtype)
            .with_context(|| format!("{option}: the inputs do not fit this adapter"))?;
    }

    let seed = args.seed.unwrap_or_else(fresh_seed);
    let mut rng = Rng::new(seed);
    // The reference sees exactly what the GPU stores: the rounded inputs.
    let round = |x: Vec<f32>| -> Vec<f32> {
        match dtype {
            DType::F16 => x
                .into_iter()
                .map(|v| half::f16::from_f32(v).to_f32())
                .collect(),
            DType::BF16 => x
                .into_iter()
                .map(|v| half::bf16::from_f32(v).to_f32())
                .collect(),
            _ => x,
        }
    };
    let q = round(rng.vec(qk_len, d));
    let k = round(rng.vec(qk_len, d));
    let v = round(rng.vec(v_len, e));
    let slopes = alibi_slopes(h);

    let info = ctx.adapter_info();
    println!(
        "adapter: {} ({:?}, {:?}), blocks of {} rows",
        info.name,
        info.backend,
        info.device_type,
        ctx.block_rows()
    );
    println!("shape:   b={b} h={h} n={n} d={d} e={e}, {dtype}, layout {layout}, alibi slopes, seed {seed}");

    let q_t = ctx.tensor_as(&q, &qk_shape, dtype)?;
    let k_t = ctx.tensor_as(&k, &qk_shape, dtype)?;
    let v_t = ctx.tensor_as(&v, &v_shape, dtype)?;
    let opts = ForwardOptions {
        slopes: Some(&slopes),
        ..Default::default()
    };
    let call = || -> Result<(Vec<f32>, Duration)> {
        let start = Instant::now();
        let out = ctx.forward(&q_t, &k_t, &v_t, &opts)?;
        let o = ctx.read(&out.o)?;
        Ok((o, start.elapsed()))
    };
    // The first call compiles the pipelines and fills the buffer pool; the
    // second is what a warm application sees.
    let (_, cold) = call()?;
    let (o, warm) = call()?;
    println!(
        "time:    {:.3} ms (forward + read back, after a {:.1} ms warm-up call)",
        warm.as_secs_f64() * 1e3,
        cold.as_secs_f64() * 1e3
    );

    let want = reference::forward(dims, layout, &q, &k, &v, &slopes, 1.0, None);
    let err = reference::relative_error(&o, &want.o);
    // Half outputs are rounded to their storage: the tolerances.
    let tolerance = match dtype {
        DType::F16 => 2e-3,
        DType::BF16 => 1e-2,
        _ => TOLERANCE,
    };
    println!("error:   {err:.3e} relative to the f64 CPU reference (tolerance {tolerance:.0e})");
    if err <= tolerance {
        println!("PASS");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAIL");
        Ok(ExitCode::FAILURE)
    }
}
