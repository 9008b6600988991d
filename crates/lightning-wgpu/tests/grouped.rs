//! Grouped heads (GQA): q with `group` times the heads of k and v. Each
//! call is checked against the f64 reference of the same problem with k, v
//! (and the initial state) repeated for every q head of their group; the
//! gradients of k, v and S0 are the sums over the group of the repeated
//! problem's, and the final state's gradient enters through one member only
//! (the grouped call has one final state per kv head). Relative error
//! <= 1e-5 in f32; random sizes (n off the block, d != e), both layouts,
//! both methods, plain and packed batches.

mod common;

use lightning_wgpu::{
    alibi_slopes, grouped_problem, problem_dims, reference, BackwardOptions, Context, DType,
    DecodeOptions, Dims, Error, ForwardOptions, Layout, Method,
};
use rand::rngs::StdRng;
use rand::RngExt;

const TOL: f64 = 1e-5;

/// One random grouped problem: `dims.h` kv heads, `group` q heads each.
struct Grouped {
    dims: Dims,
    group: usize,
    layout: Layout,
    cu: Option<Vec<usize>>,
    slopes: Vec<f32>,
    scale: f32,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_o: Vec<f32>,
    s0: Vec<f32>,
    dsn: Vec<f32>,
}

impl Grouped {
    fn random(rng: &mut StdRng, layout: Layout, packed: bool) -> Grouped {
        let pick = |rng: &mut StdRng, xs: &[usize]| xs[rng.random_range(0..xs.len())];
        let d = rng.random_range(1..=40);
        let e = loop {
            let e = rng.random_range(1..=40);
            if e != d {
                break e;
            }
        };
        let (b, n, cu) = if packed {
            let n = pick(rng, &[70, 130, 201]);
            (1, n, Some(vec![0, 1, rng.random_range(2..n / 2), n]))
        } else {
            (
                rng.random_range(1..=2),
                pick(rng, &[1, 63, 65, 130, 201]),
                None,
            )
        };
        let h = rng.random_range(1..=3);
        let group = pick(rng, &[2, 3, 4]);
        let dims = Dims { b, h, n, d, e };
        let factor = pick(rng, &[0, 1, 4]) as f32;
        let slopes = alibi_slopes(h).iter().map(|s| s * factor).collect();
        let scale = [1.0, 0.37, 1.0 / (d as f32).sqrt()][rng.random_range(0..3)];
        let seqs = cu.as_ref().map_or(b, |c| c.len() - 1);
        let hq = h * group;
        Grouped {
            dims,
            group,
            layout,
            cu,
            slopes,
            scale,
            q: common::random(rng, b * hq * n * d, d),
            k: common::random(rng, b * h * n * d, d),
            v: common::random(rng, b * h * n * e, 1),
            d_o: common::random(rng, b * hq * n * e, 1),
            s0: common::random(rng, seqs * h * d * e, 1),
            dsn: common::random(rng, seqs * h * d * e, 1),
        }
    }

    fn shape(&self, heads: usize, width: usize) -> [usize; 4] {
        let Dims { b, n, .. } = self.dims;
        self.layout.shape(b, heads, n, width)
    }

    fn hq(&self) -> usize {
        self.dims.h * self.group
    }

    /// q, k, v and the initial state on the GPU, in f32.
    fn upload(&self, ctx: &Context) -> [lightning_wgpu::Tensor; 4] {
        let Dims { h, d, e, .. } = self.dims;
        [
            (&self.q, self.shape(self.hq(), d)),
            (&self.k, self.shape(h, d)),
            (&self.v, self.shape(h, e)),
            (&self.s0, self.state_shape()),
        ]
        .map(|(x, shape)| ctx.tensor(x, &shape).unwrap())
    }

    fn state_shape(&self) -> [usize; 4] {
        let seqs = self.cu.as_ref().map_or(self.dims.b, |c| c.len() - 1);
        [seqs, self.dims.h, self.dims.d, self.dims.e]
    }

    /// The problem with every kv head repeated for its q heads.
    fn expanded_dims(&self) -> Dims {
        Dims {
            h: self.hq(),
            ..self.dims
        }
    }

    /// A `(b, kv heads, n, width)` tensor repeated to q's heads.
    fn expand(&self, x: &[f32], width: usize) -> Vec<f32> {
        let Dims { b, h, n, .. } = self.dims;
        let (l, g) = (self.layout, self.group);
        let mut out = vec![0.0; b * h * g * n * width];
        for bi in 0..b {
            for head in 0..h * g {
                for i in 0..n {
                    let from = l.index(h, n, width, [bi, head / g, i, 0]);
                    let to = l.index(h * g, n, width, [bi, head, i, 0]);
                    out[to..to + width].copy_from_slice(&x[from..from + width]);
                }
            }
        }
        out
    }

    /// States `(s, kv heads, d, e)` repeated to q's heads; with
    /// `first_only`, the other members' are 0.
    fn expand_states(&self, x: &[f32], first_only: bool) -> Vec<f32> {
        let size = self.dims.d * self.dims.e;
        let g = self.group;
        let mut out = vec![0.0; x.len() * g];
        for (state, chunk) in x.chunks(size).enumerate() {
            for m in 0..g {
                if m == 0 || !first_only {
                    let to = (state * g + m) * size;
                    out[to..to + size].copy_from_slice(chunk);
                }
            }
        }
        out
    }

    /// A gradient of the repeated problem's k or v summed over each group.
    fn sum_groups(&self, x: &[f64], width: usize) -> Vec<f64> {
        let Dims { b, h, n, .. } = self.dims;
        let (l, g) = (self.layout, self.group);
        let mut out = vec![0.0; b * h * n * width];
        for bi in 0..b {
            for head in 0..h * g {
                for i in 0..n {
                    let from = l.index(h * g, n, width, [bi, head, i, 0]);
                    let to = l.index(h, n, width, [bi, head / g, i, 0]);
                    for c in 0..width {
                        out[to + c] += x[from + c];
                    }
                }
            }
        }
        out
    }

    fn sum_state_groups(&self, x: &[f64]) -> Vec<f64> {
        let size = self.dims.d * self.dims.e;
        let mut out = vec![0.0; x.len() / self.group];
        for (state, chunk) in x.chunks(size).enumerate() {
            let to = (state / self.group) * size;
            for (o, y) in out[to..to + size].iter_mut().zip(chunk) {
                *o += y;
            }
        }
        out
    }

    fn expanded_slopes(&self) -> Vec<f32> {
        self.slopes
            .iter()
            .flat_map(|&s| std::iter::repeat_n(s, self.group))
            .collect()
    }

    /// The parts of the repeated problem (one per packed sequence).
    fn parts(&self, states: usize) -> Vec<common::Part> {
        common::parts(&self.expanded_dims(), self.cu.as_deref(), states)
    }
}

fn check(what: &str, got: &[f32], want: &[f64], tol: f64, seed: u64) {
    let err = reference::relative_error(got, want);
    assert!(
        err <= tol,
        "{what}: relative error {err:.2e} > {tol:.0e} (seed {seed})"
    );
}

/// Bounds checks as `LIGHTNING_CHECKED` says (CI runs this suite both ways).
fn ctx() -> Context {
    common::context(false)
}

/// The repeated problem's final states, member 0 of each group.
fn first_members(x: &[f64], group: usize, size: usize) -> Vec<f64> {
    x.chunks(size).step_by(group).flatten().copied().collect()
}

#[test]
fn forward_equals_the_repeated_heads_reference() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let ctx = ctx();
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        for packed in [false, true] {
            for method in [Method::Chunk, Method::Recurrent] {
                let p = Grouped::random(&mut rng, layout, packed);
                let Dims { d, e, .. } = p.dims;
                let hq = p.hq();
                let [q, k, v, s0] = p.upload(&ctx);
                let opts = ForwardOptions {
                    slopes: Some(&p.slopes),
                    scale: p.scale,
                    layout,
                    initial_state: Some(&s0),
                    method,
                    cu_seqlens: p.cu.as_deref(),
                    ..Default::default()
                };
                let mut o = common::poisoned(&ctx, &p.shape(hq, e));
                let mut sn = common::poisoned(&ctx, &p.state_shape());
                ctx.forward_into(&q, &k, &v, &opts, &mut o, Some(&mut sn))
                    .unwrap();
                let (o, sn) = (ctx.read(&o).unwrap(), ctx.read(&sn).unwrap());

                let (qx, kx, vx) = (p.q.clone(), p.expand(&p.k, d), p.expand(&p.v, e));
                let s0x = p.expand_states(&p.s0, false);
                let slopes = p.expanded_slopes();
                let full = p.expanded_dims();
                let what = format!(
                    "{layout:?} packed {packed} {method:?} {full:?} x{}",
                    p.group
                );
                for part in p.parts(s0x.len()) {
                    let rows = |x: &[f32], w| part.of(x, layout, &full, w);
                    let want = reference::forward(
                        part.dims,
                        layout,
                        &rows(&qx, d),
                        &rows(&kx, d),
                        &rows(&vx, e),
                        &slopes,
                        p.scale,
                        Some(&s0x[part.states.clone()]),
                    );
                    check(&format!("o, {what}"), &rows(&o, e), &want.o, TOL, seed);
                    let states = part.states.start / p.group..part.states.end / p.group;
                    let want_sn = first_members(&want.final_state, p.group, d * e);
                    check(
                        &format!("final state, {what}"),
                        &sn[states],
                        &want_sn,
                        TOL,
                        seed,
                    );
                }
            }
        }
    }
}

#[test]
fn backward_sums_each_group() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let ctx = ctx();
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        for packed in [false, true] {
            let p = Grouped::random(&mut rng, layout, packed);
            let Dims { d, e, .. } = p.dims;
            let (hq, h) = (p.hq(), p.dims.h);
            let [q, k, v, s0] = p.upload(&ctx);
            let d_o = ctx.tensor(&p.d_o, &p.shape(hq, e)).unwrap();
            let dsn = ctx.tensor(&p.dsn, &p.state_shape()).unwrap();
            let opts = BackwardOptions {
                forward: ForwardOptions {
                    slopes: Some(&p.slopes),
                    scale: p.scale,
                    layout,
                    initial_state: Some(&s0),
                    cu_seqlens: p.cu.as_deref(),
                    ..Default::default()
                },
                d_final_state: Some(&dsn),
            };
            let mut grads = lightning_wgpu::Gradients {
                dq: common::poisoned(&ctx, &p.shape(hq, d)),
                dk: common::poisoned(&ctx, &p.shape(h, d)),
                dv: common::poisoned(&ctx, &p.shape(h, e)),
                d_initial_state: common::poisoned(&ctx, &p.state_shape()),
            };
            ctx.backward_into(&q, &k, &v, &d_o, &opts, &mut grads)
                .unwrap();
            let read = |t| ctx.read(t).unwrap();
            let (dq, dk, dv, ds0) = (
                read(&grads.dq),
                read(&grads.dk),
                read(&grads.dv),
                read(&grads.d_initial_state),
            );

            let (kx, vx) = (p.expand(&p.k, d), p.expand(&p.v, e));
            let s0x = p.expand_states(&p.s0, false);
            let dsnx = p.expand_states(&p.dsn, true);
            let slopes = p.expanded_slopes();
            let full = p.expanded_dims();
            // The repeated problem's gradients, assembled over its parts.
            let (mut want_dq, mut want_dk, mut want_dv) = (
                vec![0.0; p.q.len()],
                vec![0.0; kx.len()],
                vec![0.0; vx.len()],
            );
            let mut want_ds0 = vec![0.0; s0x.len()];
            for part in p.parts(s0x.len()) {
                let rows = |x: &[f32], w| part.of(x, layout, &full, w);
                let g = reference::backward(
                    part.dims,
                    layout,
                    &rows(&p.q, d),
                    &rows(&kx, d),
                    &rows(&vx, e),
                    &rows(&p.d_o, e),
                    &slopes,
                    p.scale,
                    Some(&s0x[part.states.clone()]),
                    Some(&dsnx[part.states.clone()]),
                );
                for (want, got, w) in [
                    (&mut want_dq, &g.dq, d),
                    (&mut want_dk, &g.dk, d),
                    (&mut want_dv, &g.dv, e),
                ] {
                    put_part(want, got, layout, &full, w, part.rows);
                }
                want_ds0[part.states.clone()].copy_from_slice(&g.d_initial_state);
            }
            let what = format!("{layout:?} packed {packed} {full:?} x{}", p.group);
            check(&format!("dq, {what}"), &dq, &want_dq, TOL, seed);
            check(
                &format!("dk, {what}"),
                &dk,
                &p.sum_groups(&want_dk, d),
                TOL,
                seed,
            );
            check(
                &format!("dv, {what}"),
                &dv,
                &p.sum_groups(&want_dv, e),
                TOL,
                seed,
            );
            check(
                &format!("dS0, {what}"),
                &ds0,
                &p.sum_state_groups(&want_ds0),
                TOL,
                seed,
            );
        }
    }
}

/// Writes a part's rows `rows` (a `(b, h, len, w)` tensor) into the call's.
fn put_part(x: &mut [f64], part: &[f64], l: Layout, dims: &Dims, w: usize, rows: (usize, usize)) {
    let len = rows.1 - rows.0;
    for b in 0..dims.b {
        for head in 0..dims.h {
            for i in 0..len {
                let from = l.index(dims.h, len, w, [b, head, i, 0]);
                let to = l.index(dims.h, dims.n, w, [b, head, rows.0 + i, 0]);
                x[to..to + w].copy_from_slice(&part[from..from + w]);
            }
        }
    }
}

#[test]
fn half_storage_is_as_close_as_for_one_head_each() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let ctx = ctx();
    for dtype in [DType::F16, DType::BF16] {
        let p = Grouped::random(&mut rng, Layout::Bnhd, false);
        let Dims { d, e, .. } = p.dims;
        let (hq, h) = (p.hq(), p.dims.h);
        let (qr, kr, vr) = (
            common::rounded(&p.q, dtype),
            common::rounded(&p.k, dtype),
            common::rounded(&p.v, dtype),
        );
        let q = ctx.tensor_as(&qr, &p.shape(hq, d), dtype).unwrap();
        let k = ctx.tensor_as(&kr, &p.shape(h, d), dtype).unwrap();
        let v = ctx.tensor_as(&vr, &p.shape(h, e), dtype).unwrap();
        let opts = ForwardOptions {
            slopes: Some(&p.slopes),
            scale: p.scale,
            layout: p.layout,
            ..Default::default()
        };
        let mut o = common::poisoned(&ctx, &p.shape(hq, e));
        ctx.forward_into(&q, &k, &v, &opts, &mut o, None).unwrap();
        let want = reference::forward(
            p.expanded_dims(),
            p.layout,
            &qr,
            &p.expand(&kr, d),
            &p.expand(&vr, e),
            &p.expanded_slopes(),
            p.scale,
            None,
        );
        check(
            &format!("o in {dtype:?}"),
            &ctx.read(&o).unwrap(),
            &want.o,
            common::tolerance(dtype),
            seed,
        );
    }
}

#[test]
fn checkpoints_are_the_kv_heads_states() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let ctx = ctx();
    let block = ctx.block_rows() as usize;
    let (b, h, group, n, d, e) = (2, 2, 3, 3 * block + 5, 12, 7);
    let l = Layout::Bhnd;
    let q = common::random(&mut rng, b * h * group * n * d, d);
    let k = common::random(&mut rng, b * h * n * d, d);
    let v = common::random(&mut rng, b * h * n * e, 1);
    let slopes = alibi_slopes(h);
    let opts = ForwardOptions {
        slopes: Some(&slopes),
        ..Default::default()
    };
    let kt = ctx.tensor(&k, &l.shape(b, h, n, d)).unwrap();
    let vt = ctx.tensor(&v, &l.shape(b, h, n, e)).unwrap();
    let grouped = ctx.tensor(&q, &l.shape(b, h * group, n, d)).unwrap();
    let (_, got) = ctx
        .forward_with_checkpoints(&grouped, &kt, &vt, &opts, block)
        .unwrap();
    assert_eq!(got.shape(), &[b, h, 3, d, e]);
    // The states depend on k and v alone: one head each gives the same.
    let (_, want) = ctx
        .forward_with_checkpoints(&kt, &kt, &vt, &opts, block)
        .unwrap();
    let want: Vec<f64> = ctx.read(&want).unwrap().iter().map(|&x| x as f64).collect();
    check("checkpoints", &ctx.read(&got).unwrap(), &want, 1e-6, seed);
}

/// The error of k heads that do not divide q's.
fn k_heads(err: &Error) -> bool {
    matches!(
        err,
        Error::ShapeMismatch {
            arg: "k",
            dim: "heads",
            ..
        }
    )
}

#[test]
fn shapes_that_do_not_group_are_refused() {
    let ctx = ctx();
    let l = Layout::Bhnd;
    let t = |shape: [usize; 4]| {
        ctx.tensor(&vec![0.5; shape.iter().product()], &shape)
            .unwrap()
    };
    // 6 q heads over 4 kv heads.
    let (q, k, v) = (t([1, 6, 10, 8]), t([1, 4, 10, 8]), t([1, 4, 10, 8]));
    let err = ctx.forward(&q, &k, &v, &Default::default()).unwrap_err();
    assert!(k_heads(&err), "{err}");
    // More kv heads than q heads.
    let err = ctx.forward(&k, &q, &q, &Default::default()).unwrap_err();
    assert!(k_heads(&err), "{err}");
    // v with other heads than k.
    let (q, k, v) = (t([1, 4, 10, 8]), t([1, 2, 10, 8]), t([1, 4, 10, 8]));
    let err = ctx.forward(&q, &k, &v, &Default::default()).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { arg: "v", .. }),
        "{err}"
    );
    // o must have q's heads; slopes are per kv head.
    let v = t([1, 2, 10, 8]);
    let mut o = t([1, 2, 10, 8]);
    let err = ctx
        .forward_into(&q, &k, &v, &Default::default(), &mut o, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { arg: "o", .. }),
        "{err}"
    );
    let four = alibi_slopes(4);
    let opts = ForwardOptions {
        slopes: Some(&four),
        ..Default::default()
    };
    let err = ctx.forward(&q, &k, &v, &opts).unwrap_err();
    assert!(matches!(err, Error::Slopes(_)), "{err}");
    // The same-heads check says grouped heads are not taken there.
    let (dims, group) = grouped_problem(l, &[1, 4, 10, 8], &[1, 2, 10, 8], &[1, 2, 10, 8]).unwrap();
    assert_eq!((dims.h, group), (2, 2));
    assert!(problem_dims(l, &[1, 4, 10, 8], &[1, 2, 10, 8], &[1, 2, 10, 8]).is_err());
}

#[test]
fn decode_reads_each_kv_state_once_per_step() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let ctx = ctx();
    let (batch, h, group, d, e, slots) = (3, 2, 3, rng.random_range(1..=20), 9, 5);
    let hq = h * group;
    let size = d * e;
    let slopes: Vec<f32> = alibi_slopes(h).iter().map(|s| s * 2.0).collect();
    let scale = 0.6;
    let start = common::random(&mut rng, slots * h * size, 1);
    let mut cache = ctx.tensor(&start, &[slots, h, d, e]).unwrap();
    // Request 1 is padding; the others in slots 4 and 0.
    let slot_of = [4, -1, 0];
    let mut want_cache: Vec<f64> = start.iter().map(|&x| x as f64).collect();
    for step in 0..3 {
        let q = common::random(&mut rng, batch * hq * d, d);
        let k = common::random(&mut rng, batch * h * d, d);
        let v = common::random(&mut rng, batch * h * e, 1);
        let opts = DecodeOptions {
            slopes: Some(&slopes),
            scale,
        };
        let (qt, kt, vt) = (
            ctx.tensor(&q, &[batch, hq, d]).unwrap(),
            ctx.tensor(&k, &[batch, h, d]).unwrap(),
            ctx.tensor(&v, &[batch, h, e]).unwrap(),
        );
        let mut o = common::poisoned(&ctx, &[batch, hq, e]);
        ctx.decode_step_into(&qt, &kt, &vt, &mut cache, &slot_of, &opts, &mut o)
            .unwrap();
        // S = lambda S + k^T v once per kv head; every q head of its group reads it.
        let mut want_o = vec![0.0f64; batch * hq * e];
        for (r, &slot) in slot_of.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            for kv in 0..h {
                let lambda = (-(slopes[kv] as f64)).exp();
                let s = &mut want_cache[(slot as usize * h + kv) * size..][..size];
                for x in 0..d {
                    for y in 0..e {
                        s[x * e + y] = lambda * s[x * e + y]
                            + k[(r * h + kv) * d + x] as f64 * v[(r * h + kv) * e + y] as f64;
                    }
                }
                for m in 0..group {
                    let head = kv * group + m;
                    for y in 0..e {
                        let acc: f64 = (0..d)
                            .map(|x| q[(r * hq + head) * d + x] as f64 * s[x * e + y])
                            .sum();
                        want_o[(r * hq + head) * e + y] = scale as f64 * acc;
                    }
                }
            }
        }
        check(
            &format!("o of step {step}"),
            &ctx.read(&o).unwrap(),
            &want_o,
            TOL,
            seed,
        );
        check(
            &format!("cache after step {step}"),
            &ctx.read(&cache).unwrap(),
            &want_cache,
            TOL,
            seed,
        );
    }
    // q heads that do not group over k's are refused.
    let bad = ctx
        .tensor(&vec![0.1; batch * 5 * d], &[batch, 5, d])
        .unwrap();
    let k = ctx
        .tensor(&vec![0.1; batch * h * d], &[batch, h, d])
        .unwrap();
    let v = ctx
        .tensor(&vec![0.1; batch * h * e], &[batch, h, e])
        .unwrap();
    let err = ctx
        .decode_step(&bad, &k, &v, &mut cache, &slot_of, &Default::default())
        .unwrap_err();
    assert!(k_heads(&err), "{err}");
    // Softmax attention takes one head each.
    let l = Layout::Bhnd;
    let (q, k) = (
        ctx.tensor(&vec![0.1; hq * 10 * d], &l.shape(1, hq, 10, d))
            .unwrap(),
        ctx.tensor(&vec![0.1; h * 10 * d], &l.shape(1, h, 10, d))
            .unwrap(),
    );
    let err = ctx
        .softmax_attention(&q, &k, &k, &Default::default())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidValue { arg: "k", .. }), "{err}");
}
