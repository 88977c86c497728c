//! Trains the runs of a scaling study (`candle_structured::train::sweep`), each into `<root>/<run>/`, for
//! `scaling_report`: baselines at six sizes (two seeds each), the doped twins, and FastFood and
//! block-Hadamard models at two sizes each.
//!
//! ```bash
//! cargo run --release --example scaling_sweep                # the CPU study: runs/sweep/, logs to docs/scaling/runs/
//! cargo run --release --example scaling_sweep -- --jobs 2    # the same, two runs at a time (one core each)
//! cargo run --release --example scaling_sweep -- --quick     # a miniature: 6 tiny runs into runs/quick/
//! cargo run --release --example scaling_report               # fits and figures from docs/scaling/runs/
//! ```
//!
//! A run is skipped when its finished log (a `final` line) is in the run folder or in the committed folder
//! (`--committed`, default `docs/scaling/runs/<run>/log.jsonl`); an interrupted run resumes from its checkpoint
//! (its plan comes from the checkpoint, see `candle_structured::train::plan`). When a run finishes, its log is
//! copied to the committed folder, so that a sweep started on a fresh clone goes on where the committed runs end.
//! Ctrl-C stops the current run after its step, writes its checkpoint, and ends the sweep.
//!
//! `--jobs N` trains N runs at a time, each in a child process of this program with single-threaded kernels
//! (`RAYON_NUM_THREADS=1`): small models keep one core busy far better than they share two, so on a 2-core
//! machine two runs at once finish sooner than one after the other. The runs and their results are the same.

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::data::Corpus;
use candle_structured::model::gpt;
use candle_structured::train::plan::{Cadence, Overrides, RunPlan};
use candle_structured::train::sweep::{default_sweep, quick_sweep, SweepRun};
use candle_structured::train::{train, CHECKPOINT_FILE, LOG_FILE};
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
    /// Training text (default: the embedded French Debian corpus).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Cache of prepared text, tokenizer and token files.
    #[arg(long, default_value = "runs/cache")]
    cache: PathBuf,
    /// Print the plan and exit.
    #[arg(long)]
    dry_run: bool,
    /// Runs trained at a time, each in its own process with single-threaded kernels (see the module docs).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Only the run of exactly this name (repeatable); used for the child processes of --jobs.
    #[arg(long)]
    run: Vec<String>,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
}

/// Whether a log file records a finished run (a `final` event).
fn finished_log(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .map(|s| s.lines().any(|l| l.contains("\"event\":\"final\"")))
        .unwrap_or(false)
}

impl Args {
    /// The plan of one run: fresh, or resumed from the checkpoint in its folder.
    fn plan(&self, run: &SweepRun, dir: PathBuf) -> Result<RunPlan> {
        let q = self.quick;
        let ov = Overrides {
            seed: Some(run.seed),
            tokens: Some(run.tokens),
            batch_size: q.then_some(4),
            seq_len: q.then_some(128),
            // Always named: a run resumed from a checkpoint of the previous format (which does not record its
            // corpus) needs it, and a newer checkpoint records this same path.
            data: self.data.clone().or_else(|| common::corpus_dir(None).ok()),
            ..Overrides::default()
        };
        let cadence = Cadence {
            eval_every: self.eval_every.unwrap_or(if q { 10 } else { 128 }),
            eval_windows: self.eval_windows,
            test_windows: usize::MAX,
            checkpoint_every: self.checkpoint_every,
        };
        let cache = self.cache.clone();
        let plan = if dir.join(CHECKPOINT_FILE).exists() {
            RunPlan::resume(dir, Some(&run.preset), &ov, cadence, cache)
        } else {
            RunPlan::fresh(&run.preset, &ov, cadence, Some(dir), cache)
        };
        plan.with_context(|| format!("planning {}", run.name))
    }
}

fn main() -> Result<()> {
    common::reexec_with_allocator_options()?;
    let args = Args::parse();
    let q = args.quick;
    let mut runs = if q { quick_sweep() } else { default_sweep() };
    if !args.only.is_empty() {
        runs.retain(|r| args.only.iter().any(|o| r.name.contains(o.as_str())));
    }
    if !args.run.is_empty() {
        runs.retain(|r| args.run.contains(&r.name));
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
    // Plan every run first, so that a typo or a conflicting checkpoint fails before hours of training.
    let mut plans = Vec::new();
    eprintln!("sweep into {} ({} runs):", root.display(), runs.len());
    for r in &runs {
        let plan = match args.plan(r, root.join(&r.name)) {
            Ok(plan) => plan,
            // A dry run shows what it cannot plan (a run in use by another process) and goes on.
            Err(e) if args.dry_run => {
                let why = e.root_cause().to_string();
                eprintln!(
                    "  {:<24} {}",
                    r.name,
                    why.lines().next().unwrap_or_default()
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        let (n, spec) = (plan.model.param_counts().non_embedding, &plan.train);
        let state = match (done(&r.name), &plan.resumed) {
            (true, _) => "done, skipped",
            (false, Some(_)) => "will resume",
            (false, None) => "new",
        };
        eprintln!(
            "  {:<24} trainable N {:>9}  frozen {:>9}  lr {:.1e}  {:>5} steps x {:>5} tokens = {:>5.2}M  ({state})",
            r.name,
            n.trainable,
            n.frozen,
            spec.lr,
            spec.total_steps(),
            spec.tokens_per_step(),
            spec.max_tokens as f64 / 1e6,
        );
        if !done(&r.name) {
            plans.push((r, plan));
        }
    }
    if args.dry_run {
        return Ok(());
    }
    if args.jobs > 1 {
        let names: Vec<&str> = plans.iter().map(|(r, _)| r.name.as_str()).collect();
        return run_jobs(&args, &root, committed.as_deref(), &names);
    }
    let stop = common::stop_on_ctrl_c(
        "stopping after this step, writing a checkpoint (re-run to resume)",
    )?;
    let mut corpus: Option<Corpus> = None;
    let t0 = std::time::Instant::now();
    for (r, mut plan) in plans {
        let mut copts = plan.corpus.clone();
        copts.verbose = true;
        if corpus.as_ref().is_none_or(|c| c.options != copts) {
            corpus = Some(Corpus::prepare(&copts)?);
        }
        let corpus = corpus.as_ref().expect("prepared above");
        let varmap = VarMap::new();
        let model = gpt(
            &plan.model,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        plan.options.progress = !args.no_progress;
        plan.options.log_every = args.log_every;
        eprintln!(
            "\n== {} ({})",
            r.name,
            if plan.options.resume {
                "resuming"
            } else {
                "new"
            }
        );
        let t = std::time::Instant::now();
        let report = train(&model, &varmap, corpus, &plan.train, &plan.options, &stop)
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

/// Trains `names` with `args.jobs` child processes at a time (this program with `--run NAME`, single-threaded
/// kernels), in order. The children share this process group, so Ctrl-C (or `kill -TERM -<group>`) reaches each:
/// each checkpoints and stops, and this loop starts no more. A child that fails stops the sweep once the others
/// have finished.
fn run_jobs(args: &Args, root: &Path, committed: Option<&Path>, names: &[&str]) -> Result<()> {
    let exe = std::env::current_exe().context("locating this program")?;
    let command = |name: &str| {
        let mut c = std::process::Command::new(&exe);
        c.env("RAYON_NUM_THREADS", "1")
            .arg("--run")
            .arg(name)
            .arg("--root")
            .arg(root)
            .arg("--cache")
            .arg(&args.cache)
            .arg("--log-every")
            .arg(args.log_every.to_string())
            .arg("--eval-windows")
            .arg(args.eval_windows.to_string())
            .arg("--checkpoint-every")
            .arg(args.checkpoint_every.to_string())
            .arg("--no-progress");
        if let Some(c2) = committed {
            c.arg("--committed").arg(c2);
        }
        if let Some(e) = args.eval_every {
            c.arg("--eval-every").arg(e.to_string());
        }
        if let Some(d) = &args.data {
            c.arg("--data").arg(d);
        }
        if args.quick {
            c.arg("--quick");
        }
        c
    };
    let stop =
        common::stop_on_ctrl_c("the runs stop after their step and write their checkpoints")?;
    let t0 = std::time::Instant::now();
    let mut pending = names.iter().rev().copied().collect::<Vec<_>>();
    let mut running: Vec<(&str, std::process::Child)> = Vec::new();
    let mut failed = Vec::new();
    loop {
        while running.len() < args.jobs && failed.is_empty() && !stop.load(Ordering::SeqCst) {
            let Some(name) = pending.pop() else { break };
            eprintln!("== {name}: started ({} running)", running.len() + 1);
            // An error never returns from here while children run: it stops new starts, and the loop waits for
            // the running ones.
            match command(name).spawn() {
                Ok(child) => running.push((name, child)),
                Err(e) => {
                    eprintln!("== {name}: cannot start it: {e}");
                    failed.push(name);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait() {
                Ok(Some(status)) => {
                    let (name, _) = running.swap_remove(i);
                    eprintln!("== {name}: {status}");
                    if !status.success() {
                        failed.push(name);
                    }
                }
                Ok(None) => i += 1,
                Err(e) => {
                    // Cannot watch it: stop it (its last checkpoint stays) rather than leave it behind.
                    let (name, mut child) = running.swap_remove(i);
                    eprintln!("== {name}: cannot wait for it ({e}); stopping it");
                    let _ = child.kill();
                    let _ = child.wait();
                    failed.push(name);
                }
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("runs that failed: {}", failed.join(", "));
    }
    if stop.load(Ordering::SeqCst) || !pending.is_empty() {
        eprintln!("sweep interrupted; re-run the same command to resume");
        return Ok(());
    }
    eprintln!("\nsweep done in {:.0} s; next:", t0.elapsed().as_secs_f64());
    eprintln!("  cargo run --release --example scaling_report");
    Ok(())
}
