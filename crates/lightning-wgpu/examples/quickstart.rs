//! The smallest complete use of the library: one forward pass on the GPU,
//! checked against the CPU reference.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use lightning_wgpu::{alibi_slopes, reference, Context, Dims, ForwardOptions, Layout};

fn main() -> Result<(), lightning_wgpu::Error> {
    // The default adapter: the best GPU found (LIGHTNING_ADAPTER overrides).
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.adapter_info().name);

    // Batch, heads, sequence length, width of q/k, width of v.
    let dims = Dims {
        b: 1,
        h: 4,
        n: 512,
        d: 64,
        e: 64,
    };
    let Dims { b, h, n, d, e } = dims;
    // Scaled by 1/sqrt(width) so the sums stay of order one.
    let random = |len: usize, width: usize| -> Vec<f32> {
        let s = 1.0 / (width as f32).sqrt();
        (0..len).map(|_| rand::random_range(-s..s)).collect()
    };
    let q = random(b * h * n * d, d);
    let k = random(b * h * n * d, d);
    let v = random(b * h * n * e, e);
    // Lightning Attention's per-head decays: head i forgets at rate exp(-s_i).
    let slopes = alibi_slopes(h);

    let out = ctx.forward(
        &ctx.tensor(&q, &[b, h, n, d])?,
        &ctx.tensor(&k, &[b, h, n, d])?,
        &ctx.tensor(&v, &[b, h, n, e])?,
        &ForwardOptions {
            slopes: Some(&slopes),
            ..Default::default()
        },
    )?;
    let o = ctx.read(&out.o)?;

    let want = reference::forward(dims, Layout::Bhnd, &q, &k, &v, &slopes, 1.0, None);
    let err = reference::relative_error(&o, &want.o);
    println!("o: {b}x{h}x{n}x{e}, relative error vs the f64 reference: {err:.2e}");
    Ok(())
}
