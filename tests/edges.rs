//! Edge cases of the layers: empty inputs give empty results (and gradients), dtype mismatches and oversized
//! dimensions are refused with errors that name the layer, as `candle_nn::linear` refuses them.

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::{
    adaptive_fastfood, block_hadamard_mlp, frozen_random_mlp, rotary_gpt_block, BlockConfig,
    BlockKind,
};

fn vb(vm: &VarMap, dtype: DType) -> VarBuilder<'_> {
    VarBuilder::from_varmap(vm, dtype, &Device::Cpu)
}

#[test]
fn rotary_block_on_an_empty_sequence() -> Result<()> {
    for kind in [
        BlockKind::Dense,
        BlockKind::FastFood,
        BlockKind::BlockHadamard { n_blocks: 2 },
    ] {
        let vm = VarMap::new();
        let block = rotary_gpt_block(&BlockConfig::new(16, 2, kind), vb(&vm, DType::F32))?;
        for dtype in [DType::F32, DType::F64] {
            let vm = VarMap::new();
            let block_d = rotary_gpt_block(&BlockConfig::new(16, 2, kind), vb(&vm, dtype))?;
            for train in [false, true] {
                let x = Tensor::zeros((3, 0, 16), dtype, &Device::Cpu)?;
                assert_eq!(
                    block_d.forward_t(&x, train)?.dims(),
                    &[3, 0, 16],
                    "{kind:?} {dtype:?}"
                );
            }
        }
        // and the gradient of an empty batch is zero
        let x = Var::from_tensor(&Tensor::zeros((0, 4, 16), DType::F32, &Device::Cpu)?)?;
        let y = block.forward_t(x.as_tensor(), true)?;
        assert_eq!(y.dims(), &[0, 4, 16]);
        let grads = y.sum_all()?.backward()?;
        if let Some(g) = grads.get(x.as_tensor()) {
            assert_eq!(g.dims(), &[0, 4, 16]);
        }
    }
    Ok(())
}

#[test]
fn fastfood_on_zero_rows() -> Result<()> {
    for (in_dim, out_dim, bias) in [(8, 8, true), (12, 40, false)] {
        for dtype in [DType::F32, DType::F64] {
            let vm = VarMap::new();
            let ff =
                candle_structured::AdaptiveFastFood::new(in_dim, out_dim, bias, 1, vb(&vm, dtype))?;
            let x = Var::from_tensor(&Tensor::zeros((0, in_dim), dtype, &Device::Cpu)?)?;
            let y = ff.forward(x.as_tensor())?;
            assert_eq!(y.dims(), &[0, out_dim]);
            let grads = y.sum_all()?.backward()?;
            for var in vm.all_vars().iter().filter(|v| v.dtype().is_float()) {
                if let Some(g) = grads.get(var.as_tensor()) {
                    assert_eq!(g.dims(), var.dims());
                    let s = g
                        .abs()?
                        .sum_all()?
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?;
                    assert_eq!(s, 0.0);
                }
            }
            // rank 3 with an empty middle dimension
            let y = ff.forward(&Tensor::zeros((2, 0, in_dim), dtype, &Device::Cpu)?)?;
            assert_eq!(y.dims(), &[2, 0, out_dim]);
        }
    }
    Ok(())
}

#[test]
fn dtype_mismatches_are_refused_like_candle_nn_linear() -> Result<()> {
    let x64 = Tensor::zeros((2, 8), DType::F64, &Device::Cpu)?;
    let x32 = Tensor::zeros((2, 8), DType::F32, &Device::Cpu)?;
    // candle_nn::linear refuses an f64 input to an f32 layer ...
    let vm = VarMap::new();
    assert!(candle_nn::linear(8, 8, vb(&vm, DType::F32))?
        .forward(&x64)
        .is_err());
    // ... and so do the layers, naming themselves and both dtypes.
    let vm = VarMap::new();
    let ff = adaptive_fastfood(8, 8, 1, vb(&vm, DType::F32).pp("ff"))?;
    let frozen = frozen_random_mlp(8, 16, 1, false, vb(&vm, DType::F32).pp("frozen"))?;
    let frozen_ln = frozen_random_mlp(8, 16, 1, true, vb(&vm, DType::F32).pp("frozen_ln"))?;
    let bh = block_hadamard_mlp(8, 16, 2, 1, vb(&vm, DType::F32).pp("bh"))?;
    let layers: [(&str, &dyn Module); 4] = [
        ("AdaptiveFastFood", &ff),
        ("FrozenRandomMlp", &frozen),
        ("FrozenRandomMlp", &frozen_ln),
        ("BlockHadamardMlp", &bh),
    ];
    for (name, layer) in layers {
        let err = layer.forward(&x64).unwrap_err().to_string();
        assert!(
            err.contains(name) && err.contains("F64") && err.contains("F32"),
            "{err}"
        );
        // f32 parameters still take bf16 and f16 inputs (mixed precision), and f32 of course.
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let y = layer
                .forward(&x32.to_dtype(dtype)?)
                .map_err(|e| e.context(format!("{name} {dtype:?}")))?;
            assert_eq!(y.dtype(), dtype, "{name}");
        }
    }
    // An f64 layer refuses f32 input, as candle_nn::linear does.
    let vm = VarMap::new();
    let ff64 = adaptive_fastfood(8, 8, 1, vb(&vm, DType::F64))?;
    assert!(candle_nn::linear(8, 8, vb(&VarMap::new(), DType::F64))?
        .forward(&x32)
        .is_err());
    let err = ff64.forward(&x32).unwrap_err().to_string();
    assert!(err.contains("AdaptiveFastFood"), "{err}");
    Ok(())
}

#[test]
fn oversized_dimensions_are_refused_in_the_layers_name() {
    let vm = VarMap::new();
    let err = adaptive_fastfood((1 << 24) + 1, 4, 1, vb(&vm, DType::F32))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("AdaptiveFastFood") && !err.contains("hadamard_transform"),
        "{err}"
    );
    assert!(err.contains("2^24"), "{err}");
    let err = adaptive_fastfood(0, 4, 1, vb(&vm, DType::F32))
        .unwrap_err()
        .to_string();
    assert!(err.contains("AdaptiveFastFood"), "{err}");
    // a power of two above 2^24 as the number of Hadamard blocks
    let err = block_hadamard_mlp(
        1 << 25,
        1 << 25,
        1 << 25,
        1,
        VarBuilder::zeros(DType::F32, &Device::Cpu),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("BlockHadamardMlp"), "{err}");
}
