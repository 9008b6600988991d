//! `--sequence-parallel` (feature `mpi`): under `mpirun -np R`, each rank
//! takes an even share of the positions (rank r: rows `n r / R .. n (r+1) / R`)
//! of the same `.npy` inputs, runs the library's sequence-parallel call on
//! its slice, and rank 0 gathers the slices and writes the output files
//! (the other ranks write nothing).

#[cfg(not(feature = "mpi"))]
use anyhow::bail;
use anyhow::Result;

/// This rank's share of `n` positions among `ranks`.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub fn share(n: usize, rank: usize, ranks: usize) -> std::ops::Range<usize> {
    n * rank / ranks..n * (rank + 1) / ranks
}

#[cfg(feature = "mpi")]
pub use with_mpi::{backward, forward};

#[cfg(feature = "mpi")]
mod with_mpi {
    use super::*;
    use std::process::ExitCode;

    use anyhow::bail;
    use lightning_wgpu::{Dims, Layout};

    use lightning_wgpu::{mpi as lmpi, BackwardOptions, ContextOptions, DType, ForwardOptions};
    use mpi::datatype::PartitionMut;

    use crate::forward::{initial_state, Loaded};
    use crate::npy;
    use crate::output::Outputs;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    /// The MPI world of this run.
    pub struct Ranks {
        _universe: mpi::environment::Universe,
        pub world: SimpleCommunicator,
    }

    impl Ranks {
        pub fn init() -> Result<Ranks> {
            let Some(universe) = mpi::initialize() else {
                bail!("MPI could not be initialised");
            };
            let world = universe.world();
            Ok(Ranks {
                _universe: universe,
                world,
            })
        }

        pub fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        pub fn ranks(&self) -> usize {
            self.world.size() as usize
        }

        /// This rank's rows of `n`; an error where a rank would get none.
        pub fn rows(&self, n: usize) -> Result<std::ops::Range<usize>> {
            if n < self.ranks() {
                bail!(
                    "--sequence-parallel: n = {n} positions cannot be split over {} ranks",
                    self.ranks()
                );
            }
            Ok(share(n, self.rank(), self.ranks()))
        }

        /// Every rank's slice of a `(b, h, n, w)` array, assembled on rank 0.
        pub fn gather(&self, slice: &[f32], l: Layout, dims: &Dims, w: usize) -> Option<Vec<f32>> {
            let root = self.world.process_at_rank(0);
            if self.rank() != 0 {
                root.gather_varcount_into(slice);
                return None;
            }
            let ranges: Vec<_> = (0..self.ranks())
                .map(|r| share(dims.n, r, self.ranks()))
                .collect();
            let counts: Vec<i32> = ranges
                .iter()
                .map(|r| (dims.b * dims.h * r.len() * w) as i32)
                .collect();
            let displs: Vec<i32> = counts
                .iter()
                .scan(0, |at, &c| {
                    let d = *at;
                    *at += c;
                    Some(d)
                })
                .collect();
            let mut packed = vec![0f32; counts.iter().map(|&c| c as usize).sum()];
            root.gather_varcount_into_root(
                slice,
                &mut PartitionMut::new(&mut packed[..], &counts[..], &displs[..]),
            );
            let mut full = vec![0f32; dims.b * dims.h * dims.n * w];
            for (r, range) in ranges.iter().enumerate() {
                let at = displs[r] as usize;
                l.put_rows(
                    &mut full,
                    &packed[at..at + counts[r] as usize],
                    dims,
                    w,
                    range.clone(),
                );
            }
            Some(full)
        }
    }

    /// This rank's slice of the problem, uploaded, and the context.
    struct Slice {
        ranks: Ranks,
        ctx: lightning_wgpu::Context,
        loaded: Loaded,
        range: std::ops::Range<usize>,
        q: lightning_wgpu::Tensor,
        k: lightning_wgpu::Tensor,
        v: lightning_wgpu::Tensor,
        s0: Option<lightning_wgpu::Tensor>,
    }

    fn slice(
        problem: &crate::forward::Problem,
        dtype: DType,
        options: ContextOptions,
    ) -> Result<Slice> {
        let ranks = Ranks::init()?;
        let loaded = problem.load()?;
        if loaded.group > 1 {
            anyhow::bail!(
                "--sequence-parallel takes q, k and v with the same heads (grouped heads run in one process)"
            );
        }
        let s0 = initial_state(problem, &loaded.dims, None)?;
        let range = ranks.rows(loaded.dims.n)?;
        let ctx = match options.adapter {
            Some(_) => lightning_wgpu::Context::with_options(options)?,
            None => lmpi::context_for_rank(&ranks.world)?,
        };
        let (dims, l) = (loaded.dims, loaded.layout);
        let cut = |a: &npy::Array, w: usize| -> Result<lightning_wgpu::Tensor> {
            let data = l.rows(&a.data, &dims, w, range.clone());
            Ok(ctx.tensor_as(&data, &l.shape(dims.b, dims.h, range.len(), w), dtype)?)
        };
        let (q, k, v) = (
            cut(&loaded.q, dims.d)?,
            cut(&loaded.k, dims.d)?,
            cut(&loaded.v, dims.e)?,
        );
        let s0 = s0.map(|s| ctx.tensor(&s.data, &s.shape)).transpose()?;
        Ok(Slice {
            ranks,
            ctx,
            loaded,
            range,
            q,
            k,
            v,
            s0,
        })
    }

    pub fn forward(args: &crate::forward::Args, options: ContextOptions) -> Result<ExitCode> {
        if args.cu_seqlens.is_some() {
            bail!("--sequence-parallel splits plain batches, not packed ones (--cu-seqlens)");
        }
        let p = &args.problem;
        let s = slice(p, args.dtype.into(), options)?;
        let outputs = match s.ranks.rank() {
            0 => {
                let mut outs = vec![("out", args.out.as_path())];
                if let Some(f) = &args.final_state {
                    outs.push(("final-state", f));
                }
                Some(Outputs::new(&outs, &p.inputs())?)
            }
            _ => None,
        };
        let (dims, l) = (s.loaded.dims, s.loaded.layout);
        let opts = ForwardOptions {
            slopes: s.loaded.slopes.as_deref(),
            scale: p.scale,
            layout: l,
            initial_state: s.s0.as_ref(),
            output_final_state: args.final_state.is_some(),
            method: args.method.into(),
            cu_seqlens: None,
        };
        let out = s
            .ctx
            .forward_sequence_parallel(&s.q, &s.k, &s.v, &opts, &s.ranks.world)?;
        let o = s.ranks.gather(&s.ctx.read(&out.o)?, l, &dims, dims.e);
        if let (Some(outputs), Some(o)) = (outputs, o) {
            npy::write(outputs.temporary("out"), &s.loaded.v.shape, &o)?;
            if let Some(state) = &out.final_state {
                npy::write(
                    outputs.temporary("final-state"),
                    state.shape(),
                    &s.ctx.read(state)?,
                )?;
            }
            outputs.commit()?;
            eprintln!(
                "forward over {} ranks: rank 0 wrote rows 0..{} (its own: {:?})",
                s.ranks.ranks(),
                dims.n,
                s.range
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn backward(args: &crate::backward::Args, options: ContextOptions) -> Result<ExitCode> {
        let p = &args.problem;
        let s = slice(p, DType::F32, options)?;
        let outputs = match s.ranks.rank() {
            0 => {
                let mut outs = vec![
                    ("dq", args.dq.as_path()),
                    ("dk", args.dk.as_path()),
                    ("dv", args.dv.as_path()),
                ];
                if let Some(f) = &args.d_initial_state {
                    outs.push(("d-initial-state", f));
                }
                let mut inputs = p.inputs();
                inputs.push(("do", args.d_o.as_path()));
                Some(Outputs::new(&outs, &inputs)?)
            }
            _ => None,
        };
        let (dims, l) = (s.loaded.dims, s.loaded.layout);
        let d_o = npy::read(&args.d_o, "do")?;
        if d_o.shape != s.loaded.v.shape {
            bail!(
                "`do` ({}) must be shaped like v {:?}, got {:?}",
                args.d_o.display(),
                s.loaded.v.shape,
                d_o.shape
            );
        }
        let do_t = s.ctx.tensor(
            &l.rows(&d_o.data, &dims, dims.e, s.range.clone()),
            &l.shape(dims.b, dims.h, s.range.len(), dims.e),
        )?;
        let dsn = match &args.d_final_state {
            Some(path) => {
                let a = npy::read(path, "d_final_state")?;
                if a.shape != dims.state_shape() {
                    bail!(
                        "`d_final_state` ({}) must have shape {:?}, got {:?}",
                        path.display(),
                        dims.state_shape(),
                        a.shape
                    );
                }
                Some(s.ctx.tensor(&a.data, &a.shape)?)
            }
            None => None,
        };
        let opts = BackwardOptions {
            forward: ForwardOptions {
                slopes: s.loaded.slopes.as_deref(),
                scale: p.scale,
                layout: l,
                initial_state: s.s0.as_ref(),
                ..Default::default()
            },
            d_final_state: dsn.as_ref(),
        };
        let g = s
            .ctx
            .backward_sequence_parallel(&s.q, &s.k, &s.v, &do_t, &opts, &s.ranks.world)?;
        let gathered: Vec<_> = [(&g.dq, dims.d), (&g.dk, dims.d), (&g.dv, dims.e)]
            .into_iter()
            .map(|(t, w)| Ok(s.ranks.gather(&s.ctx.read(t)?, l, &dims, w)))
            .collect::<Result<_>>()?;
        if let Some(outputs) = outputs {
            let shapes = [&s.loaded.q.shape, &s.loaded.k.shape, &s.loaded.v.shape];
            for ((name, full), shape) in ["dq", "dk", "dv"].into_iter().zip(gathered).zip(shapes) {
                npy::write(
                    outputs.temporary(name),
                    shape,
                    &full.expect("rank 0 gathers"),
                )?;
            }
            if args.d_initial_state.is_some() {
                let t = &g.d_initial_state;
                npy::write(
                    outputs.temporary("d-initial-state"),
                    t.shape(),
                    &s.ctx.read(t)?,
                )?;
            }
            outputs.commit()?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Without the `mpi` feature the flag is an error that says how to get it.
#[cfg(not(feature = "mpi"))]
fn unavailable() -> Result<std::process::ExitCode> {
    bail!("--sequence-parallel needs MPI: build with `cargo build --release -p lightning-wgpu-cli --features mpi` and run under mpirun")
}

#[cfg(not(feature = "mpi"))]
pub fn forward(
    _: &crate::forward::Args,
    _: lightning_wgpu::ContextOptions,
) -> Result<std::process::ExitCode> {
    unavailable()
}

#[cfg(not(feature = "mpi"))]
pub fn backward(
    _: &crate::backward::Args,
    _: lightning_wgpu::ContextOptions,
) -> Result<std::process::ExitCode> {
    unavailable()
}
