//! The benchmark figure: forward time and tokens per second against
//! sequence length, log scales, one line per provider and storage type.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::bench::Row;

/// Palette that stays readable on white, one colour per series.
const COLOURS: [RGBColor; 16] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
    RGBColor(127, 127, 127),
    RGBColor(0, 0, 128),
    RGBColor(128, 0, 0),
    RGBColor(0, 100, 0),
    RGBColor(255, 0, 255),
    RGBColor(0, 0, 0),
    RGBColor(184, 134, 11),
];

/// (n, value) points per series label, sorted by n.
fn series(rows: &[Row], value: impl Fn(&Row) -> Option<f64>) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        if let Some(v) = value(r).filter(|v| v.is_finite() && *v > 0.0) {
            out.entry(format!("{} ({})", r.provider, r.dtype))
                .or_default()
                .push((r.n as f64, v));
        }
    }
    for points in out.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

fn span(all: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (1.0, 10.0)
    } else {
        (lo / 1.5, hi * 1.5)
    }
}

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    data: &BTreeMap<String, Vec<(f64, f64)>>,
    colours: &BTreeMap<String, RGBColor>,
) -> Result<()> {
    let (x0, x1) = span(data.values().flatten().map(|p| p.0));
    let (y0, y1) = span(data.values().flatten().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("sequence length n")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{}", x.round()))
        .y_label_formatter(&|y| match *y {
            y if y >= 100.0 => format!("{y:.0}"),
            y if y >= 1.0 => format!("{y:.1}"),
            y => format!("{y:.3}"),
        })
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    for (label, points) in data {
        let colour = colours.get(label).copied().unwrap_or(BLACK);
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| anyhow!("plot: {e}"))?;
    }
    Ok(())
}

/// The legend in a column of its own, so it never hides a line.
fn legend(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    colours: &BTreeMap<String, RGBColor>,
) -> Result<()> {
    for (i, (label, colour)) in colours.iter().enumerate() {
        let y = 60 + 24 * i as i32;
        area.draw(&PathElement::new(
            vec![(10, y), (40, y)],
            colour.stroke_width(3),
        ))
        .map_err(|e| anyhow!("plot: {e}"))?;
        area.draw(&Circle::new((25, y), 3, colour.filled()))
            .map_err(|e| anyhow!("plot: {e}"))?;
        area.draw(&Text::new(label.clone(), (48, y - 7), ("sans-serif", 14)))
            .map_err(|e| anyhow!("plot: {e}"))?;
    }
    Ok(())
}

/// Writes the two-panel figure to `path`.
pub fn draw(path: &Path, adapter: &str, rows: &[Row]) -> Result<()> {
    let times = series(rows, |r| r.fwd_ms);
    let speed = series(rows, |r| r.tokens_per_s);
    let labels: std::collections::BTreeSet<&String> = times.keys().chain(speed.keys()).collect();
    let colours: BTreeMap<String, RGBColor> = labels
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), COLOURS[i % COLOURS.len()]))
        .collect();
    let root = SVGBackend::new(path, (1600, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let root = root
        .titled(
            &format!("Lightning Attention forward on {adapter}"),
            ("sans-serif", 22),
        )
        .map_err(|e| anyhow!("plot: {e}"))?;
    let (charts, key) = root.split_horizontally(1330);
    let (left, right) = charts.split_horizontally(665);
    panel(
        &left,
        "forward time (lower is better)",
        "ms",
        &times,
        &colours,
    )?;
    panel(
        &right,
        "throughput (flat = constant speed)",
        "tokens / s",
        &speed,
        &colours,
    )?;
    legend(&key, &colours)?;
    root.present()
        .map_err(|e| anyhow!("plot {}: {e}", path.display()))?;
    Ok(())
}
