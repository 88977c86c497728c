//! The run's JSONL log, one typed line per step or event, written by the loop and read back by
//! [`crate::scaling::runs`].
//!
//! A step line holds `step`, `tokens`, `flops` (`C = 6·N·tokens`), `pf_days`, `n_trainable_non_embedding`,
//! `n_frozen`, `train_loss`, `lr`, `grad_norm`, `tokens_per_s`, `elapsed_s`, and `val_loss` / `val_bpb` when the
//! validation loss was measured. Event lines carry `"event"`: `start` and `resume` (the plan), `final` (validation
//! and test results), `interrupted`. Non-finite numbers are written as `null`.

use crate::model::{GptConfig, TrainSpec};
use serde::{Deserialize, Serialize};
#[cfg(feature = "train")]
use {
    crate::error::Error,
    candle_core::Result,
    std::io::Write,
    std::path::{Path, PathBuf},
};

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLine {
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Training compute so far, `6·N·tokens` FLOPs.
    pub flops: f64,
    /// The same in PF-days.
    pub pf_days: f64,
    /// `N`: trainable non-embedding parameters.
    pub n_trainable_non_embedding: usize,
    /// Frozen non-embedding parameters.
    pub n_frozen: usize,
    /// Mean training loss (nats per token) of the steps since the previous step line
    /// ([`super::TrainOptions::log_every`]; with 1, of this step).
    pub train_loss: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Global gradient norm before clipping (`null` when not finite).
    pub grad_norm: Option<f64>,
    /// Training tokens per second of this step.
    pub tokens_per_s: f64,
    /// Wall-clock seconds of the run so far (resumed runs included).
    pub elapsed_s: f64,
    /// Validation loss, when measured at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Validation bits per byte, when measured at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_bpb: Option<f64>,
}

/// The plan of a run, logged when it starts or resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanLine {
    /// Step the run starts (or resumes) at.
    pub step: u64,
    /// Preset name.
    pub preset: Option<String>,
    /// The model.
    pub config: GptConfig,
    /// The recipe.
    pub train: TrainSpec,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    /// Micro-batches per step.
    pub accumulation: usize,
    /// Trainable non-embedding parameters.
    pub n_trainable_non_embedding: usize,
    /// Frozen non-embedding parameters.
    pub n_frozen: usize,
    /// Parameters emulated by structured layers.
    pub n_emulated: usize,
    /// Embedding parameters.
    pub n_embedding: usize,
    /// Where it runs.
    pub device: String,
}

/// The end of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalLine {
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Training compute in FLOPs.
    pub flops: f64,
    /// The same in PF-days.
    pub pf_days: f64,
    /// Trainable non-embedding parameters.
    pub n_trainable_non_embedding: usize,
    /// Frozen non-embedding parameters.
    pub n_frozen: usize,
    /// Validation loss (nats per token).
    pub val_loss: Option<f64>,
    /// Validation bits per byte.
    pub val_bpb: Option<f64>,
    /// Validation tokens.
    pub val_tokens: usize,
    /// Test loss, when the test split holds a window.
    pub test_loss: Option<f64>,
    /// Test bits per byte.
    pub test_bpb: Option<f64>,
    /// Test tokens.
    pub test_tokens: Option<usize>,
}

/// A line that marks a moment of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A fresh run starts.
    Start(PlanLine),
    /// A run resumes from its checkpoint.
    Resume(PlanLine),
    /// The run finished.
    Final(FinalLine),
    /// The run stopped early (and wrote a checkpoint).
    Interrupted {
        /// Optimizer steps done.
        step: u64,
        /// Training tokens seen.
        tokens: u64,
    },
}

/// One line of `log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogLine {
    /// An event (it has an `"event"` key).
    Event(Event),
    /// An optimizer step.
    Step(StepLine),
}

impl LogLine {
    /// The step the line belongs to.
    pub fn step(&self) -> u64 {
        match self {
            LogLine::Step(s) => s.step,
            LogLine::Event(Event::Start(p) | Event::Resume(p)) => p.step,
            LogLine::Event(Event::Final(f)) => f.step,
            LogLine::Event(Event::Interrupted { step, .. }) => *step,
        }
    }
}

/// The log file, opened for appending.
#[cfg(feature = "train")]
#[derive(Debug)]
pub struct RunLog {
    file: std::fs::File,
    path: PathBuf,
}

#[cfg(feature = "train")]
impl RunLog {
    /// Opens the log for appending; when resuming at `keep_upto`, drops the lines of later steps (written after the
    /// checkpoint by an interrupted run) so that the log reads as one run. A fresh run (`None`) starts in an empty
    /// folder (see [`super::RunDir::fresh`]), so it never truncates anything.
    pub fn open(path: &Path, keep_upto: Option<u64>) -> Result<Self> {
        if let (Some(step), true) = (keep_upto, path.exists()) {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let mut kept = String::new();
            for line in text.lines() {
                // Lines of later steps, and torn lines (a write cut by a kill), are dropped.
                let keep = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .is_some_and(|v| {
                        v.get("step")
                            .and_then(|s| s.as_u64())
                            .is_none_or(|s| s <= step)
                    });
                if keep {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            crate::data::write_atomic(path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one line.
    pub fn write(&mut self, line: &LogLine) -> Result<()> {
        let json = serde_json::to_string(line).map_err(|e| Error::Data(e.to_string()))?;
        writeln!(self.file, "{json}").map_err(|e| Error::io(&self.path, e))?;
        Ok(())
    }

    /// Flushes the log to disk (with each checkpoint).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a log: every line that parses as a [`LogLine`], in order, and the number of lines that did not (the torn
/// last line of a killed run, or lines of other tools).
pub fn read_log(text: &str) -> (Vec<LogLine>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<LogLine>(line) {
            Ok(l) => out.push(l),
            Err(_) => bad += 1,
        }
    }
    (out, bad)
}

/// `x`, or `None` when it is not finite (written as `null`).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
