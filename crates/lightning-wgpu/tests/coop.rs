//! The tensor-core (cooperative-matrix) path is chosen exactly where the
//! adapter has it, and requiring it where it is missing is a typed error.
//! Its numerics are in tests/matrix.rs (`*::tensor_cores::*`), which run
//! the tensor-core kernels on an adapter with them (the H200) and check the
//! refusal elsewhere.

mod common;

use lightning_wgpu::{Context, ContextOptions, DType, Error};

/// Whether the default adapter lists cooperative matrices and f16.
fn adapter_has_coop() -> bool {
    let name = common::context(false).adapter_info().name.clone();
    let want = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
    lightning_wgpu::adapters(&ContextOptions::default())
        .iter()
        .any(|a| a.info.name == name && a.features.contains(want))
}

#[test]
fn the_default_uses_the_tensor_cores_exactly_where_the_adapter_has_them() {
    let auto = common::context(false);
    assert_eq!(auto.cooperative_matrix(), adapter_has_coop());
    let portable = common::context_with(ContextOptions {
        cooperative_matrix: Some(false),
        ..Default::default()
    });
    assert!(!portable.cooperative_matrix());
    assert_eq!(portable.chunk_path(DType::F16, 64, 64), "portable");
    // f32 and shapes the tensor cores do not take stay portable everywhere.
    assert_eq!(auto.chunk_path(DType::F32, 64, 64), "portable");
    assert_eq!(auto.chunk_path(DType::BF16, 24, 64), "portable");
    assert_eq!(auto.chunk_path(DType::BF16, 256, 64), "portable");
    let expected = if adapter_has_coop() {
        "tensor-core"
    } else {
        "portable"
    };
    assert_eq!(auto.chunk_path(DType::BF16, 64, 128), expected);
}

#[test]
fn required_tensor_cores_are_a_typed_error_where_missing() {
    let required = Context::with_options(ContextOptions {
        cooperative_matrix: Some(true),
        ..Default::default()
    });
    if adapter_has_coop() {
        assert!(required.expect("tensor-core adapter").cooperative_matrix());
        // Blocks of 32 rows cannot run them: refused too.
        let small = Context::with_options(ContextOptions {
            cooperative_matrix: Some(true),
            block_rows: Some(32),
            ..Default::default()
        });
        assert!(matches!(small, Err(Error::MissingFeature { .. })));
        return;
    }
    match required {
        Err(Error::MissingFeature {
            option, adapter, ..
        }) => {
            assert_eq!(option, "cooperative_matrix");
            assert!(!adapter.is_empty());
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("tensor cores required on an adapter without them"),
    }
}

/// Runs a bf16 forward of `q`, `k`, `v` (b = 1) on `ctx`, returning o.
fn bf16_forward(
    ctx: &Context,
    dims: lightning_wgpu::Dims,
    x: [&[f32]; 3],
    slopes: &[f32],
) -> (Vec<f32>, &'static str) {
    let lightning_wgpu::Dims { b, h, n, d, e } = dims;
    let up = |x: &[f32], w: usize| ctx.tensor_as(x, &[b, h, n, w], DType::BF16).unwrap();
    let (q, k, v) = (up(x[0], d), up(x[1], d), up(x[2], e));
    let opts = lightning_wgpu::ForwardOptions {
        slopes: Some(slopes),
        ..Default::default()
    };
    let path = ctx.forward_path(&q, &k, &v, &opts).unwrap();
    let out = ctx.forward(&q, &k, &v, &opts).unwrap();
    (ctx.read(&out.o).unwrap(), path)
}

#[test]
fn bf16_values_beyond_f16s_range_are_right_on_the_default_path() {
    // On the tensor cores bf16 is read as f16: values past 65504, and states
    // that grow past it over a long sequence without decay, came back as inf
    // or NaN on the default path. Such calls now run portable; typical ones
    // keep the tensor cores (where the adapter has them).
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let auto = common::context(false);
    let dims = lightning_wgpu::Dims {
        b: 1,
        h: 2,
        n: 300,
        d: 64,
        e: 64,
    };
    let len = |w: usize| dims.h * dims.n * w;
    let slopes = lightning_wgpu::alibi_slopes(2);
    let big: Vec<f32> = common::random(&mut rng, len(64), 1)
        .iter()
        .map(|x| x * 1e30)
        .collect();
    let small: Vec<f32> = common::random(&mut rng, len(64), 1)
        .iter()
        .map(|x| x * 1e-12)
        .collect();
    let v = common::random(&mut rng, len(64), 1);
    let normal = common::random(&mut rng, len(64), 64);
    // A long sequence without decay, keys and values positive: the state
    // passes 65504 after about 70000 rows.
    let long = lightning_wgpu::Dims {
        b: 1,
        h: 1,
        n: 70_000,
        d: 16,
        e: 16,
    };
    let ones: Vec<f32> = (0..long.n * 16)
        .map(|i| 0.5 + (i % 7) as f32 / 14.0)
        .collect();
    // (name, sizes, q k v, slopes, whether the tensor cores may run it)
    type Case<'a> = (
        &'a str,
        lightning_wgpu::Dims,
        [&'a [f32]; 3],
        &'a [f32],
        bool,
    );
    let cases: [Case; 4] = [
        ("q up to 1e30", dims, [&big, &small, &v], &slopes, false),
        (
            "v up to 1e30",
            dims,
            [&small, &normal, &big],
            &slopes,
            false,
        ),
        (
            "no decay over 70000 rows",
            long,
            [&ones, &ones, &ones],
            &[0.0],
            false,
        ),
        ("typical", dims, [&normal, &normal, &v], &slopes, true),
    ];
    for (name, dims, x, slopes, fast) in cases {
        let rounded: Vec<Vec<f32>> = x.iter().map(|x| common::rounded(x, DType::BF16)).collect();
        let (o, path) = bf16_forward(&auto, dims, x, slopes);
        let expected = if fast && adapter_has_coop() {
            "tensor-core"
        } else {
            "portable"
        };
        assert_eq!(path, expected, "{name}");
        let want = lightning_wgpu::reference::forward(
            dims,
            lightning_wgpu::Layout::Bhnd,
            &rounded[0],
            &rounded[1],
            &rounded[2],
            slopes,
            1.0,
            None,
        );
        assert!(o.iter().all(|x| x.is_finite()), "{name}: not finite");
        let err = lightning_wgpu::reference::relative_error(&o, &want.o);
        assert!(
            err <= common::tolerance(DType::BF16),
            "{name} (seed {seed}): {err:e}"
        );
    }
}
