//! Property tests: random problems through the library against the f64
//! reference, and random malformed inputs through validation, which must
//! come back as the typed error of the mutation made, never a panic. 1100
//! cases a run, each small; the seed is fresh (printed) and a failure
//! names it (`LIGHTNING_SEED` replays it).

mod common;

use lightning_wgpu::{
    reference, BackwardOptions, Context, DType, DecodeOptions, Dims, Error, ForwardOptions, Layout,
    Method, Tensor,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use rand::RngExt;

fn runner(cases: u32, seed: u64) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    })
}

/// The shape of one random problem.
#[derive(Clone, Copy, Debug)]
struct Shape {
    dims: Dims,
    layout: Layout,
    dtype: DType,
    method: Method,
    initial_state: bool,
    packed: bool,
    scale: f32,
    slope_factor: f32,
    data: u64,
}

fn shapes() -> impl Strategy<Value = Shape> {
    (
        (
            1usize..=2,
            1usize..=3,
            1usize..=140,
            1usize..=40,
            1usize..=40,
        ),
        prop::bool::ANY,
        0usize..3,
        prop::bool::ANY,
        prop::bool::ANY,
        prop::bool::ANY,
        prop::sample::select(vec![1.0f32, 0.25, -0.5, 2.0]),
        prop::sample::select(vec![0.0f32, 0.5, 1.0, 4.0]),
        any::<u64>(),
    )
        .prop_map(
            |(
                (b, h, n, d, e),
                bnhd,
                dtype,
                recurrent,
                initial_state,
                packed,
                scale,
                slope_factor,
                data,
            )| Shape {
                dims: Dims {
                    b: if packed { 1 } else { b },
                    h,
                    n,
                    d,
                    e,
                },
                layout: if bnhd { Layout::Bnhd } else { Layout::Bhnd },
                dtype: [DType::F32, DType::F16, DType::BF16][dtype],
                method: if recurrent {
                    Method::Recurrent
                } else {
                    Method::Chunk
                },
                initial_state,
                packed,
                scale,
                slope_factor,
                data,
            },
        )
}

fn check_forward(ctx: &Context, s: Shape) -> Result<(), TestCaseError> {
    let Dims { b, h, n, d, e } = s.dims;
    let mut rng = common::rng(s.data);
    let round = |x: Vec<f32>| common::rounded(&x, s.dtype);
    let q = round(common::random(&mut rng, b * h * n * d, d));
    let k = round(common::random(&mut rng, b * h * n * d, d));
    let v = round(common::random(&mut rng, b * h * n * e, 1));
    let cu: Option<Vec<usize>> = (s.packed && n > 1).then(|| {
        let mut cuts: Vec<usize> = (0..rng.random_range(1..4))
            .map(|_| rng.random_range(1..n))
            .collect();
        cuts.push(0);
        cuts.push(n);
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    });
    let states = cu.as_ref().map_or(b, |c| c.len() - 1);
    let s0 = common::random(&mut rng, states * h * d * e, 1);
    let slopes: Vec<f32> = lightning_wgpu::alibi_slopes(h)
        .iter()
        .map(|x| x * s.slope_factor)
        .collect();
    let (qs, vs) = (s.layout.shape(b, h, n, d), s.layout.shape(b, h, n, e));
    let state_shape = [states, h, d, e];
    let s0_t = ctx.tensor(&s0, &state_shape).unwrap();
    let opts = ForwardOptions {
        slopes: Some(&slopes),
        scale: s.scale,
        layout: s.layout,
        initial_state: s.initial_state.then_some(&s0_t),
        output_final_state: true,
        method: s.method,
        cu_seqlens: cu.as_deref(),
    };
    let mut o = common::poisoned_as(ctx, &vs, s.dtype);
    let mut state = common::poisoned(ctx, &state_shape);
    let up = |x: &[f32], shape: [usize; 4]| ctx.tensor_as(x, &shape, s.dtype).unwrap();
    ctx.forward_into(
        &up(&q, qs),
        &up(&k, qs),
        &up(&v, vs),
        &opts,
        &mut o,
        Some(&mut state),
    )
    .map_err(|err| TestCaseError::fail(format!("{s:?}: {err}")))?;
    let (o, state) = (ctx.read(&o).unwrap(), ctx.read(&state).unwrap());
    for p in common::parts(&s.dims, cu.as_deref(), s0.len()) {
        let part = |x: &[f32], w: usize| p.of(x, s.layout, &s.dims, w);
        let init = s.initial_state.then(|| &s0[p.states.clone()]);
        let want = reference::forward(
            p.dims,
            s.layout,
            &part(&q, d),
            &part(&k, d),
            &part(&v, e),
            &slopes,
            s.scale,
            init,
        );
        let eo = reference::relative_error(&part(&o, e), &want.o);
        let es = reference::relative_error(&state[p.states.clone()], &want.final_state);
        prop_assert!(
            eo <= common::tolerance(s.dtype),
            "{s:?} rows {:?}: o {eo:e}",
            p.rows
        );
        prop_assert!(es <= 1e-5, "{s:?} rows {:?}: state {es:e}", p.rows);
    }
    Ok(())
}

#[test]
fn random_problems_match_the_reference() {
    let ctx = common::context(false);
    let seed = common::seed();
    runner(300, seed)
        .run(&shapes(), |s| check_forward(&ctx, s))
        .unwrap_or_else(|e| panic!("{e} (seed {seed}; replay with LIGHTNING_SEED={seed})"));
}

/// One way to make a valid call invalid, and the error it must give.
#[derive(Clone, Copy, Debug)]
enum Mutation {
    QRank,
    KLength,
    VBatch,
    EmptyDim,
    SlopeCount,
    BadSlope(f32),
    BadScale(f32),
    StateShape,
    CuStart,
    CuOrder,
    CuEnd,
    MixedStorage,
    HeadDimTooLarge,
    OutputShape,
    SlotOutOfRange,
    DuplicateSlot,
    GradientShape,
}

fn mutations() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::QRank),
        Just(Mutation::KLength),
        Just(Mutation::VBatch),
        Just(Mutation::EmptyDim),
        Just(Mutation::SlopeCount),
        prop::sample::select(vec![f32::NAN, -1.0, f32::INFINITY, -0.0001])
            .prop_map(Mutation::BadSlope),
        prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY])
            .prop_map(Mutation::BadScale),
        Just(Mutation::StateShape),
        Just(Mutation::CuStart),
        Just(Mutation::CuOrder),
        Just(Mutation::CuEnd),
        Just(Mutation::MixedStorage),
        Just(Mutation::HeadDimTooLarge),
        Just(Mutation::OutputShape),
        Just(Mutation::SlotOutOfRange),
        Just(Mutation::DuplicateSlot),
        Just(Mutation::GradientShape),
    ]
}

/// The error of a valid call of `dims` after `m`, or a failure naming why not.
fn mutated(ctx: &Context, dims: Dims, layout: Layout, m: Mutation) -> Result<Error, String> {
    let Dims { b, h, n, d, e } = dims;
    let zeros = |shape: &[usize]| {
        ctx.tensor(&vec![0.25; shape.iter().product()], shape)
            .unwrap()
    };
    let qs = layout.shape(b, h, n, d);
    let vs = layout.shape(b, h, n, e);
    let (q, k, v) = (zeros(&qs), zeros(&qs), zeros(&vs));
    let slopes = vec![0.5; h];
    let opts = ForwardOptions {
        slopes: Some(&slopes),
        layout,
        ..Default::default()
    };
    let fwd = |q: &Tensor, k: &Tensor, v: &Tensor, o: &ForwardOptions| {
        ctx.forward(q, k, v, o).map(|_| ())
    };
    let result = match m {
        Mutation::QRank => fwd(&zeros(&qs[..3]), &k, &v, &opts),
        Mutation::KLength => {
            let short = layout.shape(b, h, n + 1, d);
            fwd(&q, &zeros(&short), &v, &opts)
        }
        Mutation::VBatch => fwd(&q, &k, &zeros(&layout.shape(b + 1, h, n, e)), &opts),
        Mutation::EmptyDim => {
            let empty = layout.shape(b, h, 0, d);
            fwd(
                &zeros(&empty),
                &zeros(&empty),
                &zeros(&layout.shape(b, h, 0, e)),
                &opts,
            )
        }
        Mutation::SlopeCount => {
            let more = vec![0.5; h + 1];
            fwd(
                &q,
                &k,
                &v,
                &ForwardOptions {
                    slopes: Some(&more),
                    ..opts
                },
            )
        }
        Mutation::BadSlope(x) => {
            let mut bad = slopes.clone();
            bad[h - 1] = x;
            fwd(
                &q,
                &k,
                &v,
                &ForwardOptions {
                    slopes: Some(&bad),
                    ..opts
                },
            )
        }
        Mutation::BadScale(x) => fwd(&q, &k, &v, &ForwardOptions { scale: x, ..opts }),
        Mutation::StateShape => {
            let s0 = zeros(&[b, h, e, d + 1]);
            fwd(
                &q,
                &k,
                &v,
                &ForwardOptions {
                    initial_state: Some(&s0),
                    ..opts
                },
            )
        }
        Mutation::CuStart | Mutation::CuOrder | Mutation::CuEnd => {
            let (q1, k1, v1) = (
                zeros(&layout.shape(1, h, n, d)),
                zeros(&layout.shape(1, h, n, d)),
                zeros(&layout.shape(1, h, n, e)),
            );
            let cu = match m {
                Mutation::CuStart => vec![1, n],
                Mutation::CuOrder => vec![0, n, n],
                _ => vec![0, n + 1],
            };
            fwd(
                &q1,
                &k1,
                &v1,
                &ForwardOptions {
                    cu_seqlens: Some(&cu),
                    ..opts
                },
            )
        }
        Mutation::MixedStorage => {
            let half = ctx
                .tensor_as(&vec![0.25; qs.iter().product()], &qs, DType::F16)
                .unwrap();
            fwd(&q, &half, &v, &opts)
        }
        Mutation::HeadDimTooLarge => {
            let wide = layout.shape(b, h, n, lightning_wgpu::MAX_HEAD_DIM + 1);
            lightning_wgpu::problem_dims(layout, &wide, &wide, &vs).map(|_| ())
        }
        Mutation::OutputShape => {
            let mut o = zeros(&layout.shape(b, h, n, e + 1));
            ctx.forward_into(&q, &k, &v, &opts, &mut o, None)
        }
        Mutation::SlotOutOfRange | Mutation::DuplicateSlot => {
            let one = |w: usize| zeros(&[2, h, w]);
            let mut cache = zeros(&[3, h, d, e]);
            let slots = if matches!(m, Mutation::SlotOutOfRange) {
                [0, 3]
            } else {
                [2, 2]
            };
            ctx.decode_step(
                &one(d),
                &one(d),
                &one(e),
                &mut cache,
                &slots,
                &DecodeOptions::default(),
            )
            .map(|_| ())
        }
        Mutation::GradientShape => {
            let d_o = zeros(&layout.shape(b, h, n, e + 1));
            ctx.backward(
                &q,
                &k,
                &v,
                &d_o,
                &BackwardOptions {
                    forward: opts,
                    d_final_state: None,
                },
            )
            .map(|_| ())
        }
    };
    result
        .err()
        .ok_or_else(|| format!("{m:?} on {dims:?} {layout} was accepted"))
}

fn expected(m: Mutation, err: &Error) -> bool {
    use Mutation::*;
    match m {
        QRank => matches!(err, Error::Rank { arg: "q", .. }),
        KLength => matches!(
            err,
            Error::ShapeMismatch {
                arg: "k",
                dim: "n",
                ..
            }
        ),
        VBatch => matches!(
            err,
            Error::ShapeMismatch {
                arg: "v",
                dim: "batch",
                ..
            }
        ),
        EmptyDim => matches!(err, Error::Empty { dim: "n", .. }),
        SlopeCount | BadSlope(_) => matches!(err, Error::Slopes(_)),
        BadScale(_) => matches!(err, Error::InvalidValue { arg: "scale", .. }),
        StateShape => matches!(
            err,
            Error::ShapeMismatch {
                arg: "initial_state",
                ..
            }
        ),
        CuStart | CuOrder | CuEnd => matches!(err, Error::CuSeqlens(_)),
        MixedStorage => matches!(err, Error::DType { arg: "k", .. }),
        HeadDimTooLarge => matches!(err, Error::DimTooLarge { .. }),
        OutputShape => matches!(err, Error::ShapeMismatch { arg: "o", .. }),
        SlotOutOfRange => matches!(err, Error::SlotOutOfRange { .. }),
        DuplicateSlot => matches!(err, Error::DuplicateSlot { .. }),
        GradientShape => matches!(err, Error::ShapeMismatch { arg: "d_o", .. }),
    }
}

#[test]
fn malformed_inputs_give_the_error_of_what_is_wrong() {
    let ctx = common::context(false);
    let seed = common::seed();
    let cases = (
        (
            1usize..=2,
            1usize..=3,
            1usize..=20,
            1usize..=12,
            1usize..=12,
        ),
        prop::bool::ANY,
        mutations(),
    );
    runner(800, seed)
        .run(&cases, |((b, h, n, d, e), bnhd, m)| {
            let layout = if bnhd { Layout::Bnhd } else { Layout::Bhnd };
            let err =
                mutated(&ctx, Dims { b, h, n, d, e }, layout, m).map_err(TestCaseError::fail)?;
            prop_assert!(expected(m, &err), "{m:?}: {err:?}");
            // Every message names what is wrong in words a user reads.
            prop_assert!(!err.to_string().is_empty());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e} (seed {seed}; replay with LIGHTNING_SEED={seed})"));
}
