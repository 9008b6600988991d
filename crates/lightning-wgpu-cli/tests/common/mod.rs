//! Random inputs with fresh seeds for the CLI's tests.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A seed from `LIGHTNING_SEED` (to replay a failure) or fresh; printed.
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
