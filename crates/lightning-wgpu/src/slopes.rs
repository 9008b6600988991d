//! Decay slopes: the ALiBi-style schedule of Lightning Attention.

use crate::error::{Error, Result};

/// Per-head decay slopes, equal to the official `_build_slope_tensor(h)`:
/// for a power of two `h`, `s_i = 2^(-8(i+1)/h)`; otherwise the slopes of the
/// closest lower power of two, then every other slope of twice that.
///
/// ```
/// let s = lightning_wgpu::alibi_slopes(8);
/// assert_eq!(s[0], 0.5);
/// assert_eq!(s[7], 1.0 / 256.0);
/// ```
pub fn alibi_slopes(h: usize) -> Vec<f32> {
    slopes_f64(h).into_iter().map(|s| s as f32).collect()
}

fn slopes_f64(h: usize) -> Vec<f64> {
    if h == 0 {
        return Vec::new();
    }
    if h.is_power_of_two() {
        // Same float operations as the reference: start * ratio^i.
        let start = 2f64.powf(-(2f64.powf(-((h as f64).log2() - 3.0))));
        return (0..h).map(|i| start * start.powi(i as i32)).collect();
    }
    let closest = 1usize << h.ilog2();
    let mut out = slopes_f64(closest);
    out.extend(
        slopes_f64(2 * closest)
            .into_iter()
            .step_by(2)
            .take(h - closest),
    );
    out
}

/// Slopes of layer `layer` (0-based) of `layers`, as TransNormerLLM and
/// MiniMax-01 scale them: `s * (1 - layer / (layers - 1) + 1e-5)`. A single
/// layer keeps the factor `1 + 1e-5`.
pub fn layer_slopes(h: usize, layer: usize, layers: usize) -> Result<Vec<f32>> {
    if layer >= layers {
        return Err(Error::InvalidValue {
            arg: "layer",
            value: format!("{layer} of {layers}"),
            reason: "the layer index must be below the number of layers",
        });
    }
    let depth = if layers > 1 {
        layer as f64 / (layers - 1) as f64
    } else {
        0.0
    };
    let factor = 1.0 - depth + 1e-5;
    Ok(slopes_f64(h)
        .into_iter()
        .map(|s| (s * factor) as f32)
        .collect())
}
