//! Bootstrap intervals that resample *runs*, not points.
//!
//! The points of one learning curve are strongly correlated (same seed, same data order, same model), so
//! resampling them would understate the uncertainty. [`bootstrap_runs`] draws, for each resample, as many runs as
//! there are, with replacement, **within each [`Family`](super::runs::Family)** (so a resample of a baseline + doped
//! study still holds both), refits, and reports percentile intervals. Each resample `i` uses its own
//! `StdRng::seed_from_u64(seed ⊕ i)`, so results do not depend on the number of threads (resamples run on rayon).
//! Resamples whose fit fails (e.g. too few distinct runs) are dropped and counted.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::runs::Run;
use crate::error::Error;

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapOptions {
    /// Number of resamples (e.g. 1000 for a report, 100–200 in tests).
    pub resamples: usize,
    /// Seed of the resampling RNG.
    pub seed: u64,
    /// Coverage of the intervals (0.95).
    pub level: f64,
}

impl Default for BootstrapOptions {
    /// 500 resamples, seed 0, 95 %.
    fn default() -> Self {
        BootstrapOptions {
            resamples: 500,
            seed: 0,
            level: 0.95,
        }
    }
}

/// A point estimate with a percentile interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Estimate on the full data.
    pub estimate: f64,
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
}

impl Interval {
    /// Whether `x` lies in `[lo, hi]`.
    pub fn contains(&self, x: f64) -> bool {
        x >= self.lo && x <= self.hi
    }

    /// `"0.050 [0.041, 0.060]"` with `prec` decimals.
    pub fn fmt(&self, prec: usize) -> String {
        format!(
            "{:.p$} [{:.p$}, {:.p$}]",
            self.estimate,
            self.lo,
            self.hi,
            p = prec
        )
    }

    /// The interval of `f(x)` for a monotone `f` (bounds swapped if `f` decreases).
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Interval {
        let (a, b) = (f(self.lo), f(self.hi));
        Interval {
            estimate: f(self.estimate),
            lo: a.min(b),
            hi: a.max(b),
        }
    }
}

/// The estimate and the resampled values of a vector of parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// Parameters fitted on all runs.
    pub estimate: Vec<f64>,
    /// Parameters fitted on each successful resample.
    pub samples: Vec<Vec<f64>>,
    /// Resamples whose fit failed.
    pub failed: usize,
    /// Coverage level.
    pub level: f64,
}

/// The `q`-quantile (linear interpolation) of a sorted slice.
pub(crate) fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(v.len() - 1);
    let t = pos - i as f64;
    v[i] * (1.0 - t) + v[j] * t
}

impl Bootstrap {
    /// Percentile interval of parameter `i`.
    pub fn interval(&self, i: usize) -> Interval {
        self.interval_of(|p| p[i])
    }

    /// Percentile interval of any scalar function of the parameters (e.g. a prediction at one point).
    pub fn interval_of(&self, f: impl Fn(&[f64]) -> f64) -> Interval {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .map(|p| f(p))
            .filter(|x| x.is_finite())
            .collect();
        v.sort_by(f64::total_cmp);
        let a = (1.0 - self.level) / 2.0;
        Interval {
            estimate: f(&self.estimate),
            lo: quantile_sorted(&v, a),
            hi: quantile_sorted(&v, 1.0 - a),
        }
    }
}

/// One resample of `runs`: within each family, as many runs as it has, drawn with replacement.
pub(crate) fn resample_runs(runs: &[Run], rng: &mut impl Rng) -> Vec<Run> {
    let mut fams: Vec<&super::runs::Family> = runs.iter().map(|r| &r.family).collect();
    fams.sort();
    fams.dedup();
    let mut out = Vec::with_capacity(runs.len());
    for fam in fams {
        let idx: Vec<usize> = (0..runs.len())
            .filter(|&i| &runs[i].family == fam)
            .collect();
        for _ in 0..idx.len() {
            out.push(runs[idx[rng.random_range(0..idx.len())]].clone());
        }
    }
    out
}

/// Fit `fit` on all runs, then on `opts.resamples` resamples of the runs (see the [module docs](self)).
/// Errors if the full fit fails, or if every resample fails. With few runs many resamples fail (a resample of
/// one distinct run cannot fit a slope): the intervals are then conditional on the resamples that could be fitted,
/// and [`Bootstrap::failed`] says how many could not.
pub fn bootstrap_runs<F>(
    runs: &[Run],
    opts: &BootstrapOptions,
    fit: F,
) -> candle_core::Result<Bootstrap>
where
    F: Fn(&[Run]) -> candle_core::Result<Vec<f64>> + Sync,
{
    if !(opts.level > 0.0 && opts.level < 1.0) {
        return Err(Error::Fit(format!("bootstrap: level {} not in (0, 1)", opts.level)).into());
    }
    let estimate = fit(runs)?;
    let results: Vec<Option<Vec<f64>>> = (0..opts.resamples)
        .into_par_iter()
        .map(|i| {
            let mut rng =
                StdRng::seed_from_u64(opts.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let sample = resample_runs(runs, &mut rng);
            fit(&sample)
                .ok()
                .filter(|p| p.iter().all(|v| v.is_finite()))
        })
        .collect();
    let failed = results.iter().filter(|r| r.is_none()).count();
    let samples: Vec<Vec<f64>> = results.into_iter().flatten().collect();
    if opts.resamples > 0 && samples.is_empty() {
        return Err(Error::Fit(format!(
            "bootstrap: all {} resamples failed to fit (too few runs?)",
            opts.resamples
        ))
        .into());
    }
    Ok(Bootstrap {
        estimate,
        samples,
        failed,
        level: opts.level,
    })
}
