//! Charts as SVG files, for what people would rather see than read: a
//! fine-tune's loss curve (`loss.svg` beside the adapter) and `eval`'s
//! scores side by side. Drawn with plotters' SVG backend and its built-in
//! text metrics (no font files on a board); written atomically.

use std::path::Path;

use plotters::prelude::*;

/// Width and height of every chart, in SVG pixels.
pub const SIZE: (u32, u32) = (800, 480);

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("cannot draw the chart: {0}")]
    Draw(String),
    #[error("{path}: cannot read the chart's data")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write the chart")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn draw_err(e: impl std::fmt::Display) -> ChartError {
    ChartError::Draw(e.to_string())
}

fn save(path: &Path, svg: &str) -> Result<(), ChartError> {
    crate::gguf::write_atomic(path, |w| std::io::Write::write_all(w, svg.as_bytes())).map_err(
        |source| ChartError::Write {
            path: path.to_path_buf(),
            source,
        },
    )
}

/// One line of a chart: its name and its (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

fn range(points: impl Iterator<Item = f64>, from_zero: bool) -> std::ops::Range<f64> {
    let (lo, hi) = points
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let lo = if from_zero { lo.min(0.0) } else { lo };
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - if from_zero { 0.0 } else { pad })..(hi + pad)
}

/// A training run: the loss series (train, validation) against the step on
/// the left axis, the learning rate on the right axis.
///
/// Errors: `Draw` when plotters fails, `Write` when the file cannot be
/// written.
pub fn loss_curve(
    path: &Path,
    title: &str,
    losses: &[Series<'_>],
    lr: &[(f64, f64)],
) -> Result<(), ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let all = || losses.iter().flat_map(|s| s.points.iter());
        let xs = range(all().map(|p| p.0).chain(lr.iter().map(|p| p.0)), false);
        let ys = range(all().map(|p| p.1), true);
        let lrs = range(lr.iter().map(|p| p.1), true);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .right_y_label_area_size(70)
            .build_cartesian_2d(xs.clone(), ys)
            .map_err(draw_err)?
            .set_secondary_coord(xs, lrs);
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("loss")
            .draw()
            .map_err(draw_err)?;
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()
            .map_err(draw_err)?;
        for (i, s) in losses.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_secondary_series(LineSeries::new(lr.iter().copied(), grey.stroke_width(1)))
            .map_err(draw_err)?
            .label("learning rate (right)")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    save(path, &svg)
}

/// Scores side by side: one panel per metric (each with its own scale), one
/// bar per run in it, the value written above each bar. `panels` is
/// (metric name, [(run name, value)]).
///
/// Errors: as `loss_curve`.
pub fn bar_panels(
    path: &Path,
    title: &str,
    panels: &[(String, Vec<(String, f64)>)],
) -> Result<(), ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(draw_err)?;
        let cells = root.split_evenly((1, panels.len().max(1)));
        for (area, (metric, bars)) in cells.iter().zip(panels) {
            let top = bars
                .iter()
                .map(|b| b.1)
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            let top = if top > 0.0 { top * 1.2 } else { 1.0 };
            let mut chart = ChartBuilder::on(area)
                .caption(metric, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(40)
                .build_cartesian_2d(0.0..bars.len() as f64, 0.0..top)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .disable_x_axis()
                .y_labels(5)
                .draw()
                .map_err(draw_err)?;
            for (i, (run, v)) in bars.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let x = i as f64;
                let v = if v.is_finite() { *v } else { 0.0 };
                chart
                    .draw_series([Rectangle::new(
                        [(x + 0.15, 0.0), (x + 0.85, v)],
                        color.filled(),
                    )])
                    .map_err(draw_err)?;
                let style = ("sans-serif", 12).into_font();
                chart
                    .draw_series([
                        Text::new(format!("{v:.3}"), (x + 0.2, v + top * 0.06), style.clone()),
                        Text::new(run.clone(), (x + 0.2, top * 0.02), style),
                    ])
                    .map_err(draw_err)?;
            }
        }
        root.present().map_err(draw_err)?;
    }
    save(path, &svg)
}
