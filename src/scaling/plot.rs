//! Figures with plotters, pure Rust, in SVG and PNG (feature `plot`).
//!
//! Text is rendered with an embedded subset of DejaVu Sans (`assets/fonts/`, Bitstream Vera licence), registered
//! with plotters' `ab_glyph` backend on first use: no system font library is needed.
//!
//! [`loss_vs_compute`] draws the paper's figures: validation loss against compute (PF-days) in log-log, one curve per
//! run coloured by its trainable `N` (baselines dotted, variants solid, legend "name (N=…)"), the frontier, its
//! power-law fit with a bootstrap band and, optionally, the baselines' law for reference. [`residuals`] draws the
//! log residuals of a fit.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::cost::PF_DAY;
use super::runs::{run_label, Run};
use crate::error::Error;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
static FONT_OK: OnceLock<bool> = OnceLock::new();

fn ensure_font() -> candle_core::Result<()> {
    let ok = *FONT_OK.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
            && plotters::style::register_font("sans-serif", FontStyle::Bold, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Plot("the embedded font could not be registered".into()).into())
    }
}

/// One learning curve in a figure.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveSpec {
    /// Legend text.
    pub label: String,
    /// `(compute in FLOPs, loss)` points.
    pub points: Vec<(f64, f64)>,
    /// Dotted (baselines) or solid (variants).
    pub dotted: bool,
    /// Colour position in `[0, 1]` on the palette (small `N` dark blue → large `N` yellow).
    pub shade: f64,
}

/// A loss-against-compute figure.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LossComputeFigure {
    /// Title.
    pub title: String,
    /// The learning curves.
    pub curves: Vec<CurveSpec>,
    /// The frontier `(C, L)`.
    pub frontier: Option<Vec<(f64, f64)>>,
    /// The fitted law `(C, L)` with its legend text.
    pub fit: Option<(String, Vec<(f64, f64)>)>,
    /// The bootstrap band `(C, lo, hi)` of the fit.
    pub band: Option<Vec<(f64, f64, f64)>>,
    /// A reference law (the baselines'), drawn dashed grey, with its legend text.
    pub reference: Option<(String, Vec<(f64, f64)>)>,
}

impl LossComputeFigure {
    /// Curves for `runs`, coloured by `log N` across all of them; `dotted(run)` picks the line style.
    pub fn curves_for(runs: &[&Run], dotted: impl Fn(&Run) -> bool) -> Vec<CurveSpec> {
        let ns: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.n_trainable)
            .map(|n| n.ln())
            .collect();
        let (lo, hi) = ns
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        runs.iter()
            .enumerate()
            .map(|(i, r)| {
                let shade = match r.n_trainable {
                    Some(n) if hi > lo => (n.ln() - lo) / (hi - lo),
                    _ => i as f64 / runs.len().max(2).saturating_sub(1) as f64,
                };
                CurveSpec {
                    label: run_label(r),
                    points: r.valid_points().map(|p| (p.compute, p.loss)).collect(),
                    dotted: dotted(r),
                    shade,
                }
            })
            .collect()
    }
}

/// A viridis-like palette, `t ∈ [0, 1]`.
fn palette(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (220.0, 200.0, 30.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    } * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn plot_err<E: std::fmt::Debug>(e: E) -> candle_core::Error {
    Error::Plot(format!("{e:?}")).into()
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    (lo <= hi).then_some((lo, hi))
}

fn pad_log(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let (a, b) = (lo.ln(), hi.ln());
    let w = (b - a).max(1e-3);
    ((a - frac * w).exp(), (b + frac * w).exp())
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let e = v.abs().log10().floor();
    let m = v / 10f64.powf(e);
    if (m - 1.0).abs() < 1e-6 {
        format!("1e{e}")
    } else {
        format!("{m:.1}e{e}")
    }
}

/// Round tick values between `lo` and `hi` (about 5 to 10 of them): a log axis spanning less than a decade gets no
/// ticks from plotters' own log scale.
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    let raw = span / 7.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 9.0)
        .unwrap_or(10.0 * mag);
    let mut v = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + 1e-12 * hi.abs() {
        v.push(t);
        t += step;
    }
    v
}

/// Ticks of a log axis at 1, 2 and 5 times powers of ten, thinned to 1 and 3, then to powers of ten alone, so that at
/// most eight are labelled (plotters' own log ticks label every integer multiple, and the labels overlap); a range
/// too narrow for two of them gets [`nice_ticks`].
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mut best = Vec::new();
    for mults in [&[1.0, 2.0, 5.0][..], &[1.0, 3.0], &[1.0]] {
        let v: Vec<f64> = (e0..=e1)
            .flat_map(|e| mults.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|&t| t >= lo && t <= hi)
            .collect();
        best = v;
        if best.len() <= 8 {
            break;
        }
    }
    if best.len() < 2 {
        nice_ticks(lo, hi)
    } else {
        best
    }
}

fn draw_loss_compute<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &LossComputeFigure,
) -> candle_core::Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let pf = |c: f64| c / PF_DAY;
    let xs = fig
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .chain(fig.frontier.iter().flatten().map(|p| p.0));
    let ys = fig
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .chain(fig.frontier.iter().flatten().map(|p| p.1));
    let (x0, x1) =
        bounds(xs).ok_or_else(|| Error::Plot(format!("{}: nothing to draw", fig.title)))?;
    let (y0, y1) =
        bounds(ys).ok_or_else(|| Error::Plot(format!("{}: nothing to draw", fig.title)))?;
    let (x0, x1) = pad_log(pf(x0), pf(x1), 0.03);
    let (y0, y1) = pad_log(y0, y1, 0.05);
    let mut chart = ChartBuilder::on(root)
        .caption(&fig.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (x0..x1).log_scale().with_key_points(log_ticks(x0, x1)),
            (y0..y1).log_scale().with_key_points(nice_ticks(y0, y1)),
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("compute C (PF-days)")
        .y_desc("validation loss (nats/token)")
        .x_label_formatter(&|v| fmt_tick(*v))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style(("sans-serif", 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_err)?;
    let in_x = |c: f64| c >= x0 && c <= x1;
    if let Some(band) = &fig.band {
        let mut poly: Vec<(f64, f64)> = band
            .iter()
            .filter(|p| in_x(pf(p.0)) && p.1 > 0.0)
            .map(|p| (pf(p.0), p.1.clamp(y0, y1)))
            .collect();
        poly.extend(
            band.iter()
                .rev()
                .filter(|p| in_x(pf(p.0)) && p.2 > 0.0)
                .map(|p| (pf(p.0), p.2.clamp(y0, y1))),
        );
        if poly.len() >= 3 {
            chart
                .draw_series(std::iter::once(Polygon::new(poly, RED.mix(0.15).filled())))
                .map_err(plot_err)?
                .label("95% bootstrap band")
                .legend(|(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], RED.mix(0.15).filled())
                });
        }
    }
    for c in &fig.curves {
        let color = palette(c.shade);
        let pts: Vec<(f64, f64)> = c.points.iter().map(|p| (pf(p.0), p.1)).collect();
        if c.dotted {
            chart
                .draw_series(DashedLineSeries::new(pts, 3, 4, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(&c.label)
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (5, 0)], color.stroke_width(2))
                        + PathElement::new(vec![(9, 0), (14, 0)], color.stroke_width(2))
                        + PathElement::new(vec![(18, 0), (20, 0)], color.stroke_width(2))
                });
        } else {
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(&c.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
    }
    if let Some(f) = &fig.frontier {
        let pts: Vec<(f64, f64)> = f.iter().map(|p| (pf(p.0), p.1)).collect();
        chart
            .draw_series(LineSeries::new(pts, BLACK.stroke_width(3)))
            .map_err(plot_err)?
            .label("frontier")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3)));
    }
    if let Some((label, pts)) = &fig.reference {
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .map(|p| (pf(p.0), p.1))
            .filter(|p| in_x(p.0) && p.1 >= y0 && p.1 <= y1)
            .collect();
        let grey = RGBColor(110, 110, 110);
        chart
            .draw_series(DashedLineSeries::new(pts, 10, 6, grey.stroke_width(2)))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (8, 0)], grey.stroke_width(2))
                    + PathElement::new(vec![(13, 0), (20, 0)], grey.stroke_width(2))
            });
    }
    if let Some((label, pts)) = &fig.fit {
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .map(|p| (pf(p.0), p.1))
            .filter(|p| in_x(p.0) && p.1 >= y0 && p.1 <= y1)
            .collect();
        chart
            .draw_series(LineSeries::new(pts, RED.stroke_width(2)))
            .map_err(plot_err)?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn draw_residuals<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    points: &[(f64, f64)],
) -> candle_core::Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.0 > 0.0 && p.1.is_finite())
        .map(|p| (p.0 / PF_DAY, p.1))
        .collect();
    let (x0, x1) = bounds(pts.iter().map(|p| p.0))
        .ok_or_else(|| Error::Plot(format!("{title}: nothing to draw")))?;
    let (x0, x1) = pad_log(x0, x1, 0.03);
    let m = pts.iter().map(|p| p.1.abs()).fold(1e-4, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0..x1).log_scale().with_key_points(log_ticks(x0, x1)),
            -m..m,
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("compute C (PF-days)")
        .y_desc("ln L − ln L̂")
        .x_label_formatter(&|v| fmt_tick(*v))
        .y_label_formatter(&|v| format!("{v:.3}"))
        .label_style(("sans-serif", 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            vec![(x0, 0.0), (x1, 0.0)],
            BLACK.mix(0.6).stroke_width(1),
        ))
        .map_err(plot_err)?;
    chart
        .draw_series(pts.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The figure sizes in pixels.
pub(crate) const FIGURE_SIZE: (u32, u32) = (900, 620);

fn out_paths(stem: &Path) -> candle_core::Result<(PathBuf, PathBuf)> {
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok((stem.with_extension("svg"), stem.with_extension("png")))
}

/// Draw a loss-against-compute figure to `<stem>.svg` and `<stem>.png`; returns both paths.
pub fn loss_vs_compute(
    fig: &LossComputeFigure,
    stem: impl AsRef<Path>,
) -> candle_core::Result<(PathBuf, PathBuf)> {
    ensure_font()?;
    let (svg, png) = out_paths(stem.as_ref())?;
    {
        let root = SVGBackend::new(&svg, FIGURE_SIZE).into_drawing_area();
        draw_loss_compute(&root, fig)?;
    }
    {
        let root = BitMapBackend::new(&png, FIGURE_SIZE).into_drawing_area();
        draw_loss_compute(&root, fig)?;
    }
    Ok((svg, png))
}

/// Draw residuals `(C in FLOPs, ln L − ln L̂)` to `<stem>.svg` and `<stem>.png`; returns both paths.
pub fn residuals(
    title: &str,
    points: &[(f64, f64)],
    stem: impl AsRef<Path>,
) -> candle_core::Result<(PathBuf, PathBuf)> {
    ensure_font()?;
    let (svg, png) = out_paths(stem.as_ref())?;
    {
        let root = SVGBackend::new(&svg, FIGURE_SIZE).into_drawing_area();
        draw_residuals(&root, title, points)?;
    }
    {
        let root = BitMapBackend::new(&png, FIGURE_SIZE).into_drawing_area();
        draw_residuals(&root, title, points)?;
    }
    Ok((svg, png))
}
