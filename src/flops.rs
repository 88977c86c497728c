//! Compute accounting, in one place: how many floating-point operations a training run costs. The model's
//! [`crate::model::GptConfig::flops_per_token`], the training loop's logs and the scaling fits all count with it.
//!
//! Kaplan et al. (2020) count `C ≈ 6·N·B·S` FLOPs for training a decoder with `N` trainable non-embedding parameters
//! on `B·S` tokens (batch `B`, `S` steps, or `B` tokens per step): 2 FLOPs per parameter per token in the forward
//! pass, 4 in the backward pass (gradient with respect to the activations *and* to the weights). A frozen parameter
//! still costs its forward pass and the backward pass through it (the activation gradient) but no weight gradient:
//! 4 FLOPs per token, that is 2/3 of a trainable one — Chatelain et al.'s accounting of "doped" models. A free random
//! projection (e.g. optical hardware) costs nothing: factor 0.
//!
//! ```
//! use candle_structured::flops::{CostModel, FrozenCost, PF_DAY};
//! let cost = CostModel::new(FrozenCost::TwoThirds);
//! // 1M trainable + 3M frozen parameters on 10M tokens:
//! let c = cost.flops(1e6, 3e6, 1e7);
//! assert_eq!(c, 6.0 * 1e6 * 1e7 + 4.0 * 3e6 * 1e7);
//! assert!((cost.pf_days(1e6, 3e6, 1e7) - c / PF_DAY).abs() < 1e-18);
//! ```

/// One PF-day in FLOPs: 10^15 FLOP/s for 86 400 s = 8.64·10^19.
pub const PF_DAY: f64 = 1e15 * 86_400.0;

/// FLOPs per trainable parameter per token (forward 2 + backward 4).
pub const TRAINABLE_FLOPS_PER_TOKEN: f64 = 6.0;

/// What a frozen (non-trained) parameter costs, relative to a trainable one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FrozenCost {
    /// Counted like a trainable parameter (6 FLOPs per token): frozen weights as a plain matrix multiply on hardware
    /// that does not skip the weight gradient.
    Full,
    /// The paper's default: forward and activation-gradient passes, no weight gradient: 4 FLOPs per token (2/3).
    TwoThirds,
    /// Free random projections (e.g. an optical co-processor): 0 FLOPs.
    Free,
    /// Any factor `f` relative to a trainable parameter: `6·f` FLOPs per token.
    Factor(f64),
}

impl FrozenCost {
    /// The factor relative to a trainable parameter (1, 2/3, 0 or the custom value).
    pub fn factor(&self) -> f64 {
        match *self {
            FrozenCost::Full => 1.0,
            FrozenCost::TwoThirds => 2.0 / 3.0,
            FrozenCost::Free => 0.0,
            FrozenCost::Factor(f) => f,
        }
    }

    /// FLOPs per frozen parameter per token: `6 · factor` (4 for [`FrozenCost::TwoThirds`]).
    pub fn flops_per_token(&self) -> f64 {
        match *self {
            // Exact constants, not 6·(2/3), so hand-computed checks are bit-exact.
            FrozenCost::Full => 6.0,
            FrozenCost::TwoThirds => 4.0,
            FrozenCost::Free => 0.0,
            FrozenCost::Factor(f) => TRAINABLE_FLOPS_PER_TOKEN * f,
        }
    }

    /// A short label for figures and reports: `"2/3"`, `"0"`, `"1"`, or the factor.
    pub fn label(&self) -> String {
        match *self {
            FrozenCost::Full => "1".into(),
            FrozenCost::TwoThirds => "2/3".into(),
            FrozenCost::Free => "0".into(),
            FrozenCost::Factor(f) => format!("{f}"),
        }
    }
}

/// The compute model `C = (6·N_trainable + 6·f·N_frozen) · tokens`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Cost of a frozen parameter.
    pub frozen: FrozenCost,
}

impl Default for CostModel {
    /// The paper's accounting: frozen parameters at 2/3.
    fn default() -> Self {
        CostModel {
            frozen: FrozenCost::TwoThirds,
        }
    }
}

impl CostModel {
    /// A cost model with the given price of frozen parameters.
    pub fn new(frozen: FrozenCost) -> Self {
        CostModel { frozen }
    }

    /// FLOPs per token: `6·N_trainable + 6·f·N_frozen`.
    pub fn flops_per_token(&self, n_trainable: f64, n_frozen: f64) -> f64 {
        TRAINABLE_FLOPS_PER_TOKEN * n_trainable + self.frozen.flops_per_token() * n_frozen
    }

    /// Training FLOPs after `tokens` tokens (`tokens = B·S`, batch size in tokens times steps).
    pub fn flops(&self, n_trainable: f64, n_frozen: f64, tokens: f64) -> f64 {
        self.flops_per_token(n_trainable, n_frozen) * tokens
    }

    /// Training FLOPs for `steps` steps of `batch_tokens` tokens each (`C = 6·N·B·S` plus the frozen term).
    pub fn flops_steps(
        &self,
        n_trainable: f64,
        n_frozen: f64,
        batch_tokens: f64,
        steps: f64,
    ) -> f64 {
        self.flops(n_trainable, n_frozen, batch_tokens * steps)
    }

    /// Training compute in PF-days.
    pub fn pf_days(&self, n_trainable: f64, n_frozen: f64, tokens: f64) -> f64 {
        flops_to_pf_days(self.flops(n_trainable, n_frozen, tokens))
    }
}

/// FLOPs → PF-days (divide by [`PF_DAY`]).
pub fn flops_to_pf_days(flops: f64) -> f64 {
    flops / PF_DAY
}

/// PF-days → FLOPs.
pub fn pf_days_to_flops(pf_days: f64) -> f64 {
    pf_days * PF_DAY
}

/// Training compute `C = 6 · N · tokens` in FLOPs, with `N` the trainable non-embedding parameters (Kaplan et al.
/// 2020). Frozen parameters are deliberately left out: callers record them separately so that a cost factor can be
/// applied later ([`CostModel`]).
pub fn training_flops(n_trainable_non_embedding: usize, tokens: u64) -> f64 {
    TRAINABLE_FLOPS_PER_TOKEN * n_trainable_non_embedding as f64 * tokens as f64
}

/// Model FLOPs per training token for the utilisation figure (MFU; the convention of PaLM and nanoGPT):
/// [`TRAINABLE_FLOPS_PER_TOKEN`] per trainable non-embedding parameter and per weight of the language-model head
/// (`head_weights`, vocabulary × width), 4 per frozen parameter ([`FrozenCost::TwoThirds`]: forward, and the
/// backward to the layer's input), and 12 per unit of `attention` = Σ over attention layers of `d·T` (the scores
/// and their product with the values, forward and backward, `T` the sequence length).
pub fn mfu_flops_per_token(
    n_trainable_non_embedding: usize,
    n_frozen: usize,
    head_weights: usize,
    attention: usize,
) -> f64 {
    TRAINABLE_FLOPS_PER_TOKEN * (n_trainable_non_embedding + head_weights) as f64
        + FrozenCost::TwoThirds.flops_per_token() * n_frozen as f64
        + 12.0 * attention as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_against_hand_computations() {
        // 1000 trainable, 300 frozen, a 50 × 8 head, 2 attention layers of d = 8 over T = 16.
        let mfu = mfu_flops_per_token(1000, 300, 50 * 8, 2 * 8 * 16);
        assert_eq!(mfu, 6.0 * 1000.0 + 6.0 * 400.0 + 4.0 * 300.0 + 12.0 * 256.0);
        assert_eq!(training_flops(1000, 10), 60_000.0);
        assert_eq!(flops_to_pf_days(PF_DAY), 1.0);
        assert_eq!(pf_days_to_flops(2.0), 2.0 * PF_DAY);
    }
}
