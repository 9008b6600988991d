//! `lightning-wgpu forward`: one forward pass on `.npy` files.
//!
//! Every input is read and its shape checked before the GPU is opened, so a
//! wrong file fails in milliseconds with a message naming the file, instead
//! of after the driver starts (and possibly prints its own chatter). The
//! library checks the same things again; these checks only exist to fail
//! earlier and to talk about files rather than tensors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;
use lightning_wgpu::{
    alibi_slopes, grouped_problem, Context, ContextOptions, DType, Dims, ForwardOptions, Layout,
    Method,
};

use crate::npy::{self, Array};
use crate::output::Outputs;

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

/// Storage type of q, k, v and o on the GPU (arithmetic and states are f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// IEEE binary32.
    #[default]
    F32,
    /// IEEE binary16 (inputs rounded to nearest even).
    F16,
    /// bfloat16 (inputs rounded to nearest even).
    Bf16,
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> DType {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

/// Algorithm of the forward pass (see `lightning_wgpu::Method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Blockwise (Lightning Attention-2).
    #[default]
    Chunk,
    /// Token by token through the d x e state (for short prompts and checking).
    Recurrent,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::Chunk => Method::Chunk,
            MethodArg::Recurrent => Method::Recurrent,
        }
    }
}

/// The inputs of one attention problem, shared by `forward` and `backward`.
#[derive(clap::Args, Debug)]
pub struct Problem {
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
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub scale: f32,
    /// State before the first position: (b, h, d, e), or (N, h, d, e) with --cu-seqlens.
    #[arg(long, value_name = "S0.npy")]
    pub initial_state: Option<PathBuf>,
    /// Layout of q, k, v and the output.
    #[arg(long, value_enum, default_value_t)]
    pub layout: LayoutArg,
    /// Under `mpirun -np R` (a build with the `mpi` feature): each rank takes
    /// an even share of the positions and rank 0 writes the outputs.
    #[arg(long)]
    pub sequence_parallel: bool,
}

/// Arguments of `forward`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub problem: Problem,
    /// A packed batch of N sequences: int32 or int64 offsets of shape (N + 1,),
    /// from 0 to n, strictly increasing; b must then be 1.
    #[arg(long, value_name = "CU.npy")]
    pub cu_seqlens: Option<PathBuf>,
    /// Storage type of q, k and v on the GPU (inputs are converted to it; a
    /// value it cannot hold is an error). The output is computed and written
    /// as float32 whatever it is.
    #[arg(long, value_enum, default_value_t)]
    pub dtype: DTypeArg,
    /// Algorithm.
    #[arg(long, value_enum, default_value_t)]
    pub method: MethodArg,
    /// Where to write the output (float32 .npy, shaped like v with q's heads).
    #[arg(long, value_name = "O.npy")]
    pub out: PathBuf,
    /// Where to write the state after the last position (float32 .npy, shaped like the initial state).
    #[arg(long, value_name = "SN.npy")]
    pub final_state: Option<PathBuf>,
    /// Keep the state after every C positions of each sequence (a multiple of
    /// the block rows; chunk method), written to --checkpoints. With f16 or
    /// bf16 storage the output is then rounded to it.
    #[arg(long, value_name = "C", requires = "checkpoints")]
    pub checkpoint_every: Option<usize>,
    /// Where to write the checkpoints: float32 (b, h, n / C, d, e), or
    /// (sum of len_i / C, h, d, e) for a packed batch.
    #[arg(long, value_name = "CK.npy", requires = "checkpoint_every")]
    pub checkpoints: Option<PathBuf>,
}

/// The problem's sizes (`h` the kv heads) and q heads per kv head, from
/// the shapes of q, k and v (the library's own check, made before the GPU
/// is opened), naming the files on failure.
fn dims(args: &Problem, layout: Layout, q: &Array, k: &Array, v: &Array) -> Result<(Dims, usize)> {
    grouped_problem(layout, &q.shape, &k.shape, &v.shape).with_context(|| {
        format!(
            "{}, {}, {} (layout {layout})",
            args.q.display(),
            args.k.display(),
            args.v.display()
        )
    })
}

/// Slopes from `--slopes` or `--alibi`, `None` for no decay.
fn slopes(args: &Problem, h: usize) -> Result<Option<Vec<f32>>> {
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

pub fn initial_state(
    args: &Problem,
    dims: &Dims,
    sequences: Option<usize>,
) -> Result<Option<Array>> {
    let Some(path) = &args.initial_state else {
        return Ok(None);
    };
    let s = npy::read(path, "initial_state")?;
    let mut want = dims.state_shape();
    if let Some(n) = sequences {
        want[0] = n;
    }
    if s.shape != want {
        bail!(
            "`initial_state` ({}) must have shape (batch, heads, d, e) = {want:?}, got {:?}",
            path.display(),
            s.shape
        );
    }
    Ok(Some(s))
}

/// A problem's inputs, read and checked: what `forward` and `backward` share.
pub struct Loaded {
    pub layout: Layout,
    pub q: Array,
    pub k: Array,
    pub v: Array,
    /// `h` counts k's and v's heads.
    pub dims: Dims,
    /// q heads per kv head (grouped heads; 1 for one each).
    pub group: usize,
    pub slopes: Option<Vec<f32>>,
}

impl Loaded {
    /// The shape of o and dO: v's, with q's heads.
    pub fn output_shape(&self) -> [usize; 4] {
        let Dims { b, h, n, e, .. } = self.dims;
        self.layout.shape(b, h * self.group, n, e)
    }
}

impl Problem {
    /// The input files, by option, for checking outputs against them.
    pub fn inputs(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut out = vec![
            ("q", self.q.as_path()),
            ("k", self.k.as_path()),
            ("v", self.v.as_path()),
        ];
        if let Some(p) = &self.slopes {
            out.push(("slopes", p));
        }
        if let Some(p) = &self.initial_state {
            out.push(("initial-state", p));
        }
        out
    }

    /// Reads q, k, v and the slopes and checks their shapes, before the GPU
    /// is opened.
    pub fn load(&self) -> Result<Loaded> {
        if !self.scale.is_finite() {
            bail!("--scale {} must be finite", self.scale);
        }
        let layout = Layout::from(self.layout);
        let q = npy::read(&self.q, "q")?;
        let k = npy::read(&self.k, "k")?;
        let v = npy::read(&self.v, "v")?;
        let (dims, group) = dims(self, layout, &q, &k, &v)?;
        let slopes = slopes(self, dims.h)?;
        Ok(Loaded {
            layout,
            q,
            k,
            v,
            dims,
            group,
            slopes,
        })
    }
}

/// Runs `forward`: read and check the inputs, run on the GPU, write the outputs.
pub fn run(args: &Args, options: ContextOptions) -> Result<ExitCode> {
    if args.problem.sequence_parallel {
        if args.checkpoint_every.is_some() {
            bail!(
                "--checkpoint-every with --sequence-parallel: checkpoints come from one process's forward"
            );
        }
        return crate::parallel::forward(args, options);
    }
    let dtype = DType::from(args.dtype);
    let problem = &args.problem;
    let mut inputs = problem.inputs();
    if let Some(p) = &args.cu_seqlens {
        inputs.push(("cu-seqlens", p));
    }
    let mut outputs = vec![("out", args.out.as_path())];
    if let Some(p) = &args.final_state {
        outputs.push(("final-state", p));
    }
    if let Some(p) = &args.checkpoints {
        outputs.push(("checkpoints", p));
    }
    let outputs = Outputs::new(&outputs, &inputs)?;
    let loaded = problem.load()?;
    let output_shape = loaded.output_shape();
    let Loaded {
        layout,
        q,
        k,
        v,
        dims,
        slopes,
        ..
    } = loaded;
    let cu_seqlens = args
        .cu_seqlens
        .as_deref()
        .map(|p| npy::read_offsets(p, "cu_seqlens"))
        .transpose()?;
    let s0 = initial_state(
        problem,
        &dims,
        cu_seqlens.as_ref().map(|c| c.len().saturating_sub(1)),
    )?;

    let ctx = Context::with_options(options)?;
    let q_t = upload(&ctx, &problem.q, "q", &q, dtype)?;
    let k_t = upload(&ctx, &problem.k, "k", &k, dtype)?;
    let v_t = upload(&ctx, &problem.v, "v", &v, dtype)?;
    let s0_t = s0.map(|s| ctx.tensor(&s.data, &s.shape)).transpose()?;
    let opts = ForwardOptions {
        slopes: slopes.as_deref(),
        scale: problem.scale,
        layout,
        initial_state: s0_t.as_ref(),
        output_final_state: args.final_state.is_some(),
        method: args.method.into(),
        cu_seqlens: cu_seqlens.as_deref(),
    };
    if let Some(every) = args.checkpoint_every {
        let (out, checkpoints) = ctx.forward_with_checkpoints(&q_t, &k_t, &v_t, &opts, every)?;
        npy::write(outputs.temporary("out"), out.o.shape(), &ctx.read(&out.o)?)?;
        if let Some(state) = &out.final_state {
            npy::write(
                outputs.temporary("final-state"),
                state.shape(),
                &ctx.read(state)?,
            )?;
        }
        npy::write(
            outputs.temporary("checkpoints"),
            checkpoints.shape(),
            &ctx.read(&checkpoints)?,
        )?;
        outputs.commit()?;
        return Ok(ExitCode::SUCCESS);
    }
    // The output in f32 whatever the inputs' storage: never rounded to halves.
    let mut o = ctx.empty(&output_shape, DType::F32)?;
    let state_shape = s0_shape(&dims, cu_seqlens.as_deref());
    let mut state = match &args.final_state {
        Some(_) => Some(ctx.empty(&state_shape, DType::F32)?),
        None => None,
    };
    ctx.forward_into(&q_t, &k_t, &v_t, &opts, &mut o, state.as_mut())?;

    npy::write(outputs.temporary("out"), o.shape(), &ctx.read(&o)?)?;
    if let Some(state) = &state {
        npy::write(
            outputs.temporary("final-state"),
            state.shape(),
            &ctx.read(state)?,
        )?;
    }
    outputs.commit()?;
    Ok(ExitCode::SUCCESS)
}

/// The shape of the states: one per batch entry, or per packed sequence.
fn s0_shape(dims: &Dims, cu_seqlens: Option<&[usize]>) -> [usize; 4] {
    let mut shape = dims.state_shape();
    if let Some(cu) = cu_seqlens {
        shape[0] = cu.len().saturating_sub(1);
    }
    shape
}

/// Uploads `array` (read from `path` for option `arg`) stored as `dtype`.
pub fn upload(
    ctx: &Context,
    path: &std::path::Path,
    arg: &str,
    array: &Array,
    dtype: DType,
) -> Result<lightning_wgpu::Tensor> {
    ctx.tensor_as(&array.data, &array.shape, dtype)
        .with_context(|| format!("`{arg}` ({})", path.display()))
}
