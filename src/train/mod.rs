//! Training: AdamW with checkpointable moments, the warmup + cosine schedule, global gradient clipping, gradient
//! accumulation, evaluation in nats per token and bits per byte, a typed JSONL log, and exact resume.
//!
//! The pieces, each decided in one place:
//!
//! * [`plan`]: the plan of a run (preset, overrides, corpus, run folder, seed); a resumed run takes it from its
//!   checkpoint, and a conflicting flag is an error naming each differing field.
//! * [`Trainer`]: the run as an object, with [`Trainer::start`] (start or resume: the one place that decides),
//!   [`Trainer::step`], [`Trainer::evaluate`], [`Trainer::save`] and [`Trainer::finish`]. It owns its run folder
//!   ([`RunDir`]: an exclusive lock naming the owner's PID; a fresh start moves an old run aside; temporary files of
//!   interrupted writes are removed).
//! * [`train`]: the visible loop over a `Trainer`, nanoGPT style.
//! * the checkpoint (weights, optimizer moments, step, data position, sampler state, the whole plan and the data's
//!   hashes) is written atomically every [`TrainOptions::checkpoint_every`] steps, at the end, and when the stop flag
//!   is raised (Ctrl-C in the examples), with a checksum over all of it; the previous one is kept as a copy.
//! * [`log`]: one typed line per step (step, tokens, compute `C = 6·N·tokens` in FLOPs and PF-days, parameter
//!   counts, train loss, learning rate, gradient norm, tokens per second, validation loss / bits per byte when
//!   measured) or event (`start`, `resume`, `final`, `interrupted`), read back by [`crate::scaling::runs`].
//!
//! Each optimizer step draws `batch_size` windows from the [`crate::data::BatchSampler`], in micro-batches of
//! [`TrainOptions::micro_batch`] sequences whose gradients are summed, clips the global gradient norm, and applies
//! [`AdamW`] at the learning rate of [`LrSchedule`] for the tokens seen so far. On the CPU a run interrupted (even
//! by `kill -9`) and resumed logs bit-for-bit the losses of one that was not, dropout included: the masks are
//! seeded from the run seed, the step and the micro-batch, passed to the forward as a value
//! ([`crate::ops::Mode`]). (On CUDA and for half types, dropout falls back to candle's, whose generator cannot be
//! seeded, so resume there is exact only without it.)

pub mod log;

#[cfg(feature = "train")]
mod average;
#[cfg(feature = "train")]
mod checkpoint;
#[cfg(feature = "train")]
mod muon;
#[cfg(feature = "train")]
mod optim;
#[cfg(feature = "train")]
pub mod plan;
#[cfg(feature = "train")]
mod pools;
#[cfg(feature = "train")]
mod run;
#[cfg(feature = "train")]
mod run_dir;
#[cfg(feature = "train")]
mod schedule;
#[cfg(feature = "train")]
pub mod sweep;
#[cfg(feature = "train")]
mod trainer;

pub(crate) use crate::flops::{flops_to_pf_days, training_flops};
#[cfg(feature = "train")]
pub use average::WeightAverage;
#[cfg(feature = "train")]
pub use checkpoint::{
    checkpoint_bytes, config_differences, load_checkpoint, named_vars, previous_path,
    restore_training_state, restore_weights, save_checkpoint, training_tensors, Checkpoint,
    CheckpointMeta, CHECKPOINT_FORMAT,
};
#[cfg(feature = "train")]
pub use log::RunLog;
pub use log::{finite, Event, LogLine, StepLine};
#[cfg(feature = "train")]
pub use muon::{orthogonalize, MuonConfig};
#[cfg(feature = "train")]
pub use optim::{clip_grad_norm, global_grad_norm, AdamW, AdamWConfig};
#[cfg(feature = "train")]
pub use run::*;
#[cfg(feature = "train")]
pub use run_dir::{RunDir, LOCK_FILE};
#[cfg(feature = "train")]
pub use schedule::LrSchedule;
#[cfg(feature = "train")]
pub use trainer::{Split, Trainer};
