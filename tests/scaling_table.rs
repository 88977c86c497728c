//! "Bring your own table": a CSV of one row per run (`run, params, tokens, loss`, no curve) drawn from a known law
//! with seeded noise goes through the report's code path (`parse_csv` → `write_report`, as `scaling_report --csv`
//! calls them), and the truth lies inside the reported 95 % intervals.

use candle_structured::scaling::analysis::analyze;
use candle_structured::scaling::bootstrap::BootstrapOptions;
use candle_structured::scaling::report::{write_report, ReportOptions};
use candle_structured::scaling::runs::{parse_csv, Family};
use candle_structured::scaling::study::{StudyOptions, Verdict};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cs-scaling-table-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(resamples: usize, seed: u64) -> ReportOptions {
    ReportOptions {
        study: StudyOptions {
            final_points: 1,
            bootstrap: BootstrapOptions {
                resamples,
                seed,
                level: 0.95,
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Hoffmann et al.'s published law.
const TRUTH: [f64; 5] = [1.69, 406.4, 410.7, 0.34, 0.28];

fn chinchilla_table(seed: u64) -> String {
    let [e, a, b, alpha, beta] = TRUTH;
    let mut rng = StdRng::seed_from_u64(seed);
    let noise = Normal::new(0.0, 0.005).unwrap();
    // Mixed-case header: names are case-insensitive.
    let mut csv = String::from("# synthetic: L = E + A/N^alpha + B/D^beta, 0.5 % log-normal noise\nRun,Params,Tokens,Loss\n");
    for i in 0..8 {
        let n = 3e6 * 2.5f64.powi(i);
        for k in 0..6 {
            let d = 1e8 * 10f64.powf(3.0 * k as f64 / 5.0) * (1.0 + 0.2 * (i % 3) as f64);
            let l = (e + a * n.powf(-alpha) + b * d.powf(-beta))
                * Distribution::<f64>::sample(&noise, &mut rng).exp();
            csv.push_str(&format!("m{i}-d{k},{n},{d},{l}\n"));
        }
    }
    csv
}

#[test]
fn table_fits_chinchilla_with_truth_inside_the_intervals() {
    let runs = parse_csv(&chinchilla_table(42)).unwrap();
    assert_eq!(runs.len(), 48);
    assert!(runs.iter().all(|r| r.points.len() == 1));
    assert!(runs.iter().all(|r| r.family == Family::Baseline));
    let dir = tmp("chinchilla");
    let out = write_report(&runs, &dir, &opts(60, 3)).unwrap();
    let a = analyze(&runs, &opts(60, 3)).unwrap();
    assert!(a.table && a.base_law.is_none() && a.frontier.is_none());
    let c = a.chinchilla.as_ref().unwrap().as_ref().unwrap();
    for (i, t) in TRUTH.iter().enumerate() {
        let iv = c.boot.interval(i);
        assert!(iv.contains(*t), "param {i}: {iv:?} vs {t}");
    }
    assert!((c.law.alpha - TRUTH[3]).abs() < 0.1 && (c.law.beta - TRUTH[4]).abs() < 0.1);
    // The report: the table note, the fits, no compute law and no figure.
    let md = &out.markdown;
    assert!(md.contains("A table of one row per run"), "{md}");
    assert!(md.contains("Chinchilla approach 3"), "{md}");
    assert!(md.contains("`L(N) = (N_c/N)^α_N`"), "{md}");
    assert!(!md.contains("## Fitted compute laws"), "{md}");
    assert!(out.figures.is_empty());
    assert!(dir.join("report.md").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Final losses on `L(N) = (N_c/N)^α_N` at one token budget, 3 seeds per size, plus doped rows on the same law.
fn params_table(alpha_n: f64, log_nc: f64, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let noise = Normal::new(0.0, 0.004).unwrap();
    let mut csv = String::from("loss,tokens,PARAMS,run,family,frozen\n");
    let mut row = |name: String, n: f64, fam: &str, frozen: f64| {
        let l = (alpha_n * (log_nc - n.ln())).exp()
            * Distribution::<f64>::sample(&noise, &mut rng).exp();
        csv.push_str(&format!("{l},1e9,{n},{name},{fam},{frozen}\n"));
    };
    for i in 0..6 {
        let n = 1e6 * 2f64.powi(i);
        for s in 0..3 {
            row(format!("base{i}-s{s}"), n, "baseline", 0.0);
        }
    }
    for i in 0..3 {
        for s in 0..2 {
            let n = 1.5e6 * 2f64.powi(i);
            row(format!("doped{i}-s{s}"), n, "doped", n);
        }
    }
    csv
}

#[test]
fn table_fits_params_law_predicts_and_compares_at_equal_n() {
    let (alpha_n, log_nc) = (0.076, 8.8e13f64.ln());
    let runs = parse_csv(&params_table(alpha_n, log_nc, 9)).unwrap();
    assert_eq!(runs.len(), 24);
    let o = ReportOptions {
        chinchilla: false,
        ..opts(300, 1)
    };
    let a = analyze(&runs, &o).unwrap();
    let p = a.params.as_ref().unwrap();
    assert_eq!((p.runs, p.distinct_n), (18, 6));
    assert!(p.alpha.contains(alpha_n), "{:?}", p.alpha);
    assert!(p.excludes_zero());
    // The largest size (3 seeds) held out and predicted from the 5 smaller ones.
    let preds = a.predictions.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(preds.len(), 3);
    for pr in preds {
        assert_eq!(pr.fitted_on.len(), 15);
        let truth = (alpha_n * (log_nc - pr.n_trainable.ln())).exp();
        assert!(pr.from_params.contains(truth), "{pr:?} vs {truth}");
        assert!(pr.from_compute.is_none()); // no frontier in a table
    }
    // Doped rows on the baselines' law: indistinguishable at equal trainable N; no curve, no equal-compute test.
    let comps: Vec<_> = a.comparisons().collect();
    assert_eq!(comps.len(), 2); // cost 2/3 and 0
    for (r, c) in comps {
        assert_eq!(r.family, Family::Doped);
        assert_eq!(c.equal_n_verdict, Verdict::NoSignificantDifference, "{c:?}");
        assert_eq!(c.equal_compute_verdict, Verdict::NotComparable, "{c:?}");
    }
    let dir = tmp("params");
    let out = write_report(&runs, &dir, &o).unwrap();
    assert!(
        out.markdown.contains("The interval excludes 0"),
        "{}",
        out.markdown
    );
    assert!(out.markdown.contains("sits on the baselines' `L(N)` law"));
    assert!(out.summary.contains("excludes 0: yes"), "{}", out.summary);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn table_needs_params_and_tokens_without_compute() {
    assert!(parse_csv("run,params,loss\na,1e6,3.0\n").is_err());
    assert!(parse_csv("run,tokens,loss\na,1e9,3.0\n").is_err());
    // The curve format still reads as curves.
    let runs = parse_csv("run,compute,loss\na,1e15,3.0\na,1e16,2.5\nb,1e15,3.1\n").unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].points.len(), 2);
    // Two distinct N are too few for L(N).
    let runs = parse_csv("run,params,tokens,loss\na,1e6,1e9,3.0\nb,2e6,1e9,2.9\n").unwrap();
    let a = analyze(&runs, &opts(10, 0)).unwrap();
    assert!(a.params.unwrap_err().contains("need at least 3"));
}
