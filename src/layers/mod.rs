//! The paper's cheap-parameter layers and the GPT block they live in, as candle modules.
//!
//! | layer | replaces | trainable | paper |
//! |---|---|---|---|
//! | [`AdaptiveFastFood`] | a linear layer `in → out` | `3·n·⌈out/n⌉ + out` | Table 3 "Structured Adaptive FastFood" |
//! | [`BlockHadamardMlp`] | the MLP `d → h → d` | `2·d·h/m + h + d` | Figure 5, Table 3 "Block Diagonal" |
//! | [`FrozenRandomMlp`] | a trainable MLP block | `0` (frozen `2·d·h`) | section 3.1 "doping" |
//! | [`RotaryGptBlock`] | — | `12·d² + 13·d` dense | the model of section 4 |
//!
//! All are built candle-style from a [`candle_nn::VarBuilder`] (`adaptive_fastfood(in, out, seed, vb)`, …), take
//! inputs `(…, d)` with any leading dimensions (the block: `(batch, seq, d)`), work in f32, f64, bf16 and f16, and
//! are made only of tensor ops (the Walsh–Hadamard transform is [`crate::hadamard_transform`], the norms, GELU,
//! rotary and attention are [`crate::ops`]), so they train end to end on every device the crate supports.
//! Initial values are drawn from explicit seeds by a value-stable generator, so identical seeds give identical
//! layers. Every layer implements [`crate::params::CountParams`].

mod block_hadamard;
mod fastfood;
mod frozen_mlp;
pub(crate) mod init;
mod linear;
mod permute;
mod rotary_block;

pub use block_hadamard::{block_hadamard_mlp, BlockHadamardMlp};
pub use fastfood::{adaptive_fastfood, adaptive_fastfood_no_bias, AdaptiveFastFood};
#[cfg(feature = "train")]
pub(crate) use fastfood::{former_name, is_permutation_table};
pub use frozen_mlp::{frozen_random_mlp, FrozenRandomMlp};
pub use linear::{projection, seeded_linear, LinearKind, Projection};
pub use rotary_block::{
    rotary_gpt_block, rotary_tables, BlockConfig, BlockKind, BlockMlp, RotaryGptBlock,
};
