//! Serving: the recurrent method, state carried between prefill chunks,
//! packed variable-length batches and the decode step, each against the f64
//! reference (relative error <= 1e-5, outputs poisoned before each run).

mod common;

use lightning_wgpu::{
    alibi_slopes, reference, Cache, Context, DType, DecodeOptions, Dims, Error, ForwardOptions,
    Layout, Method, Tensor,
};
use rand::rngs::StdRng;
use rand::RngExt;

const TOL: f64 = 1e-5;

/// One decode step's inputs: (q, k, v) for every request.
type Token = (Vec<f32>, Vec<f32>, Vec<f32>);

struct Problem {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    slopes: Vec<f32>,
}

fn problem(rng: &mut StdRng, dims: Dims) -> Problem {
    let Dims { b, h, n, d, e } = dims;
    Problem {
        q: common::random(rng, b * h * n * d, d),
        k: common::random(rng, b * h * n * d, d),
        v: common::random(rng, b * h * n * e, 1),
        slopes: alibi_slopes(h).iter().map(|s| s * 3.0).collect(),
    }
}

fn upload(ctx: &Context, x: &[f32], shape: [usize; 4]) -> Tensor {
    ctx.tensor(x, &shape).expect("upload")
}

#[test]
fn recurrent_method_matches_the_reference() {
    let ctx = common::context(false);
    let seed = common::seed();
    let mut rng = common::rng(seed);
    for (i, (dims, layout, init)) in [
        (
            Dims {
                b: 2,
                h: 3,
                n: 77,
                d: 20,
                e: 12,
            },
            Layout::Bhnd,
            true,
        ),
        (
            Dims {
                b: 1,
                h: 2,
                n: 65,
                d: 64,
                e: 200,
            },
            Layout::Bnhd,
            false,
        ),
        (
            Dims {
                b: 3,
                h: 1,
                n: 1,
                d: 1,
                e: 1,
            },
            Layout::Bhnd,
            true,
        ),
        (
            Dims {
                b: 1,
                h: 2,
                n: 40,
                d: 130,
                e: 7,
            },
            Layout::Bnhd,
            true,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let p = problem(&mut rng, dims);
        let s0 = common::random(&mut rng, dims.b * dims.h * dims.d * dims.e, 1);
        let s0_t = upload(&ctx, &s0, dims.state_shape());
        let qk = layout.shape(dims.b, dims.h, dims.n, dims.d);
        let vs = layout.shape(dims.b, dims.h, dims.n, dims.e);
        let mut o = common::poisoned(&ctx, &vs);
        let mut state = common::poisoned(&ctx, &dims.state_shape());
        let opts = ForwardOptions {
            slopes: Some(&p.slopes),
            scale: 0.8,
            layout,
            initial_state: init.then_some(&s0_t),
            method: Method::Recurrent,
            ..Default::default()
        };
        let (q, k, v) = (
            upload(&ctx, &p.q, qk),
            upload(&ctx, &p.k, qk),
            upload(&ctx, &p.v, vs),
        );
        ctx.forward_into(&q, &k, &v, &opts, &mut o, Some(&mut state))
            .unwrap();
        let want = reference::forward(
            dims,
            layout,
            &p.q,
            &p.k,
            &p.v,
            &p.slopes,
            0.8,
            init.then_some(&s0[..]),
        );
        let eo = reference::relative_error(&ctx.read(&o).unwrap(), &want.o);
        let es = reference::relative_error(&ctx.read(&state).unwrap(), &want.final_state);
        assert!(
            eo <= TOL && es <= TOL,
            "case {i} {dims:?} (seed {seed}): o {eo:e}, state {es:e}"
        );
        // And the chunked method agrees with it.
        let chunk = ctx
            .forward(
                &q,
                &k,
                &v,
                &ForwardOptions {
                    method: Method::Chunk,
                    ..opts
                },
            )
            .unwrap();
        let ec = reference::relative_error(&ctx.read(&chunk.o).unwrap(), &want.o);
        assert!(ec <= TOL, "case {i}: chunk {ec:e}");
    }
}

#[test]
fn recurrent_method_on_sequences_past_what_one_invocation_may_walk() {
    // One invocation used to walk every row of a sequence; llvmpipe stops
    // such a loop after about 65535 / (6 + d / 8) rows and the rest came
    // back as zeros with no error (rows from 4681 on at d = 64). The plan
    // now splits rows into dispatches that carry the state.
    let ctx = common::context(false);
    let seed = common::seed();
    let mut rng = common::rng(seed);
    for (dims, layout) in [
        (
            Dims {
                b: 1,
                h: 1,
                n: 12_001,
                d: 64,
                e: 8,
            },
            Layout::Bhnd,
        ),
        (
            Dims {
                b: 1,
                h: 2,
                n: 2_500,
                d: 1024,
                e: 4,
            },
            Layout::Bnhd,
        ),
    ] {
        let Dims { b, h, n, d, e } = dims;
        let p = problem(&mut rng, dims);
        // A slow decay, so the first rows still matter at the last.
        let slopes: Vec<f32> = vec![1e-3; h];
        let mut o = common::poisoned(&ctx, &layout.shape(b, h, n, e));
        let opts = ForwardOptions {
            slopes: Some(&slopes),
            layout,
            method: Method::Recurrent,
            ..Default::default()
        };
        ctx.forward_into(
            &upload(&ctx, &p.q, layout.shape(b, h, n, d)),
            &upload(&ctx, &p.k, layout.shape(b, h, n, d)),
            &upload(&ctx, &p.v, layout.shape(b, h, n, e)),
            &opts,
            &mut o,
            None,
        )
        .unwrap();
        let got = ctx.read(&o).unwrap();
        let want = reference::forward(dims, layout, &p.q, &p.k, &p.v, &slopes, 1.0, None);
        let err = reference::relative_error(&got, &want.o);
        assert!(err <= TOL, "{dims:?} (seed {seed}): {err:e}");
        // The last rows are no zeros.
        let last = layout.index(h, n, e, [0, 0, n - 1, 0]);
        assert!(got[last..last + e].iter().any(|&x| x != 0.0));
    }
}

#[test]
fn prefill_in_chunks_equals_one_call() {
    let ctx = common::context(false);
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 2,
        h: 2,
        n: 300,
        d: 24,
        e: 40,
    };
    let p = problem(&mut rng, dims);
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        for method in [Method::Chunk, Method::Recurrent] {
            // Random split points, including chunks of one token.
            let mut cuts = vec![0, dims.n];
            for _ in 0..4 {
                cuts.push(rng.random_range(1..dims.n));
            }
            cuts.push(1);
            cuts.sort();
            cuts.dedup();
            let mut state: Option<Tensor> = None;
            let mut o_all = vec![0.0f32; dims.b * dims.h * dims.n * dims.e];
            for w in cuts.windows(2) {
                let (r0, r1) = (w[0], w[1]);
                let part = Dims { n: r1 - r0, ..dims };
                let qk = layout.shape(dims.b, dims.h, part.n, dims.d);
                let vs = layout.shape(dims.b, dims.h, part.n, dims.e);
                let q = upload(&ctx, &common::rows(&p.q, layout, &dims, dims.d, r0, r1), qk);
                let k = upload(&ctx, &common::rows(&p.k, layout, &dims, dims.d, r0, r1), qk);
                let v = upload(&ctx, &common::rows(&p.v, layout, &dims, dims.e, r0, r1), vs);
                let opts = ForwardOptions {
                    slopes: Some(&p.slopes),
                    layout,
                    method,
                    initial_state: state.as_ref(),
                    output_final_state: true,
                    ..Default::default()
                };
                let out = ctx.forward(&q, &k, &v, &opts).unwrap();
                let o = ctx.read(&out.o).unwrap();
                for b in 0..dims.b {
                    for h in 0..dims.h {
                        for i in r0..r1 {
                            for c in 0..dims.e {
                                o_all[layout.index(dims.h, dims.n, dims.e, [b, h, i, c])] =
                                    o[layout.index(dims.h, part.n, dims.e, [b, h, i - r0, c])];
                            }
                        }
                    }
                }
                state = out.final_state;
            }
            let want = reference::forward(dims, layout, &p.q, &p.k, &p.v, &p.slopes, 1.0, None);
            let eo = reference::relative_error(&o_all, &want.o);
            let es = reference::relative_error(
                &ctx.read(state.as_ref().unwrap()).unwrap(),
                &want.final_state,
            );
            assert!(
                eo <= TOL && es <= TOL,
                "{layout} {method:?} cuts {cuts:?} (seed {seed}): o {eo:e} state {es:e}"
            );
        }
    }
}

#[test]
fn packed_sequences_equal_running_each_alone() {
    let ctx = common::context(false);
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let (h, d, e) = (3, 20, 36);
    let lens = [1usize, 70, 5, 129, 64];
    let n: usize = lens.iter().sum();
    let mut cu = vec![0usize];
    for l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    let dims = Dims { b: 1, h, n, d, e };
    let p = problem(&mut rng, dims);
    let s0 = common::random(&mut rng, lens.len() * h * d * e, 1);
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        for method in [Method::Chunk, Method::Recurrent] {
            let qk = layout.shape(1, h, n, d);
            let vs = layout.shape(1, h, n, e);
            let s0_t = upload(&ctx, &s0, [lens.len(), h, d, e]);
            let mut o = common::poisoned(&ctx, &vs);
            let mut state = common::poisoned(&ctx, &[lens.len(), h, d, e]);
            let opts = ForwardOptions {
                slopes: Some(&p.slopes),
                layout,
                method,
                initial_state: Some(&s0_t),
                cu_seqlens: Some(&cu),
                ..Default::default()
            };
            let (q, k, v) = (
                upload(&ctx, &p.q, qk),
                upload(&ctx, &p.k, qk),
                upload(&ctx, &p.v, vs),
            );
            ctx.forward_into(&q, &k, &v, &opts, &mut o, Some(&mut state))
                .unwrap();
            let got_o = ctx.read(&o).unwrap();
            let got_s = ctx.read(&state).unwrap();
            for (s, w) in cu.windows(2).enumerate() {
                let part = Dims {
                    n: w[1] - w[0],
                    ..dims
                };
                let init = &s0[s * h * d * e..(s + 1) * h * d * e];
                let want = reference::forward(
                    part,
                    layout,
                    &common::rows(&p.q, layout, &dims, d, w[0], w[1]),
                    &common::rows(&p.k, layout, &dims, d, w[0], w[1]),
                    &common::rows(&p.v, layout, &dims, e, w[0], w[1]),
                    &p.slopes,
                    1.0,
                    Some(init),
                );
                let eo = reference::relative_error(
                    &common::rows(&got_o, layout, &dims, e, w[0], w[1]),
                    &want.o,
                );
                let es = reference::relative_error(
                    &got_s[s * h * d * e..(s + 1) * h * d * e],
                    &want.final_state,
                );
                assert!(
                    eo <= TOL && es <= TOL,
                    "{layout} {method:?} sequence {s} (seed {seed}): o {eo:e} state {es:e}"
                );
            }
        }
    }
}

#[test]
fn decode_steps_follow_the_reference_per_request() {
    let ctx = common::context(false);
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let (h, d, e, cache_slots, steps) = (2, 36, 20, 6, 5);
    // Three live requests in scattered slots, and one padded entry.
    let slots = [4, -1, 0, 2];
    let batch = slots.len();
    let slopes = alibi_slopes(h);
    let start = common::random(&mut rng, cache_slots * h * d * e, 1);
    let mut cache = upload(&ctx, &start, [cache_slots, h, d, e]);
    let mut tokens = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..steps {
        let q = common::random(&mut rng, batch * h * d, d);
        let k = common::random(&mut rng, batch * h * d, d);
        let v = common::random(&mut rng, batch * h * e, 1);
        let o = ctx
            .decode_step(
                &ctx.tensor(&q, &[batch, h, d]).unwrap(),
                &ctx.tensor(&k, &[batch, h, d]).unwrap(),
                &ctx.tensor(&v, &[batch, h, e]).unwrap(),
                &mut cache,
                &slots,
                &DecodeOptions {
                    slopes: Some(&slopes),
                    scale: 0.5,
                },
            )
            .unwrap();
        outputs.push(ctx.read(&o).unwrap());
        tokens.push((q, k, v));
    }
    let cache_now = ctx.read(&cache).unwrap();
    let state_len = h * d * e;
    for (r, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            for o in &outputs {
                assert!(
                    o[r * h * e..(r + 1) * h * e].iter().all(|&x| x == 0.0),
                    "padding output not zero"
                );
            }
            continue;
        }
        // This request's tokens as one sequence (b = 1, bhnd: per head, per step).
        let dims = Dims {
            b: 1,
            h,
            n: steps,
            d,
            e,
        };
        let gather = |pick: &dyn Fn(&Token) -> &Vec<f32>, w: usize| {
            let mut x = vec![0.0; h * steps * w];
            for (t, tok) in tokens.iter().enumerate() {
                for hh in 0..h {
                    let src = &pick(tok)[(r * h + hh) * w..(r * h + hh + 1) * w];
                    x[(hh * steps + t) * w..(hh * steps + t + 1) * w].copy_from_slice(src);
                }
            }
            x
        };
        let (q, k, v) = (
            gather(&|t| &t.0, d),
            gather(&|t| &t.1, d),
            gather(&|t| &t.2, e),
        );
        let init = &start[slot as usize * state_len..(slot as usize + 1) * state_len];
        let want = reference::forward(dims, Layout::Bhnd, &q, &k, &v, &slopes, 0.5, Some(init));
        let mut got = vec![0.0; h * steps * e];
        for (t, o) in outputs.iter().enumerate() {
            for hh in 0..h {
                got[(hh * steps + t) * e..(hh * steps + t + 1) * e]
                    .copy_from_slice(&o[(r * h + hh) * e..(r * h + hh + 1) * e]);
            }
        }
        let eo = reference::relative_error(&got, &want.o);
        let slot_state = &cache_now[slot as usize * state_len..(slot as usize + 1) * state_len];
        let es = reference::relative_error(slot_state, &want.final_state);
        assert!(
            eo <= TOL && es <= TOL,
            "request {r} slot {slot} (seed {seed}): o {eo:e} state {es:e}"
        );
    }
    // Slots no request names are untouched.
    for slot in [1usize, 3, 5] {
        let range = slot * state_len..(slot + 1) * state_len;
        assert_eq!(
            &cache_now[range.clone()],
            &start[range],
            "slot {slot} changed"
        );
    }
}

#[test]
fn bad_slots_and_offsets_are_refused() {
    let ctx = common::context(false);
    let (h, d, e) = (2, 4, 4);
    let q = ctx.tensor(&[0.5; 3 * 2 * 4], &[3, h, d]).unwrap();
    let mut cache = ctx.tensor(&[0.25; 4 * 2 * 16], &[4, h, d, e]).unwrap();
    let opts = DecodeOptions::default();
    let err = ctx
        .decode_step(&q, &q, &q, &mut cache, &[0, 4, 1], &opts)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SlotOutOfRange {
                request: 1,
                slot: 4,
                slots: 4
            }
        ),
        "{err:?}"
    );
    let err = ctx
        .decode_step(&q, &q, &q, &mut cache, &[2, -1, 2], &opts)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DuplicateSlot {
                slot: 2,
                first: 0,
                second: 2
            }
        ),
        "{err:?}"
    );
    let err = ctx
        .decode_step(&q, &q, &q, &mut cache, &[0, 1], &opts)
        .unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { arg: "slots", .. }),
        "{err:?}"
    );

    let x = ctx.tensor(&[0.5; 10 * 2 * 4], &[1, 2, 10, 4]).unwrap();
    for (cu, word) in [
        (&[0usize, 5, 5, 10][..], "increasing"),
        (&[0, 4, 9][..], "end at n = 10"),
        (&[1, 10][..], "start at 0"),
        (&[0][..], "at least 2"),
    ] {
        let err = ctx
            .forward(
                &x,
                &x,
                &x,
                &ForwardOptions {
                    cu_seqlens: Some(cu),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::CuSeqlens(m) if m.contains(word)),
            "{cu:?}: {err}"
        );
    }
    let x2 = ctx.tensor(&[0.5; 2 * 10 * 2 * 4], &[2, 2, 10, 4]).unwrap();
    let err = ctx
        .forward(
            &x2,
            &x2,
            &x2,
            &ForwardOptions {
                cu_seqlens: Some(&[0, 10]),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::CuSeqlens(m) if m.contains("batch = 1")),
        "{err}"
    );
    // States of a packed batch are (N, h, d, e).
    let s0 = ctx.tensor(&[0.0; 2 * 16], &[1, 2, 4, 4]).unwrap();
    let opts = ForwardOptions {
        cu_seqlens: Some(&[0, 3, 10]),
        initial_state: Some(&s0),
        ..Default::default()
    };
    let err = ctx.forward(&x, &x, &x, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "initial_state",
                dim: "batch",
                got: 1,
                expected: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Decode steps against a cache of `slots` slots, on `ctx`, for requests at
/// `at` (negative: padding), checked per request against the recurrence
/// and, for a sample of the other slots, left as they were. `sharded`: the
/// cache is a [`StateCache`] that must span several buffers.
fn decode_against_a_large_cache(
    ctx: &Context,
    (slots, h, d, e): (usize, usize, usize, usize),
    at: &[i32],
    sharded: bool,
) {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let size = h * d * e;
    let start = common::random(&mut rng, slots * size, 1);
    if sharded {
        let mut cache = ctx.state_cache(slots, h, d, e).unwrap();
        assert!(cache.shards().len() > 2, "{} shards", cache.shards().len());
        // Requests on both sides of every shard's end.
        let mut end = 0;
        for shard in &cache.shards()[..cache.shards().len() - 1] {
            end += shard.shape()[0] as i32;
            assert!(
                at.contains(&(end - 1)) && at.contains(&end),
                "no request at shard end {end}"
            );
        }
        // Written in runs that straddle the shards' ends.
        for first in (0..slots).step_by(7) {
            let count = 7.min(slots - first);
            let run = &start[first * size..(first + count) * size];
            let states = ctx.tensor(run, &[count, h, d, e]).unwrap();
            ctx.write_slots(&mut cache, first, &states).unwrap();
        }
        check_decode(
            ctx,
            &mut cache,
            (slots, h, d, e),
            &start,
            at,
            seed,
            &mut rng,
        );
    } else {
        let mut cache = ctx.tensor(&start, &[slots, h, d, e]).unwrap();
        check_decode(
            ctx,
            &mut cache,
            (slots, h, d, e),
            &start,
            at,
            seed,
            &mut rng,
        );
    }
}

fn check_decode(
    ctx: &Context,
    cache: &mut impl Cache,
    (slots, h, d, e): (usize, usize, usize, usize),
    start: &[f32],
    at: &[i32],
    seed: u64,
    rng: &mut StdRng,
) {
    let size = h * d * e;
    let batch = at.len();
    let q = common::random(rng, batch * h * d, d);
    let k = common::random(rng, batch * h * d, d);
    let v = common::random(rng, batch * h * e, 1);
    let slopes = alibi_slopes(h);
    // Poisoned: padding's zeros and every request's output must be written.
    let mut o = common::poisoned(ctx, &[batch, h, e]);
    ctx.decode_step_into(
        &ctx.tensor(&q, &[batch, h, d]).unwrap(),
        &ctx.tensor(&k, &[batch, h, d]).unwrap(),
        &ctx.tensor(&v, &[batch, h, e]).unwrap(),
        cache,
        at,
        &DecodeOptions {
            slopes: Some(&slopes),
            scale: 0.5,
        },
        &mut o,
    )
    .unwrap();
    let o = ctx.read(&o).unwrap();
    let after = ctx.read_slots(cache, 0, slots).unwrap();
    let one = Dims {
        b: 1,
        h,
        n: 1,
        d,
        e,
    };
    for (r, &slot) in at.iter().enumerate() {
        let got = &o[r * h * e..(r + 1) * h * e];
        if slot < 0 {
            assert!(got.iter().all(|&x| x == 0.0), "padding request {r}");
            continue;
        }
        let s = slot as usize * size;
        let want = reference::forward(
            one,
            Layout::Bhnd,
            &q[r * h * d..(r + 1) * h * d],
            &k[r * h * d..(r + 1) * h * d],
            &v[r * h * e..(r + 1) * h * e],
            &slopes,
            0.5,
            Some(&start[s..s + size]),
        );
        let err = reference::relative_error(got, &want.o);
        assert!(
            err <= TOL,
            "request {r} at slot {slot} (seed {seed}): {err:e}"
        );
        let err = reference::relative_error(&after[s..s + size], &want.final_state);
        assert!(err <= TOL, "slot {slot}'s state (seed {seed}): {err:e}");
    }
    for slot in (0..slots).step_by(slots / 7 + 1) {
        if !at.contains(&(slot as i32)) {
            let s = slot * size;
            assert_eq!(
                &after[s..s + size],
                &start[s..s + size],
                "slot {slot} was touched"
            );
        }
    }
}

#[test]
fn a_decode_cache_larger_than_one_binding_is_windowed() {
    // Fifty slots more than one binding holds: 4 x 64 x 64 f32 slots on a
    // binding of 256 MiB or less (lavapipe: 128 MiB), the serving shape h =
    // 32, d = e = 128 on larger ones (the H200: 2 GiB).
    let ctx = common::context(false);
    let binding = ctx.limits().max_storage_buffer_binding_size as usize;
    let (h, d, e) = if binding <= 256 << 20 {
        (4, 64, 64)
    } else {
        (32, 128, 128)
    };
    let slots = binding / (h * d * e * 4) + 50;
    let last = slots as i32 - 1;
    let middle = slots as i32 / 2;
    decode_against_a_large_cache(
        &ctx,
        (slots, h, d, e),
        &[0, middle, -1, last, middle / 3, middle - 1],
        false,
    );
}

#[test]
fn decode_windows_hold_whole_slots_at_any_alignment() {
    // Small bindings: many windows, slots of 3 x 5 x 7 f32 (420 bytes,
    // not a multiple of the 256-byte offset alignment).
    let ctx = common::context_with(lightning_wgpu::ContextOptions {
        max_binding_bytes: Some(4096),
        ..Default::default()
    });
    decode_against_a_large_cache(&ctx, (97, 3, 5, 7), &[96, -2, 0, 9, 10, 41, 88, -1], false);
}

#[test]
fn a_decode_cache_larger_than_one_buffer_spans_several() {
    // Buffers of 16 KiB: 39 slots of 420 bytes each, three shards for 97
    // slots, each bound in windows of 4 KiB (9 slots); requests on both
    // sides of the shards' ends, and padding.
    let ctx = common::context_with(lightning_wgpu::ContextOptions {
        max_binding_bytes: Some(4096),
        max_buffer_bytes: Some(16 << 10),
        ..Default::default()
    });
    assert!(
        ctx.empty(&[97, 3, 5, 7], DType::F32).is_err(),
        "one buffer holds the cache"
    );
    decode_against_a_large_cache(
        &ctx,
        (97, 3, 5, 7),
        &[96, -1, 0, 38, 39, 77, 78, 41, -2, -3],
        true,
    );
}

#[test]
fn grouped_heads_and_drafts_on_a_cache_over_several_buffers_equal_one_buffer() {
    // The same steps against one tensor and against a cache of three
    // shards (the caller's own, through the Cache trait) on the same
    // device: every output and state bit for bit.
    struct Shards(Vec<Tensor>);
    impl Cache for Shards {
        fn shards(&self) -> &[Tensor] {
            &self.0
        }
    }
    let ctx = common::context(false);
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let (slots, hkv, group, d, e) = (50, 2, 3, 6, 5);
    let size = hkv * d * e;
    let start = common::random(&mut rng, slots * size, 1);
    let mut one = ctx.tensor(&start, &[slots, hkv, d, e]).unwrap();
    let mut sharded = Shards(
        [0, 17, 34]
            .map(|first: usize| {
                let end = (first + 17).min(slots);
                let part = &start[first * size..end * size];
                ctx.tensor(part, &[end - first, hkv, d, e]).unwrap()
            })
            .into(),
    );
    let at = [49, -1, 0, 16, 17, 33, 34];
    let batch = at.len();
    let slopes = alibi_slopes(hkv);
    let opts = DecodeOptions {
        slopes: Some(&slopes),
        scale: 0.7,
    };
    for step in 0..2 {
        let q = common::random(&mut rng, batch * hkv * group * d, d);
        let k = common::random(&mut rng, batch * hkv * d, d);
        let v = common::random(&mut rng, batch * hkv * e, 1);
        let q = ctx.tensor(&q, &[batch, hkv * group, d]).unwrap();
        let k = ctx.tensor(&k, &[batch, hkv, d]).unwrap();
        let v = ctx.tensor(&v, &[batch, hkv, e]).unwrap();
        let a = ctx.decode_step(&q, &k, &v, &mut one, &at, &opts).unwrap();
        let b = ctx
            .decode_step(&q, &k, &v, &mut sharded, &at, &opts)
            .unwrap();
        assert_eq!(
            ctx.read(&a).unwrap(),
            ctx.read(&b).unwrap(),
            "grouped o, step {step} (seed {seed})"
        );
    }
    // Drafts of up to three tokens (one head each), two accepted.
    let (t, tokens, accepted) = (3, [3, 0, 1, 2, 3, 1, 2], [2, 0, 1, 1, 2, 0, 2]);
    let q = common::random(&mut rng, t * batch * hkv * d, d);
    let v = common::random(&mut rng, t * batch * hkv * e, 1);
    let q = ctx.tensor(&q, &[t, batch, hkv, d]).unwrap();
    let v = ctx.tensor(&v, &[t, batch, hkv, e]).unwrap();
    let (oa, da) = ctx
        .decode_draft(&q, &q, &v, &one, &at, &tokens, &opts)
        .unwrap();
    let (ob, db) = ctx
        .decode_draft(&q, &q, &v, &sharded, &at, &tokens, &opts)
        .unwrap();
    assert_eq!(
        ctx.read(&oa).unwrap(),
        ctx.read(&ob).unwrap(),
        "draft o (seed {seed})"
    );
    ctx.commit_draft(&mut one, &da, &accepted).unwrap();
    ctx.commit_draft(&mut sharded, &db, &accepted).unwrap();
    let want = ctx.read(&one).unwrap();
    assert_ne!(want, start, "the steps changed nothing");
    assert_eq!(
        ctx.read_slots(&sharded, 0, slots).unwrap(),
        want,
        "states (seed {seed})"
    );
}

#[test]
fn state_cache_slots_are_checked() {
    let ctx = common::context_with(lightning_wgpu::ContextOptions {
        max_buffer_bytes: Some(16 << 10),
        ..Default::default()
    });
    let (h, d, e) = (3, 5, 7);
    let mut cache = ctx.state_cache(97, h, d, e).unwrap();
    assert_eq!(cache.shape(), [97, h, d, e]);
    let fresh = ctx.read_slots(&cache, 0, 97).unwrap();
    assert!(fresh.iter().all(|&x| x == 0.0), "a new cache is zeroed");
    // A run over two shards' ends comes back as written, its neighbours zero.
    let mut rng = common::rng(common::seed());
    let run = common::random(&mut rng, 30 * h * d * e, 1);
    ctx.write_slots(&mut cache, 25, &ctx.tensor(&run, &[30, h, d, e]).unwrap())
        .unwrap();
    assert_eq!(ctx.read_slots(&cache, 25, 30).unwrap(), run);
    assert!(ctx
        .read_slots(&cache, 24, 1)
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    assert!(ctx
        .read_slots(&cache, 55, 1)
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    let state = |n: usize, dims: [usize; 3]| {
        let len = n * dims.iter().product::<usize>();
        ctx.tensor(&vec![1.0; len], &[n, dims[0], dims[1], dims[2]])
            .unwrap()
    };
    let err = ctx
        .write_slots(&mut cache, 90, &state(8, [h, d, e]))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { arg: "first", .. }),
        "{err}"
    );
    let err = ctx
        .write_slots(&mut cache, 0, &state(1, [h, d, 6]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "states",
                dim: "e",
                ..
            }
        ),
        "{err}"
    );
    let err = ctx.read_slots(&cache, 97, 1).unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { arg: "first", .. }),
        "{err}"
    );
    let err = ctx.read_slots(&cache, 0, 0).unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { arg: "first", .. }),
        "{err}"
    );
    // A slot no buffer can hold, and empty caches.
    let err = ctx.state_cache(2, 64, 16, 16).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                arg: "cache slot",
                ..
            }
        ),
        "{err}"
    );
    let err = ctx.state_cache(0, h, d, e).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Empty {
                arg: "cache",
                dim: "slots"
            }
        ),
        "{err}"
    );
    // Requests past the last slot of the last shard.
    let q = ctx.tensor(&[0.5; 15], &[1, h, d]).unwrap();
    let v = ctx.tensor(&[0.5; 21], &[1, h, e]).unwrap();
    let err = ctx
        .decode_step(&q, &q, &v, &mut cache, &[97], &DecodeOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SlotOutOfRange {
                slot: 97,
                slots: 97,
                ..
            }
        ),
        "{err}"
    );
}
