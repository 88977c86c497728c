//! Training behaviour: frozen weights stay bit-identical through AdamW steps and never enter the VarMap, gradients
//! reach every trainable parameter, identical seeds give identical layers, checkpoints restore (FastFood's permutations stored with them),
//! and AdaptiveFastFood starts with the output variance of `candle_nn::linear`.

mod layers_common;

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use candle_structured::{
    adaptive_fastfood, block_hadamard_mlp, frozen_random_mlp, rotary_gpt_block, BlockConfig,
    BlockKind, FrozenRandomMlp,
};
use layers_common::*;
use std::collections::HashMap;

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    t.to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
}

#[test]
fn frozen_weights_never_train() -> Result<()> {
    for trainable_ln in [false, true] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        // input FastFood → frozen block → output FastFood: the frozen block sits between trainable layers.
        let first = adaptive_fastfood(16, 16, 1, vb.pp("in"))?;
        let frozen = frozen_random_mlp(16, 96, 77, trainable_ln, vb.pp("frozen"))?;
        let last = adaptive_fastfood(16, 4, 2, vb.pp("out"))?;
        let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with("frozen") || n.starts_with("frozen.ln.")),
            "{names:?}"
        );
        assert_eq!(
            names.iter().filter(|n| n.starts_with("frozen")).count(),
            if trainable_ln { 2 } else { 0 }
        );
        assert!(!frozen.w1().is_variable() && !frozen.w2().is_variable());
        let (w1, w2) = (bits(frozen.w1())?, bits(frozen.w2())?);
        let in_b0 = bits(first.diag_b())?;

        let x = randn(&[32, 16], 1)?.to_dtype(DType::F32)?;
        let target = randn(&[32, 4], 2)?.to_dtype(DType::F32)?;
        let mut opt = AdamW::new(
            vm.all_vars(),
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )?;
        let mut losses = Vec::new();
        for _ in 0..5 {
            let y = last.forward(&frozen.forward(&first.forward(&x)?)?)?;
            let loss = (y - &target)?.sqr()?.mean_all()?;
            losses.push(loss.to_scalar::<f32>()?);
            let grads = loss.backward()?;
            assert!(grads.get(frozen.w1()).is_none() && grads.get(frozen.w2()).is_none());
            // The gradient flows through the frozen block to the layer before it.
            let g = grads
                .get(first.diag_g())
                .expect("no gradient reached the first layer");
            assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
            opt.step(&grads)?;
        }
        assert!(losses[4] < losses[0], "{losses:?}");
        assert_eq!(bits(frozen.w1())?, w1);
        assert_eq!(bits(frozen.w2())?, w2);
        assert_ne!(
            bits(first.diag_b())?,
            in_b0,
            "the trainable layer did not train"
        );
        // Regenerating from the seed gives bit-identical weights.
        let (r1, r2) = FrozenRandomMlp::weights(16, 96, 77, DType::F32, &Device::Cpu)?;
        assert_eq!((bits(&r1)?, bits(&r2)?), (w1, w2));
    }
    Ok(())
}

#[test]
fn every_block_parameter_gets_a_gradient_in_training_mode() -> Result<()> {
    for kind in [
        BlockKind::Dense,
        BlockKind::FastFood,
        BlockKind::BlockHadamard { n_blocks: 4 },
    ] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let block = rotary_gpt_block(&BlockConfig::new(32, 4, kind), vb.pp("h"))?;
        let x = candle_core::Var::from_tensor(&randn(&[2, 8, 32], 3)?.to_dtype(DType::F32)?)?;
        let loss = block.forward_t(&x, true)?.sqr()?.sum_all()?;
        let grads = loss.backward()?;
        assert!(grads.get(&x).is_some());
        // every float variable (FastFood's permutation table is an integer buffer)
        for (name, var) in vm.data().lock().unwrap().iter() {
            if !var.dtype().is_float() {
                continue;
            }
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{kind:?}: no gradient for {name}"));
            assert!(
                g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
                "{kind:?}: zero gradient for {name}"
            );
        }
    }
    Ok(())
}

fn snapshot(vm: &VarMap) -> Result<HashMap<String, Vec<u32>>> {
    vm.data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| Ok((k.clone(), bits(v)?)))
        .collect()
}

#[test]
fn identical_seeds_identical_layers() -> Result<()> {
    let build = |seed: u64| -> Result<(VarMap, Vec<Tensor>)> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let x = randn(&[2, 5, 32], 9)?.to_dtype(DType::F32)?;
        let ff = adaptive_fastfood(32, 48, seed, vb.pp("ff"))?;
        let bh = block_hadamard_mlp(32, 64, 4, seed, vb.pp("bh"))?;
        let fr = frozen_random_mlp(32, 64, seed, false, vb.pp("fr"))?;
        let mut outs = vec![ff.forward(&x)?, bh.forward(&x)?, fr.forward(&x)?];
        for kind in [
            BlockKind::Dense,
            BlockKind::FastFood,
            BlockKind::BlockHadamard { n_blocks: 4 },
        ] {
            let cfg = BlockConfig::new(32, 4, kind).with_seed(seed);
            outs.push(rotary_gpt_block(&cfg, vb.pp(format!("{kind:?}")))?.forward_t(&x, false)?);
        }
        Ok((vm, outs))
    };
    let (vm_a, a) = build(5)?;
    let (vm_b, b) = build(5)?;
    let (vm_c, c) = build(6)?;
    assert_eq!(snapshot(&vm_a)?, snapshot(&vm_b)?);
    let (sa, sc) = (snapshot(&vm_a)?, snapshot(&vm_c)?);
    for (name, v) in &sa {
        // LayerNorms start at ones/zeros whatever the seed.
        if !name.contains(".ln_") {
            assert_ne!(v, &sc[name], "{name} does not depend on the seed");
        }
    }
    for ((x, y), z) in a.iter().zip(&b).zip(&c) {
        assert_eq!(bits(x)?, bits(y)?);
        assert_ne!(bits(x)?, bits(z)?);
    }
    Ok(())
}

#[test]
fn checkpoint_round_trip_restores_the_layers() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("cs-layers-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(candle_core::Error::wrap)?;
    let path = dir.join("block.safetensors");
    let x = randn(&[2, 6, 32], 4)?.to_dtype(DType::F32)?;
    for kind in [
        BlockKind::FastFood,
        BlockKind::BlockHadamard { n_blocks: 4 },
        BlockKind::Dense,
    ] {
        let cfg = BlockConfig::new(32, 4, kind).with_seed(123);
        let vm = VarMap::new();
        let block = rotary_gpt_block(
            &cfg,
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu).pp("h"),
        )?;
        let frozen = frozen_random_mlp(
            32,
            192,
            9,
            true,
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu).pp("f"),
        )?;
        // Train a little so the checkpoint differs from the initialisation.
        let mut opt = AdamW::new(
            vm.all_vars(),
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )?;
        for _ in 0..2 {
            let loss = frozen
                .forward(&block.forward_t(&x, true)?)?
                .sqr()?
                .mean_all()?;
            opt.backward_step(&loss)?;
        }
        let y = frozen.forward(&block.forward_t(&x, false)?)?;
        vm.save(&path)?;
        // Reload: values and FastFood permutations from the file, frozen weights from the seeds in the config.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu)? };
        let block2 = rotary_gpt_block(&cfg, vb.pp("h"))?;
        let frozen2 = frozen_random_mlp(32, 192, 9, true, vb.pp("f"))?;
        let y2 = frozen2.forward(&block2.forward_t(&x, false)?)?;
        assert_eq!(bits(&y)?, bits(&y2)?, "{kind:?}");
        // And into a fresh VarMap, candle's usual resume path (build, then load).
        let mut vm3 = VarMap::new();
        let block3 = rotary_gpt_block(
            &cfg,
            VarBuilder::from_varmap(&vm3, DType::F32, &Device::Cpu).pp("h"),
        )?;
        let frozen3 = frozen_random_mlp(
            32,
            192,
            9,
            true,
            VarBuilder::from_varmap(&vm3, DType::F32, &Device::Cpu).pp("f"),
        )?;
        vm3.load(&path)?;
        let y3 = frozen3.forward(&block3.forward_t(&x, false)?)?;
        assert_eq!(bits(&y)?, bits(&y3)?, "{kind:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// Mean of y² over many rows and several seeds.
fn output_power(f: &dyn Fn(u64) -> Result<Tensor>, seeds: u64) -> Result<f64> {
    let mut acc = 0.0;
    for s in 0..seeds {
        acc += f(s)?.sqr()?.mean_all()?.to_scalar::<f64>()?;
    }
    Ok(acc / seeds as f64)
}

#[test]
fn fastfood_init_variance_matches_candle_linear() -> Result<()> {
    // (in, out): a power of two with several blocks, and a padded input (768 → n = 1024).
    for (in_dim, out_dim) in [(256, 512), (768, 768)] {
        let x = randn(&[128, in_dim], 17)?;
        let ex2 = x.sqr()?.mean_all()?.to_scalar::<f64>()?;
        let seeds = 6;
        let ff = output_power(
            &|s| {
                let vm = VarMap::new();
                let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
                adaptive_fastfood(in_dim, out_dim, s, vb)?.forward(&x)
            },
            seeds,
        )?;
        let dense = output_power(
            &|_| {
                let vm = VarMap::new();
                let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
                candle_nn::linear(in_dim, out_dim, vb)?.forward(&x)
            },
            seeds,
        )?;
        // Theory for both: E[y²] = 2·E[x²] + 1/(3·in) (Kaiming-normal weights, uniform bias).
        let theory = 2.0 * ex2 + 1.0 / (3.0 * in_dim as f64);
        assert!(
            (ff / theory - 1.0).abs() < 0.1,
            "fastfood {ff} vs theory {theory}"
        );
        assert!(
            (dense / theory - 1.0).abs() < 0.1,
            "linear {dense} vs theory {theory}"
        );
        assert!(
            (ff / dense - 1.0).abs() < 0.15,
            "fastfood {ff} vs candle_nn::linear {dense}"
        );
    }
    Ok(())
}
