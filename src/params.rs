//! Parameter accounting: how many numbers a module trains, how many it carries frozen, and how many the dense
//! layer it stands in for would have trained.
//!
//! The paper's question is whether the number of *trainable* parameters is what matters; answering it needs
//! three counts per module, kept apart for the embedding and the rest of the network (scaling laws are usually
//! stated in non-embedding parameters):
//!
//! * **trainable**: scalars the optimizer updates (everything the module registers in its `VarBuilder`).
//! * **frozen**: scalars the module uses in its forward pass but never trains (random weights regenerated from a
//!   seed, fixed LayerNorm gains). Index buffers such as FastFood's permutations are not counted: they are not
//!   real numbers a dense layer would have.
//! * **emulated**: the trainable count of the *dense twin*, the conventional fully trainable layer with the same
//!   inputs, outputs and biases that the module replaces. For a dense layer emulated = trainable; for
//!   `AdaptiveFastFood(in, out)` it is `in·out + out` (the `in × out` matrix it emulates and the bias both have);
//!   for `BlockHadamardMlp(d, h)` it is `2·d·h + h + d`; for `FrozenRandomMlp(d, h)` it is the trainable MLP block of
//!   the same shape, `2·d·h + 2·d` (two matrices and the LayerNorm). `emulated − trainable` is what the structure
//!   saves; `emulated / trainable` is its compression ratio.
//!
//! Counts add up ([`std::ops::Add`], [`std::iter::Sum`]) and scale by an integer (`n_layers * block_counts`), so a
//! model's counts are the sum of its modules' [`CountParams::param_counts`].
//!
//! ```
//! use candle_structured::{ParamCount, ParamCounts};
//! let block = ParamCounts::non_embedding(ParamCount::dense(12 * 768 * 768 + 13 * 768));
//! let emb = ParamCounts::embedding(ParamCount::dense(50_257 * 768));
//! let model = emb + block * 12;
//! assert_eq!(model.non_embedding.trainable, 85_054_464);
//! assert_eq!(model.total().trainable, 85_054_464 + 38_597_376);
//! ```

use serde::{Deserialize, Serialize};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Mul};

/// Trainable, frozen and emulated scalar counts of one module or part of a model (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParamCount {
    /// Scalars the optimizer updates.
    pub trainable: usize,
    /// Scalars used in the forward pass but never trained.
    pub frozen: usize,
    /// Trainable scalars of the dense layer this module stands in for.
    pub emulated: usize,
}

impl ParamCount {
    /// Nothing.
    pub const ZERO: Self = Self {
        trainable: 0,
        frozen: 0,
        emulated: 0,
    };

    /// A dense, fully trainable module of `n` scalars: trainable = emulated = n.
    pub const fn dense(n: usize) -> Self {
        Self {
            trainable: n,
            frozen: 0,
            emulated: n,
        }
    }

    /// A structured module training `trainable` scalars in place of a dense one of `emulated`.
    pub const fn structured(trainable: usize, emulated: usize) -> Self {
        Self {
            trainable,
            frozen: 0,
            emulated,
        }
    }

    /// A frozen module of `n` scalars standing in for a trainable one of the same size: frozen = emulated = n.
    pub const fn frozen(n: usize) -> Self {
        Self {
            trainable: 0,
            frozen: n,
            emulated: n,
        }
    }

    /// Every scalar the forward pass uses: trainable + frozen.
    pub const fn total(&self) -> usize {
        self.trainable + self.frozen
    }
}

impl Add for ParamCount {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self {
            trainable: self.trainable + rhs.trainable,
            frozen: self.frozen + rhs.frozen,
            emulated: self.emulated + rhs.emulated,
        }
    }
}

impl AddAssign for ParamCount {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl Mul<usize> for ParamCount {
    type Output = Self;
    fn mul(self, n: usize) -> Self {
        Self {
            trainable: self.trainable * n,
            frozen: self.frozen * n,
            emulated: self.emulated * n,
        }
    }
}

impl Sum for ParamCount {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, Add::add)
    }
}

/// [`ParamCount`]s split into the embedding (token embeddings, and an untied output projection) and the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParamCounts {
    /// Token (and learned position) embeddings, untied language-model heads.
    pub embedding: ParamCount,
    /// Everything else: attention, MLPs, LayerNorms, frozen blocks.
    pub non_embedding: ParamCount,
}

impl ParamCounts {
    /// Nothing.
    pub const ZERO: Self = Self {
        embedding: ParamCount::ZERO,
        non_embedding: ParamCount::ZERO,
    };

    /// Counts that are all non-embedding (every layer of this crate).
    pub const fn non_embedding(c: ParamCount) -> Self {
        Self {
            embedding: ParamCount::ZERO,
            non_embedding: c,
        }
    }

    /// Counts that are all embedding.
    pub const fn embedding(c: ParamCount) -> Self {
        Self {
            embedding: c,
            non_embedding: ParamCount::ZERO,
        }
    }

    /// Embedding and non-embedding together.
    pub fn total(&self) -> ParamCount {
        self.embedding + self.non_embedding
    }
}

impl Add for ParamCounts {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self {
            embedding: self.embedding + rhs.embedding,
            non_embedding: self.non_embedding + rhs.non_embedding,
        }
    }
}

impl AddAssign for ParamCounts {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl Mul<usize> for ParamCounts {
    type Output = Self;
    fn mul(self, n: usize) -> Self {
        Self {
            embedding: self.embedding * n,
            non_embedding: self.non_embedding * n,
        }
    }
}

impl Sum for ParamCounts {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, Add::add)
    }
}

/// Modules that can say what their parameters cost. Implemented by every layer of this crate and by the candle
/// building blocks models combine them with (`candle_nn::Linear` counts as non-embedding, `candle_nn::Embedding`
/// as embedding).
pub trait CountParams {
    /// The module's trainable, frozen and emulated counts, split into embedding and non-embedding.
    fn param_counts(&self) -> ParamCounts;
}

impl<T: CountParams + ?Sized> CountParams for &T {
    fn param_counts(&self) -> ParamCounts {
        (**self).param_counts()
    }
}

impl<T: CountParams> CountParams for [T] {
    fn param_counts(&self) -> ParamCounts {
        self.iter().map(CountParams::param_counts).sum()
    }
}

impl<T: CountParams> CountParams for Vec<T> {
    fn param_counts(&self) -> ParamCounts {
        self.as_slice().param_counts()
    }
}

impl<T: CountParams> CountParams for Option<T> {
    fn param_counts(&self) -> ParamCounts {
        self.as_ref()
            .map_or(ParamCounts::ZERO, CountParams::param_counts)
    }
}

/// `weight` and `bias`: dense, non-embedding.
impl CountParams for candle_nn::Linear {
    fn param_counts(&self) -> ParamCounts {
        let n = self.weight().elem_count() + self.bias().map_or(0, |b| b.elem_count());
        ParamCounts::non_embedding(ParamCount::dense(n))
    }
}

/// The embedding table: dense, embedding.
impl CountParams for candle_nn::Embedding {
    fn param_counts(&self) -> ParamCounts {
        ParamCounts::embedding(ParamCount::dense(self.embeddings().elem_count()))
    }
}
