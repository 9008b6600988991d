//! The softmax-attention baseline against its f64 reference.

mod common;

use lightning_wgpu::{alibi_slopes, reference, ContextOptions, Dims, Layout, SoftmaxOptions};

#[test]
fn causal_softmax_matches_the_reference() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    for (block_rows, dims, layout, alibi) in [
        (
            None,
            Dims {
                b: 2,
                h: 3,
                n: 130,
                d: 24,
                e: 40,
            },
            Layout::Bhnd,
            false,
        ),
        (
            None,
            Dims {
                b: 1,
                h: 2,
                n: 65,
                d: 64,
                e: 100,
            },
            Layout::Bnhd,
            true,
        ),
        (
            None,
            Dims {
                b: 1,
                h: 1,
                n: 1,
                d: 3,
                e: 5,
            },
            Layout::Bhnd,
            false,
        ),
        (
            Some(32),
            Dims {
                b: 1,
                h: 2,
                n: 77,
                d: 130,
                e: 33,
            },
            Layout::Bhnd,
            true,
        ),
    ] {
        let ctx = common::context_with(ContextOptions {
            block_rows,
            ..Default::default()
        });
        let Dims { b, h, n, d, e } = dims;
        // Larger logits than the forward tests use, so the softmax is peaked.
        let q = common::random(&mut rng, b * h * n * d, 1);
        let k = common::random(&mut rng, b * h * n * d, 1);
        let v = common::random(&mut rng, b * h * n * e, 1);
        let slopes = if alibi { alibi_slopes(h) } else { vec![0.0; h] };
        let opts = SoftmaxOptions {
            scale: None,
            alibi: alibi.then_some(&slopes[..]),
            layout,
        };
        // The output comes from the context's buffer pool: hand it a poisoned
        // buffer of the output's size first, so an unwritten element shows.
        drop(common::poisoned(&ctx, &layout.shape(b, h, n, e)));
        let o = ctx
            .softmax_attention(
                &ctx.tensor(&q, &layout.shape(b, h, n, d)).unwrap(),
                &ctx.tensor(&k, &layout.shape(b, h, n, d)).unwrap(),
                &ctx.tensor(&v, &layout.shape(b, h, n, e)).unwrap(),
                &opts,
            )
            .unwrap();
        let want = reference::softmax_attention(
            dims,
            layout,
            &q,
            &k,
            &v,
            &slopes,
            1.0 / (d as f32).sqrt(),
        );
        let err = reference::relative_error(&ctx.read(&o).unwrap(), &want);
        assert!(err <= 1e-5, "{dims:?} {layout} (seed {seed}): {err:e}");
    }
}
