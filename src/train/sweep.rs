//! The runs of a scaling study: which preset, seed and token budget each run gets.
//!
//! [`default_sweep`] is the CPU study of `examples/scaling_sweep.rs`: baselines at several sizes (some with a second
//! seed, so that the bootstrap over runs has something to resample), doped twins, and FastFood and block-Hadamard
//! models. Budgets fall with size so that the smaller baselines train far enough for the larger ones to overtake
//! them inside the sweep, and no budget exceeds one pass over the training split of `fr-debian-large`.

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

/// The default CPU study, in the order it is trained: one seed of every baseline first (the law needs them), then
/// the variants, then the second seeds.
pub fn default_sweep() -> Vec<SweepRun> {
    let mut out = Vec::new();
    let base = [
        ("tiny-cpu", 6 * M),
        ("xxsmall-cpu", 5 * M),
        ("xsmall-cpu", 4 * M),
        ("small-cpu", 3 * M),
        ("medium-cpu", 2 * M),
    ];
    for (p, t) in base {
        out.push(SweepRun::new(p, 0, t));
    }
    for (p, t) in [
        ("doped-xsmall-cpu", 5 * M),
        ("doped-small-cpu", 4 * M),
        ("doped-medium-cpu", 2 * M),
        ("fastfood-cpu", 3 * M),
        ("fastfood-6x160-cpu", 3 * M),
        ("blockdiag-cpu", 3 * M),
        ("blockdiag-6x160-cpu", 3 * M),
    ] {
        out.push(SweepRun::new(p, 0, t));
    }
    for (p, t) in &base[..3] {
        out.push(SweepRun::new(p, 1, *t));
    }
    out
}

/// A miniature of the study for tests and CI: three tiny baselines, a doped twin, FastFood and block-Hadamard, a
/// few steps each.
pub fn quick_sweep() -> Vec<SweepRun> {
    [
        "tiny-cpu",
        "xxsmall-cpu",
        "xsmall-cpu",
        "doped-xsmall-cpu",
        "fastfood-6x160-cpu",
        "blockdiag-6x160-cpu",
    ]
    .iter()
    .map(|p| SweepRun::new(p, 0, 120 * 8 * 128))
    .collect()
}
