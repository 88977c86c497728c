//! Training-step throughput of the issue's GPT models on the CPU, beside PyTorch eager measured in the same sitting.
//!
//! Times full training steps (forward, backward, global-norm clipping, AdamW) of pre-LN GPTs with rotary attention
//! (head dim 32), a 4·d GELU MLP, dropout 0.1, an untied head, vocabulary 4096, context 256, batch 16, fp32 and
//! random token ids, for (layers, d_model) = (3, 128), (6, 128), (12, 128), (4, 256). Prints tokens/s per config
//! (median of the timed steps, with min–max), for 2 threads and for 1 thread.
//!
//! The thread count of candle's CPU backend (rayon's global pool and gemm's parallelism) is read once from
//! `RAYON_NUM_THREADS`, so the benchmark re-runs itself as a child process per thread count. After each thread
//! count it runs PyTorch's twin, `benches/torch_cpu_train.py` (same models, step and measurement), with the same
//! threads, configs and steps, when the Python interpreter (`--python`, default `python3`) can import torch, and prints
//! both side by side; without torch it says so and prints the crate's figures alone.
//!
//! ```text
//! cargo run --release --example train_bench                       # all configs, 2 and 1 threads
//! cargo run --release --example train_bench -- --threads 2 --configs 3x128 --steps 5
//! cargo run --release --example train_bench -- --slow             # the slow twins, for comparison
//! cargo run --release --example train_bench -- --python /tmp/torchenv/bin/python   # PyTorch from a venv
//! ```

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use candle_structured::ops;
use clap::Parser;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[path = "common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Training-step throughput (tokens/s) of the issue-7 GPT configs")]
struct Args {
    /// Thread counts to run, each in its own process.
    #[arg(long, value_delimiter = ',', default_value = "2,1")]
    threads: Vec<usize>,
    /// Configs as LAYERSxDMODEL.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "3x128,6x128,12x128,4x256"
    )]
    configs: Vec<String>,
    /// Timed steps per config (the median is reported).
    #[arg(long, default_value_t = 7)]
    steps: usize,
    /// Untimed warm-up steps per config.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Use the slow twins (`ops::slow`) instead of the fused ops (sets `CANDLE_STRUCTURED_SLOW_OPS=1`).
    #[arg(long)]
    slow: bool,
    /// Which model: `lib` (the library's `model::Gpt`, `train::AdamW` and `train::clip_grad_norm`, as
    /// `train_small` runs them) or `local` (a self-contained copy in this file, calling `ops` directly).
    #[arg(long, default_value = "lib")]
    model: String,
    /// Print the forward / backward / optimiser split of each step.
    #[arg(long)]
    split: bool,
    /// Python interpreter for PyTorch's twin (`benches/torch_cpu_train.py`), run after each thread count when it
    /// can import torch.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip PyTorch's twin.
    #[arg(long)]
    no_torch: bool,
    /// Internal: run in this process (the parent sets RAYON_NUM_THREADS and passes this).
    #[arg(long, hide = true)]
    child: bool,
}

const VOCAB: usize = 4096;
const CONTEXT: usize = 256;
const BATCH: usize = 16;
const HEAD_DIM: usize = 32;
const DROPOUT: f32 = 0.1;

/// `x · Wᵀ + b` on 2-D activations `(rows, in)`.
struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    fn new(vb: VarBuilder, i: usize, o: usize, bias: bool) -> Result<Self> {
        let bound = 1.0 / (i as f64).sqrt();
        let w = vb.get_with_hints(
            (o, i),
            "weight",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let b = if bias {
            Some(vb.get_with_hints(
                o,
                "bias",
                candle_nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?)
        } else {
            None
        };
        Ok(Self { w, b })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.w.t()?)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
}

impl Norm {
    fn new(vb: VarBuilder, d: usize) -> Result<Self> {
        Ok(Self {
            w: vb.get_with_hints(d, "weight", candle_nn::Init::Const(1.0))?,
            b: vb.get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?,
        })
    }
}

struct Block {
    ln1: Norm,
    qkv: Linear,
    proj: Linear,
    ln2: Norm,
    fc: Linear,
    out: Linear,
}

struct Gpt {
    wte: Tensor,
    blocks: Vec<Block>,
    ln_f: Norm,
    head: Linear,
    cos: Tensor,
    sin: Tensor,
    d: usize,
    slow: bool,
}

impl Gpt {
    fn new(vb: VarBuilder, layers: usize, d: usize, slow: bool, dev: &Device) -> Result<Self> {
        let wte = vb.get_with_hints(
            (VOCAB, d),
            "wte",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let blocks = (0..layers)
            .map(|l| {
                let vb = vb.pp(format!("h{l}"));
                Ok(Block {
                    ln1: Norm::new(vb.pp("ln1"), d)?,
                    qkv: Linear::new(vb.pp("qkv"), d, 3 * d, true)?,
                    proj: Linear::new(vb.pp("proj"), d, d, true)?,
                    ln2: Norm::new(vb.pp("ln2"), d)?,
                    fc: Linear::new(vb.pp("fc"), d, 4 * d, true)?,
                    out: Linear::new(vb.pp("out"), 4 * d, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let half = HEAD_DIM / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / HEAD_DIM as f32))
            .collect();
        let mut cos = Vec::with_capacity(CONTEXT * half);
        let mut sin = Vec::with_capacity(CONTEXT * half);
        for t in 0..CONTEXT {
            for f in &inv {
                cos.push((t as f32 * f).cos());
                sin.push((t as f32 * f).sin());
            }
        }
        Ok(Self {
            wte,
            blocks,
            ln_f: Norm::new(vb.pp("ln_f"), d)?,
            head: Linear::new(vb.pp("head"), d, VOCAB, false)?,
            cos: Tensor::from_vec(cos, (CONTEXT, half), dev)?,
            sin: Tensor::from_vec(sin, (CONTEXT, half), dev)?,
            d,
            slow,
        })
    }

    fn dropout(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.slow {
            ops::slow::dropout(x, DROPOUT, true)
        } else {
            ops::dropout(x, DROPOUT, true)
        }
    }

    fn ln(&self, x: &Tensor, n: &Norm) -> candle_core::Result<Tensor> {
        if self.slow {
            ops::slow::layer_norm(x, Some(&n.w), Some(&n.b), 1e-5)
        } else {
            ops::layer_norm(x, Some(&n.w), Some(&n.b), 1e-5)
        }
    }

    /// Mean cross-entropy of next-token prediction; `ids`, `targets`: `(batch, context)` u32.
    fn loss(&self, ids: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let (d, h) = (self.d, self.d / HEAD_DIM);
        let n = b * t;
        let mut x = self.wte.embedding(&ids.flatten_all()?)?; // (n, d)
        x = self.dropout(&x)?;
        for blk in &self.blocks {
            let a = self.ln(&x, &blk.ln1)?;
            let qkv = blk.qkv.forward(&a)?.reshape((b, t, 3, h, HEAD_DIM))?;
            let q = qkv.narrow(2, 0, 1)?.squeeze(2)?.transpose(1, 2)?;
            let k = qkv.narrow(2, 1, 1)?.squeeze(2)?.transpose(1, 2)?;
            let v = qkv.narrow(2, 2, 1)?.squeeze(2)?.transpose(1, 2)?;
            let (q, k, y) = if self.slow {
                let q = ops::slow::rotary(&q.contiguous()?, &self.cos, &self.sin)?;
                let k = ops::slow::rotary(&k.contiguous()?, &self.cos, &self.sin)?;
                let y = ops::slow::causal_attention(&q, &k, &v.contiguous()?, DROPOUT, true)?;
                (q, k, y)
            } else {
                let q = ops::rotary(&q, &self.cos, &self.sin)?;
                let k = ops::rotary(&k, &self.cos, &self.sin)?;
                let y = ops::causal_attention(&q, &k, &v, DROPOUT, true)?;
                (q, k, y)
            };
            drop((q, k));
            let y = y.transpose(1, 2)?.reshape((n, d))?;
            let y = self.dropout(&blk.proj.forward(&y)?)?;
            x = (x + y)?;
            let a = self.ln(&x, &blk.ln2)?;
            let a = blk.fc.forward(&a)?;
            let a = if self.slow {
                ops::slow::gelu(&a)?
            } else {
                ops::gelu(&a)?
            };
            let y = self.dropout(&blk.out.forward(&a)?)?;
            x = (x + y)?;
        }
        let x = self.ln(&x, &self.ln_f)?;
        let logits = self.head.forward(&x)?;
        let targets = targets.flatten_all()?;
        if self.slow {
            ops::slow::cross_entropy(&logits, &targets)
        } else {
            ops::cross_entropy(&logits, &targets)
        }
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm before clipping.
fn clip_grad_norm(
    vars: &[Var],
    grads: &mut candle_core::backprop::GradStore,
    max_norm: f64,
) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v) {
                grads.insert(v, (g * s)?);
            }
        }
    }
    Ok(norm)
}

/// CPU time (user + system, all threads) of this process in seconds, from `/proc/self/stat` (10 ms ticks);
/// `None` off Linux.
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn stats(xs: &mut [f64]) -> (f64, f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = xs.len();
    let med = if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    };
    (med, xs[0], xs[n - 1])
}

/// One training step of the library's model: forward, backward, global clip at 1.0, AdamW. Returns the loss and
/// the (forward, backward, clip+optimiser) seconds.
fn lib_step(
    model: &candle_structured::model::Gpt,
    opt: &mut candle_structured::train::AdamW,
    ids: &Tensor,
    tg: &Tensor,
) -> Result<(f32, [f64; 3])> {
    let t0 = Instant::now();
    let loss = model.loss(ids, tg, true)?;
    let l = loss.to_scalar::<f32>()?;
    let t1 = Instant::now();
    let store = loss.backward()?;
    let t2 = Instant::now();
    let mut grads = opt.grads_of(&store);
    drop(store);
    candle_structured::train::clip_grad_norm(&mut grads, 1.0)?;
    opt.step(&grads, 3e-4)?;
    let t3 = Instant::now();
    Ok((
        l,
        [
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
        ],
    ))
}

/// One training step of the local model: forward, backward, global clip at 1.0, candle's AdamW. Returns the loss
/// and the (forward, backward, clip+optimiser) seconds.
fn local_step(
    model: &Gpt,
    vars: &[Var],
    opt: &mut candle_nn::AdamW,
    ids: &Tensor,
    tg: &Tensor,
) -> Result<(f32, [f64; 3])> {
    let t0 = Instant::now();
    let loss = model.loss(ids, tg)?;
    let l = loss.to_scalar::<f32>()?;
    let t1 = Instant::now();
    let mut grads = loss.backward()?;
    let t2 = Instant::now();
    clip_grad_norm(vars, &mut grads, 1.0)?;
    opt.step(&grads)?;
    drop(grads);
    let t3 = Instant::now();
    Ok((
        l,
        [
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
        ],
    ))
}

/// Runs the warm-up and timed steps of one config on random token ids and prints its line.
fn time_config(
    args: &Args,
    (layers, d): (usize, usize),
    rng: &mut rand::rngs::StdRng,
    mut step: impl FnMut(&Tensor, &Tensor) -> Result<(f32, [f64; 3])>,
) -> Result<()> {
    let dev = Device::Cpu;
    let (mut tps, mut tf, mut tb, mut to) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last_loss = 0f32;
    let mut cpu0 = None;
    let mut wall0 = Instant::now();
    for i in 0..args.warmup + args.steps {
        let ids: Vec<u32> = (0..BATCH * CONTEXT)
            .map(|_| rng.random_range(0..VOCAB as u32))
            .collect();
        let tg: Vec<u32> = (0..BATCH * CONTEXT)
            .map(|_| rng.random_range(0..VOCAB as u32))
            .collect();
        let ids = Tensor::from_vec(ids, (BATCH, CONTEXT), &dev)?;
        let tg = Tensor::from_vec(tg, (BATCH, CONTEXT), &dev)?;
        if i == args.warmup {
            cpu0 = cpu_seconds();
            wall0 = Instant::now();
        }
        let (l, [f, b, o]) = step(&ids, &tg)?;
        last_loss = l;
        if i >= args.warmup {
            tps.push((BATCH * CONTEXT) as f64 / (f + b + o));
            tf.push(f);
            tb.push(b);
            to.push(o);
        }
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = cpu0.zip(cpu_seconds()).map(|(a, b)| b - a);
    report(
        args,
        candle_core::utils::get_num_threads(),
        (layers, d),
        &mut tps,
        [&mut tf, &mut tb, &mut to],
        cpu,
        wall,
        last_loss,
    );
    Ok(())
}

fn run_child(args: &Args) -> Result<()> {
    if args.model == "lib" {
        return run_child_lib(args);
    }
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for cfg in &args.configs {
        let (layers, d) = parse_cfg(cfg)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let model = Gpt::new(vb, layers, d, args.slow, &dev)?;
        let vars = varmap.all_vars();
        let mut opt = candle_nn::AdamW::new(
            vars.clone(),
            candle_nn::ParamsAdamW {
                lr: 3e-4,
                weight_decay: 0.1,
                ..Default::default()
            },
        )?;
        time_config(args, (layers, d), &mut rng, |ids, tg| {
            local_step(&model, &vars, &mut opt, ids, tg)
        })?;
    }
    Ok(())
}

fn run_child_lib(args: &Args) -> Result<()> {
    use candle_structured::model::{Gpt as LibGpt, GptConfig};
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for cfg in &args.configs {
        let (layers, d) = parse_cfg(cfg)?;
        let mut gcfg = GptConfig::dense(VOCAB, CONTEXT, d, d / HEAD_DIM, layers);
        gcfg.tie_embeddings = false;
        gcfg.dropout = DROPOUT;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let model = LibGpt::new(&gcfg, vb)?;
        let mut opt = candle_structured::train::AdamW::new(
            candle_structured::train::named_vars(&varmap),
            candle_structured::train::AdamWConfig {
                weight_decay: 0.1,
                ..Default::default()
            },
        )?;
        time_config(args, (layers, d), &mut rng, |ids, tg| {
            lib_step(&model, &mut opt, ids, tg)
        })?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    threads: usize,
    (layers, d): (usize, usize),
    tps: &mut [f64],
    split: [&mut Vec<f64>; 3],
    cpu: Option<f64>,
    wall: f64,
    last_loss: f32,
) {
    let (med, lo, hi) = stats(tps);
    println!(
        "threads {threads}  {layers:>2}x{d:<3}  {med:>8.0} tok/s  (min {lo:.0}, max {hi:.0}, {} steps)  loss {last_loss:.3}",
        args.steps
    );
    if let Some(cpu) = cpu {
        let per = cpu / args.steps as f64;
        println!(
            "    CPU time {per:.3} s/step = {:.0} tokens per CPU-second ({:.2} cores busy on average; < threads means a loaded machine)",
            (BATCH * CONTEXT) as f64 / per,
            cpu / wall
        );
    }
    if args.split {
        let [f, b, o] = split;
        let (f, _, _) = stats(f);
        let (b, _, _) = stats(b);
        let (o, _, _) = stats(o);
        println!("    median split: forward {f:.3} s, backward {b:.3} s, clip+AdamW {o:.3} s");
    }
}

fn parse_cfg(s: &str) -> Result<(usize, usize)> {
    let (l, d) = s
        .split_once('x')
        .with_context(|| format!("config {s:?} is not LAYERSxDMODEL"))?;
    let (l, d): (usize, usize) = (l.parse()?, d.parse()?);
    if d % HEAD_DIM != 0 {
        bail!("d_model {d} is not a multiple of the head dim {HEAD_DIM}");
    }
    Ok((l, d))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.model != "lib" && args.model != "local" {
        bail!("--model must be `lib` or `local`, got {:?}", args.model);
    }
    if args.child {
        return run_child(&args);
    }
    for c in &args.configs {
        parse_cfg(c)?;
    }
    let exe = std::env::current_exe()?;
    println!(
        "train_bench: batch {BATCH} x context {CONTEXT}, vocab {VOCAB}, fp32, {} model, {} ops; {} warm-up + {} timed steps",
        args.model,
        if args.slow { "slow" } else { "fused" },
        args.warmup,
        args.steps
    );
    let torch = if args.no_torch {
        None
    } else {
        torch_version(&args.python)
    };
    match &torch {
        Some(v) => println!("PyTorch {v} ({}) runs benches/torch_cpu_train.py after each thread count", args.python),
        None if args.no_torch => println!("PyTorch skipped (--no-torch)"),
        None => println!(
            "PyTorch not found (`{} -c 'import torch'` failed): the crate's figures alone; pass --python PATH to an \
             interpreter with torch (e.g. a venv: python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch)",
            args.python
        ),
    }
    for &t in &args.threads {
        let mut cmd = std::process::Command::new(&exe);
        common::set_runtime_env(&mut cmd);
        cmd.env("RAYON_NUM_THREADS", t.to_string()).arg("--child");
        same_work(&mut cmd, &args);
        cmd.arg("--model").arg(&args.model);
        if args.slow {
            cmd.arg("--slow").env("CANDLE_STRUCTURED_SLOW_OPS", "1");
        }
        if args.split {
            cmd.arg("--split");
        }
        let ours = run_and_collect(cmd, 2)?;
        if torch.is_none() {
            continue;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_cpu_train.py");
        let mut py = std::process::Command::new(&args.python);
        py.arg(script).arg("--threads").arg(t.to_string());
        same_work(&mut py, &args);
        let theirs = run_and_collect(py, 4)?;
        println!("| threads | config | ours, tok/s | PyTorch, tok/s | ours / PyTorch |");
        println!("|---:|---|---:|---:|---:|");
        for (cfg, mine) in &ours {
            if let Some((_, py)) = theirs.iter().find(|(c, _)| c == cfg) {
                println!("| {t} | {cfg} | {mine:.0} | {py:.0} | {:.2} |", mine / py);
            }
        }
    }
    Ok(())
}

/// The version of torch that `python` imports, if it does.
fn torch_version(python: &str) -> Option<String> {
    let out = std::process::Command::new(python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `cmd`, echoing its output, and collects `(config, tokens/s)` from its result lines (`… LxD  T tok/s …`,
/// the config being the token at `at` and the tokens/s the next one).
fn run_and_collect(mut cmd: std::process::Command, at: usize) -> Result<Vec<(String, f64)>> {
    use std::io::BufRead;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let mut found = Vec::new();
    let stdout = child.stdout.take().context("child stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.get(at + 2) == Some(&"tok/s") {
            if let (Some(cfg), Some(Ok(tps))) =
                (words.get(at), words.get(at + 1).map(|w| w.parse()))
            {
                found.push((cfg.to_string(), tps));
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(found)
}

/// The configurations, steps and warm-up steps of this run, as flags: what the crate's child and the PyTorch
/// script both measure.
fn same_work(cmd: &mut std::process::Command, args: &Args) {
    cmd.arg("--configs")
        .arg(args.configs.join(","))
        .arg("--steps")
        .arg(args.steps.to_string())
        .arg("--warmup")
        .arg(args.warmup.to_string());
}
