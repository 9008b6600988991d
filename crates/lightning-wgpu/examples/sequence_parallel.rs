//! Sequence parallelism over MPI: every rank holds a slice of one sequence
//! (uneven slices), runs the forward and backward on it, and checks its
//! slice against one whole-sequence run (f32, within 1e-5 of the largest
//! entry). Exits non-zero on any rank's mismatch, so `mpirun` fails too.
//!
//! ```text
//! cargo build -p lightning-wgpu --features mpi --example sequence_parallel
//! mpirun -np 3 target/debug/examples/sequence_parallel
//! ```

use ::mpi::traits::Communicator;
use lightning_wgpu::{alibi_slopes, mpi as lmpi, BackwardOptions, Dims, ForwardOptions, Layout};

/// Deterministic values in [-1/sqrt(w), 1/sqrt(w)), the same on every rank.
fn values(len: usize, seed: u64, width: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let s = 1.0 / (width as f32).sqrt();
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * s
        })
        .collect()
}

/// Rows r0..r1 of a (b, h, n, w) tensor in layout l.
fn rows(x: &[f32], l: Layout, dims: &Dims, w: usize, r0: usize, r1: usize) -> Vec<f32> {
    l.rows(x, dims, w, r0..r1)
}

fn worst(got: &[f32], want: &[f32]) -> f64 {
    let peak = want.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    let err = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs())
        .fold(
            0f64,
            |m, x| if x.is_nan() { f64::INFINITY } else { m.max(x) },
        );
    err / peak
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let universe = ::mpi::initialize().ok_or("MPI was already initialised")?;
    let world = universe.world();
    let (rank, ranks) = (world.rank() as usize, world.size() as usize);
    let ctx = lmpi::context_for_rank(&world)?;
    let mut failed = Vec::new();
    for (case, layout) in [Layout::Bhnd, Layout::Bnhd].into_iter().enumerate() {
        let dims = Dims {
            b: 2,
            h: 3,
            n: 97 + ranks,
            d: 8,
            e: 12,
        };
        let Dims { b, h, n, d, e } = dims;
        // Uneven slices: rank r holds 1 + (a share that grows with r).
        let weights: Vec<usize> = (0..ranks).map(|r| r + 1).collect();
        let total: usize = weights.iter().sum();
        let mut lens: Vec<usize> = weights
            .iter()
            .map(|w| 1 + (n - ranks) * w / total)
            .collect();
        let short = n - lens.iter().sum::<usize>();
        lens[ranks - 1] += short;
        let r0: usize = lens[..rank].iter().sum();
        let len = lens[rank];

        let seed = 40 + case as u64;
        let (q, k, v) = (
            values(b * h * n * d, seed, d),
            values(b * h * n * d, seed + 1, d),
            values(b * h * n * e, seed + 2, 1),
        );
        let (d_o, s0, dsn) = (
            values(b * h * n * e, seed + 3, 1),
            values(b * h * d * e, seed + 4, 1),
            values(b * h * d * e, seed + 5, 1),
        );
        let slopes = alibi_slopes(h);
        let shape = |len, w| layout.shape(b, h, len, w);
        let state = |x: &[f32]| ctx.tensor(x, &[b, h, d, e]);
        let (s0_t, dsn_t) = (state(&s0)?, state(&dsn)?);
        let opts = ForwardOptions {
            slopes: Some(&slopes),
            scale: 0.5,
            layout,
            initial_state: Some(&s0_t),
            output_final_state: true,
            ..Default::default()
        };
        let bopts = BackwardOptions {
            forward: opts,
            d_final_state: Some(&dsn_t),
        };

        // The whole sequence on this rank, to compare with.
        let t = |x: &[f32], w| ctx.tensor(x, &shape(n, w));
        let (qt, kt, vt, dot) = (t(&q, d)?, t(&k, d)?, t(&v, e)?, t(&d_o, e)?);
        let whole = ctx.forward(&qt, &kt, &vt, &opts)?;
        let whole_g = ctx.backward(&qt, &kt, &vt, &dot, &bopts)?;

        let s = |x: &[f32], w| ctx.tensor(&rows(x, layout, &dims, w, r0, r0 + len), &shape(len, w));
        let (qs, ks, vs, dos) = (s(&q, d)?, s(&k, d)?, s(&v, e)?, s(&d_o, e)?);
        let out = ctx.forward_sequence_parallel(&qs, &ks, &vs, &opts, &world)?;
        let g = ctx.backward_sequence_parallel(&qs, &ks, &vs, &dos, &bopts, &world)?;

        let mine = |t: &lightning_wgpu::Tensor, w| -> Result<Vec<f32>, lightning_wgpu::Error> {
            Ok(rows(&ctx.read(t)?, layout, &dims, w, r0, r0 + len))
        };
        let mut errors = vec![
            ("o", worst(&ctx.read(&out.o)?, &mine(&whole.o, e)?)),
            (
                "final state",
                worst(
                    &ctx.read(out.final_state.as_ref().ok_or("no final state")?)?,
                    &ctx.read(whole.final_state.as_ref().ok_or("no final state")?)?,
                ),
            ),
            ("dq", worst(&ctx.read(&g.dq)?, &mine(&whole_g.dq, d)?)),
            ("dk", worst(&ctx.read(&g.dk)?, &mine(&whole_g.dk, d)?)),
            ("dv", worst(&ctx.read(&g.dv)?, &mine(&whole_g.dv, e)?)),
        ];
        if rank == 0 {
            errors.push((
                "d initial state",
                worst(
                    &ctx.read(&g.d_initial_state)?,
                    &ctx.read(&whole_g.d_initial_state)?,
                ),
            ));
        }
        // NaN fails too.
        let bad: Vec<_> = errors
            .iter()
            .filter(|(_, x)| x.is_nan() || *x > 1e-5)
            .collect();
        let summary: Vec<String> = errors
            .iter()
            .map(|(what, x)| format!("{what} {x:.1e}"))
            .collect();
        println!(
            "rank {rank}/{ranks} {layout:?} rows {r0}..{}: {}",
            r0 + len,
            summary.join(", ")
        );
        failed.extend(
            bad.iter()
                .map(|(what, x)| format!("{layout:?} {what}: {x:.2e}")),
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("rank {rank}: {}", failed.join("; ")).into())
    }
}
