//! The run as an object: [`Trainer::start`] starts or resumes (the one place that decides), [`Trainer::step`] runs
//! one optimizer step, [`Trainer::evaluate`] measures a split, [`Trainer::save`] writes the checkpoint. The loop
//! that calls them is [`super::train`].

use super::checkpoint::{
    load_checkpoint, restore_training_state, save_checkpoint, training_tensors, CheckpointMeta,
    CHECKPOINT_FORMAT,
};
use super::log::{finite, Event, FinalLine, LogLine, PlanLine, RunLog, StepLine};
use super::run_dir::RunDir;
use super::{
    clip_grad_norm, evaluate, named_vars, plan_micro_batch, training_flops, AdamW, AdamWConfig,
    EvalResult, LrSchedule, PhaseTimes, TrainOptions, WeightAverage, CHECKPOINT_FILE, LOG_FILE,
    TOKENIZER_FILE,
};
use crate::data::{eval_windows, fnv1a, BatchSampler, Corpus, TokenFile};
use crate::error::Error;
use crate::model::{Gpt, TrainSpec};
use crate::ops::Mode;
use crate::params::{CountParams, ParamCounts};
use candle_core::{Device, Result, Tensor};
use candle_nn::VarMap;
use std::path::PathBuf;
use std::time::Instant;

/// Which split [`Trainer::evaluate`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The fixed subset of [`TrainOptions::eval_windows`] validation windows.
    Valid,
    /// [`TrainOptions::test_windows`] test windows.
    Test,
}

/// A training run in progress: the model, its optimizer and data position, its locked folder and its log.
pub struct Trainer<'a> {
    model: &'a Gpt,
    corpus: &'a Corpus,
    spec: TrainSpec,
    opts: TrainOptions,
    dir: RunDir,
    device: Device,
    opt: AdamW,
    sampler: BatchSampler,
    schedule: LrSchedule,
    step: u64,
    tokens: u64,
    micro: usize,
    elapsed_before: f64,
    started: Instant,
    log: RunLog,
    /// The model's parameter counts (fixed for the run; logged with every line).
    counts: ParamCounts,
    /// Where the steps of this call spent their time.
    pub phases: PhaseTimes,
    /// One single-thread pool per worker ([`TrainOptions::workers`]); empty when micro-batches run in turn.
    pools: Vec<rayon::ThreadPool>,
    /// The weight average, when the recipe keeps one.
    average: Option<WeightAverage>,
}

/// One micro-batch's loss and gradients (in the optimizer's parameter order), with its forward and backward times.
type MicroResult = (f64, Vec<Option<Tensor>>, f64, f64);

impl<'a> Trainer<'a> {
    /// Locks the run folder and starts a fresh run (moving an old one aside, see [`RunDir::fresh`]) or, with
    /// [`TrainOptions::resume`], restores the checkpoint: weights, moments, step, data position.
    ///
    /// Errors: a folder in use by another process, a sequence length above the context, a batch that does not fit
    /// (see [`plan_micro_batch`]), splits too short for one window, and on resume a missing or corrupt checkpoint,
    /// another model or recipe, another micro-batch, or other data (tokenizer or token files), each named.
    pub fn start(
        model: &'a Gpt,
        varmap: &VarMap,
        corpus: &'a Corpus,
        spec: &TrainSpec,
        opts: &TrainOptions,
    ) -> Result<Self> {
        let cfg = model.config();
        let vars = named_vars(varmap);
        let device = match vars.first() {
            Some((_, v)) => v.device().clone(),
            None => return Err(Error::Config("the model has no trainable variable".into()).into()),
        };
        check_corpus(corpus, cfg.vocab_size, spec.seq_len)?;
        if opts.workers == 0 || (opts.workers > 1 && !device.is_cpu()) {
            return Err(Error::Config(format!(
                "{} workers: at least 1, and more than 1 only on the CPU",
                opts.workers
            ))
            .into());
        }
        // Workers share a step's micro-batches: without a given micro-batch, a fresh run takes the largest that
        // fits in memory and gives each worker one.
        let mut micro = plan_micro_batch(cfg, spec, opts.micro_batch, &device)?;
        if opts.micro_batch.is_none() && opts.workers > 1 {
            let most = micro.min(spec.batch_size / opts.workers).max(1);
            micro = (1..=most)
                .rev()
                .find(|d| spec.batch_size.is_multiple_of(*d))
                .unwrap_or(1);
        }
        let dir = if opts.resume {
            RunDir::resume(&opts.run_dir)?
        } else {
            RunDir::fresh(&opts.run_dir)?
        };
        let mut opt = AdamW::new(
            vars,
            AdamWConfig {
                beta1: spec.beta1,
                beta2: spec.beta2,
                eps: spec.eps,
                weight_decay: spec.weight_decay,
                muon: (spec.optimizer == crate::model::OptimizerKind::Muon)
                    .then(super::MuonConfig::default),
            },
        )?;
        let (mut sampler, mut step, mut tokens, mut elapsed_before) =
            (BatchSampler::new(opts.seed), 0, 0, 0.0);
        let mut average = (spec.ema_decay > 0.0)
            .then(|| WeightAverage::new(spec.ema_decay, opt.params()))
            .transpose()?;
        if opts.resume {
            let path = opts.run_dir.join(CHECKPOINT_FILE);
            let ckpt = load_checkpoint(&path, &device)?;
            micro = check_resume(&ckpt.meta, spec, opts.micro_batch, micro, corpus, &path)?;
            micro = plan_micro_batch(cfg, spec, Some(micro), &device)?;
            restore_training_state(&ckpt, cfg, varmap, &mut opt, &path)?;
            if let Some(a) = &mut average {
                a.load(opt.params(), |k| ckpt.tensors.get(k).cloned())?;
            }
            sampler = ckpt.meta.sampler;
            (step, tokens, elapsed_before) =
                (ckpt.meta.step, ckpt.meta.tokens, ckpt.meta.elapsed_s);
            if spec.max_tokens < tokens {
                return Err(Error::Config(format!(
                    "the run has already seen {tokens} tokens, more than the budget of {}",
                    spec.max_tokens
                ))
                .into());
            }
        }
        // The tokenizer travels with the run (on resume it was checked equal above).
        let bytes = std::fs::read(&corpus.tokenizer_path)
            .map_err(|e| Error::io(&corpus.tokenizer_path, e))?;
        crate::data::write_atomic(&opts.run_dir.join(TOKENIZER_FILE), &bytes)?;
        let log = RunLog::open(&opts.run_dir.join(LOG_FILE), opts.resume.then_some(step))?;
        let mut t = Trainer {
            model,
            corpus,
            spec: spec.clone(),
            opts: opts.clone(),
            dir,
            device,
            opt,
            sampler,
            schedule: LrSchedule::from_spec(spec),
            step,
            tokens,
            micro,
            elapsed_before,
            started: Instant::now(),
            log,
            counts: model.param_counts(),
            phases: PhaseTimes::default(),
            pools: Vec::new(),
            average,
        };
        let flush = opts.flush_denormals && t.device.is_cpu();
        if t.device.is_cpu() {
            // SAFETY: the training code does not depend on subnormal results (see `ops::set_flush_denormals`).
            unsafe { crate::ops::set_flush_denormals(flush) };
        }
        let accum = spec.batch_size / t.micro;
        if opts.workers > 1 && accum > 1 {
            let pool = |i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("train-worker-{i}"))
                    .start_handler(move |_| {
                        // SAFETY: as above.
                        unsafe { crate::ops::set_flush_denormals_on_this_thread(flush) };
                    })
                    .build()
                    .map_err(|e| Error::Config(format!("cannot start worker threads: {e}")))
            };
            t.pools = (0..opts.workers.min(accum))
                .map(pool)
                .collect::<std::result::Result<_, _>>()?;
        }
        let plan = t.plan_line();
        t.log(&LogLine::Event(if opts.resume {
            Event::Resume(plan)
        } else {
            Event::Start(plan)
        }))?;
        Ok(t)
    }

    fn plan_line(&self) -> PlanLine {
        let counts = self.counts;
        PlanLine {
            step: self.step,
            preset: self.opts.preset.clone(),
            config: self.model.config().clone(),
            train: self.spec.clone(),
            micro_batch: self.micro,
            accumulation: self.spec.batch_size / self.micro,
            n_trainable_non_embedding: counts.non_embedding.trainable,
            n_frozen: counts.non_embedding.frozen,
            n_emulated: counts.non_embedding.emulated,
            n_embedding: counts.embedding.trainable,
            device: format!("{:?}", self.device.location()),
        }
    }

    /// Optimizer steps done (resumed steps included).
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Training tokens seen.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Optimizer steps of the budget.
    pub fn total_steps(&self) -> u64 {
        self.spec.total_steps()
    }

    /// Whether the budget is spent.
    pub fn done(&self) -> bool {
        self.step >= self.total_steps()
    }

    /// The micro-batch in use.
    pub fn micro_batch(&self) -> usize {
        self.micro
    }

    /// Wall-clock seconds of the run, earlier calls included.
    pub fn elapsed_s(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    /// Appends a line to the log.
    pub fn log(&mut self, line: &LogLine) -> Result<()> {
        self.log.write(line)
    }

    /// One optimizer step: `batch_size` windows in micro-batches whose gradients are summed, the global norm
    /// clipped, AdamW at the scheduled rate. Returns the step's log line (without validation figures). Errors when
    /// the loss is not finite, leaving the last checkpoint untouched.
    pub fn step(&mut self) -> Result<StepLine> {
        let t0 = Instant::now();
        let spec = &self.spec;
        let accum = spec.batch_size / self.micro;
        // The rate for the tokens this step brings the total to (the first step of warmup is not wasted at 0).
        let lr = self.schedule.lr(self.tokens + spec.tokens_per_step());
        // Dropout masks depend only on (run seed, step, micro-batch): a resumed run draws the same ones.
        let mode = Mode::train(self.sampler.seed ^ self.step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (sync, device) = (self.opts.sync_phases, &self.device);
        let sync = || if sync { device.synchronize() } else { Ok(()) };
        let tp = Instant::now();
        let batches = (0..accum)
            .map(|_| {
                self.sampler
                    .next_batch(&self.corpus.train, self.micro, spec.seq_len, device)
            })
            .collect::<Result<Vec<_>>>()?;
        sync()?;
        self.phases.data_s += tp.elapsed().as_secs_f64();
        // The loss is scaled by 1/accum so that the summed gradients are those of the batch's mean.
        let (model, opt) = (self.model, &self.opt);
        let micro_step = |k: usize| -> Result<MicroResult> {
            let (x, y) = &batches[k];
            let tp = Instant::now();
            let loss = model.loss(x, y, mode.fork(k as u64))?;
            let value = loss.to_scalar::<f32>()? as f64;
            let forward_s = tp.elapsed().as_secs_f64();
            let tp = Instant::now();
            let scaled = if accum > 1 {
                (loss / accum as f64)?
            } else {
                loss
            };
            let store = scaled.backward()?;
            let grads = opt.grads_of(&store);
            sync()?;
            Ok((value, grads, forward_s, tp.elapsed().as_secs_f64()))
        };
        // Gradients are summed in micro-batch order whatever thread computed them: the same floating-point
        // result. In turn, each is added as soon as it exists (one set of gradients held); with workers, all
        // `accum` sets are held until the sum (the CPU models that use workers are small).
        let threads = self.pools.len().max(1) as f64;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.opt.params().len()];
        let mut loss_sum = 0f64;
        let mut add = |(value, micro_grads, forward_s, backward_s): MicroResult| -> Result<()> {
            loss_sum += value;
            self.phases.forward_s += forward_s / threads;
            self.phases.backward_s += backward_s / threads;
            for (acc, g) in grads.iter_mut().zip(micro_grads) {
                *acc = match (acc.take(), g) {
                    (Some(a), Some(g)) => Some((a + g)?),
                    (a, g) => a.or(g),
                };
            }
            Ok(())
        };
        if self.pools.len() > 1 {
            for r in parallel_micro_steps(&self.pools, accum, &micro_step)? {
                add(r)?;
            }
        } else {
            for k in 0..accum {
                add(micro_step(k)?)?;
            }
        }
        let loss = (loss_sum / accum as f64) as f32;
        if !loss.is_finite() {
            let ckpt = self.dir.path().join(CHECKPOINT_FILE);
            let kept = if ckpt.exists() {
                format!("the last checkpoint is kept ({})", ckpt.display())
            } else {
                "no checkpoint was written".into()
            };
            return Err(Error::Data(format!(
                "the training loss became {loss} at step {} (learning rate {lr:.3e}); {kept}",
                self.step + 1
            ))
            .into());
        }
        let tp = Instant::now();
        let grad_norm = clip_grad_norm(&mut grads, spec.grad_clip)?;
        self.opt.step_on(&grads, lr, &self.pools)?;
        if let Some(a) = &mut self.average {
            a.update(self.opt.params())?;
        }
        sync()?;
        self.phases.optimizer_s += tp.elapsed().as_secs_f64();
        self.step += 1;
        self.tokens += spec.tokens_per_step();
        let counts = self.counts;
        let n = counts.non_embedding.trainable;
        let flops = training_flops(n, self.tokens);
        Ok(StepLine {
            step: self.step,
            tokens: self.tokens,
            flops,
            pf_days: super::flops_to_pf_days(flops),
            n_trainable_non_embedding: n,
            n_frozen: counts.non_embedding.frozen,
            train_loss: loss as f64,
            lr,
            grad_norm: finite(grad_norm),
            tokens_per_s: spec.tokens_per_step() as f64 / t0.elapsed().as_secs_f64(),
            elapsed_s: self.elapsed_s(),
            val_loss: None,
            val_bpb: None,
        })
    }

    /// Loss of the model on a split (evaluation mode, no dropout). `None` when the split holds no window.
    pub fn evaluate(&self, split: Split) -> Result<Option<EvalResult>> {
        let (tokens, n): (&TokenFile, usize) = match split {
            Split::Valid => (&self.corpus.valid, self.opts.eval_windows),
            Split::Test => (&self.corpus.test, self.opts.test_windows),
        };
        let windows = eval_windows(tokens.len(), self.spec.seq_len, n);
        if windows.is_empty() {
            return Ok(None);
        }
        let r = evaluate(
            self.model,
            tokens,
            &windows,
            self.spec.seq_len,
            self.micro,
            &self.corpus.token_bytes,
            &self.device,
        )?;
        Ok(Some(r))
    }

    /// Writes the checkpoint (atomically, the previous one kept as a copy) and flushes the log.
    pub fn save(&mut self) -> Result<PathBuf> {
        let path = self.dir.path().join(CHECKPOINT_FILE);
        let meta = CheckpointMeta {
            format: CHECKPOINT_FORMAT,
            step: self.step,
            tokens: self.tokens,
            sampler: self.sampler,
            adam_step: self.opt.state().1,
            config: self.model.config().clone(),
            train: self.spec.clone(),
            preset: self.opts.preset.clone(),
            tokenizer: Some(TOKENIZER_FILE.into()),
            elapsed_s: self.elapsed_s(),
            micro_batch: Some(self.micro),
            corpus: Some(self.corpus.options.clone()),
            data: Some(self.corpus.identity),
        };
        self.log.sync()?;
        let mut tensors = training_tensors(&self.opt);
        if let Some(a) = &self.average {
            tensors.extend(a.tensors(self.opt.params()));
        }
        save_checkpoint(&path, &meta, &tensors)?;
        Ok(path)
    }

    /// Ends the run: a finished one is measured on the validation and test splits and logs `final`; an interrupted
    /// one logs `interrupted`. Returns `(valid, test)` (both `None` when interrupted). With a weight average, a
    /// finished run's variables are set to it first, and measured and left so.
    pub fn finish(mut self, interrupted: bool) -> Result<(Option<EvalResult>, Option<EvalResult>)> {
        if interrupted {
            let (step, tokens) = (self.step, self.tokens);
            self.log(&LogLine::Event(Event::Interrupted { step, tokens }))?;
            self.log.sync()?;
            return Ok((None, None));
        }
        if let Some(a) = &self.average {
            a.apply(self.opt.params())?;
        }
        let v = self
            .evaluate(Split::Valid)?
            .ok_or_else(|| candle_core::Error::from(Error::Data("no validation window".into())))?;
        let t = self.evaluate(Split::Test)?;
        let counts = self.counts;
        let n = counts.non_embedding.trainable;
        let flops = training_flops(n, self.tokens);
        self.log(&LogLine::Event(Event::Final(FinalLine {
            step: self.step,
            tokens: self.tokens,
            flops,
            pf_days: super::flops_to_pf_days(flops),
            n_trainable_non_embedding: n,
            n_frozen: counts.non_embedding.frozen,
            val_loss: finite(v.loss),
            val_bpb: finite(v.bits_per_byte),
            val_tokens: v.tokens,
            test_loss: t.and_then(|t| finite(t.loss)),
            test_bpb: t.and_then(|t| finite(t.bits_per_byte)),
            test_tokens: t.map(|t| t.tokens),
        })))?;
        self.log.sync()?;
        Ok((Some(v), t))
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.log.path().to_path_buf()
    }
}

/// Runs micro-batches `0..accum` on the workers' pools, worker `i` taking `i, i + w, …`, and returns the results
/// in micro-batch order.
fn parallel_micro_steps<F>(
    pools: &[rayon::ThreadPool],
    accum: usize,
    f: &F,
) -> Result<Vec<MicroResult>>
where
    F: Fn(usize) -> Result<MicroResult> + Sync,
{
    let w = pools.len();
    let shares: Vec<Vec<usize>> = (0..w).map(|i| (i..accum).step_by(w).collect()).collect();
    super::pools::on_pools(pools, &shares, f)
}

/// The corpus fits the model (vocabulary) and holds a window in its training and validation splits.
fn check_corpus(corpus: &Corpus, vocab_size: usize, seq_len: usize) -> Result<()> {
    if corpus.vocab_size > vocab_size {
        return Err(Error::Config(format!(
            "the tokenizer has {} tokens, more than the model's vocabulary of {vocab_size}",
            corpus.vocab_size
        ))
        .into());
    }
    for (name, split) in [("training", &corpus.train), ("validation", &corpus.valid)] {
        if split.len() < seq_len + 1 {
            return Err(Error::Data(format!(
                "the {name} split holds {} tokens, fewer than one window of {} (sequence length + 1)",
                split.len(),
                seq_len + 1
            ))
            .into());
        }
    }
    Ok(())
}

/// The resume policy of the library: the recipe must be the checkpoint's (its budget may differ: the schedule is
/// then the checkpoint's rescaled to the new budget), the micro-batch the checkpoint's (when it recorded one; an
/// unset request takes it), and the data the checkpoint's (by hashes; for old checkpoints, the run folder's
/// tokenizer). Returns the micro-batch to use.
fn check_resume(
    meta: &CheckpointMeta,
    spec: &TrainSpec,
    requested_micro: Option<usize>,
    planned_micro: usize,
    corpus: &Corpus,
    path: &std::path::Path,
) -> Result<usize> {
    let mut diffs = Vec::new();
    if meta.train.with_budget(spec.max_tokens) != *spec && meta.train != *spec {
        diffs.push(format!(
            "training recipe: checkpoint {:?}, this run {:?}",
            meta.train, spec
        ));
    }
    let micro = match (meta.micro_batch, requested_micro) {
        (Some(m), Some(r)) if m != r => {
            diffs.push(format!("micro-batch: checkpoint {m}, this run {r}"));
            r
        }
        (Some(m), _) => m,
        (None, _) => planned_micro,
    };
    match meta.data {
        Some(id) => diffs.extend(id.differences(&corpus.identity)),
        None => {
            // A format-1 checkpoint: its tokenizer copy is the only record of its data.
            let copy = path.with_file_name(meta.tokenizer.as_deref().unwrap_or(TOKENIZER_FILE));
            if let Ok(bytes) = std::fs::read(&copy) {
                if fnv1a(&bytes) != corpus.identity.tokenizer {
                    diffs.push(format!(
                        "tokenizer: the run's {} differs from {}",
                        copy.display(),
                        corpus.tokenizer_path.display()
                    ));
                }
            }
        }
    }
    if !diffs.is_empty() {
        return Err(Error::Checkpoint(format!(
            "{} was written by another run: {}",
            path.display(),
            diffs.join("; ")
        ))
        .into());
    }
    Ok(micro)
}
