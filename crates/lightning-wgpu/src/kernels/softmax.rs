//! Recording causal softmax attention, the baseline.

use super::launch::{Io, Launch, Uniforms};
use super::{Kernel, KernelSpec, Setup};
use crate::error::Result;
use crate::runtime::recorder::Recorder;

pub(crate) async fn record(
    rec: &mut Recorder<'_>,
    setup: &Setup,
    launch: &Launch<'_>,
    io: &Io<'_>,
) -> Result<()> {
    let shared = super::shared_reads(&[("q", io.q), ("k", io.k), ("v", io.v)], &[io.o]);
    let kernel = KernelSpec::new(Kernel::SoftmaxAttention, launch.storage, setup.config)
        .sharing(&shared)
        .compile(rec.runtime())
        .await?;
    let uniforms = Uniforms::new(rec, launch);
    let e_tiles = launch.dims.e.div_ceil(setup.config.rows as usize);
    for (i, s) in launch.segments.iter().enumerate() {
        let mut named = uniforms.named(i);
        named.extend(io.named(s, &["q", "k", "v", "o"]));
        let groups = (s.bh_count * s.blocks * e_tiles) as u64;
        kernel.dispatch(rec, "softmax attention", &named, groups);
    }
    Ok(())
}
