//! Pluggable linear layers: a dense `candle_nn::Linear` with seeded initialisation, or an [`AdaptiveFastFood`].

use super::fastfood::{adaptive_fastfood, AdaptiveFastFood};
use super::init::{get_or_init, kaiming_normal, linear_bias, SeededRng};
use crate::params::{CountParams, ParamCounts};
use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};

/// A `candle_nn::Linear` (`y = x·Wᵀ + b`, `weight` `(out_dim, in_dim)`, `bias` `(out_dim,)`, the same names and
/// layout as [`candle_nn::linear()`], so checkpoints are interchangeable) whose fresh weights are drawn from `seed`
/// with candle's default distributions: `W ~ N(0, 2 / in_dim)` (Kaiming normal) and `b ~ U(±1/√in_dim)`.
///
/// ```
/// use candle_core::{DType, Device, Tensor, Module};
/// use candle_nn::{VarBuilder, VarMap};
/// let vm = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
/// let lin = candle_structured::seeded_linear(16, 8, 42, vb.pp("fc"))?;
/// let y = lin.forward(&Tensor::ones((3, 16), DType::F32, &Device::Cpu)?)?;
/// assert_eq!(y.dims(), &[3, 8]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn seeded_linear(
    in_dim: usize,
    out_dim: usize,
    seed: u64,
    vb: VarBuilder,
) -> Result<candle_nn::Linear> {
    let mut rng = SeededRng::new(seed, "linear");
    let w = get_or_init(&vb, (out_dim, in_dim), "weight", || {
        kaiming_normal(&mut rng, out_dim * in_dim, in_dim)
    })?;
    let b = get_or_init(&vb, out_dim, "bias", || {
        linear_bias(&mut rng, out_dim, in_dim)
    })?;
    Ok(candle_nn::Linear::new(w, Some(b)))
}

/// Which kind of linear layer a [`Projection`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum LinearKind {
    /// A dense `candle_nn::Linear` ([`seeded_linear`]).
    Dense,
    /// An [`AdaptiveFastFood`] (3·n·k trainable diagonal entries plus the bias).
    FastFood,
}

/// A linear map `(…, in_dim) → (…, out_dim)` with a bias, dense or structured.
#[derive(Debug, Clone)]
pub enum Projection {
    /// Dense weight matrix.
    Dense(candle_nn::Linear),
    /// Adaptive FastFood.
    FastFood(AdaptiveFastFood),
}

/// Builds a [`Projection`] of the given kind; `seed` draws the initial values (and FastFood's permutations).
pub fn projection(
    in_dim: usize,
    out_dim: usize,
    kind: LinearKind,
    seed: u64,
    vb: VarBuilder,
) -> Result<Projection> {
    Ok(match kind {
        LinearKind::Dense => Projection::Dense(seeded_linear(in_dim, out_dim, seed, vb)?),
        LinearKind::FastFood => Projection::FastFood(adaptive_fastfood(in_dim, out_dim, seed, vb)?),
    })
}

impl Module for Projection {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Projection::Dense(l) => crate::ops::linear(xs, l.weight(), l.bias()),
            Projection::FastFood(f) => f.forward(xs),
        }
    }
}

impl CountParams for Projection {
    fn param_counts(&self) -> ParamCounts {
        match self {
            Projection::Dense(l) => l.param_counts(),
            Projection::FastFood(f) => f.param_counts(),
        }
    }
}
