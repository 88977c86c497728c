//! The frozen random MLP residual block ("doping", paper section 3.1).

use super::init::{kaiming_normal, tensor_from, SeededRng};
use crate::error::Error;
use crate::params::{CountParams, ParamCount, ParamCounts};
use candle_core::{Result, Tensor};
use candle_nn::{Init, Module, VarBuilder};

/// The paper's "doping" layer (Chatelain et al. 2021, section 3.1, after Reservoir Transformers, Shen et al. 2021):
/// a residual MLP block whose weights are random and never trained.
///
/// # Math
///
/// ```text
/// y = x + W2 · GELU(W1 · LN(x))        W1: (hidden, d), W2: (d, hidden), no biases
/// ```
///
/// with `hidden = 6·d` in the paper ([`FrozenRandomMlp::HIDDEN_MULTIPLE`]). `W1 ~ N(0, 2/d)` and `W2 ~ N(0, 2/hidden)`: the scale
/// `candle_nn::linear` initialises a trainable MLP with, drawn from `seed` by a value-stable generator.
///
/// # Frozen
///
/// `W1`, `W2` are plain tensors, never `Var`s: they are not registered in the `VarBuilder` (a `VarMap` never
/// sees them, so neither does the optimizer), candle keeps no gradient for them, and they stay bit-identical
/// through training. Gradients still flow through the block to its input. A checkpoint stores [`seed`] (and
/// the sizes); rebuilding with the same seed regenerates identical weights on any device. The LayerNorm is frozen
/// (gain 1, shift 0) unless `trainable_ln` is set, in which case `"ln.weight"` and `"ln.bias"` `(d,)` are taken
/// from the `VarBuilder` (initialised to ones and zeros).
///
/// # Parameters
///
/// Frozen: `2·d·hidden` (+ `2·d` with the frozen LayerNorm). Trainable: `0` (or `2·d` with a trainable
/// LayerNorm). Emulated: `2·d·hidden + 2·d`, the trainable block of the same shape.
///
/// [`seed`]: FrozenRandomMlp::seed
///
/// # Example
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use candle_structured::{frozen_random_mlp, CountParams};
/// let vm = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
/// let mlp = frozen_random_mlp(64, 6 * 64, 1234, false, vb.pp("doping"))?;
/// let y = mlp.forward(&Tensor::randn(0f32, 1., (2, 3, 64), &Device::Cpu)?)?;
/// assert_eq!(y.dims(), &[2, 3, 64]);
/// assert!(vm.all_vars().is_empty()); // nothing trainable
/// assert_eq!(mlp.param_counts().non_embedding.frozen, 2 * 64 * 384 + 2 * 64);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FrozenRandomMlp {
    d_model: usize,
    hidden: usize,
    seed: u64,
    w1: Tensor,
    w2: Tensor,
    ln_weight: Option<Tensor>,
    ln_bias: Option<Tensor>,
    ln_eps: f64,
}

/// A [`FrozenRandomMlp`] `d_model → hidden → d_model` (the paper: `hidden = 6·d_model`) with weights drawn from
/// `seed` on the `VarBuilder`'s device and dtype; `trainable_ln` makes its LayerNorm trainable.
pub fn frozen_random_mlp(
    d_model: usize,
    hidden: usize,
    seed: u64,
    trainable_ln: bool,
    vb: VarBuilder,
) -> Result<FrozenRandomMlp> {
    FrozenRandomMlp::new(d_model, hidden, seed, trainable_ln, vb)
}

impl FrozenRandomMlp {
    /// The paper's hidden width, as a multiple of `d_model` (`hidden = 6·d_model`).
    pub const HIDDEN_MULTIPLE: usize = 6;
    /// LayerNorm epsilon.
    pub const LN_EPS: f64 = 1e-5;

    /// See [`frozen_random_mlp`].
    pub fn new(
        d_model: usize,
        hidden: usize,
        seed: u64,
        trainable_ln: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if d_model == 0 || hidden == 0 {
            return Err(Error::Config(format!(
                "FrozenRandomMlp: d_model ({d_model}) and hidden ({hidden}) must be positive"
            ))
            .into());
        }
        let (w1, w2) = Self::weights(d_model, hidden, seed, vb.dtype(), vb.device())?;
        let (ln_weight, ln_bias) = if trainable_ln {
            (
                Some(vb.get_with_hints(d_model, "ln.weight", Init::Const(1.0))?),
                Some(vb.get_with_hints(d_model, "ln.bias", Init::Const(0.0))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            d_model,
            hidden,
            seed,
            w1,
            w2,
            ln_weight,
            ln_bias,
            ln_eps: Self::LN_EPS,
        })
    }

    /// The frozen weights `(W1 (hidden, d), W2 (d, hidden))` a block with this seed uses, as plain tensors.
    pub fn weights(
        d_model: usize,
        hidden: usize,
        seed: u64,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> Result<(Tensor, Tensor)> {
        let mut rng = SeededRng::new(seed, "frozen_mlp");
        let w1 = kaiming_normal(&mut rng, hidden * d_model, d_model);
        let w2 = kaiming_normal(&mut rng, d_model * hidden, hidden);
        Ok((
            tensor_from(w1, (hidden, d_model), dtype, device)?,
            tensor_from(w2, (d_model, hidden), dtype, device)?,
        ))
    }

    /// The seed the frozen weights are regenerated from.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Model width `d`.
    pub fn d_model(&self) -> usize {
        self.d_model
    }
    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.hidden
    }
    /// Whether the LayerNorm trains.
    pub fn trainable_ln(&self) -> bool {
        self.ln_weight.is_some()
    }
    /// Frozen `W1`, `(hidden, d)`.
    pub fn w1(&self) -> &Tensor {
        &self.w1
    }
    /// Frozen `W2`, `(d, hidden)`.
    pub fn w2(&self) -> &Tensor {
        &self.w2
    }
    /// The LayerNorm gain and shift when trainable.
    pub fn ln(&self) -> Option<(&Tensor, &Tensor)> {
        self.ln_weight.as_ref().zip(self.ln_bias.as_ref())
    }
}

impl Module for FrozenRandomMlp {
    /// `(…, d) → (…, d)`, any leading dimensions.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let Some((&last, lead)) = dims.split_last() else {
            return Err(Error::Config("FrozenRandomMlp: scalar input".into()).into());
        };
        if last != self.d_model {
            return Err(Error::Config(format!(
                "FrozenRandomMlp: input has last dimension {last}, expected {}",
                self.d_model
            ))
            .into());
        }
        crate::ops::check_dtype("FrozenRandomMlp", xs, &self.w1)?;
        let rows: usize = lead.iter().product();
        let x = xs.reshape((rows, self.d_model))?;
        let h = crate::ops::layer_norm(
            &x,
            self.ln_weight.as_ref(),
            self.ln_bias.as_ref(),
            self.ln_eps,
        )?;
        let h = crate::ops::gelu(&crate::ops::linear(&h, &self.w1, None)?)?;
        let y = (x + crate::ops::linear(&h, &self.w2, None)?)?;
        y.reshape(dims)
    }
}

impl CountParams for FrozenRandomMlp {
    fn param_counts(&self) -> ParamCounts {
        let (d, h) = (self.d_model, self.hidden);
        let ln = 2 * d;
        let c = if self.trainable_ln() {
            ParamCount {
                trainable: ln,
                frozen: 2 * d * h,
                emulated: 2 * d * h + ln,
            }
        } else {
            ParamCount::frozen(2 * d * h + ln)
        };
        ParamCounts::non_embedding(c)
    }
}
