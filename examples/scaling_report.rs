//! Reads learning curves, fits scaling laws with bootstrap intervals, draws the paper's figures and writes a markdown
//! report answering its question: do doped or structured models beat baselines with the same number of trainable
//! parameters at equal compute?
//!
//! ```bash
//! cargo run --release --example scaling_report                          # docs/scaling/runs/ → docs/scaling/
//! cargo run --release --example scaling_report -- --runs runs --out runs/report --resamples 1000
//! cargo run --release --example scaling_report -- --csv my_curves.csv   # columns run,compute,loss[,params,tokens]
//! cargo run --release --example scaling_report -- --csv table.csv       # one row per run: run,params,tokens,loss
//! cargo run --release --example scaling_report -- --demo --out /tmp/demo # synthetic runs, no training needed
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_structured::scaling::bootstrap::BootstrapOptions;
use candle_structured::scaling::report::{write_report, ReportOptions};
use candle_structured::scaling::runs::{read_csv, read_runs_dir, Family, Run, RunPoint};
use candle_structured::scaling::study::StudyOptions;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Fit scaling laws to training runs and write figures and a markdown report")]
struct Args {
    /// Folder of run folders (each with a log.jsonl), as written by the training loop (the committed study).
    #[arg(long, default_value = "docs/scaling/runs")]
    runs: PathBuf,
    /// Read a CSV instead: curves (columns run, compute, loss[, params, tokens, frozen, family]) or, without a
    /// compute column, one row per run (run, params, tokens, loss[, frozen, family]).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Use synthetic runs drawn from a known law (to try the tool without training).
    #[arg(long)]
    demo: bool,
    /// Only runs whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Output folder for report.md and the figures.
    #[arg(long, default_value = "docs/scaling")]
    out: PathBuf,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 500)]
    resamples: usize,
    /// Bootstrap seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Frontier grid points.
    #[arg(long, default_value_t = 40)]
    grid: usize,
    /// Drop each run's points below this fraction of its final compute (early training).
    #[arg(long, default_value_t = 0.1)]
    trim: f64,
    /// Skip Chinchilla's L(N, D) fit.
    #[arg(long)]
    no_chinchilla: bool,
    /// Skip the figures.
    #[arg(long)]
    no_figures: bool,
    /// Fit the raw lower envelope of the learning curves instead of the non-increasing frontier (the best loss
    /// reached with at most C).
    #[arg(long)]
    envelope: bool,
}

/// Synthetic study: baselines on L = (C_c/C)^0.05 with noise, doped runs a bit worse per FLOP at cost 2/3.
fn demo_runs() -> Vec<Run> {
    let mut out = Vec::new();
    let mut state = 12345u64;
    let mut noise = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.01
    };
    for (i, (name, fam, n, frozen)) in [
        ("xxsmall", Family::Baseline, 6e5, 0.0),
        ("xsmall", Family::Baseline, 1.2e6, 0.0),
        ("small", Family::Baseline, 2.4e6, 0.0),
        ("medium", Family::Baseline, 7.4e6, 0.0),
        ("doped-xsmall", Family::Doped, 6e5, 8e5),
        ("doped-small", Family::Doped, 1.2e6, 2e6),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = Run::from_points(name, fam, Some(n), []);
        r.n_frozen = frozen;
        let _ = i;
        for k in 1..=30 {
            let tokens = 4e4 * k as f64;
            let c_eff = candle_structured::flops::CostModel::default().flops(n, 0.0, tokens);
            // Each model saturates: loss = law(C) + capacity term.
            let loss = (1e14f64 / c_eff).powf(0.05) * 3.0 + 2.0 * (1e5 / n).powf(0.3) + noise();
            r.points.push(RunPoint {
                step: Some(k),
                tokens: Some(tokens),
                compute: c_eff,
                loss,
            });
        }
        out.push(r);
    }
    out
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut runs = if args.demo {
        demo_runs()
    } else if let Some(csv) = &args.csv {
        read_csv(csv).with_context(|| format!("reading {}", csv.display()))?
    } else {
        read_runs_dir(&args.runs)
            .with_context(|| format!("reading run folders under {}", args.runs.display()))?
    };
    if !args.only.is_empty() {
        runs.retain(|r| args.only.iter().any(|o| r.name.contains(o.as_str())));
    }
    // A CSV table holds one point per run (final losses): the report fits L(N) and L(N, D) on it. Otherwise a run
    // with a single point (an unfinished folder, e.g. the sweep's cache) cannot make a curve.
    let table = args.csv.is_some() && runs.iter().all(|r| r.valid_points().count() <= 1);
    runs.retain(|r| r.valid_points().count() >= if table { 1 } else { 2 });
    if runs.is_empty() {
        bail!("no run with at least two logged points (or, in a CSV table, one)");
    }
    eprintln!("{} runs:", runs.len());
    for r in &runs {
        eprintln!(
            "  {:<20} {:<9} N={:<10} frozen={:<10} {} points{}",
            r.name,
            r.family.to_string(),
            r.n_trainable.map(|n| format!("{n}")).unwrap_or("?".into()),
            r.n_frozen,
            r.points.len(),
            if r.skipped_lines > 0 {
                format!(" ({} log lines skipped)", r.skipped_lines)
            } else {
                String::new()
            }
        );
    }
    let opts = ReportOptions {
        study: StudyOptions {
            n_grid: args.grid,
            trim: args.trim,
            bootstrap: BootstrapOptions {
                resamples: args.resamples,
                seed: args.seed,
                level: 0.95,
            },
            monotone: !args.envelope,
            ..Default::default()
        },
        figures: !args.no_figures,
        chinchilla: !args.no_chinchilla,
        command: Some(format!(
            "cargo run --release --example scaling_report -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        )),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let out = write_report(&runs, &args.out, &opts)?;
    println!("{}", out.markdown);
    eprint!("{}", out.summary);
    eprintln!(
        "wrote {} and {} figure files in {:.1} s",
        out.path.display(),
        out.figures.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
