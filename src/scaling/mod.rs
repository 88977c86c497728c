//! Scaling laws: compute accounting, the compute frontier, power-law fits with bootstrap intervals, extrapolation,
//! figures (feature `plot`) and a markdown report answering the paper's question.
//!
//! The pipeline, as `examples/scaling_report.rs` runs it:
//!
//! 1. [`runs`]: read learning curves (training-loop run folders or a CSV) into [`Run`]s.
//! 2. [`cost`]: price them, `C = 6·N_trainable·tokens + 6·f·N_frozen·tokens` with a frozen-parameter factor
//!    `f` = 2/3 (the paper) or 0 (free random projections) — [`Run::with_cost`].
//! 3. [`frontier()`]: the lower envelope of the curves on a log-spaced compute grid.
//! 4. [`fit`]: `L(C) = (C_c/C)^α` (least squares and Huber in log-log), `E + (C_c/C)^α`, `L(N) = (N_c/N)^α_N`,
//!    Chinchilla's `L(N, D) = E + A/N^α + B/D^β` (approach 3, L-BFGS from a grid).
//! 5. [`bootstrap`]: 95 % intervals by resampling runs; [`study`] ties the fits and intervals together and compares
//!    each family with the baselines at equal compute and at equal trainable `N`; [`predict`] fits the small models
//!    and predicts the large ones.
//! 6. [`analysis`]: every fit, verdict and prediction of the report as plain data; `figures` (feature `plot`, drawn
//!    with `plot`): the paper's figures in SVG and PNG; [`render`]: the markdown; [`report`]: the three together.
//!
//! ```
//! use candle_structured::scaling::{fit::{fit_power_law, Method}, frontier::frontier, runs::{Family, Run}};
//! // Three runs on the law L = (1e10 / C)^0.05, each covering one decade of compute.
//! let law = |c: f64| (1e10f64 / c).powf(0.05);
//! let runs: Vec<Run> = (0..3)
//!     .map(|i| {
//!         let c0 = 10f64.powi(12 + i);
//!         Run::from_points(format!("r{i}"), Family::Baseline, None, (0..5).map(|k| {
//!             let c = c0 * 10f64.powf(k as f64 / 4.0);
//!             (c, law(c))
//!         }))
//!     })
//!     .collect();
//! let f = frontier(&runs, 20)?;
//! let p = fit_power_law(&f.compute(), &f.loss(), Method::LeastSquares)?;
//! assert!((p.slope() + 0.05).abs() < 1e-9);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod analysis;
pub mod bootstrap;
pub mod cost;
#[cfg(feature = "plot")]
pub mod figures;
pub mod fit;
pub mod frontier;
#[cfg(feature = "plot")]
pub mod plot;
pub mod predict;
pub mod render;
pub mod report;
pub mod runs;
pub mod study;

pub use bootstrap::{bootstrap_runs, BootstrapOptions, Interval};
pub use cost::{CostModel, FrozenCost, PF_DAY};
pub use fit::{
    fit_chinchilla, fit_offset_power_law, fit_power_law, Chinchilla, Method, OffsetPowerLaw,
    PowerLaw,
};
pub use frontier::{frontier, Frontier};
pub use runs::{Family, Run};
