//! Extrapolation, as in "Scaling Laws Under the Microscope": fit on the smaller models, predict a larger held-out
//! one, and check the prediction against what it actually reached.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::bootstrap::{quantile_sorted, resample_runs, Interval};
use super::fit::{fit_power_law, Method};
use super::runs::Run;
use super::study::{compute_law, final_losses, StudyOptions};
use crate::error::Error;

/// A held-out run's loss against its prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The held-out run.
    pub run: String,
    /// Its trainable N.
    pub n_trainable: f64,
    /// Its final compute.
    pub compute: f64,
    /// Its final loss (mean of the last `final_points`).
    pub actual: f64,
    /// `L(N)` fitted on the other runs, at the held-out N, with a prediction interval: each bootstrap resample of
    /// the fitted runs refits the law and adds one of its own log residuals, so the interval covers both the
    /// uncertainty of the law and the scatter of single runs about it.
    pub from_params: Interval,
    /// `L(C)` fitted on the other runs' frontier, at the held-out run's final compute, with its interval (the
    /// frontier is the best loss at that compute, so a run larger than compute-optimal lies above it).
    pub from_compute: Option<Interval>,
    /// Names of the runs fitted.
    pub fitted_on: Vec<String>,
}

impl Prediction {
    /// Relative error of the `L(N)` prediction, `(predicted − actual)/actual`.
    pub fn relative_error(&self) -> f64 {
        (self.from_params.estimate - self.actual) / self.actual
    }
}

/// Hold out the `holdout` largest-`N` runs: fit `L(N)` and `L(C)` on every run with a smaller `N`, and predict each
/// held-out run's final loss with a bootstrap interval. Needs at least 2 fitted runs of distinct `N`.
pub fn predict_largest(
    runs: &[Run],
    holdout: usize,
    opts: &StudyOptions,
) -> candle_core::Result<Vec<Prediction>> {
    let mut with_n: Vec<&Run> = runs.iter().filter(|r| r.n_trainable.is_some()).collect();
    with_n.sort_by(|a, b| {
        a.n_trainable
            .unwrap_or(0.0)
            .total_cmp(&b.n_trainable.unwrap_or(0.0))
    });
    if holdout == 0 || with_n.len() < holdout + 2 {
        return Err(Error::Fit(format!(
            "predict: {} runs with a known N, need at least {} to hold out {holdout}",
            with_n.len(),
            holdout + 2
        ))
        .into());
    }
    let held = &with_n[with_n.len() - holdout..];
    let n_min = held[0].n_trainable.unwrap_or(0.0);
    let train: Vec<Run> = with_n
        .iter()
        .filter(|r| r.n_trainable.unwrap_or(0.0) < n_min)
        .map(|r| (*r).clone())
        .collect();
    let fit = |rs: &[Run]| -> candle_core::Result<(super::fit::PowerLaw, Vec<f64>)> {
        let pts = final_losses(rs, opts.final_points);
        let (x, y): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
        let law = fit_power_law(&x, &y, Method::LeastSquares)?;
        let res = pts
            .iter()
            .map(|(n, l)| l.ln() - law.eval(*n).ln())
            .collect();
        Ok((law, res))
    };
    let (law, res_full) = fit(&train)?;
    // Residuals of the full fit, with the degrees-of-freedom correction √(m/(m−2)) of a 2-parameter fit.
    let m = res_full.len() as f64;
    let inflate = if m > 2.0 { (m / (m - 2.0)).sqrt() } else { 1.0 };
    // Bootstrap over runs for the law, plus one residual per resample for the scatter of a single run.
    let mut draws: Vec<(super::fit::PowerLaw, f64)> = Vec::new();
    for i in 0..opts.bootstrap.resamples {
        let mut rng = StdRng::seed_from_u64(
            opts.bootstrap.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let sample = resample_runs(&train, &mut rng);
        if let Ok((l, _)) = fit(&sample) {
            if l.alpha.is_finite() && !res_full.is_empty() {
                draws.push((l, res_full[rng.random_range(0..res_full.len())] * inflate));
            }
        }
    }
    let a = (1.0 - opts.bootstrap.level) / 2.0;
    let predict_n = |n: f64| -> Interval {
        let mut v: Vec<f64> = draws
            .iter()
            .map(|(l, e)| l.eval(n) * e.exp())
            .filter(|x| x.is_finite())
            .collect();
        v.sort_by(f64::total_cmp);
        Interval {
            estimate: law.eval(n),
            lo: quantile_sorted(&v, a),
            hi: quantile_sorted(&v, 1.0 - a),
        }
    };
    let cl = compute_law(&train, opts).ok();
    let mut out = Vec::new();
    for r in held {
        let n = r.n_trainable.unwrap_or(0.0);
        let (Some(actual), Some(last)) = (r.final_loss(opts.final_points), r.last()) else {
            continue;
        };
        out.push(Prediction {
            run: r.name.clone(),
            n_trainable: n,
            compute: last.compute,
            actual,
            from_params: predict_n(n),
            from_compute: cl.as_ref().map(|c| c.loss_at(last.compute)),
            fitted_on: train.iter().map(|r| r.name.clone()).collect(),
        });
    }
    Ok(out)
}
