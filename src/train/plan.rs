//! The plan of a run, decided in one place: a preset, the overrides given on the command line, the corpus, the run
//! folder and the seed. A fresh run takes the preset with its overrides; a resumed run takes everything from its
//! checkpoint, and an override that conflicts with it is an error naming each differing field. Only the fields of
//! [`Cadence`] and the budget (to extend a run) may change on resume.

use super::{load_checkpoint, CheckpointMeta, RunDir, TrainOptions, CHECKPOINT_FILE};
use crate::data::CorpusOptions;
use crate::error::Error;
use crate::model::{preset, GptConfig, OptimizerKind, TrainSpec};
use candle_core::{Device, Result};
use std::path::PathBuf;

/// What the command line may set over a preset. `None`: the preset's value (or, on resume, the checkpoint's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Seed of the weights, the data order and the dropout masks (default 0).
    pub seed: Option<u64>,
    /// Dropout probability.
    pub dropout: Option<f32>,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// Learning rate at the end of the decay, as a fraction of the peak, in `[0, 1]`.
    pub min_lr_fraction: Option<f64>,
    /// The update of the hidden matrices.
    pub optimizer: Option<OptimizerKind>,
    /// Decay of the weight average measured and saved at the end, in `[0, 1)` (0: none).
    pub ema_decay: Option<f64>,
    /// Sequences per optimizer step.
    pub batch_size: Option<usize>,
    /// Sequence length.
    pub seq_len: Option<usize>,
    /// Sequences per forward/backward pass.
    pub micro_batch: Option<usize>,
    /// Budget in optimizer steps (may change on resume).
    pub steps: Option<u64>,
    /// Budget in training tokens (may change on resume).
    pub tokens: Option<u64>,
    /// Training text (default: the embedded corpus).
    pub data: Option<PathBuf>,
    /// A ready tokenizer.
    pub tokenizer: Option<PathBuf>,
    /// Bytes the BPE merges are learned on (0: all; default 4,000,000).
    pub tokenizer_train_bytes: Option<usize>,
}

/// How often a run measures and saves; free to change on resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Validation loss every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Validation windows in the fixed subset (≥ 1).
    pub eval_windows: usize,
    /// Test windows at the end (≥ 1).
    pub test_windows: usize,
    /// Checkpoint every this many steps (0: only at the end and on stop).
    pub checkpoint_every: u64,
}

/// A resolved run: model, recipe, corpus options and loop options, ready for [`super::train`].
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Preset name.
    pub preset: String,
    /// The model (seed and dropout included).
    pub model: GptConfig,
    /// The recipe (budget included).
    pub train: TrainSpec,
    /// Where the text and tokenizer come from.
    pub corpus: CorpusOptions,
    /// The loop's options (run folder, micro-batch, cadence, resume).
    pub options: TrainOptions,
    /// The checkpoint a resumed run continues (`None` for a fresh run).
    pub resumed: Option<CheckpointMeta>,
}

impl Overrides {
    /// Checks the values that need no preset: a positive finite learning rate, a dropout in `[0, 1)`, positive
    /// batch, sequence, micro-batch and budget.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| -> Result<()> { Err(Error::Config(m).into()) };
        if let Some(lr) = self.lr {
            if !(lr.is_finite() && lr > 0.0) {
                return bad(format!(
                    "--lr {lr}: the learning rate must be positive and finite"
                ));
            }
        }
        if let Some(f) = self.min_lr_fraction {
            if !(0.0..=1.0).contains(&f) {
                return bad(format!(
                    "--min-lr-fraction {f}: the floor of the decay must be in [0, 1] (a fraction of the peak)"
                ));
            }
        }
        if let Some(d) = self.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return bad(format!(
                    "--ema-decay {d}: the decay of the weight average must be in [0, 1) (0: none)"
                ));
            }
        }
        if let Some(p) = self.dropout {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("--dropout {p}: the dropout must be in [0, 1)"));
            }
        }
        for (flag, v) in [
            ("--batch-size", self.batch_size.map(|v| v as u64)),
            ("--seq-len", self.seq_len.map(|v| v as u64)),
            ("--micro-batch", self.micro_batch.map(|v| v as u64)),
            ("--steps", self.steps),
            ("--tokens", self.tokens),
        ] {
            if v == Some(0) {
                return bad(format!("{flag} 0: it must be at least 1"));
            }
        }
        Ok(())
    }
}

impl Cadence {
    /// Checks that evaluations have at least one window.
    pub fn check(&self) -> Result<()> {
        if self.eval_windows == 0 || self.test_windows == 0 {
            return Err(Error::Config(format!(
                "--eval-windows {} / --test-windows {}: evaluations need at least one window",
                self.eval_windows, self.test_windows
            ))
            .into());
        }
        Ok(())
    }
}

impl RunPlan {
    /// A fresh run of `preset_name` with overrides `ov`, into `run_dir` (default `runs/<preset>`), corpus cache
    /// under `cache`. Errors on an unknown preset or a bad override (see [`Overrides::check`]), a sequence length
    /// above the context, or a run folder in use by another process.
    pub fn fresh(
        preset_name: &str,
        ov: &Overrides,
        cadence: Cadence,
        run_dir: Option<PathBuf>,
        cache: PathBuf,
    ) -> Result<RunPlan> {
        ov.check()?;
        cadence.check()?;
        let p = preset(preset_name)?;
        let mut model = p.model.clone();
        model.seed = ov.seed.unwrap_or(0);
        if let Some(d) = ov.dropout {
            model.dropout = d;
        }
        let mut spec = p.train.clone();
        spec.batch_size = ov.batch_size.unwrap_or(spec.batch_size);
        spec.seq_len = ov.seq_len.unwrap_or(spec.seq_len);
        spec.lr = ov.lr.unwrap_or(spec.lr);
        spec.min_lr_fraction = ov.min_lr_fraction.unwrap_or(spec.min_lr_fraction);
        spec.optimizer = ov.optimizer.unwrap_or(spec.optimizer);
        spec.ema_decay = ov.ema_decay.unwrap_or(spec.ema_decay);
        if spec.seq_len > model.context {
            return Err(Error::Config(format!(
                "--seq-len {}: above the context of {} tokens of {preset_name}",
                spec.seq_len, model.context
            ))
            .into());
        }
        let reshaped = ov.batch_size.is_some() || ov.seq_len.is_some();
        if let Some(b) = budget(ov, &spec).or(reshaped.then_some(p.train.max_tokens)) {
            spec = spec.with_budget(b);
        }
        let run_dir = run_dir.unwrap_or_else(|| PathBuf::from("runs").join(&p.name));
        RunDir::check_free(&run_dir)?;
        let corpus = corpus_options(ov, model.vocab_size, cache)?;
        let mut options = options(run_dir, cadence);
        options.micro_batch = ov.micro_batch;
        options.seed = model.seed;
        options.preset = Some(p.name.clone());
        Ok(RunPlan {
            preset: p.name,
            model,
            train: spec,
            corpus,
            options,
            resumed: None,
        })
    }

    /// The run in `run_dir` continued from its checkpoint, with its own model, recipe, micro-batch and corpus.
    /// `preset_name` and `ov` are what the command line gave: each one that differs from the checkpoint is named
    /// in the error; the budget (`ov.steps` / `ov.tokens`) extends or shortens the run. Fields a format-1
    /// checkpoint lacks (micro-batch, corpus) are unknown: the command line's (or the defaults) are used.
    pub fn resume(
        run_dir: PathBuf,
        preset_name: Option<&str>,
        ov: &Overrides,
        cadence: Cadence,
        cache: PathBuf,
    ) -> Result<RunPlan> {
        ov.check()?;
        cadence.check()?;
        RunDir::check_free(&run_dir)?;
        let path = run_dir.join(CHECKPOINT_FILE);
        let meta = load_checkpoint(&path, &Device::Cpu)?.meta;
        let diffs = conflicts(&meta, preset_name, ov);
        if !diffs.is_empty() {
            return Err(Error::Config(format!(
                "--resume: these flags differ from the run in {} (drop them to resume it as it was): {}",
                run_dir.display(),
                diffs.join("; ")
            ))
            .into());
        }
        let mut spec = meta.train.clone();
        if let Some(b) = budget(ov, &spec) {
            if b < meta.tokens {
                return Err(Error::Config(format!(
                    "--resume: the new budget of {b} tokens is below the {} tokens already seen",
                    meta.tokens
                ))
                .into());
            }
            spec = spec.with_budget(b);
        }
        // The cache is only where prepared files live: the one given now is used.
        let mut corpus = match &meta.corpus {
            Some(c) => c.clone(),
            None => corpus_options(ov, meta.config.vocab_size, cache.clone())?,
        };
        corpus.cache_root = cache;
        let mut options = options(run_dir, cadence);
        options.micro_batch = meta.micro_batch.or(ov.micro_batch);
        options.preset = meta.preset.clone();
        options.seed = meta.sampler.seed;
        options.resume = true;
        Ok(RunPlan {
            preset: meta.preset.clone().unwrap_or_else(|| "?".into()),
            model: meta.config.clone(),
            train: spec,
            corpus,
            options,
            resumed: Some(meta),
        })
    }

    /// The arguments that resume this run: `--resume --run-dir <dir>` (everything else is in the checkpoint).
    pub fn resume_hint(&self) -> String {
        format!("--resume --run-dir {}", self.options.run_dir.display())
    }
}

/// The corpus options of `ov` for a vocabulary of `vocab_size` tokens.
fn corpus_options(ov: &Overrides, vocab_size: usize, cache: PathBuf) -> Result<CorpusOptions> {
    let Some(data) = ov.data.clone() else {
        return Err(Error::Config(
            "no corpus: give the training text's path (a UTF-8 file or folder; the examples use the repository's \
             data/fr-debian-large)"
                .into(),
        )
        .into());
    };
    let mut corpus = CorpusOptions::new(data, vocab_size);
    corpus.cache_root = cache;
    corpus.tokenizer = ov.tokenizer.clone();
    corpus.tokenizer_train_bytes = match ov.tokenizer_train_bytes.unwrap_or(4_000_000) {
        0 => None,
        b => Some(b),
    };
    Ok(corpus)
}

/// The budget in tokens that `ov` asks for, if any.
fn budget(ov: &Overrides, spec: &TrainSpec) -> Option<u64> {
    ov.steps.map(|s| s * spec.tokens_per_step()).or(ov.tokens)
}

fn options(run_dir: PathBuf, c: Cadence) -> TrainOptions {
    let mut o = TrainOptions::new(run_dir);
    o.eval_every = c.eval_every;
    o.eval_windows = c.eval_windows;
    o.test_windows = c.test_windows;
    o.checkpoint_every = c.checkpoint_every;
    o
}

/// Each override of `ov` (and the preset) that differs from what the checkpoint recorded, as `name: checkpoint X,
/// given Y`. Unknown checkpoint fields (format 1) conflict with nothing.
pub fn conflicts(meta: &CheckpointMeta, preset_name: Option<&str>, ov: &Overrides) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, ckpt: Option<String>, given: Option<String>| {
        if let (Some(c), Some(g)) = (ckpt, given) {
            if c != g {
                out.push(format!("{name}: checkpoint {c}, given {g}"));
            }
        }
    };
    fn shown<T: std::fmt::Display>(v: Option<T>) -> Option<String> {
        v.map(|v| v.to_string())
    }
    check("--preset", meta.preset.clone(), shown(preset_name));
    check("--seed", shown(Some(meta.config.seed)), shown(ov.seed));
    check(
        "--dropout",
        shown(Some(meta.config.dropout)),
        shown(ov.dropout),
    );
    check("--lr", shown(Some(meta.train.lr)), shown(ov.lr));
    check(
        "--min-lr-fraction",
        shown(Some(meta.train.min_lr_fraction)),
        shown(ov.min_lr_fraction),
    );
    check(
        "--optimizer",
        shown(Some(meta.train.optimizer)),
        shown(ov.optimizer),
    );
    check(
        "--ema-decay",
        shown(Some(meta.train.ema_decay)),
        shown(ov.ema_decay),
    );
    let (batch, seq) = (meta.train.batch_size, meta.train.seq_len);
    check("--batch-size", shown(Some(batch)), shown(ov.batch_size));
    check("--seq-len", shown(Some(seq)), shown(ov.seq_len));
    check(
        "--micro-batch",
        shown(meta.micro_batch),
        shown(ov.micro_batch),
    );
    let corpus = meta.corpus.as_ref();
    let path = |p: &PathBuf| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.clone())
            .display()
            .to_string()
    };
    check(
        "--data",
        corpus.map(|c| path(&c.source)),
        ov.data.as_ref().map(path),
    );
    check(
        "--tokenizer",
        corpus.map(|c| {
            c.tokenizer
                .as_ref()
                .map(path)
                .unwrap_or_else(|| "(trained)".into())
        }),
        ov.tokenizer.as_ref().map(path),
    );
    check(
        "--tokenizer-train-bytes",
        corpus.map(|c| c.tokenizer_train_bytes.unwrap_or(0).to_string()),
        ov.tokenizer_train_bytes.map(|v| v.to_string()),
    );
    out
}
