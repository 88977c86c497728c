//! Gradients by central finite differences in f64: the input and (entries of) every trainable parameter of every
//! layer, including the whole GPT block in its three variants.

mod layers_common;

use candle_core::{DType, Device, Module, ModuleT, Result};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::{
    adaptive_fastfood, block_hadamard_mlp, frozen_random_mlp, rotary_gpt_block, BlockConfig,
    BlockKind,
};
use layers_common::*;

fn vb(vm: &VarMap) -> VarBuilder<'static> {
    VarBuilder::from_varmap(vm, DType::F64, &Device::Cpu)
}

#[test]
fn fastfood_gradients() -> Result<()> {
    // The last case has 150 rows: the CPU kernel sums parameter gradients over blocks of 64 rows.
    for (i, o, rows) in [(6, 19, 3), (8, 8, 3), (5, 12, 75)] {
        let vm = VarMap::new();
        let ff = adaptive_fastfood(i, o, 3, vb(&vm))?;
        let x = randn(&[2, rows, i], 1)?;
        let n = check_gradients("fastfood", &vm, &x, &|x| ff.forward(x), 40)?;
        assert!(n >= 72, "{n}");
    }
    Ok(())
}

#[test]
fn block_hadamard_gradients() -> Result<()> {
    let vm = VarMap::new();
    let m = block_hadamard_mlp(8, 16, 4, 3, vb(&vm))?;
    let x = randn(&[3, 8], 2)?;
    check_gradients("block hadamard", &vm, &x, &|x| m.forward(x), 30)?;
    Ok(())
}

#[test]
fn frozen_mlp_gradients() -> Result<()> {
    for trainable_ln in [false, true] {
        let vm = VarMap::new();
        let m = frozen_random_mlp(8, 48, 3, trainable_ln, vb(&vm))?;
        assert_eq!(vm.all_vars().len(), if trainable_ln { 2 } else { 0 });
        let x = randn(&[2, 2, 8], 3)?;
        check_gradients("frozen mlp", &vm, &x, &|x| m.forward(x), 30)?;
    }
    Ok(())
}

#[test]
fn gpt_block_gradients() -> Result<()> {
    for kind in [
        BlockKind::Dense,
        BlockKind::FastFood,
        BlockKind::BlockHadamard { n_blocks: 2 },
    ] {
        let vm = VarMap::new();
        let mut cfg = BlockConfig::new(8, 2, kind);
        cfg.hidden = 16;
        let block = rotary_gpt_block(&cfg, vb(&vm).pp("h"))?;
        let x = randn(&[2, 4, 8], 4)?;
        let n = check_gradients(
            &format!("{kind:?} block"),
            &vm,
            &x,
            &|x| block.forward_t(x, false),
            12,
        )?;
        assert!(n > 60, "{n}");
    }
    Ok(())
}
