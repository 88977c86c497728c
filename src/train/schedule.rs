//! Learning-rate schedule (the compute accounting is [`crate::flops`]).

use crate::model::TrainSpec;

/// Linear warmup then cosine decay to a floor, as a function of tokens seen (GPT-3 / the paper):
///
/// * `tokens < warmup`: `lr = peak · tokens / warmup`;
/// * `warmup ≤ tokens < decay`: `lr = floor + (peak − floor) · ½ (1 + cos(π · (tokens − warmup) / (decay − warmup)))`;
/// * `tokens ≥ decay`: `lr = floor`,
///
/// with `floor = min_lr_fraction · peak` (0.1 in the paper).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Floor as a fraction of the peak.
    pub min_fraction: f64,
    /// Warmup length in tokens.
    pub warmup_tokens: u64,
    /// Tokens at which the decay reaches the floor.
    pub decay_tokens: u64,
}

impl LrSchedule {
    /// The schedule of a training recipe.
    pub fn from_spec(spec: &TrainSpec) -> Self {
        Self {
            peak: spec.lr,
            min_fraction: spec.min_lr_fraction,
            warmup_tokens: spec.warmup_tokens,
            decay_tokens: spec.decay_tokens,
        }
    }

    /// Learning rate after `tokens` training tokens.
    pub fn lr(&self, tokens: u64) -> f64 {
        let floor = self.min_fraction * self.peak;
        if tokens < self.warmup_tokens {
            return self.peak * tokens as f64 / self.warmup_tokens as f64;
        }
        if tokens >= self.decay_tokens {
            return floor;
        }
        let progress =
            (tokens - self.warmup_tokens) as f64 / (self.decay_tokens - self.warmup_tokens) as f64;
        floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
