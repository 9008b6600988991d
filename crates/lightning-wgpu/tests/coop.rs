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
