//! `lightning-wgpu backward`: gradients of the forward pass on `.npy` files,
//! for checking training code against these kernels.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use lightning_wgpu::{BackwardOptions, Context, ContextOptions, ForwardOptions};

use crate::forward::{initial_state, Loaded, Problem};
use crate::npy;
use crate::output::Outputs;

/// Arguments of `backward`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub problem: Problem,
    /// Gradient of the output, shaped like v with q's heads.
    #[arg(long = "do", value_name = "DO.npy")]
    pub d_o: PathBuf,
    /// Gradient of the final state, (b, h, d, e) (default: zero).
    #[arg(long, value_name = "DSN.npy")]
    pub d_final_state: Option<PathBuf>,
    /// Where to write dq (float32 .npy, shaped like q).
    #[arg(long, value_name = "DQ.npy")]
    pub dq: PathBuf,
    /// Where to write dk (shaped like k).
    #[arg(long, value_name = "DK.npy")]
    pub dk: PathBuf,
    /// Where to write dv (shaped like v).
    #[arg(long, value_name = "DV.npy")]
    pub dv: PathBuf,
    /// Where to write the gradient of the initial state, (b, h, d, e).
    #[arg(long, value_name = "DS0.npy")]
    pub d_initial_state: Option<PathBuf>,
}

/// Runs `backward`: read and check the inputs, run on the GPU, write the gradients.
pub fn run(args: &Args, options: ContextOptions) -> Result<ExitCode> {
    if args.problem.sequence_parallel {
        return crate::parallel::backward(args, options);
    }
    let problem = &args.problem;
    let mut inputs = problem.inputs();
    inputs.push(("do", args.d_o.as_path()));
    if let Some(p) = &args.d_final_state {
        inputs.push(("d-final-state", p));
    }
    let mut outputs = vec![
        ("dq", args.dq.as_path()),
        ("dk", args.dk.as_path()),
        ("dv", args.dv.as_path()),
    ];
    if let Some(p) = &args.d_initial_state {
        outputs.push(("d-initial-state", p));
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
    let s0 = initial_state(problem, &dims, None)?;
    let d_o = npy::read(&args.d_o, "do")?;
    if d_o.shape != output_shape {
        bail!(
            "`do` ({}) must be shaped like v with q's heads (the output) {:?}, got {:?}",
            args.d_o.display(),
            output_shape,
            d_o.shape
        );
    }
    let dsn = match &args.d_final_state {
        Some(path) => {
            let a = npy::read(path, "d_final_state")?;
            if a.shape != dims.state_shape() {
                bail!(
                    "`d_final_state` ({}) must have shape (batch, heads, d, e) = {:?}, got {:?}",
                    path.display(),
                    dims.state_shape(),
                    a.shape
                );
            }
            Some(a)
        }
        None => None,
    };

    let ctx = Context::with_options(options)?;
    let upload = |a: &npy::Array| ctx.tensor(&a.data, &a.shape);
    let (q_t, k_t, v_t, do_t) = (upload(&q)?, upload(&k)?, upload(&v)?, upload(&d_o)?);
    let s0_t = s0.as_ref().map(upload).transpose()?;
    let dsn_t = dsn.as_ref().map(upload).transpose()?;
    let opts = BackwardOptions {
        forward: ForwardOptions {
            slopes: slopes.as_deref(),
            scale: problem.scale,
            layout,
            initial_state: s0_t.as_ref(),
            ..Default::default()
        },
        d_final_state: dsn_t.as_ref(),
    };
    let g = ctx.backward(&q_t, &k_t, &v_t, &do_t, &opts)?;
    for (option, t) in [("dq", &g.dq), ("dk", &g.dk), ("dv", &g.dv)] {
        npy::write(outputs.temporary(option), t.shape(), &ctx.read(t)?)?;
    }
    if args.d_initial_state.is_some() {
        let t = &g.d_initial_state;
        npy::write(
            outputs.temporary("d-initial-state"),
            t.shape(),
            &ctx.read(t)?,
        )?;
    }
    outputs.commit()?;
    Ok(ExitCode::SUCCESS)
}
