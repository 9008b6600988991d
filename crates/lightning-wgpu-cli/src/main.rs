//! `lightning-wgpu`: Lightning Attention from the command line.
//!
//! - `forward`: run the forward pass on `.npy` files (for checking the
//!   kernels against another implementation, or using them from any
//!   language that writes NumPy files);
//! - `backward`: the gradients, on `.npy` files too;
//! - `info`: the adapters wgpu finds and which one is used;
//! - `demo`: random inputs, one pass, compared with the CPU reference;
//! - `bench`: the speed-versus-length sweep (see docs/BENCHMARKS.md).
//!
//! Without a subcommand it runs `info`, `demo`, then `bench`: the one thing to try
//! after installing.
//!
//! Each subcommand lives in its own module with its `Args` and a
//! `run(...) -> anyhow::Result<ExitCode>`; adding one
//! means a module, a `Command` variant and a match arm.
//!
//! Every failure is one line on stderr, `error: <reason>`, and a non-zero
//! exit status, so scripts can report it and people can read it.

mod backward;
mod bench;
mod decode;
mod demo;
mod forward;
mod info;
mod npy;
mod output;
mod parallel;
mod plot;
mod random;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lightning_wgpu::ContextOptions;

#[derive(Parser, Debug)]
#[command(name = "lightning-wgpu", version, about, long_about = None)]
#[command(
    after_help = "Without a subcommand, runs `info`, `demo`, then `bench` with its defaults."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Options of every subcommand: how to open the GPU.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "GPU options")]
struct Global {
    /// Adapter to use: a case-insensitive substring of its name, or its index
    /// in `info` (default: LIGHTNING_ADAPTER, else the best GPU found).
    #[arg(long, global = true, value_name = "NAME|INDEX")]
    adapter: Option<String>,
    /// Keep wgpu's shader bounds checks on (slower; for debugging).
    #[arg(long, global = true)]
    checked: bool,
    /// f16 and bf16 on cooperative matrices (tensor cores): `on` requires them, `off`
    /// runs the portable kernels (default: LIGHTNING_COOP, else wherever the
    /// adapter has them).
    #[arg(long, global = true, value_name = "on|off")]
    coop: Option<Coop>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Coop {
    On,
    Off,
}

impl Global {
    fn options(&self) -> ContextOptions {
        ContextOptions {
            adapter: self.adapter.clone(),
            // Absent means "let LIGHTNING_CHECKED decide", not "off".
            checked: self.checked.then_some(true),
            cooperative_matrix: self.coop.map(|c| c == Coop::On),
            ..Default::default()
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the forward pass on .npy files.
    Forward(forward::Args),
    /// Gradients of the forward pass (dq, dk, dv, dS0) on .npy files.
    Backward(backward::Args),
    /// One decoding step of t draft tokens per request against a state cache
    /// (.npy files): the outputs and the cache after the accepted tokens.
    Decode(decode::Args),
    /// List the GPU adapters, their features and limits, and which one is used.
    Info,
    /// Run random inputs on the GPU and check them against the CPU reference.
    Demo(demo::Args),
    /// Sweep sequence lengths at a fixed b*n: Lightning Attention against the
    /// recurrence and softmax attention on this adapter.
    Bench(bench::Args),
}

fn run(cli: Cli) -> Result<ExitCode> {
    let options = cli.global.options();
    match cli.command {
        Some(Command::Forward(args)) => forward::run(&args, options),
        Some(Command::Backward(args)) => backward::run(&args, options),
        Some(Command::Decode(args)) => decode::run(&args, options),
        Some(Command::Info) => info::run(&options),
        Some(Command::Demo(args)) => demo::run(&args, options),
        Some(Command::Bench(args)) => bench::run(&args, options),
        None => {
            // The main job: what this adapter is, that the kernels are right
            // on it, then the speed-versus-length sweep.
            info::run(&options)?;
            println!();
            let verdict = demo::run(&demo::Args::default(), options.clone())?;
            if verdict != ExitCode::SUCCESS {
                return Ok(verdict);
            }
            println!();
            bench::run(&bench::Args::default(), options)
        }
    }
}

/// The error and its causes on one line: anyhow's `{:#}` joins the chain with
/// `: `, and any line breaks inside a message (driver errors have them) are
/// folded so the reason stays one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version print as clap writes them; a bad command line is
        // one line, as every other failure is.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad arguments");
            eprintln!("{}", first.trim());
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
