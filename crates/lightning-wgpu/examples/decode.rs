//! Token-by-token generation with the decode path: a toy one-layer
//! linear-attention "model" (random weights) serves a batch of requests of
//! different ages from a cache of `d x e` states, one slot per request.
//! GPU memory stays flat however many tokens are generated: the state is all
//! that is carried.
//!
//! `cargo run --release --example decode -- [steps]` (default 512)

use lightning_wgpu::{alibi_slopes, Context, DecodeOptions, Result};

/// Tiny deterministic generator for the weights.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn matrix(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let s = 1.0 / (rows as f32).sqrt();
        (0..rows * cols).map(|_| self.next() * s).collect()
    }
}

/// `x (1 x rows) W (rows x cols)`.
fn project(x: &[f32], w: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; cols];
    for (r, &xr) in x.iter().enumerate() {
        for (c, o) in out.iter_mut().enumerate() {
            *o += xr * w[r * cols + c];
        }
    }
    out
}

fn main() -> Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let (vocab, model, heads, d) = (64, 128, 4, 32);
    let e = d;
    let mut rng = Lcg(7);
    let embed = rng.matrix(vocab, model);
    let (wq, wk, wv) = (
        rng.matrix(model, heads * d),
        rng.matrix(model, heads * d),
        rng.matrix(model, heads * e),
    );
    let wo = rng.matrix(heads * e, model);

    let ctx = Context::new()?;
    println!(
        "adapter: {} ({:?})",
        ctx.adapter_info().name,
        ctx.adapter_info().backend
    );
    // Four requests in a cache of eight slots; request 2 starts later (its
    // slot stays padding, -1, until then), as in a server batching requests
    // of different ages.
    let cache_slots = 8;
    let mut cache = ctx.tensor(
        &vec![0.0; cache_slots * heads * d * e],
        &[cache_slots, heads, d, e],
    )?;
    let slots_live = [3, 0, 5, 6];
    let mut tokens = vec![1usize, 2, 3, 4];
    let slopes = alibi_slopes(heads);
    let opts = DecodeOptions {
        slopes: Some(&slopes),
        scale: 1.0 / (d as f32).sqrt(),
    };
    let mut texts: Vec<Vec<usize>> = tokens.iter().map(|&t| vec![t]).collect();
    let start = std::time::Instant::now();
    for step in 0..steps {
        let slots: Vec<i32> = slots_live
            .iter()
            .enumerate()
            .map(|(r, &s)| if r == 2 && step < steps / 2 { -1 } else { s })
            .collect();
        let batch = tokens.len();
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for &t in &tokens {
            let x = &embed[t * model..(t + 1) * model];
            q.extend(project(x, &wq, heads * d));
            k.extend(project(x, &wk, heads * d));
            v.extend(project(x, &wv, heads * e));
        }
        let o = ctx.decode_step(
            &ctx.tensor(&q, &[batch, heads, d])?,
            &ctx.tensor(&k, &[batch, heads, d])?,
            &ctx.tensor(&v, &[batch, heads, e])?,
            &mut cache,
            &slots,
            &opts,
        )?;
        let o = ctx.read(&o)?;
        for (r, token) in tokens.iter_mut().enumerate() {
            if slots[r] < 0 {
                continue;
            }
            // Next token: the vocabulary entry closest to the attention output.
            let hidden = project(&o[r * heads * e..(r + 1) * heads * e], &wo, model);
            let score = |t: usize| -> f32 {
                embed[t * model..(t + 1) * model]
                    .iter()
                    .zip(&hidden)
                    .map(|(a, b)| a * b)
                    .sum()
            };
            *token = (0..vocab)
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap_or(0);
            texts[r].push(*token);
        }
        if (step + 1).is_power_of_two() || step + 1 == steps {
            println!(
                "step {:>5}: {:>6.2} ms/step so far, GPU memory held {:.1} KiB",
                step + 1,
                start.elapsed().as_secs_f64() * 1e3 / (step + 1) as f64,
                ctx.memory_allocated() as f64 / 1024.0
            );
        }
    }
    for (r, text) in texts.iter().enumerate() {
        let shown: Vec<String> = text.iter().take(16).map(|t| t.to_string()).collect();
        println!(
            "request {r} (slot {}): {} tokens: {} ...",
            slots_live[r],
            text.len(),
            shown.join(" ")
        );
    }
    Ok(())
}
