//! `lightning-wgpu decode`: one multi-token decoding step on `.npy` files,
//! for checking a server against these kernels: t draft tokens per request
//! against a state cache, the outputs, and the cache after each request's
//! accepted tokens (speculative verify, then commit).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use lightning_wgpu::{alibi_slopes, Context, ContextOptions, DecodeOptions};

use crate::npy;
use crate::output::Outputs;

/// Arguments of `decode`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Queries, float32 or float16 .npy, token-major: (t, batch, h, d).
    #[arg(long, value_name = "Q.npy")]
    q: PathBuf,
    /// Keys, shaped like q.
    #[arg(long, value_name = "K.npy")]
    k: PathBuf,
    /// Values: (t, batch, h, e).
    #[arg(long, value_name = "V.npy")]
    v: PathBuf,
    /// The state cache, float32 (slots, h, d, e).
    #[arg(long, value_name = "CACHE.npy")]
    cache: PathBuf,
    /// One cache slot per request, int32 or int64 (negative: padding).
    #[arg(long, value_name = "SLOTS.npy")]
    slots: PathBuf,
    /// Draft tokens of each request (int, 0..=t; default: t for all).
    #[arg(long, value_name = "TOKENS.npy")]
    tokens: Option<PathBuf>,
    /// Tokens each request accepts (int, 0..=tokens; default: all of its tokens).
    #[arg(long, value_name = "ACCEPTED.npy")]
    accepted: Option<PathBuf>,
    /// Use the official slopes for the h heads (no decay otherwise).
    #[arg(long)]
    alibi: bool,
    /// Multiplies q.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    scale: f32,
    /// Where to write the outputs, float32 (t, batch, h, e) (zero past a request's tokens).
    #[arg(long, value_name = "O.npy")]
    out: PathBuf,
    /// Where to write the cache after the accepted tokens, float32 (slots, h, d, e).
    #[arg(long, value_name = "CACHE2.npy")]
    new_cache: PathBuf,
}

fn counts(
    path: &Option<PathBuf>,
    arg: &str,
    batch: usize,
    default: &[usize],
) -> Result<Vec<usize>> {
    let Some(path) = path else {
        return Ok(default.to_vec());
    };
    let values = npy::read_ints(path, arg)?;
    if values.len() != batch {
        bail!(
            "`{arg}` ({}) must hold one count per request ({batch}), got {}",
            path.display(),
            values.len()
        );
    }
    values
        .into_iter()
        .map(|x| {
            usize::try_from(x).map_err(|_| {
                anyhow::anyhow!("`{arg}` ({}) holds a negative count {x}", path.display())
            })
        })
        .collect()
}

/// Runs `decode`: read and check the inputs, run on the GPU, write the outputs.
pub fn run(args: &Args, options: ContextOptions) -> Result<ExitCode> {
    let inputs = [
        ("q", args.q.as_path()),
        ("k", args.k.as_path()),
        ("v", args.v.as_path()),
        ("cache", args.cache.as_path()),
        ("slots", args.slots.as_path()),
    ];
    let outputs = Outputs::new(
        &[
            ("out", args.out.as_path()),
            ("new-cache", args.new_cache.as_path()),
        ],
        &inputs,
    )?;
    let (q, k, v, cache) = (
        npy::read(&args.q, "q")?,
        npy::read(&args.k, "k")?,
        npy::read(&args.v, "v")?,
        npy::read(&args.cache, "cache")?,
    );
    if q.shape.len() != 4 {
        bail!(
            "`q` ({}) must be token-major (t, batch, h, d), got shape {:?}",
            args.q.display(),
            q.shape
        );
    }
    let (t, batch, h) = (q.shape[0], q.shape[1], q.shape[2]);
    let slots: Vec<i32> = npy::read_ints(&args.slots, "slots")?
        .into_iter()
        .map(|s| i32::try_from(s).map_err(|_| anyhow::anyhow!("`slots` holds {s}, outside i32")))
        .collect::<Result<_>>()?;
    let tokens = counts(&args.tokens, "tokens", batch, &vec![t; batch])?;
    let accepted = counts(&args.accepted, "accepted", batch, &tokens)?;
    // Slopes are per kv head (k's heads; q may have a multiple of them).
    let kv_heads = k.shape.get(2).copied().unwrap_or(h);
    let slopes = args.alibi.then(|| alibi_slopes(kv_heads));

    let ctx = Context::with_options(options)?;
    let up = |a: &npy::Array| ctx.tensor(&a.data, &a.shape);
    let (qt, kt, vt) = (up(&q)?, up(&k)?, up(&v)?);
    let mut cache_t = up(&cache)?;
    let opts = DecodeOptions {
        slopes: slopes.as_deref(),
        scale: args.scale,
    };
    let (o, draft) = ctx.decode_draft(&qt, &kt, &vt, &cache_t, &slots, &tokens, &opts)?;
    ctx.commit_draft(&mut cache_t, &draft, &accepted)?;
    npy::write(outputs.temporary("out"), o.shape(), &ctx.read(&o)?)?;
    npy::write(
        outputs.temporary("new-cache"),
        cache_t.shape(),
        &ctx.read(&cache_t)?,
    )?;
    outputs.commit()?;
    Ok(ExitCode::SUCCESS)
}
