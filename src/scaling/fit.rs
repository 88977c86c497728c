//! Scaling-law fits.
//!
//! * [`fit_power_law`]: `L(x) = (x_c / x)^α` — Kaplan et al.'s `L(C)` on the compute frontier and `L(N)` on final
//!   losses — by least squares on `ln L = α ln x_c − α ln x` ([`Method::LeastSquares`]), or robustly with a Huber loss
//!   on the same log residuals ([`Method::Huber`], iteratively reweighted least squares, exact for this linear model).
//! * [`fit_offset_power_law`]: `L(x) = E + (x_c / x)^α`, an irreducible loss plus a power law.
//! * [`fit_chinchilla`]: `L(N, D) = E + A / N^α + B / D^β`, Hoffmann et al.'s approach 3: a Huber loss (δ = 10⁻³) on
//!   `ln L̂ − ln L`, where `ln L̂ = LSE(a − α ln N, b − β ln D, e)` (`A = eᵃ`, `B = eᵇ`, `E = eᵉ`), minimised by
//!   L-BFGS (the [`argmin`] crate, More–Thuente line search) from a grid of starting points, the best optimum kept.
//!
//! The non-linear fits work on log-features centred at their geometric means (the optimiser sees `O(1)` numbers even
//! when `C` is 10²⁰ FLOPs) and report the parameters in the original units.

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;

use crate::error::Error;

/// Chinchilla's Huber threshold on log-loss residuals.
pub(crate) const CHINCHILLA_HUBER_DELTA: f64 = 1e-3;

/// How residuals (in `ln L`) are penalised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Ordinary least squares, `r²/2`.
    LeastSquares,
    /// Huber loss with threshold `delta`: `r²/2` for `|r| ≤ δ`, `δ(|r| − δ/2)` beyond (robust to outliers).
    Huber {
        /// Threshold δ in log-loss units.
        delta: f64,
    },
}

impl Method {
    /// Huber with Chinchilla's δ = 10⁻³.
    pub fn huber() -> Method {
        Method::Huber {
            delta: CHINCHILLA_HUBER_DELTA,
        }
    }

    fn rho(&self, r: f64) -> f64 {
        match *self {
            Method::LeastSquares => 0.5 * r * r,
            Method::Huber { delta } => {
                if r.abs() <= delta {
                    0.5 * r * r
                } else {
                    delta * (r.abs() - 0.5 * delta)
                }
            }
        }
    }

    fn drho(&self, r: f64) -> f64 {
        match *self {
            Method::LeastSquares => r,
            Method::Huber { delta } => r.clamp(-delta, delta),
        }
    }
}

fn check_xy(what: &str, x: &[f64], y: &[f64], min: usize) -> candle_core::Result<()> {
    if x.len() != y.len() {
        return Err(Error::Fit(format!(
            "{what}: {} x values but {} y values",
            x.len(),
            y.len()
        ))
        .into());
    }
    if x.len() < min {
        return Err(Error::Fit(format!("{what}: {} points, need at least {min}", x.len())).into());
    }
    if let Some(i) =
        (0..x.len()).find(|&i| !(x[i] > 0.0 && x[i].is_finite() && y[i] > 0.0 && y[i].is_finite()))
    {
        return Err(Error::Fit(format!(
            "{what}: point {i} = ({}, {}) is not positive and finite (log-log fit)",
            x[i], y[i]
        ))
        .into());
    }
    Ok(())
}

// ---- L = (x_c / x)^α --------------------------------------------------------------------------------------------

/// `L(x) = (x_c / x)^α`, stored as `α` and `ln x_c` (x_c overflows f64 for small α on FLOP scales).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerLaw {
    /// Exponent α (> 0 when the loss decreases); the log-log slope is `−α`.
    pub alpha: f64,
    /// `ln x_c`.
    pub log_scale: f64,
}

impl PowerLaw {
    /// `L(x) = exp(α (ln x_c − ln x))`.
    pub fn eval(&self, x: f64) -> f64 {
        (self.alpha * (self.log_scale - x.ln())).exp()
    }

    /// `x_c` (may be `inf` when it overflows; use [`PowerLaw::log_scale`]).
    pub fn scale(&self) -> f64 {
        self.log_scale.exp()
    }

    /// The log-log slope `d ln L / d ln x = −α` (the paper quotes −0.041, Kaplan −0.050, for `L(C)`).
    pub fn slope(&self) -> f64 {
        -self.alpha
    }
}

/// Weighted least squares `y = a + b x`; returns `(a, b)`.
fn wls(x: &[f64], y: &[f64], w: &[f64]) -> Option<(f64, f64)> {
    let sw: f64 = w.iter().sum();
    if sw.is_nan() || sw <= 0.0 {
        return None;
    }
    let mx = x.iter().zip(w).map(|(x, w)| x * w).sum::<f64>() / sw;
    let my = y.iter().zip(w).map(|(y, w)| y * w).sum::<f64>() / sw;
    let sxx: f64 = x.iter().zip(w).map(|(x, w)| w * (x - mx) * (x - mx)).sum();
    let sxy: f64 = x
        .iter()
        .zip(y)
        .zip(w)
        .map(|((x, y), w)| w * (x - mx) * (y - my))
        .sum();
    if sxx.is_nan() || sxx <= 0.0 {
        return None;
    }
    let b = sxy / sxx;
    Some((my - b * mx, b))
}

/// Fit `L(x) = (x_c / x)^α` to positive points `(x, y)` (at least 2, with at least two distinct `x`).
///
/// [`Method::LeastSquares`] is ordinary least squares on `(ln x, ln y)`; [`Method::Huber`] minimises the Huber loss
/// of the same residuals by iteratively reweighted least squares (weights `min(1, δ/|r|)`, 200 iterations at most).
///
/// ```
/// use candle_structured::scaling::fit::{fit_power_law, Method};
/// let x = [1e15, 1e16, 1e17, 1e18];
/// let y: Vec<f64> = x.iter().map(|c: &f64| (1e8f64 / c).powf(0.05)).collect();
/// let p = fit_power_law(&x, &y, Method::LeastSquares)?;
/// assert!((p.alpha - 0.05).abs() < 1e-12 && (p.log_scale - 1e8f64.ln()).abs() < 1e-8);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn fit_power_law(x: &[f64], y: &[f64], method: Method) -> candle_core::Result<PowerLaw> {
    check_xy("power law", x, y, 2)?;
    let lx: Vec<f64> = x.iter().map(|v| v.ln()).collect();
    let ly: Vec<f64> = y.iter().map(|v| v.ln()).collect();
    let mut w = vec![1.0; x.len()];
    let degenerate = || Error::Fit("power law: all x values are equal".to_string());
    let (mut a, mut b) = wls(&lx, &ly, &w).ok_or_else(degenerate)?;
    if let Method::Huber { delta } = method {
        if delta.is_nan() || delta <= 0.0 {
            return Err(
                Error::Fit(format!("power law: Huber delta = {delta}, must be > 0")).into(),
            );
        }
        for _ in 0..200 {
            for i in 0..x.len() {
                let r = (ly[i] - a - b * lx[i]).abs();
                w[i] = if r <= delta { 1.0 } else { delta / r };
            }
            let (na, nb) = wls(&lx, &ly, &w).ok_or_else(degenerate)?;
            let done = (na - a).abs() < 1e-13 * (1.0 + a.abs())
                && (nb - b).abs() < 1e-13 * (1.0 + b.abs());
            a = na;
            b = nb;
            if done {
                break;
            }
        }
    }
    let alpha = -b;
    if alpha == 0.0 {
        return Err(Error::Fit("power law: zero slope, x_c undefined".into()).into());
    }
    Ok(PowerLaw {
        alpha,
        log_scale: a / alpha,
    })
}

// ---- log-sum-exp models fitted with L-BFGS ------------------------------------------------------------------------

/// One additive term of `L̂`: `exp(θ[c])` or `exp(θ[c] − θ[p]·z[f])` with `z` a centred log-feature.
#[derive(Debug, Clone, Copy)]
enum Term {
    Const(usize),
    Power { c: usize, p: usize, f: usize },
}

/// `Σ_i ρ(LSE_k t_k(θ, z_i) − ln L_i) / n`.
struct LseProblem<'a> {
    terms: &'a [Term],
    z: &'a [Vec<f64>],
    ly: &'a [f64],
    method: Method,
}

impl LseProblem<'_> {
    fn eval(&self, theta: &[f64], grad: Option<&mut [f64]>) -> f64 {
        let n = self.ly.len() as f64;
        let mut cost = 0.0;
        let mut t = [0f64; 4];
        let nt = self.terms.len();
        let mut g = grad;
        if let Some(g) = g.as_deref_mut() {
            g.iter_mut().for_each(|v| *v = 0.0);
        }
        for (i, &ly) in self.ly.iter().enumerate() {
            for (k, term) in self.terms.iter().enumerate() {
                t[k] = match *term {
                    Term::Const(c) => theta[c],
                    Term::Power { c, p, f } => theta[c] - theta[p] * self.z[f][i],
                };
            }
            let m = t[..nt].iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = t[..nt].iter().map(|v| (v - m).exp()).sum();
            let pred = m + s.ln();
            let r = pred - ly;
            cost += self.method.rho(r);
            if let Some(g) = g.as_deref_mut() {
                let d = self.method.drho(r) / n;
                for (k, term) in self.terms.iter().enumerate() {
                    let w = (t[k] - m).exp() / s * d;
                    match *term {
                        Term::Const(c) => g[c] += w,
                        Term::Power { c, p, f } => {
                            g[c] += w;
                            g[p] -= w * self.z[f][i];
                        }
                    }
                }
            }
        }
        cost / n
    }
}

impl CostFunction for LseProblem<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, p: &Self::Param) -> Result<f64, argmin::core::Error> {
        Ok(self.eval(p, None))
    }
}

impl Gradient for LseProblem<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, p: &Self::Param) -> Result<Vec<f64>, argmin::core::Error> {
        let mut g = vec![0.0; p.len()];
        self.eval(p, Some(&mut g));
        Ok(g)
    }
}

/// Minimise from each start with L-BFGS; return the best `(θ, cost)`. Starts are first ranked by their cost and only
/// the `keep` best are optimised.
fn multistart(
    problem: &LseProblem<'_>,
    starts: Vec<Vec<f64>>,
    keep: usize,
    max_iters: u64,
) -> Option<(Vec<f64>, f64)> {
    let mut ranked: Vec<(f64, Vec<f64>)> = starts
        .into_iter()
        .map(|s| (problem.eval(&s, None), s))
        .filter(|(c, _)| c.is_finite())
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    ranked.truncate(keep.max(1));
    let mut best: Option<(Vec<f64>, f64)> = None;
    for (c0, s) in ranked {
        let mut cand = (s.clone(), c0);
        let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
            .with_tolerance_grad(1e-12)
            .and_then(|l| l.with_tolerance_cost(1e-15));
        if let Ok(solver) = solver {
            let res = Executor::new(
                LseProblem {
                    terms: problem.terms,
                    z: problem.z,
                    ly: problem.ly,
                    method: problem.method,
                },
                solver,
            )
            .configure(|st| st.param(s).max_iters(max_iters))
            .run();
            if let Ok(res) = res {
                if let Some(p) = res.state().get_best_param() {
                    let c = problem.eval(p, None);
                    if c.is_finite() && c < cand.1 {
                        cand = (p.clone(), c);
                    }
                }
            }
        }
        if best.as_ref().is_none_or(|b| cand.1 < b.1) {
            best = Some(cand);
        }
    }
    best
}

/// Options of the L-BFGS fits.
#[derive(Debug, Clone, PartialEq)]
pub struct LbfgsOptions {
    /// Residual penalty on `ln L`.
    pub method: Method,
    /// How many of the best-ranked grid starts are optimised.
    pub keep_starts: usize,
    /// Iteration cap per start.
    pub max_iters: u64,
    /// Extra starting points, in the fit's own parameters (e.g. the full-data optimum when bootstrapping).
    pub extra_starts: Vec<Vec<f64>>,
}

impl Default for LbfgsOptions {
    /// Huber δ = 10⁻³, the 8 best grid starts, 500 iterations.
    fn default() -> Self {
        LbfgsOptions {
            method: Method::huber(),
            keep_starts: 8,
            max_iters: 500,
            extra_starts: Vec::new(),
        }
    }
}

fn geo_mean(x: &[f64]) -> f64 {
    (x.iter().map(|v| v.ln()).sum::<f64>() / x.len() as f64).exp()
}

/// `L(x) = E + (x_c / x)^α`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OffsetPowerLaw {
    /// Irreducible loss `E`.
    pub e: f64,
    /// Exponent α.
    pub alpha: f64,
    /// `ln x_c`.
    pub log_scale: f64,
    /// Final objective (mean penalty of the log residuals).
    pub cost: f64,
}

impl OffsetPowerLaw {
    /// `E + exp(α (ln x_c − ln x))`.
    pub fn eval(&self, x: f64) -> f64 {
        self.e + (self.alpha * (self.log_scale - x.ln())).exp()
    }

    /// Parameters as a vector `[E, α, ln x_c]` (the order of [`LbfgsOptions::extra_starts`] for this fit).
    pub fn to_vec(&self) -> Vec<f64> {
        vec![self.e, self.alpha, self.log_scale]
    }
}

/// Fit `L(x) = E + (x_c / x)^α` (at least 4 points). Internally `ln L̂ = LSE(e, a − α z)` with `z = ln(x / x̄)`,
/// started from a data-driven grid (E below the smallest loss, α from 0.02 to 1.6, the power term matching the
/// median point) plus [`LbfgsOptions::extra_starts`] (`[E, α, ln x_c]`).
pub fn fit_offset_power_law(
    x: &[f64],
    y: &[f64],
    opts: &LbfgsOptions,
) -> candle_core::Result<OffsetPowerLaw> {
    check_xy("offset power law", x, y, 4)?;
    let xr = geo_mean(x);
    let z = vec![x.iter().map(|v| (v / xr).ln()).collect::<Vec<f64>>()];
    let ly: Vec<f64> = y.iter().map(|v| v.ln()).collect();
    let terms = [Term::Const(0), Term::Power { c: 1, p: 2, f: 0 }];
    let problem = LseProblem {
        terms: &terms,
        z: &z,
        ly: &ly,
        method: opts.method,
    };
    let ymin = y.iter().copied().fold(f64::INFINITY, f64::min);
    let mut ys = y.to_vec();
    ys.sort_by(f64::total_cmp);
    let ymed = ys[ys.len() / 2];
    let mut starts = Vec::new();
    for fe in [0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 0.97] {
        let e = ymin * fe;
        for alpha in [0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6] {
            // Term a − α z equal to ln(ymed − E) at z = 0.
            starts.push(vec![e.ln(), (ymed - e).max(1e-12).ln(), alpha]);
        }
    }
    for s in &opts.extra_starts {
        if s.len() == 3 && s[0] > 0.0 {
            // a = α (ln x_c − ln x̄)
            starts.push(vec![s[0].ln(), s[1] * (s[2] - xr.ln()), s[1]]);
        }
    }
    let (th, cost) =
        multistart(&problem, starts, opts.keep_starts, opts.max_iters).ok_or_else(|| {
            Error::Fit("offset power law: the optimiser found no finite optimum".into())
        })?;
    let alpha = th[2];
    Ok(OffsetPowerLaw {
        e: th[0].exp(),
        alpha,
        log_scale: if alpha != 0.0 {
            th[1] / alpha + xr.ln()
        } else {
            f64::INFINITY
        },
        cost,
    })
}

/// Chinchilla's `L(N, D) = E + A / N^α + B / D^β`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chinchilla {
    /// Irreducible loss `E`.
    pub e: f64,
    /// `A`.
    pub a: f64,
    /// `B`.
    pub b: f64,
    /// Exponent of `N`.
    pub alpha: f64,
    /// Exponent of `D`.
    pub beta: f64,
    /// Final objective (mean Huber penalty of the log residuals).
    pub cost: f64,
}

impl Chinchilla {
    /// `E + A/N^α + B/D^β`.
    pub fn eval(&self, n: f64, d: f64) -> f64 {
        self.e + self.a * n.powf(-self.alpha) + self.b * d.powf(-self.beta)
    }

    /// `[E, A, B, α, β]` (the order of [`LbfgsOptions::extra_starts`] for this fit).
    pub fn to_vec(&self) -> Vec<f64> {
        vec![self.e, self.a, self.b, self.alpha, self.beta]
    }

    /// The compute-optimal exponents `a = β/(α+β)` (N_opt ∝ C^a) and `b = α/(α+β)` (D_opt ∝ C^b).
    pub fn optimal_allocation_exponents(&self) -> (f64, f64) {
        let s = self.alpha + self.beta;
        (self.beta / s, self.alpha / s)
    }
}

/// Fit `L(N, D) = E + A/N^α + B/D^β` by Hoffmann et al.'s approach 3 (at least 6 points): Huber loss (by default
/// δ = 10⁻³) on log residuals, L-BFGS from Chinchilla's grid `α, β ∈ {0, 0.5, …, 2}`, `e ∈ {−1, −0.5, …, 1}`,
/// `a, b ∈ {0, 5, …, 25}` (4 500 starts, ranked by their initial objective, the [`LbfgsOptions::keep_starts`] best
/// optimised) plus [`LbfgsOptions::extra_starts`] (`[E, A, B, α, β]`).
pub fn fit_chinchilla(
    n: &[f64],
    d: &[f64],
    loss: &[f64],
    opts: &LbfgsOptions,
) -> candle_core::Result<Chinchilla> {
    check_xy("chinchilla", n, loss, 6)?;
    check_xy("chinchilla", d, loss, 6)?;
    let (nr, dr) = (geo_mean(n), geo_mean(d));
    let z = vec![
        n.iter().map(|v| (v / nr).ln()).collect::<Vec<f64>>(),
        d.iter().map(|v| (v / dr).ln()).collect::<Vec<f64>>(),
    ];
    let ly: Vec<f64> = loss.iter().map(|v| v.ln()).collect();
    // θ = [e, a', α, b', β] with a' = a − α ln N̄, b' = b − β ln D̄.
    let terms = [
        Term::Const(0),
        Term::Power { c: 1, p: 2, f: 0 },
        Term::Power { c: 3, p: 4, f: 1 },
    ];
    let problem = LseProblem {
        terms: &terms,
        z: &z,
        ly: &ly,
        method: opts.method,
    };
    let (lnr, ldr) = (nr.ln(), dr.ln());
    let mut starts = Vec::with_capacity(4500 + opts.extra_starts.len());
    for i_al in 0..5 {
        let al = 0.5 * i_al as f64;
        for i_be in 0..5 {
            let be = 0.5 * i_be as f64;
            for i_e in 0..5 {
                let e = -1.0 + 0.5 * i_e as f64;
                for i_a in 0..6 {
                    let a = 5.0 * i_a as f64;
                    for i_b in 0..6 {
                        let b = 5.0 * i_b as f64;
                        starts.push(vec![e, a - al * lnr, al, b - be * ldr, be]);
                    }
                }
            }
        }
    }
    for s in &opts.extra_starts {
        if s.len() == 5 && s[0] > 0.0 && s[1] > 0.0 && s[2] > 0.0 {
            starts.push(vec![
                s[0].ln(),
                s[1].ln() - s[3] * lnr,
                s[3],
                s[2].ln() - s[4] * ldr,
                s[4],
            ]);
        }
    }
    let (th, cost) = multistart(&problem, starts, opts.keep_starts, opts.max_iters)
        .ok_or_else(|| Error::Fit("chinchilla: the optimiser found no finite optimum".into()))?;
    Ok(Chinchilla {
        e: th[0].exp(),
        a: (th[1] + th[2] * lnr).exp(),
        alpha: th[2],
        b: (th[3] + th[4] * ldr).exp(),
        beta: th[4],
        cost,
    })
}
