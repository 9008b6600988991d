//! A small character-level language model in burn whose attention is this
//! crate's Lightning Attention: trained on the Apache licence text that ships
//! with the crate, then sampled token by token with the decode kernel and
//! its state cache (constant memory per token, however long the text).
//!
//! ```text
//! cargo run --release -p lightning-wgpu --features burn --example train_lm -- --steps 300
//! ```
//!
//! `--check` exits with an error unless the loss fell (CI runs a few steps).

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{gelu, sigmoid, silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use lightning_wgpu::burn::{
    decode_step, init, lightning_attention, write_states, AttentionOptions,
};
use lightning_wgpu::{layer_slopes, Context, DType, DecodeOptions, Layout};
use rand::{rngs::StdRng, RngExt, SeedableRng};

const TEXT: &str = include_str!("../LICENSE-APACHE");

#[derive(Parser, Debug)]
#[command(about = "Train a small Lightning Attention language model, then generate")]
struct Args {
    /// Optimizer steps.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Characters per sequence.
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Characters to generate after training.
    #[arg(long, default_value_t = 300)]
    generate: usize,
    /// Exit with an error unless the loss fell.
    #[arg(long)]
    check: bool,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const WIDTH: usize = 128;
const HEADS: usize = 4;
const HEAD: usize = WIDTH / HEADS;
const LAYERS: usize = 2;

/// One block: a gated linear-attention mixer (TransNormerLLM's shape: SiLU
/// on q and k, a norm on the output, a sigmoid gate) and an MLP.
#[derive(Module, Debug)]
struct Block {
    norm_attn: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    gate: Linear,
    norm_out: RmsNorm,
    out: Linear,
    norm_mlp: RmsNorm,
    up: Linear,
    down: Linear,
}

#[derive(Module, Debug)]
struct Model {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Linear,
}

impl Block {
    fn new(device: &Device) -> Block {
        let linear = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        let norm = |w| RmsNormConfig::new(w).init(device);
        Block {
            norm_attn: norm(WIDTH),
            q: linear(WIDTH, WIDTH),
            k: linear(WIDTH, WIDTH),
            v: linear(WIDTH, WIDTH),
            gate: linear(WIDTH, WIDTH),
            norm_out: norm(HEAD),
            out: linear(WIDTH, WIDTH),
            norm_mlp: norm(WIDTH),
            up: linear(WIDTH, 4 * WIDTH),
            down: linear(4 * WIDTH, WIDTH),
        }
    }

    /// q, k, v of `x` (b, n, WIDTH) as (b, n, heads, head): the (b, n, h, d)
    /// layout the op reads directly.
    fn qkv(&self, x: &Tensor<3>) -> [Tensor<4>; 3] {
        let [b, n, _] = x.dims();
        let h = self.norm_attn.forward(x.clone());
        let split = |t: Tensor<3>| t.reshape([b, n, HEADS, HEAD]);
        [
            split(silu(self.q.forward(h.clone()))),
            split(silu(self.k.forward(h.clone()))),
            split(self.v.forward(h)),
        ]
    }

    /// The block after attention: output norm, gate, projection, MLP.
    fn finish(&self, x: Tensor<3>, attn: Tensor<4>) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let gate = sigmoid(self.gate.forward(self.norm_attn.forward(x.clone())));
        let mixed = self.norm_out.forward(attn).reshape([b, n, WIDTH]) * gate;
        let x = x + self.out.forward(mixed);
        let mlp = self
            .down
            .forward(gelu(self.up.forward(self.norm_mlp.forward(x.clone()))));
        x + mlp
    }
}

fn options(layer: usize) -> AttentionOptions {
    AttentionOptions {
        slopes: Some(layer_slopes(HEADS, layer, LAYERS).expect("slopes")),
        scale: 1.0 / (HEAD as f32).sqrt(),
        layout: Layout::Bnhd,
    }
}

impl Model {
    fn new(vocab: usize, device: &Device) -> Model {
        Model {
            embed: EmbeddingConfig::new(vocab, WIDTH).init(device),
            blocks: (0..LAYERS).map(|_| Block::new(device)).collect(),
            norm: RmsNormConfig::new(WIDTH).init(device),
            head: LinearConfig::new(WIDTH, vocab).init(device),
        }
    }

    /// Logits (b, n, vocab) of tokens (b, n), and each layer's final state.
    fn forward(&self, ctx: &Context, tokens: Tensor<2, Int>) -> (Tensor<3>, Vec<Tensor<4>>) {
        let mut x = self.embed.forward(tokens);
        let mut states = Vec::new();
        for (layer, block) in self.blocks.iter().enumerate() {
            let [q, k, v] = block.qkv(&x);
            let out = lightning_attention(ctx, q, k, v, None, &options(layer)).expect("attention");
            states.push(out.final_state);
            x = block.finish(x, out.o);
        }
        (self.head.forward(self.norm.forward(x)), states)
    }
}

/// The characters of the text, as token ids.
struct Vocab {
    chars: Vec<char>,
}

impl Vocab {
    fn new(text: &str) -> Vocab {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Vocab { chars }
    }

    fn encode(&self, text: &str) -> Vec<i64> {
        text.chars()
            .map(|c| {
                self.chars
                    .binary_search(&c)
                    .expect("a character of the text") as i64
            })
            .collect()
    }
}

fn batch(
    ids: &[i64],
    rng: &mut StdRng,
    b: usize,
    n: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<1, Int>) {
    let (mut input, mut target) = (Vec::with_capacity(b * n), Vec::with_capacity(b * n));
    for _ in 0..b {
        let at = rng.random_range(0..ids.len() - n - 1);
        input.extend_from_slice(&ids[at..at + n]);
        target.extend_from_slice(&ids[at + 1..at + n + 1]);
    }
    (
        Tensor::from_data(TensorData::new(input, [b, n]), device),
        Tensor::from_data(TensorData::new(target, [b * n]), device),
    )
}

/// Prefills `prompt` with the chunked op, moves each layer's final state
/// into a decode cache, then samples one character at a time with the
/// decode kernel: each step reads and updates the state in place.
fn generate(
    ctx: &Context,
    model: &Model,
    vocab: &Vocab,
    prompt: &str,
    count: usize,
    rng: &mut StdRng,
    device: &Device,
) -> String {
    let ids = vocab.encode(prompt);
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), device);
    let (logits, states) = model.forward(ctx, tokens);
    let mut caches: Vec<_> = states
        .into_iter()
        .map(|s| {
            let mut cache = ctx
                .empty(&[1, HEADS, HEAD, HEAD], DType::F32)
                .expect("a cache");
            write_states(ctx, s, &mut cache, &[0]).expect("the prefill's state");
            cache
        })
        .collect();
    let last = logits
        .slice([0..1, ids.len() - 1..ids.len()])
        .reshape([1, vocab.chars.len()]);
    let mut next = sample(last, rng);
    let mut text = String::from(prompt);
    for _ in 0..count {
        text.push(vocab.chars[next]);
        let token = Tensor::<2, Int>::from_data(TensorData::new(vec![next as i64], [1, 1]), device);
        let mut x = model.embed.forward(token);
        for (layer, (block, cache)) in model.blocks.iter().zip(&mut caches).enumerate() {
            let [q, k, v] = block.qkv(&x).map(|t| t.reshape([1, HEADS, HEAD]));
            let opts = options(layer);
            let step = DecodeOptions {
                slopes: opts.slopes.as_deref(),
                scale: opts.scale,
            };
            let o = decode_step(ctx, q, k, v, cache, &[0], &step).expect("a decode step");
            x = block.finish(x, o.reshape([1, 1, HEADS, HEAD]));
        }
        let logits = model
            .head
            .forward(model.norm.forward(x))
            .reshape([1, vocab.chars.len()]);
        next = sample(logits, rng);
    }
    text
}

/// Draws from softmax(logits / 0.8).
fn sample(logits: Tensor<2>, rng: &mut StdRng) -> usize {
    let p: Vec<f32> = softmax(logits.div_scalar(0.8), 1)
        .into_data()
        .try_to_vec()
        .expect("probabilities");
    let mut u = rng.random_range(0.0..1.0f32);
    for (i, &pi) in p.iter().enumerate() {
        u -= pi;
        if u <= 0.0 {
            return i;
        }
    }
    p.len() - 1
}

fn mean_of_last(xs: &[f32], count: usize) -> f32 {
    let tail = &xs[xs.len().saturating_sub(count)..];
    tail.iter().sum::<f32>() / tail.len() as f32
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (device, ctx) = init()?;
    println!("adapter: {}", ctx.adapter_info().name);
    let train_device = device.clone().autodiff();
    let vocab = Vocab::new(TEXT);
    let ids = vocab.encode(TEXT);
    let mut rng = StdRng::seed_from_u64(args.seed);
    device.seed(args.seed);
    let mut model = Model::new(vocab.chars.len(), &train_device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    let mut losses = Vec::with_capacity(args.steps);
    let started = Instant::now();
    for step in 1..=args.steps {
        let (input, target) = batch(&ids, &mut rng, args.batch, args.context, &train_device);
        let (logits, _) = model.forward(&ctx, input);
        let loss = loss_fn.forward(
            logits.reshape([args.batch * args.context, vocab.chars.len()]),
            target,
        );
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(args.lr, model, grads);
        if step % 25 == 0 || step == args.steps {
            let rate = step as f64 / started.elapsed().as_secs_f64();
            println!(
                "step {step:>5}  loss {:.3}  ({rate:.2} steps/s)",
                mean_of_last(&losses, 25)
            );
        }
    }
    let (first, last) = (
        *losses.first().ok_or("no steps were run")?,
        mean_of_last(&losses, (args.steps / 5).max(1)),
    );
    println!(
        "loss {first:.3} -> {last:.3} in {} steps, {:.1} s",
        args.steps,
        started.elapsed().as_secs_f64()
    );
    // NaN counts as not falling.
    let fell = last < first;
    if args.check && !fell {
        return Err(format!("the loss did not fall: {first:.3} -> {last:.3}").into());
    }
    let model = model.valid();
    let text = generate(
        &ctx,
        &model,
        &vocab,
        "Licensed under the ",
        args.generate,
        &mut rng,
        &device,
    );
    println!("---\n{text}\n---");
    Ok(())
}
