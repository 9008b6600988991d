//! The numerics as data: each op against the f64 reference for every
//! storage x path x bounds checks x layout, one test per combination (named
//! `op::storage::path::checks::layout`). Inputs are random with a fresh
//! seed (printed; `LIGHTNING_SEED` replays), shapes odd (n not a multiple of
//! the block, d != e), outputs poisoned with NaN before each run.
//!
//! Tolerances, relative error `||got - ref|| / ||ref||` on the rounded
//! inputs: f32 1e-5; f16 2e-3; bf16 1e-2 (outputs are stored in the same
//! type, so the bound covers their rounding). States are f32 always: 1e-5,
//! but on the tensor-core path, which rounds the carried state to f16,
//! the tolerance of the dtype.
//!
//! The tensor-core path runs only where the adapter has cooperative
//! matrices (not on lavapipe): there its tests check that requiring it is
//! refused with a typed error, and say so.

mod common;

use common::{Path, Problem, Store};
use lightning_wgpu::{
    reference, BackwardOptions, Context, DType, DecodeOptions, Error, ForwardOptions, Layout,
    Method,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Forward,
    Recurrent,
    Packed,
    Backward,
    PackedBackward,
    Decode,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    op: Op,
    store: Store,
    path: Path,
    checked: bool,
    layout: Layout,
}

/// Runs one case, or checks the tensor-core refusal where the adapter has none.
fn run(case: Case) {
    let ctx = match common::context_for(case.store, case.path, case.checked) {
        Ok(ctx) => ctx,
        Err(Error::MissingFeature { option, .. }) if case.path == Path::TensorCores => {
            assert_eq!(option, "cooperative_matrix");
            eprintln!("{case:?}: no tensor cores on this adapter; the refusal is typed");
            return;
        }
        Err(e) => panic!("{case:?}: no context: {e}"),
    };
    if case.path == Path::TensorCores {
        assert!(ctx.cooperative_matrix());
    }
    let seed = common::seed();
    let p = Problem::random(
        seed,
        case.store.dtype(),
        case.path,
        case.layout,
        matches!(case.op, Op::Packed | Op::PackedBackward),
    );
    eprintln!("{case:?} {:?} cu {:?} (seed {seed})", p.dims, p.cu);
    match case.op {
        Op::Forward | Op::Packed => forward(&ctx, &p, Method::Chunk, case, seed),
        Op::Recurrent => forward(&ctx, &p, Method::Recurrent, case, seed),
        Op::Backward | Op::PackedBackward => backward(&ctx, &p, case, seed),
        Op::Decode => decode(&ctx, &p, case, seed),
    }
}

fn forward(ctx: &Context, p: &Problem, method: Method, case: Case, seed: u64) {
    let dtype = p.dtype;
    let mut o = common::poisoned_as(ctx, &p.v_shape(), dtype);
    let mut state = common::poisoned(ctx, &p.state_shape());
    let s0 = ctx.tensor(&p.s0, &p.state_shape()).unwrap();
    let opts = ForwardOptions {
        slopes: Some(&p.slopes),
        scale: p.scale,
        layout: p.layout,
        initial_state: Some(&s0),
        method,
        cu_seqlens: p.cu.as_deref(),
        ..Default::default()
    };
    let (q, k, v) = p.upload(ctx);
    ctx.forward_into(&q, &k, &v, &opts, &mut o, Some(&mut state))
        .unwrap_or_else(|e| panic!("{case:?} (seed {seed}): {e}"));
    assert_eq!(o.dtype(), dtype);
    let (o, state) = (ctx.read(&o).unwrap(), ctx.read(&state).unwrap());
    let state_tol = p.state_tolerance(case.path);
    for (i, part) in p.parts().iter().enumerate() {
        let want = p.reference_forward(part);
        let eo = reference::relative_error(&p.part(part, &o, p.dims.e), &want.o);
        let es = reference::relative_error(&state[part.states.clone()], &want.final_state);
        assert!(
            eo <= p.tolerance() && es <= state_tol,
            "{case:?} sequence {i} (seed {seed}): o {eo:e}, state {es:e}"
        );
    }
}

fn backward(ctx: &Context, p: &Problem, case: Case, seed: u64) {
    let s0 = ctx.tensor(&p.s0, &p.state_shape()).unwrap();
    let dsn = ctx.tensor(&p.dsn, &p.state_shape()).unwrap();
    let opts = BackwardOptions {
        forward: ForwardOptions {
            slopes: Some(&p.slopes),
            scale: p.scale,
            layout: p.layout,
            initial_state: Some(&s0),
            cu_seqlens: p.cu.as_deref(),
            ..Default::default()
        },
        d_final_state: Some(&dsn),
    };
    let (q, k, v) = p.upload(ctx);
    let d_o = ctx.tensor_as(&p.d_o, &p.v_shape(), p.dtype).unwrap();
    let g = ctx
        .backward(&q, &k, &v, &d_o, &opts)
        .unwrap_or_else(|e| panic!("{case:?} (seed {seed}): {e}"));
    for t in [&g.dq, &g.dk, &g.dv] {
        assert_eq!(t.dtype(), p.dtype);
    }
    let read = |t| ctx.read(t).unwrap();
    let (dq, dk, dv, ds0) = (
        read(&g.dq),
        read(&g.dk),
        read(&g.dv),
        read(&g.d_initial_state),
    );
    let (d, e) = (p.dims.d, p.dims.e);
    for (i, part) in p.parts().iter().enumerate() {
        let want = p.reference_backward(part);
        for (name, got, want, tol) in [
            ("dq", p.part(part, &dq, d), &want.dq, p.tolerance()),
            ("dk", p.part(part, &dk, d), &want.dk, p.tolerance()),
            ("dv", p.part(part, &dv, e), &want.dv, p.tolerance()),
            (
                "dS0",
                ds0[part.states.clone()].to_vec(),
                &want.d_initial_state,
                p.state_tolerance(case.path),
            ),
        ] {
            let err = reference::relative_error(&got, want);
            assert!(
                err <= tol,
                "{case:?} sequence {i} {name} (seed {seed}): {err:e}"
            );
        }
    }
}

/// A few decode steps for a batch of requests (one of them padding) against
/// a cache of more slots than requests, step by step against the recurrence.
fn decode(ctx: &Context, p: &Problem, case: Case, seed: u64) {
    let (h, d, e) = (p.dims.h, p.dims.d, p.dims.e);
    let requests = p.dims.b + 1;
    let slots_n = requests + 2;
    let size = h * d * e;
    // Request r uses slot slots_n - 1 - r; the last request is padding.
    let slots: Vec<i32> = (0..requests)
        .map(|r| {
            if r + 1 == requests {
                -1
            } else {
                (slots_n - 1 - r) as i32
            }
        })
        .collect();
    let mut rng = common::rng(seed ^ 0xdec0de);
    let mut cache_host = common::random(&mut rng, slots_n * size, 1);
    let mut cache = ctx.tensor(&cache_host, &[slots_n, h, d, e]).unwrap();
    let opts = DecodeOptions {
        slopes: Some(&p.slopes),
        scale: p.scale,
    };
    for step in 0..3 {
        let q = common::rounded(&common::random(&mut rng, requests * h * d, d), p.dtype);
        let k = common::rounded(&common::random(&mut rng, requests * h * d, d), p.dtype);
        let v = common::rounded(&common::random(&mut rng, requests * h * e, 1), p.dtype);
        let up = |x: &[f32], w: usize| ctx.tensor_as(x, &[requests, h, w], p.dtype).unwrap();
        let o = ctx
            .decode_step(
                &up(&q, d),
                &up(&k, d),
                &up(&v, e),
                &mut cache,
                &slots,
                &opts,
            )
            .unwrap_or_else(|err| panic!("{case:?} step {step} (seed {seed}): {err}"));
        let o = ctx.read(&o).unwrap();
        for (r, &slot) in slots.iter().enumerate() {
            let got = &o[r * h * e..(r + 1) * h * e];
            if slot < 0 {
                assert!(
                    got.iter().all(|&x| x == 0.0),
                    "padding request {r} output {got:?}"
                );
                continue;
            }
            let at = slot as usize * size;
            let one = lightning_wgpu::Dims {
                b: 1,
                h,
                n: 1,
                d,
                e,
            };
            let want = reference::forward(
                one,
                Layout::Bhnd,
                &q[r * h * d..(r + 1) * h * d],
                &k[r * h * d..(r + 1) * h * d],
                &v[r * h * e..(r + 1) * h * e],
                &p.slopes,
                p.scale,
                Some(&cache_host[at..at + size]),
            );
            let err = reference::relative_error(got, &want.o);
            assert!(
                err <= p.tolerance(),
                "{case:?} step {step} request {r} (seed {seed}): {err:e}"
            );
            for (x, w) in cache_host[at..at + size].iter_mut().zip(&want.final_state) {
                *x = *w as f32;
            }
        }
        let got = ctx.read(&cache).unwrap();
        let want: Vec<f64> = cache_host.iter().map(|&x| x as f64).collect();
        let err = reference::relative_error(&got, &want);
        assert!(
            err <= 1e-5,
            "{case:?} step {step} cache (seed {seed}): {err:e}"
        );
        // Continue from what the GPU holds, so errors do not compound.
        cache_host = got;
    }
}

macro_rules! layouts {
    ($op:expr, $store:expr, $path:expr, $checked:expr) => {
        #[test]
        fn bhnd() {
            crate::run(crate::Case {
                op: $op,
                store: $store,
                path: $path,
                checked: $checked,
                layout: lightning_wgpu::Layout::Bhnd,
            });
        }
        #[test]
        fn bnhd() {
            crate::run(crate::Case {
                op: $op,
                store: $store,
                path: $path,
                checked: $checked,
                layout: lightning_wgpu::Layout::Bnhd,
            });
        }
    };
}

macro_rules! checks {
    ($op:expr, $store:expr, $path:expr) => {
        mod unchecked {
            layouts!($op, $store, $path, false);
        }
        mod checked {
            layouts!($op, $store, $path, true);
        }
    };
}

macro_rules! paths {
    ($op:expr, $store:expr; $($path:ident => $p:expr),*) => {
        $(mod $path {
            checks!($op, $store, $p);
        })*
    };
}

macro_rules! stores {
    ($op:expr; $($store:ident => $s:expr; [$($path:ident => $p:expr),*]),*) => {
        $(mod $store {
            paths!($op, $s; $($path => $p),*);
        })*
    };
}

/// The combinations an op runs: f32 on the portable path only (the tensor
/// cores take halves), halves on both.
macro_rules! op {
    ($name:ident, $op:expr, halves on tensor cores) => {
        mod $name {
            stores!($op;
                f32 => crate::common::Store::F32; [portable => crate::common::Path::Portable],
                f16 => crate::common::Store::F16; [portable => crate::common::Path::Portable, tensor_cores => crate::common::Path::TensorCores],
                f16_packed => crate::common::Store::F16Packed; [portable => crate::common::Path::Portable],
                bf16 => crate::common::Store::Bf16; [portable => crate::common::Path::Portable, tensor_cores => crate::common::Path::TensorCores]);
        }
    };
    ($name:ident, $op:expr, portable only) => {
        mod $name {
            stores!($op;
                f32 => crate::common::Store::F32; [portable => crate::common::Path::Portable],
                f16 => crate::common::Store::F16; [portable => crate::common::Path::Portable],
                f16_packed => crate::common::Store::F16Packed; [portable => crate::common::Path::Portable],
                bf16 => crate::common::Store::Bf16; [portable => crate::common::Path::Portable]);
        }
    };
}

op!(forward, crate::Op::Forward, halves on tensor cores);
op!(packed, crate::Op::Packed, halves on tensor cores);
op!(backward, crate::Op::Backward, halves on tensor cores);
op!(packed_backward, crate::Op::PackedBackward, halves on tensor cores);
op!(recurrent, crate::Op::Recurrent, portable only);
op!(decode, crate::Op::Decode, portable only);

#[test]
fn the_matrix_covers_every_storage() {
    // A new storage type must join the matrix above.
    let all = [DType::F32, DType::F16, DType::BF16];
    for dtype in all {
        assert!(common::Store::ALL.iter().any(|s| s.dtype() == dtype));
    }
}
