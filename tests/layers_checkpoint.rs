//! Self-describing layers: a FastFood checkpoint restores the exact layer whatever seed the loading code passes;
//! old checkpoints (diagonals `b`, `g`, `s`, no permutations) still load; stored values are never replaced by
//! fresh initial ones, even when they are all NaN.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::{adaptive_fastfood, block_hadamard_mlp, seeded_linear};
use std::collections::HashMap;

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    t.to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
}

fn input(rows: usize, d: usize) -> Result<Tensor> {
    let v: Vec<f32> = (0..rows * d)
        .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (rows, d), &Device::Cpu)
}

/// The variables of a VarMap as a name → tensor map (a checkpoint read back).
fn tensors(vm: &VarMap) -> HashMap<String, Tensor> {
    vm.data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect()
}

#[test]
fn fastfood_checkpoint_restores_the_layer_whatever_the_seed() -> Result<()> {
    // (in, out): one block with padding, and three blocks.
    for (in_dim, out_dim) in [(24, 20), (16, 40)] {
        let vm = VarMap::new();
        let ff = adaptive_fastfood(
            in_dim,
            out_dim,
            1,
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        )?;
        let x = input(5, in_dim)?;
        let y = ff.forward(&x)?;
        let perm = vm.data().lock().unwrap()["perm"].as_tensor().clone();
        assert_eq!(perm.dtype(), DType::U32);
        assert_eq!(perm.dims(), &[ff.n_blocks(), ff.n()]);
        for j in 0..ff.n_blocks() {
            assert_eq!(perm.get(j)?.to_vec1::<u32>()?, ff.permutation(j)?);
        }

        // From a safetensors file, with another seed: the same layer, bit for bit.
        let dir = std::env::temp_dir().join(format!("cs-ff-ckpt-{}-{in_dim}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ff.safetensors");
        vm.save(&path)?;
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu)? };
        let ff2 = adaptive_fastfood(in_dim, out_dim, 2, vb)?;
        assert_eq!(bits(&y)?, bits(&ff2.forward(&x)?)?);
        // From tensors in memory, with a third seed.
        let ff3 = adaptive_fastfood(
            in_dim,
            out_dim,
            3,
            VarBuilder::from_tensors(tensors(&vm), DType::F32, &Device::Cpu),
        )?;
        assert_eq!(bits(&y)?, bits(&ff3.forward(&x)?)?);
        // The other seed alone does give another layer (the check above is not vacuous).
        let other = adaptive_fastfood(
            in_dim,
            out_dim,
            2,
            VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu),
        )?;
        assert_ne!(other.permutation(0)?, ff.permutation(0)?);

        // candle's build-then-load with another seed cannot rebuild the permutations: the forward pass refuses.
        let mut vm4 = VarMap::new();
        let ff4 = adaptive_fastfood(
            in_dim,
            out_dim,
            2,
            VarBuilder::from_varmap(&vm4, DType::F32, &Device::Cpu),
        )?;
        vm4.load(&path)?;
        let err = ff4.forward(&x).unwrap_err().to_string();
        assert!(err.contains("\"perm\" variable changed"), "{err}");
        // With the seed of the checkpoint, build-then-load works as before.
        let mut vm5 = VarMap::new();
        let ff5 = adaptive_fastfood(
            in_dim,
            out_dim,
            1,
            VarBuilder::from_varmap(&vm5, DType::F32, &Device::Cpu),
        )?;
        vm5.load(&path)?;
        assert_eq!(bits(&y)?, bits(&ff5.forward(&x)?)?);
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(())
}

#[test]
fn a_stored_table_that_is_not_a_permutation_is_refused() -> Result<()> {
    let vm = VarMap::new();
    adaptive_fastfood(
        8,
        8,
        1,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    let mut ts = tensors(&vm);
    ts.insert(
        "perm".into(),
        Tensor::new(&[[0u32, 1, 2, 3, 4, 5, 6, 6]], &Device::Cpu)?,
    );
    let err = adaptive_fastfood(
        8,
        8,
        1,
        VarBuilder::from_tensors(ts.clone(), DType::F32, &Device::Cpu),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a permutation of 0..8"), "{err}");
    ts.insert(
        "perm".into(),
        Tensor::new(&[[0u32, 1, 2, 3]], &Device::Cpu)?,
    );
    let err = adaptive_fastfood(
        8,
        8,
        1,
        VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("perm"), "{err}");
    Ok(())
}

#[test]
fn old_fastfood_checkpoints_still_load() -> Result<()> {
    let vm = VarMap::new();
    let ff = adaptive_fastfood(
        12,
        20,
        7,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    let names: Vec<String> = {
        let mut v: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(names, ["bias", "diag_b", "diag_g", "diag_s", "perm"]);
    // The old layout: the diagonals under "b", "g", "s", no permutations (they came from the seed).
    let old: HashMap<String, Tensor> = tensors(&vm)
        .into_iter()
        .filter(|(k, _)| k != "perm")
        .map(|(k, v)| (k.strip_prefix("diag_").map(str::to_string).unwrap_or(k), v))
        .collect();
    let x = input(3, 12)?;
    let reloaded = adaptive_fastfood(
        12,
        20,
        7,
        VarBuilder::from_tensors(old, DType::F32, &Device::Cpu),
    )?;
    assert_eq!(bits(&ff.forward(&x)?)?, bits(&reloaded.forward(&x)?)?);
    Ok(())
}

#[test]
fn all_nan_variables_stay_nan() -> Result<()> {
    let nan = |shape: &[usize]| Tensor::full(f32::NAN, shape, &Device::Cpu);
    let all_nan = |t: &Tensor| -> Result<bool> {
        Ok(t.to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_nan()))
    };
    // A diverged FastFood checkpoint: the diagonals and the bias all NaN.
    let vm = VarMap::new();
    adaptive_fastfood(
        8,
        8,
        1,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    let mut ts = tensors(&vm);
    for name in ["diag_b", "diag_g", "diag_s"] {
        ts.insert(name.into(), nan(&[1, 8])?);
    }
    ts.insert("bias".into(), nan(&[8])?);
    let ff = adaptive_fastfood(
        8,
        8,
        1,
        VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu),
    )?;
    for t in [ff.diag_b(), ff.diag_g(), ff.diag_s(), ff.bias().unwrap()] {
        assert!(all_nan(t)?);
    }
    assert!(all_nan(&ff.forward(&input(2, 8)?)?)?);

    // A dense layer and a block-Hadamard MLP, from tensors and from a VarMap that already holds NaN variables.
    let ts: HashMap<String, Tensor> = [
        ("weight".to_string(), nan(&[3, 4])?),
        ("bias".to_string(), nan(&[3])?),
    ]
    .into();
    let lin = seeded_linear(
        4,
        3,
        1,
        VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu),
    )?;
    assert!(all_nan(lin.weight())? && all_nan(lin.bias().unwrap())?);
    let vm = VarMap::new();
    block_hadamard_mlp(
        8,
        16,
        2,
        1,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    for var in vm.all_vars() {
        var.set(&Tensor::full(f32::NAN, var.shape(), &Device::Cpu)?)?;
    }
    let mlp = block_hadamard_mlp(
        8,
        16,
        2,
        1,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    assert!(all_nan(&mlp.forward(&input(2, 8)?)?)?);
    // A fresh VarMap still gets the seeded values (finite).
    let vm = VarMap::new();
    let ff = adaptive_fastfood(
        8,
        8,
        1,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    assert!(ff.diag_g().to_vec2::<f32>()?[0]
        .iter()
        .all(|v| v.is_finite() && *v != 0.0));
    Ok(())
}

#[test]
fn candle_optimizers_skip_the_permutation_table() -> Result<()> {
    use candle_nn::{Optimizer, ParamsAdamW};
    let vm = VarMap::new();
    let ff = adaptive_fastfood(
        8,
        8,
        1,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    let perm0 = vm.data().lock().unwrap()["perm"]
        .as_tensor()
        .to_vec2::<u32>()?;
    let mut opt = candle_nn::AdamW::new(
        vm.all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let g0 = ff.diag_g().to_vec2::<f32>()?;
    for _ in 0..2 {
        opt.backward_step(&ff.forward(&input(4, 8)?)?.sqr()?.mean_all()?)?;
    }
    assert_ne!(ff.diag_g().to_vec2::<f32>()?, g0);
    assert_eq!(
        vm.data().lock().unwrap()["perm"]
            .as_tensor()
            .to_vec2::<u32>()?,
        perm0
    );
    ff.forward(&input(1, 8)?)?;
    Ok(())
}
