//! MPI as the transport of the sequence-parallel calls (feature `mpi`):
//! [`Exchange`] for any rsmpi communicator, and a context per rank on the
//! adapter of its local rank.
//!
//! ```no_run
//! use lightning_wgpu::{mpi as lmpi, ForwardOptions};
//! let universe = ::mpi::initialize().expect("MPI");
//! let world = universe.world();
//! let ctx = lmpi::context_for_rank(&world)?;
//! // each rank: its slice of q, k, v along n
//! # let (q, k, v) = (ctx.tensor(&[0.0; 8], &[1, 1, 2, 4])?, ctx.tensor(&[0.0; 8], &[1, 1, 2, 4])?, ctx.tensor(&[0.0; 8], &[1, 1, 2, 4])?);
//! let out = ctx.forward_sequence_parallel(&q, &k, &v, &ForwardOptions::default(), &world)?;
//! # Ok::<(), lightning_wgpu::Error>(())
//! ```

use ::mpi::topology::Communicator;
use ::mpi::traits::CommunicatorCollectives;

use crate::{Context, ContextOptions, Error, Exchange, Result, ADAPTER_ENV};

impl<C: Communicator> Exchange for C {
    fn rank(&self) -> usize {
        Communicator::rank(self) as usize
    }

    fn ranks(&self) -> usize {
        self.size() as usize
    }

    fn all_gather(&self, mine: &[u8]) -> Result<Vec<u8>> {
        let mut all = vec![0u8; mine.len() * self.size() as usize];
        self.all_gather_into(mine, &mut all[..]);
        Ok(all)
    }
}

/// A context for this rank: `LIGHTNING_ADAPTER` when set, else, where the
/// node has several GPUs, the one of index `local rank % GPUs` (ranks of
/// one node share it otherwise).
pub fn context_for_rank<C: Communicator>(world: &C) -> Result<Context> {
    if std::env::var_os(ADAPTER_ENV).is_some() {
        return Context::new();
    }
    let node = world.split_shared(Communicator::rank(world));
    let local = Communicator::rank(&node) as usize;
    let gpus: Vec<usize> = crate::adapters(&ContextOptions::default())
        .into_iter()
        .filter(|a| a.info.device_type != wgpu::DeviceType::Cpu)
        .map(|a| a.index)
        .collect();
    let adapter = match gpus.as_slice() {
        [] | [_] => None,
        many => Some(many[local % many.len()].to_string()),
    };
    Context::with_options(ContextOptions {
        adapter,
        ..Default::default()
    })
    .map_err(|e| match e {
        Error::NoAdapter(why) => Error::NoAdapter(format!("{why} (rank {local} on its node)")),
        other => other,
    })
}
