//! The [`Analysis`] as markdown, one small function per section of the report, and a plain-text summary of the
//! acceptance figures for the terminal ([`summary`]). Nothing here fits anything: every number comes from the
//! analysis.

use std::fmt::Write as _;

use super::analysis::{Analysis, FamilyResult, FrontierFit};
use super::bootstrap::Interval;
use super::cost::{CostModel, PF_DAY};
use super::report::{ReportOptions, KAPLAN_SLOPE, PAPER_SLOPE};
use super::runs::{human, LossKind};
use super::study::{Comparison, Verdict};

/// Most residual rows printed (evenly thinned); the figure `fig_residuals` shows them all.
const RESIDUAL_ROWS: usize = 12;

fn pf_cc(law_log_scale: f64) -> String {
    let l10 = (law_log_scale - PF_DAY.ln()) / std::f64::consts::LN_10;
    if l10.abs() < 300.0 {
        format!("{:.2e}", 10f64.powf(l10))
    } else {
        format!("1e{l10:.0}")
    }
}

fn pf(c: f64) -> String {
    format!("{:.3e}", c / PF_DAY)
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", (x.exp() - 1.0) * 100.0)
}

/// A log-loss gap as `+1.2% [−0.3%, +2.5%]`.
fn gap(i: &Interval) -> String {
    if i.estimate.is_finite() {
        format!("{} [{}, {}]", pct(i.estimate), pct(i.lo), pct(i.hi))
    } else {
        "n/a".into()
    }
}

fn cost_label(r: &FamilyResult) -> String {
    if r.frozen {
        r.cost.label()
    } else {
        "–".into()
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Title, command and conventions.
pub fn header(w: &mut String, a: &Analysis, opts: &ReportOptions) {
    let so = &opts.study;
    let _ = writeln!(w, "# {}\n", opts.title);
    if let Some(cmd) = &opts.command {
        let _ = writeln!(w, "Produced by:\n\n```bash\n{cmd}\n```\n");
    }
    let _ = writeln!(
        w,
        "Compute `C = 6·N_trainable·tokens + 6·f·N_frozen·tokens` FLOPs (f = 2/3 unless stated), shown in PF-days \
         (1 PF-day = 8.64e19 FLOPs). Frontier: lower envelope{} on {} log-spaced points after dropping each run's \
         points below {}·C_final. Final loss: mean of the last {} logged points. Intervals: {:.0}% percentile \
         bootstrap over runs ({} resamples, seed {}).\n",
        if so.monotone {
            ", made non-increasing (the best loss reached with at most C: a run with a decaying schedule is at its \
             best only at its end)"
        } else {
            ""
        },
        so.n_grid,
        so.trim,
        so.final_points,
        so.bootstrap.level * 100.0,
        so.bootstrap.resamples,
        so.bootstrap.seed
    );
    if a.table {
        let _ = writeln!(
            w,
            "**A table of one row per run** (no learning curves): no compute frontier, no `L(C)` law and no \
             loss-vs-compute figure; `L(N)` uses each N's rows at its largest token count, Chinchilla's approach 3 \
             every row, and the bootstrap resamples rows.\n"
        );
    }
}

/// The runs table.
pub fn runs_table(w: &mut String, a: &Analysis, opts: &ReportOptions) {
    let _ = writeln!(w, "## Runs\n");
    let _ = writeln!(
        w,
        "| run | family | trainable N | frozen | tokens | C (PF-days, f=2/3) | final loss | loss |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---|");
    for r in &a.runs {
        let pr = r.with_cost(&CostModel::default());
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.family,
            r.n_trainable.map(human).unwrap_or_else(|| "?".into()),
            human(r.n_frozen),
            r.final_tokens().map(human).unwrap_or_else(|| "?".into()),
            pr.last().map(|p| pf(p.compute)).unwrap_or_default(),
            r.final_loss(opts.study.final_points)
                .map(|l| format!("{l:.4}"))
                .unwrap_or_default(),
            match r.loss_kind {
                LossKind::Validation => "val",
                LossKind::Train => "train",
            }
        );
    }
}

/// The compute law of every family and cost model.
pub fn compute_laws(w: &mut String, a: &Analysis) {
    if a.table {
        return;
    }
    let _ = writeln!(w, "\n## Fitted compute laws `L(C) = (C_c / C)^α`\n");
    let _ = writeln!(
        w,
        "Slope = `d ln L / d ln C = −α`. Literature: **{PAPER_SLOPE}** (Chatelain et al. 2021, French), \
         **{KAPLAN_SLOPE}** (Kaplan et al. 2020, WebText2).\n"
    );
    let _ = writeln!(w, "| family | frozen cost | runs | slope (LS) [95%] | slope (Huber) [95%] | C_c (PF-days) | E + (C_c/C)^α | figure |");
    let _ = writeln!(w, "|---|---|---:|---|---|---:|---|---|");
    for r in &a.families {
        let fig = r
            .figure
            .as_ref()
            .and_then(|s| s.file_name())
            .map(|s| format!("![]({}.svg)", s.to_string_lossy()))
            .unwrap_or_default();
        let (fam, cost, n) = (&r.family, cost_label(r), r.runs);
        match &r.law {
            Some(l) => {
                let off = l
                    .offset
                    .map(|o| format!("E={:.3}, α={:.3}", o.e, o.alpha))
                    .unwrap_or_else(|| "–".into());
                let (ls, hu) = (l.slope().fmt(4), l.alpha_huber().map(|a| -a).fmt(4));
                let cc = pf_cc(l.ls.log_scale);
                let _ = writeln!(
                    w,
                    "| {fam} | {cost} | {n} | {ls} | {hu} | {cc} | {off} | {fig} |"
                );
            }
            None => {
                let _ = writeln!(w, "| {fam} | {cost} | {n} | (not fitted) | | | | {fig} |");
            }
        }
    }
    if a.families.iter().any(|r| r.runs < 3) {
        let _ = writeln!(
            w,
            "\nFamilies with fewer than 3 runs: their intervals come from resamples of 1–2 distinct runs and are not \
             reliable (a single run gives a zero-width interval)."
        );
    }
}

/// Which baseline holds the frontier where.
fn frontier_shares(w: &mut String, f: &FrontierFit) {
    let _ = writeln!(
        w,
        "\n| baseline size (runs) | trainable N | on the frontier from C (PF-days) | to C (PF-days) | grid points |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|");
    for s in &f.shares {
        let n = s.n_trainable.map(human).unwrap_or_else(|| "?".into());
        match s.range {
            Some((lo, hi)) => {
                let _ = writeln!(
                    w,
                    "| {} | {n} | {} | {} | {} |",
                    s.runs.join(", "),
                    pf(lo),
                    pf(hi),
                    s.points
                );
            }
            None => {
                let _ = writeln!(w, "| {} | {n} | never | | 0 |", s.runs.join(", "));
            }
        }
    }
}

/// The residual table, thinned to at most [`RESIDUAL_ROWS`] rows.
fn residual_table(w: &mut String, f: &FrontierFit) {
    let n = f.residuals.len();
    let step = n.div_ceil(RESIDUAL_ROWS).max(1);
    let _ = writeln!(
        w,
        "\nResiduals (every {}{} of the {n} frontier points):\n",
        step,
        match step {
            1 => "st",
            2 => "nd",
            3 => "rd",
            _ => "th",
        }
    );
    let _ = writeln!(
        w,
        "| C (PF-days) | frontier loss | fitted | residual ln L − ln L̂ |"
    );
    let _ = writeln!(w, "|---:|---:|---:|---:|");
    for (i, r) in f.residuals.iter().enumerate() {
        if i % step == 0 || i + 1 == n {
            let _ = writeln!(
                w,
                "| {} | {:.4} | {:.4} | {:+.4} |",
                pf(r.compute),
                r.loss,
                r.fitted,
                r.residual
            );
        }
    }
}

/// The baselines' frontier: `R²`, span, residuals and which run holds it where.
pub fn frontier_section(w: &mut String, a: &Analysis) {
    let Some(f) = &a.frontier else {
        if !a.table && !a.baselines.is_empty() {
            let _ = writeln!(
                w,
                "\n## Baselines' frontier\n\nThe baselines' frontier could not be fitted."
            );
        }
        return;
    };
    let _ = writeln!(w, "\n## Baselines' frontier `L(C)`\n");
    let _ = writeln!(
        w,
        "- Least-squares fit of `ln L` on `ln C`: R² = {:.4} (in log-log space), RMS residual {:.4} in ln L over {} \
         points (`fig_residuals.svg`).",
        f.r2_loglog,
        f.rms(),
        f.residuals.len()
    );
    let _ = writeln!(
        w,
        "- The frontier spans {:.2} decades of compute. A power law (R² ≥ 0.98 over ≥ 1.5 decades): **{}**.",
        f.decades,
        yes(f.is_power_law())
    );
    let _ = writeln!(
        w,
        "- Every baseline size is on the frontier over some range of compute: **{}**.",
        yes(f.every_run_on_frontier())
    );
    frontier_shares(w, f);
    residual_table(w, f);
}

fn params_line(w: &mut String, a: &Analysis) {
    match &a.params {
        Ok(p) => {
            let _ = writeln!(
                w,
                "- `L(N) = (N_c/N)^α_N` on final losses ({} runs, {} distinct N; α_N > 0: larger is better): \
                 α_N = {} (Kaplan: 0.076), N_c = {}. The interval {} 0.",
                p.runs,
                p.distinct_n,
                p.alpha.fmt(4),
                pf_cc(p.law.law.log_scale + PF_DAY.ln()),
                if p.excludes_zero() {
                    "excludes"
                } else {
                    "contains"
                }
            );
        }
        Err(e) => {
            let _ = writeln!(w, "- `L(N)`: not fitted ({e}).");
        }
    }
}

fn chinchilla_line(w: &mut String, a: &Analysis) {
    match &a.chinchilla {
        Some(Ok(c)) => {
            let l = &c.law;
            let _ = writeln!(
                w,
                "- Chinchilla approach 3 `E + A/N^α + B/D^β`: E = {}, A = {:.3e} [{:.3e}, {:.3e}], B = {:.3e} \
                 [{:.3e}, {:.3e}], α = {}, β = {} (Hoffmann et al.: E=1.69, α=0.34, β=0.28).",
                c.boot.interval(0).fmt(3),
                l.a,
                c.boot.interval(1).lo,
                c.boot.interval(1).hi,
                l.b,
                c.boot.interval(2).lo,
                c.boot.interval(2).hi,
                c.boot.interval(3).fmt(3),
                c.boot.interval(4).fmt(3)
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(w, "- Chinchilla `L(N, D)`: not fitted ({e}).");
        }
        None => {}
    }
}

fn prediction_lines(w: &mut String, a: &Analysis) {
    match &a.predictions {
        Some(Ok(preds)) => {
            for p in preds {
                let inside = p.from_params.contains(p.actual);
                let few = if p.fitted_on.len() < 3 {
                    " (fewer than 3 runs fitted: no scatter to learn from, the interval understates the uncertainty)"
                } else {
                    ""
                };
                let _ = writeln!(
                    w,
                    "- Held-out `{}` (N={}): actual final loss {:.4}; `L(N)` fitted without it on {} smaller runs \
                     predicts {} ({:+.1}%): the truth is **{}** the 95% interval{few}{}.",
                    p.run,
                    human(p.n_trainable),
                    p.actual,
                    p.fitted_on.len(),
                    p.from_params.fmt(4),
                    p.relative_error() * 100.0,
                    if inside { "inside" } else { "outside" },
                    p.from_compute
                        .map(|c| format!(
                            "; the smaller runs' `L(C)` frontier law at its compute: {}",
                            c.fmt(4)
                        ))
                        .unwrap_or_default()
                );
            }
        }
        Some(Err(e)) => {
            let _ = writeln!(w, "- Extrapolation: not done ({e}).");
        }
        None => {}
    }
}

/// `L(N)`, Chinchilla's `L(N, D)` and the held-out prediction.
pub fn baselines_section(w: &mut String, a: &Analysis) {
    if a.baselines.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n## Baselines: `L(N)`, `L(N, D)` and extrapolation\n");
    params_line(w, a);
    chinchilla_line(w, a);
    prediction_lines(w, a);
}

fn verdict_table(w: &mut String, a: &Analysis) {
    let _ = writeln!(
        w,
        "| family | frozen cost | runs | equal compute | verdict | equal trainable N | verdict |"
    );
    let _ = writeln!(w, "|---|---|---:|---|---|---|---|");
    for (r, c) in a.comparisons() {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.family,
            cost_label(r),
            r.runs,
            gap(&c.equal_compute),
            c.equal_compute_verdict.phrase(),
            gap(&c.equal_n),
            c.equal_n_verdict.phrase()
        );
    }
}

fn twins_table(w: &mut String, a: &Analysis) {
    let _ = writeln!(w, "\nTwins (same trainable N, equal compute):\n");
    let _ = writeln!(
        w,
        "| run | frozen cost | baseline twin | at C (PF-days) | loss gap |"
    );
    let _ = writeln!(w, "|---|---|---|---:|---:|");
    for (r, c) in a.comparisons() {
        for t in &c.twins {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                t.0,
                cost_label(r),
                t.1,
                pf(t.2),
                pct(t.3)
            );
        }
    }
}

fn answer(w: &mut String, a: &Analysis) {
    let _ = writeln!(w, "\n**Answer.**");
    for (r, c) in a.comparisons() {
        let _ = writeln!(
            w,
            "- {}{} ({} run{}): at equal compute it {}; at equal trainable N it {}.",
            r.family,
            if r.frozen {
                format!(" (frozen cost {})", r.cost.label())
            } else {
                String::new()
            },
            r.runs,
            if r.runs == 1 { "" } else { "s" },
            c.equal_compute_verdict.phrase(),
            c.equal_n_verdict.phrase()
        );
    }
}

/// Every family against the baselines at equal compute and at equal trainable `N`.
pub fn verdicts(w: &mut String, a: &Analysis) {
    let _ = writeln!(
        w,
        "\n## Verdict: do doped or structured models beat the baselines?\n"
    );
    let _ = writeln!(
        w,
        "Gaps are mean `ln L_family − ln L_baseline` (negative = family better), shown as % loss change, with 95% \
         intervals from resampling runs (seeds) of both families. *Equal compute*: the family's frontier against the \
         baselines' `L(C)` law inside the baselines' compute range. *Equal trainable N*: each run's final loss \
         against the baselines' `L(N)` law at its trainable N (same token budget assumed). *Twins*: each run \
         against the baseline with the closest trainable N, at the largest compute both reached.\n"
    );
    if a.comparisons().next().is_none() {
        let _ = writeln!(
            w,
            "No family to compare (baselines and at least one other family are needed)."
        );
        return;
    }
    verdict_table(w, a);
    twins_table(w, a);
    answer(w, a);
}

fn agreement_slope(w: &mut String, a: &Analysis) {
    let (Some(l), Some(f)) = (&a.base_law, &a.frontier) else {
        let _ = writeln!(
            w,
            "- Slope of `L(C)`: not measured here (no baselines' frontier), so no comparison with {PAPER_SLOPE}."
        );
        return;
    };
    let s = l.slope();
    let rel = if s.contains(PAPER_SLOPE) {
        "its interval contains the paper's −0.041: **agrees**".to_string()
    } else if s.hi < PAPER_SLOPE {
        "steeper than the paper's −0.041, which lies outside its interval: **disagrees**"
            .to_string()
    } else {
        "shallower than the paper's −0.041, which lies outside its interval: **disagrees**"
            .to_string()
    };
    let caveat = if f.is_power_law() {
        String::new()
    } else {
        format!(
            " The frontier is not a clean power law here (R² {:.3} over {:.2} decades), so this comparison is weak.",
            f.r2_loglog, f.decades
        )
    };
    let _ = writeln!(
        w,
        "- Slope of the baselines' `L(C)`: {} — {rel}.{caveat}",
        s.fmt(4)
    );
}

/// One line per family: on the baselines' `L(N)` law at equal trainable `N` or not (the cost model does not enter).
fn agreement_equal_n(w: &mut String, a: &Analysis) {
    let mut seen = Vec::new();
    for (r, c) in a.comparisons() {
        if seen.contains(&&r.family) {
            continue;
        }
        seen.push(&r.family);
        let (how, agree) = match c.equal_n_verdict {
            Verdict::NoSignificantDifference => ("sits on the baselines' `L(N)` law", "**agrees**"),
            Verdict::Better => ("lies below the baselines' `L(N)` law", "**disagrees**"),
            Verdict::Worse => ("lies above the baselines' `L(N)` law", "**disagrees**"),
            Verdict::NotComparable => (
                "cannot be placed against the baselines' `L(N)` law",
                "no test",
            ),
        };
        let _ = writeln!(
            w,
            "- {} at equal trainable N {how} (gap {}, {} run{}): {agree}.",
            r.family,
            gap(&c.equal_n),
            r.runs,
            if r.runs == 1 { "" } else { "s" }
        );
    }
}

fn agreement_equal_compute(w: &mut String, a: &Analysis) {
    let better: Vec<String> = a
        .comparisons()
        .filter(|(_, c)| c.equal_compute_verdict == Verdict::Better)
        .map(|(r, _)| format!("{} (cost {})", r.family, cost_label(r)))
        .collect();
    if a.comparisons().next().is_none() {
        let _ = writeln!(
            w,
            "- No doped or structured family here: the paper's verdicts are not tested."
        );
        return;
    }
    let comparable = a
        .comparisons()
        .any(|(_, c)| c.equal_compute_verdict != Verdict::NotComparable);
    if !comparable {
        let _ = writeln!(w, "- At equal compute: no family could be compared.");
    } else if better.is_empty() {
        let _ = writeln!(
            w,
            "- At equal compute no family beats the baselines: **agrees** with the paper."
        );
    } else {
        let _ = writeln!(
            w,
            "- At equal compute {} beat{} the baselines: **disagrees** with the paper for {}.",
            better.join(", "),
            if better.len() == 1 { "s" } else { "" },
            if better.len() == 1 { "it" } else { "them" }
        );
    }
}

/// Where the numbers agree with the paper and where they do not, derived from the numbers alone.
pub fn agreement(w: &mut String, a: &Analysis) {
    let _ = writeln!(w, "\n## Agreement with the paper\n");
    let _ = writeln!(
        w,
        "The paper (Chatelain et al. 2021) finds a loss-vs-compute slope of {PAPER_SLOPE} on French, and doped and \
         structured models on the baselines' law of equal trainable N — neither beats the baselines. Here:\n"
    );
    agreement_slope(w, a);
    if let Ok(p) = &a.params {
        let sense = if p.alpha.lo > 0.0 {
            "larger baselines reach lower losses, as scaling laws assume"
        } else if p.alpha.hi < 0.0 {
            "larger baselines end *higher*: they are undertrained for their budget, and no `L(N)` law is measured"
        } else {
            "the size effect is not resolved by these runs"
        };
        let _ = writeln!(w, "- `L(N)`: α_N = {}: {sense}.", p.alpha.fmt(4));
    }
    agreement_equal_n(w, a);
    agreement_equal_compute(w, a);
    let _ = writeln!(
        w,
        "\nThe paper's answer: no — neither doped nor structured models beat the baselines' scaling law; what matters \
         is the number of trainable parameters."
    );
}

/// Closing caveats.
pub fn caveats(w: &mut String) {
    let _ = writeln!(
        w,
        "\n*Caveats*: a few runs make wide intervals; the paper fitted runs up to ~10^2 PF-days, and small, short \
         CPU runs sit in the early, steep part of training where the frontier is shaped by learning-rate schedules \
         and warm-up as much as by model size. Read exponents here as a consistency check of the tooling, not as a \
         measurement comparable to the literature's."
    );
}

/// The whole report.
pub fn markdown(a: &Analysis, opts: &ReportOptions) -> String {
    let mut w = String::new();
    header(&mut w, a, opts);
    runs_table(&mut w, a, opts);
    compute_laws(&mut w, a);
    frontier_section(&mut w, a);
    baselines_section(&mut w, a);
    verdicts(&mut w, a);
    agreement(&mut w, a);
    caveats(&mut w);
    w
}

fn summary_verdict(w: &mut String, r: &FamilyResult, c: &Comparison) {
    let _ = writeln!(
        w,
        "  {:<10} cost {:<3} equal C: {} ({}); equal N: {} ({})",
        r.family.to_string(),
        cost_label(r),
        gap(&c.equal_compute),
        c.equal_compute_verdict.phrase(),
        gap(&c.equal_n),
        c.equal_n_verdict.phrase()
    );
}

/// The acceptance figures in a few plain lines (the example prints them on stderr).
pub fn summary(a: &Analysis) -> String {
    let mut w = String::new();
    if let (Some(l), Some(f)) = (&a.base_law, &a.frontier) {
        let _ = writeln!(
            &mut w,
            "frontier L(C): slope {}, R² (log-log) {:.4}, RMS residual {:.4}, {:.2} decades; power law (R² ≥ 0.98, ≥ 1.5 decades): {}",
            l.slope().fmt(4),
            f.r2_loglog,
            f.rms(),
            f.decades,
            yes(f.is_power_law())
        );
        for s in &f.shares {
            let range = s
                .range
                .map(|(lo, hi)| format!("{} .. {} PF-days", pf(lo), pf(hi)))
                .unwrap_or_else(|| "never".into());
            let n = s.n_trainable.map(human).unwrap_or_else(|| "?".into());
            let _ = writeln!(
                &mut w,
                "  on the frontier: N={n:<8} {range} ({})",
                s.runs.join(", ")
            );
        }
    }
    match &a.params {
        Ok(p) => {
            let _ = writeln!(
                &mut w,
                "L(N): alpha_N {} (excludes 0: {})",
                p.alpha.fmt(4),
                yes(p.excludes_zero())
            );
        }
        Err(e) => {
            let _ = writeln!(&mut w, "L(N): not fitted ({e})");
        }
    }
    if let Some(Ok(c)) = &a.chinchilla {
        let _ = writeln!(
            &mut w,
            "Chinchilla: E {}, alpha {}, beta {}",
            c.boot.interval(0).fmt(3),
            c.boot.interval(3).fmt(3),
            c.boot.interval(4).fmt(3)
        );
    }
    if let Some(Ok(preds)) = &a.predictions {
        for p in preds {
            let _ = writeln!(
                &mut w,
                "held-out {}: actual {:.4}, predicted {}: {}",
                p.run,
                p.actual,
                p.from_params.fmt(4),
                if p.from_params.contains(p.actual) {
                    "inside"
                } else {
                    "outside"
                }
            );
        }
    }
    for (r, c) in a.comparisons() {
        summary_verdict(&mut w, r, c);
    }
    w
}
