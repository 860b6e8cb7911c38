//! SVG plots of the report, drawn with plotters' SVG backend: it writes text as `<text>`
//! elements, so neither a font library nor a system font is needed to build or to draw. A plot
//! whose data is not available is not drawn.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::frequency::PhaseFrequencies;
use super::report::AnalysisReport;
use super::transition::TransitionMatrix;
use super::AnalysisError;

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn plot_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> AnalysisError + '_ {
    move |e| AnalysisError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// White → yellow → orange → dark red, `v` in [0, 1].
fn heat(v: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 4] = [
        (255.0, 255.0, 255.0),
        (254.0, 224.0, 139.0),
        (244.0, 109.0, 67.0),
        (165.0, 0.0, 38.0),
    ];
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = v * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let t = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * t).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Layer and expert ids: integers only, no label between them.
fn integer_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{:.0}", x)
    } else {
        String::new()
    }
}

/// One line per named series of (x, y) points, in SVG; also used by the placement evaluator
/// so that every moeflow plot looks alike.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    y_floor: Option<f64>,
) -> Result<(), AnalysisError> {
    let err = plot_err(path);
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Ok(());
    }
    if let Some(f) = y_floor {
        y0 = y0.min(f);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x0 - 0.5)..(x1 + 0.5), (y0 - pad)..(y1 + pad))
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&integer_label)
        .draw()
        .map_err(&err)?;
    for (k, (name, points)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(&err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

/// A grid of cells coloured by `value(row, col)` in [0, 1]; zero cells stay white (and are not
/// written, which keeps large matrices small).
#[allow(clippy::too_many_arguments)]
fn heatmap(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    cols: usize,
    row_labels: &[usize],
    value: &dyn Fn(usize, usize) -> f64,
    scale_note: &str,
) -> Result<(), AnalysisError> {
    let err = plot_err(path);
    let rows = row_labels.len();
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let (main, legend) = root.split_horizontally(900);
    let mut chart = ChartBuilder::on(&main)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..cols as f64 - 0.5, -0.5..rows as f64 - 0.5)
        .map_err(&err)?;
    // Cells are centred on integer coordinates, so that integer ticks name a cell.
    let labels = row_labels.to_vec();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&integer_label)
        .y_label_formatter(&move |y: &f64| {
            if (y - y.round()).abs() > 1e-6 || *y < 0.0 {
                return String::new();
            }
            labels
                .get(y.round() as usize)
                .map_or(String::new(), |l| l.to_string())
        })
        .draw()
        .map_err(&err)?;
    let mut cells = Vec::new();
    for r in 0..rows {
        for c in 0..cols {
            let v = value(r, c);
            if v > 0.0 {
                let (x, y) = (c as f64, r as f64);
                cells.push(Rectangle::new(
                    [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                    heat(v).filled(),
                ));
            }
        }
    }
    chart.draw_series(cells).map_err(&err)?;
    draw_legend(&legend, scale_note).map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    note: &str,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let (top, bottom, x) = (60i32, 600i32, 20i32);
    let steps = 50;
    for k in 0..steps {
        let v = 1.0 - k as f64 / steps as f64;
        let y = top + (bottom - top) * k / steps;
        let y2 = top + (bottom - top) * (k + 1) / steps;
        area.draw(&Rectangle::new([(x, y), (x + 20, y2)], heat(v).filled()))?;
    }
    area.draw(&Text::new("high", (x, top - 18), (FONT, 12)))?;
    area.draw(&Text::new("0", (x, bottom + 4), (FONT, 12)))?;
    for (i, line) in note.split('\n').enumerate() {
        area.draw(&Text::new(
            line.to_string(),
            (2, bottom + 24 + 14 * i as i32),
            (FONT, 10),
        ))?;
    }
    Ok(())
}

fn frequency_heatmap(path: &Path, p: &PhaseFrequencies, e: usize) -> Result<(), AnalysisError> {
    let layers: Vec<_> = p.layers.iter().filter(|l| l.total > 0).collect();
    if layers.is_empty() {
        return Ok(());
    }
    const CAP: f64 = 16.0;
    let ratio = |r: usize, c: usize| {
        let l = layers[r];
        let mean = l.total as f64 / e as f64;
        (l.counts[c] as f64 / mean).min(CAP)
    };
    let labels: Vec<usize> = layers.iter().map(|l| l.layer).collect();
    heatmap(
        path,
        &format!(
            "Expert load / layer mean, {}",
            p.phase.map_or("unphased", |p| p.as_str())
        ),
        "expert",
        "layer",
        e,
        &labels,
        &|r, c| (1.0 + ratio(r, c)).log2() / (1.0 + CAP).log2(),
        "log scale,\n0 to 16x\nthe mean",
    )
}

fn transition_heatmap(path: &Path, title: &str, m: &TransitionMatrix) -> Result<(), AnalysisError> {
    let e = m.num_experts;
    let rows: Vec<f64> = (0..e)
        .map(|i| m.counts[i * e..(i + 1) * e].iter().sum::<u64>() as f64)
        .collect();
    let p = |i: usize, j: usize| {
        if rows[i] > 0.0 {
            m.counts[i * e + j] as f64 / rows[i]
        } else {
            0.0
        }
    };
    let pmax = (0..e)
        .flat_map(|i| (0..e).map(move |j| (i, j)))
        .map(|(i, j)| p(i, j))
        .fold(0.0, f64::max);
    if pmax <= 0.0 {
        return Ok(());
    }
    let labels: Vec<usize> = (0..e).collect();
    heatmap(
        path,
        title,
        "next expert j",
        "current expert i",
        e,
        &labels,
        &|i, j| (p(i, j) / pmax).sqrt(),
        &format!("P(j | i),\nsqrt scale,\nmax {pmax:.3}"),
    )
}

/// Draws every plot the report's data supports into `out_dir`; returns the files written.
pub fn draw_plots(r: &AnalysisReport, out_dir: &Path) -> Result<Vec<PathBuf>, AnalysisError> {
    let mut out = Vec::new();
    let e = r.shape.num_experts;
    let phases = [&r.frequencies.prefill, &r.frequencies.decode, &r.unphased];

    let skew: Vec<(String, Vec<(f64, f64)>)> = phases
        .iter()
        .copied()
        .flatten()
        .map(|p| {
            let pts = p
                .layers
                .iter()
                .filter_map(|l| l.max_over_mean.map(|m| (l.layer as f64, m)))
                .collect();
            (p.phase.map_or("unphased", |p| p.as_str()).to_string(), pts)
        })
        .collect();
    if !skew.is_empty() {
        let path = out_dir.join("skew.svg");
        line_plot(
            &path,
            "Hottest expert / mean load per layer",
            "layer",
            "max / mean",
            &skew,
            Some(1.0),
        )?;
        out.push(path);
    }

    for p in phases.into_iter().flatten() {
        let name = p.phase.map_or("unphased", |p| p.as_str());
        let path = out_dir.join(format!("frequency_{name}.svg"));
        frequency_heatmap(&path, p, e)?;
        out.push(path);
    }

    if let Some(m) = r
        .layer_transitions
        .all
        .as_ref()
        .and_then(|t| t.representative.as_ref())
    {
        let path = out_dir.join("layer_transition.svg");
        let title = format!(
            "P(expert j at layer {} | expert i at layer {})",
            m.to_layer, m.from_layer
        );
        transition_heatmap(&path, &title, m)?;
        out.push(path);
    }
    if let Some(m) = r
        .token_transitions
        .as_ref()
        .and_then(|t| t.representative.as_ref())
    {
        let path = out_dir.join("token_transition.svg");
        let title = format!(
            "P(expert j at decode token t+1 | expert i at t), layer {}",
            m.from_layer
        );
        transition_heatmap(&path, &title, m)?;
        out.push(path);
    }

    let pd = &r.prefill_vs_decode;
    let spearman: Vec<(String, Vec<(f64, f64)>)> = pd
        .overall
        .iter()
        .chain(pd.workloads.iter().take(COLORS.len() - 1))
        .map(|c| {
            let pts = c
                .layers
                .iter()
                .filter_map(|l| l.spearman.map(|s| (l.layer as f64, s)))
                .collect();
            (
                c.workload.clone().unwrap_or_else(|| "all data".to_string()),
                pts,
            )
        })
        .collect();
    if !spearman.is_empty() {
        let path = out_dir.join("prefill_decode_spearman.svg");
        line_plot(
            &path,
            "Spearman of expert frequencies, prefill vs decode",
            "layer",
            "Spearman",
            &spearman,
            Some(0.0),
        )?;
        out.push(path);
    }

    let co: Vec<(String, Vec<(f64, f64)>)> = [
        ("prefill", &r.coactivation.prefill),
        ("decode", &r.coactivation.decode),
    ]
    .into_iter()
    .filter_map(|(name, c)| {
        c.as_ref().map(|c| {
            let pts = c
                .layers
                .iter()
                .filter_map(|l| l.top_share.map(|s| (l.layer as f64, s)))
                .collect();
            (name.to_string(), pts)
        })
    })
    .collect();
    if !co.is_empty() {
        let path = out_dir.join("coactivation_top_share.svg");
        line_plot(
            &path,
            &format!(
                "Share of co-activations carried by the top {:.0}% of pairs",
                100.0 * r.config.top_pair_fraction
            ),
            "layer",
            "share",
            &co,
            Some(0.0),
        )?;
        out.push(path);
    }
    Ok(out)
}
