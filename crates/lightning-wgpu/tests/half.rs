//! Half-precision storage beyond the matrix (tests/matrix.rs): decoding and
//! softmax in halves, the host's and the GPU's rounding against the half
//! crate, and mixed storage types refused. Relative error <= 2e-3 for f16
//! and <= 1e-2 for bf16 on the rounded inputs.

mod common;

use lightning_wgpu::{
    reference, Context, ContextOptions, DType, DecodeOptions, Dims, ForwardOptions, Layout,
    SoftmaxOptions,
};

use common::{rounded, tolerance};

fn contexts() -> Vec<(&'static str, Context)> {
    let native = common::context_with(ContextOptions {
        packed_f16: Some(false),
        ..Default::default()
    });
    let packed = common::context_with(ContextOptions {
        packed_f16: Some(true),
        ..Default::default()
    });
    assert!(
        native.native_f16(),
        "lavapipe has SHADER_F16: the native path must be the default there"
    );
    assert!(!packed.native_f16());
    vec![("native f16", native), ("packed f16", packed)]
}

#[test]
fn decode_and_softmax_in_half_precision() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    for (name, ctx) in contexts() {
        for dtype in [DType::F16, DType::BF16] {
            // Decode: one step from a random state equals the reference's
            // one-token forward from that state.
            let (batch, h, d, e) = (3, 2, 20, 12);
            let q = rounded(&common::random(&mut rng, batch * h * d, d), dtype);
            let k = rounded(&common::random(&mut rng, batch * h * d, d), dtype);
            let v = rounded(&common::random(&mut rng, batch * h * e, 1), dtype);
            let start = common::random(&mut rng, batch * h * d * e, 1);
            let mut cache = ctx.tensor(&start, &[batch, h, d, e]).unwrap();
            let o = ctx
                .decode_step(
                    &ctx.tensor_as(&q, &[batch, h, d], dtype).unwrap(),
                    &ctx.tensor_as(&k, &[batch, h, d], dtype).unwrap(),
                    &ctx.tensor_as(&v, &[batch, h, e], dtype).unwrap(),
                    &mut cache,
                    &[0, 1, 2],
                    &DecodeOptions::default(),
                )
                .unwrap();
            assert_eq!(o.dtype(), dtype);
            let want = reference::forward(
                Dims {
                    b: batch,
                    h,
                    n: 1,
                    d,
                    e,
                },
                Layout::Bhnd,
                &q,
                &k,
                &v,
                &[0.0; 2],
                1.0,
                Some(&start),
            );
            let eo = reference::relative_error(&ctx.read(&o).unwrap(), &want.o);
            assert!(
                eo <= tolerance(dtype),
                "{name} {dtype} decode (seed {seed}): {eo:e}"
            );

            // Softmax attention reads halves through the same prelude.
            let dims = Dims {
                b: 1,
                h: 2,
                n: 70,
                d: 16,
                e: 24,
            };
            let q = rounded(&common::random(&mut rng, 2 * 70 * 16, 1), dtype);
            let k = rounded(&common::random(&mut rng, 2 * 70 * 16, 1), dtype);
            let v = rounded(&common::random(&mut rng, 2 * 70 * 24, 1), dtype);
            let o = ctx
                .softmax_attention(
                    &ctx.tensor_as(&q, &[1, 2, 70, 16], dtype).unwrap(),
                    &ctx.tensor_as(&k, &[1, 2, 70, 16], dtype).unwrap(),
                    &ctx.tensor_as(&v, &[1, 2, 70, 24], dtype).unwrap(),
                    &SoftmaxOptions::default(),
                )
                .unwrap();
            let want =
                reference::softmax_attention(dims, Layout::Bhnd, &q, &k, &v, &[0.0; 2], 0.25);
            let eo = reference::relative_error(&ctx.read(&o).unwrap(), &want);
            assert!(
                eo <= tolerance(dtype),
                "{name} {dtype} softmax (seed {seed}): {eo:e}"
            );
        }
    }
}

#[test]
fn mixed_storage_types_are_refused() {
    let ctx = common::context(false);
    let x = vec![0.5; 2 * 8 * 4];
    let q = ctx.tensor_as(&x, &[1, 2, 8, 4], DType::F16).unwrap();
    let k = ctx.tensor_as(&x, &[1, 2, 8, 4], DType::BF16).unwrap();
    let err = ctx
        .forward(&q, &k, &q, &ForwardOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            lightning_wgpu::Error::DType {
                arg: "k",
                got: DType::BF16,
                expected: DType::F16
            }
        ),
        "{err:?}"
    );
    // States stay f32.
    let s0 = ctx
        .tensor_as(&[0.0; 2 * 16], &[1, 2, 4, 4], DType::F16)
        .unwrap();
    let opts = ForwardOptions {
        initial_state: Some(&s0),
        ..Default::default()
    };
    let err = ctx.forward(&q, &q, &q, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            lightning_wgpu::Error::DType {
                arg: "initial_state",
                ..
            }
        ),
        "{err:?}"
    );
}

/// Values that test the conversions: signed zeros, the smallest and largest
/// normals and subnormals of each format, ties for round-to-nearest-even,
/// overflow to infinity, infinities and NaN.
fn specials() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        65504.0,            // f16 max
        6.1035156e-5,       // f16 smallest normal
        5.9604645e-8,       // f16 smallest subnormal
        2.9802322e-8,       // half of it: rounds to 0 (tie to even)
        8.940697e-8,        // 1.5 subnormal units: tie, rounds to 2 units
        1.0 + 1.0 / 2048.0, // f16 tie between 1 and 1 + 2^-10: to even (1)
        1.0 + 3.0 / 2048.0, // tie: to even (1 + 2^-9)
        1.0 + 1.0 / 256.0,  // bf16 tie: to even (1)
        1.0 + 3.0 / 256.0,  // bf16 tie: to even (1 + 2^-6)
        1.1754944e-38,      // f32 (and bf16) smallest normal
        9.18355e-41,        // an f32 subnormal, bf16 subnormal too
        3.3895314e38,       // bf16 max
        f32::MAX,           // bf16: rounds to infinity
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    v.push(f32::NAN);
    v
}

#[test]
fn host_conversions_round_trip_like_the_half_crate() {
    let ctx = common::context(false);
    let x = specials();
    for dtype in [DType::F16, DType::BF16] {
        // Finite values the type cannot hold are refused, not rounded to
        // infinity (see the next test); the rest round as the half crate does.
        let limit = dtype.max_finite();
        let inside: Vec<f32> = x
            .iter()
            .copied()
            .filter(|v| !v.is_finite() || v.abs() <= limit)
            .collect();
        let t = ctx.tensor_as(&inside, &[inside.len()], dtype).unwrap();
        let back = ctx.read(&t).unwrap();
        let want = rounded(&inside, dtype);
        for (i, (&g, &w)) in back.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{dtype} value {i} ({}): {g} vs {w}",
                inside[i]
            );
        }
    }
}

#[test]
fn values_a_half_type_cannot_hold_are_refused_or_saturated() {
    // Before 0.2.0 they became infinity silently.
    let ctx = common::context(false);
    for (dtype, over, under) in [
        (DType::F16, 65520.0f32, 65519.0f32),
        (DType::BF16, f32::MAX, 3.3895314e38),
    ] {
        let data = [1.0, -over, 0.5];
        match ctx.tensor_as(&data, &[3], dtype) {
            Err(lightning_wgpu::Error::OutOfRange {
                max_abs, dtype: d, ..
            }) => {
                assert_eq!(max_abs, over);
                assert_eq!(d, dtype);
            }
            other => panic!("{dtype}: {over} accepted: {other:?}"),
        }
        // Just below the rounding boundary is finite, and accepted.
        let t = ctx.tensor_as(&[under], &[1], dtype).unwrap();
        assert!(ctx.read(&t).unwrap()[0].is_finite());
        // Saturation clamps finite values and keeps infinities and NaN.
        let t = ctx
            .tensor_saturating(&[1.0, -over, f32::INFINITY, f32::NAN], &[4], dtype)
            .unwrap();
        let got = ctx.read(&t).unwrap();
        assert_eq!(got[1], -dtype.max_finite());
        assert_eq!(got[2], f32::INFINITY);
        assert!(got[3].is_nan());
        assert_eq!(t.max_abs(), Some(f32::INFINITY));
    }
}

#[test]
fn gpu_packing_rounds_like_the_half_crate() {
    let ctx = common::context(false);
    let x = specials();
    for dtype in [DType::F16, DType::BF16] {
        // WGSL leaves pack2x16float of values outside f16's finite range
        // (and of NaN) to the implementation; bf16 packing is ours and
        // exact everywhere.
        let inputs: Vec<f32> = match dtype {
            DType::F16 => x
                .iter()
                .copied()
                .filter(|v| v.is_finite() && v.abs() <= 65504.0)
                .collect(),
            _ => x.clone(),
        };
        // An odd length: the last word's upper half is padding.
        let inputs: Vec<f32> = if inputs.len().is_multiple_of(2) {
            inputs[1..].to_vec()
        } else {
            inputs
        };
        let t = ctx.tensor(&inputs, &[inputs.len()]).unwrap();
        let packed = ctx.convert(&t, dtype).unwrap();
        assert_eq!(packed.dtype(), dtype);
        let back = ctx.read(&packed).unwrap();
        let want = rounded(&inputs, dtype);
        for (i, (&g, &w)) in back.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{dtype} value {i} ({}): GPU {g} vs host {w}",
                inputs[i]
            );
        }
    }
}

#[test]
fn half_tensors_move_as_their_bits() {
    let ctx = common::context(false);
    let x = [1.0f32, -2.5, 65504.0, 6.1e-5, 0.0, -0.0, 3.0e-8];
    for dtype in [DType::F16, DType::BF16] {
        let bits: Vec<u16> = x
            .iter()
            .map(|&v| match dtype {
                DType::F16 => half::f16::from_f32(v).to_bits(),
                _ => half::bf16::from_f32(v).to_bits(),
            })
            .collect();
        let t = ctx.tensor_from_bits(&bits, &[x.len()], dtype).unwrap();
        assert_eq!(ctx.read_bits(&t).unwrap(), bits, "{dtype}");
        assert_eq!(ctx.read(&t).unwrap(), rounded(&x, dtype), "{dtype}");
        assert_eq!(t.max_abs(), Some(rounded(&[65504.0], dtype)[0]));
        let err = ctx
            .tensor_from_bits(&bits[1..], &[x.len()], dtype)
            .unwrap_err();
        assert!(
            matches!(err, lightning_wgpu::Error::DataLength { .. }),
            "{err:?}"
        );
    }
    let f32s = ctx.tensor(&x, &[x.len()]).unwrap();
    assert!(ctx.read_bits(&f32s).is_err());
    assert!(ctx.tensor_from_bits(&[0, 1], &[2], DType::F32).is_err());
}
