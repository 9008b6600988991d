//! Bad input is a typed error naming the problem, found on the host before
//! anything is dispatched: never a panic, a GPU fault or silent garbage.

mod common;

use lightning_wgpu::{
    Context, ContextOptions, Error, ForwardOptions, Layout, Tensor, MAX_HEAD_DIM,
};

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

fn inputs(ctx: &Context, q: &[usize], k: &[usize], v: &[usize]) -> Inputs {
    let make = |shape: &[usize]| {
        let len = shape.iter().product::<usize>();
        ctx.tensor(&common::random(&mut common::rng(7), len, 1), shape)
            .expect("tensor")
    };
    Inputs {
        q: make(q),
        k: make(k),
        v: make(v),
    }
}

fn forward_err(ctx: &Context, i: &Inputs, opts: &ForwardOptions) -> Error {
    match ctx.forward(&i.q, &i.k, &i.v, opts) {
        Ok(_) => panic!(
            "accepted bad input {:?} {:?} {:?}",
            i.q.shape(),
            i.k.shape(),
            i.v.shape()
        ),
        Err(e) => {
            eprintln!("{e}");
            e
        }
    }
}

#[test]
fn mismatched_shapes_name_the_argument_and_dimension() {
    let ctx = common::context(false);
    let opts = ForwardOptions::default();
    let err = forward_err(
        &ctx,
        &inputs(&ctx, &[1, 2, 10, 8], &[1, 2, 11, 8], &[1, 2, 10, 4]),
        &opts,
    );
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "k",
                dim: "n",
                got: 11,
                expected: 10,
                ..
            }
        ),
        "{err:?}"
    );
    let err = forward_err(
        &ctx,
        &inputs(&ctx, &[1, 2, 10, 8], &[1, 2, 10, 6], &[1, 2, 10, 4]),
        &opts,
    );
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "k",
                dim: "d",
                ..
            }
        ),
        "{err:?}"
    );
    let err = forward_err(
        &ctx,
        &inputs(&ctx, &[2, 2, 10, 8], &[2, 2, 10, 8], &[1, 2, 10, 4]),
        &opts,
    );
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "v",
                dim: "batch",
                ..
            }
        ),
        "{err:?}"
    );
    // In (b, n, h, d) the second dimension is n.
    let bnhd = ForwardOptions {
        layout: Layout::Bnhd,
        ..Default::default()
    };
    let err = forward_err(
        &ctx,
        &inputs(&ctx, &[1, 10, 2, 8], &[1, 10, 3, 8], &[1, 10, 2, 4]),
        &bnhd,
    );
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "k",
                dim: "heads",
                ..
            }
        ),
        "{err:?}"
    );
    let err = forward_err(
        &ctx,
        &inputs(&ctx, &[2, 10, 8], &[2, 10, 8], &[2, 10, 4]),
        &opts,
    );
    assert!(
        matches!(
            err,
            Error::Rank {
                arg: "q",
                expected: 4,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn empty_dimensions_are_refused() {
    let ctx = common::context(false);
    let opts = ForwardOptions::default();
    let err = forward_err(
        &ctx,
        &inputs(&ctx, &[1, 2, 0, 8], &[1, 2, 0, 8], &[1, 2, 0, 4]),
        &opts,
    );
    assert!(
        matches!(err, Error::Empty { arg: "q", dim: "n" }),
        "{err:?}"
    );
    let err = forward_err(
        &ctx,
        &inputs(&ctx, &[1, 2, 5, 0], &[1, 2, 5, 0], &[1, 2, 5, 4]),
        &opts,
    );
    assert!(
        matches!(err, Error::Empty { arg: "q", dim: "d" }),
        "{err:?}"
    );
    let err = forward_err(
        &ctx,
        &inputs(&ctx, &[1, 2, 5, 3], &[1, 2, 5, 3], &[1, 2, 5, 0]),
        &opts,
    );
    assert!(
        matches!(err, Error::Empty { arg: "v", dim: "e" }),
        "{err:?}"
    );
}

#[test]
fn head_dims_above_the_maximum_are_refused() {
    let ctx = common::context(false);
    let big = MAX_HEAD_DIM + 1;
    let err = forward_err(
        &ctx,
        &inputs(&ctx, &[1, 1, 2, big], &[1, 1, 2, big], &[1, 1, 2, 4]),
        &Default::default(),
    );
    assert!(
        matches!(
            err,
            Error::DimTooLarge {
                arg: "q",
                dim: "d",
                ..
            }
        ),
        "{err:?}"
    );
    let err = forward_err(
        &ctx,
        &inputs(&ctx, &[1, 1, 2, 4], &[1, 1, 2, 4], &[1, 1, 2, big]),
        &Default::default(),
    );
    assert!(
        matches!(
            err,
            Error::DimTooLarge {
                arg: "v",
                dim: "e",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bad_slopes_and_scale_are_refused() {
    let ctx = common::context(false);
    let i = inputs(&ctx, &[1, 3, 10, 8], &[1, 3, 10, 8], &[1, 3, 10, 8]);
    for (slopes, word) in [
        (&[0.5, 0.25][..], "expected 3 slopes"),
        (&[0.5, -0.1, 0.2][..], "slope 1"),
        (&[0.5, 0.1, f32::NAN][..], "slope 2"),
    ] {
        let err = forward_err(
            &ctx,
            &i,
            &ForwardOptions {
                slopes: Some(slopes),
                ..Default::default()
            },
        );
        assert!(
            matches!(&err, Error::Slopes(m) if m.contains(word)),
            "{err:?}"
        );
    }
    let err = forward_err(
        &ctx,
        &i,
        &ForwardOptions {
            scale: f32::INFINITY,
            ..Default::default()
        },
    );
    assert!(
        matches!(err, Error::InvalidValue { arg: "scale", .. }),
        "{err:?}"
    );
}

#[test]
fn states_and_outputs_of_the_wrong_shape_are_refused() {
    let ctx = common::context(false);
    let i = inputs(&ctx, &[2, 3, 10, 8], &[2, 3, 10, 8], &[2, 3, 10, 5]);
    let s0 = ctx.tensor(&[0.5; 2 * 3 * 5 * 8], &[2, 3, 5, 8]).unwrap(); // (d, e) swapped
    let err = forward_err(
        &ctx,
        &i,
        &ForwardOptions {
            initial_state: Some(&s0),
            ..Default::default()
        },
    );
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "initial_state",
                dim: "d",
                got: 5,
                expected: 8,
                ..
            }
        ),
        "{err:?}"
    );

    let mut o = common::poisoned(&ctx, &[2, 3, 10, 8]);
    let err = ctx
        .forward_into(&i.q, &i.k, &i.v, &Default::default(), &mut o, None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "o",
                dim: "e",
                ..
            }
        ),
        "{err:?}"
    );
    let mut o = common::poisoned(&ctx, &[2, 3, 10, 5]);
    let mut state = common::poisoned(&ctx, &[2, 3, 8]);
    let err = ctx
        .forward_into(
            &i.q,
            &i.k,
            &i.v,
            &Default::default(),
            &mut o,
            Some(&mut state),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rank {
                arg: "final_state",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn host_data_of_the_wrong_length_is_refused() {
    let ctx = common::context(false);
    let err = ctx.tensor(&[1.0; 10], &[2, 3]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DataLength {
                expected: 6,
                got: 10,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn tensors_over_the_device_limits_are_refused() {
    let ctx = common::context(false);
    // More than max_buffer_size: refused before any allocation.
    let n = (ctx.limits().max_buffer_size / 4 / 64 + 1) as usize;
    let err = ctx.tensor(&[], &[1, 1, n, 64]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                which: "max_buffer_size",
                ..
            }
        ),
        "{err:?}"
    );
    // A shape whose size overflows usize.
    let err = ctx.tensor(&[], &[usize::MAX, 4]).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");

    // One block of one head wider than the largest binding cannot be split.
    let small = common::context_with(ContextOptions {
        max_binding_bytes: Some(16 << 10),
        ..Default::default()
    });
    let d = 1024;
    let i = inputs(&small, &[1, 1, 64, d], &[1, 1, 64, d], &[1, 1, 64, 4]);
    let err = forward_err(&small, &i, &Default::default());
    assert!(
        matches!(
            err,
            Error::TooLarge {
                arg: "q",
                which: "max_storage_buffer_binding_size",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn tensors_of_another_context_are_refused() {
    let a = common::context(false);
    let b = common::context(false);
    let i = inputs(&a, &[1, 1, 4, 4], &[1, 1, 4, 4], &[1, 1, 4, 4]);
    let other = b.tensor(&[0.25; 16], &[1, 1, 4, 4]).unwrap();
    let err = a
        .forward(&i.q, &other, &i.v, &Default::default())
        .unwrap_err();
    assert!(matches!(err, Error::ForeignTensor("k")), "{err:?}");
    assert!(matches!(
        a.read(&other).unwrap_err(),
        Error::ForeignTensor(_)
    ));
}

#[test]
fn bad_context_options_are_refused() {
    let err = Context::with_options(ContextOptions {
        block_rows: Some(48),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidValue {
                arg: "block_rows",
                ..
            }
        ),
        "{err:?}"
    );
    let err = Context::with_options(ContextOptions {
        adapter: Some("no such adapter 42".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(&err, Error::NoAdapter(m) if m.contains("no such adapter 42")),
        "{err:?}"
    );
}

#[test]
fn a_destroyed_device_is_reported_as_lost() {
    let ctx = common::context(false);
    let i = inputs(&ctx, &[1, 1, 4, 4], &[1, 1, 4, 4], &[1, 1, 4, 4]);
    ctx.device().destroy();
    let _ = ctx
        .device()
        .poll(lightning_wgpu::wgpu::PollType::wait_indefinitely());
    let err = ctx
        .forward(&i.q, &i.k, &i.v, &Default::default())
        .unwrap_err();
    assert!(matches!(err, Error::DeviceLost(_)), "{err:?}");
}
