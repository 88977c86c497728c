//! The report's figures (feature `plot`): the paper's figures 1, 2, 3, 6, 7 — one per family and cost model, the
//! family's curves solid over the baselines' dotted ones, with its frontier, fit and band — and the residuals of the
//! baselines' frontier fit. A table of single-point runs has no curve to draw.

use std::path::{Path, PathBuf};

use super::analysis::{Analysis, FamilyResult};
use super::cost::{CostModel, FrozenCost};
use super::frontier::log_grid;
use super::plot::{loss_vs_compute, residuals, LossComputeFigure};
use super::runs::{Family, Run};
use super::study::ComputeLaw;

/// The file stem of a family's figure, named after the paper's figures.
pub fn fig_name(family: &Family, cost: FrozenCost) -> String {
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

fn draw_family(
    stem: &Path,
    title: &str,
    family_runs: &[Run],
    baselines: &[Run],
    law: Option<&ComputeLaw>,
    reference: Option<&ComputeLaw>,
) -> candle_core::Result<Vec<PathBuf>> {
    let all: Vec<&Run> = family_runs.iter().chain(baselines.iter()).collect();
    let curves = LossComputeFigure::curves_for(&all, |r| r.family == Family::Baseline);
    let (c_lo, c_hi) = all
        .iter()
        .flat_map(|r| r.valid_points().map(|p| p.compute))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), c| {
            (a.min(c), b.max(c))
        });
    let curve_of = |l: &ComputeLaw| -> Vec<(f64, f64)> {
        log_grid(c_lo, c_hi, 60)
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

fn draw_one(
    a: &Analysis,
    r: &FamilyResult,
    out_dir: &Path,
) -> candle_core::Result<(PathBuf, Vec<PathBuf>)> {
    let base = r.family == Family::Baseline;
    let fam_runs: Vec<Run> = a
        .runs
        .iter()
        .filter(|x| x.family == r.family)
        .map(|x| x.with_cost(&CostModel::new(r.cost)))
        .collect();
    let title = match &r.family {
        Family::Baseline => "Baselines: loss vs compute".to_string(),
        f if r.frozen => format!("{f} (frozen cost {}) vs baselines (dotted)", r.cost.label()),
        f => format!("{f} vs baselines (dotted)"),
    };
    let (others, reference): (&[Run], _) = if base {
        (&[], None)
    } else {
        (a.baselines.as_slice(), a.base_law.as_ref())
    };
    let stem = out_dir.join(fig_name(&r.family, r.cost));
    let files = draw_family(&stem, &title, &fam_runs, others, r.law.as_ref(), reference)?;
    Ok((stem, files))
}

/// Draw every figure that applies into `out_dir`, record each family's figure stem in `a.families`, and return the
/// files written (SVG and PNG). Nothing is drawn for a table of single-point runs.
pub fn draw_figures(a: &mut Analysis, out_dir: &Path) -> candle_core::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if a.table {
        return Ok(files);
    }
    for i in 0..a.families.len() {
        let (stem, drawn) = draw_one(a, &a.families[i], out_dir)?;
        files.extend(drawn);
        a.families[i].figure = Some(stem);
    }
    if let Some(l) = &a.base_law {
        let (s, p) = residuals(
            "Baselines: residuals of the frontier fit",
            &l.residuals(),
            out_dir.join("fig_residuals"),
        )?;
        files.push(s);
        files.push(p);
    }
    Ok(files)
}
