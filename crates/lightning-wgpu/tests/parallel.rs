//! Sequence parallelism: the forward and backward over a sequence split
//! across R ranks (threads sharing one device, exchanging through an
//! in-process all-gather) equal one call over the whole sequence: f32 within
//! 1e-5 of the largest entry, f16 within its storage tolerance. Uneven
//! slices, both layouts, an initial state and a final-state gradient. The
//! same runs over MPI in `examples/sequence_parallel.rs` (CI: mpirun).

mod common;

use std::sync::{Arc, Barrier, Mutex};

use common::{random, rng, rows, seed};
use lightning_wgpu::{
    alibi_slopes, BackwardOptions, Context, DType, Dims, Error, Exchange, ForwardOptions, Layout,
    Result,
};

/// An all-gather between threads: each writes its bytes, all wait, all read.
struct Room {
    rank: usize,
    shared: Arc<(Mutex<Vec<Vec<u8>>>, Barrier)>,
}

impl Exchange for Room {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.shared.0.lock().unwrap().len()
    }

    fn all_gather(&self, mine: &[u8]) -> Result<Vec<u8>> {
        let (slots, barrier) = &*self.shared;
        slots.lock().unwrap()[self.rank] = mine.to_vec();
        barrier.wait();
        let all = slots.lock().unwrap().concat();
        // Nobody writes the next round before everyone has read this one.
        barrier.wait();
        Ok(all)
    }
}

fn rooms(ranks: usize) -> Vec<Room> {
    let shared = Arc::new((Mutex::new(vec![Vec::new(); ranks]), Barrier::new(ranks)));
    (0..ranks)
        .map(|rank| Room {
            rank,
            shared: shared.clone(),
        })
        .collect()
}

struct Case {
    dims: Dims,
    layout: Layout,
    dtype: DType,
    /// Slice lengths, one per rank (they sum to n).
    slices: Vec<usize>,
    /// q heads per kv head (grouped heads when above 1).
    group: usize,
}

fn max_error(got: &[f32], want: &[f32]) -> (f64, f64) {
    let peak = want.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    let worst = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g.is_finite() {
                (g as f64 - w as f64).abs()
            } else {
                f64::INFINITY
            }
        })
        .fold(0f64, f64::max);
    (worst, peak)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (worst, peak) = max_error(got, want);
    assert!(peak > 0.0, "{what}: the expected values are all zero");
    assert!(
        worst <= tol * peak,
        "{what}: max error {worst:.3e} against a peak of {peak:.3e}"
    );
}

/// One case: the whole-sequence run, then each rank's slice on its thread.
fn check(ctx: &Context, case: &Case, seed: u64) {
    let Dims { b, h, n, d, e } = case.dims;
    let dims = case.dims;
    let hq = h * case.group;
    // q, o and dO have q's heads.
    let q_dims = Dims { h: hq, ..dims };
    let l = case.layout;
    let mut r = rng(seed);
    let q = random(&mut r, b * hq * n * d, d);
    let k = random(&mut r, b * h * n * d, d);
    let v = random(&mut r, b * h * n * e, 1);
    let d_o = random(&mut r, b * hq * n * e, 1);
    let s0 = random(&mut r, b * h * d * e, 1);
    let dsn = random(&mut r, b * h * d * e, 1);
    let slopes = alibi_slopes(h);
    let tol = if case.dtype == DType::F32 { 1e-5 } else { 2e-3 };
    let up = |x: &[f32], shape: &[usize]| ctx.tensor_as(x, shape, case.dtype).expect("upload");
    let state = |x: &[f32]| ctx.tensor(x, &[b, h, d, e]).expect("upload");
    let (s0_t, dsn_t) = (state(&s0), state(&dsn));
    let opts = ForwardOptions {
        slopes: Some(&slopes),
        scale: 0.7,
        layout: l,
        initial_state: Some(&s0_t),
        output_final_state: true,
        ..Default::default()
    };
    let shape = |heads: usize, len: usize, w: usize| l.shape(b, heads, len, w);
    let (qt, kt, vt, dot) = (
        up(&q, &shape(hq, n, d)),
        up(&k, &shape(h, n, d)),
        up(&v, &shape(h, n, e)),
        up(&d_o, &shape(hq, n, e)),
    );
    let whole = ctx.forward(&qt, &kt, &vt, &opts).expect("forward");
    let whole_o = ctx.read(&whole.o).unwrap();
    let whole_sn = ctx.read(whole.final_state.as_ref().unwrap()).unwrap();
    let bopts = BackwardOptions {
        forward: opts,
        d_final_state: Some(&dsn_t),
    };
    let g = ctx.backward(&qt, &kt, &vt, &dot, &bopts).expect("backward");
    let whole_g = [&g.dq, &g.dk, &g.dv].map(|t| ctx.read(t).unwrap());
    let whole_ds0 = ctx.read(&g.d_initial_state).unwrap();

    let ranks = case.slices.len();
    let starts: Vec<usize> = case
        .slices
        .iter()
        .scan(0, |at, &len| {
            let s = *at;
            *at += len;
            Some(s)
        })
        .collect();
    let tag = format!(
        "R={ranks} slices={:?} {l:?} {:?} group={} seed={seed}",
        case.slices, case.dtype, case.group
    );
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = rooms(ranks)
            .into_iter()
            .map(|room| {
                let (r0, len) = (starts[room.rank], case.slices[room.rank]);
                let (q, k, v, d_o, s0, dsn, slopes) = (&q, &k, &v, &d_o, &s0, &dsn, &slopes);
                scope.spawn(move || {
                    let slice = |x: &[f32], heads: usize, w| {
                        let all = Dims { h: heads, ..dims };
                        up(&rows(x, l, &all, w, r0, r0 + len), &shape(heads, len, w))
                    };
                    let (qs, ks, vs, dos) = (
                        slice(q, hq, d),
                        slice(k, h, d),
                        slice(v, h, e),
                        slice(d_o, hq, e),
                    );
                    let (s0_t, dsn_t) = (state(s0), state(dsn));
                    let opts = ForwardOptions {
                        slopes: Some(slopes),
                        scale: 0.7,
                        layout: l,
                        initial_state: Some(&s0_t),
                        output_final_state: true,
                        ..Default::default()
                    };
                    let out = ctx
                        .forward_sequence_parallel(&qs, &ks, &vs, &opts, &room)
                        .expect("forward");
                    let bopts = BackwardOptions {
                        forward: opts,
                        d_final_state: Some(&dsn_t),
                    };
                    let g = ctx
                        .backward_sequence_parallel(&qs, &ks, &vs, &dos, &bopts, &room)
                        .expect("backward");
                    let read = |t| ctx.read(t).unwrap();
                    (
                        read(&out.o),
                        read(out.final_state.as_ref().unwrap()),
                        [read(&g.dq), read(&g.dk), read(&g.dv)],
                        read(&g.d_initial_state),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank"))
            .collect()
    });
    for (rank, (o, sn, grads, ds0)) in results.iter().enumerate() {
        let (r0, len) = (starts[rank], case.slices[rank]);
        let mine = |x: &[f32], all: &Dims, w| rows(x, l, all, w, r0, r0 + len);
        assert_close(
            &format!("o of rank {rank} ({tag})"),
            o,
            &mine(&whole_o, &q_dims, e),
            tol,
        );
        assert_close(
            &format!("final state on rank {rank} ({tag})"),
            sn,
            &whole_sn,
            tol,
        );
        for ((name, got), (want, w)) in ["dq", "dk", "dv"]
            .iter()
            .zip(grads)
            .zip(whole_g.iter().zip([(&q_dims, d), (&dims, d), (&dims, e)]))
        {
            let (all, w) = w;
            assert_close(
                &format!("{name} of rank {rank} ({tag})"),
                got,
                &mine(want, all, w),
                tol,
            );
        }
        if rank == 0 {
            assert_close(&format!("d initial state ({tag})"), ds0, &whole_ds0, tol);
        }
    }
}

#[test]
fn split_runs_equal_one_run() {
    let ctx = common::context(false);
    let seed = seed();
    let dims = Dims {
        b: 2,
        h: 3,
        n: 101,
        d: 8,
        e: 12,
    };
    let cases = [
        (vec![101], Layout::Bhnd, DType::F32),
        (vec![50, 51], Layout::Bhnd, DType::F32),
        (vec![30, 1, 70], Layout::Bnhd, DType::F32),
        (vec![7, 64, 29, 1], Layout::Bhnd, DType::F32),
        (vec![40, 33, 28], Layout::Bhnd, DType::F16),
        (vec![1, 1, 99], Layout::Bnhd, DType::BF16),
    ];
    for (i, (slices, layout, dtype)) in cases.into_iter().enumerate() {
        check(
            &ctx,
            &Case {
                dims,
                layout,
                dtype,
                slices,
                group: 1,
            },
            seed + i as u64,
        );
    }
}

#[test]
fn split_runs_equal_one_run_on_small_bindings() {
    // 16 KiB bindings: in bhnd a segment holds a few of the six heads, in
    // bnhd a few rows of all of them, so each rank keeps the block states
    // of several segments between the halves of its forward.
    let ctx = common::context_with(lightning_wgpu::ContextOptions {
        max_binding_bytes: Some(16384),
        ..Default::default()
    });
    let seed = seed();
    let dims = Dims {
        b: 2,
        h: 3,
        n: 301,
        d: 8,
        e: 12,
    };
    let cases = [
        (vec![150, 151], Layout::Bhnd),
        (vec![70, 1, 230], Layout::Bnhd),
    ];
    for (i, (slices, layout)) in cases.into_iter().enumerate() {
        let case = Case {
            dims,
            layout,
            dtype: DType::F32,
            slices,
            group: 1,
        };
        check(&ctx, &case, seed + i as u64);
    }
}

#[test]
fn grouped_heads_split_runs_equal_one_run() {
    // q with 2 and 3 times k's heads: the states and slopes are per kv
    // head, the incoming state's gradient summed over each group's q heads.
    let ctx = common::context(false);
    let seed = seed();
    let dims = Dims {
        b: 2,
        h: 2,
        n: 97,
        d: 8,
        e: 12,
    };
    let cases = [
        (vec![40, 57], Layout::Bhnd, DType::F32, 2),
        (vec![30, 1, 66], Layout::Bnhd, DType::F32, 3),
        (vec![50, 47], Layout::Bhnd, DType::BF16, 2),
    ];
    for (i, (slices, layout, dtype, group)) in cases.into_iter().enumerate() {
        let case = Case {
            dims,
            layout,
            dtype,
            slices,
            group,
        };
        check(&ctx, &case, seed + i as u64);
    }
}

#[test]
fn bad_calls_are_errors() {
    let ctx = common::context(false);
    let t = |shape: &[usize]| {
        ctx.tensor(&vec![0.5; shape.iter().product()], shape)
            .unwrap()
    };
    let (q, k, v) = (t(&[1, 2, 4, 4]), t(&[1, 2, 4, 4]), t(&[1, 2, 4, 4]));
    let room = rooms(1).pop().unwrap();
    let cu = [0, 2, 4];
    let opts = ForwardOptions {
        cu_seqlens: Some(&cu),
        ..Default::default()
    };
    let err = ctx
        .forward_sequence_parallel(&q, &k, &v, &opts, &room)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidValue {
                arg: "cu_seqlens",
                ..
            }
        ),
        "{err}"
    );
    let bad = t(&[1, 2, 5, 4]);
    let err = ctx
        .forward_sequence_parallel(&q, &bad, &v, &Default::default(), &room)
        .unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { arg: "k", .. }),
        "{err}"
    );
}
