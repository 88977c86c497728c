//! Trains a GPT of the paper's family on French text.
//!
//! ```bash
//! cargo run --release --example train_small                      # d64x2-cpu on the embedded corpus, < 10 min
//! cargo run --release --example train_small -- --list-presets
//! cargo run --release --example train_small -- --preset doped-small-cpu --steps 200
//! cargo run --release --example train_small -- --resume          # continue an interrupted run
//! cargo run --release --features cuda --example train_small -- --preset small --device cuda
//! ```
//!
//! Ctrl-C stops after the current step and writes a checkpoint (press it twice to quit at once).

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::data::{gzip_bits_per_byte, Corpus, CorpusOptions};
use candle_structured::model::{gpt, preset, presets_table};
use candle_structured::params::CountParams;
use candle_structured::train::{load_checkpoint, train, TrainOptions, CHECKPOINT_FILE};
use clap::Parser;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(about = "Train a GPT of Chatelain et al. (2021) on French text")]
struct Args {
    /// Preset (see --list-presets).
    #[arg(long, default_value = "d64x2-cpu")]
    preset: String,
    /// Print every preset with its parameter counts and exit.
    #[arg(long)]
    list_presets: bool,
    /// cpu or cuda (cuda needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Training text: a UTF-8 file, a folder of them, or a folder with train/valid/test files (.gz accepted).
    /// Default: the French Debian corpus of the repository checkout (data/fr-debian-large).
    #[arg(long)]
    data: Option<PathBuf>,
    /// A ready tokenizer.json (default: train a byte-level BPE of the preset's vocabulary on the training split).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Learn the BPE merges on at most this many bytes of the training split (0: all of it).
    #[arg(long, default_value_t = 4_000_000)]
    tokenizer_train_bytes: usize,
    /// Cache folder for prepared text, tokenizers and token files.
    #[arg(long, default_value = "runs/cache")]
    cache: PathBuf,
    /// Run folder (log, checkpoint, tokenizer). Default: runs/<preset>.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Optimizer steps (overrides the preset's token budget; the schedule is rescaled to it).
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
    /// Peak learning rate (default: the preset's).
    #[arg(long)]
    lr: Option<f64>,
    /// Dropout (default: the preset's, 0.1).
    #[arg(long)]
    dropout: Option<f32>,
    /// Validation loss every N steps (0: only at the end).
    #[arg(long, default_value_t = 256)]
    eval_every: u64,
    /// Validation windows in the fixed subset.
    #[arg(long, default_value_t = 64)]
    eval_windows: usize,
    /// Test windows evaluated at the end (default: the whole test split).
    #[arg(long)]
    test_windows: Option<usize>,
    /// Checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Seed of the weights and of the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    /// Let the CUDA driver return freed GPU memory to the system at every synchronisation (its default) instead of
    /// keeping it for the next step (see `candle_structured::gpu::keep_freed_memory`).
    #[arg(long)]
    release_gpu_memory: bool,
    /// The GPU's peak in TFLOP/s, for the model FLOPs utilisation printed after a CUDA run (default: 989, the dense
    /// bf16 peak of an H100 SXM or H200).
    #[arg(long, default_value_t = 989.0)]
    peak_tflops: f64,
}

fn main() -> Result<()> {
    if let Some(code) = common::reexec_with_allocator_options()? {
        std::process::exit(code);
    }
    let args = Args::parse();
    if args.list_presets {
        print!("{}", presets_table());
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let mut preset = preset(&args.preset)?;
    let device = common::device(&args.device)?;
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&preset.name));
    // A resumed run continues with the model and recipe stored in its checkpoint.
    let resumed = if args.resume {
        let path = run_dir.join(CHECKPOINT_FILE);
        let ckpt = load_checkpoint(&path, &Device::Cpu)
            .with_context(|| format!("--resume: cannot resume from {}", run_dir.display()))?;
        eprintln!(
            "resuming {} at step {} ({} tokens); model and recipe from the checkpoint",
            path.display(),
            ckpt.meta.step,
            ckpt.meta.tokens
        );
        Some(ckpt.meta)
    } else {
        None
    };
    let mut cfg = preset.model.clone();
    cfg.seed = args.seed;
    if let Some(p) = args.dropout {
        cfg.dropout = p;
    }
    let mut spec = preset.train.clone();
    if let Some(b) = args.batch_size {
        spec.batch_size = b;
    }
    if let Some(s) = args.seq_len {
        spec.seq_len = s;
    }
    if let Some(lr) = args.lr {
        spec.lr = lr;
    }
    let budget = match (args.steps, args.tokens) {
        (Some(s), _) => Some(s * spec.tokens_per_step()),
        (_, Some(t)) => Some(t),
        _ if args.batch_size.is_some() || args.seq_len.is_some() => Some(preset.train.max_tokens),
        _ => None,
    };
    if let Some(b) = budget {
        spec = spec.with_budget(b);
    }
    if let Some(meta) = &resumed {
        cfg = meta.config.clone();
        spec = meta.train.clone();
    }

    // Data: decompress, train the tokenizer, tokenize (all cached).
    let data = common::corpus_dir(args.data.as_deref())?;
    let mut copts = CorpusOptions::new(&data, cfg.vocab_size);
    copts.cache_root = args.cache.clone();
    copts.tokenizer = args.tokenizer.clone();
    copts.tokenizer_train_bytes =
        (args.tokenizer_train_bytes > 0).then_some(args.tokenizer_train_bytes);
    copts.verbose = true;
    let corpus = Corpus::prepare(&copts)?;
    if args.tokenizer.is_some() && resumed.is_none() && corpus.vocab_size != cfg.vocab_size {
        eprintln!(
            "the tokenizer has {} tokens: the model's vocabulary is set to it (preset: {})",
            corpus.vocab_size, cfg.vocab_size
        );
        cfg.vocab_size = corpus.vocab_size;
    }
    preset.model = cfg.clone();

    // Run folder: never overwrite a previous run silently.
    if !args.resume && run_dir.join("checkpoint.safetensors").exists() {
        let mut k = 1;
        let moved = loop {
            let cand = PathBuf::from(format!("{}.{k}", run_dir.display()));
            if !cand.exists() {
                break cand;
            }
            k += 1;
        };
        std::fs::rename(&run_dir, &moved)
            .with_context(|| format!("moving the previous run {} aside", run_dir.display()))?;
        eprintln!(
            "{} held a previous run: moved to {} (use --resume to continue a run)",
            run_dir.display(),
            moved.display()
        );
    }

    if !args.release_gpu_memory && candle_structured::gpu::keep_freed_memory(&device)? {
        eprintln!("GPU memory pool: freed memory is kept for the next step (--release-gpu-memory to disable)");
    }
    if device.is_cuda() {
        eprintln!(
            "training ops on the GPU: {}",
            if candle_structured::ops::cuda_fused_ops() {
                "the crate's CUDA kernels (cuda/ops.cu)"
            } else {
                "candle's own ops (CANDLE_STRUCTURED_CUDA_OPS=1 for the crate's CUDA kernels)"
            }
        );
    }
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let compute = match args.precision.as_str() {
        "bf16" => DType::BF16,
        "tf32" => {
            // A process-wide switch of candle's CUDA backend (a no-op in builds without CUDA).
            candle_core::cuda::set_gemm_reduced_precision_f32(true);
            if device.is_cpu() {
                eprintln!(
                    "--precision tf32 only changes CUDA matmuls; on the CPU this run is plain f32"
                );
            }
            DType::F32
        }
        _ => DType::F32,
    };
    let model = gpt(&cfg, vb)?.with_compute_dtype(compute)?;
    let counts = model.param_counts();
    eprintln!(
        "{}: {} layers, d_model {}, {} heads; {} trainable non-embedding parameters ({} frozen, {} emulated, {} \
         embedding); {} steps of {} × {} tokens = {} tokens",
        preset.name,
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
        spec.max_tokens
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond Ctrl-C: quitting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("\nCtrl-C: stopping after this step and writing a checkpoint (again to quit at once)");
        })?;
    }

    let mut opts = TrainOptions::new(&run_dir);
    opts.micro_batch = args.micro_batch;
    opts.eval_every = args.eval_every;
    opts.eval_windows = args.eval_windows;
    opts.test_windows = args.test_windows.unwrap_or(usize::MAX);
    opts.checkpoint_every = args.checkpoint_every;
    opts.seed = args.seed;
    opts.resume = args.resume;
    opts.progress = !args.no_progress;
    opts.preset = Some(preset.name.clone());
    opts.sync_phases = args.sync_phases;
    let report = train(&model, &varmap, &corpus, &spec, &opts, &stop)?;

    let wall = t0.elapsed().as_secs_f64();
    println!();
    if report.interrupted {
        println!(
            "interrupted at step {} / {} ({} tokens); resume with: --resume{}",
            report.steps,
            spec.total_steps(),
            report.tokens,
            if args.preset != "d64x2-cpu" {
                format!(" --preset {}", args.preset)
            } else {
                String::new()
            }
        );
    } else {
        if let Some(v) = report.valid {
            println!(
                "validation: {:.4} nats/token, {:.4} bits/byte ({} tokens)",
                v.loss, v.bits_per_byte, v.tokens
            );
        }
        if let Some(t) = report.test {
            println!(
                "test:       {:.4} nats/token, {:.4} bits/byte ({} tokens)",
                t.loss, t.bits_per_byte, t.tokens
            );
            // The yardstick: a model that compresses unseen text worse than gzip has learned little.
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
    println!(
        "{} steps, {} tokens, {:.0} training tokens/s, {:.1} s wall clock",
        report.steps, report.tokens, report.tokens_per_s, wall
    );
    let p = report.phases;
    let steps_here = report.losses.len().max(1) as f64;
    println!(
        "per step: data {:.1} ms, forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms{}",
        1e3 * p.data_s / steps_here,
        1e3 * p.forward_s / steps_here,
        1e3 * p.backward_s / steps_here,
        1e3 * p.optimizer_s / steps_here,
        if device.is_cpu() || args.sync_phases {
            ""
        } else {
            " (GPU work queued by one phase is paid where the next read-back waits: --sync-phases splits it)"
        }
    );
    if !device.is_cpu() {
        let per_token = cfg.mfu_flops_per_token(&counts, spec.seq_len);
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
    println!("log:        {}", report.log.display());
    println!("checkpoint: {}", report.checkpoint.display());
    println!(
        "sample:     cargo run --release --example generate -- --run-dir {} --prompt \"Le paquet\"",
        run_dir.display()
    );
    Ok(())
}
