//! The cooperative-matrix (tensor-core) path for f16 and bf16: chosen where
//! the adapter has it, refused with a typed error where it is required and
//! missing, and correct against the f64 reference on the rounded inputs
//! (relative error <= 2e-3 for f16, as for every f16 result; <= 4e-3 for
//! bf16, whose output rounding alone gives about 1.2e-3) on the shapes it
//! takes: d and e multiples of 16
//! up to 128, d != e, n not a multiple of the block, more than one stripe of
//! blocks, an initial state, decay, a packed batch, the backward.
//!
//! Lavapipe (CI) has no cooperative matrices, so there these shapes run the
//! portable kernels and the test checks the refusal; on an adapter with
//! them (the H100: `docs/h100-run.sh` runs this binary as
//! `.device/test-coop`) the same tests run the tensor-core kernels, checked
//! and unchecked, beside the portable ones.

mod common;

use half::{bf16, f16};
use lightning_wgpu::{
    alibi_slopes, reference, BackwardOptions, Context, ContextOptions, DType, Dims, Error,
    ForwardOptions, Layout,
};

/// The storage types this path takes, with their tolerances.
const DTYPES: [(DType, f64); 2] = [(DType::F16, 2e-3), (DType::BF16, 4e-3)];

fn rounded(x: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::BF16 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        _ => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
    }
}

/// Whether the default adapter lists cooperative matrices and f16.
fn adapter_has_coop() -> bool {
    let name = common::context(false).adapter_info().name.clone();
    let want = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
    lightning_wgpu::adapters(&ContextOptions::default())
        .iter()
        .any(|a| a.info.name == name && a.features.contains(want))
}

/// The contexts to compare: the default pick (the tensor cores where the
/// adapter has them, checked and unchecked) and the portable kernels.
fn contexts() -> Vec<(&'static str, Context)> {
    let with = |coop: Option<bool>, checked: bool| {
        common::context_with(ContextOptions {
            cooperative_matrix: coop,
            checked: Some(checked),
            ..Default::default()
        })
    };
    let auto = with(None, false);
    assert_eq!(
        auto.cooperative_matrix(),
        adapter_has_coop(),
        "the default must use cooperative matrices exactly where the adapter has them"
    );
    let portable = with(Some(false), false);
    assert!(!portable.cooperative_matrix());
    // Small bindings: every tensor in several windows, so the output's
    // windows are planned in f16 elements where the output pass writes f16.
    let windowed = common::context_with(ContextOptions {
        max_binding_bytes: Some(256 << 10),
        ..Default::default()
    });
    let mut out = vec![
        ("default", auto),
        ("portable", portable),
        ("small bindings", windowed),
    ];
    if adapter_has_coop() {
        out.push(("default, checked", with(None, true)));
    }
    out
}

#[test]
fn required_coop_is_a_typed_error_where_missing() {
    let required = Context::with_options(ContextOptions {
        cooperative_matrix: Some(true),
        ..Default::default()
    });
    if adapter_has_coop() {
        assert!(required.expect("coop adapter").cooperative_matrix());
    } else {
        match required {
            Err(Error::MissingFeature {
                option, adapter, ..
            }) => {
                assert_eq!(option, "cooperative_matrix");
                assert!(!adapter.is_empty());
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("cooperative matrices required on an adapter without them"),
        }
    }
}

#[test]
fn forward_on_coop_shapes_matches_the_reference() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    // (dims, layout, cu_seqlens, slope factor)
    let cases: [(Dims, Layout, Option<&[usize]>, f32); 4] = [
        // 18 blocks: two stripes, a short last block; d != e.
        (
            Dims {
                b: 1,
                h: 2,
                n: 1100,
                d: 128,
                e: 64,
            },
            Layout::Bhnd,
            None,
            1.0,
        ),
        (
            Dims {
                b: 2,
                h: 1,
                n: 131,
                d: 48,
                e: 80,
            },
            Layout::Bnhd,
            None,
            4.0,
        ),
        // A packed batch: sequences start inside blocks.
        (
            Dims {
                b: 1,
                h: 2,
                n: 300,
                d: 128,
                e: 128,
            },
            Layout::Bhnd,
            Some(&[0, 130, 300]),
            1.0,
        ),
        // No decay: states grow across blocks.
        (
            Dims {
                b: 1,
                h: 1,
                n: 200,
                d: 16,
                e: 32,
            },
            Layout::Bhnd,
            None,
            0.0,
        ),
    ];
    for (name, ctx) in contexts() {
        for (&(dims, layout, cu, factor), &(dtype, tol)) in cases
            .iter()
            .flat_map(|c| DTYPES.iter().map(move |t| (c, t)))
        {
            let Dims { b, h, n, d, e } = dims;
            let seqs = cu.map_or(b, |c| c.len() - 1);
            let q = rounded(&common::random(&mut rng, b * h * n * d, d), dtype);
            let k = rounded(&common::random(&mut rng, b * h * n * d, d), dtype);
            let v = rounded(&common::random(&mut rng, b * h * n * e, 1), dtype);
            let s0 = common::random(&mut rng, seqs * h * d * e, 1);
            let slopes: Vec<f32> = alibi_slopes(h).iter().map(|s| s * factor).collect();
            let (qs, vs) = (layout.shape(b, h, n, d), layout.shape(b, h, n, e));
            let state_shape = [seqs, h, d, e];
            let s0_t = ctx.tensor(&s0, &state_shape).unwrap();
            let mut o = ctx
                .tensor_as(&vec![f32::NAN; b * h * n * e], &vs, dtype)
                .unwrap();
            let mut state = common::poisoned(&ctx, &state_shape);
            let opts = ForwardOptions {
                slopes: Some(&slopes),
                layout,
                scale: 0.5,
                initial_state: Some(&s0_t),
                cu_seqlens: cu,
                ..Default::default()
            };
            ctx.forward_into(
                &ctx.tensor_as(&q, &qs, dtype).unwrap(),
                &ctx.tensor_as(&k, &qs, dtype).unwrap(),
                &ctx.tensor_as(&v, &vs, dtype).unwrap(),
                &opts,
                &mut o,
                Some(&mut state),
            )
            .unwrap_or_else(|err| panic!("{name} {dtype:?} {dims:?}: {err}"));
            let (o, state) = (ctx.read(&o).unwrap(), ctx.read(&state).unwrap());
            for (i, p) in common::parts(&dims, cu, s0.len()).iter().enumerate() {
                let part = |x: &[f32], width: usize| p.of(x, layout, &dims, width);
                let want = reference::forward(
                    p.dims,
                    layout,
                    &part(&q, d),
                    &part(&k, d),
                    &part(&v, e),
                    &slopes,
                    0.5,
                    Some(&s0[p.states.clone()]),
                );
                let eo = reference::relative_error(&part(&o, e), &want.o);
                let es = reference::relative_error(&state[p.states.clone()], &want.final_state);
                eprintln!("{name} {dtype:?} {dims:?} sequence {i}: o {eo:.2e}, state {es:.2e}");
                assert!(
                    eo <= tol && es <= tol,
                    "{name} {dtype:?} {dims:?} {cu:?} sequence {i} (seed {seed}): o {eo:e}, state {es:e}"
                );
            }
        }
    }
}

#[test]
fn backward_on_coop_shapes_matches_the_reference() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 2,
        h: 2,
        n: 150,
        d: 32,
        e: 48,
    };
    let Dims { b, h, n, d, e } = dims;
    let layout = Layout::Bhnd;
    for ((name, ctx), &(dtype, tol)) in contexts()
        .iter()
        .flat_map(|c| DTYPES.iter().map(move |t| (c, t)))
    {
        let q = rounded(&common::random(&mut rng, b * h * n * d, d), dtype);
        let k = rounded(&common::random(&mut rng, b * h * n * d, d), dtype);
        let v = rounded(&common::random(&mut rng, b * h * n * e, 1), dtype);
        let d_o = rounded(&common::random(&mut rng, b * h * n * e, 1), dtype);
        let s0 = common::random(&mut rng, b * h * d * e, 1);
        let dsn = common::random(&mut rng, b * h * d * e, 1);
        let slopes = alibi_slopes(h);
        let (qs, vs) = (layout.shape(b, h, n, d), layout.shape(b, h, n, e));
        let s0_t = ctx.tensor(&s0, &dims.state_shape()).unwrap();
        let dsn_t = ctx.tensor(&dsn, &dims.state_shape()).unwrap();
        let opts = BackwardOptions {
            forward: ForwardOptions {
                slopes: Some(&slopes),
                scale: 0.7,
                layout,
                initial_state: Some(&s0_t),
                ..Default::default()
            },
            d_final_state: Some(&dsn_t),
        };
        let g = ctx
            .backward(
                &ctx.tensor_as(&q, &qs, dtype).unwrap(),
                &ctx.tensor_as(&k, &qs, dtype).unwrap(),
                &ctx.tensor_as(&v, &vs, dtype).unwrap(),
                &ctx.tensor_as(&d_o, &vs, dtype).unwrap(),
                &opts,
            )
            .unwrap_or_else(|err| panic!("{name} {dtype:?}: {err}"));
        let want = reference::backward(
            dims,
            layout,
            &q,
            &k,
            &v,
            &d_o,
            &slopes,
            0.7,
            Some(&s0),
            Some(&dsn),
        );
        for (grad, got, want) in [
            ("dq", &g.dq, &want.dq),
            ("dk", &g.dk, &want.dk),
            ("dv", &g.dv, &want.dv),
            ("dS0", &g.d_initial_state, &want.d_initial_state),
        ] {
            let err = reference::relative_error(&ctx.read(got).unwrap(), want);
            eprintln!("{name} {dtype:?} {grad}: {err:.2e}");
            assert!(err <= tol, "{name} {dtype:?} {grad} (seed {seed}): {err:e}");
        }
    }
}
