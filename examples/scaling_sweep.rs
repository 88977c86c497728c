//! Trains a family of CPU presets with the training loop, each into `<root>/<preset>/`, for `scaling_report`:
//! the baselines `xxsmall-cpu … medium-cpu`, the doped twins, and the FastFood and block-diagonal models.
//!
//! ```bash
//! cargo run --release --example scaling_sweep -- --quick     # 6 presets, 120 short steps: runs/quick/, about 6 min on 2 idle cores
//! cargo run --release --example scaling_sweep                # all 9 presets, their CPU budgets: runs/, < 2 h
//! cargo run --release --example scaling_report -- --runs runs/quick --out runs/quick/report
//! ```
//!
//! Re-running skips finished runs (their log holds a `final` line) and resumes interrupted ones from their
//! checkpoint. Ctrl-C stops the current run after its step, writes its checkpoint, and ends the sweep.

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::data::{Corpus, CorpusOptions};
use candle_structured::model::{gpt, preset};
use candle_structured::train::{train, TrainOptions, CHECKPOINT_FILE, LOG_FILE};
use clap::Parser;

/// Every preset of the default sweep, smallest first.
const FULL: &[&str] = &[
    "xxsmall-cpu",
    "xsmall-cpu",
    "small-cpu",
    "medium-cpu",
    "doped-xsmall-cpu",
    "doped-small-cpu",
    "doped-medium-cpu",
    "fastfood-cpu",
    "blockdiag-cpu",
];

/// The quick sweep: three baselines, the doped twin of the smallest, and the two structured models.
const QUICK: &[&str] = &[
    "xxsmall-cpu",
    "xsmall-cpu",
    "small-cpu",
    "doped-xsmall-cpu",
    "fastfood-cpu",
    "blockdiag-cpu",
];

#[derive(Parser, Debug)]
#[command(about = "Train a family of CPU presets for a scaling-law study")]
struct Args {
    /// The quick sweep: 6 presets, 120 steps of 8 x 128 tokens at learning rate 2e-3 (unless given otherwise),
    /// root runs/quick.
    #[arg(long)]
    quick: bool,
    /// Root folder of the run folders (default: runs, or runs/quick with --quick).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Presets to train, comma-separated (default: the sweep's list).
    #[arg(long, value_delimiter = ',')]
    presets: Vec<String>,
    /// Training tokens per run (default: each preset's CPU budget; the schedule is rescaled to it).
    #[arg(long)]
    tokens: Option<u64>,
    /// Sequences per step (default: the preset's, 8 with --quick).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Sequence length (default: the preset's, 128 with --quick).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Peak learning rate (default: the preset's, 2e-3 with --quick).
    #[arg(long)]
    lr: Option<f64>,
    /// Validation loss every N steps (default: 10 with --quick, 20 otherwise).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Validation windows per evaluation (default: 16 with --quick, 32 otherwise).
    #[arg(long)]
    eval_windows: Option<usize>,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 25)]
    checkpoint_every: u64,
    /// Training text (default: the French Debian corpus of the repository checkout, data/fr-debian-large).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Cache of prepared text, tokenizer and token files.
    #[arg(long, default_value = "runs/cache")]
    cache: PathBuf,
    /// Seed of weights and data order (the same for every run).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the plan and exit.
    #[arg(long)]
    dry_run: bool,
}

/// Whether a run folder holds a finished run (a `final` event in its log).
fn finished(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(LOG_FILE))
        .map(|s| s.lines().any(|l| l.contains("\"event\":\"final\"")))
        .unwrap_or(false)
}

fn main() -> Result<()> {
    if let Some(code) = common::reexec_with_allocator_options()? {
        std::process::exit(code);
    }
    let args = Args::parse();
    let names: Vec<String> = if !args.presets.is_empty() {
        args.presets.clone()
    } else if args.quick {
        QUICK.iter().map(|s| s.to_string()).collect()
    } else {
        FULL.iter().map(|s| s.to_string()).collect()
    };
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(if args.quick { "runs/quick" } else { "runs" }));
    let q = args.quick;
    let batch_size = args.batch_size.or(q.then_some(8));
    let seq_len = args.seq_len.or(q.then_some(128));
    let lr = args.lr.or(q.then_some(2e-3));
    let tokens = args.tokens.or(q.then_some(120 * 8 * 128));
    let eval_every = args.eval_every.unwrap_or(if q { 10 } else { 20 });
    let eval_windows = args.eval_windows.unwrap_or(if q { 16 } else { 32 });
    let device = Device::Cpu;

    // Resolve every preset first, so a typo fails before hours of training.
    let mut plan = Vec::new();
    for name in &names {
        let p = preset(name)?;
        let mut spec = p.train.clone();
        if let Some(b) = batch_size {
            spec.batch_size = b;
        }
        if let Some(s) = seq_len {
            spec.seq_len = s;
        }
        if let Some(lr) = lr {
            spec.lr = lr;
        }
        if let Some(t) =
            tokens.or((batch_size.is_some() || seq_len.is_some()).then_some(p.train.max_tokens))
        {
            spec = spec.with_budget(t);
        }
        let c = p.model.param_counts();
        plan.push((p, spec, c));
    }
    eprintln!("sweep into {} ({} runs):", root.display(), plan.len());
    for (p, spec, c) in &plan {
        let dir = root.join(&p.name);
        let state = if finished(&dir) {
            "done, skipped"
        } else if dir.join(CHECKPOINT_FILE).exists() {
            "will resume"
        } else {
            "new"
        };
        eprintln!(
            "  {:<18} trainable N {:>9}  frozen {:>9}  {:>4} steps x {:>5} tokens  ({state})",
            p.name,
            c.non_embedding.trainable,
            c.non_embedding.frozen,
            spec.total_steps(),
            spec.tokens_per_step()
        );
    }
    if args.dry_run {
        return Ok(());
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond Ctrl-C: quitting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!(
                "\nCtrl-C: stopping after this step, writing a checkpoint (re-run to resume)"
            );
        })?;
    }

    let data = common::corpus_dir(args.data.as_deref())?;
    let mut corpus: Option<(usize, Corpus)> = None;
    let t0 = std::time::Instant::now();
    for (p, spec, _) in &plan {
        let dir = root.join(&p.name);
        if finished(&dir) {
            continue;
        }
        let mut cfg = p.model.clone();
        cfg.seed = args.seed;
        if corpus.as_ref().is_none_or(|(v, _)| *v != cfg.vocab_size) {
            let mut copts = CorpusOptions::new(&data, cfg.vocab_size);
            copts.cache_root = args.cache.clone();
            copts.tokenizer_train_bytes = Some(4_000_000);
            copts.verbose = true;
            corpus = Some((cfg.vocab_size, Corpus::prepare(&copts)?));
        }
        let (_, corpus) = corpus.as_ref().expect("prepared above");
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let model = gpt(&cfg, vb)?;
        let mut opts = TrainOptions::new(&dir);
        opts.eval_every = eval_every;
        opts.eval_windows = eval_windows;
        opts.test_windows = 64;
        opts.checkpoint_every = args.checkpoint_every;
        opts.seed = args.seed;
        opts.resume = dir.join(CHECKPOINT_FILE).exists();
        opts.progress = true;
        opts.preset = Some(p.name.clone());
        let t = std::time::Instant::now();
        eprintln!(
            "\n== {} ({})",
            p.name,
            if opts.resume { "resuming" } else { "new" }
        );
        let report = train(&model, &varmap, corpus, spec, &opts, &stop)
            .with_context(|| format!("training {}", p.name))?;
        eprintln!(
            "== {}: {} steps, {} tokens, {:.0} tokens/s, final val loss {}, {:.0} s",
            p.name,
            report.steps,
            report.tokens,
            report.tokens_per_s,
            report
                .valid
                .map(|v| format!("{:.4}", v.loss))
                .unwrap_or_else(|| "-".into()),
            t.elapsed().as_secs_f64()
        );
        if report.interrupted || stop.load(Ordering::SeqCst) {
            eprintln!("sweep interrupted; re-run the same command to resume");
            return Ok(());
        }
    }
    eprintln!("\nsweep done in {:.0} s; next:", t0.elapsed().as_secs_f64());
    eprintln!(
        "  cargo run --release --example scaling_report -- --runs {} --out {}",
        root.display(),
        root.join("report").display()
    );
    Ok(())
}
