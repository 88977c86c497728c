//! Extrapolation, as in "Scaling Laws Under the Microscope": fit on the smaller models, predict a larger held-out
//! one, and check the prediction against what it actually reached.

use super::bootstrap::Interval;
use super::study::{compute_law, params_law, StudyOptions};
use super::runs::Run;
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
    /// `L(N)` fitted on the other runs, at the held-out N, with its interval.
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
pub fn predict_largest(runs: &[Run], holdout: usize, opts: &StudyOptions) -> candle_core::Result<Vec<Prediction>> {
    let mut with_n: Vec<&Run> = runs.iter().filter(|r| r.n_trainable.is_some()).collect();
    with_n.sort_by(|a, b| a.n_trainable.unwrap_or(0.0).total_cmp(&b.n_trainable.unwrap_or(0.0)));
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
    let pl = params_law(&train, opts)?;
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
            from_params: pl.loss_at(n),
            from_compute: cl.as_ref().map(|c| c.loss_at(last.compute)),
            fitted_on: train.iter().map(|r| r.name.clone()).collect(),
        });
    }
    Ok(out)
}
