//! Samples text from a checkpoint written by `train_small`, or measures its loss on a text file (`--eval`).
//!
//! ```bash
//! cargo run --release --example generate -- --run-dir runs/d64x2-cpu --prompt "Le paquet" --temperature 0.8 --top-k 40
//! cargo run --release --example generate -- --run-dir runs/d64x2-cpu --eval some_french_text.txt
//! ```

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use candle_nn::{VarBuilder, VarMap};
use candle_structured::data::load_tokenizer;
use candle_structured::model::gpt;
use candle_structured::train::{
    evaluate_sliding, evaluate_text, load_checkpoint, restore_weights, CHECKPOINT_FILE,
    TOKENIZER_FILE,
};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Sample text from a candle-structured checkpoint")]
struct Args {
    /// Run folder holding checkpoint.safetensors and tokenizer.json.
    #[arg(long, default_value = "runs/d64x2-cpu")]
    run_dir: PathBuf,
    /// A checkpoint file (default: <run-dir>/checkpoint.safetensors).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// A tokenizer.json (default: the one beside the checkpoint).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Text to continue.
    #[arg(long, default_value = "Le paquet")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// Sampling temperature: positive and finite, or 0 for greedy decoding.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu or cuda (cuda needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Instead of sampling, print the loss (nats per token, bits per byte) on this UTF-8 text file (.gz accepted):
    /// every token after the first is scored once, in windows of the model's context (the last one shorter).
    #[arg(long)]
    eval: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!(
            "--temperature {}: it must be positive and finite (or 0 for greedy decoding)",
            args.temperature
        );
    }
    let device = common::device(&args.device)?;
    let ckpt_path = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| args.run_dir.join(CHECKPOINT_FILE));
    let ckpt = load_checkpoint(&ckpt_path, &device)?;
    let cfg = ckpt.meta.config.clone();
    let varmap = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    restore_weights(&ckpt, &cfg, &varmap, &ckpt_path)?;
    let tok_path = args.tokenizer.clone().unwrap_or_else(|| {
        ckpt_path
            .parent()
            .map(|p| p.join(ckpt.meta.tokenizer.as_deref().unwrap_or(TOKENIZER_FILE)))
            .unwrap_or_else(|| PathBuf::from(TOKENIZER_FILE))
    });
    let tokenizer = load_tokenizer(&tok_path)?;
    if let Some(path) = &args.eval {
        let text = candle_structured::data::read_text(path)?;
        let r = evaluate_text(&model, &tokenizer, &text, cfg.context, 8, &device)?;
        println!(
            "{}: {:.4} nats/token, {:.4} bits/byte over {} tokens ({} bytes of text), disjoint windows",
            path.display(),
            r.loss,
            r.bits_per_byte,
            r.tokens,
            text.len()
        );
        // Read in order, as a compressor reads: windows sliding by half the context.
        let ids = tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize the text: {e}"))?
            .get_ids()
            .to_vec();
        let bytes = candle_structured::data::token_byte_lengths(&tokenizer);
        let stride = (cfg.context / 2).max(1);
        let s = evaluate_sliding(
            &model,
            ids.len(),
            (cfg.context, stride),
            8,
            &bytes,
            &device,
            |a, n, buf| buf.extend_from_slice(&ids[a..a + n]),
        )?;
        println!(
            "{}: {:.4} nats/token, {:.4} bits/byte, read in order (windows sliding by {stride})",
            path.display(),
            s.loss,
            s.bits_per_byte,
        );
        return Ok(());
    }
    let enc = tokenizer
        .encode(args.prompt.as_str(), false)
        .map_err(|e| anyhow::anyhow!("cannot tokenize the prompt: {e}"))?;
    let prompt: Vec<u32> = enc.get_ids().to_vec();
    if prompt.is_empty() {
        bail!("the prompt is empty: give some text with --prompt");
    }
    eprintln!(
        "{} (step {}, {} tokens seen), prompt of {} tokens",
        ckpt_path.display(),
        ckpt.meta.step,
        ckpt.meta.tokens,
        prompt.len()
    );
    let out = model.generate(
        &prompt,
        args.max_tokens,
        args.temperature,
        args.top_k,
        args.seed,
        &device,
    )?;
    let text = tokenizer
        .decode(&out, true)
        .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))
        .context("decoding the sample")?;
    println!("{text}");
    Ok(())
}
