//! Exact resume, checkpoint integrity and the loop's clear errors, on a tiny model and a tiny synthetic corpus.
#![cfg(feature = "train")]

mod train_common;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::data::eval_windows;
use candle_structured::model::{gpt, GptConfig, OptimizerKind, TrainSpec};
use candle_structured::train::{
    evaluate, evaluate_text, load_checkpoint, named_vars, previous_path, restore_weights, train,
    TrainOptions, TrainReport,
};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use train_common::{corpus, tmp_dir};

fn tiny() -> (GptConfig, TrainSpec) {
    let mut cfg = GptConfig::dense(300, 32, 32, 2, 2);
    cfg.dropout = 0.1; // as the presets: resume must reproduce the dropout masks too
    let spec = TrainSpec {
        batch_size: 4,
        seq_len: 16,
        lr: 3e-3,
        min_lr_fraction: 0.1,
        warmup_tokens: 128,
        decay_tokens: 8 * 64,
        max_tokens: 8 * 64,
        weight_decay: 0.01,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: 1.0,
        optimizer: Default::default(),
        ema_decay: 0.0,
    };
    (cfg, spec)
}

fn opts(run: &Path) -> TrainOptions {
    let mut o = TrainOptions::new(run);
    o.progress = false;
    o.eval_every = 3;
    o.eval_windows = 8;
    o.test_windows = 8;
    o.checkpoint_every = 5;
    o.micro_batch = Some(2); // gradient accumulation over 2 micro-batches
    o
}

/// `scramble`: overwrite the fresh weights with another model's, so a resumed run must restore them.
fn run(cfg: &GptConfig, spec: &TrainSpec, o: &TrainOptions, scramble: bool) -> TrainReport {
    let vm = VarMap::new();
    let model = gpt(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    if scramble {
        let mut other = cfg.clone();
        other.seed = 99;
        let vm2 = VarMap::new();
        gpt(
            &other,
            VarBuilder::from_varmap(&vm2, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let theirs = named_vars(&vm2);
        for ((n1, v1), (n2, v2)) in named_vars(&vm).iter().zip(&theirs) {
            assert_eq!(n1, n2);
            v1.set(v2.as_tensor()).unwrap();
        }
    }
    let stop = AtomicBool::new(false);
    let c = corpus(o.run_dir.parent().unwrap(), 40_000);
    train(&model, &vm, &c, spec, o, &stop).unwrap()
}

fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted() {
    for (optimizer, ema_decay) in [
        (OptimizerKind::AdamW, 0.0),
        (OptimizerKind::Muon, 0.0),
        (OptimizerKind::Muon, 0.8),
    ] {
        interrupted_and_resumed_equals_uninterrupted_with(optimizer, ema_decay);
    }
}

fn interrupted_and_resumed_equals_uninterrupted_with(optimizer: OptimizerKind, ema_decay: f64) {
    let dir = tmp_dir("train", &format!("resume-{optimizer}-{ema_decay}"));
    let (cfg, mut spec) = tiny();
    spec.optimizer = optimizer;
    spec.ema_decay = ema_decay;
    let a = run(&cfg, &spec, &opts(&dir.join("a")), false);
    assert_eq!(a.steps, 8);
    assert!(!a.interrupted);

    let mut ob = opts(&dir.join("b"));
    ob.stop_at_step = Some(4);
    let b1 = run(&cfg, &spec, &ob, false);
    assert!(b1.interrupted);
    assert_eq!(b1.steps, 4);
    ob.stop_at_step = None;
    ob.resume = true;
    // Waiting for the device after each phase changes nothing but the timing (checked by the bitwise loss
    // comparison below).
    ob.sync_phases = true;
    // Other initial weights: they must come from the checkpoint.
    let b2 = run(&cfg, &spec, &ob, true);
    assert_eq!(b2.steps, 8);
    // The phase split covers the four steps of this call and fits in its wall-clock time.
    let p = b2.phases;
    assert!(p.forward_s > 0.0 && p.backward_s > 0.0 && p.optimizer_s > 0.0 && p.data_s >= 0.0);
    let busy = p.data_s + p.forward_s + p.backward_s + p.optimizer_s;
    assert!(
        busy <= b2.elapsed_s,
        "phases {p:?} exceed the call's {} s",
        b2.elapsed_s
    );
    let mut b = b1.losses.clone();
    b.extend(&b2.losses);
    assert_eq!(a.losses.len(), 8);
    for (x, y) in a.losses.iter().zip(&b) {
        assert_eq!(x.to_bits(), y.to_bits(), "{:?} vs {:?}", a.losses, b);
    }
    assert_eq!(
        a.valid.unwrap().loss.to_bits(),
        b2.valid.unwrap().loss.to_bits()
    );
    assert_eq!(
        a.test.unwrap().loss.to_bits(),
        b2.test.unwrap().loss.to_bits()
    );
    // The logs read as one run: same step lines (losses, lr, norms, compute, val losses).
    let keys = [
        "step",
        "tokens",
        "train_loss",
        "lr",
        "grad_norm",
        "flops",
        "val_loss",
        "val_bpb",
    ];
    let steps = |lines: Vec<serde_json::Value>| -> Vec<Vec<serde_json::Value>> {
        lines
            .into_iter()
            .filter(|l| l.get("train_loss").is_some())
            .map(|l| {
                keys.iter()
                    .map(|k| l.get(*k).cloned().unwrap_or_default())
                    .collect()
            })
            .collect()
    };
    let la = steps(log_lines(&a.log));
    let lb = steps(log_lines(&b2.log));
    assert_eq!(la.len(), 8);
    assert_eq!(la, lb);
    // Compute accounting in the log: C = 6 · N · tokens.
    let n = cfg.param_counts().non_embedding.trainable as f64;
    for l in log_lines(&a.log)
        .iter()
        .filter(|l| l.get("train_loss").is_some())
    {
        let tokens = l["tokens"].as_f64().unwrap();
        assert_eq!(l["flops"].as_f64().unwrap(), 6.0 * n * tokens);
        assert_eq!(l["n_frozen"].as_u64().unwrap(), 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_checkpoints_and_recipes_get_clear_errors() {
    let dir = tmp_dir("train", "errors");
    let (cfg, spec) = tiny();
    let run_dir = dir.join("r");
    let mut o = opts(&run_dir);
    o.checkpoint_every = 2;
    run(&cfg, &spec, &o, false);
    let ckpt = run_dir.join("checkpoint.safetensors");
    let prev = previous_path(&ckpt);
    assert!(ckpt.exists() && prev.exists());
    let c = corpus(&dir, 40_000);
    let stop = AtomicBool::new(false);
    let try_train = |cfg: &GptConfig, spec: &TrainSpec, o: &TrainOptions| -> String {
        let vm = VarMap::new();
        let model = gpt(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        train(&model, &vm, &c, spec, o, &stop)
            .unwrap_err()
            .to_string()
    };

    // A checkpoint of a format this build does not know yet (its checksum intact) is refused as newer, not corrupt.
    let newer_path = dir.join("newer.safetensors");
    let mut newer = load_checkpoint(&ckpt, &Device::Cpu).unwrap();
    newer.meta.format = candle_structured::train::CHECKPOINT_FORMAT + 1;
    let mut tensors: Vec<_> = newer.tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    candle_structured::train::save_checkpoint(&newer_path, &newer.meta, &tensors).unwrap();
    let e = load_checkpoint(&newer_path, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("newer") && !e.contains("corrupt"),
        "a newer format: {e}"
    );

    // A checkpoint from another configuration.
    let mut other = cfg.clone();
    other.d_model = 64;
    other.n_heads = 4;
    let mut o2 = opts(&run_dir);
    o2.resume = true;
    let err = try_train(&other, &spec, &o2);
    assert!(
        err.contains("another model configuration") && err.contains("d_model"),
        "{err}"
    );

    // Sequence length above the context.
    let mut long = spec.clone();
    long.seq_len = 64;
    let err = try_train(&cfg, &long, &opts(&dir.join("long")));
    assert!(err.contains("above the model's context"), "{err}");

    // A batch that does not fit: not a multiple of the micro-batch, or far too large for memory.
    let mut o3 = opts(&dir.join("batch"));
    o3.micro_batch = Some(3);
    let err = try_train(&cfg, &spec, &o3);
    assert!(err.contains("not a multiple of the micro-batch"), "{err}");
    let mut huge = spec.clone();
    huge.batch_size = 1 << 24;
    o3.micro_batch = Some(1 << 24);
    let err = try_train(&cfg, &huge, &o3);
    assert!(err.contains("GiB"), "{err}");

    // Resume without a checkpoint.
    let mut o4 = opts(&dir.join("none"));
    o4.resume = true;
    let err = try_train(&cfg, &spec, &o4);
    assert!(err.contains("no checkpoint"), "{err}");

    // A truncated checkpoint: a clear error naming the previous good one, which still loads.
    let good = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &good[..good.len() / 2]).unwrap();
    let err = try_train(&cfg, &spec, &o2);
    assert!(
        err.contains("truncated or corrupt") && err.contains("prev"),
        "{err}"
    );
    assert!(load_checkpoint(&prev, &Device::Cpu).is_ok());
    // A corrupt one (one flipped bit in the tensor data): the checksum catches it.
    let mut bad = good.clone();
    let k = bad.len() - 10;
    bad[k] ^= 0x10;
    std::fs::write(&ckpt, &bad).unwrap();
    let err = load_checkpoint(&ckpt, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum"), "{err}");
    // Not a checkpoint at all.
    std::fs::write(&ckpt, b"hello").unwrap();
    let err = load_checkpoint(&ckpt, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated or corrupt"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a weight average the run reports the average, hand-computed here from the live weights of every step's
/// checkpoint, and `restore_weights` loads it (the final validation loss is that of the loaded model), while
/// the checkpoint keeps the live weights apart.
#[test]
fn a_weight_average_is_what_the_run_measures_and_saves() {
    let dir = tmp_dir("train", "ema");
    let (cfg, mut spec) = tiny();
    spec.ema_decay = 0.7;
    let c = corpus(&dir, 40_000);
    let mut o = opts(&dir.join("run"));
    o.checkpoint_every = 1;
    let vm = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let initial: Vec<candle_core::Tensor> = named_vars(&vm)
        .iter()
        .map(|(_, v)| v.as_tensor().copy().unwrap())
        .collect();
    // Live weights after each step, read back from the checkpoints written every step (the last one is read
    // after the run).
    let live_at = |path: &Path| -> Vec<candle_core::Tensor> {
        let ck = load_checkpoint(path, &Device::Cpu).unwrap();
        named_vars(&vm)
            .iter()
            .map(|(n, _)| ck.tensors[&format!("model/{n}")].clone())
            .collect()
    };
    let mut steps = Vec::new();
    for stop in 1..=8u64 {
        let mut os = o.clone();
        os.resume = stop > 1;
        os.stop_at_step = (stop < 8).then_some(stop);
        let r = train(&model, &vm, &c, &spec, &os, &AtomicBool::new(false)).unwrap();
        steps.push(live_at(&r.checkpoint));
        if stop == 8 {
            let ck = load_checkpoint(&r.checkpoint, &Device::Cpu).unwrap();
            // a ← 0.7·a + 0.3·θ after every step, from a = θ₀.
            let mut expected = initial.clone();
            for live in &steps {
                for (a, t) in expected.iter_mut().zip(live) {
                    *a = ((&*a * 0.7).unwrap() + (t * 0.3).unwrap()).unwrap();
                }
            }
            for ((n, v), a) in named_vars(&vm).iter().zip(&expected) {
                let saved = &ck.tensors[&format!("ema/{n}")];
                assert!(max_abs_diff(saved, a) < 1e-6, "{n}: saved average");
                // The variables hold the average after the run.
                assert!(
                    max_abs_diff(v.as_tensor(), a) < 1e-6,
                    "{n}: the model's weights"
                );
            }
            // The live weights differ from the average (the test compares something).
            let live = &steps[7];
            let apart = live
                .iter()
                .zip(&expected)
                .map(|(l, a)| max_abs_diff(l, a))
                .fold(0f32, f32::max);
            assert!(apart > 1e-4, "live and average weights coincide");
            // restore_weights loads the average: the reported validation loss is the loaded model's.
            let vm2 = VarMap::new();
            let loaded = gpt(
                &cfg,
                VarBuilder::from_varmap(&vm2, DType::F32, &Device::Cpu),
            )
            .unwrap();
            restore_weights(&ck, &cfg, &vm2, &r.checkpoint).unwrap();
            let windows = eval_windows(c.valid.len(), 16, 8);
            let v = evaluate_valid(&loaded, &c, &windows, 2);
            assert_eq!(v.loss.to_bits(), r.valid.unwrap().loss.to_bits());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The largest absolute difference between two f32 tensors of one shape.
fn max_abs_diff(x: &candle_core::Tensor, y: &candle_core::Tensor) -> f32 {
    (x - y)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The loss on the validation windows of length 16 starting at `windows`, in micro-batches of `micro`.
fn evaluate_valid(
    model: &candle_structured::model::Gpt,
    c: &candle_structured::data::Corpus,
    windows: &[usize],
    micro: usize,
) -> candle_structured::train::EvalResult {
    evaluate(
        model,
        &c.valid,
        windows,
        16,
        micro,
        &c.token_bytes,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn evaluate_text_agrees_with_the_token_file_evaluation() {
    let dir = tmp_dir("train", "evaltext");
    let c = corpus(&dir, 40_000);
    let (cfg, _) = tiny();
    let vm = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let tok = candle_structured::data::load_tokenizer(&c.tokenizer_path).unwrap();
    let text = std::fs::read_to_string(dir.join("src").join("valid.txt")).unwrap();
    let a = evaluate_text(&model, &tok, &text, 16, 8, &Device::Cpu).unwrap();
    let windows = eval_windows(c.valid.len(), 16, usize::MAX);
    let b = evaluate_valid(&model, &c, &windows, 8);
    // Every token after the first is scored: the full windows, then the tail after them.
    assert_eq!(a.tokens, c.valid.len() - 1);
    let tail_start = windows.len() * 16;
    let tail = c.valid.len() - 1 - tail_start;
    let mut nats = b.loss * b.tokens as f64;
    if tail > 0 {
        let t = evaluate(
            &model,
            &c.valid,
            &[tail_start],
            tail,
            1,
            &c.token_bytes,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(b.tokens + t.tokens, a.tokens);
        nats += t.loss * t.tokens as f64;
    }
    assert!(
        (a.loss - nats / a.tokens as f64).abs() < 1e-9,
        "{a:?} vs {b:?}"
    );
    // Untrained: about ln(vocab) nats per token.
    assert!((a.loss - (300f64).ln()).abs() < 0.5, "{a:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Workers computing a step's micro-batches at once give the serial run bit for bit (dropout on, losses,
/// validation and test), with the micro-batches shared evenly (2 workers × 2) and unevenly (3 workers over 4).
#[test]
fn workers_give_the_serial_result_bit_for_bit() {
    let dir = tmp_dir("train", "workers");
    let (cfg, spec) = tiny();
    let muon = TrainSpec {
        optimizer: OptimizerKind::Muon,
        ..spec.clone()
    };
    for (micro, workers, spec) in [(2, 2, &spec), (1, 3, &spec), (2, 2, &muon)] {
        let o = spec.optimizer;
        let mut serial = opts(&dir.join(format!("serial-{micro}-{o}")));
        serial.micro_batch = Some(micro);
        let mut par = opts(&dir.join(format!("workers-{micro}-{workers}-{o}")));
        par.micro_batch = Some(micro);
        par.workers = workers;
        let a = run(&cfg, spec, &serial, false);
        let b = run(&cfg, spec, &par, false);
        assert_eq!(a.losses.len(), 8);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&a.losses),
            bits(&b.losses),
            "micro {micro}, {workers} workers, {o}"
        );
        assert_eq!(
            a.valid.unwrap().loss.to_bits(),
            b.valid.unwrap().loss.to_bits()
        );
        assert_eq!(
            a.test.unwrap().loss.to_bits(),
            b.test.unwrap().loss.to_bits()
        );
    }
    // Without a micro-batch, 2 workers on a batch of 4 take micro-batches of 2.
    let mut o = opts(&dir.join("auto"));
    o.micro_batch = None;
    o.workers = 2;
    run(&cfg, &spec, &o, false);
    let plan = log_lines(&dir.join("auto").join("log.jsonl"))
        .into_iter()
        .find(|l| l.get("micro_batch").is_some())
        .expect("a plan line");
    assert_eq!(plan["micro_batch"], 2);
    // No workers is refused before anything runs.
    let mut o = opts(&dir.join("none"));
    o.workers = 0;
    let vm = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let c = corpus(&dir, 40_000);
    let err = train(&model, &vm, &c, &spec, &o, &AtomicBool::new(false)).unwrap_err();
    assert!(err.to_string().contains("0 workers"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Windows sliding by `stride` score every target once, each after the first window with at least
/// `seq_len - stride` tokens of context, for lengths that do and do not fit the stride.
#[test]
fn sliding_windows_score_every_target_once_with_context() {
    use candle_structured::train::sliding_windows;
    for len in [2usize, 5, 17, 18, 100, 257, 1000] {
        for (seq_len, stride) in [(16, 16), (16, 8), (16, 5), (16, 1), (256, 128)] {
            let spans = sliding_windows(len, seq_len, stride);
            let mut count = vec![0u32; len];
            for &(start, wlen, first) in &spans {
                assert!(
                    start + wlen < len,
                    "window past the end: {len} {seq_len} {stride}"
                );
                for p in first..wlen {
                    count[start + p + 1] += 1;
                    // context of the prediction at position p: p + 1 tokens of the window
                    if start > 0 {
                        assert!(
                            p + 1 >= seq_len.min(len - 1) - stride.min(seq_len),
                            "{len} {seq_len} {stride}"
                        );
                    }
                }
            }
            assert_eq!(count[0], 0);
            assert!(
                count[1..].iter().all(|&c| c == 1),
                "{len} {seq_len} {stride}: {count:?}"
            );
        }
    }
    assert!(sliding_windows(1, 16, 8).is_empty());
}

/// The sliding evaluation with disjoint windows equals the token-file evaluation of the same windows (per-token
/// losses from the logits against the training loss), and reading in order with overlap scores the same tokens.
#[test]
fn sliding_evaluation_agrees_with_the_window_evaluation() {
    use candle_structured::train::evaluate_sliding;
    let dir = tmp_dir("train", "sliding");
    let c = corpus(&dir, 40_000);
    let (cfg, _) = tiny();
    let vm = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let seq = 16;
    // A stream of a whole number of windows plus one token: disjoint sliding windows are eval_windows' windows.
    let n = (c.valid.len() - 1) / seq * seq + 1;
    let fill = |s: usize, k: usize, buf: &mut Vec<u32>| c.valid.extend_window(s, k, buf);
    let a = evaluate_sliding(&model, n, (seq, seq), 8, &c.token_bytes, &Device::Cpu, fill).unwrap();
    let windows = eval_windows(n, seq, usize::MAX);
    let b = evaluate(
        &model,
        &c.valid,
        &windows,
        seq,
        8,
        &c.token_bytes,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert!((a.loss - b.loss).abs() < 1e-5, "{a:?} vs {b:?}");
    assert!(
        (a.bits_per_byte - b.bits_per_byte).abs() < 1e-5,
        "{a:?} vs {b:?}"
    );
    let o = evaluate_sliding(
        &model,
        n,
        (seq, seq / 2),
        8,
        &c.token_bytes,
        &Device::Cpu,
        fill,
    )
    .unwrap();
    assert_eq!(o.tokens, n - 1);
    assert!(
        o.loss.is_finite() && (o.loss - a.loss).abs() < 0.5,
        "{o:?} vs {a:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
