//! The benchmark registry measures what it names (timing itself is not
//! tested: speed belongs in the runner, not in tests).

use lightning_wgpu::{Context, ContextOptions, Dims, Error};
use lightning_wgpu_bench::{measure, Inputs, Provider, Repeat, Sweep};

fn context() -> Context {
    Context::with_options(ContextOptions::default())
        .expect("no GPU context: run `cargo xtask test`, which installs Mesa's lavapipe")
}

#[test]
fn every_provider_measures_a_small_case() {
    let ctx = context();
    let dims = Dims {
        b: 2,
        h: 2,
        n: 96,
        d: 16,
        e: 24,
    };
    let mut inputs = Inputs::new(&ctx, 192, 2, 16, 24).unwrap();
    for provider in Provider::ALL {
        let m = pollster::block_on(measure(
            &ctx,
            provider,
            &dims,
            &mut inputs,
            Repeat {
                warmup: 1,
                warmup_ms: 0.0,
                reps: 3,
            },
        ))
        .unwrap();
        assert_eq!(m.samples_ms.len(), 3);
        assert!(
            m.fwd_ms > 0.0 && m.fwd_ms.is_finite(),
            "{provider:?}: {m:?}"
        );
        assert!(
            m.samples_ms.contains(&m.fwd_ms),
            "the median is one of the samples"
        );
        // Inputs alone hold 2 * 192 * 2 * (16 + 16 + 24) * 4 bytes.
        assert!(
            m.peak_mem_mb * (1 << 20) as f64 >= (192 * 2 * 56 * 4) as f64,
            "{m:?}"
        );
        assert_eq!(Provider::parse(provider.name()), Some(provider));
    }
    // A case that does not match the inputs is refused.
    let wrong = Dims { b: 3, ..dims };
    let err = pollster::block_on(measure(
        &ctx,
        Provider::Lightning,
        &wrong,
        &mut inputs,
        Repeat::default(),
    ))
    .unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { arg: "dims", .. }),
        "{err:?}"
    );
}

#[test]
fn sweeps_keep_tokens_fixed_and_flops_grow_as_expected() {
    let info = context().adapter_info().clone();
    let sweep = Sweep::for_adapter(&info);
    for &n in &sweep.lengths {
        let dims = sweep.dims(n);
        assert_eq!(dims.b * dims.n, sweep.tokens);
    }
    let a = Dims {
        b: 1,
        h: 1,
        n: 1000,
        d: 64,
        e: 64,
    };
    let b = Dims { n: 2000, ..a };
    // Linear providers double with n; softmax quadruples.
    for p in [Provider::Lightning, Provider::Recurrent] {
        assert!((p.forward_flops(&b, 64) / p.forward_flops(&a, 64) - 2.0).abs() < 1e-9);
    }
    assert!(
        (Provider::Softmax.forward_flops(&b, 64) / Provider::Softmax.forward_flops(&a, 64) - 4.0)
            .abs()
            < 1e-9
    );
}
