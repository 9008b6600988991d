//! Random inputs for `demo` (and later `bench`).
//!
//! A few lines of SplitMix64 instead of a `rand` dependency: the tool only
//! needs reproducible, well-spread test data, not statistical quality, and
//! the library's users should not pay for a random crate they do not use.

use std::time::{SystemTime, UNIX_EPOCH};

/// SplitMix64 (Steele, Lea, Flood 2014): one add and three xor-shift-multiply
/// steps per output, every seed a full-period stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), on a grid of 2^-23 (24 bits, all an f32 holds).
    pub fn symmetric(&mut self) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        2.0 * unit - 1.0
    }

    /// `len` values uniform in [-1, 1) scaled by `1/sqrt(width)`, so that dot
    /// products over `width` stay O(1) whatever the head size, as in the
    /// library's tests.
    pub fn vec(&mut self, len: usize, width: usize) -> Vec<f32> {
        let s = 1.0 / (width.max(1) as f32).sqrt();
        (0..len).map(|_| self.symmetric() * s).collect()
    }
}

/// A seed that differs between runs (clock and process id), for when the
/// user gives none: every run then exercises new data.
pub fn fresh_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng::new(nanos ^ u64::from(std::process::id()).rotate_left(32)).next_u64()
}
