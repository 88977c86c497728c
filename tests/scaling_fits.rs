//! Scaling-law fits on synthetic data drawn from known laws with seeded noise: each fit recovers its parameters,
//! with the truth inside the bootstrap interval; cost models and frontiers checked by hand.
#![cfg(feature = "fit")]

use candle_structured::flops::{flops_to_pf_days, CostModel, FrozenCost, PF_DAY};
use candle_structured::scaling::analysis::frontier_fit;
use candle_structured::scaling::bootstrap::BootstrapOptions;
use candle_structured::scaling::fit::{
    fit_chinchilla, fit_offset_power_law, fit_power_law, LbfgsOptions, Method,
};
use candle_structured::scaling::frontier::{frontier, interp_loglog, log_grid, trim_runs};
use candle_structured::scaling::predict::predict_largest;
use candle_structured::scaling::runs::{Family, Run, RunPoint};
use candle_structured::scaling::study::{
    chinchilla_law, compare_with_baselines, compute_law, params_law, StudyOptions, Verdict,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

fn opts(resamples: usize) -> StudyOptions {
    StudyOptions {
        n_grid: 30,
        trim: 0.0,
        bootstrap: BootstrapOptions {
            resamples,
            seed: 7,
            level: 0.95,
        },
        ..Default::default()
    }
}

// ---- cost models -----------------------------------------------------------------------------------------------------

#[test]
fn cost_models_by_hand() {
    // 2M trainable, 6M frozen, 1000 steps of 8 x 128 tokens.
    let (n, f, tokens) = (2.0e6, 6.0e6, 1000.0 * 8.0 * 128.0);
    let base = 6.0 * 2.0e6 * 1_024_000.0; // 1.2288e13
    assert_eq!(CostModel::new(FrozenCost::Free).flops(n, f, tokens), base);
    assert_eq!(
        CostModel::new(FrozenCost::TwoThirds).flops(n, f, tokens),
        base + 4.0 * 6.0e6 * 1_024_000.0
    );
    assert_eq!(
        CostModel::new(FrozenCost::Full).flops(n, f, tokens),
        6.0 * 8.0e6 * 1_024_000.0
    );
    assert_eq!(
        CostModel::new(FrozenCost::Factor(0.5)).flops_per_token(n, f),
        6.0 * 2.0e6 + 3.0 * 6.0e6
    );
    assert_eq!(
        CostModel::default().flops_steps(n, f, 1024.0, 1000.0),
        CostModel::default().flops(n, f, tokens)
    );
    assert_eq!(PF_DAY, 8.64e19);
    let pd = CostModel::new(FrozenCost::Free).pf_days(n, f, tokens);
    assert!((pd - 1.2288e13 / 8.64e19).abs() < 1e-24);
    assert_eq!(flops_to_pf_days(8.64e19), 1.0);
    assert_eq!(FrozenCost::TwoThirds.factor(), 2.0 / 3.0);
}

// ---- frontier ----------------------------------------------------------------------------------------------------

#[test]
fn frontier_of_hand_made_curves() {
    // Grid: 1, 10, 100, 1000 (4 points, log-spaced between 1 and 1000).
    let a = Run::from_points(
        "a",
        Family::Baseline,
        Some(1.0),
        [(1.0, 8.0), (10.0, 4.0), (100.0, 3.5)],
    );
    let b = Run::from_points(
        "b",
        Family::Baseline,
        Some(2.0),
        [(10.0, 6.0), (100.0, 2.0), (1000.0, 1.0)],
    );
    // c only covers [30, 300]: interpolated at 100 between (30, 4) and (300, 1): log-linear at t = ln(100/30)/ln(10).
    let c = Run::from_points(
        "c",
        Family::Baseline,
        Some(3.0),
        [(30.0, 4.0), (300.0, 1.0)],
    );
    let f = frontier(&[a, b, c], 4).unwrap();
    let g = log_grid(1.0, 1000.0, 4);
    assert!((g[1] - 10.0).abs() < 1e-12 && (g[2] - 100.0).abs() < 1e-9);
    assert_eq!(f.points.len(), 4);
    assert_eq!((f.points[0].loss, f.points[0].run), (8.0, 0));
    assert_eq!((f.points[1].loss, f.points[1].run), (4.0, 0));
    let t = (100.0f64 / 30.0).ln() / 10f64.ln();
    let lc = (4f64.ln() * (1.0 - t) + 1f64.ln() * t).exp(); // ≈ 1.51 < 2
    assert!((f.points[2].loss - lc).abs() < 1e-9, "{}", f.points[2].loss);
    assert_eq!(f.points[2].run, 2);
    assert_eq!((f.points[3].loss, f.points[3].run), (1.0, 1));
    // Interpolation helper: no extrapolation.
    assert_eq!(interp_loglog(&[(1.0, 2.0), (4.0, 8.0)], 2.0), Some(4.0));
    assert_eq!(interp_loglog(&[(1.0, 2.0), (4.0, 8.0)], 5.0), None);
    assert!(frontier(&[], 4).is_err());
    // A gap no run covers is left out.
    let lo = Run::from_points("lo", Family::Baseline, None, [(1.0, 3.0), (2.0, 2.5)]);
    let hi = Run::from_points("hi", Family::Baseline, None, [(500.0, 1.5), (1000.0, 1.2)]);
    let f = frontier(&[lo, hi], 4).unwrap();
    assert_eq!(f.points.len(), 2);
    // Trimming keeps C >= fraction * C_final.
    let t = trim_runs(
        &[Run::from_points(
            "t",
            Family::Baseline,
            None,
            [(1.0, 3.0), (5.0, 2.0), (10.0, 1.0)],
        )],
        0.5,
    );
    assert_eq!(t[0].points.len(), 2);
}

// ---- L(C) = (C_c / C)^alpha on a frontier ---------------------------------------------------------------------------

/// Runs along `L = (C_c/C)^α`, each over its own decade of compute, with per-run and per-point log-normal noise.
fn compute_law_runs(alpha: f64, log_cc: f64, seed: u64) -> Vec<Run> {
    let mut rng = StdRng::seed_from_u64(seed);
    let run_noise = Normal::new(0.0, 0.004).unwrap();
    let pt_noise = Normal::new(0.0, 0.002).unwrap();
    (0..8)
        .map(|i| {
            let off: f64 = run_noise.sample(&mut rng);
            let pts: Vec<(f64, f64)> = (0..12)
                .map(|k| {
                    let c = 1e12 * 10f64.powf(i as f64 + k as f64 / 11.0 * 0.999);
                    let l =
                        (alpha * (log_cc - c.ln())).exp() * (off + pt_noise.sample(&mut rng)).exp();
                    (c, l)
                })
                .collect();
            Run::from_points(
                format!("run{i}"),
                Family::Baseline,
                Some(1e5 * 3f64.powi(i)),
                pts,
            )
        })
        .collect()
}

#[test]
fn compute_law_recovers_alpha_and_scale() {
    let (alpha, log_cc) = (0.05, 1e30f64.ln());
    let runs = compute_law_runs(alpha, log_cc, 1);
    let law = compute_law(&runs, &opts(200)).unwrap();
    let a = law.alpha();
    assert!(a.contains(alpha), "alpha {a:?}");
    assert!((law.ls.alpha - alpha).abs() < 0.005, "{:?}", law.ls);
    let ah = law.alpha_huber();
    assert!(ah.contains(alpha), "huber alpha {ah:?}");
    let s = law.boot.interval(1);
    assert!(s.contains(log_cc), "ln C_c {s:?} vs {log_cc}");
    assert!(law.slope().contains(-alpha));
    assert!(law.boot.failed == 0);
    // The band holds the true law across the range.
    for (c, lo, hi) in law.band(1e12, 1e20, 5) {
        let t = (alpha * (log_cc - c.ln())).exp();
        assert!(lo <= t && t <= hi, "band at {c:e}: [{lo}, {hi}] vs {t}");
    }
    assert_eq!(law.residuals().len(), law.frontier.points.len());
}

#[test]
fn huber_resists_outliers_least_squares_does_not() {
    let mut rng = StdRng::seed_from_u64(3);
    let noise = Normal::new(0.0, 0.002).unwrap();
    let x: Vec<f64> = log_grid(1e13, 1e19, 40);
    let mut y: Vec<f64> = x
        .iter()
        .map(|c| {
            (0.07 * (60.0 - c.ln())).exp() * Distribution::<f64>::sample(&noise, &mut rng).exp()
        })
        .collect();
    // Five gross outliers at the large-compute end (a diverged run, say), all high.
    for v in y.iter_mut().rev().take(5) {
        *v *= 1.5;
    }
    let ls = fit_power_law(&x, &y, Method::LeastSquares).unwrap();
    let hu = fit_power_law(&x, &y, Method::Huber { delta: 1e-3 }).unwrap();
    assert!((hu.alpha - 0.07).abs() < 0.002, "huber {hu:?}");
    assert!((ls.alpha - 0.07).abs() > 0.01, "ls {ls:?}");
    // Bad input is an error, not a panic.
    assert!(fit_power_law(&[1.0, 2.0], &[1.0], Method::LeastSquares).is_err());
    assert!(fit_power_law(&[1.0, 2.0], &[1.0, -1.0], Method::LeastSquares).is_err());
    assert!(fit_power_law(&[2.0, 2.0], &[1.0, 3.0], Method::LeastSquares).is_err());
}

// ---- L(C) = E + (C_c / C)^alpha ---------------------------------------------------------------------------------------

#[test]
fn offset_power_law_recovers_parameters_with_bootstrap() {
    use candle_structured::scaling::bootstrap::bootstrap_runs;
    let (e, alpha, log_cc) = (1.7, 0.3, 1e14f64.ln());
    let mut rng = StdRng::seed_from_u64(11);
    let run_noise = Normal::new(0.0, 0.003).unwrap();
    let pt_noise = Normal::new(0.0, 0.002).unwrap();
    let runs: Vec<Run> = (0..10)
        .map(|i| {
            let off: f64 = run_noise.sample(&mut rng);
            let pts: Vec<(f64, f64)> = (0..8)
                .map(|k| {
                    let c = 1e12 * 10f64.powf((i as f64 + k as f64 / 8.0) * 0.6);
                    let l = (e + (alpha * (log_cc - c.ln())).exp())
                        * (off + pt_noise.sample(&mut rng)).exp();
                    (c, l)
                })
                .collect();
            Run::from_points(format!("r{i}"), Family::Baseline, None, pts)
        })
        .collect();
    let lb = LbfgsOptions {
        method: Method::LeastSquares,
        ..Default::default()
    };
    let fit = |rs: &[Run]| {
        let (x, y): (Vec<f64>, Vec<f64>) = rs
            .iter()
            .flat_map(|r| r.points.iter().map(|p| (p.compute, p.loss)))
            .unzip();
        fit_offset_power_law(&x, &y, &lb).map(|f| f.to_vec())
    };
    let b = bootstrap_runs(
        &runs,
        &BootstrapOptions {
            resamples: 100,
            seed: 5,
            level: 0.95,
        },
        fit,
    )
    .unwrap();
    assert!((b.estimate[0] - e).abs() < 0.05, "{:?}", b.estimate);
    assert!((b.estimate[1] - alpha).abs() < 0.03, "{:?}", b.estimate);
    for (i, t) in [e, alpha, log_cc].into_iter().enumerate() {
        assert!(
            b.interval(i).contains(t),
            "param {i}: {:?} vs {t}",
            b.interval(i)
        );
    }
}

// ---- L(N) = (N_c / N)^alpha_N and prediction of held-out larger runs ----------------------------------------------------

fn params_runs(alpha_n: f64, log_nc: f64, seed: u64, count: usize) -> Vec<Run> {
    let mut rng = StdRng::seed_from_u64(seed);
    let noise = Normal::new(0.0, 0.005).unwrap();
    (0..count)
        .map(|i| {
            let n = 1e5 * 2f64.powi(i as i32);
            let l_final = (alpha_n * (log_nc - n.ln())).exp()
                * Distribution::<f64>::sample(&noise, &mut rng).exp();
            // A curve ending at the final loss (the law only uses the last points).
            let pts: Vec<(f64, f64)> = (1..=4)
                .map(|k| {
                    (
                        6.0 * n * 1e6 * k as f64,
                        l_final * (1.0 + 0.1 * (4 - k) as f64),
                    )
                })
                .collect();
            Run::from_points(format!("n{i}"), Family::Baseline, Some(n), pts)
        })
        .collect()
}

#[test]
fn params_law_recovers_and_predicts_held_out_runs() {
    let (alpha_n, log_nc) = (0.076, 8.8e13f64.ln());
    let o = StudyOptions {
        final_points: 1,
        ..opts(300)
    };
    let runs = params_runs(alpha_n, log_nc, 22, 12);
    let law = params_law(&runs, &o).unwrap();
    assert!(
        law.boot.interval(0).contains(alpha_n),
        "{:?}",
        law.boot.interval(0)
    );
    assert!(
        law.boot.interval(1).contains(log_nc),
        "{:?}",
        law.boot.interval(1)
    );
    assert!((law.law.alpha - alpha_n).abs() < 0.01);
    // Fit on the 10 smaller models, predict the 2 largest: the prediction interval holds what they reached.
    let preds = predict_largest(&runs, 2, &o).unwrap();
    assert_eq!(preds.len(), 2);
    for p in &preds {
        assert_eq!(p.fitted_on.len(), 10);
        let truth = (alpha_n * (log_nc - p.n_trainable.ln())).exp();
        assert!(p.from_params.contains(p.actual), "{p:?} truth {truth}");
        assert!(p.from_params.contains(truth), "{p:?} truth {truth}");
        assert!(p.relative_error().abs() < 0.03, "{p:?}");
    }
    assert!(predict_largest(&runs[..3], 2, &o).is_err());
}

// ---- Chinchilla L(N, D) = E + A/N^alpha + B/D^beta -----------------------------------------------------------------

#[test]
fn chinchilla_approach3_recovers_parameters() {
    // Hoffmann et al.'s published fit.
    let (e, a, b, alpha, beta) = (1.69, 406.4, 410.7, 0.34, 0.28);
    let mut rng = StdRng::seed_from_u64(42);
    let noise = Normal::new(0.0, 0.005).unwrap();
    let mut runs = Vec::new();
    for i in 0..12 {
        let n = 3e6 * 2.2f64.powi(i);
        let mut r = Run::from_points(format!("m{i}"), Family::Baseline, Some(n), []);
        for k in 0..8 {
            // Each model trained on 1e8 .. 1e11 tokens (intermediate points of the curve).
            let d = 1e8 * 10f64.powf(3.0 * k as f64 / 7.0) * (1.0 + 0.3 * (i % 3) as f64);
            let l = (e + a * n.powf(-alpha) + b * d.powf(-beta))
                * Distribution::<f64>::sample(&noise, &mut rng).exp();
            r.points.push(RunPoint {
                step: None,
                tokens: Some(d),
                compute: 6.0 * n * d,
                loss: l,
            });
        }
        runs.push(r);
    }
    // Plain fit first: close to the truth.
    let (nn, dd, ll): (Vec<f64>, Vec<f64>, Vec<f64>) = {
        let mut v = (Vec::new(), Vec::new(), Vec::new());
        for r in &runs {
            for p in &r.points {
                v.0.push(r.n_trainable.unwrap());
                v.1.push(p.tokens.unwrap());
                v.2.push(p.loss);
            }
        }
        v
    };
    let fit = fit_chinchilla(&nn, &dd, &ll, &LbfgsOptions::default()).unwrap();
    assert!((fit.e - e).abs() < 0.15, "{fit:?}");
    assert!(
        (fit.alpha - alpha).abs() < 0.1 && (fit.beta - beta).abs() < 0.1,
        "{fit:?}"
    );
    // With a bootstrap over runs: truth inside each 95 % interval.
    let law = chinchilla_law(&runs, &opts(40), 8).unwrap();
    let truth = [e, a, b, alpha, beta];
    for (i, t) in truth.iter().enumerate() {
        let iv = law.boot.interval(i);
        assert!(iv.contains(*t), "param {i}: {iv:?} vs {t}");
    }
    let (ea, eb) = law.law.optimal_allocation_exponents();
    assert!((ea + eb - 1.0).abs() < 1e-12);
    assert!(fit_chinchilla(&nn[..3], &dd[..3], &ll[..3], &LbfgsOptions::default()).is_err());
}

// ---- the paper's question on synthetic families ----------------------------------------------------------------------

#[test]
fn comparison_detects_better_worse_and_equal_families() {
    let base = compute_law_runs(0.05, 1e30f64.ln(), 100);
    let shifted = |factor: f64, fam: Family, seed: u64| -> Vec<Run> {
        compute_law_runs(0.05, 1e30f64.ln(), seed)
            .into_iter()
            .map(|mut r| {
                r.family = fam.clone();
                r.name = format!("{}-{}", fam, r.name);
                r.points.iter_mut().for_each(|p| p.loss *= factor);
                r
            })
            .collect()
    };
    let o = opts(100);
    let better = compare_with_baselines(&shifted(0.95, Family::Doped, 200), &base, &o);
    assert_eq!(better.equal_compute_verdict, Verdict::Better, "{better:?}");
    assert_eq!(better.equal_n_verdict, Verdict::Better, "{better:?}");
    assert!(better.equal_compute.contains(0.95f64.ln()), "{better:?}");
    assert_eq!(better.twins.len(), 8);
    assert!(better.twins.iter().all(|t| t.3 < 0.0));
    let worse = compare_with_baselines(&shifted(1.05, Family::FastFood, 300), &base, &o);
    assert_eq!(worse.equal_compute_verdict, Verdict::Worse, "{worse:?}");
    let same = compare_with_baselines(&shifted(1.0, Family::BlockDiag, 400), &base, &o);
    assert_eq!(
        same.equal_compute_verdict,
        Verdict::NoSignificantDifference,
        "{same:?}"
    );
}

// ---- the frontier fit's acceptance figures ----------------------------------------------------------------------------

#[test]
fn frontier_fit_r2_span_residuals_and_shares() {
    let runs = compute_law_runs(0.05, 1e30f64.ln(), 5);
    let law = compute_law(&runs, &opts(20)).unwrap();
    let f = frontier_fit(&law, &runs);
    // For least squares with an intercept, R² is the squared correlation of ln C and ln L.
    let (x, y): (Vec<f64>, Vec<f64>) = law
        .frontier
        .points
        .iter()
        .map(|p| (p.compute.ln(), p.loss.ln()))
        .unzip();
    let m = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mx, my) = (m(&x), m(&y));
    let sxy: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let syy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    assert!(
        (f.r2_loglog - sxy * sxy / (sxx * syy)).abs() < 1e-9,
        "{}",
        f.r2_loglog
    );
    assert!(f.r2_loglog > 0.98 && f.is_power_law());
    // 8 runs over one decade each, the first trimmed to nothing below 0.1 C_final: 8 decades.
    assert!((f.decades - 8.0).abs() < 0.01, "{}", f.decades);
    for r in &f.residuals {
        assert!((r.residual - (r.loss / r.fitted).ln()).abs() < 1e-12);
        assert!((r.fitted - law.ls.eval(r.compute)).abs() < 1e-12);
    }
    // Each run holds the frontier over its own decade: 8 sizes, in increasing N, all on it.
    assert_eq!(f.shares.len(), 8);
    assert!(f.every_run_on_frontier());
    for (i, s) in f.shares.iter().enumerate() {
        assert_eq!(s.runs, vec![format!("run{i}")]);
        let (lo, hi) = s.range.unwrap();
        assert!(lo >= 0.99e12 * 10f64.powi(i as i32) && hi <= 1.01e13 * 10f64.powi(i as i32));
    }
    // A run that is everywhere worse than another of the same compute range is never on the frontier.
    let mut worse = runs[3].clone();
    worse.name = "worse".into();
    worse.n_trainable = Some(1.0);
    worse.points.iter_mut().for_each(|p| p.loss *= 1.1);
    let mut with = runs.clone();
    with.push(worse);
    let law = compute_law(&with, &opts(5)).unwrap();
    let f = frontier_fit(&law, &with);
    assert_eq!(f.shares[0].runs, vec!["worse".to_string()]);
    assert_eq!((f.shares[0].range, f.shares[0].points), (None, 0));
    assert!(!f.every_run_on_frontier());
}
