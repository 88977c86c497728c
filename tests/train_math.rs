//! LR schedule, compute accounting, AdamW and clipping against hand computations; a tiny model overfits a batch.
#![cfg(feature = "train")]

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::flops::{flops_to_pf_days as pf_days, training_flops};
use candle_structured::model::{gpt, preset, GptConfig};
use candle_structured::train::{
    clip_grad_norm, global_grad_norm, named_vars, AdamW, AdamWConfig, LrSchedule,
};

#[test]
fn lr_schedule_equals_hand_computation() {
    let s = LrSchedule {
        peak: 1e-3,
        min_fraction: 0.1,
        warmup_tokens: 100,
        decay_tokens: 1100,
    };
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-15, "{a} vs {b}");
    close(s.lr(0), 0.0);
    close(s.lr(25), 2.5e-4);
    close(s.lr(100), 1e-3);
    // Halfway through the decay: floor + (peak − floor)·½(1 + cos(π/2)) = 1e-4 + 4.5e-4.
    close(s.lr(600), 5.5e-4);
    // A quarter: 1e-4 + 9e-4·½(1 + cos(π/4)).
    close(
        s.lr(350),
        1e-4 + 9e-4 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2),
    );
    close(s.lr(1100), 1e-4);
    close(s.lr(10_000), 1e-4);
    // Monotone decay after warmup.
    let mut last = f64::INFINITY;
    for t in (100..1200).step_by(7) {
        assert!(s.lr(t) <= last);
        last = s.lr(t);
    }
    // The paper preset: 5e-4 peak reached at 409.6M tokens.
    let small = LrSchedule::from_spec(&preset("small").unwrap().train);
    close(small.lr(409_600_000), 5e-4);
    close(small.lr(204_800_000), 2.5e-4);
    close(small.lr(32_800_000_000), 5e-5);
}

#[test]
fn compute_accounting_equals_hand_computation() {
    // small: N = 85,056,000, 32G tokens: C = 6 · N · T.
    let n = preset("small")
        .unwrap()
        .model
        .param_counts()
        .non_embedding
        .trainable;
    let c = training_flops(n, 32_000_000_000);
    assert_eq!(c, 6.0 * 85_056_000.0 * 32e9);
    assert!((pf_days(c) - 6.0 * 85_056_000.0 * 32e9 / (1e15 * 86_400.0)).abs() < 1e-12);
    assert!((pf_days(c) - 0.18901).abs() < 1e-4);
    // Frozen parameters are not part of N.
    let doped = preset("doped-small").unwrap().model;
    let six_dense = GptConfig {
        layers: doped.layers.iter().copied().step_by(2).collect(),
        ..doped.clone()
    };
    assert_eq!(doped.flops_per_token(), six_dense.flops_per_token());
    assert!(doped.param_counts().non_embedding.frozen > 0);
}

#[test]
fn adamw_and_clipping_equal_hand_computation() {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::new(&[[1.0f64, -2.0], [0.5, 3.0]], &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::new(&[0.25f64, -0.5], &dev).unwrap()).unwrap();
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        muon: None,
    };
    let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg).unwrap();
    // params() is sorted by name: b, w.
    let gb = [3.0f64, -4.0];
    let gw = [[0.1f64, 0.2], [-0.3, 0.4]];
    let mut grads = vec![
        Some(Tensor::new(&gb, &dev).unwrap()),
        Some(Tensor::new(&gw, &dev).unwrap()),
    ];
    // Global norm √(9 + 16 + 0.01 + 0.04 + 0.09 + 0.16) = √25.3.
    let norm = global_grad_norm(&grads).unwrap();
    assert!((norm - 25.3f64.sqrt()).abs() < 1e-6);
    let before = clip_grad_norm(&mut grads, 1.0).unwrap();
    assert!((before - 25.3f64.sqrt()).abs() < 1e-6);
    let after = global_grad_norm(&grads).unwrap();
    assert!((after - 25.3f64.sqrt() / (25.3f64.sqrt() + 1e-6)).abs() < 1e-6);
    let scale = 1.0 / (25.3f64.sqrt() + 1e-6);
    let lr = 0.01;
    let w0 = [[1.0f64, -2.0], [0.5, 3.0]];
    let b0 = [0.25f64, -0.5];
    // Two steps with the same (clipped) gradients, by hand.
    let mut hw = w0;
    let mut hb = b0;
    let (mut mw, mut vw, mut mb, mut vb) = ([[0.0; 2]; 2], [[0.0; 2]; 2], [0.0; 2], [0.0; 2]);
    for t in 1..=2 {
        opt.step(&grads, lr).unwrap();
        let bc1 = 1.0 - 0.9f64.powi(t);
        let bc2 = 1.0 - 0.95f64.powi(t);
        for i in 0..2 {
            for j in 0..2 {
                let g = gw[i][j] * scale;
                hw[i][j] *= 1.0 - lr * 0.1; // decay: matrices only
                mw[i][j] = 0.9 * mw[i][j] + 0.1 * g;
                vw[i][j] = 0.95 * vw[i][j] + 0.05 * g * g;
                hw[i][j] -= lr * (mw[i][j] / bc1) / ((vw[i][j] / bc2).sqrt() + 1e-8);
            }
            let g = gb[i] * scale;
            mb[i] = 0.9 * mb[i] + 0.1 * g;
            vb[i] = 0.95 * vb[i] + 0.05 * g * g;
            hb[i] -= lr * (mb[i] / bc1) / ((vb[i] / bc2).sqrt() + 1e-8);
        }
    }
    let got_w: Vec<Vec<f64>> = w.as_tensor().to_vec2().unwrap();
    let got_b: Vec<f64> = b.as_tensor().to_vec1().unwrap();
    for i in 0..2 {
        assert!((got_b[i] - hb[i]).abs() < 1e-12, "{got_b:?} vs {hb:?}");
        for j in 0..2 {
            assert!(
                (got_w[i][j] - hw[i][j]).abs() < 1e-12,
                "{got_w:?} vs {hw:?}"
            );
        }
    }
    assert_eq!(opt.step_count(), 2);
}

#[test]
fn tiny_model_overfits_a_fixed_batch() {
    let dev = Device::Cpu;
    let mut cfg = GptConfig::dense(32, 16, 32, 2, 2);
    cfg.dropout = 0.0;
    let vm = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    // A fixed batch of pseudo-random tokens (seeded).
    let mut state = 12345u64;
    let mut toks = Vec::new();
    for _ in 0..4 * 17 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        toks.push(((state >> 33) % 32) as u32);
    }
    let (x, y) = candle_structured::data::windows_to_tensors(&toks, 4, 16, &dev).unwrap();
    let mut opt = AdamW::new(named_vars(&vm), AdamWConfig::default()).unwrap();
    let first = model
        .loss(&x, &y, true)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        (first - (32f32).ln()).abs() < 0.5,
        "initial loss {first} should be near ln 32"
    );
    let mut last = first;
    for _ in 0..300 {
        let loss = model.loss(&x, &y, true).unwrap();
        last = loss.to_scalar::<f32>().unwrap();
        if last < 0.05 {
            break;
        }
        let store = loss.backward().unwrap();
        let mut grads = opt.grads_of(&store);
        clip_grad_norm(&mut grads, 1.0).unwrap();
        opt.step(&grads, 1e-2).unwrap();
    }
    assert!(last < 0.1, "loss {first} -> {last}");
}

/// Gradients handed to the optimizer must not hold the forward graph: the optimizer keeps them in its moments, so a
/// recorded history would keep every step's activations alive (a leak of hundreds of MB per step, seen once).
#[test]
fn optimizer_gradients_are_detached() {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::new(&[[0.5f64, -1.0], [2.0, 0.25]], &dev).unwrap()).unwrap();
    let u = Var::from_tensor(&Tensor::new(&[[1.0f64, -2.0], [0.5, 3.0]], &dev).unwrap()).unwrap();
    // The activation multiplying `w` is itself tracked, so candle's gradient of `w` records it.
    let x = u.as_tensor().tanh().unwrap();
    let loss = x
        .matmul(w.as_tensor())
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let store = loss.backward().unwrap();
    assert!(
        store.get(w.as_tensor()).unwrap().track_op(),
        "the premise: candle's raw gradient records its ops"
    );
    let opt = AdamW::new(
        vec![("w".into(), w.clone()), ("u".into(), u.clone())],
        AdamWConfig::default(),
    )
    .unwrap();
    for g in opt.grads_of(&store) {
        assert!(!g.expect("every parameter has a gradient").track_op());
    }
}
