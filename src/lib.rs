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
//! * `scaling`: compute frontiers and scaling-law fits with uncertainty (feature `fit`; figures: feature `plot`).
//! * [`flops`]: the compute accounting (FLOPs per token, PF-days) the training loop and the fits share.
//!
//! Features: `train`, `fit`, `plot` and `x86-v4` are on by default; with `default-features = false` the crate is the
//! transform, the ops, the layers and the GPT model, on candle, half, rand and a few small crates. `cuda` builds the
//! GPU kernels that have run on a GPU, `cuda-untested` adds those that have not (see `docs/gpu-notes.md`).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod error;
pub mod flops;
pub mod fwht;
pub mod gpu;
pub mod layers;
pub mod ops;
pub mod params;
mod rng;

#[cfg(feature = "train")]
#[cfg_attr(docsrs, doc(cfg(feature = "train")))]
pub mod data;
pub mod model;
#[cfg(feature = "fit")]
#[cfg_attr(docsrs, doc(cfg(feature = "fit")))]
pub mod scaling;
#[cfg(feature = "train")]
#[cfg_attr(docsrs, doc(cfg(feature = "train")))]
pub mod train;

pub use error::Error;
pub use fwht::{hadamard_transform, hadamard_transform_ref};
pub use layers::{
    adaptive_fastfood, adaptive_fastfood_no_bias, block_hadamard_mlp, frozen_random_mlp,
    projection, rotary_gpt_block, rotary_tables, seeded_linear, AdaptiveFastFood, BlockConfig,
    BlockHadamardMlp, BlockKind, BlockMlp, FrozenRandomMlp, LinearKind, Projection, RotaryGptBlock,
};
pub use params::{CountParams, ParamCount, ParamCounts};
pub use rng::derive_seed;

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
