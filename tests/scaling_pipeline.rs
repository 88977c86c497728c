//! The whole scaling pipeline in miniature, for CI: train a few tiny runs with the library's training loop on a
//! small synthetic corpus, read their run folders as `scaling_report` does, and write the report. The real sweep
//! (`examples/scaling_sweep.rs`) stays out of CI; this checks that its pieces fit together.
#![cfg(feature = "train")]

mod train_common;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use train_common::{corpus, tmp_dir};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::data::Corpus;
use candle_structured::layers::BlockKind;
use candle_structured::model::{gpt, GptConfig, LayerSpec, TrainSpec};
use candle_structured::scaling::bootstrap::BootstrapOptions;
use candle_structured::scaling::report::{write_report, ReportOptions};
use candle_structured::scaling::runs::{read_runs_dir, Family};
use candle_structured::scaling::study::StudyOptions;
use candle_structured::train::{train, TrainOptions};

const STEPS: u64 = 40;

fn spec() -> TrainSpec {
    let tokens = STEPS * 4 * 16;
    TrainSpec {
        batch_size: 4,
        seq_len: 16,
        lr: 1e-2,
        min_lr_fraction: 0.1,
        warmup_tokens: tokens / 10,
        decay_tokens: tokens,
        max_tokens: tokens,
        weight_decay: 0.0,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: 1.0,
        optimizer: Default::default(),
        ema_decay: 0.0,
    }
}

fn train_one(corpus: &Corpus, root: &Path, name: &str, cfg: &GptConfig, seed: u64) {
    let vm = VarMap::new();
    let model = gpt(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let mut o = TrainOptions::new(root.join(name));
    o.progress = false;
    o.eval_every = 5;
    o.eval_windows = 8;
    o.test_windows = 8;
    o.checkpoint_every = 0;
    o.seed = seed;
    let stop = AtomicBool::new(false);
    train(&model, &vm, corpus, &spec(), &o, &stop).unwrap();
}

/// Every word of the markdown that reads as a number (`NaN` and `inf` included).
fn numbers_in(s: &str) -> Vec<&str> {
    s.split(|c: char| c.is_whitespace() || "|[],();:".contains(c))
        .filter(|w| w.parse::<f64>().is_ok())
        .collect()
}

#[test]
fn tiny_runs_to_report() {
    let t0 = Instant::now();
    let dir = tmp_dir("pipeline", "mini");
    let corpus = corpus(&dir, 30_000);
    let runs_root = dir.join("runs");
    // Four dense baselines of growing width, two seeds each, and a doped twin of the smallest (a frozen random MLP
    // between its blocks), two seeds.
    for d in [16, 24, 32, 40] {
        for seed in 0..2 {
            let mut cfg = GptConfig::dense(corpus.vocab_size, 16, d, 2, 2);
            cfg.dropout = 0.0;
            cfg.seed = seed;
            train_one(
                &corpus,
                &runs_root,
                &format!("base-d{d}-s{seed}"),
                &cfg,
                seed,
            );
        }
    }
    for seed in 0..2 {
        let mut doped = GptConfig::dense(corpus.vocab_size, 16, 16, 2, 2);
        doped.dropout = 0.0;
        doped.seed = seed;
        doped.layers = vec![
            LayerSpec::Block(BlockKind::Dense),
            LayerSpec::Frozen { hidden: 64 },
            LayerSpec::Block(BlockKind::Dense),
        ];
        train_one(
            &corpus,
            &runs_root,
            &format!("doped-d16-s{seed}"),
            &doped,
            seed,
        );
    }
    let t_train = t0.elapsed().as_secs_f64();

    let runs = read_runs_dir(&runs_root).unwrap();
    assert_eq!(runs.len(), 10);
    for r in &runs {
        assert!(r.n_trainable.is_some_and(|n| n > 0.0), "{}", r.name);
        assert!(r.valid_points().count() >= 5, "{}: {:?}", r.name, r.points);
    }
    let baselines = runs.iter().filter(|r| r.family == Family::Baseline);
    assert_eq!(baselines.count(), 8);
    for r in &runs {
        assert_eq!(r.family == Family::Doped, r.n_frozen > 0.0, "{}", r.name);
    }

    let out_dir = dir.join("report");
    let opts = ReportOptions {
        study: StudyOptions {
            bootstrap: BootstrapOptions {
                resamples: 40,
                seed: 0,
                level: 0.95,
            },
            ..Default::default()
        },
        chinchilla_points_per_run: 4,
        ..Default::default()
    };
    let out = write_report(&runs, &out_dir, &opts).unwrap();
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert_eq!(md, out.markdown);
    for section in [
        "## Runs",
        "## Fitted compute laws",
        "## Baselines' frontier `L(C)`",
        "R² = ",
        "on the frontier from C",
        "## Baselines: `L(N)`",
        "Chinchilla approach 3",
        "Held-out `base-d40-s0`",
        "Held-out `base-d40-s1`",
        "## Verdict",
        "## Agreement with the paper",
    ] {
        assert!(md.contains(section), "missing {section}:\n{md}");
    }
    // The baselines' frontier fit and its residuals are finite numbers.
    let a = out
        .families
        .iter()
        .find(|f| f.family == Family::Baseline)
        .unwrap();
    let law = a.law.as_ref().expect("baselines' compute law");
    assert!(law.ls.alpha.is_finite() && law.slope().lo.is_finite());
    assert!(law.residuals().iter().all(|r| r.1.is_finite()));
    let bad: Vec<&str> = numbers_in(&md)
        .into_iter()
        .filter(|w| !w.parse::<f64>().is_ok_and(f64::is_finite))
        .collect();
    assert!(bad.is_empty(), "non-finite numbers {bad:?} in\n{md}");
    #[cfg(feature = "plot")]
    assert!(dir.join("report/fig1_baselines.svg").is_file());
    eprintln!(
        "miniature: training {t_train:.1} s, whole pipeline {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
