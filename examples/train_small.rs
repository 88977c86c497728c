//! Trains a GPT of the paper's family on French text.
//!
//! ```bash
//! cargo run --release --example train_small                      # the main job: d96x2-cpu, 7.3M tokens, < 10 min
//! cargo run --release --example train_small -- --list-presets
//! cargo run --release --example train_small -- --preset doped-small-cpu --steps 200
//! cargo run --release --example train_small -- --resume          # continue an interrupted run (runs/d96x2-cpu)
//! cargo run --release --features cuda --example train_small -- --preset small --device cuda
//! ```
//!
//! Ctrl-C (or `kill PID`) stops after the current step and writes a checkpoint (twice: quit at once); the line it
//! prints resumes the same run. The run folder is locked while training: a second trainer there stops with an error.

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::data::{gzip_bits_per_byte, Corpus};
use candle_structured::model::{gpt, presets_table, GptConfig, OptimizerKind};
use candle_structured::params::CountParams;
use candle_structured::train::plan::{Cadence, Overrides, RunPlan};
use candle_structured::train::{
    evaluate_sliding, plan_micro_batch, train, EvalResult, TrainReport,
};
use candle_structured::ParamCounts;
use clap::Parser;
use std::path::PathBuf;

/// The main job's model: the largest of the narrow CPU baselines, whose tokens per second leave room for a long
/// enough run in the ten minutes (build included) of a fresh 2-core machine. d128x2-cpu scored better on the same
/// budget but does not fit in the ten minutes (docs/recipe.md).
const MAIN_PRESET: &str = "d96x2-cpu";
/// The main job's budget, 7,168 steps of 4 × 256 tokens (7.3M): about four minutes of two cores.
const MAIN_TOKENS: u64 = 7168 * 1024;
/// The main job's update of the hidden matrices: Muon ended lower than AdamW on the same plan for each seed measured,
/// which pays for its orthogonalisations many times over (docs/recipe.md).
const MAIN_OPTIMIZER: OptimizerKind = OptimizerKind::Muon;
/// The main job's peak rate: with Muon at this budget, 1.2e-2 ended with a lower validation loss than 8e-3 and
/// 1.6e-2 for each seed measured (docs/recipe.md).
const MAIN_LR: f64 = 1.2e-2;
/// The main job's weight average over about the last 500 steps: the end of a run of small batches is a noisy draw
/// around its trend, the average sits nearer it (docs/recipe.md).
const MAIN_EMA_DECAY: f64 = 0.998;

#[derive(Parser, Debug)]
#[command(
    about = "Train a GPT of Chatelain et al. (2021) on French text",
    after_help = "With --resume the run continues as its checkpoint recorded it (preset, seed, dropout, learning \
rate, optimizer, weight average, batch, sequence length, micro-batch, data): giving any of those with a different \
value is an error. Free to change on resume: --steps / --tokens (extend or shorten the budget; the schedule is \
rescaled to it), --eval-every, --eval-windows, --test-windows, --checkpoint-every, --cache, --device, \
--no-progress, --sync-phases."
)]
struct Args {
    /// Preset (see --list-presets). Without it, the main job: d96x2-cpu on 7.3M tokens, Muon at LR 1.2e-2
    /// (docs/recipe.md).
    #[arg(long)]
    preset: Option<String>,
    /// Print every preset with its parameter counts and exit.
    #[arg(long)]
    list_presets: bool,
    /// cpu or cuda (cuda needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Training text: a UTF-8 file, a folder of them, or a folder with train/valid/test files (.gz accepted).
    /// Default: the embedded French Debian corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A ready tokenizer.json (default: train a byte-level BPE of the preset's vocabulary on the training split).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Learn the BPE merges on at most this many bytes of the training split (0: all of it; default 4000000).
    #[arg(long)]
    tokenizer_train_bytes: Option<usize>,
    /// Cache folder for prepared text, tokenizers and token files.
    #[arg(long, default_value = "runs/cache")]
    cache: PathBuf,
    /// Run folder (log, checkpoint, tokenizer). Default: runs/<preset>.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Optimizer steps, at least 1 (overrides the preset's token budget; the schedule is rescaled to it).
    #[arg(long, conflicts_with = "tokens")]
    steps: Option<u64>,
    /// Training tokens (overrides the preset's token budget; the schedule is rescaled to it).
    #[arg(long)]
    tokens: Option<u64>,
    /// Sequences per optimizer step (default: the preset's).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Sequence length (default: the preset's; at most the context).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Sequences per forward/backward pass (gradient accumulation reaches the batch). Default: what fits.
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Peak learning rate, positive (default: the preset's).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning rate at the end of the cosine decay, as a fraction of the peak, in [0, 1] (default: the preset's).
    #[arg(long)]
    min_lr_fraction: Option<f64>,
    /// The update of the hidden matrices: adamw or muon (default: muon for the main job, adamw for a preset).
    #[arg(long)]
    optimizer: Option<OptimizerKind>,
    /// Decay of the moving average of the weights measured and saved at the end, in [0, 1); 0: none (default: the
    /// main job's 0.998, none for a preset).
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Dropout in [0, 1) (default: the preset's).
    #[arg(long)]
    dropout: Option<f32>,
    /// Validation loss every N steps (0: only at the end).
    #[arg(long, default_value_t = 256)]
    eval_every: u64,
    /// Validation windows in the fixed subset (at least 1).
    #[arg(long, default_value_t = 64)]
    eval_windows: usize,
    /// Test windows evaluated at the end, at least 1 (default: the whole test split).
    #[arg(long)]
    test_windows: Option<usize>,
    /// Checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Seed of the weights, the data order and dropout (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in the run folder from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Arithmetic: f32; tf32 (f32 whose CUDA matmuls use TensorFloat-32 tensor cores); bf16 (mixed precision: f32
    /// weights, residual stream, LayerNorms and loss; bf16 matmuls, attention and GELU).
    #[arg(long, default_value = "f32", value_parser = ["f32", "tf32", "bf16"])]
    precision: String,
    /// Wait for the device after each phase of a step, so that the printed split of a GPU step (data, forward,
    /// backward, optimizer) is exact (costs the overlap between phases).
    #[arg(long)]
    sync_phases: bool,
    /// CPU threads that compute a step's micro-batches at once, each with single-threaded kernels (default 2 on
    /// the CPU; 1 runs them in turn with every kernel spread over the cores). A fresh run without --micro-batch
    /// then uses batch/workers sequences per micro-batch, on any machine, so the numbers do not depend on it.
    #[arg(long)]
    workers: Option<usize>,
    /// Let the CUDA driver return freed GPU memory to the system at every synchronisation (its default) instead of
    /// keeping it for the next step (see `candle_structured::gpu::keep_freed_memory`).
    #[arg(long)]
    release_gpu_memory: bool,
    /// The GPU's peak in TFLOP/s, for the model FLOPs utilisation printed after a CUDA run (default: 989, the dense
    /// bf16 peak of an H100 SXM or H200).
    #[arg(long, default_value_t = 989.0)]
    peak_tflops: f64,
}

impl Args {
    fn overrides(&self) -> Overrides {
        Overrides {
            seed: self.seed,
            dropout: self.dropout,
            lr: self.lr,
            min_lr_fraction: self.min_lr_fraction,
            optimizer: self.optimizer,
            ema_decay: self.ema_decay,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            micro_batch: self.micro_batch,
            steps: self.steps,
            tokens: self.tokens,
            data: self.data.clone().or_else(|| {
                // a fresh run trains on the checkout's corpus unless told otherwise; a resumed one on its own
                (!self.resume)
                    .then(|| common::corpus_dir(None).ok())
                    .flatten()
            }),
            tokenizer: self.tokenizer.clone(),
            tokenizer_train_bytes: self.tokenizer_train_bytes,
        }
    }

    /// The plan: from the checkpoint with --resume (conflicting flags are errors), else from the preset.
    fn plan(&self) -> Result<RunPlan> {
        let cadence = Cadence {
            eval_every: self.eval_every,
            eval_windows: self.eval_windows,
            test_windows: self.test_windows.unwrap_or(usize::MAX),
            checkpoint_every: self.checkpoint_every,
        };
        let preset = self.preset.as_deref();
        let mut plan = if self.resume {
            let dir = self
                .run_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(preset.unwrap_or(MAIN_PRESET)));
            RunPlan::resume(dir, preset, &self.overrides(), cadence, self.cache.clone())?
        } else {
            let (p, mut ov) = (preset.unwrap_or(MAIN_PRESET), self.overrides());
            if preset.is_none() {
                ov.tokens = ov.tokens.or((ov.steps.is_none()).then_some(MAIN_TOKENS));
                ov.lr = ov.lr.or(Some(MAIN_LR));
                ov.optimizer = ov.optimizer.or(Some(MAIN_OPTIMIZER));
                ov.ema_decay = ov.ema_decay.or(Some(MAIN_EMA_DECAY));
            }
            let (dir, cache) = (self.run_dir.clone(), self.cache.clone());
            RunPlan::fresh(p, &ov, cadence, dir, cache)?
        };
        plan.options.progress = !self.no_progress;
        plan.options.sync_phases = self.sync_phases;
        plan.options.workers = self
            .workers
            .unwrap_or(if self.device == "cpu" { 2 } else { 1 });
        Ok(plan)
    }
}

fn main() -> Result<()> {
    common::reexec_with_allocator_options()?;
    let args = Args::parse();
    if args.list_presets {
        print!("{}", presets_table());
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let device = common::device(&args.device)?;
    let mut plan = args.plan()?;
    // The batch against the micro-batch and the memory, before anything is prepared or printed.
    plan_micro_batch(&plan.model, &plan.train, plan.options.micro_batch, &device)?;
    if let Some(meta) = &plan.resumed {
        eprintln!(
            "resuming {} at step {} ({} tokens); the plan comes from its checkpoint",
            plan.options.run_dir.display(),
            meta.step,
            meta.tokens
        );
    }
    let mut copts = plan.corpus.clone();
    copts.verbose = true;
    let corpus = Corpus::prepare(&copts)?;
    if plan.resumed.is_none()
        && args.tokenizer.is_some()
        && corpus.vocab_size != plan.model.vocab_size
    {
        eprintln!(
            "the tokenizer has {} tokens: the model's vocabulary is set to it (preset: {})",
            corpus.vocab_size, plan.model.vocab_size
        );
        plan.model.vocab_size = corpus.vocab_size;
    }
    common::prepare_gpu(&device, args.release_gpu_memory)?;
    let (cfg, spec) = (&plan.model, &plan.train);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model =
        gpt(cfg, vb)?.with_compute_dtype(common::compute_dtype(&args.precision, &device))?;
    let counts = model.param_counts();
    print_plan(&plan, &counts);
    let stop = common::stop_on_ctrl_c("stopping after this step and writing a checkpoint")?;
    let report = train(&model, &varmap, &corpus, spec, &plan.options, &stop)?;

    let wall = t0.elapsed().as_secs_f64();
    println!();
    if report.interrupted {
        println!(
            "interrupted at step {} / {} ({} tokens); resume with: {}",
            report.steps,
            spec.total_steps(),
            report.tokens,
            plan.resume_hint()
        );
    }
    for (name, r) in [("validation:", report.valid), ("test:", report.test)] {
        if let Some(r) = r {
            println!(
                "{name:<11} {:.4} nats/token, {:.4} bits/byte ({} tokens)",
                r.loss, r.bits_per_byte, r.tokens
            );
        }
    }
    // The model as a compressor reads the text in order and keeps what it just read: windows sliding by half
    // their length, so that every token after the first window is predicted from at least half a window of text.
    let sliding = (!report.interrupted && args.test_windows.is_none() && report.test.is_some())
        .then(|| {
            let test = &corpus.test;
            evaluate_sliding(
                &model,
                test.len(),
                (spec.seq_len, spec.seq_len / 2),
                8,
                &corpus.token_bytes,
                &device,
                |s, n, buf| test.extend_window(s, n, buf),
            )
        })
        .transpose()?;
    if let Some(r) = sliding {
        println!(
            "{:<11} {:.4} nats/token, {:.4} bits/byte (windows sliding by {}: each token after the first {} with \
             at least {} tokens of context)",
            "test, read in order:",
            r.loss,
            r.bits_per_byte,
            spec.seq_len / 2,
            spec.seq_len,
            spec.seq_len - spec.seq_len / 2
        );
    }
    print_yardstick(&report, sliding, &corpus);
    println!(
        "{} steps, {} tokens, {:.0} training tokens/s, {:.1} s wall clock",
        report.steps, report.tokens, report.tokens_per_s, wall
    );
    print_speed(&report, &device, &args, cfg, &counts, spec.seq_len);
    println!("log:        {}", report.log.display());
    println!("checkpoint: {}", report.checkpoint.display());
    println!(
        "sample:     cargo run --release --example generate -- --run-dir {} --prompt \"Le paquet\"",
        plan.options.run_dir.display()
    );
    Ok(())
}

/// One line: the model, its parameter counts, the budget and the update rule.
fn print_plan(plan: &RunPlan, counts: &ParamCounts) {
    let (cfg, spec) = (&plan.model, &plan.train);
    eprintln!(
        "{}: {} layers, d_model {}, {} heads; {} trainable non-embedding parameters ({} frozen, {} emulated, {} \
         embedding); {} steps of {} × {} tokens = {} tokens; {} at peak LR {:.1e}",
        plan.preset,
        cfg.n_layers(),
        cfg.d_model,
        cfg.n_heads,
        counts.non_embedding.trainable,
        counts.non_embedding.frozen,
        counts.non_embedding.emulated,
        counts.embedding.trainable,
        spec.total_steps(),
        spec.batch_size,
        spec.seq_len,
        spec.max_tokens,
        spec.optimizer,
        spec.lr
    );
}

/// The test bits/byte beside gzip's on the same text (the in-order reading when there is one: how a compressor
/// reads): a model that compresses unseen text worse than gzip has learned little.
fn print_yardstick(report: &TrainReport, sliding: Option<EvalResult>, corpus: &Corpus) {
    if let Some(t) = sliding.or(report.test) {
        let text = std::fs::read(corpus.cache_dir.join("text").join("test.txt"));
        if let Some(gz) = text.ok().and_then(|b| gzip_bits_per_byte(&b)) {
            println!(
                "            gzip -9 on the same text: {gz:.4} bits/byte; the model: {:.4} ({})",
                t.bits_per_byte,
                if t.bits_per_byte < gz {
                    format!("{:.0} % smaller", 100.0 * (1.0 - t.bits_per_byte / gz))
                } else {
                    "worse than gzip: the model has not learned much yet".into()
                }
            );
        }
    }
}

/// Time per step and phase; on a GPU the model FLOPs utilisation.
fn print_speed(
    report: &TrainReport,
    device: &Device,
    args: &Args,
    cfg: &GptConfig,
    counts: &ParamCounts,
    seq_len: usize,
) {
    let p = report.phases;
    let per = |s: f64| 1e3 * s / report.losses.len().max(1) as f64;
    println!(
        "per step: data {:.1} ms, forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms{}",
        per(p.data_s),
        per(p.forward_s),
        per(p.backward_s),
        per(p.optimizer_s),
        if device.is_cpu() || args.sync_phases {
            ""
        } else {
            " (GPU work queued by one phase is paid where the next read-back waits: --sync-phases splits it)"
        }
    );
    if !device.is_cpu() {
        let per_token = cfg.mfu_flops_per_token(counts, seq_len);
        let achieved = report.tokens_per_s * per_token;
        println!(
            "model FLOPs utilisation: {:.2} % of {:.0} TFLOP/s ({:.1} TFLOP/s at {:.3} GFLOP per token; {})",
            100.0 * achieved / (args.peak_tflops * 1e12),
            args.peak_tflops,
            achieved / 1e12,
            per_token / 1e9,
            args.precision
        );
    }
}
