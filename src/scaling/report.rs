//! The study as a markdown report (and, with feature `plot`, its figures): fitted exponents with intervals, the
//! literature's values beside them, extrapolation checks, and the verdict on the paper's question — do doped or
//! structured models beat baselines with the same number of trainable parameters at equal compute?
//!
//! [`write_report`] does everything `examples/scaling_report.rs` prints, in three parts: [`super::analysis`] prices
//! the runs with each cost model, fits every family and compares it with the baselines (plain data);
//! `figures` (feature `plot`) draws figures 1, 2, 3, 6, 7 and the residuals; [`super::render`] writes the
//! markdown, `report.md` in the output folder.

use std::path::{Path, PathBuf};

use super::analysis::analyze;
pub use super::analysis::{Analysis, FamilyResult};
use super::render::{markdown, summary};
use super::runs::Run;
use super::study::StudyOptions;
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

/// What [`write_report`] produced.
#[derive(Debug, Clone)]
pub struct ReportOutput {
    /// The markdown text (also written to `report.md`).
    pub markdown: String,
    /// The acceptance figures in a few plain lines ([`super::render::summary`]).
    pub summary: String,
    /// The report's path.
    pub path: PathBuf,
    /// Every figure file written (SVG and PNG).
    pub figures: Vec<PathBuf>,
    /// Per family and cost model.
    pub families: Vec<FamilyResult>,
}

/// Run the whole study on `runs` and write `report.md` (and figures) into `out_dir`. Compute is recomputed from
/// tokens with each cost model where runs know their tokens and `N` (see [`Run::with_cost`]). A table of
/// single-point runs (one row per run) gets `L(N)`, Chinchilla's `L(N, D)` and the prediction, without the
/// compute frontier and figures.
pub fn write_report(
    runs: &[Run],
    out_dir: impl AsRef<Path>,
    opts: &ReportOptions,
) -> candle_core::Result<ReportOutput> {
    let out_dir = out_dir.as_ref();
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    #[allow(unused_mut)]
    let mut a = analyze(runs, opts)?;
    #[cfg(feature = "plot")]
    let figures = if opts.figures {
        super::figures::draw_figures(&mut a, out_dir)?
    } else {
        Vec::new()
    };
    #[cfg(not(feature = "plot"))]
    let figures = Vec::new();
    let md = markdown(&a, opts);
    let path = out_dir.join("report.md");
    std::fs::write(&path, &md).map_err(|e| Error::io(&path, e))?;
    Ok(ReportOutput {
        markdown: md,
        summary: summary(&a),
        path,
        figures,
        families: a.families,
    })
}
