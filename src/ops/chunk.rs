//! Recording the chunked (blockwise) forward: for each segment, the
//! block-state, stripe-scan and block-output passes.

use super::{bind, dispatch, pipelines, Common, Io, Launch};
use crate::context::Context;
use crate::error::Result;
use crate::kernels::{Pass, Storage, COOP_MAX_DIM, STRIPE};
use crate::layout::Dims;
use crate::ops::plan::Window;

/// The most workgroups the stripe scan is dispatched with; past it each
/// invocation scans several elements. Short sequences (many (b, h), one
/// stripe each) otherwise start a short workgroup per 256 elements: on the
/// H100 (h = 32, d = e = 128, f16) the cap took the scan from 1.06 to 0.42
/// ms at n = 1K, b = 128 and from 0.47 to 0.24 at n = 2K, b = 64; at n =
/// 32K, b = 4 (8192 workgroups, under the cap) it went from 0.15 to 0.17.
const SCAN_GROUPS: usize = 16384;

/// Whether this call runs on cooperative matrices: the context has them,
/// q, k and v are f16 or bf16, and d and e fit their 16 x 16 tiles.
pub(crate) fn uses_coop(ctx: &Context, storage: Storage, dims: &Dims) -> bool {
    let fits = |w: usize| w.is_multiple_of(16) && w <= COOP_MAX_DIM;
    ctx.inner.cooperative && storage.is_half() && fits(dims.d) && fits(dims.e)
}

pub(crate) async fn record(ctx: &Context, launch: &Launch<'_>, io: &Io<'_>) -> Result<()> {
    let coop = uses_coop(ctx, launch.storage, &launch.dims);
    let passes = if coop { Pass::CHUNK_COOP } else { Pass::CHUNK };
    let pipes = pipelines(ctx, passes, launch.storage).await?;
    let inner = &ctx.inner;
    let common = Common::new(ctx, launch);
    let scratch_bytes = launch
        .segments
        .iter()
        .map(|s| s.scratch_bytes)
        .max()
        .unwrap_or(4);
    let scratch = inner.pool.take(
        &inner.device,
        "block states",
        scratch_bytes,
        wgpu::BufferUsages::STORAGE,
    );
    let dims = &launch.dims;
    let tile = inner.config.tile as usize;
    let threads = inner.config.threads() as usize;
    let tiles = |w: usize| w.div_ceil(tile);
    super::submit_passes(ctx, "forward", |passes| {
        for (i, s) in launch.segments.iter().enumerate() {
            let (q, k, v, o) = (
                bind(io.q.buffer(), s.q),
                bind(io.k.buffer(), s.k),
                bind(io.v.buffer(), s.v),
                bind(io.o, s.o),
            );
            let states = bind(
                scratch.buffer(),
                Window {
                    offset: 0,
                    size: s.scratch_bytes,
                    base: 0,
                },
            );
            let carry = bind(io.state.buffer(), s.state);
            let blocks = s.bh_count * s.blocks;
            let [block_state, scan, output] = &pipes;
            // Timing labels name the pass, whichever kernel runs it.
            let [n_state, n_scan, n_output] = Pass::CHUNK.map(Pass::name);
            let state_groups = if coop {
                // One workgroup per 64 columns of e.
                s.bh_count * s.blocks.div_ceil(STRIPE) * dims.e.div_ceil(64)
            } else {
                s.bh_count * s.blocks.div_ceil(STRIPE) * tiles(dims.d) * tiles(dims.e)
            };
            dispatch(
                ctx,
                passes.pass(n_state),
                &common,
                block_state,
                i,
                &[k.clone(), v.clone(), states.clone()],
                state_groups,
            );
            dispatch(
                ctx,
                passes.pass(n_scan),
                &common,
                scan,
                i,
                &[states.clone(), carry],
                (s.bh_count * dims.d * dims.e)
                    .div_ceil(threads)
                    .min(SCAN_GROUPS),
            );
            dispatch(
                ctx,
                passes.pass(n_output),
                &common,
                output,
                i,
                &if coop {
                    vec![q, k, v, states.clone(), o, states]
                } else {
                    vec![q, k, v, states, o]
                },
                blocks,
            );
        }
    })
    .await
}
