//! The burn op (feature `burn`): its outputs and the gradients burn's
//! autodiff reaches through it, against the same formula written with burn's
//! own tensor ops (a dense masked matmul, f32) on the same device. Relative
//! error <= 1e-4 of the largest entry (f32 both ways, sums of <= 64 terms).
#![cfg(feature = "burn")]

use burn::tensor::{Device, Tensor, TensorData};
use lightning_wgpu::burn::{init, lightning_attention, AttentionOptions};
use lightning_wgpu::{alibi_slopes, Context, Error, Layout};
use rand::{rngs::StdRng, RngExt, SeedableRng};

const TOL: f32 = 1e-4;

fn random(rng: &mut StdRng, shape: [usize; 4], amplitude: f32, device: &Device) -> Tensor<4> {
    let data: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-amplitude..amplitude))
        .collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 data")
}

/// Asserts `got` is within TOL (relative to the largest entry of `want`).
fn assert_close(what: &str, got: Tensor<4>, want: Tensor<4>) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (got, want) = (values(got), values(want));
    let peak = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(peak > 0.0, "{what}: the expected values are all zero");
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| {
            if g.is_finite() {
                (g - w).abs()
            } else {
                f32::INFINITY
            }
        })
        .fold(0f32, f32::max);
    assert!(
        worst <= TOL * peak,
        "{what}: max error {worst} against a peak of {peak}"
    );
}

/// The op written with burn ops: per head the decay mask `lambda^(i-j)`
/// (j <= i), `lambda^(i+1)` on the initial state, `lambda^(n-1-j)` into the
/// final state; (b, h, n, d) layout.
fn naive(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    s0: Tensor<4>,
    slopes: &[f32],
    scale: f32,
) -> (Tensor<4>, Tensor<4>) {
    let [_, h, n, _] = q.dims();
    let device = q.device();
    let mut mask = Vec::with_capacity(h * n * n);
    let (mut into_o, mut into_s) = (Vec::new(), Vec::new());
    for &s in slopes {
        let lambda = |p: usize| (-(s as f64) * p as f64).exp() as f32;
        for i in 0..n {
            for j in 0..n {
                mask.push(if j <= i { lambda(i - j) } else { 0.0 });
            }
            into_o.push(lambda(i + 1));
            into_s.push(lambda(n - 1 - i));
        }
    }
    let last: Vec<f32> = slopes
        .iter()
        .map(|&s| (-(s as f64) * n as f64).exp() as f32)
        .collect();
    let mask = Tensor::<4>::from_data(TensorData::new(mask, [1, h, n, n]), &device);
    let into_o = Tensor::<4>::from_data(TensorData::new(into_o, [1, h, n, 1]), &device);
    let into_s = Tensor::<4>::from_data(TensorData::new(into_s, [1, h, n, 1]), &device);
    let last = Tensor::<4>::from_data(TensorData::new(last, [1, h, 1, 1]), &device);
    let q = q.mul_scalar(scale);
    let scores = q.clone().matmul(k.clone().swap_dims(2, 3)).mul(mask);
    let o = scores.matmul(v.clone()) + q.mul(into_o).matmul(s0.clone());
    let sn = k.swap_dims(2, 3).matmul(v.mul(into_s)) + s0.mul(last);
    (o, sn)
}

struct Case {
    b: usize,
    h: usize,
    n: usize,
    d: usize,
    e: usize,
    decay: bool,
    with_s0: bool,
    scale: f32,
}

/// Forward and every gradient (o and the final state both in the loss) of
/// one problem, ours against the naive formula.
fn check(ctx: &Context, device: &Device, case: &Case, seed: u64) {
    let Case { b, h, n, d, e, .. } = *case;
    let mut rng = StdRng::seed_from_u64(seed);
    let slopes = if case.decay {
        alibi_slopes(h)
    } else {
        vec![0.0; h]
    };
    let leaf = |rng: &mut StdRng, shape| random(rng, shape, 1.0, device).require_grad();
    let (q, k, v) = (
        leaf(&mut rng, [b, h, n, d]),
        leaf(&mut rng, [b, h, n, d]),
        leaf(&mut rng, [b, h, n, e]),
    );
    let s0 = leaf(&mut rng, [b, h, d, e]);
    let (w_o, w_s) = (
        random(&mut rng, [b, h, n, e], 1.0, device),
        random(&mut rng, [b, h, d, e], 1.0, device),
    );
    let opts = AttentionOptions {
        slopes: case.decay.then(|| slopes.clone()),
        scale: case.scale,
        layout: Layout::Bhnd,
    };
    let before = ctx.readbacks();
    let ours = lightning_attention(
        ctx,
        q.clone(),
        k.clone(),
        v.clone(),
        case.with_s0.then(|| s0.clone()),
        &opts,
    )
    .expect("the op");
    let grads = (ours.o.clone().mul(w_o.clone()).sum()
        + ours.final_state.clone().mul(w_s.clone()).sum())
    .backward();
    let ours_grads = [&q, &k, &v, &s0].map(|t| t.grad(&grads));
    assert_eq!(
        ctx.readbacks(),
        before,
        "the op read a buffer back to the host"
    );

    let (q2, k2, v2, s02) = (
        q.detach().require_grad(),
        k.detach().require_grad(),
        v.detach().require_grad(),
        s0.detach().require_grad(),
    );
    let s0_used = if case.with_s0 {
        s02.clone()
    } else {
        s02.clone().mul_scalar(0.0)
    };
    let (o, sn) = naive(
        q2.clone(),
        k2.clone(),
        v2.clone(),
        s0_used,
        &slopes,
        case.scale,
    );
    let grads = (o.clone().mul(w_o).sum() + sn.clone().mul(w_s).sum()).backward();
    let tag = format!(
        "b={b} h={h} n={n} d={d} e={e} decay={} s0={} seed={seed}",
        case.decay, case.with_s0
    );
    assert_close(&format!("o ({tag})"), ours.o, o);
    assert_close(&format!("final state ({tag})"), ours.final_state, sn);
    for (name, (got, leaf)) in ["dq", "dk", "dv"]
        .iter()
        .zip(ours_grads.iter().zip([&q2, &k2, &v2]))
    {
        let want = leaf.grad(&grads).expect("a reference gradient");
        assert_close(
            &format!("{name} ({tag})"),
            got.clone().expect("a gradient"),
            want,
        );
    }
    match (&ours_grads[3], case.with_s0) {
        (Some(ds0), true) => assert_close(
            &format!("ds0 ({tag})"),
            ds0.clone(),
            s02.grad(&grads).expect("ds0"),
        ),
        (None, false) => {}
        (got, used) => panic!(
            "ds0 present: {}, initial state given: {used}",
            got.is_some()
        ),
    }
}

/// The tests share one burn device and one context (burn's runtime registers
/// once per process), so the readback count one test checks would see another
/// test's reads: they take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn devices() -> (Device, Context, std::sync::MutexGuard<'static, ()>) {
    let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (device, ctx) =
        init().expect("burn's wgpu device (run `cargo xtask test`, which installs lavapipe)");
    (device, ctx, turn)
}

#[test]
fn forward_and_gradients_match_burn_ops() {
    let (device, ctx, _turn) = devices();
    let device = device.autodiff();
    let seed = 0x5eed_0b17;
    let cases = [
        Case {
            b: 1,
            h: 2,
            n: 37,
            d: 8,
            e: 12,
            decay: true,
            with_s0: true,
            scale: 0.5,
        },
        Case {
            b: 2,
            h: 3,
            n: 64,
            d: 16,
            e: 8,
            decay: true,
            with_s0: false,
            scale: 1.0,
        },
        Case {
            b: 1,
            h: 1,
            n: 5,
            d: 4,
            e: 4,
            decay: false,
            with_s0: true,
            scale: 1.0,
        },
        Case {
            b: 2,
            h: 4,
            n: 29,
            d: 12,
            e: 20,
            decay: false,
            with_s0: false,
            scale: 0.25,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        check(&ctx, &device, case, seed + i as u64);
    }
}

#[test]
fn forward_only_without_autodiff() {
    let (device, ctx, _turn) = devices();
    let mut rng = StdRng::seed_from_u64(0xf0_0d);
    let shape = [1, 2, 19, 8];
    let (q, k, v) = (
        random(&mut rng, shape, 1.0, &device),
        random(&mut rng, shape, 1.0, &device),
        random(&mut rng, shape, 1.0, &device),
    );
    let s0 = random(&mut rng, [1, 2, 8, 8], 1.0, &device);
    let slopes = alibi_slopes(2);
    let opts = AttentionOptions {
        slopes: Some(slopes.clone()),
        ..Default::default()
    };
    let ours = lightning_attention(
        &ctx,
        q.clone(),
        k.clone(),
        v.clone(),
        Some(s0.clone()),
        &opts,
    )
    .expect("the op");
    let (o, sn) = naive(q, k, v, s0, &slopes, 1.0);
    assert_close("o", ours.o, o);
    assert_close("final state", ours.final_state, sn);
}

/// A (b, n, h, d) tensor made by swapping the dims of a (b, h, n, d) one is
/// strided, not contiguous: the op must read it as its shape says.
#[test]
fn strided_inputs_and_the_bnhd_layout() {
    let (device, ctx, _turn) = devices();
    let mut rng = StdRng::seed_from_u64(0x57_21de);
    let shape = [2, 3, 21, 8];
    let [q, k, v] = [(); 3].map(|_| random(&mut rng, shape, 1.0, &device));
    let slopes = alibi_slopes(3);
    let bnhd = |t: &Tensor<4>| t.clone().swap_dims(1, 2);
    let opts = AttentionOptions {
        slopes: Some(slopes.clone()),
        layout: Layout::Bnhd,
        ..Default::default()
    };
    let ours =
        lightning_attention(&ctx, bnhd(&q), bnhd(&k), bnhd(&v), None, &opts).expect("the op");
    let zeros = Tensor::<4>::zeros([2, 3, 8, 8], &device);
    let (o, sn) = naive(q, k, v, zeros, &slopes, 1.0);
    assert_close("o (b, n, h, e)", ours.o, o.swap_dims(1, 2));
    assert_close("final state", ours.final_state, sn);
}

#[test]
fn bad_inputs_are_errors() {
    let (device, ctx, _turn) = devices();
    let t = |shape: [usize; 4]| Tensor::<4>::ones(shape, &device);
    let opts = AttentionOptions::default();
    let err = lightning_attention(
        &ctx,
        t([1, 2, 8, 4]),
        t([1, 2, 9, 4]),
        t([1, 2, 8, 4]),
        None,
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { arg: "k", .. }),
        "{err}"
    );
    let err = lightning_attention(
        &ctx,
        t([1, 2, 8, 4]),
        t([1, 2, 8, 4]),
        t([1, 2, 8, 4]),
        Some(t([1, 2, 4, 5])),
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "initial_state",
                ..
            }
        ),
        "{err}"
    );
    let bad_slopes = AttentionOptions {
        slopes: Some(vec![0.1]),
        ..Default::default()
    };
    let err = lightning_attention(
        &ctx,
        t([1, 2, 8, 4]),
        t([1, 2, 8, 4]),
        t([1, 2, 8, 4]),
        None,
        &bad_slopes,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Slopes(_)), "{err}");
    let half = t([1, 2, 8, 4]).cast(burn::tensor::DType::F16);
    let err =
        lightning_attention(&ctx, half, t([1, 2, 8, 4]), t([1, 2, 8, 4]), None, &opts).unwrap_err();
    assert!(matches!(err, Error::InvalidValue { arg: "q", .. }), "{err}");
}

/// A prefill's final state moved into a decode cache, then tokens decoded
/// one by one on burn tensors, equal one forward over the whole sequence.
#[test]
fn prefill_then_decode_equals_one_forward() {
    use lightning_wgpu::burn::{decode_step, write_states};
    use lightning_wgpu::DecodeOptions;
    let (device, ctx, _turn) = devices();
    let mut rng = StdRng::seed_from_u64(0xdec0de);
    let (b, h, n, extra, d, e) = (2, 3, 25, 6, 8, 12);
    let q = random(&mut rng, [b, h, n + extra, d], 1.0, &device);
    let k = random(&mut rng, [b, h, n + extra, d], 1.0, &device);
    let v = random(&mut rng, [b, h, n + extra, e], 1.0, &device);
    let slopes = alibi_slopes(h);
    let opts = AttentionOptions {
        slopes: Some(slopes.clone()),
        scale: 0.5,
        ..Default::default()
    };
    let whole =
        lightning_attention(&ctx, q.clone(), k.clone(), v.clone(), None, &opts).expect("the op");
    let part = |t: &Tensor<4>, r: std::ops::Range<usize>| t.clone().slice([0..b, 0..h, r]);
    let prefill = lightning_attention(
        &ctx,
        part(&q, 0..n),
        part(&k, 0..n),
        part(&v, 0..n),
        None,
        &opts,
    )
    .expect("prefill");
    // Requests in slots 2 and 0 of a cache of 3.
    let mut cache = ctx
        .tensor(&vec![7.0; 3 * h * d * e], &[3, h, d, e])
        .expect("a cache");
    write_states(&ctx, prefill.final_state, &mut cache, &[2, 0]).expect("write the states");
    let step_opts = DecodeOptions {
        slopes: Some(&slopes),
        scale: 0.5,
    };
    let mut outs = Vec::new();
    for i in n..n + extra {
        let token = |t: &Tensor<4>| part(t, i..i + 1).reshape([b, h, t.dims()[3]]);
        let o = decode_step(
            &ctx,
            token(&q),
            token(&k),
            token(&v),
            &mut cache,
            &[2, 0],
            &step_opts,
        )
        .expect("a step");
        outs.push(o.reshape([b, h, 1, e]));
    }
    let decoded = Tensor::cat(outs, 2);
    assert_close("decoded o", decoded, part(&whole.o, n..n + extra));
    let cache_values = ctx.read(&cache).expect("the cache");
    let per_slot = h * d * e;
    assert!(
        cache_values[per_slot..2 * per_slot]
            .iter()
            .all(|&x| x == 7.0),
        "slot 1 was touched"
    );
    let final_state = values(whole.final_state);
    let slot = |s: usize| &cache_values[s * per_slot..(s + 1) * per_slot];
    let worst = [(2, 0), (0, 1)]
        .iter()
        .flat_map(|&(s, r)| {
            slot(s)
                .iter()
                .zip(&final_state[r * per_slot..(r + 1) * per_slot])
        })
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let peak = final_state.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        worst <= TOL * peak,
        "cached states: max error {worst} against {peak}"
    );
    let err = write_states(
        &ctx,
        Tensor::<4>::zeros([1, h, d, e], &device),
        &mut cache,
        &[3],
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { arg: "slots", .. }),
        "{err}"
    );
}
