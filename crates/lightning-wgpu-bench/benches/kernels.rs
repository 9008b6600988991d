//! Criterion benches of each kernel at the fixed shapes named in
//! `lightning_wgpu_bench::CRITERION_CASES`, timed on the GPU with timestamp
//! queries where the adapter has them. `cargo bench` (on lavapipe these are
//! not performance numbers: see docs/BENCHMARKS.md for real GPUs).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use lightning_wgpu::Context;
use lightning_wgpu_bench::{measure, Inputs, Repeat, CRITERION_CASES};

fn kernels(c: &mut Criterion) {
    let ctx = match Context::new() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("no GPU adapter, nothing to bench: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group(ctx.adapter_info().name.clone());
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    for (provider, dims) in CRITERION_CASES {
        let Ok(mut inputs) = Inputs::new(&ctx, dims.b * dims.n, dims.h, dims.d, dims.e) else {
            continue;
        };
        let name = format!(
            "{} b{} h{} n{} d{} e{}",
            provider.name(),
            dims.b,
            dims.h,
            dims.n,
            dims.d,
            dims.e
        );
        group.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let repeat = Repeat {
                    warmup: 0,
                    warmup_ms: 0.0,
                    reps: iters as usize,
                };
                match pollster::block_on(measure(&ctx, provider, &dims, &mut inputs, repeat)) {
                    Ok(m) => Duration::from_secs_f64(m.samples_ms.iter().sum::<f64>() / 1e3),
                    Err(e) => panic!("{}: {e}", provider.name()),
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
