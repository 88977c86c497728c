//! Training: AdamW with checkpointable moments, the warmup + cosine schedule, global gradient clipping, gradient
//! accumulation, evaluation in nats per token and bits per byte, a JSONL log, and exact resume.
//!
//! [`train`] runs the loop for a [`Gpt`] on a [`Corpus`]:
//!
//! * each optimizer step draws `batch_size` windows from the [`BatchSampler`], in micro-batches of
//!   [`TrainOptions::micro_batch`] sequences whose gradients are summed (gradient accumulation), clips the global
//!   gradient norm, and applies [`AdamW`] at the learning rate of [`LrSchedule`] for the tokens seen so far;
//! * every step appends a JSON line to `log.jsonl` in the run folder: step, tokens, compute `C = 6·N·tokens` in
//!   FLOPs and PF-days (`N` trainable non-embedding), frozen and emulated parameter counts, train loss, learning
//!   rate, gradient norm, tokens per second, and validation loss / bits per byte when measured;
//! * the validation loss is measured every [`TrainOptions::eval_every`] steps on a fixed subset of the validation
//!   split, and at the end, with the test loss;
//! * a checkpoint (weights, optimizer moments, step, data position, sampler state, configuration) is written
//!   atomically every [`TrainOptions::checkpoint_every`] steps, at the end, and when the stop flag is raised
//!   (Ctrl-C in the examples). [`TrainOptions::resume`] continues from it exactly: on the CPU a run interrupted and
//!   resumed logs bit-for-bit the losses of one that was not, dropout included: the masks of the fused CPU dropout
//!   are seeded from the run seed and the step ([`crate::ops::set_dropout_seed`]). (On CUDA and for half types,
//!   dropout falls back to candle's, whose generator cannot be seeded, so resume there is exact only without it.)

mod checkpoint;
mod optim;
mod schedule;
pub mod sweep;

pub use checkpoint::{
    checkpoint_bytes, config_differences, load_checkpoint, previous_path, save_checkpoint,
    Checkpoint, CheckpointMeta, CHECKPOINT_FORMAT,
};
pub use optim::{clip_grad_norm, global_grad_norm, AdamW, AdamWConfig};
pub use schedule::LrSchedule;

use crate::flops::{pf_days, training_flops};

use crate::data::{eval_windows, BatchSampler, Corpus, TokenFile};
use crate::error::Error;
use crate::model::{Gpt, GptConfig, TrainSpec};
use crate::params::CountParams;
use candle_core::{Device, Result, Tensor, Var};
use candle_nn::VarMap;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// File names inside a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The JSONL log.
pub const LOG_FILE: &str = "log.jsonl";
/// The tokenizer, copied beside the checkpoint so that `generate` needs only the run folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// How a run is carried out (the recipe itself is a [`TrainSpec`]).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Folder of the log, checkpoint and tokenizer copy.
    pub run_dir: PathBuf,
    /// Sequences per forward/backward pass; `batch_size` must be a multiple. `None` picks the largest divisor of
    /// the batch whose activations fit in half the available memory.
    pub micro_batch: Option<usize>,
    /// Measure the validation loss every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Validation windows (of `seq_len` tokens) in the fixed subset.
    pub eval_windows: usize,
    /// Test windows evaluated at the end.
    pub test_windows: usize,
    /// Checkpoint every this many steps (0: only at the end and on stop).
    pub checkpoint_every: u64,
    /// Write a step line to the log every this many steps (and at every evaluation); its `train_loss` is the mean
    /// over the steps since the previous line. 1 (the default) logs every step; long runs use more to keep their
    /// logs small.
    pub log_every: u64,
    /// Seed of the batch sampler.
    pub seed: u64,
    /// Continue from the run folder's checkpoint.
    pub resume: bool,
    /// Start afresh even if the run folder holds a checkpoint (which is then replaced).
    pub overwrite: bool,
    /// Show an indicatif progress bar.
    pub progress: bool,
    /// Stop (and checkpoint) after this many steps in total, as if interrupted: the schedule still spans the whole
    /// budget. Used to test resuming.
    pub stop_at_step: Option<u64>,
    /// Preset name recorded in the log and checkpoint.
    pub preset: Option<String>,
    /// Wait for the device at the end of each phase of a step (forward, backward, optimizer), so that
    /// [`TrainReport::phases`] splits a GPU step truthfully; this removes the overlap between phases, so tokens/s
    /// drop a little. On the CPU, which runs synchronously, the split is right either way.
    pub sync_phases: bool,
}

impl TrainOptions {
    /// Defaults: evaluate every 100 steps on 64 windows, test on 256 windows, checkpoint every 100 steps, seed 0,
    /// progress bar on.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
            micro_batch: None,
            eval_every: 100,
            eval_windows: 64,
            test_windows: 256,
            checkpoint_every: 100,
            log_every: 1,
            seed: 0,
            resume: false,
            overwrite: false,
            progress: true,
            stop_at_step: None,
            preset: None,
            sync_phases: false,
        }
    }
}

/// Loss of a model on a set of windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    /// Mean cross-entropy in nats per token.
    pub loss: f64,
    /// Bits per UTF-8 byte of the predicted text: `Σ nats / (ln 2 · Σ bytes)`.
    pub bits_per_byte: f64,
    /// Tokens evaluated.
    pub tokens: usize,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Optimizer steps done in total (resumed runs included).
    pub steps: u64,
    /// Training tokens seen in total.
    pub tokens: u64,
    /// Training loss of every step run in this call.
    pub losses: Vec<f32>,
    /// Final validation result (absent when interrupted).
    pub valid: Option<EvalResult>,
    /// Final test result (absent when interrupted).
    pub test: Option<EvalResult>,
    /// Whether the run stopped early (stop flag or `stop_at_step`).
    pub interrupted: bool,
    /// The checkpoint written last.
    pub checkpoint: PathBuf,
    /// The JSONL log.
    pub log: PathBuf,
    /// Seconds spent in this call.
    pub elapsed_s: f64,
    /// Training tokens per second in this call (optimizer steps only, evaluation excluded).
    pub tokens_per_s: f64,
    /// Where the optimizer steps of this call spent their time.
    pub phases: PhaseTimes,
}

/// Seconds spent in each phase of the training steps of one [`train`] call, summed over its steps. On a GPU the
/// split is only exact with [`TrainOptions::sync_phases`] (otherwise work queued by one phase is paid in the next
/// phase that waits for the device: the forward pass reads its loss back, so it absorbs the queue).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes {
    /// Sampling the batches and moving them to the device.
    pub data_s: f64,
    /// Forward passes, up to the loss read back.
    pub forward_s: f64,
    /// Backward passes and the accumulation of micro-batch gradients.
    pub backward_s: f64,
    /// Gradient clipping and the AdamW update.
    pub optimizer_s: f64,
}

/// Mean loss and bits per byte of `model` on `windows` (starts of `seq_len + 1`-token windows of `tokens`), in
/// evaluation mode, `micro_batch` windows at a time.
pub fn evaluate(
    model: &Gpt,
    tokens: &TokenFile,
    windows: &[usize],
    seq_len: usize,
    micro_batch: usize,
    token_bytes: &[u32],
    device: &Device,
) -> Result<EvalResult> {
    let window = |s: usize, buf: &mut Vec<u32>| tokens.extend_window(s, seq_len + 1, buf);
    evaluate_windows(
        model,
        windows,
        seq_len,
        micro_batch,
        token_bytes,
        device,
        window,
    )
}

/// The loop behind [`evaluate`] and [`evaluate_text`]: `fill(start, buf)` appends the `seq_len + 1` tokens of the
/// window starting at `start`; losses are weighted by predicted tokens, bytes counted from `token_bytes`.
fn evaluate_windows(
    model: &Gpt,
    starts: &[usize],
    seq_len: usize,
    micro_batch: usize,
    token_bytes: &[u32],
    device: &Device,
    fill: impl Fn(usize, &mut Vec<u32>),
) -> Result<EvalResult> {
    let mut nats = 0f64;
    let mut bytes = 0u64;
    let mut count = 0usize;
    for chunk in starts.chunks(micro_batch.max(1)) {
        let mut buf = Vec::with_capacity(chunk.len() * (seq_len + 1));
        for &s in chunk {
            fill(s, &mut buf);
        }
        let (x, y) = crate::data::windows_to_tensors(&buf, chunk.len(), seq_len, device)?;
        let loss = model.loss(&x, &y, false)?.to_scalar::<f32>()? as f64;
        let n = chunk.len() * seq_len;
        nats += loss * n as f64;
        count += n;
        for w in buf.chunks_exact(seq_len + 1) {
            bytes += w[1..]
                .iter()
                .map(|&t| token_bytes.get(t as usize).copied().unwrap_or(0) as u64)
                .sum::<u64>();
        }
    }
    if count == 0 {
        return Err(Error::Data("evaluation on an empty set of windows".into()).into());
    }
    Ok(EvalResult {
        loss: nats / count as f64,
        bits_per_byte: nats / (std::f64::consts::LN_2 * bytes.max(1) as f64),
        tokens: count,
    })
}

/// Loss of `model` on a UTF-8 text it has never seen: the text is tokenized with `tokenizer` and cut into
/// consecutive windows of `seq_len + 1` tokens (stride `seq_len`, so every token but the first is predicted once;
/// a text shorter than one window is evaluated as one shorter window). Bits per byte count the UTF-8 bytes of the
/// predicted tokens.
pub fn evaluate_text(
    model: &Gpt,
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    seq_len: usize,
    micro_batch: usize,
    device: &Device,
) -> Result<EvalResult> {
    let enc = tokenizer
        .encode(text, false)
        .map_err(|e| Error::Data(format!("cannot tokenize the evaluation text: {e}")))?;
    let ids = enc.get_ids();
    if ids.len() < 2 {
        return Err(Error::Data(format!(
            "the evaluation text holds {} token(s); at least 2 are needed",
            ids.len()
        ))
        .into());
    }
    let seq_len = seq_len.min(ids.len() - 1).min(model.config().context);
    let token_bytes = crate::data::token_byte_lengths(tokenizer);
    let starts: Vec<usize> = (0..)
        .map(|k| k * seq_len)
        .take_while(|s| s + seq_len < ids.len())
        .collect();
    let window = |s: usize, buf: &mut Vec<u32>| buf.extend_from_slice(&ids[s..s + seq_len + 1]);
    evaluate_windows(
        model,
        &starts,
        seq_len,
        micro_batch,
        &token_bytes,
        device,
        window,
    )
}

/// Rough activation memory of one forward/backward pass in bytes (f32), for choosing the micro-batch: per
/// layer about `40·d + 5·heads·seq` floats per token are kept for the backward pass, plus `4·vocab` per token for
/// the logits and their gradient.
pub fn activation_bytes(cfg: &GptConfig, micro_batch: usize, seq_len: usize) -> u64 {
    let per_token =
        cfg.n_layers() * (40 * cfg.d_model + 5 * cfg.n_heads * seq_len) + 4 * cfg.vocab_size;
    (micro_batch * seq_len * per_token * 4) as u64
}

/// Memory available for activations: `MemAvailable` on Linux CPUs; on a GPU the environment variable
/// `CANDLE_STRUCTURED_DEVICE_MEMORY_GIB`, or 80 GiB (an H100) when it is not set.
fn available_memory(device: &Device) -> Option<u64> {
    if !device.is_cpu() {
        let gib = std::env::var("CANDLE_STRUCTURED_DEVICE_MEMORY_GIB")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(80.0);
        return Some((gib * (1u64 << 30) as f64) as u64);
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Checks the recipe against the model and picks the micro-batch: errors for a sequence length above the context,
/// a batch that is not a multiple of the micro-batch, or a micro-batch whose activations do not fit in memory.
pub fn plan_micro_batch(
    cfg: &GptConfig,
    spec: &TrainSpec,
    micro_batch: Option<usize>,
    device: &Device,
) -> Result<usize> {
    if spec.seq_len == 0 || spec.batch_size == 0 {
        return Err(Error::Config(format!(
            "batch size ({}) and sequence length ({}) must be positive",
            spec.batch_size, spec.seq_len
        ))
        .into());
    }
    if spec.seq_len > cfg.context {
        return Err(Error::Config(format!(
            "sequence length {} is above the model's context of {} tokens",
            spec.seq_len, cfg.context
        ))
        .into());
    }
    let budget = available_memory(device).map(|m| m / 2);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match micro_batch {
        Some(mb) => {
            if mb == 0 || !spec.batch_size.is_multiple_of(mb) {
                return Err(Error::Config(format!(
                    "the batch of {} sequences is not a multiple of the micro-batch of {mb}",
                    spec.batch_size
                ))
                .into());
            }
            if let Some(budget) = budget {
                let need = activation_bytes(cfg, mb, spec.seq_len);
                if need > budget {
                    return Err(Error::Config(format!(
                        "a micro-batch of {mb} sequences × {} tokens needs about {:.1} GiB of activations, but only \
                         {:.1} GiB are available (half the free memory); use a smaller micro-batch (gradient \
                         accumulation keeps the batch of {})",
                        spec.seq_len,
                        gib(need),
                        gib(budget),
                        spec.batch_size
                    ))
                    .into());
                }
            }
            Ok(mb)
        }
        None => {
            let Some(budget) = budget else {
                return Ok(spec.batch_size);
            };
            for mb in (1..=spec.batch_size).rev() {
                if spec.batch_size.is_multiple_of(mb)
                    && activation_bytes(cfg, mb, spec.seq_len) <= budget
                {
                    return Ok(mb);
                }
            }
            Err(Error::Config(format!(
                "even one sequence of {} tokens needs about {:.1} GiB of activations, above the {:.1} GiB available; \
                 use a shorter sequence length or a smaller model",
                spec.seq_len,
                gib(activation_bytes(cfg, 1, spec.seq_len)),
                gib(budget)
            ))
            .into())
        }
    }
}

/// The named variables of a `VarMap`, sorted by name.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Loads the weights of a checkpoint into `varmap`'s variables. Errors (and changes nothing) when the checkpoint
/// was written for another configuration or misses a variable.
pub fn restore_weights(
    ckpt: &Checkpoint,
    cfg: &GptConfig,
    varmap: &VarMap,
    path: &Path,
) -> Result<()> {
    if ckpt.meta.config != *cfg {
        return Err(Error::Checkpoint(format!(
            "{} was written for another model configuration ({})",
            path.display(),
            config_differences(&ckpt.meta.config, cfg)
        ))
        .into());
    }
    let vars = named_vars(varmap);
    let mut values = Vec::with_capacity(vars.len());
    for (name, var) in &vars {
        // Checkpoints from before FastFood's renamed diagonals and stored permutations still load.
        let former = || crate::layers::former_name(name).map(|old| format!("model/{old}"));
        let t = ckpt.tensors.get(&format!("model/{name}"));
        let Some(t) = t.or_else(|| former().and_then(|k| ckpt.tensors.get(&k))) else {
            if crate::layers::is_permutation_table(name) {
                continue;
            }
            return Err(
                Error::Checkpoint(format!("{} has no weights for {name}", path.display())).into(),
            );
        };
        if t.dims() != var.dims() {
            return Err(Error::Checkpoint(format!(
                "{}: {name} has shape {:?}, the model {:?}",
                path.display(),
                t.dims(),
                var.dims()
            ))
            .into());
        }
        values.push((var, t.to_device(var.device())?.to_dtype(var.dtype())?));
    }
    for (var, t) in values {
        var.set(&t)?;
    }
    Ok(())
}

struct JsonlLog {
    file: std::fs::File,
    path: PathBuf,
}

impl JsonlLog {
    /// Opens the log for appending; when resuming at `keep_upto`, drops lines of later steps (written after the
    /// checkpoint by an interrupted run) so the log reads as one run.
    fn open(path: &Path, keep_upto: Option<u64>) -> Result<Self> {
        match keep_upto {
            Some(step) if path.exists() => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                let mut kept = String::new();
                for line in text.lines() {
                    let later = serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s > step);
                    if !later && !line.trim().is_empty() {
                        kept.push_str(line);
                        kept.push('\n');
                    }
                }
                crate::data::write_atomic(path, kept.as_bytes())?;
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
            _ => {}
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

    fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").map_err(|e| Error::io(&self.path, e))?;
        Ok(())
    }
}

fn json_f64(x: f64) -> serde_json::Value {
    if x.is_finite() {
        json!(x)
    } else {
        json!(null)
    }
}

/// Trains `model` (whose trainable variables live in `varmap`) on `corpus` with the recipe `spec`; see the
/// [module docs](self). `stop` is polled after every step: when it is raised, the run writes a checkpoint and
/// returns with [`TrainReport::interrupted`] set.
///
/// Errors: a sequence length above the context, a batch that does not fit (see [`plan_micro_batch`]), splits too
/// short for one window, a resume without checkpoint or from another configuration, a run folder that already
/// holds a checkpoint (without `resume` or `overwrite`), and any I/O failure.
pub fn train(
    model: &Gpt,
    varmap: &VarMap,
    corpus: &Corpus,
    spec: &TrainSpec,
    opts: &TrainOptions,
    stop: &AtomicBool,
) -> Result<TrainReport> {
    let t_start = Instant::now();
    let cfg = model.config();
    let vars = named_vars(varmap);
    let device = match vars.first() {
        Some((_, v)) => v.device().clone(),
        None => return Err(Error::Config("the model has no trainable variable".into()).into()),
    };
    let micro = plan_micro_batch(cfg, spec, opts.micro_batch, &device)?;
    let accum = spec.batch_size / micro;
    if corpus.vocab_size > cfg.vocab_size {
        return Err(Error::Config(format!(
            "the tokenizer has {} tokens, more than the model's vocabulary of {}",
            corpus.vocab_size, cfg.vocab_size
        ))
        .into());
    }
    for (name, split) in [("training", &corpus.train), ("validation", &corpus.valid)] {
        if split.len() < spec.seq_len + 1 {
            return Err(Error::Data(format!(
                "the {name} split holds {} tokens, fewer than one window of {} (sequence length + 1)",
                split.len(),
                spec.seq_len + 1
            ))
            .into());
        }
    }
    std::fs::create_dir_all(&opts.run_dir).map_err(|e| Error::io(&opts.run_dir, e))?;
    let ckpt_path = opts.run_dir.join(CHECKPOINT_FILE);
    let log_path = opts.run_dir.join(LOG_FILE);

    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            beta1: spec.beta1,
            beta2: spec.beta2,
            eps: spec.eps,
            weight_decay: spec.weight_decay,
        },
    )?;
    let mut sampler = BatchSampler::new(opts.seed);
    let mut step = 0u64;
    let mut tokens = 0u64;
    let mut elapsed_before = 0f64;
    if opts.resume {
        let ckpt = load_checkpoint(&ckpt_path, &device)?;
        if ckpt.meta.train != *spec {
            return Err(Error::Checkpoint(format!(
                "{} was written with another training recipe (checkpoint {:?}, this run {:?})",
                ckpt_path.display(),
                ckpt.meta.train,
                spec
            ))
            .into());
        }
        restore_weights(&ckpt, cfg, varmap, &ckpt_path)?;
        let t = &ckpt.tensors;
        opt.load_state(
            |name| {
                Some((
                    t.get(&format!("adam.m/{name}"))?.clone(),
                    t.get(&format!("adam.v/{name}"))?.clone(),
                ))
            },
            ckpt.meta.adam_step,
        )?;
        sampler = ckpt.meta.sampler;
        step = ckpt.meta.step;
        tokens = ckpt.meta.tokens;
        elapsed_before = ckpt.meta.elapsed_s;
    } else if ckpt_path.exists() && !opts.overwrite {
        return Err(Error::Checkpoint(format!(
            "{} already holds a checkpoint; resume it, choose another run folder, or overwrite it explicitly",
            ckpt_path.display()
        ))
        .into());
    }
    // The tokenizer travels with the run.
    let tok_copy = opts.run_dir.join(TOKENIZER_FILE);
    if std::fs::canonicalize(&corpus.tokenizer_path).ok() != std::fs::canonicalize(&tok_copy).ok() {
        let bytes = std::fs::read(&corpus.tokenizer_path)
            .map_err(|e| Error::io(&corpus.tokenizer_path, e))?;
        crate::data::write_atomic(&tok_copy, &bytes)?;
    }

    let counts = model.param_counts();
    let n = counts.non_embedding.trainable;
    let mut log = JsonlLog::open(&log_path, opts.resume.then_some(step))?;
    log.write(&json!({
        "event": if opts.resume { "resume" } else { "start" },
        "step": step,
        "preset": opts.preset,
        "config": cfg,
        "train": spec,
        "micro_batch": micro,
        "accumulation": accum,
        "n_trainable_non_embedding": n,
        "n_frozen": counts.non_embedding.frozen,
        "n_emulated": counts.non_embedding.emulated,
        "n_embedding": counts.embedding.trainable,
        "device": format!("{:?}", device.location()),
    }))?;

    let schedule = LrSchedule::from_spec(spec);
    let total_steps = spec.total_steps();
    let stop_at = opts.stop_at_step.unwrap_or(u64::MAX).min(total_steps);
    let val_windows = eval_windows(corpus.valid.len(), spec.seq_len, opts.eval_windows);
    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::new(total_steps);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps, {msg} (ETA {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_position(step);
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let save =
        |step: u64, tokens: u64, sampler: BatchSampler, opt: &AdamW, elapsed: f64| -> Result<()> {
            let (moments, adam_step) = opt.state();
            let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(3 * moments.len());
            for ((name, var), (_, m, v)) in opt.params().iter().zip(moments) {
                tensors.push((format!("model/{name}"), var.as_tensor().clone()));
                tensors.push((format!("adam.m/{name}"), m));
                tensors.push((format!("adam.v/{name}"), v));
            }
            let meta = CheckpointMeta {
                format: CHECKPOINT_FORMAT,
                step,
                tokens,
                sampler,
                adam_step,
                config: cfg.clone(),
                train: spec.clone(),
                preset: opts.preset.clone(),
                tokenizer: Some(TOKENIZER_FILE.into()),
                elapsed_s: elapsed,
            };
            save_checkpoint(&ckpt_path, &meta, &tensors)
        };

    let mut losses = Vec::new();
    let mut phases = PhaseTimes::default();
    let mut train_time = 0f64;
    let mut train_tokens = 0u64;
    let mut interrupted = false;
    let mut last_val: Option<EvalResult> = None;
    let mut last_logged = step;
    while step < total_steps {
        if step >= stop_at || stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let t0 = Instant::now();
        // The rate for the tokens this step brings the total to (the first step of warmup is not wasted at 0).
        let lr = schedule.lr(tokens + spec.tokens_per_step());
        // Dropout masks depend only on (seed, step): a resumed run draws the same ones.
        crate::ops::set_dropout_seed(opts.seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut grads: Vec<Option<Tensor>> = vec![None; opt.params().len()];
        let mut loss_sum = 0f64;
        let sync = || -> Result<()> {
            if opts.sync_phases {
                device.synchronize()?;
            }
            Ok(())
        };
        for _ in 0..accum {
            let tp = Instant::now();
            let (x, y) = sampler.next_batch(&corpus.train, micro, spec.seq_len, &device)?;
            sync()?;
            phases.data_s += tp.elapsed().as_secs_f64();
            let tp = Instant::now();
            let loss = model.loss(&x, &y, true)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            phases.forward_s += tp.elapsed().as_secs_f64();
            let tp = Instant::now();
            let scaled = if accum > 1 {
                (loss / accum as f64)?
            } else {
                loss
            };
            let store = scaled.backward()?;
            for (acc, g) in grads.iter_mut().zip(opt.grads_of(&store)) {
                *acc = match (acc.take(), g) {
                    (Some(a), Some(g)) => Some((a + g)?),
                    (a, g) => a.or(g),
                };
            }
            sync()?;
            phases.backward_s += tp.elapsed().as_secs_f64();
        }
        let loss = (loss_sum / accum as f64) as f32;
        if !loss.is_finite() {
            // Keep the last good checkpoint untouched and stop with a clear error.
            return Err(Error::Data(format!(
                "the training loss became {loss} at step {} (learning rate {lr:.3e}); the last checkpoint is kept",
                step + 1
            ))
            .into());
        }
        let tp = Instant::now();
        let grad_norm = clip_grad_norm(&mut grads, spec.grad_clip)?;
        opt.step(&grads, lr)?;
        sync()?;
        phases.optimizer_s += tp.elapsed().as_secs_f64();
        step += 1;
        tokens += spec.tokens_per_step();
        let dt = t0.elapsed().as_secs_f64();
        train_time += dt;
        train_tokens += spec.tokens_per_step();
        losses.push(loss);
        let since = step.saturating_sub(last_logged).max(1) as usize;
        let mean_loss = losses[losses.len().saturating_sub(since)..]
            .iter()
            .map(|&l| l as f64)
            .sum::<f64>()
            / since.min(losses.len()).max(1) as f64;
        let flops = training_flops(n, tokens);
        let mut line = json!({
            "step": step,
            "tokens": tokens,
            "flops": flops,
            "pf_days": pf_days(flops),
            "n_trainable_non_embedding": n,
            "n_frozen": counts.non_embedding.frozen,
            "train_loss": mean_loss,
            "lr": lr,
            "grad_norm": json_f64(grad_norm),
            "tokens_per_s": spec.tokens_per_step() as f64 / dt,
            "elapsed_s": elapsed_before + t_start.elapsed().as_secs_f64(),
        });
        let evaluate_now =
            opts.eval_every > 0 && step.is_multiple_of(opts.eval_every) && step < total_steps;
        if evaluate_now {
            let r = evaluate(
                model,
                &corpus.valid,
                &val_windows,
                spec.seq_len,
                micro,
                &corpus.token_bytes,
                &device,
            )?;
            line["val_loss"] = json_f64(r.loss);
            line["val_bpb"] = json_f64(r.bits_per_byte);
            last_val = Some(r);
        }
        if evaluate_now || step.is_multiple_of(opts.log_every.max(1)) || step == total_steps {
            log.write(&line)?;
            last_logged = step;
        }
        let mut msg = format!(
            "loss {loss:.3}, lr {lr:.2e}, {:.0} tok/s",
            train_tokens as f64 / train_time
        );
        if let Some(v) = last_val {
            msg.push_str(&format!(", val {:.3}", v.loss));
        }
        bar.set_message(msg);
        bar.set_position(step);
        if opts.checkpoint_every > 0
            && step.is_multiple_of(opts.checkpoint_every)
            && step < total_steps
        {
            save(
                step,
                tokens,
                sampler,
                &opt,
                elapsed_before + t_start.elapsed().as_secs_f64(),
            )?;
        }
    }
    save(
        step,
        tokens,
        sampler,
        &opt,
        elapsed_before + t_start.elapsed().as_secs_f64(),
    )?;
    let (mut valid, mut test) = (None, None);
    if !interrupted {
        let v = evaluate(
            model,
            &corpus.valid,
            &val_windows,
            spec.seq_len,
            micro,
            &corpus.token_bytes,
            &device,
        )?;
        let test_w = eval_windows(corpus.test.len(), spec.seq_len, opts.test_windows);
        let t = if test_w.is_empty() {
            None
        } else {
            Some(evaluate(
                model,
                &corpus.test,
                &test_w,
                spec.seq_len,
                micro,
                &corpus.token_bytes,
                &device,
            )?)
        };
        let flops = training_flops(n, tokens);
        log.write(&json!({
            "event": "final",
            "step": step,
            "tokens": tokens,
            "flops": flops,
            "pf_days": pf_days(flops),
            "n_trainable_non_embedding": n,
            "n_frozen": counts.non_embedding.frozen,
            "val_loss": json_f64(v.loss),
            "val_bpb": json_f64(v.bits_per_byte),
            "val_tokens": v.tokens,
            "test_loss": t.map(|t| json_f64(t.loss)),
            "test_bpb": t.map(|t| json_f64(t.bits_per_byte)),
            "test_tokens": t.map(|t| t.tokens),
        }))?;
        valid = Some(v);
        test = t;
    } else {
        log.write(&json!({"event": "interrupted", "step": step, "tokens": tokens}))?;
    }
    bar.finish_and_clear();
    Ok(TrainReport {
        steps: step,
        tokens,
        losses,
        valid,
        test,
        interrupted,
        checkpoint: ckpt_path,
        log: log_path,
        elapsed_s: t_start.elapsed().as_secs_f64(),
        tokens_per_s: if train_time > 0.0 {
            train_tokens as f64 / train_time
        } else {
            0.0
        },
        phases,
    })
}
