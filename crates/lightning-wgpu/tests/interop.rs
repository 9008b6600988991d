//! Working inside other people's GPU programs: a device the caller opened,
//! views of the caller's buffers at any (4-byte) offset, and recording into
//! the caller's encoder so that their passes and ours go in one submission.
//! Results against the f64 reference (f32: relative error <= 1e-5).

mod common;

use lightning_wgpu::{
    alibi_slopes, reference, wgpu, BackwardOptions, Context, ContextOptions, DType, DecodeOptions,
    Dims, Error, ForwardOptions, Gradients, Layout, Tensor,
};

const TOL: f64 = 1e-5;

/// A device of our own, opened with plain wgpu on the default adapter, as an
/// application would.
fn caller_device(features: wgpu::Features) -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("an adapter (run `cargo xtask test`, which installs lavapipe)");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: features,
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("a device");
    (adapter, device, queue)
}

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// One buffer of the caller's holding every tensor of a problem, each at an
/// offset that is a multiple of 4 but not of 256.
struct Arena {
    buffer: wgpu::Buffer,
    next: u64,
}

impl Arena {
    fn new(device: &wgpu::Device, bytes: u64) -> Arena {
        Arena {
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("caller's arena"),
                size: bytes,
                usage: USAGE,
                mapped_at_creation: false,
            }),
            next: 12,
        }
    }

    /// A view of `data` written at the next free offset.
    fn put(&mut self, ctx: &Context, data: &[f32], shape: &[usize]) -> Tensor {
        let at = self.next;
        ctx.queue()
            .write_buffer(&self.buffer, at, bytemuck::cast_slice(data));
        self.next = (at + data.len() as u64 * 4).next_multiple_of(4) + 36;
        Tensor::from_buffer(ctx, &self.buffer, at, shape, DType::F32).unwrap()
    }
}

#[test]
fn an_adopted_device_runs_the_kernels_on_views_of_the_callers_buffers() {
    let (adapter, device, queue) = caller_device(wgpu::Features::empty());
    let ctx = Context::from_wgpu(&adapter, device.clone(), queue.clone()).unwrap();
    // Created without SHADER_F16: f16 is read packed.
    assert!(!ctx.native_f16());
    assert!(!ctx.cooperative_matrix());
    let seed = common::seed();
    let mut rng = common::rng(seed);
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        let dims = Dims {
            b: 2,
            h: 3,
            n: 77,
            d: 20,
            e: 12,
        };
        let Dims { b, h, n, d, e } = dims;
        let (q, k, v) = (
            common::random(&mut rng, b * h * n * d, d),
            common::random(&mut rng, b * h * n * d, d),
            common::random(&mut rng, b * h * n * e, 1),
        );
        let s0 = common::random(&mut rng, b * h * d * e, 1);
        let mut arena = Arena::new(&device, 1 << 20);
        let (qs, vs) = (layout.shape(b, h, n, d), layout.shape(b, h, n, e));
        let (q_t, k_t, v_t) = (
            arena.put(&ctx, &q, &qs),
            arena.put(&ctx, &k, &qs),
            arena.put(&ctx, &v, &vs),
        );
        let s0_t = arena.put(&ctx, &s0, &dims.state_shape());
        let mut o = arena.put(&ctx, &vec![f32::NAN; b * h * n * e], &vs);
        let mut sn = arena.put(&ctx, &vec![f32::NAN; b * h * d * e], &dims.state_shape());
        assert!(
            !o.offset().is_multiple_of(256),
            "the views must not be binding-aligned"
        );
        let slopes = alibi_slopes(h);
        let opts = ForwardOptions {
            slopes: Some(&slopes),
            scale: 0.7,
            layout,
            initial_state: Some(&s0_t),
            ..Default::default()
        };
        ctx.forward_into(&q_t, &k_t, &v_t, &opts, &mut o, Some(&mut sn))
            .unwrap();
        let want = reference::forward(dims, layout, &q, &k, &v, &slopes, 0.7, Some(&s0));
        let eo = reference::relative_error(&ctx.read(&o).unwrap(), &want.o);
        let es = reference::relative_error(&ctx.read(&sn).unwrap(), &want.final_state);
        assert!(
            eo <= TOL && es <= TOL,
            "{layout} (seed {seed}): o {eo:e}, state {es:e}"
        );
        // The inputs are where the caller put them, untouched.
        assert_eq!(ctx.read(&q_t).unwrap(), q);
    }
}

#[test]
fn the_backward_and_decode_write_into_the_callers_buffers() {
    let (adapter, device, queue) = caller_device(wgpu::Features::empty());
    let ctx = Context::from_wgpu(&adapter, device.clone(), queue).unwrap();
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 1,
        h: 2,
        n: 70,
        d: 8,
        e: 6,
    };
    let Dims { b, h, n, d, e } = dims;
    let layout = Layout::Bhnd;
    let x = |rng: &mut _, len| common::random(rng, len, 4);
    let (q, k, v, d_o) = (
        x(&mut rng, b * h * n * d),
        x(&mut rng, b * h * n * d),
        x(&mut rng, b * h * n * e),
        x(&mut rng, b * h * n * e),
    );
    let (s0, dsn) = (x(&mut rng, b * h * d * e), x(&mut rng, b * h * d * e));
    let mut arena = Arena::new(&device, 1 << 20);
    let (qs, vs, ss) = (
        layout.shape(b, h, n, d),
        layout.shape(b, h, n, e),
        dims.state_shape(),
    );
    let (q_t, k_t, v_t, do_t) = (
        arena.put(&ctx, &q, &qs),
        arena.put(&ctx, &k, &qs),
        arena.put(&ctx, &v, &vs),
        arena.put(&ctx, &d_o, &vs),
    );
    let (s0_t, dsn_t) = (arena.put(&ctx, &s0, &ss), arena.put(&ctx, &dsn, &ss));
    let nan = |len| vec![f32::NAN; len];
    let mut g = Gradients {
        dq: arena.put(&ctx, &nan(q.len()), &qs),
        dk: arena.put(&ctx, &nan(k.len()), &qs),
        dv: arena.put(&ctx, &nan(v.len()), &vs),
        d_initial_state: arena.put(&ctx, &nan(s0.len()), &ss),
    };
    let slopes = alibi_slopes(h);
    let opts = BackwardOptions {
        forward: ForwardOptions {
            slopes: Some(&slopes),
            scale: 0.5,
            layout,
            initial_state: Some(&s0_t),
            ..Default::default()
        },
        d_final_state: Some(&dsn_t),
    };
    ctx.backward_into(&q_t, &k_t, &v_t, &do_t, &opts, &mut g)
        .unwrap();
    let want = reference::backward(
        dims,
        layout,
        &q,
        &k,
        &v,
        &d_o,
        &slopes,
        0.5,
        Some(&s0),
        Some(&dsn),
    );
    for (name, got, want) in [
        ("dq", &g.dq, &want.dq),
        ("dk", &g.dk, &want.dk),
        ("dv", &g.dv, &want.dv),
        ("dS0", &g.d_initial_state, &want.d_initial_state),
    ] {
        let err = reference::relative_error(&ctx.read(got).unwrap(), want);
        assert!(err <= TOL, "{name} (seed {seed}): {err:e}");
    }

    // Decode against a cache in the caller's buffer, at an odd offset.
    let slots = 5;
    let cache_data = x(&mut rng, slots * h * d * e);
    let mut cache = arena.put(&ctx, &cache_data, &[slots, h, d, e]);
    let (qd, kd, vd) = (
        x(&mut rng, 2 * h * d),
        x(&mut rng, 2 * h * d),
        x(&mut rng, 2 * h * e),
    );
    let mut o = arena.put(&ctx, &nan(2 * h * e), &[2, h, e]);
    let (qd_t, kd_t, vd_t) = (
        arena.put(&ctx, &qd, &[2, h, d]),
        arena.put(&ctx, &kd, &[2, h, d]),
        arena.put(&ctx, &vd, &[2, h, e]),
    );
    let dopts = DecodeOptions {
        slopes: Some(&slopes),
        scale: 1.0,
    };
    ctx.decode_step_into(&qd_t, &kd_t, &vd_t, &mut cache, &[4, 1], &dopts, &mut o)
        .unwrap();
    let o = ctx.read(&o).unwrap();
    for (r, slot) in [(0usize, 4usize), (1, 1)] {
        let size = h * d * e;
        let want = reference::forward(
            Dims {
                b: 1,
                h,
                n: 1,
                d,
                e,
            },
            Layout::Bhnd,
            &qd[r * h * d..(r + 1) * h * d],
            &kd[r * h * d..(r + 1) * h * d],
            &vd[r * h * e..(r + 1) * h * e],
            &slopes,
            1.0,
            Some(&cache_data[slot * size..(slot + 1) * size]),
        );
        let err = reference::relative_error(&o[r * h * e..(r + 1) * h * e], &want.o);
        assert!(err <= TOL, "decode request {r} (seed {seed}): {err:e}");
    }
}

#[test]
fn our_passes_and_the_callers_go_in_one_submission() {
    // The caller copies its data into q, k and v in its encoder, we record
    // the forward into the same encoder, the caller copies o out to a
    // buffer of its own; one submit, and nothing read back in between.
    let (adapter, device, queue) = caller_device(wgpu::Features::empty());
    let ctx = Context::from_wgpu(&adapter, device.clone(), queue.clone()).unwrap();
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 1,
        h: 2,
        n: 100,
        d: 16,
        e: 8,
    };
    let Dims { b, h, n, d, e } = dims;
    let (q, v) = (
        common::random(&mut rng, b * h * n * d, d),
        common::random(&mut rng, b * h * n * e, 1),
    );
    let source = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's source"),
        size: ((q.len() + v.len()) * 4) as u64,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&source, 0, bytemuck::cast_slice(&q));
    queue.write_buffer(&source, (q.len() * 4) as u64, bytemuck::cast_slice(&v));
    let mut arena = Arena::new(&device, 1 << 20);
    let q_t = arena.put(&ctx, &vec![0.0; q.len()], &[b, h, n, d]);
    let v_t = arena.put(&ctx, &vec![0.0; v.len()], &[b, h, n, e]);
    let o = arena.put(&ctx, &vec![f32::NAN; v.len()], &[b, h, n, e]);
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's copy of o"),
        size: (v.len() * 4) as u64,
        usage: USAGE,
        mapped_at_creation: false,
    });
    let reads = ctx.readbacks();
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&source, 0, q_t.buffer(), q_t.offset(), (q.len() * 4) as u64);
    encoder.copy_buffer_to_buffer(
        &source,
        (q.len() * 4) as u64,
        v_t.buffer(),
        v_t.offset(),
        (v.len() * 4) as u64,
    );
    let slopes = alibi_slopes(h);
    let opts = ForwardOptions {
        slopes: Some(&slopes),
        ..Default::default()
    };
    // k is q: a view may serve as several inputs.
    ctx.encode_forward(&mut encoder, &q_t, &q_t, &v_t, &opts, &o, None)
        .unwrap();
    encoder.copy_buffer_to_buffer(o.buffer(), o.offset(), &out, 0, (v.len() * 4) as u64);
    queue.submit([encoder.finish()]);
    assert_eq!(ctx.readbacks(), reads, "recording read nothing back");
    let got = ctx
        .read(&Tensor::from_buffer(&ctx, &out, 0, &[b, h, n, e], DType::F32).unwrap())
        .unwrap();
    let want = reference::forward(dims, Layout::Bhnd, &q, &q, &v, &slopes, 1.0, None);
    let err = reference::relative_error(&got, &want.o);
    assert!(err <= TOL, "(seed {seed}): {err:e}");
}

#[test]
fn views_that_cannot_work_are_refused_with_what_is_missing() {
    let ctx = common::context(false);
    let make = |usage, size| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let storage_only = make(wgpu::BufferUsages::STORAGE, 1024);
    let err = Tensor::from_buffer(
        &ctx,
        &make(wgpu::BufferUsages::COPY_DST, 1024),
        0,
        &[4],
        DType::F32,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BufferUsage {
                missing: "STORAGE",
                ..
            }
        ),
        "{err:?}"
    );
    let err = Tensor::from_buffer(&ctx, &storage_only, 6, &[4], DType::F32).unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { arg: "offset", .. }),
        "{err:?}"
    );
    let err = Tensor::from_buffer(&ctx, &storage_only, 1000, &[7], DType::F32).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    let err =
        Tensor::from_buffer(&ctx, &storage_only, 0, &[usize::MAX, 4], DType::F32).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    // A view without COPY_SRC cannot be read back, nor copied from.
    let t = Tensor::from_buffer(&ctx, &storage_only, 0, &[4], DType::F32).unwrap();
    let err = ctx.read(&t).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BufferUsage {
                missing: "COPY_SRC",
                ..
            }
        ),
        "{err:?}"
    );
    // A view belongs to the context it was made with.
    let other = common::context(false);
    let err = other.read(&t).unwrap_err();
    assert!(matches!(err, Error::ForeignTensor(_)), "{err:?}");
}

#[test]
fn an_adopted_device_without_the_tensor_cores_feature_refuses_to_require_them() {
    let (adapter, device, queue) = caller_device(wgpu::Features::empty());
    let err = Context::from_wgpu_with(
        &adapter,
        device,
        queue,
        ContextOptions {
            cooperative_matrix: Some(true),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingFeature {
                option: "cooperative_matrix",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn copy_into_moves_values_on_the_gpu_and_refuses_what_cannot_work() {
    let ctx = common::context(false);
    let seed = common::seed();
    let mut r = common::rng(seed);
    let src_values = common::random(&mut r, 6, 1);
    let dst_values = common::random(&mut r, 20, 1);
    let src = ctx.tensor(&src_values, &[2, 3]).unwrap();
    let mut dst = ctx.tensor(&dst_values, &[4, 5]).unwrap();
    ctx.copy_into(&src, &mut dst, 7).unwrap();
    let mut want = dst_values.clone();
    want[7..13].copy_from_slice(&src_values);
    assert_eq!(ctx.read(&dst).unwrap(), want, "seed {seed}");
    // The destination's known bound covers both what it held and what came in.
    let bound = dst_values
        .iter()
        .chain(&src_values)
        .fold(0f32, |m, x| m.max(x.abs()));
    assert_eq!(dst.max_abs(), Some(bound));

    let too_far = ctx.copy_into(&src, &mut dst, 15).unwrap_err();
    assert!(
        matches!(too_far, Error::InvalidValue { arg: "at", .. }),
        "{too_far}"
    );
    let halves = ctx.tensor_as(&src_values, &[2, 3], DType::F16).unwrap();
    let wrong_type = ctx.copy_into(&halves, &mut dst, 0).unwrap_err();
    assert!(
        matches!(wrong_type, Error::DType { arg: "src", .. }),
        "{wrong_type}"
    );
    let mut half_dst = ctx.tensor_as(&dst_values, &[20], DType::F16).unwrap();
    let odd = ctx.copy_into(&halves, &mut half_dst, 1).unwrap_err();
    assert!(
        matches!(odd, Error::InvalidValue { arg: "at", .. }),
        "{odd}"
    );
    let other = common::context(false);
    let foreign = other.tensor(&src_values, &[2, 3]).unwrap();
    let err = ctx.copy_into(&foreign, &mut dst, 0).unwrap_err();
    assert!(matches!(err, Error::ForeignTensor("src")), "{err}");
    // Nothing of the refused copies landed.
    assert_eq!(ctx.read(&dst).unwrap(), want);
}

#[test]
fn a_tensor_this_crate_writes_forgets_its_known_bound() {
    // A bound measured at upload must not outlive the values it measured:
    // it decides whether a half-precision call may take the tensor cores.
    let ctx = common::context(false);
    let (h, d, e) = (2, 4, 3);
    let mut cache = ctx
        .tensor(&vec![0.0; 2 * h * d * e], &[2, h, d, e])
        .unwrap();
    assert_eq!(cache.max_abs(), Some(0.0));
    let q = ctx.tensor(&vec![0.5; h * d], &[1, h, d]).unwrap();
    let v = ctx.tensor(&vec![900.0; h * e], &[1, h, e]).unwrap();
    ctx.decode_step(&q, &q, &v, &mut cache, &[1], &DecodeOptions::default())
        .unwrap();
    assert_eq!(cache.max_abs(), None, "the decode step wrote the cache");

    let x = ctx.tensor(&vec![0.25; h * 5 * d], &[1, h, 5, d]).unwrap();
    let mut o = ctx.tensor(&vec![0.0; h * 5 * d], &[1, h, 5, d]).unwrap();
    ctx.forward_into(&x, &x, &x, &ForwardOptions::default(), &mut o, None)
        .unwrap();
    assert_eq!(o.max_abs(), None, "the forward wrote o");
    assert_eq!(x.max_abs(), Some(0.25), "inputs keep theirs");
}
