//! A run never lost or silently corrupted: `kill -9` of the trainer's PID and of its process group at random points,
//! then resume (bit-identical to an uninterrupted run, no process left behind); a second trainer on a locked
//! folder; flipped bits in a checkpoint's metadata and tensors; a truncated token cache; bad flags.
//!
//! The kill trials re-run this test binary as the trainer (`child_trainer`, active only when
//! `CS_RELIABILITY_CHILD` names a run folder). Each test prints its counts (`--nocapture` shows them).
#![cfg(all(feature = "train", unix))]

mod train_common;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::model::{gpt, GptConfig, OptimizerKind, TrainSpec};
use candle_structured::train::plan::{Cadence, Overrides, RunPlan};
use candle_structured::train::{
    evaluate_text, load_checkpoint, previous_path, train, TrainOptions, TrainReport,
    CHECKPOINT_FILE, LOCK_FILE, LOG_FILE,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use train_common::{corpus, synthetic_text, tmp_dir};

const CHILD: &str = "CS_RELIABILITY_CHILD";
const CHILD_STEPS: &str = "CS_RELIABILITY_STEPS";

fn tiny() -> (GptConfig, TrainSpec) {
    let mut cfg = GptConfig::dense(300, 16, 32, 2, 1);
    cfg.dropout = 0.1; // resume must reproduce the dropout masks too
    let spec = TrainSpec {
        batch_size: 4,
        seq_len: 16,
        lr: 3e-3,
        min_lr_fraction: 0.1,
        warmup_tokens: 128,
        decay_tokens: 30 * 64,
        max_tokens: 30 * 64,
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

fn options(run: &Path, resume: bool) -> TrainOptions {
    let mut o = TrainOptions::new(run);
    o.progress = false;
    o.eval_every = 7;
    o.eval_windows = 4;
    o.test_windows = 4;
    o.checkpoint_every = 1; // many writes to be killed in
    o.micro_batch = Some(2);
    o.resume = resume;
    o.preset = Some("tiny-test".into());
    o
}

/// Trains the tiny model in `run` (resuming when it holds a checkpoint), corpus under `root`.
fn run_tiny(root: &Path, run: &Path, spec: &TrainSpec) -> candle_core::Result<TrainReport> {
    let (cfg, _) = tiny();
    let c = corpus(root, 30_000);
    let vm = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let resume = run.join(CHECKPOINT_FILE).exists();
    train(
        &model,
        &vm,
        &c,
        spec,
        &options(run, resume),
        &AtomicBool::new(false),
    )
}

/// The trainer process of the kill trials (a no-op in a normal test run).
#[test]
fn child_trainer() {
    let Some(run) = std::env::var_os(CHILD).map(PathBuf::from) else {
        return;
    };
    let (_, mut spec) = tiny();
    if let Some(steps) = std::env::var(CHILD_STEPS)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        spec = spec.with_budget(steps * spec.tokens_per_step());
    }
    if let Err(e) = run_tiny(run.parent().unwrap(), &run, &spec) {
        eprintln!("child error: {e}");
        std::process::exit(3);
    }
}

/// Starts this test binary as a trainer on `run`, in its own process group.
fn spawn_child(run: &Path, steps: Option<u64>) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_trainer",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, run)
    .env("RAYON_NUM_THREADS", "1")
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .process_group(0);
    if let Some(s) = steps {
        cmd.env(CHILD_STEPS, s.to_string());
    }
    cmd.spawn().unwrap()
}

/// Whether any process of group `pgid` is alive.
fn group_alive(pgid: u32) -> bool {
    Command::new("kill")
        .args(["-0", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The step lines of a log (losses, rates, norms, validation), as JSON values.
fn step_lines(log: &Path) -> Vec<serde_json::Value> {
    let keys = [
        "step",
        "tokens",
        "train_loss",
        "lr",
        "grad_norm",
        "val_loss",
        "val_bpb",
    ];
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("train_loss").is_some())
        .map(|v| {
            keys.iter()
                .map(|k| v.get(*k).cloned().unwrap_or_default())
                .collect()
        })
        .collect()
}

fn final_line(log: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(log).unwrap();
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("\"event\":\"final\""))
        .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(last).unwrap();
    v.as_object_mut()
        .unwrap()
        .retain(|k, _| k.starts_with("val_") || k.starts_with("test_"));
    v
}

#[test]
fn kill_9_then_resume_is_bit_identical() {
    let root = tmp_dir("rel", "kill");
    let (_, spec) = tiny();
    let reference = run_tiny(&root, &root.join("reference"), &spec).unwrap();
    let want = step_lines(&reference.log);
    assert_eq!(want.len(), 30);
    // Child start-up (process, corpus from the cache) and 30 steps: the kills land anywhere in it.
    let t = Instant::now();
    let mut probe = spawn_child(&root.join("probe"), None);
    assert!(probe.wait().unwrap().success());
    let span = t.elapsed().as_millis() as u64;
    let trials = 8;
    let (mut identical, mut left_behind, mut killed_mid_run) = (0, 0, 0);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for trial in 0..trials {
        let run = root.join(format!("t{trial}"));
        // One to three kills, then a resume to the end.
        for _ in 0..1 + trial % 3 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut child = spawn_child(&run, None);
            let pid = child.id();
            std::thread::sleep(Duration::from_millis(rng % span.max(1)));
            let whole_group = trial % 2 == 1;
            let target = if whole_group {
                format!("-{pid}")
            } else {
                pid.to_string()
            };
            let _ = Command::new("kill").args(["-9", "--", &target]).status();
            let status = child.wait().unwrap();
            killed_mid_run += usize::from(!status.success());
            if group_alive(pid) {
                left_behind += 1;
            }
        }
        let mut child = spawn_child(&run, None);
        let status = child.wait().unwrap();
        assert!(status.success(), "trial {trial}: resume failed: {status:?}");
        let got = step_lines(&run.join(LOG_FILE));
        assert_eq!(got, want, "trial {trial}: the resumed run differs");
        assert_eq!(final_line(&run.join(LOG_FILE)), final_line(&reference.log));
        // No temporary file is left, and the two checkpoints are two files.
        let names: Vec<String> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let ckpt = run.join(CHECKPOINT_FILE);
        assert_ne!(ino(&ckpt), ino(&previous_path(&ckpt)));
        identical += 1;
    }
    assert_eq!(left_behind, 0);
    eprintln!(
        "kill -9 trials: {trials}, killed while running: {killed_mid_run}, bit-identical after resume: \
         {identical}, processes left behind: {left_behind}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_second_trainer_on_a_busy_folder_is_refused_and_touches_nothing() {
    let root = tmp_dir("rel", "lock");
    corpus(&root, 30_000);
    let run = root.join("busy");
    let mut child = spawn_child(&run, Some(100_000));
    let pid = child.id().to_string();
    let t = Instant::now();
    while std::fs::read_to_string(run.join(LOCK_FILE))
        .map(|s| s.trim() != pid)
        .unwrap_or(true)
        || !run.join(LOG_FILE).exists()
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the child never locked its folder"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, spec) = tiny();
    let mut refused = 0;
    for resume in [false, true] {
        let c = corpus(&root, 30_000);
        let vm = VarMap::new();
        let (cfg, _) = tiny();
        let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let stop = AtomicBool::new(false);
        let err = train(&model, &vm, &c, &spec, &options(&run, resume), &stop)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("in use by process") && err.contains(&pid),
            "{err}"
        );
        refused += 1;
    }
    // The plan refuses it too, before any work.
    let cache = root.join("cache");
    let err = RunPlan::resume(
        run.clone(),
        None,
        &Overrides::default(),
        cadence(),
        cache.clone(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&pid), "{err}");
    let err = RunPlan::fresh(
        "xxsmall-cpu",
        &Overrides::default(),
        cadence(),
        Some(run.clone()),
        cache,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&pid), "{err}");
    refused += 2;
    // Nothing moved aside, the child still owns and writes its folder.
    assert!(!root.join("busy.1").exists());
    assert_eq!(
        std::fs::read_to_string(run.join(LOCK_FILE)).unwrap().trim(),
        pid
    );
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("second trainer on a busy folder: 4 tries, refused naming the PID: {refused}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn flipped_bits_anywhere_in_a_checkpoint_are_refused() {
    let root = tmp_dir("rel", "flip");
    let (_, mut spec) = tiny();
    spec = spec.with_budget(3 * spec.tokens_per_step());
    let run = root.join("r");
    run_tiny(&root, &run, &spec).unwrap();
    let ckpt = run.join(CHECKPOINT_FILE);
    let good = std::fs::read(&ckpt).unwrap();
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let meta_at = good
        .windows(19)
        .position(|w| w == b"\"candle_structured\"")
        .unwrap();
    let (mut trials, mut refused, mut panics, mut silent) = (0, 0, 0, 0);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut positions: Vec<usize> = (meta_at..(meta_at + 600).min(header)).collect(); // the run state
    for k in 0..700 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (rng >> 33) as usize;
        positions.push(if k % 2 == 0 {
            r % header
        } else {
            header + r % (good.len() - header)
        });
    }
    for &pos in &positions {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut bad = good.clone();
        bad[pos] ^= 1 << ((rng >> 40) % 8);
        std::fs::write(&ckpt, &bad).unwrap();
        trials += 1;
        match std::panic::catch_unwind(|| load_checkpoint(&ckpt, &Device::Cpu)) {
            Err(_) => panics += 1,
            Ok(Ok(_)) => silent += 1,
            Ok(Err(e)) => {
                let e = e.to_string();
                assert!(e.contains("checkpoint.prev.safetensors"), "byte {pos}: {e}");
                refused += 1;
            }
        }
    }
    // The previous checkpoint loads, and a run resumed from it finishes.
    load_checkpoint(&previous_path(&ckpt), &Device::Cpu).unwrap();
    std::fs::copy(previous_path(&ckpt), &ckpt).unwrap();
    run_tiny(&root, &run, &spec).unwrap();
    eprintln!(
        "bit flips: {trials} trials ({} in the run state), refused with a clear error: {refused}, panics: \
         {panics}, silently accepted: {silent}",
        positions.len() - 700
    );
    assert_eq!((panics, silent), (0, 0));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_truncated_or_edited_token_cache_is_rebuilt() {
    let root = tmp_dir("rel", "cache");
    let c = corpus(&root, 30_000);
    let (id, len) = (c.identity, c.train.len());
    let bin = c.train.path().to_path_buf();
    drop(c);
    let full = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &full[..1000]).unwrap();
    let c = corpus(&root, 30_000);
    assert_eq!((c.identity, c.train.len()), (id, len));
    drop(c);
    let mut edited = full.clone();
    edited[10] ^= 1;
    std::fs::write(&bin, &edited).unwrap();
    let c = corpus(&root, 30_000);
    assert_eq!(c.identity, id);
    assert_eq!(std::fs::read(&bin).unwrap(), full);
    eprintln!("token cache: 2 trials (truncated, edited), rebuilt identical: 2");
    let _ = std::fs::remove_dir_all(&root);
}

fn cadence() -> Cadence {
    Cadence {
        eval_every: 10,
        eval_windows: 4,
        test_windows: 4,
        checkpoint_every: 10,
    }
}

#[test]
fn bad_flags_are_refused_before_anything_runs() {
    let cache = std::env::temp_dir().join("cs-rel-unused-cache");
    let fresh = |ov: Overrides, c: Cadence| {
        RunPlan::fresh("xxsmall-cpu", &ov, c, Some("unused".into()), cache.clone())
            .unwrap_err()
            .to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (
            fresh(
                Overrides {
                    lr: Some(-1.0),
                    ..Default::default()
                },
                cadence(),
            ),
            "--lr -1",
        ),
        (
            fresh(
                Overrides {
                    lr: Some(f64::NAN),
                    ..Default::default()
                },
                cadence(),
            ),
            "--lr NaN",
        ),
        (
            fresh(
                Overrides {
                    lr: Some(0.0),
                    ..Default::default()
                },
                cadence(),
            ),
            "--lr 0",
        ),
        (
            fresh(
                Overrides {
                    min_lr_fraction: Some(1.5),
                    ..Default::default()
                },
                cadence(),
            ),
            "--min-lr-fraction 1.5",
        ),
        (
            fresh(
                Overrides {
                    ema_decay: Some(1.0),
                    ..Default::default()
                },
                cadence(),
            ),
            "--ema-decay 1",
        ),
        (
            fresh(
                Overrides {
                    steps: Some(0),
                    ..Default::default()
                },
                cadence(),
            ),
            "--steps 0",
        ),
        (
            fresh(
                Overrides {
                    dropout: Some(0.9f32 + 0.2),
                    ..Default::default()
                },
                cadence(),
            ),
            "--dropout",
        ),
        (
            fresh(
                Overrides {
                    seq_len: Some(100_000),
                    ..Default::default()
                },
                cadence(),
            ),
            "above the context",
        ),
        (
            fresh(
                Overrides::default(),
                Cadence {
                    eval_windows: 0,
                    ..cadence()
                },
            ),
            "--eval-windows 0",
        ),
        (
            fresh(
                Overrides::default(),
                Cadence {
                    test_windows: 0,
                    ..cadence()
                },
            ),
            "--test-windows 0",
        ),
    ];
    for (err, want) in &cases {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!Path::new("unused").exists());
    eprintln!(
        "bad flags of a fresh run: {} trials, refused with a clear error: {}",
        cases.len(),
        cases.len()
    );
}

#[test]
fn resume_refuses_conflicting_flags_and_takes_the_budget() {
    let root = tmp_dir("rel", "conflict");
    let (_, mut spec) = tiny();
    spec = spec.with_budget(4 * spec.tokens_per_step());
    let run = root.join("r");
    let mut o = options(&run, false);
    o.stop_at_step = Some(2);
    let c = corpus(&root, 30_000);
    let vm = VarMap::new();
    let (cfg, _) = tiny();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    train(&model, &vm, &c, &spec, &o, &AtomicBool::new(false)).unwrap();
    let cache = root.join("cache");
    let resume = |preset: Option<&str>, ov: Overrides| {
        RunPlan::resume(run.clone(), preset, &ov, cadence(), cache.clone())
    };
    let err = |preset: Option<&str>, ov: Overrides| resume(preset, ov).unwrap_err().to_string();
    let other_data = root.join("other");
    std::fs::create_dir_all(&other_data).unwrap();
    let cases = [
        (
            err(
                None,
                Overrides {
                    seed: Some(1),
                    ..Default::default()
                },
            ),
            "--seed: checkpoint 0, given 1",
        ),
        (
            err(Some("xsmall-cpu"), Overrides::default()),
            "--preset: checkpoint tiny-test, given xsmall-cpu",
        ),
        (
            err(
                None,
                Overrides {
                    micro_batch: Some(4),
                    ..Default::default()
                },
            ),
            "--micro-batch: checkpoint 2",
        ),
        (
            err(
                None,
                Overrides {
                    dropout: Some(0.5),
                    ..Default::default()
                },
            ),
            "--dropout",
        ),
        (
            err(
                None,
                Overrides {
                    lr: Some(1e-2),
                    ..Default::default()
                },
            ),
            "--lr",
        ),
        (
            err(
                None,
                Overrides {
                    optimizer: Some(OptimizerKind::Muon),
                    ..Default::default()
                },
            ),
            "--optimizer: checkpoint adamw, given muon",
        ),
        (
            err(
                None,
                Overrides {
                    ema_decay: Some(0.99),
                    ..Default::default()
                },
            ),
            "--ema-decay: checkpoint 0, given 0.99",
        ),
        (
            err(
                None,
                Overrides {
                    data: Some(other_data),
                    ..Default::default()
                },
            ),
            "--data",
        ),
        (
            err(
                None,
                Overrides {
                    steps: Some(1),
                    ..Default::default()
                },
            ),
            "below the",
        ),
    ];
    for (e, want) in &cases {
        assert!(e.contains(want), "{want}: {e}");
    }
    // Two differing flags: both named.
    let both = err(
        None,
        Overrides {
            seed: Some(3),
            lr: Some(1.0),
            ..Default::default()
        },
    );
    assert!(both.contains("--seed") && both.contains("--lr"), "{both}");
    // The same values, or none, resume; a larger budget extends the run.
    let plan = resume(
        None,
        Overrides {
            seed: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(plan.train, spec);
    assert_eq!(plan.options.micro_batch, Some(2));
    assert_eq!(
        plan.resume_hint(),
        format!("--resume --run-dir {}", run.display())
    );
    let plan = resume(
        None,
        Overrides {
            steps: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(plan.train.total_steps(), 8);
    let report = train(
        &model,
        &vm,
        &c,
        &plan.train,
        &plan.options,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(report.steps, 8);
    eprintln!(
        "conflicting resume flags: {} trials, refused naming the field: {}",
        cases.len() + 1,
        cases.len() + 1
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_fresh_start_moves_any_old_run_aside() {
    let root = tmp_dir("rel", "aside");
    let run = root.join("r");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join(LOG_FILE), "{\"step\":1,\"train_loss\":5.0}\n").unwrap();
    let (_, mut spec) = tiny();
    spec = spec.with_budget(2 * spec.tokens_per_step());
    let c = corpus(&root, 30_000);
    let vm = VarMap::new();
    let (cfg, _) = tiny();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    train(
        &model,
        &vm,
        &c,
        &spec,
        &options(&run, false),
        &AtomicBool::new(false),
    )
    .unwrap();
    let old = std::fs::read_to_string(root.join("r.1").join(LOG_FILE)).unwrap();
    assert!(old.contains("5.0"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn evaluate_text_scores_every_token_after_the_first() {
    let root = tmp_dir("rel", "evaltail");
    let c = corpus(&root, 30_000);
    let tok = candle_structured::data::load_tokenizer(&c.tokenizer_path).unwrap();
    let (cfg, _) = tiny();
    let vm = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let body = synthetic_text(7, 30_000);
    let mut seen = std::collections::HashSet::new();
    for bytes in [40, 300, 1100, 1200, 1300, 1400] {
        let mut end = bytes;
        while !body.is_char_boundary(end) {
            end += 1;
        }
        let t = &body[..end];
        let ids = tok.encode(t, false).unwrap().get_ids().len();
        let r = evaluate_text(&model, &tok, t, cfg.context, 8, &Device::Cpu).unwrap();
        assert_eq!(r.tokens, ids - 1, "{bytes} bytes");
        seen.insert(r.tokens);
    }
    assert_eq!(seen.len(), 6);
    let _ = std::fs::remove_dir_all(&root);
}

/// Rewrites a checkpoint in format 1 (before this build): no micro-batch, corpus or data hashes, and a checksum over
/// the tensors only.
fn as_format_1(path: &Path) {
    // FNV-1a, written out here: the format-1 checksum as that format defined it.
    fn fnv1a_extend(mut state: u64, bytes: &[u8]) -> u64 {
        for &b in bytes {
            state ^= b as u64;
            state = state.wrapping_mul(0x0000_0100_0000_01b3);
        }
        state
    }
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["candle_structured"]).unwrap();
    let m = meta.as_object_mut().unwrap();
    m.insert("format".into(), 1.into());
    for k in ["micro_batch", "corpus", "data"] {
        m.remove(k);
    }
    // Nor the optimizer (AdamW then).
    m["train"].as_object_mut().unwrap().remove("optimizer");
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    let mut views = Vec::new();
    for n in &names {
        let v = st.tensor(n).unwrap();
        sum = fnv1a_extend(sum, n.as_bytes());
        sum = fnv1a_extend(sum, v.data());
        views.push((n.clone(), v));
    }
    let info = std::collections::HashMap::from([
        ("candle_structured".to_string(), meta.to_string()),
        ("checksum".to_string(), format!("{sum:016x}")),
    ]);
    std::fs::write(
        path,
        safetensors::tensor::serialize(views, Some(info)).unwrap(),
    )
    .unwrap();
}

#[test]
fn an_old_format_1_checkpoint_resumes_bit_identically() {
    let root = tmp_dir("rel", "format1");
    let (_, mut spec) = tiny();
    spec = spec.with_budget(6 * spec.tokens_per_step());
    let reference = run_tiny(&root, &root.join("reference"), &spec).unwrap();
    let run = root.join("old");
    let c = corpus(&root, 30_000);
    let (cfg, _) = tiny();
    let vm = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let mut o = options(&run, false);
    o.stop_at_step = Some(3);
    train(&model, &vm, &c, &spec, &o, &AtomicBool::new(false)).unwrap();
    as_format_1(&run.join(CHECKPOINT_FILE));
    let meta = load_checkpoint(&run.join(CHECKPOINT_FILE), &Device::Cpu)
        .unwrap()
        .meta;
    assert_eq!((meta.format, meta.micro_batch, meta.data), (1, None, None));
    // The plan of an old run: what it recorded, the rest unknown (the command line's or the defaults; an old
    // checkpoint does not name its corpus, so the command line does).
    let plan = RunPlan::resume(
        run.clone(),
        None,
        &Overrides {
            data: Some(root.join("src")),
            ..Overrides::default()
        },
        cadence(),
        root.join("cache"),
    )
    .unwrap();
    assert_eq!(plan.options.micro_batch, None);
    run_tiny(&root, &run, &spec).unwrap();
    assert_eq!(step_lines(&run.join(LOG_FILE)), step_lines(&reference.log));
    // An old checkpoint is still checked: a flipped tensor bit is refused.
    let ckpt = run.join(CHECKPOINT_FILE);
    as_format_1(&ckpt);
    let mut bad = std::fs::read(&ckpt).unwrap();
    let k = bad.len() - 3;
    bad[k] ^= 4;
    std::fs::write(&ckpt, bad).unwrap();
    assert!(load_checkpoint(&ckpt, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("checksum"));
    let _ = std::fs::remove_dir_all(&root);
}
