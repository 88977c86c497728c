//! The study as plain data: every fit, verdict and prediction the report prints, computed once by [`analyze`] and
//! rendered by [`super::render`] (markdown) and, with feature `plot`, drawn by `figures`.
//!
//! Two kinds of input are analysed:
//!
//! * **learning curves** (run folders, or a CSV with a `compute` column): compute laws per family and cost model,
//!   the baselines' frontier with its `R²`, residuals and which run holds it where, `L(N)` of final losses,
//!   Chinchilla's `L(N, D)` on points of the curves, the held-out prediction of the largest baselines, verdicts;
//! * **a table**, one row per run (a CSV `run, params, tokens, loss`, every run a single point): no curve, so no
//!   frontier and no compute law; `L(N)` on each `N`'s rows of the largest token count, Chinchilla's approach 3 on
//!   every row, the prediction, and verdicts at equal trainable `N`.

use super::bootstrap::Interval;
use super::cost::{CostModel, FrozenCost};
use super::predict::{predict_largest, Prediction};
use super::report::ReportOptions;
use super::runs::{Family, Run};
use super::study::{
    chinchilla_law, compare_with_baselines, compute_law, params_law, ChinchillaLaw, Comparison,
    ComputeLaw, ParamsLaw, Verdict,
};
use crate::error::Error;

/// The first line of an error (candle appends a backtrace when `RUST_BACKTRACE` is set).
pub(crate) fn short(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// One family's fit under one cost model, and its comparison with the baselines.
#[derive(Debug, Clone)]
pub struct FamilyResult {
    /// Family.
    pub family: Family,
    /// Price of frozen parameters.
    pub cost: FrozenCost,
    /// The family's own compute law (None when it could not be fitted, e.g. a single run, or a table).
    pub law: Option<ComputeLaw>,
    /// The comparison (None for the baselines themselves).
    pub comparison: Option<Comparison>,
    /// Figure stem, when drawn.
    pub figure: Option<std::path::PathBuf>,
    /// Number of runs of the family.
    pub runs: usize,
    /// Whether the family has frozen parameters (then the cost model matters).
    pub frozen: bool,
}

/// One frontier point against the fitted law.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResidualRow {
    /// Compute (FLOPs).
    pub compute: f64,
    /// Frontier loss.
    pub loss: f64,
    /// The least-squares law's loss.
    pub fitted: f64,
    /// `ln loss − ln fitted`.
    pub residual: f64,
}

/// Where one baseline size (all its seeds together) holds the frontier.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierShare {
    /// The runs of this size (its seeds).
    pub runs: Vec<String>,
    /// Their trainable `N` (None: a run of unknown size, on its own).
    pub n_trainable: Option<f64>,
    /// Smallest and largest compute of the frontier grid points these runs hold (`None`: never on the frontier).
    pub range: Option<(f64, f64)>,
    /// How many grid points they hold.
    pub points: usize,
}

/// How well the baselines' frontier follows `L(C) = (C_c/C)^α`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierFit {
    /// `R²` of the least-squares fit in log-log space: `1 − Σ(ln L − ln L̂)² / Σ(ln L − mean ln L)²`.
    pub r2_loglog: f64,
    /// Compute span of the frontier, `log10(C_max / C_min)`.
    pub decades: f64,
    /// Every frontier point against the law.
    pub residuals: Vec<ResidualRow>,
    /// Per baseline size, in increasing `N` (runs of unknown `N` last, one each).
    pub shares: Vec<FrontierShare>,
}

impl FrontierFit {
    /// Root mean square of the log residuals.
    pub fn rms(&self) -> f64 {
        let n = self.residuals.len().max(1) as f64;
        (self
            .residuals
            .iter()
            .map(|r| r.residual.powi(2))
            .sum::<f64>()
            / n)
            .sqrt()
    }

    /// Every baseline size holds the frontier over some range of compute.
    pub fn every_run_on_frontier(&self) -> bool {
        self.shares.iter().all(|s| s.range.is_some())
    }

    /// The acceptance test of a power-law frontier: `R² ≥ 0.98` over at least 1.5 decades.
    pub fn is_power_law(&self) -> bool {
        self.r2_loglog >= 0.98 && self.decades >= 1.5
    }
}

/// The frontier fit's residuals, `R²`, span and shares, from a compute law fitted on `runs` (in their order).
pub fn frontier_fit(law: &ComputeLaw, runs: &[Run]) -> FrontierFit {
    let pts = &law.frontier.points;
    let residuals: Vec<ResidualRow> = pts
        .iter()
        .map(|p| {
            let fitted = law.ls.eval(p.compute);
            ResidualRow {
                compute: p.compute,
                loss: p.loss,
                fitted,
                residual: p.loss.ln() - fitted.ln(),
            }
        })
        .collect();
    let n = residuals.len().max(1) as f64;
    let mean = residuals.iter().map(|r| r.loss.ln()).sum::<f64>() / n;
    let ss_tot: f64 = residuals.iter().map(|r| (r.loss.ln() - mean).powi(2)).sum();
    let ss_res: f64 = residuals.iter().map(|r| r.residual.powi(2)).sum();
    let r2_loglog = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        f64::NAN
    };
    let decades = match (pts.first(), pts.last()) {
        (Some(a), Some(b)) => (b.compute / a.compute).log10(),
        _ => 0.0,
    };
    FrontierFit {
        r2_loglog,
        decades,
        residuals,
        shares: frontier_shares(law, runs),
    }
}

/// Group `runs` by trainable `N` and find the frontier points each size holds.
fn frontier_shares(law: &ComputeLaw, runs: &[Run]) -> Vec<FrontierShare> {
    let key = |k: usize| runs[k].n_trainable.unwrap_or(f64::INFINITY);
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&i, &j| key(i).total_cmp(&key(j)));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in order {
        let n = runs[i].n_trainable;
        match groups.last_mut() {
            Some(g) if n.is_some() && runs[g[0]].n_trainable == n => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let held: Vec<f64> = law
                .frontier
                .points
                .iter()
                .filter(|p| g.contains(&p.run))
                .map(|p| p.compute)
                .collect();
            FrontierShare {
                runs: g.iter().map(|&i| runs[i].name.clone()).collect(),
                n_trainable: runs[g[0]].n_trainable,
                range: held.first().zip(held.last()).map(|(a, b)| (*a, *b)),
                points: held.len(),
            }
        })
        .collect()
}

/// `L(N)` of the baselines' final losses, with its exponent's interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamsResult {
    /// The fit and its bootstrap.
    pub law: ParamsLaw,
    /// `α_N` in `L = (N_c/N)^α_N` (positive: larger models reach a lower loss), 95 % bootstrap over runs.
    pub alpha: Interval,
    /// Runs fitted.
    pub runs: usize,
    /// Distinct `N` fitted.
    pub distinct_n: usize,
}

impl ParamsResult {
    /// The interval of `α_N` lies entirely above or below 0.
    pub fn excludes_zero(&self) -> bool {
        self.alpha.lo > 0.0 || self.alpha.hi < 0.0
    }
}

/// Everything the report states, as data.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The runs analysed (as given).
    pub runs: Vec<Run>,
    /// A table of single-point runs (no learning curves): no frontier, no compute law.
    pub table: bool,
    /// The baselines, priced at frozen cost 2/3 (they have no frozen parameters).
    pub baselines: Vec<Run>,
    /// The baselines' compute law.
    pub base_law: Option<ComputeLaw>,
    /// The baselines' frontier against its law.
    pub frontier: Option<FrontierFit>,
    /// Per family and cost model.
    pub families: Vec<FamilyResult>,
    /// `L(N)` of the baselines (or why not).
    pub params: Result<ParamsResult, String>,
    /// Chinchilla's `L(N, D)` (None when not asked for).
    pub chinchilla: Option<Result<ChinchillaLaw, String>>,
    /// The held-out largest baselines (None when not asked for).
    pub predictions: Option<Result<Vec<Prediction>, String>>,
}

impl Analysis {
    /// The family results with a comparison (every family but the baselines).
    pub fn comparisons(&self) -> impl Iterator<Item = (&FamilyResult, &Comparison)> {
        self.families
            .iter()
            .filter_map(|r| r.comparison.as_ref().map(|c| (r, c)))
    }
}

fn price(runs: &[Run], cost: FrozenCost) -> Vec<Run> {
    runs.iter()
        .map(|r| r.with_cost(&CostModel::new(cost)))
        .collect()
}

fn of_family(runs: &[Run], fam: &Family) -> Vec<Run> {
    runs.iter().filter(|r| &r.family == fam).cloned().collect()
}

fn distinct(mut v: Vec<f64>) -> usize {
    v.sort_by(f64::total_cmp);
    v.dedup();
    v.len()
}

/// In a table, each `N`'s rows at its largest token count (so that `L(N)` compares equal budgets); curves as given.
fn final_loss_runs(baselines: &[Run], table: bool) -> Vec<Run> {
    if !table {
        return baselines.to_vec();
    }
    let max_tokens = |n: Option<f64>| {
        baselines
            .iter()
            .filter(|r| r.n_trainable == n)
            .filter_map(|r| r.final_tokens())
            .fold(f64::NEG_INFINITY, f64::max)
    };
    baselines
        .iter()
        .filter(|r| {
            r.final_tokens()
                .is_none_or(|t| t >= max_tokens(r.n_trainable))
        })
        .cloned()
        .collect()
}

fn params_result(runs: &[Run], opts: &ReportOptions) -> Result<ParamsResult, String> {
    let distinct_n = distinct(runs.iter().filter_map(|r| r.n_trainable).collect());
    if distinct_n < 3 {
        return Err(format!(
            "{distinct_n} distinct trainable N among the baselines, need at least 3"
        ));
    }
    let law = params_law(runs, &opts.study).map_err(|e| short(&e))?;
    Ok(ParamsResult {
        alpha: law.boot.interval(0),
        runs: law.points.len(),
        distinct_n,
        law,
    })
}

fn chinchilla_result(baselines: &[Run], opts: &ReportOptions) -> Result<ChinchillaLaw, String> {
    let with_nd: Vec<&Run> = baselines
        .iter()
        .filter(|r| r.n_trainable.is_some() && r.final_tokens().is_some())
        .collect();
    let rows: usize = with_nd
        .iter()
        .map(|r| r.valid_points().count().min(opts.chinchilla_points_per_run))
        .sum();
    let dn = distinct(with_nd.iter().filter_map(|r| r.n_trainable).collect());
    let dd = distinct(
        with_nd
            .iter()
            .flat_map(|r| r.valid_points().filter_map(|p| p.tokens))
            .collect(),
    );
    if rows < 6 || dn < 2 || dd < 2 {
        return Err(format!(
            "{rows} (N, D) points with {dn} distinct N and {dd} distinct D; approach 3 needs at least 6 points, \
             2 distinct N and 2 distinct D"
        ));
    }
    chinchilla_law(baselines, &opts.study, opts.chinchilla_points_per_run).map_err(|e| short(&e))
}

/// Hold out every baseline of the largest `N` (all its seeds), at least `opts.holdout` runs.
fn predict_held_out(runs: &[Run], opts: &ReportOptions) -> Result<Vec<Prediction>, String> {
    let n_max = runs
        .iter()
        .filter_map(|r| r.n_trainable)
        .fold(f64::NEG_INFINITY, f64::max);
    let seeds = runs.iter().filter(|r| r.n_trainable == Some(n_max)).count();
    predict_largest(runs, opts.holdout.max(seeds), &opts.study).map_err(|e| short(&e))
}

/// The (family, cost) pairs to report: every family at frozen cost 2/3, and at 0 where it has frozen parameters.
fn combos(runs: &[Run]) -> Vec<(Family, FrozenCost, bool)> {
    let mut families: Vec<Family> = runs.iter().map(|r| r.family.clone()).collect();
    families.sort();
    families.dedup();
    let mut out = Vec::new();
    for f in families {
        let frozen = runs.iter().any(|r| r.family == f && r.n_frozen > 0.0);
        out.push((f.clone(), FrozenCost::TwoThirds, frozen));
        if frozen {
            out.push((f, FrozenCost::Free, frozen));
        }
    }
    out
}

fn family_results(
    runs: &[Run],
    baselines: &[Run],
    base_law: Option<&ComputeLaw>,
    table: bool,
    opts: &ReportOptions,
) -> Vec<FamilyResult> {
    combos(runs)
        .into_iter()
        .map(|(family, cost, frozen)| {
            let fam_runs = price(&of_family(runs, &family), cost);
            let law = if family == Family::Baseline {
                base_law.cloned()
            } else if table {
                None
            } else {
                compute_law(&fam_runs, &opts.study).ok()
            };
            let comparison = (family != Family::Baseline && !baselines.is_empty()).then(|| {
                let mut c = compare_with_baselines(&fam_runs, baselines, &opts.study);
                if table {
                    // Single points make no frontier: equal compute is not tested.
                    c.equal_compute = Interval {
                        estimate: f64::NAN,
                        lo: f64::NAN,
                        hi: f64::NAN,
                    };
                    c.equal_compute_verdict = Verdict::NotComparable;
                }
                c
            });
            FamilyResult {
                runs: fam_runs.len(),
                family,
                cost,
                law,
                comparison,
                figure: None,
                frozen,
            }
        })
        .collect()
}

/// Run the whole study on `runs` (see the [module docs](self)).
pub fn analyze(runs: &[Run], opts: &ReportOptions) -> candle_core::Result<Analysis> {
    if runs.is_empty() {
        return Err(Error::Data("report: no runs".into()).into());
    }
    let table = runs.iter().all(|r| r.valid_points().count() <= 1);
    let baselines = price(&of_family(runs, &Family::Baseline), FrozenCost::TwoThirds);
    let base_law = if baselines.is_empty() || table {
        None
    } else {
        compute_law(&baselines, &opts.study).ok()
    };
    let frontier = base_law.as_ref().map(|l| frontier_fit(l, &baselines));
    let families = family_results(runs, &baselines, base_law.as_ref(), table, opts);
    let final_runs = final_loss_runs(&baselines, table);
    let params = if baselines.is_empty() {
        Err("no baseline runs".to_string())
    } else {
        params_result(&final_runs, opts)
    };
    let chinchilla =
        (opts.chinchilla && !baselines.is_empty()).then(|| chinchilla_result(&baselines, opts));
    let mut predictions =
        (opts.holdout > 0 && !baselines.is_empty()).then(|| predict_held_out(&final_runs, opts));
    if table {
        // Single points make no frontier: no `L(C)` prediction.
        for p in predictions.iter_mut().flatten().flatten() {
            p.from_compute = None;
        }
    }
    Ok(Analysis {
        runs: runs.to_vec(),
        table,
        baselines,
        base_law,
        frontier,
        families,
        params,
        chinchilla,
        predictions,
    })
}
