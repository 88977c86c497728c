//! The study as a markdown report (and, with feature `plot`, its figures): fitted exponents with intervals, the
//! literature's values beside them, extrapolation checks, and the verdict on the paper's question — do doped or
//! structured models beat baselines with the same number of trainable parameters at equal compute?
//!
//! [`write_report`] does everything `examples/scaling_report.rs` prints: it prices the runs with each cost model,
//! fits every family, compares it with the baselines, draws figures 1, 2, 3, 6, 7 and the residuals, and writes
//! `report.md` into the output folder.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::cost::{CostModel, FrozenCost, PF_DAY};
use super::predict::predict_largest;
use super::runs::{human, Family, LossKind, Run};
use super::study::{
    chinchilla_law, compare_with_baselines, compute_law, params_law, Comparison, ComputeLaw,
    StudyOptions, Verdict,
};
use crate::error::Error;

/// The paper's loss-vs-compute slope on French (Chatelain et al. 2021).
pub const PAPER_SLOPE: f64 = -0.041;
/// Kaplan et al. 2020's loss-vs-compute slope (`α_C ≈ 0.050`).
pub const KAPLAN_SLOPE: f64 = -0.050;

/// Report settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    /// Fits and bootstrap.
    pub study: StudyOptions,
    /// Draw figures (ignored without feature `plot`).
    pub figures: bool,
    /// Fit Chinchilla's `L(N, D)` on the baselines (slower).
    pub chinchilla: bool,
    /// Points per run for Chinchilla's fit.
    pub chinchilla_points_per_run: usize,
    /// How many of the largest baselines to hold out and predict.
    pub holdout: usize,
    /// Title of the report.
    pub title: String,
    /// The command that produced the data and the report (printed in the report).
    pub command: Option<String>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            study: StudyOptions::default(),
            figures: true,
            chinchilla: true,
            chinchilla_points_per_run: 8,
            holdout: 1,
            title: "Scaling-law report".into(),
            command: None,
        }
    }
}

/// One family's fit under one cost model, and its comparison with the baselines.
#[derive(Debug, Clone)]
pub struct FamilyResult {
    /// Family.
    pub family: Family,
    /// Price of frozen parameters.
    pub cost: FrozenCost,
    /// The family's own compute law (None when it could not be fitted, e.g. a single run).
    pub law: Option<ComputeLaw>,
    /// The comparison (None for the baselines themselves).
    pub comparison: Option<Comparison>,
    /// Figure stem, when drawn.
    pub figure: Option<PathBuf>,
}

/// What [`write_report`] produced.
#[derive(Debug, Clone)]
pub struct ReportOutput {
    /// The markdown text (also written to `report.md`).
    pub markdown: String,
    /// The report's path.
    pub path: PathBuf,
    /// Every figure file written (SVG and PNG).
    pub figures: Vec<PathBuf>,
    /// Per family and cost model.
    pub families: Vec<FamilyResult>,
}

fn pf_cc(law_log_scale: f64) -> String {
    let l10 = (law_log_scale - PF_DAY.ln()) / std::f64::consts::LN_10;
    if l10.abs() < 300.0 {
        format!("{:.2e}", 10f64.powf(l10))
    } else {
        format!("1e{l10:.0}")
    }
}

/// The first line of an error (candle appends a backtrace when `RUST_BACKTRACE` is set).
fn short(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", (x.exp() - 1.0) * 100.0)
}

fn fig_name(family: &Family, cost: FrozenCost) -> String {
    match (family, cost) {
        (Family::Baseline, _) => "fig1_baselines".into(),
        (Family::Doped, FrozenCost::Free) => "fig3_doped_cost0".into(),
        (Family::Doped, _) => "fig2_doped_cost2of3".into(),
        (Family::FastFood, _) => "fig6_fastfood".into(),
        (Family::BlockDiag, _) => "fig7_blockdiag".into(),
        (Family::Other(s), _) => format!(
            "fig_{}",
            s.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ),
    }
}

#[cfg(feature = "plot")]
fn draw_family(
    stem: &Path,
    title: &str,
    family_runs: &[Run],
    baselines: &[Run],
    law: Option<&ComputeLaw>,
    reference: Option<&ComputeLaw>,
) -> candle_core::Result<Vec<PathBuf>> {
    use super::plot::{loss_vs_compute, LossComputeFigure};
    let all: Vec<&Run> = family_runs.iter().chain(baselines.iter()).collect();
    let is_base = |r: &Run| r.family == Family::Baseline;
    let curves = LossComputeFigure::curves_for(&all, is_base);
    let (c_lo, c_hi) = all
        .iter()
        .flat_map(|r| r.valid_points().map(|p| p.compute))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), c| {
            (a.min(c), b.max(c))
        });
    let curve_of = |l: &ComputeLaw| -> Vec<(f64, f64)> {
        super::frontier::log_grid(c_lo, c_hi, 60)
            .into_iter()
            .map(|c| (c, l.ls.eval(c)))
            .collect()
    };
    let fig = LossComputeFigure {
        title: title.to_string(),
        curves,
        frontier: law.map(|l| {
            l.frontier
                .points
                .iter()
                .map(|p| (p.compute, p.loss))
                .collect()
        }),
        fit: law.map(|l| {
            let s = l.slope();
            (
                format!("fit L ∝ C^{:.3} [{:.3}, {:.3}]", s.estimate, s.lo, s.hi),
                curve_of(l),
            )
        }),
        band: law.map(|l| l.band(c_lo, c_hi, 40)),
        reference: reference.map(|l| {
            (
                format!("baselines' law, slope {:.3}", l.ls.slope()),
                curve_of(l),
            )
        }),
    };
    let (svg, png) = loss_vs_compute(&fig, stem)?;
    Ok(vec![svg, png])
}

/// Run the whole study on `runs` and write `report.md` (and figures) into `out_dir`. Compute is recomputed from
/// tokens with each cost model where runs know their tokens and `N` (see [`Run::with_cost`]).
pub fn write_report(
    runs: &[Run],
    out_dir: impl AsRef<Path>,
    opts: &ReportOptions,
) -> candle_core::Result<ReportOutput> {
    let out_dir = out_dir.as_ref();
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    if runs.is_empty() {
        return Err(Error::Data("report: no runs".into()).into());
    }
    let so = &opts.study;
    let price = |rs: &[Run], c: FrozenCost| -> Vec<Run> {
        rs.iter().map(|r| r.with_cost(&CostModel::new(c))).collect()
    };
    let mut families: Vec<Family> = runs.iter().map(|r| r.family.clone()).collect();
    families.sort();
    families.dedup();
    let baselines = price(
        &runs
            .iter()
            .filter(|r| r.family == Family::Baseline)
            .cloned()
            .collect::<Vec<_>>(),
        FrozenCost::TwoThirds,
    );
    let base_law = if baselines.is_empty() {
        None
    } else {
        compute_law(&baselines, so).ok()
    };
    #[allow(unused_mut)]
    let mut figures = Vec::new();
    let mut results = Vec::new();
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# {}\n", opts.title);
    if let Some(cmd) = &opts.command {
        let _ = writeln!(w, "Produced by:\n\n```bash\n{cmd}\n```\n");
    }
    let _ = writeln!(
        w,
        "Compute `C = 6·N_trainable·tokens + 6·f·N_frozen·tokens` FLOPs (f = 2/3 unless stated), shown in PF-days \
         (1 PF-day = 8.64e19 FLOPs). Frontier: lower envelope on {} log-spaced points after dropping each run's \
         points below {}·C_final. Intervals: {:.0}% percentile bootstrap over runs ({} resamples, seed {}).\n",
        so.n_grid,
        so.trim,
        so.bootstrap.level * 100.0,
        so.bootstrap.resamples,
        so.bootstrap.seed
    );

    // ---- runs table
    let _ = writeln!(w, "## Runs\n");
    let _ = writeln!(
        w,
        "| run | family | trainable N | frozen | tokens | C (PF-days, f=2/3) | final loss | loss |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---|");
    for r in runs {
        let pr = r.with_cost(&CostModel::default());
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.family,
            r.n_trainable.map(human).unwrap_or_else(|| "?".into()),
            human(r.n_frozen),
            r.final_tokens().map(human).unwrap_or_else(|| "?".into()),
            pr.last()
                .map(|p| format!("{:.3e}", p.compute / PF_DAY))
                .unwrap_or_default(),
            r.final_loss(so.final_points)
                .map(|l| format!("{l:.4}"))
                .unwrap_or_default(),
            match r.loss_kind {
                LossKind::Validation => "val",
                LossKind::Train => "train",
            }
        );
    }

    // ---- laws per family and cost
    let mut combos: Vec<(Family, FrozenCost)> = Vec::new();
    for f in &families {
        let has_frozen = runs.iter().any(|r| &r.family == f && r.n_frozen > 0.0);
        combos.push((f.clone(), FrozenCost::TwoThirds));
        if has_frozen {
            combos.push((f.clone(), FrozenCost::Free));
        }
    }
    for (fam, cost) in &combos {
        let fam_runs = price(
            &runs
                .iter()
                .filter(|r| &r.family == fam)
                .cloned()
                .collect::<Vec<_>>(),
            *cost,
        );
        let law = if fam == &Family::Baseline {
            base_law.clone()
        } else {
            compute_law(&fam_runs, so).ok()
        };
        let comparison = if fam != &Family::Baseline && !baselines.is_empty() {
            Some(compare_with_baselines(&fam_runs, &baselines, so))
        } else {
            None
        };
        #[allow(unused_mut)]
        let mut figure = None;
        #[cfg(feature = "plot")]
        if opts.figures {
            let stem = out_dir.join(fig_name(fam, *cost));
            let title = match fam {
                Family::Baseline => "Baselines: loss vs compute".to_string(),
                f if fam_runs.iter().any(|r| r.n_frozen > 0.0) => {
                    format!("{f} (frozen cost {}) vs baselines (dotted)", cost.label())
                }
                f => format!("{f} vs baselines (dotted)"),
            };
            let others: &[Run] = if fam == &Family::Baseline {
                &[]
            } else {
                &baselines
            };
            let reference = if fam == &Family::Baseline {
                None
            } else {
                base_law.as_ref()
            };
            let drawn = draw_family(&stem, &title, &fam_runs, others, law.as_ref(), reference)?;
            figures.extend(drawn);
            figure = Some(stem);
        }
        #[cfg(not(feature = "plot"))]
        let _ = fig_name(fam, *cost);
        results.push(FamilyResult {
            family: fam.clone(),
            cost: *cost,
            law,
            comparison,
            figure,
        });
    }
    #[cfg(feature = "plot")]
    if opts.figures {
        if let Some(l) = &base_law {
            let (s, p) = super::plot::residuals(
                "Baselines: residuals of the frontier fit",
                &l.residuals(),
                out_dir.join("fig_residuals"),
            )?;
            figures.push(s);
            figures.push(p);
        }
    }

    let _ = writeln!(w, "\n## Fitted compute laws `L(C) = (C_c / C)^α`\n");
    let _ = writeln!(
        w,
        "Slope = `d ln L / d ln C = −α`. Literature: **{PAPER_SLOPE}** (Chatelain et al. 2021, French), \
         **{KAPLAN_SLOPE}** (Kaplan et al. 2020, WebText2).\n"
    );
    let _ = writeln!(w, "| family | frozen cost | runs | slope (LS) [95%] | slope (Huber) [95%] | C_c (PF-days) | E + (C_c/C)^α | figure |");
    let _ = writeln!(w, "|---|---|---:|---|---|---:|---|---|");
    let mut few = false;
    for r in &results {
        let n = runs.iter().filter(|x| x.family == r.family).count();
        let cost = if runs
            .iter()
            .any(|x| x.family == r.family && x.n_frozen > 0.0)
        {
            r.cost.label()
        } else {
            "–".into()
        };
        let fig = r
            .figure
            .as_ref()
            .and_then(|s| s.file_name())
            .map(|s| format!("![]({}.svg)", s.to_string_lossy()))
            .unwrap_or_default();
        few |= n < 3;
        match &r.law {
            Some(l) => {
                let off = l
                    .offset
                    .map(|o| format!("E={:.3}, α={:.3}", o.e, o.alpha))
                    .unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.family,
                    cost,
                    n,
                    l.slope().fmt(4),
                    l.alpha_huber().map(|a| -a).fmt(4),
                    pf_cc(l.ls.log_scale),
                    off,
                    fig
                );
            }
            None => {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | (not fitted) | | | | {} |",
                    r.family, cost, n, fig
                );
            }
        }
    }

    if few {
        let _ = writeln!(
            w,
            "\nFamilies with fewer than 3 runs: their intervals come from resamples of 1–2 distinct runs and are not \
             reliable (a single run gives a zero-width interval)."
        );
    }

    // ---- L(N), Chinchilla, prediction (baselines)
    if !baselines.is_empty() {
        let _ = writeln!(w, "\n## Baselines: `L(N)`, `L(N, D)` and extrapolation\n");
        match params_law(&baselines, so) {
            Ok(p) => {
                let a = p.boot.interval(0);
                let _ = writeln!(
                    w,
                    "- `L(N) = (N_c/N)^α_N` on final losses: α_N = {} (Kaplan: 0.076), N_c = {}.",
                    a.fmt(4),
                    pf_cc(p.law.log_scale + PF_DAY.ln())
                );
            }
            Err(e) => {
                let _ = writeln!(w, "- `L(N)`: not fitted ({}).", short(&e));
            }
        }
        if opts.chinchilla {
            match chinchilla_law(&baselines, so, opts.chinchilla_points_per_run) {
                Ok(c) => {
                    let l = &c.law;
                    let _ = writeln!(
                        w,
                        "- Chinchilla approach 3 `E + A/N^α + B/D^β`: E = {}, A = {:.3e}, B = {:.3e}, α = {}, β = {} \
                         (Hoffmann et al.: E=1.69, α=0.34, β=0.28).",
                        c.boot.interval(0).fmt(3),
                        l.a,
                        l.b,
                        c.boot.interval(3).fmt(3),
                        c.boot.interval(4).fmt(3)
                    );
                }
                Err(e) => {
                    let _ = writeln!(w, "- Chinchilla `L(N, D)`: not fitted ({}).", short(&e));
                }
            }
        }
        if opts.holdout > 0 {
            match predict_largest(&baselines, opts.holdout, so) {
                Ok(preds) => {
                    for p in preds {
                        let _ = writeln!(
                            w,
                            "- Held-out `{}` (N={}): actual final loss {:.4}; `L(N)` fitted on {} smaller runs \
                             predicts {} ({:+.1}%){}.",
                            p.run,
                            human(p.n_trainable),
                            p.actual,
                            p.fitted_on.len(),
                            p.from_params.fmt(4),
                            p.relative_error() * 100.0,
                            p.from_compute
                                .map(|c| format!("; the smaller runs' `L(C)` frontier law at its compute: {}", c.fmt(4)))
                                .unwrap_or_default()
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(w, "- Extrapolation: not done ({}).", short(&e));
                }
            }
        }
        if let Some(l) = &base_law {
            let res = l.residuals();
            let rms = (res.iter().map(|r| r.1 * r.1).sum::<f64>() / res.len().max(1) as f64).sqrt();
            let _ = writeln!(
                w,
                "- Frontier fit residuals: RMS {:.4} in ln L over {} points (`fig_residuals.svg`).",
                rms,
                res.len()
            );
        }
    }

    // ---- verdict
    let _ = writeln!(
        w,
        "\n## Verdict: do doped or structured models beat the baselines?\n"
    );
    let _ = writeln!(
        w,
        "Gaps are mean `ln L_family − ln L_baseline` (negative = family better), shown as % loss change, with 95% \
         intervals from resampling runs of both families. *Equal compute*: the family's frontier against the \
         baselines' `L(C)` law inside the baselines' compute range. *Equal trainable N*: each run's final loss \
         against the baselines' `L(N)` law at its trainable N (same token budget assumed). *Twins*: each run \
         against the baseline with the closest trainable N, at the largest compute both reached.\n"
    );
    let comps: Vec<&FamilyResult> = results.iter().filter(|r| r.comparison.is_some()).collect();
    if comps.is_empty() {
        let _ = writeln!(
            w,
            "No family to compare (baselines and at least one other family are needed)."
        );
    } else {
        let _ = writeln!(
            w,
            "| family | frozen cost | equal compute | verdict | equal trainable N | verdict |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|");
        for r in &comps {
            let c = r.comparison.as_ref().expect("filtered");
            let cost = if runs
                .iter()
                .any(|x| x.family == r.family && x.n_frozen > 0.0)
            {
                r.cost.label()
            } else {
                "–".into()
            };
            let iv = |i: &super::bootstrap::Interval| {
                if i.estimate.is_finite() {
                    format!("{} [{}, {}]", pct(i.estimate), pct(i.lo), pct(i.hi))
                } else {
                    "n/a".into()
                }
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} |",
                r.family,
                cost,
                iv(&c.equal_compute),
                c.equal_compute_verdict.phrase(),
                iv(&c.equal_n),
                c.equal_n_verdict.phrase()
            );
        }
        let _ = writeln!(w, "\nTwins (same trainable N, equal compute):\n");
        let _ = writeln!(
            w,
            "| run | frozen cost | baseline twin | at C (PF-days) | loss gap |"
        );
        let _ = writeln!(w, "|---|---|---|---:|---:|");
        for r in &comps {
            let frozen = runs
                .iter()
                .any(|x| x.family == r.family && x.n_frozen > 0.0);
            for t in &r.comparison.as_ref().expect("filtered").twins {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {:.3e} | {} |",
                    t.0,
                    if frozen { r.cost.label() } else { "–".into() },
                    t.1,
                    t.2 / PF_DAY,
                    pct(t.3)
                );
            }
        }
        let _ = writeln!(w, "\n**Answer.**");
        for r in &comps {
            let c = r.comparison.as_ref().expect("filtered");
            let frozen = runs
                .iter()
                .any(|x| x.family == r.family && x.n_frozen > 0.0);
            let n_runs = runs.iter().filter(|x| x.family == r.family).count();
            let _ = writeln!(
                w,
                "- {}{} ({n_runs} run{}): at equal compute it {}; at equal trainable N it {}.",
                r.family,
                if frozen {
                    format!(" (frozen cost {})", r.cost.label())
                } else {
                    String::new()
                },
                if n_runs == 1 { "" } else { "s" },
                c.equal_compute_verdict.phrase(),
                c.equal_n_verdict.phrase()
            );
        }
        let any_better = comps.iter().any(|r| {
            r.comparison
                .as_ref()
                .is_some_and(|c| c.equal_compute_verdict == Verdict::Better)
        });
        let _ = writeln!(
            w,
            "\n{} The paper's answer: no — neither doped nor structured models beat the baselines' scaling law; \
             what matters is the number of trainable parameters.",
            if any_better {
                "Here at least one family beats the baselines at equal compute, which *disagrees* with the paper for that family."
            } else {
                "Here no family beats the baselines at equal compute, in line with the paper."
            }
        );
    }
    let _ = writeln!(
        w,
        "\n*Caveats*: a few runs make wide intervals; the paper fitted runs up to ~10^2 PF-days, and small, short \
         CPU runs sit in the early, steep part of training where the frontier is shaped by learning-rate schedules \
         and warm-up as much as by model size. Read exponents here as a consistency check of the tooling, not as a \
         measurement comparable to the literature's."
    );
    let path = out_dir.join("report.md");
    std::fs::write(&path, &md).map_err(|e| Error::io(&path, e))?;
    Ok(ReportOutput {
        markdown: md,
        path,
        figures,
        families: results,
    })
}
