//! `lightning-wgpu forward`: one forward pass on `.npy` files.
//!
//! Every input is read and its shape checked before the GPU is opened, so a
//! wrong file fails in milliseconds with a message naming the file, instead
//! of after the driver starts (and possibly prints its own chatter). The
//! library checks the same things again; these checks only exist to fail
//! earlier and to talk about files rather than tensors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;
use lightning_wgpu::{alibi_slopes, Context, ContextOptions, Dims, ForwardOptions, Layout, Method};

use crate::npy::{self, Array};

/// Memory layout of q, k, v and the output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// (batch, heads, n, width): the official Lightning Attention API.
    #[default]
    Bhnd,
    /// (batch, n, heads, width): the FLA / FlashAttention layout.
    Bnhd,
}

impl From<LayoutArg> for Layout {
    fn from(l: LayoutArg) -> Layout {
        match l {
            LayoutArg::Bhnd => Layout::Bhnd,
            LayoutArg::Bnhd => Layout::Bnhd,
        }
    }
}

/// Storage type of the tensors on the GPU. Only f32 exists today; it is an
/// enum so that f16 and bf16 can be added without changing the interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// IEEE binary32.
    #[default]
    F32,
}

/// Algorithm of the forward pass (see `lightning_wgpu::Method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Blockwise (Lightning Attention-2).
    #[default]
    Chunk,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::Chunk => Method::Chunk,
        }
    }
}

/// Arguments of `forward`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Queries, float32 or float16 .npy: (b, h, n, d) or (b, n, h, d) per --layout.
    #[arg(long, value_name = "Q.npy")]
    pub q: PathBuf,
    /// Keys, same shape as q.
    #[arg(long, value_name = "K.npy")]
    pub k: PathBuf,
    /// Values: (b, h, n, e) or (b, n, h, e) per --layout.
    #[arg(long, value_name = "V.npy")]
    pub v: PathBuf,
    /// Per-head decay slopes, h values >= 0 (shape (h,) or the official (h, 1, 1));
    /// without this or --alibi there is no decay.
    #[arg(long, value_name = "S.npy")]
    pub slopes: Option<PathBuf>,
    /// Use Lightning Attention's ALiBi-style slopes for the h heads
    /// (2^(-8(i+1)/h) when h is a power of two).
    #[arg(long, conflicts_with = "slopes")]
    pub alibi: bool,
    /// Multiplies q (1 in the official kernel, 1/sqrt(d) in FLA's).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub scale: f32,
    /// State before the first position, (b, h, d, e).
    #[arg(long, value_name = "S0.npy")]
    pub initial_state: Option<PathBuf>,
    /// Layout of q, k, v and the output.
    #[arg(long, value_enum, default_value_t)]
    pub layout: LayoutArg,
    /// Storage type on the GPU (inputs are converted to it).
    #[arg(long, value_enum, default_value_t)]
    pub dtype: DTypeArg,
    /// Algorithm.
    #[arg(long, value_enum, default_value_t)]
    pub method: MethodArg,
    /// Where to write the output (float32 .npy, shaped like v).
    #[arg(long, value_name = "O.npy")]
    pub out: PathBuf,
    /// Where to write the state after the last position (float32 .npy, (b, h, d, e)).
    #[arg(long, value_name = "SN.npy")]
    pub final_state: Option<PathBuf>,
}

/// Names of the four axes of q/k/v in `layout`, `width` being `d` or `e`.
fn axes(layout: Layout, width: &'static str) -> [&'static str; 4] {
    match layout {
        Layout::Bhnd => ["batch", "heads", "n", width],
        Layout::Bnhd => ["batch", "n", "heads", width],
    }
}

fn rank4(
    arg: &str,
    path: &Path,
    a: &Array,
    layout: Layout,
    width: &'static str,
) -> Result<[usize; 4]> {
    let shape = <[usize; 4]>::try_from(a.shape.as_slice()).map_err(|_| {
        anyhow::anyhow!(
            "`{arg}` ({}) must have 4 dimensions ({}) for layout {layout}, got shape {:?}",
            path.display(),
            axes(layout, width).join(", "),
            a.shape
        )
    })?;
    if let Some(i) = shape.iter().position(|&x| x == 0) {
        bail!(
            "`{arg}` ({}) has {} = 0: every dimension must be at least 1",
            path.display(),
            axes(layout, width)[i]
        );
    }
    Ok(shape)
}

/// The problem's sizes from the shapes of q, k and v, or why they disagree.
fn dims(args: &Args, layout: Layout, q: &Array, k: &Array, v: &Array) -> Result<Dims> {
    let qs = rank4("q", &args.q, q, layout, "d")?;
    let ks = rank4("k", &args.k, k, layout, "d")?;
    let vs = rank4("v", &args.v, v, layout, "e")?;
    let names = axes(layout, "d");
    for i in 0..4 {
        if ks[i] != qs[i] {
            bail!(
                "shape mismatch: `k` has {dim} = {}, but `q` has {dim} = {} (k {ks:?}, q {qs:?}, layout {layout})",
                ks[i],
                qs[i],
                dim = names[i]
            );
        }
        if i < 3 && vs[i] != qs[i] {
            bail!(
                "shape mismatch: `v` has {dim} = {}, but `q` has {dim} = {} (v {vs:?}, q {qs:?}, layout {layout})",
                vs[i],
                qs[i],
                dim = names[i]
            );
        }
    }
    let (b, h, n, d) = layout.split(&qs);
    Ok(Dims {
        b,
        h,
        n,
        d,
        e: vs[3],
    })
}

/// Slopes from `--slopes` or `--alibi`, `None` for no decay.
fn slopes(args: &Args, h: usize) -> Result<Option<Vec<f32>>> {
    if args.alibi {
        return Ok(Some(alibi_slopes(h)));
    }
    let Some(path) = &args.slopes else {
        return Ok(None);
    };
    let s = npy::read(path, "slopes")?;
    // (h,) or the official `_build_slope_tensor` shape (h, 1, 1).
    let flat = s.shape.first() == Some(&h) && s.shape[1..].iter().all(|&x| x == 1);
    if !flat {
        bail!(
            "`slopes` ({}) must hold {h} values, one per head (shape ({h},) or ({h}, 1, 1)), got shape {:?}",
            path.display(),
            s.shape
        );
    }
    Ok(Some(s.data))
}

fn initial_state(args: &Args, dims: &Dims) -> Result<Option<Array>> {
    let Some(path) = &args.initial_state else {
        return Ok(None);
    };
    let s = npy::read(path, "initial_state")?;
    let want = dims.state_shape();
    if s.shape != want {
        bail!(
            "`initial_state` ({}) must have shape (batch, heads, d, e) = {want:?}, got {:?}",
            path.display(),
            s.shape
        );
    }
    Ok(Some(s))
}

/// Runs `forward`: read and check the inputs, run on the GPU, write the outputs.
pub fn run(args: &Args, options: ContextOptions) -> Result<ExitCode> {
    // Exhaustive on purpose: adding f16 or bf16 must fail to compile here
    // until this function handles it.
    match args.dtype {
        DTypeArg::F32 => {}
    }
    let layout = Layout::from(args.layout);
    let q = npy::read(&args.q, "q")?;
    let k = npy::read(&args.k, "k")?;
    let v = npy::read(&args.v, "v")?;
    let dims = dims(args, layout, &q, &k, &v)?;
    let slopes = slopes(args, dims.h)?;
    let s0 = initial_state(args, &dims)?;
    if !args.scale.is_finite() {
        bail!("--scale {} must be finite", args.scale);
    }

    let ctx = Context::with_options(options)?;
    let q_t = ctx.tensor(&q.data, &q.shape)?;
    let k_t = ctx.tensor(&k.data, &k.shape)?;
    let v_t = ctx.tensor(&v.data, &v.shape)?;
    let s0_t = s0.map(|s| ctx.tensor(&s.data, &s.shape)).transpose()?;
    // Options the tool does not expose (cu_seqlens, later ones) keep the
    // library's defaults.
    let opts = ForwardOptions {
        slopes: slopes.as_deref(),
        scale: args.scale,
        layout,
        initial_state: s0_t.as_ref(),
        output_final_state: args.final_state.is_some(),
        method: args.method.into(),
        ..Default::default()
    };
    let out = ctx.forward(&q_t, &k_t, &v_t, &opts)?;

    let o = ctx.read(&out.o)?;
    npy::write(&args.out, out.o.shape(), &o)?;
    if let Some(path) = &args.final_state {
        let state = out
            .final_state
            .context("the library returned no final state although one was asked for")?;
        let data = ctx.read(&state)?;
        npy::write(path, state.shape(), &data)?;
    }
    Ok(ExitCode::SUCCESS)
}
