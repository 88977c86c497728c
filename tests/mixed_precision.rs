//! Mixed-precision training (`Gpt::with_compute_dtype`): the bf16 model computes the same loss and gradients as
//! the f32 model up to bf16 rounding, every gradient reaches its f32 parameter, and AdamW on a bf16 model fits a
//! small batch as the f32 model does. Every layer kind is covered: dense, FastFood and block-Hadamard blocks, and
//! frozen random MLPs between them.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use candle_structured::model::{gpt, Gpt, GptConfig, LayerSpec};
use candle_structured::BlockKind;

fn config(kind: BlockKind, frozen: bool) -> GptConfig {
    let mut cfg = GptConfig::dense(97, 16, 32, 4, 2);
    cfg.layers = if frozen {
        vec![
            LayerSpec::Block(kind),
            LayerSpec::Frozen { hidden: 192 },
            LayerSpec::Block(kind),
        ]
    } else {
        vec![LayerSpec::Block(kind); 2]
    };
    cfg.dropout = 0.0;
    cfg.seed = 5;
    cfg
}

fn batch() -> Result<(Tensor, Tensor)> {
    // Seeded token ids (a small LCG), never all equal.
    let mut s = 12345u64;
    let mut ids = Vec::new();
    for _ in 0..2 * 17 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ids.push(((s >> 33) % 97) as u32);
    }
    let all = Tensor::from_vec(ids, (2, 17), &Device::Cpu)?;
    Ok((all.narrow(1, 0, 16)?, all.narrow(1, 1, 16)?))
}

fn build(cfg: &GptConfig, compute: DType) -> Result<(VarMap, Gpt)> {
    let vm = VarMap::new();
    let model = gpt(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?
        .with_compute_dtype(compute)?;
    Ok((vm, model))
}

fn sorted_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.dtype().is_float()) // not FastFood's permutation tables
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (
        a.to_dtype(DType::F64)?.flatten_all()?,
        b.to_dtype(DType::F64)?.flatten_all()?,
    );
    let dot = (&a * &b)?.sum_all()?.to_scalar::<f64>()?;
    let na = a.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let nb = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(dot / (na * nb).max(1e-300))
}

#[test]
fn bf16_loss_and_gradients_match_f32() -> Result<()> {
    let (ids, targets) = batch()?;
    let kinds = [
        (BlockKind::Dense, false),
        (BlockKind::Dense, true),
        (BlockKind::FastFood, false),
        (BlockKind::BlockHadamard { n_blocks: 4 }, true),
    ];
    for (kind, frozen) in kinds {
        let cfg = config(kind, frozen);
        let (vm32, m32) = build(&cfg, DType::F32)?;
        let (vm16, m16) = build(&cfg, DType::BF16)?;
        assert_eq!(m16.compute_dtype(), DType::BF16);
        let l32 = m32.loss(&ids, &targets, true)?;
        let l16 = m16.loss(&ids, &targets, true)?;
        assert_eq!(l16.dtype(), DType::F32);
        let (a, b) = (l32.to_scalar::<f32>()?, l16.to_scalar::<f32>()?);
        // Same seeds, same weights: the losses differ by bf16 rounding only (8 bits of mantissa).
        assert!(
            (a - b).abs() <= 0.01 * a.abs(),
            "{kind:?} frozen {frozen}: f32 loss {a}, bf16 loss {b}"
        );
        assert!(
            b > 3.0,
            "{kind:?}: loss {b} should be near ln 97 at initialisation"
        );
        // ... but they do differ: the bf16 path was taken.
        assert_ne!(
            a, b,
            "{kind:?}: the bf16 model computed exactly the f32 loss"
        );
        let (g32, g16) = (l32.backward()?, l16.backward()?);
        let (v32, v16) = (sorted_vars(&vm32), sorted_vars(&vm16));
        assert_eq!(v32.len(), v16.len());
        for ((name, p32), (_, p16)) in v32.iter().zip(&v16) {
            let a = g32.get(p32).expect("f32 gradient");
            let b = g16
                .get(p16)
                .unwrap_or_else(|| panic!("{kind:?}: no bf16-mode gradient for {name}"));
            assert_eq!(b.dtype(), DType::F32, "{name}: gradient dtype");
            let norm = b.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(
                norm.is_finite() && norm > 0.0,
                "{kind:?} {name}: gradient norm {norm}"
            );
            let c = cosine(a, b)?;
            assert!(
                c > 0.995,
                "{kind:?} frozen {frozen} {name}: cosine {c} between f32 and bf16 gradients"
            );
        }
    }
    Ok(())
}

#[test]
fn bf16_model_fits_a_batch_like_f32() -> Result<()> {
    let (ids, targets) = batch()?;
    let cfg = config(BlockKind::Dense, true);
    let mut finals = Vec::new();
    for compute in [DType::F32, DType::BF16] {
        let (vm, model) = build(&cfg, compute)?;
        let mut opt = AdamW::new(
            vm.all_vars(),
            ParamsAdamW {
                lr: 3e-3,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let first = model.loss(&ids, &targets, true)?.to_scalar::<f32>()?;
        let mut last = first;
        for _ in 0..40 {
            let loss = model.loss(&ids, &targets, true)?;
            opt.backward_step(&loss)?;
            last = loss.to_scalar::<f32>()?;
        }
        // Every parameter stays f32 (the master weights).
        assert!(vm.all_vars().iter().all(|v| v.dtype() == DType::F32));
        assert!(
            last < 0.5 * first,
            "{compute:?}: loss went from {first} to {last} in 40 steps"
        );
        finals.push(last);
    }
    // bf16 ends where f32 does, within a loose band (the two runs round differently at every step).
    assert!(
        (finals[1] - finals[0]).abs() < 0.25 * finals[0] + 0.05,
        "final losses f32 {} vs bf16 {}",
        finals[0],
        finals[1]
    );
    Ok(())
}

#[test]
fn compute_dtype_must_be_a_float() -> Result<()> {
    let cfg = config(BlockKind::Dense, false);
    let vm = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let err = model
        .with_compute_dtype(DType::U32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a floating-point"), "{err}");
    Ok(())
}
