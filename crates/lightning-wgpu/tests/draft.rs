//! Multi-token decoding with rollback: per-token outputs and states against
//! the f64 token recurrence, requests of different draft lengths and
//! padding in one call, the cache untouched until the commit, and the
//! commit leaving each slot at the state after its accepted tokens.
//! Relative error <= 1e-5 (f32), the storage tolerance for halves.

mod common;

use common::{random, rng, seed};
use lightning_wgpu::{alibi_slopes, reference, DType, DecodeOptions, Dims, Error, Layout};

/// The f64 reference of one request: o and the state after each of its
/// first `tokens` tokens, from state `s0`, token-major inputs (each prefix
/// as a (1, h, j, *) problem of its own).
#[allow(clippy::too_many_arguments)]
fn recurrence(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (batch, h, d, e): (usize, usize, usize, usize),
    r: usize,
    tokens: usize,
    s0: &[f32],
    slopes: &[f32],
    scale: f32,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let (mut outs, mut states) = (Vec::new(), Vec::new());
    for j in 1..=tokens {
        // (1, h, j, w) in Bhnd from rows (i, r) of the token-major input.
        let prefix = |x: &[f32], w: usize| {
            let mut out = vec![0.0; h * j * w];
            for i in 0..j {
                for hh in 0..h {
                    let from = ((i * batch + r) * h + hh) * w;
                    out[(hh * j + i) * w..][..w].copy_from_slice(&x[from..from + w]);
                }
            }
            out
        };
        let dims = Dims {
            b: 1,
            h,
            n: j,
            d,
            e,
        };
        let out = reference::forward(
            dims,
            Layout::Bhnd,
            &prefix(q, d),
            &prefix(k, d),
            &prefix(v, e),
            slopes,
            scale,
            Some(s0),
        );
        // Token j - 1's output: the last row of every head.
        outs.push(
            (0..h)
                .flat_map(|hh| out.o[(hh * j + j - 1) * e..][..e].to_vec())
                .collect(),
        );
        states.push(out.final_state);
    }
    (outs, states)
}

/// The f64 reference of request r with q of `group` times k's heads: o of
/// every q head (`(token, hq * e)`) and the states, each member of a group
/// run as q heads of its own over the kv heads.
#[allow(clippy::too_many_arguments)]
fn grouped_recurrence(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (t, batch, h, d, e, group): (usize, usize, usize, usize, usize, usize),
    r: usize,
    tokens: usize,
    s0: &[f32],
    slopes: &[f32],
    scale: f32,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let hq = h * group;
    let mut outs = vec![vec![0.0; hq * e]; tokens];
    let mut states = Vec::new();
    for m in 0..group {
        // q heads m, m + group, ... of every token: one per kv head.
        let mut qm = vec![0.0; t * batch * h * d];
        for row in 0..t * batch {
            for g in 0..h {
                let from = (row * hq + g * group + m) * d;
                qm[(row * h + g) * d..][..d].copy_from_slice(&q[from..from + d]);
            }
        }
        let (o, s) = recurrence((&qm, k, v), (batch, h, d, e), r, tokens, s0, slopes, scale);
        for (i, oi) in o.iter().enumerate() {
            for g in 0..h {
                outs[i][(g * group + m) * e..][..e].copy_from_slice(&oi[g * e..][..e]);
            }
        }
        states = s;
    }
    (outs, states)
}

fn check(dtype: DType, group: usize, seed: u64) {
    let ctx = common::context(false);
    let mut r = rng(seed);
    let (t, batch, h, d, e) = (4, 6, 3, 8, 12);
    let hq = h * group;
    let slots: Vec<i32> = vec![5, -1, 0, 2, 7, 3];
    let tokens = [4, 3, 1, 0, 2, 4];
    let accepted = [2, 0, 1, 0, 2, 4];
    let cache_slots = 8;
    let size = h * d * e;
    let q = common::rounded(&random(&mut r, t * batch * hq * d, d), dtype);
    let k = common::rounded(&random(&mut r, t * batch * h * d, d), dtype);
    let v = common::rounded(&random(&mut r, t * batch * h * e, 1), dtype);
    let cache0 = random(&mut r, cache_slots * size, 1);
    let slopes = alibi_slopes(h);
    let opts = DecodeOptions {
        slopes: Some(&slopes),
        scale: 0.5,
    };
    let up = |x: &[f32], heads, w| ctx.tensor_as(x, &[t, batch, heads, w], dtype).unwrap();
    let (qt, kt, vt) = (up(&q, hq, d), up(&k, h, d), up(&v, h, e));
    let mut cache = ctx.tensor(&cache0, &[cache_slots, h, d, e]).unwrap();
    let (o, draft) = ctx
        .decode_draft(&qt, &kt, &vt, &cache, &slots, &tokens, &opts)
        .expect("decode_draft");
    let o = ctx.read(&o).unwrap();
    assert_eq!(
        ctx.read(&cache).unwrap(),
        cache0,
        "the draft changed the cache"
    );
    let tol = common::tolerance(dtype).max(1e-5);
    let states = ctx.read(draft.states()).unwrap();
    for req in 0..batch {
        let live = if slots[req] < 0 { 0 } else { tokens[req] };
        let s0 = if slots[req] < 0 {
            vec![0.0; size]
        } else {
            cache0[slots[req] as usize * size..][..size].to_vec()
        };
        let dims = (t, batch, h, d, e, group);
        let (outs, want_states) =
            grouped_recurrence((&q, &k, &v), dims, req, live, &s0, &slopes, 0.5);
        for i in 0..t {
            let got = &o[(i * batch + req) * hq * e..][..hq * e];
            match outs.get(i) {
                Some(want) => {
                    let err = reference::relative_error(got, want);
                    assert!(
                        err <= tol,
                        "o of request {req} token {i}: {err:.2e} ({dtype:?}, group {group}, seed {seed})"
                    );
                    let got_s = &states[(i * batch + req) * size..][..size];
                    let err = reference::relative_error(got_s, &want_states[i]);
                    assert!(
                        err <= tol,
                        "state of request {req} after token {i}: {err:.2e}"
                    );
                }
                None => assert!(
                    got.iter().all(|&x| x == 0.0),
                    "padding output of request {req} token {i} is not zero"
                ),
            }
        }
    }
    ctx.commit_draft(&mut cache, &draft, &accepted)
        .expect("commit");
    let after = ctx.read(&cache).unwrap();
    let mut touched = vec![false; cache_slots];
    for req in 0..batch {
        if slots[req] < 0 || accepted[req] == 0 {
            continue;
        }
        let slot = slots[req] as usize;
        touched[slot] = true;
        let s0 = cache0[slot * size..][..size].to_vec();
        let (_, want) = grouped_recurrence(
            (&q, &k, &v),
            (t, batch, h, d, e, group),
            req,
            accepted[req],
            &s0,
            &slopes,
            0.5,
        );
        let err = reference::relative_error(&after[slot * size..][..size], want.last().unwrap());
        assert!(err <= tol, "committed slot {slot}: {err:.2e}");
    }
    for (slot, _) in touched.iter().enumerate().filter(|(_, &t)| !t) {
        assert_eq!(
            &after[slot * size..][..size],
            &cache0[slot * size..][..size],
            "slot {slot} changed"
        );
    }
}

#[test]
fn drafts_match_the_recurrence_and_commit_what_was_accepted() {
    let s = seed();
    check(DType::F32, 1, s);
    check(DType::F16, 1, s + 1);
    check(DType::BF16, 1, s + 2);
}

#[test]
fn grouped_drafts_match_the_recurrence_of_every_q_head() {
    let s = seed();
    check(DType::F32, 2, s);
    check(DType::BF16, 4, s + 1);
}

#[test]
fn bad_drafts_are_errors() {
    let ctx = common::context(false);
    let x = |shape: &[usize]| {
        ctx.tensor(&vec![0.25; shape.iter().product()], shape)
            .unwrap()
    };
    let (q, v) = (x(&[2, 3, 2, 4]), x(&[2, 3, 2, 4]));
    let mut cache = x(&[4, 2, 4, 4]);
    let opts = DecodeOptions::default();
    let err = ctx
        .decode_draft(&q, &q, &v, &cache, &[0, 1, 2], &[1, 3, 0], &opts)
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { arg: "tokens", .. }),
        "{err}"
    );
    let err = ctx
        .decode_draft(&q, &q, &v, &cache, &[0, 1], &[1, 1, 1], &opts)
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let err = ctx
        .decode_draft(&q, &q, &v, &cache, &[0, 9, 1], &[1, 1, 1], &opts)
        .unwrap_err();
    assert!(matches!(err, Error::SlotOutOfRange { .. }), "{err}");
    let err = ctx
        .decode_draft(
            &q,
            &x(&[2, 3, 2, 5]),
            &v,
            &cache,
            &[0, 1, 2],
            &[1, 1, 1],
            &opts,
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { arg: "k", .. }),
        "{err}"
    );
    // q's 3 heads are not a multiple of k's 2.
    let err = ctx
        .decode_draft(
            &x(&[2, 3, 3, 4]),
            &q,
            &v,
            &cache,
            &[0, 1, 2],
            &[1, 1, 1],
            &opts,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                arg: "k",
                dim: "heads",
                ..
            }
        ),
        "{err}"
    );
    let (_, draft) = ctx
        .decode_draft(&q, &q, &v, &cache, &[0, 1, 2], &[1, 2, 0], &opts)
        .unwrap();
    let err = ctx
        .commit_draft(&mut cache, &draft, &[1, 1, 1])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidValue {
                arg: "accepted",
                ..
            }
        ),
        "{err}"
    );
    let mut other = x(&[4, 2, 4, 5]);
    let err = ctx
        .commit_draft(&mut other, &draft, &[1, 1, 0])
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { arg: "cache", .. }),
        "{err}"
    );
}
