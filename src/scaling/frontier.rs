//! The compute frontier: the lower envelope of all learning curves, loss against compute.
//!
//! On a grid of `n` compute values spaced evenly in `log C` between the smallest and the largest compute of the runs,
//! each run's curve is interpolated linearly in `(log C, log L)` between its two neighbouring points (no
//! extrapolation: a run only counts inside its own compute range), and the frontier keeps the lowest loss and which
//! run reached it. Grid points no run covers are left out.
//!
//! ```
//! use candle_structured::scaling::{frontier::frontier, runs::{Family, Run}};
//! let a = Run::from_points("a", Family::Baseline, Some(1e3), [(1.0, 4.0), (100.0, 3.0)]);
//! let b = Run::from_points("b", Family::Baseline, Some(1e4), [(10.0, 5.0), (100.0, 2.0)]);
//! let f = frontier(&[a, b], 3)?; // grid C = 1, 10, 100
//! assert_eq!(f.points.len(), 3);
//! assert_eq!(f.points[2].loss, 2.0); // b wins at C = 100
//! assert_eq!(f.points[2].run, 1);
//! # Ok::<(), candle_core::Error>(())
//! ```

use super::runs::Run;
use crate::error::Error;

/// One point of the frontier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrontierPoint {
    /// Compute (FLOPs, or whatever unit the runs use).
    pub compute: f64,
    /// Lowest loss of any run at this compute.
    pub loss: f64,
    /// Index (into the runs given) of the run on the frontier here.
    pub run: usize,
}

/// The lower envelope of a set of learning curves on a log-spaced grid.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frontier {
    /// Points in increasing compute.
    pub points: Vec<FrontierPoint>,
}

impl Frontier {
    /// Compute values of the points.
    pub fn compute(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.compute).collect()
    }

    /// Loss values of the points.
    pub fn loss(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.loss).collect()
    }

    /// Only the points with `lo ≤ C ≤ hi`.
    pub fn restrict(&self, lo: f64, hi: f64) -> Frontier {
        Frontier {
            points: self
                .points
                .iter()
                .copied()
                .filter(|p| p.compute >= lo && p.compute <= hi)
                .collect(),
        }
    }

    /// The frontier's loss at compute `c`, interpolated in log-log between grid points (`None` outside).
    pub fn loss_at(&self, c: f64) -> Option<f64> {
        let xs: Vec<(f64, f64)> = self.points.iter().map(|p| (p.compute, p.loss)).collect();
        interp_loglog(&xs, c)
    }
}

/// Linear interpolation of `ln y` in `ln x` on sorted `(x, y)` points; `None` outside `[x_0, x_last]` (with a
/// relative tolerance of 1e-9 at the ends).
pub fn interp_loglog(xy: &[(f64, f64)], x: f64) -> Option<f64> {
    if xy.is_empty() || x.is_nan() || x <= 0.0 {
        return None;
    }
    let tol = 1e-9;
    let (x0, y0) = xy[0];
    let (xn, yn) = xy[xy.len() - 1];
    if x < x0 * (1.0 - tol) || x > xn * (1.0 + tol) {
        return None;
    }
    if x <= x0 {
        return Some(y0);
    }
    if x >= xn {
        return Some(yn);
    }
    // First index with x_i >= x.
    let i = xy.partition_point(|p| p.0 < x);
    let (xa, ya) = xy[i - 1];
    let (xb, yb) = xy[i];
    // On a data point up to rounding (log grids rarely hit 10.0 exactly): its own value.
    if (x - xb).abs() <= 1e-12 * xb {
        return Some(yb);
    }
    if (x - xa).abs() <= 1e-12 * xa {
        return Some(ya);
    }
    if xb <= xa {
        return Some(ya.min(yb));
    }
    let t = (x.ln() - xa.ln()) / (xb.ln() - xa.ln());
    Some((ya.ln() * (1.0 - t) + yb.ln() * t).exp())
}

/// `n` values evenly spaced in log between `lo` and `hi` (inclusive; `n = 1` gives `lo`).
pub fn log_grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![lo];
    }
    let (a, b) = (lo.ln(), hi.ln());
    (0..n)
        .map(|i| {
            if i == n - 1 {
                hi
            } else if i == 0 {
                lo
            } else {
                (a + (b - a) * i as f64 / (n - 1) as f64).exp()
            }
        })
        .collect()
}

/// The lower envelope of `runs` on `n_grid ≥ 2` log-spaced compute values (see the [module docs](self)).
/// Points with non-positive or non-finite compute or loss are ignored.
pub fn frontier(runs: &[Run], n_grid: usize) -> candle_core::Result<Frontier> {
    if n_grid < 2 {
        return Err(Error::Fit(format!("frontier: n_grid = {n_grid}, need at least 2")).into());
    }
    let curves: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            let mut v: Vec<(f64, f64)> = r.valid_points().map(|p| (p.compute, p.loss)).collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        })
        .collect();
    let lo = curves
        .iter()
        .filter_map(|c| c.first().map(|p| p.0))
        .fold(f64::INFINITY, f64::min);
    let hi = curves
        .iter()
        .filter_map(|c| c.last().map(|p| p.0))
        .fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return Err(Error::Fit(
            "frontier: no run has a point with positive compute and loss".into(),
        )
        .into());
    }
    let grid = if hi > lo {
        log_grid(lo, hi, n_grid)
    } else {
        vec![lo]
    };
    let mut points = Vec::with_capacity(grid.len());
    for c in grid {
        let mut best: Option<(f64, usize)> = None;
        for (i, curve) in curves.iter().enumerate() {
            if let Some(l) = interp_loglog(curve, c) {
                if best.is_none_or(|(b, _)| l < b) {
                    best = Some((l, i));
                }
            }
        }
        if let Some((loss, run)) = best {
            points.push(FrontierPoint {
                compute: c,
                loss,
                run,
            });
        }
    }
    Ok(Frontier { points })
}

impl Frontier {
    /// The frontier made non-increasing in compute: at each point, the lowest loss reached with at most this
    /// compute (credited to the run that reached it). A learning curve with a decaying learning rate is only at
    /// its best at the end of its schedule; past the end of a smaller run, the envelope of the curves would climb
    /// onto a larger run's middle although the smaller run's final loss was already paid for. Both are upper bounds
    /// of the loss that compute can reach; this one is the tighter.
    pub fn monotone(mut self) -> Frontier {
        let mut best: Option<FrontierPoint> = None;
        for p in &mut self.points {
            match best {
                Some(b) if b.loss <= p.loss => {
                    p.loss = b.loss;
                    p.run = b.run;
                }
                _ => best = Some(*p),
            }
        }
        self
    }
}

/// Drop the first part of each learning curve: keep the points with `C ≥ fraction · C_final` (early training,
/// before a power law describes it). `fraction = 0` keeps everything.
pub fn trim_runs(runs: &[Run], fraction: f64) -> Vec<Run> {
    runs.iter()
        .map(|r| {
            let mut r = r.clone();
            if let Some(last) = r.last().map(|p| p.compute) {
                r.points.retain(|p| p.compute >= fraction * last);
            }
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run ends low, a larger one passes through higher values before going below: the monotone frontier
    /// keeps the small run's end until the larger run is lower, the raw envelope climbs.
    #[test]
    fn monotone_keeps_the_best_loss_so_far() {
        let pt = |compute, loss, run| FrontierPoint { compute, loss, run };
        let raw = Frontier {
            points: vec![
                pt(1.0, 5.0, 0),
                pt(2.0, 4.0, 0),
                pt(3.0, 4.5, 1),
                pt(4.0, 4.2, 1),
                pt(5.0, 3.9, 1),
            ],
        };
        let m = raw.clone().monotone();
        let got: Vec<(f64, usize)> = m.points.iter().map(|p| (p.loss, p.run)).collect();
        assert_eq!(got, vec![(5.0, 0), (4.0, 0), (4.0, 0), (4.0, 0), (3.9, 1)]);
        assert_eq!(m.compute(), raw.compute());
    }
}
