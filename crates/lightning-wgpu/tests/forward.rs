//! The forward pass against the f64 reference, on random inputs with fresh
//! seeds: relative error `||o - ref|| / ||ref|| <= 1e-5` for o and the final
//! state, outputs poisoned (NaN) before each run so an unwritten element fails.

mod common;

use lightning_wgpu::{
    alibi_slopes, reference, Context, ContextOptions, Dims, ForwardOptions, Layout,
};

const TOL: f64 = 1e-5;

#[derive(Clone, Copy, Debug)]
struct Case {
    dims: Dims,
    layout: Layout,
    decay: bool,
    /// Factor on the ALiBi slopes when `decay` is on.
    slope_factor: f32,
    scale: f32,
    initial_state: bool,
}

impl Case {
    fn new(b: usize, h: usize, n: usize, d: usize, e: usize) -> Self {
        Case {
            dims: Dims { b, h, n, d, e },
            layout: Layout::Bhnd,
            decay: true,
            slope_factor: 4.0,
            scale: 1.0,
            initial_state: false,
        }
    }
}

/// Runs one case and returns the relative errors of (o, final state).
fn run(ctx: &Context, case: Case, seed: u64) -> (f64, f64) {
    let Dims { b, h, n, d, e } = case.dims;
    let mut rng = common::rng(seed);
    let q = common::random(&mut rng, b * h * n * d, d);
    let k = common::random(&mut rng, b * h * n * d, d);
    let v = common::random(&mut rng, b * h * n * e, 1);
    let s0 = common::random(&mut rng, b * h * d * e, 1);
    // Slopes from the ALiBi schedule, by default stretched so some heads
    // decay fast.
    let slopes: Vec<f32> = if case.decay {
        alibi_slopes(h)
            .iter()
            .map(|s| s * case.slope_factor)
            .collect()
    } else {
        vec![0.0; h]
    };
    let qk_shape = case.layout.shape(b, h, n, d);
    let v_shape = case.layout.shape(b, h, n, e);
    let s0_tensor = ctx.tensor(&s0, &case.dims.state_shape()).expect("s0");
    let opts = ForwardOptions {
        slopes: case.decay.then_some(&slopes[..]),
        scale: case.scale,
        layout: case.layout,
        initial_state: case.initial_state.then_some(&s0_tensor),
        output_final_state: true,
        ..Default::default()
    };
    let mut o = common::poisoned(ctx, &v_shape);
    let mut state = common::poisoned(ctx, &case.dims.state_shape());
    ctx.forward_into(
        &ctx.tensor(&q, &qk_shape).expect("q"),
        &ctx.tensor(&k, &qk_shape).expect("k"),
        &ctx.tensor(&v, &v_shape).expect("v"),
        &opts,
        &mut o,
        Some(&mut state),
    )
    .unwrap_or_else(|err| panic!("{case:?}: {err}"));
    let want = reference::forward(
        case.dims,
        case.layout,
        &q,
        &k,
        &v,
        &slopes,
        case.scale,
        case.initial_state.then_some(&s0[..]),
    );
    let got_o = ctx.read(&o).expect("read o");
    let got_s = ctx.read(&state).expect("read state");
    (
        reference::relative_error(&got_o, &want.o),
        reference::relative_error(&got_s, &want.final_state),
    )
}

fn check(ctx: &Context, cases: &[Case]) {
    let seed = common::seed();
    for (i, &case) in cases.iter().enumerate() {
        let (eo, es) = run(ctx, case, seed.wrapping_add(i as u64));
        eprintln!("{case:?}: o {eo:.2e}, state {es:.2e}");
        assert!(
            eo <= TOL && es <= TOL,
            "{case:?} (seed {}): o {eo:e}, state {es:e}",
            seed.wrapping_add(i as u64)
        );
    }
}

#[test]
fn sequence_lengths_around_the_block() {
    let ctx = common::context(false);
    let cases: Vec<Case> = [1, 2, 63, 64, 65, 127, 129, 1029]
        .iter()
        .map(|&n| Case::new(2, 3, n, 48, 16))
        .collect();
    check(&ctx, &cases);
}

#[test]
fn many_stripes_of_blocks() {
    // Block states are walked in stripes of 32 blocks and the stripes
    // chained by a scan that takes eight at a time: more than eight stripes,
    // a short last stripe and a short last block, with decays slow enough
    // that a stripe's start state still matters 2000 rows on, or no decay;
    // both block sizes.
    let n = 9 * 32 * 64 + 32 * 64 / 3 + 5;
    let mut slow = Case::new(1, 2, n, 8, 12);
    slow.slope_factor = 0.1;
    slow.initial_state = true;
    let mut flat = Case::new(1, 1, n, 12, 8);
    flat.decay = false;
    check(&common::context(false), &[slow, flat]);
    let small = common::context_with(ContextOptions {
        block_rows: Some(32),
        ..Default::default()
    });
    check(&small, &[slow]);
}

#[test]
fn more_state_elements_than_the_scan_has_invocations() {
    // The stripe scan runs at most 16384 workgroups of 256 invocations
    // (src/ops/chunk.rs); past 2^22 elements of (b, h, d, e) each
    // invocation scans several. 2 x 129 heads of 128 x 136 states: 4.49 M
    // elements, with an initial state and two blocks, the second reading
    // the state the scan leaves.
    let mut case = Case::new(2, 129, 100, 128, 136);
    case.initial_state = true;
    check(&common::context(false), &[case]);
}

#[test]
fn head_dims_from_1_to_256() {
    let ctx = common::context(false);
    let pairs = [
        (1, 1),
        (16, 48),
        (48, 16),
        (64, 64),
        (96, 160),
        (128, 128),
        (160, 96),
        (256, 256),
        (256, 1),
        (1, 256),
        (3, 77),
    ];
    let cases: Vec<Case> = pairs
        .iter()
        .map(|&(d, e)| Case::new(1, 2, 70, d, e))
        .collect();
    check(&ctx, &cases);
}

#[test]
fn layouts_decay_scale_and_initial_state() {
    let ctx = common::context(false);
    let mut cases = Vec::new();
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        for decay in [true, false] {
            for initial_state in [false, true] {
                let mut c = Case::new(3, 5, 150, 24, 40);
                c.layout = layout;
                c.decay = decay;
                c.initial_state = initial_state;
                c.scale = if initial_state { 0.37 } else { 1.0 };
                cases.push(c);
            }
        }
    }
    check(&ctx, &cases);
}

#[test]
fn with_runtime_checks_on() {
    // The same kernels with wgpu's shader bounds checks (as browsers run them).
    let ctx = common::context(true);
    assert!(ctx.checked());
    let mut c = Case::new(2, 2, 200, 80, 36);
    c.initial_state = true;
    let mut bnhd = Case::new(1, 3, 65, 33, 70);
    bnhd.layout = Layout::Bnhd;
    check(&ctx, &[c, bnhd]);
}

#[test]
fn small_blocks_for_small_workgroup_limits() {
    // The configuration for adapters with the WebGPU minimum limits.
    let ctx = common::context_with(ContextOptions {
        block_rows: Some(32),
        ..Default::default()
    });
    assert_eq!(ctx.block_rows(), 32);
    let mut c = Case::new(2, 2, 101, 40, 72);
    c.initial_state = true;
    let mut bnhd = Case::new(1, 2, 33, 256, 8);
    bnhd.layout = Layout::Bnhd;
    check(&ctx, &[c, bnhd, Case::new(1, 1, 1, 5, 5)]);
}

#[test]
fn tensors_beyond_one_binding_go_through_windows() {
    // A 64 KiB binding cap makes the host split heads and rows over many
    // dispatches and bind at offsets, with the state carried between row
    // ranges: the result must not change.
    let ctx = common::context_with(ContextOptions {
        max_binding_bytes: Some(64 << 10),
        ..Default::default()
    });
    let mut cases = Vec::new();
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        let mut c = Case::new(2, 3, 300, 36, 20);
        c.layout = layout;
        c.initial_state = layout == Layout::Bnhd;
        cases.push(c);
    }
    check(&ctx, &cases);
}

#[test]
fn nan_reaches_only_the_outputs_it_affects() {
    let ctx = common::context(false);
    let (b, h, n, d, e) = (1, 2, 100, 8, 8);
    let mut rng = common::rng(common::seed());
    let q = common::random(&mut rng, b * h * n * d, d);
    let mut k = common::random(&mut rng, b * h * n * d, d);
    let v = common::random(&mut rng, b * h * n * e, 1);
    // A NaN in head 0's key at position 40, inside the first block.
    let bad = 40;
    k[bad * d + 3] = f32::NAN;
    let slopes = alibi_slopes(h);
    let out = ctx
        .forward(
            &ctx.tensor(&q, &[b, h, n, d]).unwrap(),
            &ctx.tensor(&k, &[b, h, n, d]).unwrap(),
            &ctx.tensor(&v, &[b, h, n, e]).unwrap(),
            &ForwardOptions {
                slopes: Some(&slopes),
                ..Default::default()
            },
        )
        .unwrap();
    let o = ctx.read(&out.o).unwrap();
    let want = reference::forward(
        Dims { b, h, n, d, e },
        Layout::Bhnd,
        &q,
        &k,
        &v,
        &slopes,
        1.0,
        None,
    );
    for i in 0..n {
        let row = &o[i * e..(i + 1) * e];
        if i < bad {
            assert!(
                row.iter().all(|x| x.is_finite()),
                "row {i} before the NaN became {row:?}"
            );
        } else {
            assert!(
                row.iter().all(|x| x.is_nan()),
                "row {i} after the NaN is {row:?}"
            );
        }
    }
    // Head 1 is untouched and exact.
    let head1 = n * e..2 * n * e;
    assert!(reference::relative_error(&o[head1.clone()], &want.o[head1]) <= TOL);
}

#[test]
fn repeated_calls_allocate_nothing_new() {
    let ctx = common::context(false);
    let shape = [1, 2, 90, 16];
    let x = common::random(&mut common::rng(common::seed()), 2 * 90 * 16, 16);
    let step = || {
        let q = ctx.tensor(&x, &shape).unwrap();
        let out = ctx
            .forward(
                &q,
                &q,
                &q,
                &ForwardOptions {
                    output_final_state: true,
                    ..Default::default()
                },
            )
            .unwrap();
        ctx.read(&out.o).unwrap()
    };
    let first = step();
    let created = ctx.buffers_created();
    for _ in 0..3 {
        assert_eq!(step(), first);
    }
    assert_eq!(
        ctx.buffers_created(),
        created,
        "a warm call created buffers"
    );
}

#[test]
fn gl_backend() {
    // wgpu's OpenGL back end (llvmpipe through EGL here). Opting out takes an
    // explicit LIGHTNING_SKIP_GL=1, so a broken GL install cannot pass quietly.
    let options = ContextOptions {
        backends: Some(lightning_wgpu::wgpu::Backends::GL),
        ..Default::default()
    };
    let ctx = match Context::with_options(options) {
        Ok(ctx) => ctx,
        Err(e) if std::env::var("LIGHTNING_SKIP_GL").is_ok_and(|v| v == "1") => {
            eprintln!("GL skipped on request: {e}");
            return;
        }
        Err(e) => panic!("no GL adapter ({e}); set LIGHTNING_SKIP_GL=1 where GL does not exist"),
    };
    assert_eq!(
        ctx.adapter_info().backend,
        lightning_wgpu::wgpu::Backend::Gl
    );
    let mut c = Case::new(2, 2, 97, 24, 40);
    c.initial_state = true;
    check(&ctx, &[c]);
}
