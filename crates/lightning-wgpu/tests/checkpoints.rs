//! State checkpoints of the chunked forward: the state after every C
//! positions equals the f64 reference's final state of that prefix, and
//! resuming from a checkpoint with the rest of the sequence equals the whole
//! run (f32: relative error <= 1e-5). Both layouts, an initial state, packed
//! batches, and the errors.

mod common;

use common::{random, rng, rows, seed};
use lightning_wgpu::{alibi_slopes, reference, Dims, Error, ForwardOptions, Layout, Method};

const TOL: f64 = 1e-5;

/// `max_binding`: bindings that small split the heads over segments and the
/// checkpoints' copies over windows.
fn check(layout: Layout, every_blocks: usize, seed: u64, checked: bool, max_binding: Option<u64>) {
    let ctx = common::context_with(lightning_wgpu::ContextOptions {
        checked: checked.then_some(true),
        max_binding_bytes: max_binding,
        ..Default::default()
    });
    let every = every_blocks * ctx.block_rows() as usize;
    let dims = Dims {
        b: 2,
        h: 3,
        n: 2 * every + 37,
        d: 8,
        e: 12,
    };
    let Dims { b, h, n, d, e } = dims;
    let mut r = rng(seed);
    let (q, k, v) = (
        random(&mut r, b * h * n * d, d),
        random(&mut r, b * h * n * d, d),
        random(&mut r, b * h * n * e, 1),
    );
    let s0 = random(&mut r, b * h * d * e, 1);
    let slopes = alibi_slopes(h);
    let up = |x: &[f32], len: usize, w: usize| ctx.tensor(x, &layout.shape(b, h, len, w)).unwrap();
    let s0_t = ctx.tensor(&s0, &[b, h, d, e]).unwrap();
    let opts = ForwardOptions {
        slopes: Some(&slopes),
        scale: 0.5,
        layout,
        initial_state: Some(&s0_t),
        ..Default::default()
    };
    let (out, ck) = ctx
        .forward_with_checkpoints(&up(&q, n, d), &up(&k, n, d), &up(&v, n, e), &opts, every)
        .expect("forward");
    let count = n / every;
    assert_eq!(ck.shape(), &[b, h, count, d, e]);
    let ck = ctx.read(&ck).unwrap();
    let whole = ctx.read(&out.o).unwrap();
    let size = d * e;
    let tag =
        format!("{layout:?} every={every} seed={seed} checked={checked} binding={max_binding:?}");
    for j in 0..count {
        let end = (j + 1) * every;
        let part = Dims { n: end, ..dims };
        let want = reference::forward(
            part,
            layout,
            &rows(&q, layout, &dims, d, 0, end),
            &rows(&k, layout, &dims, d, 0, end),
            &rows(&v, layout, &dims, e, 0, end),
            &slopes,
            0.5,
            Some(&s0),
        );
        let got: Vec<f32> = (0..b * h)
            .flat_map(|bh| ck[(bh * count + j) * size..][..size].to_vec())
            .collect();
        let err = reference::relative_error(&got, &want.final_state);
        assert!(err <= TOL, "checkpoint {j} ({tag}): {err:.2e}");
        // Resume there: the rest of the sequence from the checkpoint.
        let rest = n - end;
        let from = ctx.tensor(&got, &[b, h, d, e]).unwrap();
        let resumed = ForwardOptions {
            initial_state: Some(&from),
            ..opts
        };
        let tail = |x: &[f32], w| up(&rows(x, layout, &dims, w, end, n), rest, w);
        let o = ctx
            .forward(&tail(&q, d), &tail(&k, d), &tail(&v, e), &resumed)
            .expect("resume");
        let o = ctx.read(&o.o).unwrap();
        let want: Vec<f64> = rows(&whole, layout, &dims, e, end, n)
            .iter()
            .map(|&x| x as f64)
            .collect();
        let err = reference::relative_error(&o, &want);
        assert!(err <= TOL, "resumed from checkpoint {j} ({tag}): {err:.2e}");
    }
}

#[test]
fn checkpoints_are_the_prefix_states_and_resume_the_run() {
    let s = seed();
    let checked = std::env::var_os("LIGHTNING_CHECKED").is_some();
    check(Layout::Bhnd, 1, s, checked, None);
    check(Layout::Bnhd, 2, s + 1, checked, None);
}

#[test]
fn checkpoints_survive_small_bindings() {
    // 16 KiB bindings: in bhnd three of the six heads per segment, so the
    // second segment's copy starts at head 3; in bnhd segments of one block
    // of rows for all heads.
    let s = seed();
    let checked = std::env::var_os("LIGHTNING_CHECKED").is_some();
    check(Layout::Bhnd, 1, s, checked, Some(16384));
    check(Layout::Bnhd, 1, s + 1, checked, Some(16384));
}

#[test]
fn packed_batches_keep_checkpoints_per_sequence() {
    let ctx = common::context(false);
    let every = ctx.block_rows() as usize;
    let lens = [every + 5, 3, 2 * every, every - 1];
    let cu: Vec<usize> = std::iter::once(0)
        .chain(lens.iter().scan(0, |a, &l| {
            *a += l;
            Some(*a)
        }))
        .collect();
    let n = *cu.last().unwrap();
    let (h, d, e) = (2, 8, 8);
    let dims = Dims { b: 1, h, n, d, e };
    let mut r = rng(seed());
    let (q, k, v) = (
        random(&mut r, h * n * d, d),
        random(&mut r, h * n * d, d),
        random(&mut r, h * n * e, 1),
    );
    let slopes = alibi_slopes(h);
    let t = |x: &[f32], w| ctx.tensor(x, &[1, n, h, w]).unwrap();
    let opts = ForwardOptions {
        slopes: Some(&slopes),
        layout: Layout::Bnhd,
        cu_seqlens: Some(&cu),
        ..Default::default()
    };
    let (_, ck) = ctx
        .forward_with_checkpoints(&t(&q, d), &t(&k, d), &t(&v, e), &opts, every)
        .expect("forward");
    let counts: Vec<usize> = lens.iter().map(|l| l / every).collect();
    assert_eq!(ck.shape(), &[counts.iter().sum::<usize>(), h, d, e]);
    let ck = ctx.read(&ck).unwrap();
    let size = d * e;
    let mut at = 0;
    for (i, (&start, &count)) in cu.iter().zip(&counts).enumerate() {
        for j in 0..count {
            let end = start + (j + 1) * every;
            let part = Dims {
                n: end - start,
                ..dims
            };
            let cut = |x: &[f32], w| rows(x, Layout::Bnhd, &dims, w, start, end);
            let want = reference::forward(
                part,
                Layout::Bnhd,
                &cut(&q, d),
                &cut(&k, d),
                &cut(&v, e),
                &slopes,
                1.0,
                None,
            );
            let got = &ck[(at + j) * h * size..][..h * size];
            let err = reference::relative_error(got, &want.final_state);
            assert!(err <= TOL, "sequence {i} checkpoint {j}: {err:.2e}");
        }
        at += count;
    }
}

#[test]
fn bad_checkpoints_are_errors() {
    let ctx = common::context(false);
    let block = ctx.block_rows() as usize;
    let x = |n: usize| ctx.tensor(&vec![0.5; 2 * n * 4], &[1, 2, n, 4]).unwrap();
    let q = x(3 * block);
    let err = ctx
        .forward_with_checkpoints(&q, &q, &q, &Default::default(), block + 1)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidValue {
                arg: "checkpoint_every",
                ..
            }
        ),
        "{err}"
    );
    let err = ctx
        .forward_with_checkpoints(&q, &q, &q, &Default::default(), 0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidValue {
                arg: "checkpoint_every",
                ..
            }
        ),
        "{err}"
    );
    let err = ctx
        .forward_with_checkpoints(&q, &q, &q, &Default::default(), 4 * block)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidValue {
                arg: "checkpoint_every",
                ..
            }
        ),
        "{err}"
    );
    let rec = ForwardOptions {
        method: Method::Recurrent,
        ..Default::default()
    };
    let err = ctx
        .forward_with_checkpoints(&q, &q, &q, &rec, block)
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { arg: "method", .. }),
        "{err}"
    );
}
