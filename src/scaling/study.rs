//! The study, end to end: a family's compute law with intervals, the law in `N`, Chinchilla's `L(N, D)`, and the
//! comparison of a family against the baselines that answers the paper's question.

use super::bootstrap::{bootstrap_runs, Bootstrap, BootstrapOptions, Interval};
use super::fit::{
    fit_chinchilla, fit_offset_power_law, fit_power_law, Chinchilla, LbfgsOptions, Method,
    OffsetPowerLaw, PowerLaw,
};
use super::frontier::{frontier, interp_loglog, log_grid, trim_runs, Frontier};
use super::runs::Run;
use crate::error::Error;

/// Settings shared by the study's fits.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyOptions {
    /// Points of the log-spaced frontier grid.
    pub n_grid: usize,
    /// Drop each run's points below `trim · C_final` before taking the frontier (early training).
    pub trim: f64,
    /// Huber threshold of the robust `L(C)` fit (on `ln L`).
    pub huber_delta: f64,
    /// How many final points are averaged for a run's final loss.
    pub final_points: usize,
    /// Bootstrap settings.
    pub bootstrap: BootstrapOptions,
    /// Make the frontier non-increasing ([`Frontier::monotone`]: the best loss reached with at most `C`), as runs
    /// with a schedule decaying to their own end need; `false` keeps the raw lower envelope of the curves.
    pub monotone: bool,
}

impl Default for StudyOptions {
    /// 40 grid points, trim 0.1, Huber δ = 10⁻³, final loss over the last 2 points, 500 resamples, monotone
    /// frontier.
    fn default() -> Self {
        StudyOptions {
            n_grid: 40,
            trim: 0.1,
            huber_delta: 1e-3,
            final_points: 2,
            bootstrap: BootstrapOptions::default(),
            monotone: true,
        }
    }
}

/// `L(C) = (C_c / C)^α` fitted on a frontier, with its bootstrap.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeLaw {
    /// The frontier the fits use (after trimming).
    pub frontier: Frontier,
    /// Least-squares fit in log-log.
    pub ls: PowerLaw,
    /// Huber fit in log-log.
    pub huber: PowerLaw,
    /// `E + (C_c/C)^α` (least squares on `ln L`), when it converged.
    pub offset: Option<OffsetPowerLaw>,
    /// Bootstrap of `[α_ls, ln C_c,ls, α_huber, ln C_c,huber]`.
    pub boot: Bootstrap,
}

impl ComputeLaw {
    /// Interval of the least-squares α.
    pub fn alpha(&self) -> Interval {
        self.boot.interval(0)
    }

    /// Interval of the Huber α.
    pub fn alpha_huber(&self) -> Interval {
        self.boot.interval(2)
    }

    /// Interval of the log-log slope `−α` (least squares), comparable to the paper's −0.041.
    pub fn slope(&self) -> Interval {
        self.alpha().map(|a| -a)
    }

    /// Interval of the least-squares law's loss at compute `c`.
    pub fn loss_at(&self, c: f64) -> Interval {
        self.boot.interval_of(|p| {
            PowerLaw {
                alpha: p[0],
                log_scale: p[1],
            }
            .eval(c)
        })
    }

    /// A band `(C, lo, hi)` of the least-squares law on `n` log-spaced points of `[c_lo, c_hi]`.
    pub fn band(&self, c_lo: f64, c_hi: f64, n: usize) -> Vec<(f64, f64, f64)> {
        log_grid(c_lo, c_hi, n)
            .into_iter()
            .map(|c| {
                let i = self.loss_at(c);
                (c, i.lo, i.hi)
            })
            .collect()
    }

    /// Residuals `ln L − ln L̂` of the frontier against the least-squares law, with compute.
    pub fn residuals(&self) -> Vec<(f64, f64)> {
        self.frontier
            .points
            .iter()
            .map(|p| (p.compute, p.loss.ln() - self.ls.eval(p.compute).ln()))
            .collect()
    }
}

fn frontier_of(runs: &[Run], opts: &StudyOptions) -> candle_core::Result<Frontier> {
    let f = frontier(&trim_runs(runs, opts.trim), opts.n_grid)?;
    Ok(if opts.monotone { f.monotone() } else { f })
}

fn fit_pair(f: &Frontier, delta: f64) -> candle_core::Result<(PowerLaw, PowerLaw)> {
    let (x, y) = (f.compute(), f.loss());
    Ok((
        fit_power_law(&x, &y, Method::LeastSquares)?,
        fit_power_law(&x, &y, Method::Huber { delta })?,
    ))
}

/// Fit `L(C)` on the frontier of `runs` (compute as the runs hold it: apply a cost model first with
/// [`Run::with_cost`]), least squares and Huber, plus `E + (C_c/C)^α`, with intervals from resampling runs.
pub fn compute_law(runs: &[Run], opts: &StudyOptions) -> candle_core::Result<ComputeLaw> {
    let f = frontier_of(runs, opts)?;
    let (ls, huber) = fit_pair(&f, opts.huber_delta)?;
    let offset = fit_offset_power_law(
        &f.compute(),
        &f.loss(),
        &LbfgsOptions {
            method: Method::LeastSquares,
            ..Default::default()
        },
    )
    .ok();
    let boot = bootstrap_runs(runs, &opts.bootstrap, |rs| {
        let f = frontier_of(rs, opts)?;
        let (a, b) = fit_pair(&f, opts.huber_delta)?;
        Ok(vec![a.alpha, a.log_scale, b.alpha, b.log_scale])
    })?;
    Ok(ComputeLaw {
        frontier: f,
        ls,
        huber,
        offset,
        boot,
    })
}

/// `(N, final loss)` of the runs that know their `N`.
pub(crate) fn final_losses(runs: &[Run], final_points: usize) -> Vec<(f64, f64)> {
    runs.iter()
        .filter_map(|r| Some((r.n_trainable?, r.final_loss(final_points)?)))
        .filter(|(n, l)| *n > 0.0 && *l > 0.0)
        .collect()
}

/// `L(N) = (N_c / N)^α_N` fitted on final losses, with its bootstrap of `[α_N, ln N_c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamsLaw {
    /// Least-squares fit.
    pub law: PowerLaw,
    /// Bootstrap of `[α_N, ln N_c]`.
    pub boot: Bootstrap,
    /// The `(N, L)` points used.
    pub points: Vec<(f64, f64)>,
}

impl ParamsLaw {
    /// Interval of the law's loss at `n`.
    pub fn loss_at(&self, n: f64) -> Interval {
        self.boot.interval_of(|p| {
            PowerLaw {
                alpha: p[0],
                log_scale: p[1],
            }
            .eval(n)
        })
    }
}

fn fit_params_law(runs: &[Run], final_points: usize) -> candle_core::Result<PowerLaw> {
    let pts = final_losses(runs, final_points);
    let (x, y): (Vec<f64>, Vec<f64>) = pts.into_iter().unzip();
    fit_power_law(&x, &y, Method::LeastSquares)
}

/// Fit `L(N)` on the runs' final losses (runs trained on the same token budget, or to convergence as in Kaplan et
/// al.; at least 2 distinct `N`).
pub fn params_law(runs: &[Run], opts: &StudyOptions) -> candle_core::Result<ParamsLaw> {
    let law = fit_params_law(runs, opts.final_points)?;
    let boot = bootstrap_runs(runs, &opts.bootstrap, |rs| {
        let l = fit_params_law(rs, opts.final_points)?;
        Ok(vec![l.alpha, l.log_scale])
    })?;
    Ok(ParamsLaw {
        law,
        boot,
        points: final_losses(runs, opts.final_points),
    })
}

/// `(N, D, L)` triples for Chinchilla's fit: every logged point with tokens of every run with `N`, after trimming,
/// thinned to at most `per_run` points per run (evenly in log tokens).
pub fn nd_points(runs: &[Run], trim: f64, per_run: usize) -> Vec<(f64, f64, f64)> {
    let mut out = Vec::new();
    for r in trim_runs(runs, trim) {
        let Some(n) = r.n_trainable else { continue };
        let pts: Vec<(f64, f64)> = r
            .valid_points()
            .filter_map(|p| p.tokens.filter(|t| *t > 0.0).map(|t| (t, p.loss)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let k = per_run.max(1).min(pts.len());
        let mut last = usize::MAX;
        for j in 0..k {
            let i = if k == 1 {
                pts.len() - 1
            } else {
                ((pts.len() - 1) as f64 * j as f64 / (k - 1) as f64).round() as usize
            };
            if i != last {
                out.push((n, pts[i].0, pts[i].1));
                last = i;
            }
        }
    }
    out
}

/// Chinchilla's fit with its bootstrap of `[E, A, B, α, β]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChinchillaLaw {
    /// The fit on all runs.
    pub law: Chinchilla,
    /// Bootstrap of `[E, A, B, α, β]`.
    pub boot: Bootstrap,
}

/// Fit `L(N, D) = E + A/N^α + B/D^β` on [`nd_points`] (`per_run` points per run), with intervals from resampling
/// runs (each resample restarts from the full-data optimum and the 4 best grid starts).
pub fn chinchilla_law(
    runs: &[Run],
    opts: &StudyOptions,
    per_run: usize,
) -> candle_core::Result<ChinchillaLaw> {
    let fit = |rs: &[Run], lb: &LbfgsOptions| {
        let pts = nd_points(rs, opts.trim, per_run);
        let n: Vec<f64> = pts.iter().map(|p| p.0).collect();
        let d: Vec<f64> = pts.iter().map(|p| p.1).collect();
        let l: Vec<f64> = pts.iter().map(|p| p.2).collect();
        fit_chinchilla(&n, &d, &l, lb)
    };
    let law = fit(runs, &LbfgsOptions::default())?;
    let lb = LbfgsOptions {
        keep_starts: 4,
        extra_starts: vec![law.to_vec()],
        ..Default::default()
    };
    let boot = bootstrap_runs(runs, &opts.bootstrap, |rs| Ok(fit(rs, &lb)?.to_vec()))?;
    Ok(ChinchillaLaw { law, boot })
}

// ---- the paper's question ------------------------------------------------------------------------------------------

/// How a family compares with the baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Lower loss, the whole interval below zero.
    Better,
    /// Higher loss, the whole interval above zero.
    Worse,
    /// The interval contains zero.
    NoSignificantDifference,
    /// Not enough overlap to compare.
    NotComparable,
}

impl Verdict {
    fn from_interval(i: &Interval) -> Verdict {
        if !(i.lo.is_finite() && i.hi.is_finite()) {
            Verdict::NotComparable
        } else if i.hi < 0.0 {
            Verdict::Better
        } else if i.lo > 0.0 {
            Verdict::Worse
        } else {
            Verdict::NoSignificantDifference
        }
    }

    /// A phrase for the report.
    pub fn phrase(&self) -> &'static str {
        match self {
            Verdict::Better => "beats the baselines",
            Verdict::Worse => "is worse than the baselines",
            Verdict::NoSignificantDifference => "is indistinguishable from the baselines",
            Verdict::NotComparable => "cannot be compared (no overlap)",
        }
    }
}

/// A family against the baselines, as mean log-loss differences (negative: the family is better).
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Equal compute: mean over the family's frontier points inside the baselines' frontier range of
    /// `ln L_family(C) − ln L̂_baseline(C)` (the baselines' least-squares law), with its bootstrap interval.
    pub equal_compute: Interval,
    /// Verdict at equal compute.
    pub equal_compute_verdict: Verdict,
    /// Equal trainable `N`: mean over the family's runs of `ln L_final − ln L̂_baseline(N)` (the baselines' `L(N)`
    /// law), with its interval. Only meaningful when the runs saw the same number of tokens.
    pub equal_n: Interval,
    /// Verdict at equal trainable N.
    pub equal_n_verdict: Verdict,
    /// Twins: for each family run, the baseline of the closest `N` (within ×1.3), compared at the largest compute
    /// both reached: `(family run, baseline run, C, ln L_family − ln L_baseline)`.
    pub twins: Vec<(String, String, f64, f64)>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn equal_compute_gap(
    family: &[Run],
    base: &[Run],
    opts: &StudyOptions,
) -> candle_core::Result<f64> {
    let fb = frontier_of(base, opts)?;
    let law = fit_power_law(&fb.compute(), &fb.loss(), Method::LeastSquares)?;
    let (lo, hi) = match (fb.points.first(), fb.points.last()) {
        (Some(a), Some(b)) => (a.compute, b.compute),
        _ => return Err(Error::Fit("empty baseline frontier".into()).into()),
    };
    let ff = frontier_of(family, opts)?;
    let gaps: Vec<f64> = ff
        .points
        .iter()
        .filter(|p| p.compute >= lo && p.compute <= hi)
        .map(|p| p.loss.ln() - law.eval(p.compute).ln())
        .collect();
    mean(&gaps).ok_or_else(|| {
        Error::Fit("the family's frontier does not overlap the baselines' compute range".into())
            .into()
    })
}

fn equal_n_gap(family: &[Run], base: &[Run], final_points: usize) -> candle_core::Result<f64> {
    let law = fit_params_law(base, final_points)?;
    let gaps: Vec<f64> = final_losses(family, final_points)
        .into_iter()
        .map(|(n, l)| l.ln() - law.eval(n).ln())
        .collect();
    mean(&gaps).ok_or_else(|| Error::Fit("no family run with a known N".into()).into())
}

/// A gap statistic of (family runs, baseline runs).
type GapFn<'a> = dyn Fn(&[Run], &[Run]) -> candle_core::Result<f64> + Sync + 'a;

/// Compare `family` with `baselines` (both already priced by the same cost model), see [`Comparison`].
pub fn compare_with_baselines(
    family: &[Run],
    baselines: &[Run],
    opts: &StudyOptions,
) -> Comparison {
    let both: Vec<Run> = baselines.iter().chain(family.iter()).cloned().collect();
    let split = |rs: &[Run]| -> (Vec<Run>, Vec<Run>) {
        let fam0 = family.first().map(|r| r.family.clone());
        rs.iter()
            .cloned()
            .partition(|r| Some(&r.family) != fam0.as_ref())
    };
    let interval = |g: &GapFn| -> Interval {
        match bootstrap_runs(&both, &opts.bootstrap, |rs| {
            let (b, f) = split(rs);
            Ok(vec![g(&f, &b)?])
        }) {
            Ok(bs) => bs.interval(0),
            Err(_) => Interval {
                estimate: f64::NAN,
                lo: f64::NAN,
                hi: f64::NAN,
            },
        }
    };
    let equal_compute = interval(&|f, b| equal_compute_gap(f, b, opts));
    let equal_n = interval(&|f, b| equal_n_gap(f, b, opts.final_points));
    let mut twins = Vec::new();
    for r in family {
        let Some(n) = r.n_trainable else { continue };
        let twin = baselines
            .iter()
            .filter_map(|b| b.n_trainable.map(|nb| ((nb / n).ln().abs(), b)))
            .filter(|(d, _)| *d <= 1.3f64.ln())
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let Some((_, b)) = twin else { continue };
        let (Some(cr), Some(cb)) = (r.last(), b.last()) else {
            continue;
        };
        let c = cr.compute.min(cb.compute);
        let curve = |x: &Run| -> Vec<(f64, f64)> {
            x.valid_points().map(|p| (p.compute, p.loss)).collect()
        };
        if let (Some(lr), Some(lb)) = (interp_loglog(&curve(r), c), interp_loglog(&curve(b), c)) {
            twins.push((r.name.clone(), b.name.clone(), c, lr.ln() - lb.ln()));
        }
    }
    Comparison {
        equal_compute_verdict: Verdict::from_interval(&equal_compute),
        equal_compute,
        equal_n_verdict: Verdict::from_interval(&equal_n),
        equal_n,
        twins,
    }
}
