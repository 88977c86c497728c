//! The loop ([`train`]), its options and report, and the evaluation helpers.

use super::log::{finite, LogLine};
use super::trainer::{Split, Trainer};
use crate::data::{Corpus, TokenFile};
use crate::error::Error;
use crate::model::{Gpt, GptConfig, TrainSpec};
use candle_core::{Device, Result};
use candle_nn::VarMap;
use std::path::PathBuf;
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
    /// Seed of a fresh run's batch sampler and dropout masks (a resumed run takes them from its checkpoint's
    /// sampler state). The examples use the model's seed ([`GptConfig::seed`]).
    pub seed: u64,
    /// Continue from the run folder's checkpoint. Without it, a run folder that holds anything is moved aside
    /// (`<run_dir>.1`, …) and the run starts afresh: nothing is ever deleted.
    pub resume: bool,
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
    /// Threads that compute the micro-batches of a step at once on the CPU, each with single-threaded kernels
    /// (data parallelism inside the step). With small models this beats spreading every kernel over the cores,
    /// whose pieces are then too short to pay for the hand-over. The gradients are still summed in micro-batch
    /// order, so the result is the serial one bit for bit; only the speed changes. A fresh run with no
    /// [`TrainOptions::micro_batch`] then takes `batch / workers` sequences per micro-batch. 1 (the default) runs
    /// them one after the other; on other devices than the CPU only 1 is accepted.
    pub workers: usize,
    /// On the CPU, flush subnormal floats to zero in the training threads ([`crate::ops::set_flush_denormals`]):
    /// steps whose values underflow otherwise run several times slower. On by default; the results change only
    /// where a value below the smallest normal float appeared. `false` turns it off on those threads.
    pub flush_denormals: bool,
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
            progress: true,
            stop_at_step: None,
            preset: None,
            sync_phases: false,
            workers: 1,
            flush_denormals: true,
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
    )?
    .result()
}

/// Summed loss of a set of windows: nats, predicted UTF-8 bytes, predicted tokens.
#[derive(Debug, Clone, Copy, Default)]
struct EvalSums {
    nats: f64,
    bytes: u64,
    tokens: usize,
}

impl EvalSums {
    fn result(self) -> Result<EvalResult> {
        if self.tokens == 0 {
            return Err(Error::Data("evaluation on an empty set of windows".into()).into());
        }
        Ok(EvalResult {
            loss: self.nats / self.tokens as f64,
            bits_per_byte: self.nats / (std::f64::consts::LN_2 * self.bytes.max(1) as f64),
            tokens: self.tokens,
        })
    }
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
) -> Result<EvalSums> {
    let mut sums = EvalSums::default();
    for chunk in starts.chunks(micro_batch.max(1)) {
        let mut buf = Vec::with_capacity(chunk.len() * (seq_len + 1));
        for &s in chunk {
            fill(s, &mut buf);
        }
        let (x, y) = crate::data::windows_to_tensors(&buf, chunk.len(), seq_len, device)?;
        let loss = model.loss(&x, &y, false)?.to_scalar::<f32>()? as f64;
        let n = chunk.len() * seq_len;
        sums.nats += loss * n as f64;
        sums.tokens += n;
        for w in buf.chunks_exact(seq_len + 1) {
            sums.bytes += w[1..]
                .iter()
                .map(|&t| token_bytes.get(t as usize).copied().unwrap_or(0) as u64)
                .sum::<u64>();
        }
    }
    Ok(sums)
}

/// Loss of `model` on a UTF-8 text it has never seen: the text is tokenized with `tokenizer` and cut into
/// consecutive windows of `seq_len + 1` tokens (stride `seq_len`), then one last shorter window holds the tokens
/// after the last full one, so that every token but the first is predicted exactly once (a text shorter than one
/// window is one shorter window). Bits per byte count the UTF-8 bytes of the predicted tokens.
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
    let seq_len = seq_len
        .min(ids.len() - 1)
        .min(model.config().context)
        .max(1);
    let token_bytes = crate::data::token_byte_lengths(tokenizer);
    let starts: Vec<usize> = (0..)
        .map(|k| k * seq_len)
        .take_while(|s| s + seq_len < ids.len())
        .collect();
    let window = |len: usize| {
        move |s: usize, buf: &mut Vec<u32>| buf.extend_from_slice(&ids[s..s + len + 1])
    };
    let mut sums = evaluate_windows(
        model,
        &starts,
        seq_len,
        micro_batch,
        &token_bytes,
        device,
        window(seq_len),
    )?;
    // The tail: the tokens after the last full window, predicted from the token before them.
    let tail_start = starts.len() * seq_len;
    let tail = ids.len() - 1 - tail_start;
    if tail > 0 {
        let last = evaluate_windows(
            model,
            &[tail_start],
            tail,
            1,
            &token_bytes,
            device,
            window(tail),
        )?;
        sums.nats += last.nats;
        sums.bytes += last.bytes;
        sums.tokens += last.tokens;
    }
    sums.result()
}

/// The windows that score every next-token prediction of a stream of `len` tokens exactly once, sliding by
/// `stride`: `(start, window length, first scored position)`. The first window scores all its positions; each
/// later one scores only the targets not yet scored, so every target after the first window is predicted from at
/// least `seq_len - stride` tokens of context (a compressor of the stream works so: it never forgets the text just
/// read). A last window, aligned to the end, scores the remainder. `stride = seq_len` gives disjoint windows. A
/// stream shorter than `seq_len + 1` tokens is one shorter window; fewer than 2 tokens, none.
pub fn sliding_windows(len: usize, seq_len: usize, stride: usize) -> Vec<(usize, usize, usize)> {
    if len < 2 {
        return Vec::new();
    }
    let seq_len = seq_len.min(len - 1).max(1);
    let stride = stride.clamp(1, seq_len);
    let mut out = vec![(0, seq_len, 0)];
    // Targets 1..=scored are scored; window `s` predicts targets s+1 ..= s+seq_len.
    let mut scored = seq_len;
    let mut s = stride;
    while s + seq_len < len {
        out.push((s, seq_len, scored - s));
        scored = s + seq_len;
        s += stride;
    }
    if scored < len - 1 {
        let s = len - 1 - seq_len;
        out.push((s, seq_len, scored - s));
    }
    out
}

/// Loss of `model` on a whole token stream of `len` tokens, read through `fill(start, n, buf)` (appends tokens
/// `start..start + n`), with [`sliding_windows`] of `(seq_len, stride)` = `window`, `micro_batch` windows at a
/// time. Bits per byte count the UTF-8 bytes of the scored targets.
pub fn evaluate_sliding(
    model: &Gpt,
    len: usize,
    (seq_len, stride): (usize, usize),
    micro_batch: usize,
    token_bytes: &[u32],
    device: &Device,
    fill: impl Fn(usize, usize, &mut Vec<u32>),
) -> Result<EvalResult> {
    let spans = sliding_windows(len, seq_len.min(model.config().context), stride);
    let mut sums = EvalSums::default();
    let mut i = 0;
    while i < spans.len() {
        let wlen = spans[i].1;
        let mut j = i;
        while j < spans.len() && j - i < micro_batch.max(1) && spans[j].1 == wlen {
            j += 1;
        }
        let chunk = &spans[i..j];
        let mut buf = Vec::with_capacity(chunk.len() * (wlen + 1));
        for &(start, _, _) in chunk {
            fill(start, wlen + 1, &mut buf);
        }
        let (x, y) = crate::data::windows_to_tensors(&buf, chunk.len(), wlen, device)?;
        let losses = model.token_losses(&x, &y)?.to_vec2::<f32>()?;
        for ((&(_, _, first), row), w) in chunk.iter().zip(&losses).zip(buf.chunks_exact(wlen + 1))
        {
            for p in first..wlen {
                sums.nats += row[p] as f64;
                sums.tokens += 1;
                sums.bytes += token_bytes.get(w[p + 1] as usize).copied().unwrap_or(0) as u64;
            }
        }
        i = j;
    }
    sums.result()
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

/// Trains `model` (whose trainable variables live in `varmap`) on `corpus` with the recipe `spec`; see the
/// [module docs](crate::train). `stop` is polled after every step: when it is raised, the run writes a checkpoint and
/// returns with [`TrainReport::interrupted`] set.
///
/// The loop of a [`Trainer`]: step, log, evaluate every [`TrainOptions::eval_every`] steps, checkpoint every
/// [`TrainOptions::checkpoint_every`] steps; at the end (or on stop) a checkpoint, then the final evaluation.
/// Errors: see [`Trainer::start`], and any I/O failure.
pub fn train(
    model: &Gpt,
    varmap: &VarMap,
    corpus: &Corpus,
    spec: &TrainSpec,
    opts: &TrainOptions,
    stop: &AtomicBool,
) -> Result<TrainReport> {
    let t_start = Instant::now();
    let mut t = Trainer::start(model, varmap, corpus, spec, opts)?;
    let bar = progress_bar(opts.progress, t.total_steps(), t.steps_done());
    let stop_at = opts.stop_at_step.unwrap_or(u64::MAX);
    let every = |k: u64, n: u64| n > 0 && k.is_multiple_of(n);
    let (mut losses, mut train_time, mut interrupted) = (Vec::new(), 0f64, false);
    let mut last_val: Option<f64> = None;
    let mut last_logged = t.steps_done();
    while !t.done() {
        if t.steps_done() >= stop_at || stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let t0 = Instant::now();
        let mut line = t.step()?;
        train_time += t0.elapsed().as_secs_f64();
        losses.push(line.train_loss as f32);
        // The line's loss: the mean over the steps since the previous line.
        let since = (line.step - last_logged).clamp(1, losses.len() as u64) as usize;
        line.train_loss = losses[losses.len() - since..]
            .iter()
            .map(|&l| l as f64)
            .sum::<f64>()
            / since as f64;
        let evaluate_now = every(line.step, opts.eval_every) && !t.done();
        if evaluate_now {
            if let Some(v) = t.evaluate(Split::Valid)? {
                (line.val_loss, line.val_bpb) = (finite(v.loss), finite(v.bits_per_byte));
                last_val = Some(v.loss);
            }
        }
        if evaluate_now || every(line.step, opts.log_every.max(1)) || t.done() {
            t.log(&LogLine::Step(line.clone()))?;
            last_logged = line.step;
        }
        let rate = (losses.len() as u64 * spec.tokens_per_step()) as f64 / train_time;
        let val = last_val
            .map(|v| format!(", val {v:.3}"))
            .unwrap_or_default();
        bar.set_message(format!(
            "loss {:.3}, lr {:.2e}, {rate:.0} tok/s{val}",
            line.train_loss, line.lr
        ));
        bar.set_position(line.step);
        if every(line.step, opts.checkpoint_every) && !t.done() {
            t.save()?;
        }
    }
    let checkpoint = t.save()?;
    let (steps, tokens, phases, log) = (t.steps_done(), t.tokens(), t.phases, t.log_path());
    let (valid, test) = t.finish(interrupted)?;
    bar.finish_and_clear();
    let trained = losses.len() as u64 * spec.tokens_per_step();
    Ok(TrainReport {
        steps,
        tokens,
        losses,
        valid,
        test,
        interrupted,
        checkpoint,
        log,
        elapsed_s: t_start.elapsed().as_secs_f64(),
        tokens_per_s: if train_time > 0.0 {
            trained as f64 / train_time
        } else {
            0.0
        },
        phases,
    })
}

/// An indicatif bar over the steps of the budget (hidden when `show` is false).
fn progress_bar(show: bool, total: u64, at: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps, {msg} (ETA {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_position(at);
    bar
}
