//! The block-diagonal MLP with a block Hadamard mixing (paper Figure 5).

use super::init::{get_or_init, kaiming_normal, linear_bias, SeededRng};
use crate::error::Error;
use crate::params::{CountParams, ParamCount, ParamCounts};
use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};

/// A drop-in for the transformer MLP `d → h → d` with block-diagonal weights (Chatelain et al. 2021, Figure 5 and
/// the "Block Diagonal" rows of Table 3).
///
/// # Math
///
/// With `m = n_blocks`, `x = [x_1; …; x_m]` split into blocks of `d/m` and hidden blocks of `h/m`:
///
/// ```text
/// z_a = W1_a x_a                                 (block-diagonal d → h, m blocks of (h/m) × (d/m))
/// u   = (H_m ⊗ I_{h/m}) z / √m + b1,             i.e. u_a = Σ_c H_ac z_c / √m + b1_a
/// v   = GELU(u)
/// y_a = W2_a v_a + b2_a                          (block-diagonal h → d, m blocks of (d/m) × (h/m))
/// ```
///
/// `H_m` is the m×m Walsh–Hadamard matrix (`m` a power of two) and `(H_m ⊗ I)/√m` is orthonormal; it is applied
/// with [`crate::hadamard_transform`] over the block axis (no m×m or h×h matrix is formed), and the block products
/// are batched matmuls over the block axis, not a loop over blocks.
///
/// **Where the mixing sits, and why.** Without it the layer is `m` independent MLPs, each seeing `1/m` of the
/// features. The mixing is placed between the first block-diagonal product and the GELU, so that every hidden
/// pre-activation `u_a` is a function of the *whole* input: `(H ⊗ I)·blockdiag(W1)` is a dense-structured `d → h`
/// map, and the nonlinearity acts on features of all `d` inputs as in a dense MLP; the second block-diagonal product
/// then reads `h/m` hidden units that already carry information from every input block. Mixing after the GELU
/// instead would leave each nonlinearity block-local (the hidden features of block `a` would only ever depend on
/// `x_a`). Being orthonormal, the mixing keeps the pre-activation variance of the block product, so the blocks use
/// the dense initialisation with fan-in `d/m` and `h/m`.
///
/// # Parameters
///
/// Trainable: `2·d·h/m` weights plus `h + d` biases. Emulated: `2·d·h + h + d` (the dense MLP). Variables:
/// `"w1"` `(m, d/m, h/m)`, `"b1"` `(h,)`, `"w2"` `(m, h/m, d/m)`, `"b2"` `(d,)`; weights drawn as
/// `candle_nn::linear`'s (`N(0, 2/fan_in)`, biases `U(±1/√fan_in)`, fan-in of a block) from `seed`.
///
/// # Example
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use candle_structured::{block_hadamard_mlp, CountParams};
/// let vm = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
/// let mlp = block_hadamard_mlp(768, 3072, 4, 0, vb.pp("mlp"))?;
/// let y = mlp.forward(&Tensor::randn(0f32, 1., (2, 7, 768), &Device::Cpu)?)?;
/// assert_eq!(y.dims(), &[2, 7, 768]);
/// let c = mlp.param_counts().non_embedding;
/// assert_eq!(c.trainable, 2 * 768 * 3072 / 4 + 3072 + 768);
/// assert_eq!(c.emulated, 2 * 768 * 3072 + 3072 + 768);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BlockHadamardMlp {
    d_model: usize,
    hidden: usize,
    n_blocks: usize,
    seed: u64,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

/// A [`BlockHadamardMlp`] `d_model → hidden → d_model` with `n_blocks` blocks (a power of two dividing both sizes;
/// the paper uses 4); `seed` draws the initial weights.
pub fn block_hadamard_mlp(
    d_model: usize,
    hidden: usize,
    n_blocks: usize,
    seed: u64,
    vb: VarBuilder,
) -> Result<BlockHadamardMlp> {
    BlockHadamardMlp::new(d_model, hidden, n_blocks, seed, vb)
}

impl BlockHadamardMlp {
    /// See [`block_hadamard_mlp`].
    pub fn new(
        d_model: usize,
        hidden: usize,
        n_blocks: usize,
        seed: u64,
        vb: VarBuilder,
    ) -> Result<Self> {
        if n_blocks == 0
            || !n_blocks.is_power_of_two()
            || d_model == 0
            || hidden == 0
            || !d_model.is_multiple_of(n_blocks)
            || !hidden.is_multiple_of(n_blocks)
        {
            return Err(Error::Config(format!(
                "BlockHadamardMlp: n_blocks ({n_blocks}) must be a power of two dividing d_model ({d_model}) \
                 and hidden ({hidden})"
            ))
            .into());
        }
        if n_blocks.trailing_zeros() > crate::fwht::MAX_LOG2 {
            return Err(Error::Config(format!(
                "BlockHadamardMlp: n_blocks ({n_blocks}) above the largest transform, 2^{}",
                crate::fwht::MAX_LOG2
            ))
            .into());
        }
        let (m, db, hb) = (n_blocks, d_model / n_blocks, hidden / n_blocks);
        let mut rng = SeededRng::new(seed, "block_hadamard");
        let w1 = get_or_init(&vb, (m, db, hb), "w1", || {
            kaiming_normal(&mut rng, m * db * hb, db)
        })?;
        let b1 = get_or_init(&vb, hidden, "b1", || linear_bias(&mut rng, hidden, db))?;
        let w2 = get_or_init(&vb, (m, hb, db), "w2", || {
            kaiming_normal(&mut rng, m * hb * db, hb)
        })?;
        let b2 = get_or_init(&vb, d_model, "b2", || linear_bias(&mut rng, d_model, hb))?;
        Ok(Self {
            d_model,
            hidden,
            n_blocks,
            seed,
            w1,
            b1,
            w2,
            b2,
        })
    }

    /// Model width `d`.
    pub fn d_model(&self) -> usize {
        self.d_model
    }
    /// Hidden width `h`.
    pub fn hidden(&self) -> usize {
        self.hidden
    }
    /// Number of blocks `m`.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }
    /// The seed of the initial weights.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// First block-diagonal weights `(m, d/m, h/m)`: block `a` maps `x_a` (row) to `x_a · w1[a]`.
    pub fn w1(&self) -> &Tensor {
        &self.w1
    }
    /// Hidden bias `(h,)`.
    pub fn b1(&self) -> &Tensor {
        &self.b1
    }
    /// Second block-diagonal weights `(m, h/m, d/m)`.
    pub fn w2(&self) -> &Tensor {
        &self.w2
    }
    /// Output bias `(d,)`.
    pub fn b2(&self) -> &Tensor {
        &self.b2
    }
}

impl Module for BlockHadamardMlp {
    /// `(…, d) → (…, d)`, any leading dimensions.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let Some((&last, lead)) = dims.split_last() else {
            return Err(Error::Config("BlockHadamardMlp: scalar input".into()).into());
        };
        if last != self.d_model {
            return Err(Error::Config(format!(
                "BlockHadamardMlp: input has last dimension {last}, expected {}",
                self.d_model
            ))
            .into());
        }
        crate::ops::check_dtype("BlockHadamardMlp", xs, &self.w1)?;
        let rows: usize = lead.iter().product();
        let (m, db, hb) = (
            self.n_blocks,
            self.d_model / self.n_blocks,
            self.hidden / self.n_blocks,
        );
        // (rows, m, db) → (m, rows, db) @ (m, db, hb) → (m, rows, hb), block-major.
        let x = xs.reshape((rows, m, db))?.transpose(0, 1)?.contiguous()?;
        // Parameters follow the activation's dtype (mixed precision; see `ops::follow_dtype`).
        let follow = |p: &Tensor| crate::ops::follow_dtype(p, xs);
        let z = x.matmul(&follow(&self.w1)?)?;
        // Mix across blocks: the transform reads the block axis in place through a permuted view and writes
        // (rows, hb, m); the bias and GELU work in that layout (b1 (m, hb) seen as (hb, m)), and one copy brings
        // the hidden activations back to block-major for the second batched product.
        let u = crate::hadamard_transform(&z.permute((1, 2, 0))?, 1.0 / (m as f64).sqrt())?;
        let u = u.broadcast_add(&follow(&self.b1)?.reshape((m, hb))?.t()?)?;
        let v = crate::ops::gelu(&u)?.permute((2, 0, 1))?.contiguous()?; // (m, rows, hb)
                                                                         // (m, rows, hb) @ (m, hb, db) → (m, rows, db) → (rows, d)
        let y = v
            .matmul(&follow(&self.w2)?)?
            .transpose(0, 1)?
            .reshape((rows, self.d_model))?;
        let y = y.broadcast_add(&follow(&self.b2)?)?;
        let mut out_shape = lead.to_vec();
        out_shape.push(self.d_model);
        y.reshape(out_shape)
    }
}

impl CountParams for BlockHadamardMlp {
    fn param_counts(&self) -> ParamCounts {
        let (d, h) = (self.d_model, self.hidden);
        ParamCounts::non_embedding(ParamCount::structured(
            2 * d * h / self.n_blocks + h + d,
            2 * d * h + h + d,
        ))
    }
}
