//! Shared test helpers: contexts, random inputs with fresh seeds, poison.
#![allow(dead_code)]

use lightning_wgpu::{reference, Context, ContextOptions, DType, Dims, Error, Layout, Tensor};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Written into outputs before a run: any element a kernel forgets to write
/// stays NaN and fails the comparison.
pub const POISON: f32 = f32::NAN;

/// A seed from the environment (`LIGHTNING_SEED`, to replay a failure) or
/// fresh from the OS; printed so a failing run can be repeated.
pub fn seed() -> u64 {
    let s = std::env::var("LIGHTNING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {s} (replay with LIGHTNING_SEED={s})");
    s
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Uniform in [-1, 1) scaled by `1/sqrt(width)` so sums stay O(1).
pub fn random(rng: &mut StdRng, len: usize, width: usize) -> Vec<f32> {
    let s = 1.0 / (width as f32).sqrt();
    (0..len)
        .map(|_| rng.random_range(-1.0f32..1.0) * s)
        .collect()
}

/// A context on the default adapter with shader bounds checks on, or as
/// `LIGHTNING_CHECKED` says (off by default): CI runs the forward and
/// backward suites once more with it set.
pub fn context(checked: bool) -> Context {
    context_with(ContextOptions {
        checked: checked.then_some(true),
        ..Default::default()
    })
}

pub fn context_with(options: ContextOptions) -> Context {
    match Context::with_options(options) {
        Ok(c) => c,
        Err(e) => {
            panic!("no GPU context ({e}): run `cargo xtask test`, which installs Mesa's lavapipe")
        }
    }
}

pub fn poisoned(ctx: &Context, shape: &[usize]) -> Tensor {
    let len = shape.iter().product();
    ctx.tensor(&vec![POISON; len], shape)
        .expect("poisoned tensor")
}

/// Rows `[r0, r1)` of a `(b, h, n, w)` tensor in layout `l`, as the data of
/// a `(b, h, r1 - r0, w)` tensor in the same layout.
pub fn rows(x: &[f32], l: Layout, dims: &Dims, w: usize, r0: usize, r1: usize) -> Vec<f32> {
    l.rows(x, dims, w, r0..r1)
}

/// One sequence of a call, to compare with the reference on its own: a
/// plain batch is one part (all rows, every batch entry's states), a packed
/// batch (`cu_seqlens`) one per sequence.
pub struct Part {
    /// Its rows `[r0, r1)` of the call.
    pub rows: (usize, usize),
    /// The dims of the part alone.
    pub dims: Dims,
    /// Its range in the call's state tensors.
    pub states: std::ops::Range<usize>,
}

impl Part {
    /// The part's rows of a `(b, h, n, width)` tensor of the call.
    pub fn of(&self, x: &[f32], l: Layout, call: &Dims, width: usize) -> Vec<f32> {
        rows(x, l, call, width, self.rows.0, self.rows.1)
    }
}

/// The parts of a call of `dims` with these `cu_seqlens`, whose state
/// tensors hold `states_len` values.
pub fn parts(dims: &Dims, cu: Option<&[usize]>, states_len: usize) -> Vec<Part> {
    let bounds = cu.map_or(vec![0, dims.n], <[usize]>::to_vec);
    let per = states_len / (bounds.len() - 1);
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| Part {
            rows: (w[0], w[1]),
            // A packed batch has b = 1, and so has each of its sequences.
            dims: Dims {
                n: w[1] - w[0],
                ..*dims
            },
            states: i * per..(i + 1) * per,
        })
        .collect()
}

/// A storage type of q, k and v as the matrix tests run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    F32,
    /// Native f16 where the adapter has SHADER_F16.
    F16,
    /// f16 read from u32 words.
    F16Packed,
    Bf16,
}

impl Store {
    pub const ALL: [Store; 4] = [Store::F32, Store::F16, Store::F16Packed, Store::Bf16];

    pub fn dtype(self) -> DType {
        match self {
            Store::F32 => DType::F32,
            Store::F16 | Store::F16Packed => DType::F16,
            Store::Bf16 => DType::BF16,
        }
    }
}

/// The chunk path a test asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Portable,
    TensorCores,
}

/// The context for one combination; requiring the tensor cores where the
/// adapter lacks them is the typed error the caller checks.
pub fn context_for(store: Store, path: Path, checked: bool) -> Result<Context, Error> {
    Context::with_options(ContextOptions {
        checked: Some(checked),
        packed_f16: Some(store == Store::F16Packed),
        cooperative_matrix: Some(path == Path::TensorCores),
        ..Default::default()
    })
}

/// What the GPU sees of `x` stored as `dtype`.
pub fn rounded(x: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        DType::BF16 => x
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect(),
        _ => x.to_vec(),
    }
}

/// A tensor of NaN in `dtype`.
pub fn poisoned_as(ctx: &Context, shape: &[usize], dtype: DType) -> Tensor {
    let len = shape.iter().product();
    ctx.tensor_as(&vec![POISON; len], shape, dtype)
        .expect("poisoned tensor")
}

/// The largest relative error each storage type allows.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2e-3,
        DType::BF16 => 1e-2,
        _ => 1e-5,
    }
}

/// One random problem: sizes, a packed batch or not, decay, scale, and
/// inputs rounded to their storage.
pub struct Problem {
    pub dims: Dims,
    pub layout: Layout,
    pub dtype: DType,
    pub cu: Option<Vec<usize>>,
    pub slopes: Vec<f32>,
    pub scale: f32,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub d_o: Vec<f32>,
    pub s0: Vec<f32>,
    pub dsn: Vec<f32>,
}

impl Problem {
    /// Odd sizes (n around and not a multiple of the block, d != e); d and
    /// e multiples of 16 up to 128 for the tensor cores.
    pub fn random(seed: u64, dtype: DType, path: Path, layout: Layout, packed: bool) -> Problem {
        let mut rng = rng(seed);
        let pick = |rng: &mut StdRng, xs: &[usize]| xs[rng.random_range(0..xs.len())];
        let (d, e) = loop {
            let (d, e) = match path {
                Path::TensorCores => (16 * rng.random_range(1..=8), 16 * rng.random_range(1..=8)),
                Path::Portable => (rng.random_range(1..=72), rng.random_range(1..=72)),
            };
            if d != e {
                break (d, e);
            }
        };
        let n = pick(&mut rng, &[1, 2, 63, 65, 130, 201, 333]);
        let (b, cu) = if packed {
            // Sequences that start inside blocks, one of a single row.
            let n = n.max(70);
            let mut cuts = vec![0, 1, rng.random_range(2..n / 2), n];
            cuts.dedup();
            (1, Some(cuts))
        } else {
            (rng.random_range(1..=2), None)
        };
        let n = cu.as_ref().map_or(n, |c| *c.last().unwrap());
        let h = rng.random_range(1..=3);
        let dims = Dims { b, h, n, d, e };
        let factor = pick(&mut rng, &[0, 1, 4]) as f32;
        let slopes = lightning_wgpu::alibi_slopes(h)
            .iter()
            .map(|s| s * factor)
            .collect();
        let scale = [1.0, 0.37, 1.0 / (d as f32).sqrt()][rng.random_range(0..3)];
        let seqs = cu.as_ref().map_or(b, |c| c.len() - 1);
        let mut input = |len, width| rounded(&random(&mut rng, len, width), dtype);
        let q = input(b * h * n * d, d);
        let k = input(b * h * n * d, d);
        let v = input(b * h * n * e, 1);
        let d_o = input(b * h * n * e, 1);
        let s0 = random(&mut rng, seqs * h * d * e, 1);
        let dsn = random(&mut rng, seqs * h * d * e, 1);
        Problem {
            dims,
            layout,
            dtype,
            cu,
            slopes,
            scale,
            q,
            k,
            v,
            d_o,
            s0,
            dsn,
        }
    }

    pub fn qk_shape(&self) -> [usize; 4] {
        let Dims { b, h, n, d, .. } = self.dims;
        self.layout.shape(b, h, n, d)
    }

    pub fn v_shape(&self) -> [usize; 4] {
        let Dims { b, h, n, e, .. } = self.dims;
        self.layout.shape(b, h, n, e)
    }

    pub fn state_shape(&self) -> [usize; 4] {
        let seqs = self.cu.as_ref().map_or(self.dims.b, |c| c.len() - 1);
        [seqs, self.dims.h, self.dims.d, self.dims.e]
    }

    /// q, k and v on the GPU in their storage.
    pub fn upload(&self, ctx: &Context) -> (Tensor, Tensor, Tensor) {
        let up = |x: &[f32], shape: [usize; 4]| ctx.tensor_as(x, &shape, self.dtype).unwrap();
        (
            up(&self.q, self.qk_shape()),
            up(&self.k, self.qk_shape()),
            up(&self.v, self.v_shape()),
        )
    }

    pub fn parts(&self) -> Vec<Part> {
        parts(&self.dims, self.cu.as_deref(), self.s0.len())
    }

    /// The part's rows of a call tensor of `width`.
    pub fn part(&self, p: &Part, x: &[f32], width: usize) -> Vec<f32> {
        p.of(x, self.layout, &self.dims, width)
    }

    pub fn reference_forward(&self, p: &Part) -> reference::Output {
        let (d, e) = (self.dims.d, self.dims.e);
        reference::forward(
            p.dims,
            self.layout,
            &self.part(p, &self.q, d),
            &self.part(p, &self.k, d),
            &self.part(p, &self.v, e),
            &self.slopes,
            self.scale,
            Some(&self.s0[p.states.clone()]),
        )
    }

    pub fn reference_backward(&self, p: &Part) -> reference::Gradients {
        let (d, e) = (self.dims.d, self.dims.e);
        reference::backward(
            p.dims,
            self.layout,
            &self.part(p, &self.q, d),
            &self.part(p, &self.k, d),
            &self.part(p, &self.v, e),
            &self.part(p, &self.d_o, e),
            &self.slopes,
            self.scale,
            Some(&self.s0[p.states.clone()]),
            Some(&self.dsn[p.states.clone()]),
        )
    }

    pub fn tolerance(&self) -> f64 {
        tolerance(self.dtype)
    }

    /// States are f32; the tensor cores round the carried state to f16.
    pub fn state_tolerance(&self, path: Path) -> f64 {
        match path {
            Path::Portable => 1e-5,
            Path::TensorCores => tolerance(self.dtype),
        }
    }
}
