//! The backward pass: the f64 reference against finite differences of the
//! forward reference, and the GPU gradients against the reference (relative
//! error <= 1e-5, f32), with decay on and off, with and without S0 and dS_n.

mod common;

use lightning_wgpu::{
    alibi_slopes, reference, BackwardOptions, Dims, Error, ForwardOptions, Layout,
};
use rand::RngExt;

const TOL: f64 = 1e-5;

/// L = sum(o * dO) + sum(S_n * dS_n), in f64.
#[allow(clippy::too_many_arguments)]
fn loss(
    dims: Dims,
    l: Layout,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &[f32],
    sc: f32,
    s0: &[f32],
    d_o: &[f32],
    dsn: &[f32],
) -> f64 {
    let out = reference::forward(dims, l, q, k, v, s, sc, Some(s0));
    let a: f64 = out.o.iter().zip(d_o).map(|(x, &y)| x * y as f64).sum();
    let b: f64 = out
        .final_state
        .iter()
        .zip(dsn)
        .map(|(x, &y)| x * y as f64)
        .sum();
    a + b
}

#[test]
fn reference_gradients_match_finite_differences() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 1,
        h: 2,
        n: 9,
        d: 3,
        e: 4,
    };
    let Dims { b, h, n, d, e } = dims;
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        let q = common::random(&mut rng, b * h * n * d, 1);
        let k = common::random(&mut rng, b * h * n * d, 1);
        let v = common::random(&mut rng, b * h * n * e, 1);
        let s0 = common::random(&mut rng, b * h * d * e, 1);
        let d_o = common::random(&mut rng, b * h * n * e, 1);
        let dsn = common::random(&mut rng, b * h * d * e, 1);
        let slopes = [0.3f32, 0.0];
        let sc = 0.7;
        let g = reference::backward(
            dims,
            layout,
            &q,
            &k,
            &v,
            &d_o,
            &slopes,
            sc,
            Some(&s0),
            Some(&dsn),
        );
        let eps = 1.0 / 1024.0;
        // Central differences on every coordinate of every input.
        let grads: [(&str, &Vec<f32>, &Vec<f64>); 4] = [
            ("q", &q, &g.dq),
            ("k", &k, &g.dk),
            ("v", &v, &g.dv),
            ("s0", &s0, &g.d_initial_state),
        ];
        for (name, x, want) in grads {
            for i in 0..x.len() {
                let mut plus = x.clone();
                let mut minus = x.clone();
                plus[i] += eps;
                minus[i] -= eps;
                let f = |y: &[f32]| match name {
                    "q" => loss(dims, layout, y, &k, &v, &slopes, sc, &s0, &d_o, &dsn),
                    "k" => loss(dims, layout, &q, y, &v, &slopes, sc, &s0, &d_o, &dsn),
                    "v" => loss(dims, layout, &q, &k, y, &slopes, sc, &s0, &d_o, &dsn),
                    _ => loss(dims, layout, &q, &k, &v, &slopes, sc, y, &d_o, &dsn),
                };
                let fd = (f(&plus) - f(&minus)) / (plus[i] as f64 - minus[i] as f64);
                assert!(
                    (fd - want[i]).abs() <= 1e-6 * (1.0 + want[i].abs()),
                    "{layout} d{name}[{i}]: {fd} vs {}",
                    want[i]
                );
            }
        }
    }
}

#[test]
fn gpu_gradients_match_the_reference() {
    let default = common::context(false);
    // Bindings of 5 KiB: the last case's states (6 KiB) no longer fit one,
    // so dS0 is scaled on the host instead of the GPU.
    let small = common::context_with(lightning_wgpu::ContextOptions {
        max_binding_bytes: Some(5 << 10),
        ..Default::default()
    });
    let seed = common::seed();
    let mut rng = common::rng(seed);
    for ((dims, layout, decay, with_s0, with_dsn), ctx) in [
        (
            Dims {
                b: 2,
                h: 2,
                n: 97,
                d: 20,
                e: 12,
            },
            Layout::Bhnd,
            true,
            true,
            true,
        ),
        (
            Dims {
                b: 1,
                h: 3,
                n: 64,
                d: 8,
                e: 33,
            },
            Layout::Bnhd,
            false,
            false,
            false,
        ),
        (
            Dims {
                b: 1,
                h: 2,
                n: 1,
                d: 5,
                e: 3,
            },
            Layout::Bhnd,
            true,
            false,
            true,
        ),
        (
            Dims {
                b: 1,
                h: 2,
                n: 130,
                d: 48,
                e: 16,
            },
            Layout::Bnhd,
            true,
            true,
            false,
        ),
        (
            Dims {
                b: 3,
                h: 2,
                n: 70,
                d: 16,
                e: 16,
            },
            Layout::Bhnd,
            true,
            true,
            true,
        ),
    ]
    .into_iter()
    .flat_map(|case| {
        let small_too = (case.0.d, case.0.e) == (16, 16);
        std::iter::once((case, &default)).chain(small_too.then_some((case, &small)))
    }) {
        let Dims { b, h, n, d, e } = dims;
        let q = common::random(&mut rng, b * h * n * d, d);
        let k = common::random(&mut rng, b * h * n * d, d);
        let v = common::random(&mut rng, b * h * n * e, 1);
        let d_o = common::random(&mut rng, b * h * n * e, 1);
        let s0 = common::random(&mut rng, b * h * d * e, 1);
        let dsn = common::random(&mut rng, b * h * d * e, 1);
        let slopes: Vec<f32> = if decay {
            alibi_slopes(h).iter().map(|s| s * 3.0).collect()
        } else {
            vec![0.0; h]
        };
        let scale = rng.random_range(0.3f32..1.2);
        let qs = layout.shape(b, h, n, d);
        let vs = layout.shape(b, h, n, e);
        let s0_t = ctx.tensor(&s0, &dims.state_shape()).unwrap();
        let dsn_t = ctx.tensor(&dsn, &dims.state_shape()).unwrap();
        let opts = BackwardOptions {
            forward: ForwardOptions {
                slopes: decay.then_some(&slopes[..]),
                scale,
                layout,
                initial_state: with_s0.then_some(&s0_t),
                ..Default::default()
            },
            d_final_state: with_dsn.then_some(&dsn_t),
        };
        // Gradients come from the pool: poison it with buffers of their sizes.
        for shape in [qs, qs, vs, dims.state_shape()] {
            drop(common::poisoned(ctx, &shape));
        }
        let g = ctx
            .backward(
                &ctx.tensor(&q, &qs).unwrap(),
                &ctx.tensor(&k, &qs).unwrap(),
                &ctx.tensor(&v, &vs).unwrap(),
                &ctx.tensor(&d_o, &vs).unwrap(),
                &opts,
            )
            .unwrap();
        let want = reference::backward(
            dims,
            layout,
            &q,
            &k,
            &v,
            &d_o,
            &slopes,
            scale,
            with_s0.then_some(&s0[..]),
            with_dsn.then_some(&dsn[..]),
        );
        for (name, got, want) in [
            ("dq", &g.dq, &want.dq),
            ("dk", &g.dk, &want.dk),
            ("dv", &g.dv, &want.dv),
            ("dS0", &g.d_initial_state, &want.d_initial_state),
        ] {
            let err = reference::relative_error(&ctx.read(got).unwrap(), want);
            assert!(err <= TOL, "{name} {dims:?} {layout} decay {decay} s0 {with_s0} dsn {with_dsn} (seed {seed}): {err:e}");
        }
    }
}

#[test]
fn bad_backward_inputs_are_refused() {
    let ctx = common::context(false);
    let x = ctx.tensor(&[0.5; 2 * 8 * 4], &[1, 2, 8, 4]).unwrap();
    let short = ctx.tensor(&[0.5; 2 * 7 * 4], &[1, 2, 7, 4]).unwrap();
    let err = ctx
        .backward(&x, &x, &x, &short, &BackwardOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "d_o",
                dim: "n",
                ..
            }
        ),
        "{err:?}"
    );
    let wrong_state = ctx.tensor(&[0.0; 2 * 16], &[1, 2, 16]).unwrap();
    let opts = BackwardOptions {
        d_final_state: Some(&wrong_state),
        ..Default::default()
    };
    let err = ctx.backward(&x, &x, &x, &x, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rank {
                arg: "d_final_state",
                ..
            }
        ),
        "{err:?}"
    );
    // Packed offsets are checked as in the forward pass.
    let opts = BackwardOptions {
        forward: ForwardOptions {
            cu_seqlens: Some(&[0, 5]),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = ctx.backward(&x, &x, &x, &x, &opts).unwrap_err();
    assert!(
        matches!(&err, Error::CuSeqlens(m) if m.contains("end at n = 8")),
        "{err:?}"
    );
}

#[test]
fn extreme_slopes_and_scales_give_finite_correct_gradients() {
    // dS_n once entered the reversed passes as dS_n e^s / scale: with scale
    // 1e-5 and slopes 79, 0, 50 that was inf and NaN while the true
    // gradients are finite. Now dS_n is folded in that way only where
    // e^s / scale is at most 2^20 (the fifth case, near that bound);
    // elsewhere nothing divides by a decay or the scale: any finite slopes
    // >= 0 and any finite scale, 0 included.
    let ctx = common::context(false);
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 1,
        h: 3,
        n: 70,
        d: 5,
        e: 6,
    };
    let Dims { b, h, n, d, e } = dims;
    for (slopes, scale) in [
        ([79.0, 0.0, 50.0], 1e-5),
        ([79.0, 0.0, 50.0], 0.0),
        ([200.0, 1000.0, 3.4e38], 1.0),
        ([0.0, 1e-7, 88.7], -1e4),
        ([10.0, 0.0, 3.0], 0.03),
    ] {
        for layout in [Layout::Bhnd, Layout::Bnhd] {
            let q = common::random(&mut rng, b * h * n * d, d);
            let k = common::random(&mut rng, b * h * n * d, d);
            let v = common::random(&mut rng, b * h * n * e, 1);
            let d_o = common::random(&mut rng, b * h * n * e, 1);
            let s0 = common::random(&mut rng, b * h * d * e, 1);
            let dsn = common::random(&mut rng, b * h * d * e, 1);
            let (qs, vs) = (layout.shape(b, h, n, d), layout.shape(b, h, n, e));
            let s0_t = ctx.tensor(&s0, &dims.state_shape()).unwrap();
            let dsn_t = ctx.tensor(&dsn, &dims.state_shape()).unwrap();
            let opts = BackwardOptions {
                forward: ForwardOptions {
                    slopes: Some(&slopes),
                    scale,
                    layout,
                    initial_state: Some(&s0_t),
                    ..Default::default()
                },
                d_final_state: Some(&dsn_t),
            };
            let g = ctx
                .backward(
                    &ctx.tensor(&q, &qs).unwrap(),
                    &ctx.tensor(&k, &qs).unwrap(),
                    &ctx.tensor(&v, &vs).unwrap(),
                    &ctx.tensor(&d_o, &vs).unwrap(),
                    &opts,
                )
                .unwrap();
            let want = reference::backward(
                dims,
                layout,
                &q,
                &k,
                &v,
                &d_o,
                &slopes,
                scale,
                Some(&s0),
                Some(&dsn),
            );
            for (name, got, want) in [
                ("dq", &g.dq, &want.dq),
                ("dk", &g.dk, &want.dk),
                ("dv", &g.dv, &want.dv),
                ("dS0", &g.d_initial_state, &want.d_initial_state),
            ] {
                let got = ctx.read(got).unwrap();
                assert!(
                    got.iter().all(|x| x.is_finite()),
                    "{name} {slopes:?} {scale}: not finite"
                );
                // What f32 can hold of the true values (e^-200 is 0 there).
                let want: Vec<f64> = want.iter().map(|&x| x as f32 as f64).collect();
                let err = reference::relative_error(&got, &want);
                assert!(
                    err <= TOL,
                    "{name} slopes {slopes:?} scale {scale} {layout} (seed {seed}): {err:e}"
                );
            }
        }
    }
}

#[test]
fn packed_sequences_get_their_own_gradients() {
    let ctx = common::context(false);
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let (h, d, e, n) = (2, 6, 10, 80);
    let cu = [0usize, 5, 6, 80];
    let dims = Dims { b: 1, h, n, d, e };
    let state = h * d * e;
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        let q = common::random(&mut rng, h * n * d, d);
        let k = common::random(&mut rng, h * n * d, d);
        let v = common::random(&mut rng, h * n * e, 1);
        let d_o = common::random(&mut rng, h * n * e, 1);
        let s0 = common::random(&mut rng, 3 * state, 1);
        let dsn = common::random(&mut rng, 3 * state, 1);
        let slopes = alibi_slopes(h);
        let (qs, vs) = (layout.shape(1, h, n, d), layout.shape(1, h, n, e));
        let s0_t = ctx.tensor(&s0, &[3, h, d, e]).unwrap();
        let dsn_t = ctx.tensor(&dsn, &[3, h, d, e]).unwrap();
        let opts = BackwardOptions {
            forward: ForwardOptions {
                slopes: Some(&slopes),
                scale: 0.8,
                layout,
                initial_state: Some(&s0_t),
                cu_seqlens: Some(&cu),
                ..Default::default()
            },
            d_final_state: Some(&dsn_t),
        };
        let g = ctx
            .backward(
                &ctx.tensor(&q, &qs).unwrap(),
                &ctx.tensor(&k, &qs).unwrap(),
                &ctx.tensor(&v, &vs).unwrap(),
                &ctx.tensor(&d_o, &vs).unwrap(),
                &opts,
            )
            .unwrap();
        let read = |t: &lightning_wgpu::Tensor| ctx.read(t).unwrap();
        let (dq, dk, dv, ds0) = (
            read(&g.dq),
            read(&g.dk),
            read(&g.dv),
            read(&g.d_initial_state),
        );
        for (s, p) in common::parts(&dims, Some(&cu), s0.len()).iter().enumerate() {
            let part = |x: &[f32], width: usize| p.of(x, layout, &dims, width);
            let want = reference::backward(
                p.dims,
                layout,
                &part(&q, d),
                &part(&k, d),
                &part(&v, e),
                &part(&d_o, e),
                &slopes,
                0.8,
                Some(&s0[p.states.clone()]),
                Some(&dsn[p.states.clone()]),
            );
            for (name, got, want) in [
                ("dq", part(&dq, d), &want.dq),
                ("dk", part(&dk, d), &want.dk),
                ("dv", part(&dv, e), &want.dv),
                ("dS0", ds0[p.states.clone()].to_vec(), &want.d_initial_state),
            ] {
                let err = reference::relative_error(&got, want);
                assert!(
                    err <= TOL,
                    "{layout} sequence {s} {name} (seed {seed}): {err:e}"
                );
            }
        }
    }
}
