//! The CPU reference and the slope schedule, checked against their
//! definitions: the quadratic sum of DESIGN.md and the official slope tensor.

mod common;

use lightning_wgpu::{alibi_slopes, layer_slopes, reference, Dims, Layout};

/// `o_i = sum_{j<=i} lambda^(i-j) (scale q_i . k_j) v_j + lambda^(i+1) scale q_i S0`,
/// summed directly, as the definition reads.
#[allow(clippy::too_many_arguments)]
fn quadratic(
    dims: Dims,
    layout: Layout,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &[f32],
    scale: f32,
    s0: &[f32],
) -> Vec<f64> {
    let Dims { b, h, n, d, e } = dims;
    let at =
        |w: usize, bi: usize, hi: usize, i: usize, c: usize| layout.index(h, n, w, [bi, hi, i, c]);
    let mut o = vec![0.0; b * h * n * e];
    for bi in 0..b {
        for hi in 0..h {
            let slope = s[hi] as f64;
            for i in 0..n {
                for c in 0..e {
                    let mut acc = 0.0;
                    for j in 0..=i {
                        let dot: f64 = (0..d)
                            .map(|r| q[at(d, bi, hi, i, r)] as f64 * k[at(d, bi, hi, j, r)] as f64)
                            .sum();
                        acc +=
                            (-slope * (i - j) as f64).exp() * dot * v[at(e, bi, hi, j, c)] as f64;
                    }
                    let carried: f64 = (0..d)
                        .map(|r| {
                            q[at(d, bi, hi, i, r)] as f64
                                * s0[((bi * h + hi) * d + r) * e + c] as f64
                        })
                        .sum();
                    acc += (-slope * (i + 1) as f64).exp() * carried;
                    o[at(e, bi, hi, i, c)] = scale as f64 * acc;
                }
            }
        }
    }
    o
}

#[test]
fn recurrence_equals_the_quadratic_definition() {
    let mut rng = common::rng(common::seed());
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        let dims = Dims {
            b: 2,
            h: 3,
            n: 37,
            d: 5,
            e: 7,
        };
        let Dims { b, h, n, d, e } = dims;
        let q = common::random(&mut rng, b * h * n * d, 1);
        let k = common::random(&mut rng, b * h * n * d, 1);
        let v = common::random(&mut rng, b * h * n * e, 1);
        let s0 = common::random(&mut rng, b * h * d * e, 1);
        let slopes = [0.0, 0.3, 2.0];
        let got = reference::forward(dims, layout, &q, &k, &v, &slopes, 0.7, Some(&s0));
        let want = quadratic(dims, layout, &q, &k, &v, &slopes, 0.7, &s0);
        let got32: Vec<f32> = got.o.iter().map(|&x| x as f32).collect();
        let err = reference::relative_error(&got32, &want);
        assert!(err < 1e-6, "{layout}: {err:e}");
        // And the two really differ from zero.
        assert!(want.iter().map(|x| x * x).sum::<f64>() > 1e-3);
    }
}

#[test]
fn relative_error_flags_nan_and_length() {
    assert_eq!(reference::relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
    assert!(reference::relative_error(&[f32::NAN, 2.0], &[1.0, 2.0]).is_infinite());
    assert!(reference::relative_error(&[1.0], &[1.0, 2.0]).is_infinite());
    let e = reference::relative_error(&[1.0, 2.1], &[1.0, 2.0]);
    assert!((e - 0.1 / 5f64.sqrt()).abs() < 1e-6, "{e}");
}

#[test]
fn slopes_match_the_official_tensor() {
    // Powers of two: s_i = 2^(-8(i+1)/h).
    for h in [1, 2, 4, 8, 16, 32, 64] {
        let s = alibi_slopes(h);
        assert_eq!(s.len(), h);
        for (i, &x) in s.iter().enumerate() {
            let want = 2f64.powf(-8.0 * (i + 1) as f64 / h as f64) as f32;
            assert!(
                (x - want).abs() <= f32::EPSILON * want,
                "h={h} i={i}: {x} vs {want}"
            );
        }
    }
    // Not a power of two: the 8-head slopes, then every other 16-head slope.
    let s12 = alibi_slopes(12);
    let mut want: Vec<f32> = alibi_slopes(8);
    want.extend(alibi_slopes(16).into_iter().step_by(2).take(4));
    assert_eq!(s12, want);
    assert!((s12[8] - 2f32.powf(-0.5)).abs() < 1e-7);
    assert!((s12[11] - 2f32.powf(-3.5)).abs() < 1e-7);
    // 6 heads: 4-head slopes then 8-head slopes 0 and 2.
    let s6 = alibi_slopes(6);
    assert_eq!(&s6[4..], &[0.5, 0.125]);
}

#[test]
fn layer_scaling_follows_transnormer() {
    let base = alibi_slopes(8);
    let first = layer_slopes(8, 0, 24).unwrap();
    let last = layer_slopes(8, 23, 24).unwrap();
    for i in 0..8 {
        assert!((first[i] - base[i] * (1.0 + 1e-5)).abs() < 1e-7);
        assert!((last[i] - base[i] * 1e-5).abs() < 1e-9);
    }
    assert!(layer_slopes(8, 24, 24).is_err());
    assert_eq!(layer_slopes(4, 0, 1).unwrap().len(), 4);
}
