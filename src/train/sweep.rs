//! The runs of a scaling study: which preset, seed and token budget each run gets.
//!
//! [`default_sweep`] is the CPU study of `examples/scaling_sweep.rs`: baselines at several sizes (some with a second
//! seed, so that the bootstrap over runs has something to resample), doped twins, and FastFood and block-Hadamard
//! models. Budgets grow with size, so that each larger baseline trains long enough to overtake the smaller ones
//! inside the sweep, and no budget exceeds one pass over the training split of `fr-debian-large` (10.29M tokens).

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepRun {
    /// Run name and folder name: the preset, then `-s<seed>`.
    pub name: String,
    /// Preset name (see [`crate::model::presets`]).
    pub preset: String,
    /// Seed of the weights, the data order and dropout.
    pub seed: u64,
    /// Training tokens (the preset's schedule is rescaled to it).
    pub tokens: u64,
}

impl SweepRun {
    /// A run of `preset` with `seed` on `tokens` tokens, named `<preset>-s<seed>`.
    pub fn new(preset: &str, seed: u64, tokens: u64) -> Self {
        SweepRun {
            name: format!("{preset}-s{seed}"),
            preset: preset.to_string(),
            seed,
            tokens,
        }
    }
}

const M: u64 = 1 << 20;
/// 9,728 steps of 4 × 256 tokens (9.96M): the largest budget in whole checkpoint intervals under one pass over the
/// training split of `fr-debian-large` (10.29M tokens).
const PASS: u64 = 9728 * 1024;

/// The default CPU study, in the order it is trained: one seed of every baseline (the law needs them), the doped
/// twins, the second seeds of the three smallest baselines, FastFood and block-Hadamard models, then the second
/// seeds of the three largest baselines (the two seeds of xsmall-cpu ended 5 % apart in final loss, so a size's
/// place on the frontier needs more than one draw).
///
/// The baselines span 25K to 1.2M trainable non-embedding parameters (1.7 decades), at six sizes. The four narrow
/// ones reach or near their compute-optimal token count inside 5M tokens (Chinchilla's 20 tokens per parameter is
/// 0.5M tokens at 25K, 4.5M at 224K, 7.9M at 397K); the two Table 1 twins get a whole pass (17 and 8 tokens per
/// parameter), without which they stop before overtaking the narrow ones (xxsmall-cpu ended above d96x2-cpu at
/// 4.2M tokens: see `docs/scaling/superseded/`).
pub fn default_sweep() -> Vec<SweepRun> {
    let base = [
        ("d32x2-cpu", 5 * M),
        ("d64x2-cpu", 5 * M),
        ("d96x2-cpu", 5 * M),
        ("d128x2-cpu", 5 * M),
        ("xxsmall-cpu", PASS),
        ("xsmall-cpu", PASS),
    ];
    let mut out: Vec<SweepRun> = base.iter().map(|(p, t)| SweepRun::new(p, 0, *t)).collect();
    for (p, t) in [
        ("doped-d64x3-cpu", 5 * M),
        ("doped-d96x3-cpu", 5 * M),
        ("doped-xsmall-cpu", PASS),
    ] {
        out.push(SweepRun::new(p, 0, t));
    }
    for (p, t) in &base[..3] {
        out.push(SweepRun::new(p, 1, *t));
    }
    for (p, t) in [
        ("fastfood-6x160-cpu", 3 * M),
        ("fastfood-cpu", 3 * M),
        ("blockdiag-d64x2-cpu", 5 * M),
        ("blockdiag-6x160-cpu", 3 * M),
    ] {
        out.push(SweepRun::new(p, 0, t));
    }
    for (p, t) in &base[3..] {
        out.push(SweepRun::new(p, 1, *t));
    }
    out
}

/// A miniature of the study for tests and CI: three tiny baselines, a doped twin, FastFood and block-Hadamard, a
/// few steps of 4 x 128 tokens each.
pub fn quick_sweep() -> Vec<SweepRun> {
    [
        "d32x2-cpu",
        "d64x2-cpu",
        "d96x2-cpu",
        "doped-d64x3-cpu",
        "fastfood-6x160-cpu",
        "blockdiag-d64x2-cpu",
    ]
    .iter()
    .map(|p| SweepRun::new(p, 0, 120 * 4 * 128))
    .collect()
}
