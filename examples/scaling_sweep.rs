//! Trains the runs of a scaling study (`candle_structured::train::sweep`), each into `<root>/<run>/`, for
//! `scaling_report`: baselines at five sizes (three with a second seed), the doped twins, and FastFood and
//! block-Hadamard models at two sizes each.
//!
//! ```bash
//! cargo run --release --example scaling_sweep                # the CPU study: runs/sweep/, logs to docs/scaling/runs/
//! cargo run --release --example scaling_sweep -- --quick     # a miniature: 6 tiny runs into runs/quick/
//! cargo run --release --example scaling_report               # fits and figures from docs/scaling/runs/
//! ```
//!
//! A run is skipped when its finished log (a `final` line) is in the run folder or in the committed folder
//! (`--committed`, default `docs/scaling/runs/<run>/log.jsonl`); an interrupted run resumes from its checkpoint.
//! When a run finishes, its log is copied to the committed folder, so that a sweep started on a fresh clone goes on
//! where the committed runs end. Ctrl-C stops the current run after its step, writes its checkpoint, and ends the
//! sweep.

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
use candle_structured::train::sweep::{default_sweep, quick_sweep};
use candle_structured::train::{train, TrainOptions, CHECKPOINT_FILE, LOG_FILE};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Train the runs of a scaling-law study on the CPU")]
struct Args {
    /// The miniature: 6 tiny runs of 120 steps of 4 x 128 tokens, root runs/quick, nothing committed.
    #[arg(long)]
    quick: bool,
    /// Root folder of the run folders (default: runs/sweep, or runs/quick with --quick).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Folder of the finished runs' logs (default: docs/scaling/runs; none with --quick).
    #[arg(long)]
    committed: Option<PathBuf>,
    /// Only the runs whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Validation loss every N steps (default: 128, 10 with --quick).
    #[arg(long)]
    eval_every: Option<u64>,
    /// A log line every N steps (and at each evaluation), with the mean training loss since the previous one.
    #[arg(long, default_value_t = 16)]
    log_every: u64,
    /// Validation windows per evaluation (the final evaluation uses the same windows).
    #[arg(long, default_value_t = 64)]
    eval_windows: usize,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 256)]
    checkpoint_every: u64,
    /// Training text (default: the French Debian corpus of the repository checkout, data/fr-debian-large).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Cache of prepared text, tokenizer and token files.
    #[arg(long, default_value = "runs/cache")]
    cache: PathBuf,
    /// Print the plan and exit.
    #[arg(long)]
    dry_run: bool,
}

/// Whether a log holds a finished run (a `final` event).
fn finished_log(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .map(|s| s.lines().any(|l| l.contains("\"event\":\"final\"")))
        .unwrap_or(false)
}

fn main() -> Result<()> {
    if let Some(code) = common::reexec_with_allocator_options()? {
        std::process::exit(code);
    }
    let args = Args::parse();
    let q = args.quick;
    let mut runs = if q { quick_sweep() } else { default_sweep() };
    if !args.only.is_empty() {
        runs.retain(|r| args.only.iter().any(|o| r.name.contains(o.as_str())));
    }
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(if q { "runs/quick" } else { "runs/sweep" }));
    let committed = args
        .committed
        .clone()
        .or((!q).then(|| PathBuf::from("docs/scaling/runs")));
    let done = |name: &str| {
        finished_log(&root.join(name).join(LOG_FILE))
            || committed
                .as_ref()
                .is_some_and(|c| finished_log(&c.join(name).join(LOG_FILE)))
    };

    // Resolve every preset first, so a typo fails before hours of training.
    let mut plan = Vec::new();
    for r in &runs {
        let mut p = preset(&r.preset)?;
        if q {
            p.train.batch_size = 4;
            p.train.seq_len = 128;
        }
        let spec = p.train.with_budget(r.tokens);
        plan.push((r, p, spec));
    }
    eprintln!("sweep into {} ({} runs):", root.display(), plan.len());
    for (r, p, spec) in &plan {
        let c = p.model.param_counts();
        let state = if done(&r.name) {
            "done, skipped"
        } else if root.join(&r.name).join(CHECKPOINT_FILE).exists() {
            "will resume"
        } else {
            "new"
        };
        eprintln!(
            "  {:<24} trainable N {:>9}  frozen {:>9}  lr {:.1e}  {:>5} steps x {:>5} tokens = {:>5.2}M  ({state})",
            r.name,
            c.non_embedding.trainable,
            c.non_embedding.frozen,
            spec.lr,
            spec.total_steps(),
            spec.tokens_per_step(),
            spec.max_tokens as f64 / 1e6,
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
    for (r, p, spec) in &plan {
        if done(&r.name) {
            continue;
        }
        let dir = root.join(&r.name);
        let mut cfg = p.model.clone();
        cfg.seed = r.seed;
        if corpus.as_ref().is_none_or(|(v, _)| *v != cfg.vocab_size) {
            let mut copts = CorpusOptions::new(&data, cfg.vocab_size);
            copts.cache_root = args.cache.clone();
            copts.tokenizer_train_bytes = Some(4_000_000);
            copts.verbose = true;
            corpus = Some((cfg.vocab_size, Corpus::prepare(&copts)?));
        }
        let (_, corpus) = corpus.as_ref().expect("prepared above");
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = gpt(&cfg, vb)?;
        let mut opts = TrainOptions::new(&dir);
        opts.eval_every = args.eval_every.unwrap_or(if q { 10 } else { 128 });
        opts.log_every = args.log_every;
        opts.eval_windows = args.eval_windows;
        opts.test_windows = usize::MAX;
        opts.checkpoint_every = args.checkpoint_every;
        opts.seed = r.seed;
        opts.resume = dir.join(CHECKPOINT_FILE).exists();
        opts.overwrite = !opts.resume;
        opts.progress = true;
        opts.preset = Some(p.name.clone());
        let t = std::time::Instant::now();
        eprintln!(
            "\n== {} ({})",
            r.name,
            if opts.resume { "resuming" } else { "new" }
        );
        let report = train(&model, &varmap, corpus, spec, &opts, &stop)
            .with_context(|| format!("training {}", r.name))?;
        eprintln!(
            "== {}: {} steps, {} tokens, {:.0} tokens/s, final val loss {}, {:.0} s",
            r.name,
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
        if let Some(c) = &committed {
            let to = c.join(&r.name);
            std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
            std::fs::copy(&report.log, to.join(LOG_FILE))
                .with_context(|| format!("copying the log of {} to {}", r.name, to.display()))?;
            eprintln!(
                "   log committed to {} (git add it)",
                to.join(LOG_FILE).display()
            );
        }
    }
    eprintln!("\nsweep done in {:.0} s; next:", t0.elapsed().as_secs_f64());
    eprintln!("  cargo run --release --example scaling_report");
    Ok(())
}
