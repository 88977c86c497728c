//! # candle-structured
//!
//! Cheap parameters for [candle](https://github.com/huggingface/candle) transformers, and the tools to measure
//! whether they pay off, after Chatelain et al. (LightOn, 2021), *"Is the Number of Trainable Parameters All That
//! Actually Matters?"*.
//!
//! * [`hadamard_transform`]: a fast, differentiable Walsh-Hadamard transform (SIMD CPU kernels, CUDA kernels
//!   behind the `cuda` feature).
//! * [`layers`]: `FrozenRandomMlp`, `AdaptiveFastFood`, `BlockHadamardMlp`, `RotaryGptBlock` as candle modules.
//! * [`model`], [`train`]: the paper's GPT models and a training loop with compute accounting (feature `train`).
//! * [`scaling`]: cost models, compute frontiers and scaling-law fits with uncertainty (figures: feature `plot`).

pub mod error;
pub mod fwht;
pub mod gpu;
pub mod layers;
pub mod ops;
pub mod params;

#[cfg(feature = "train")]
pub mod data;
pub mod model;
pub mod scaling;
pub mod train;

pub use error::Error;
pub use fwht::{hadamard_transform, hadamard_transform_ref};
pub use layers::{
    adaptive_fastfood, adaptive_fastfood_no_bias, block_hadamard_mlp, derive_seed,
    frozen_random_mlp, projection, rotary_gpt_block, rotary_tables, seeded_linear,
    AdaptiveFastFood, BlockConfig, BlockHadamardMlp, BlockKind, BlockMlp, FrozenRandomMlp,
    LinearKind, Projection, RotaryGptBlock,
};
pub use params::{CountParams, ParamCount, ParamCounts};
