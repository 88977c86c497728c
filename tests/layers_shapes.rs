//! Output shapes of every layer for every dtype, with leading dimensions; the block in train and eval mode.

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::{
    adaptive_fastfood, block_hadamard_mlp, frozen_random_mlp, rotary_gpt_block, BlockConfig,
    BlockKind,
};

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

fn input(shape: &[usize], dtype: DType) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 1., shape, &Device::Cpu)?.to_dtype(dtype)
}

fn finite(t: &Tensor) -> candle_core::Result<bool> {
    let s = t
        .to_dtype(DType::F64)?
        .abs()?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(s.is_finite())
}

#[test]
fn layer_shapes_every_dtype() -> candle_core::Result<()> {
    for dtype in DTYPES {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, dtype, &Device::Cpu);
        let ff = adaptive_fastfood(24, 40, 1, vb.pp("ff"))?;
        for shape in [vec![24], vec![5, 24], vec![2, 3, 24], vec![2, 1, 3, 24]] {
            let y = ff.forward(&input(&shape, dtype)?)?;
            let mut expect = shape.clone();
            *expect.last_mut().unwrap() = 40;
            assert_eq!(y.dims(), expect.as_slice(), "{dtype:?}");
            assert_eq!(y.dtype(), dtype);
            assert!(finite(&y)?);
        }
        let bh = block_hadamard_mlp(16, 64, 4, 2, vb.pp("bh"))?;
        let fr = frozen_random_mlp(16, 96, 3, false, vb.pp("fr"))?;
        for shape in [vec![16], vec![5, 16], vec![2, 3, 16], vec![2, 1, 3, 16]] {
            for y in [
                bh.forward(&input(&shape, dtype)?)?,
                fr.forward(&input(&shape, dtype)?)?,
            ] {
                assert_eq!(y.dims(), shape.as_slice(), "{dtype:?}");
                assert_eq!(y.dtype(), dtype);
                assert!(finite(&y)?);
            }
        }
        for (i, kind) in [
            BlockKind::Dense,
            BlockKind::FastFood,
            BlockKind::BlockHadamard { n_blocks: 4 },
        ]
        .into_iter()
        .enumerate()
        {
            let cfg = BlockConfig::new(32, 4, kind);
            let block = rotary_gpt_block(&cfg, vb.pp(format!("block{i}")))?;
            let x = input(&[2, 7, 32], dtype)?;
            for train in [false, true] {
                let y = block.forward_t(&x, train)?;
                assert_eq!(y.dims(), &[2, 7, 32]);
                assert_eq!(y.dtype(), dtype);
                assert!(finite(&y)?, "{kind:?} {dtype:?} train={train}");
            }
            // Eval mode is deterministic, train mode (dropout) is not.
            let (a, b) = (block.forward_t(&x, false)?, block.forward_t(&x, false)?);
            assert_eq!(
                a.to_dtype(DType::F64)?.to_vec3::<f64>()?,
                b.to_dtype(DType::F64)?.to_vec3::<f64>()?
            );
        }
    }
    Ok(())
}

#[test]
fn bad_inputs_are_errors() -> candle_core::Result<()> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let ff = adaptive_fastfood(24, 40, 1, vb.pp("ff"))?;
    assert!(ff.forward(&input(&[3, 23], DType::F32)?).is_err());
    assert!(adaptive_fastfood(0, 4, 1, vb.pp("z")).is_err());
    assert!(block_hadamard_mlp(16, 64, 3, 0, vb.pp("b3")).is_err());
    assert!(block_hadamard_mlp(18, 64, 4, 0, vb.pp("b4")).is_err());
    assert!(rotary_gpt_block(&BlockConfig::new(30, 4, BlockKind::Dense), vb.pp("x")).is_err());
    assert!(rotary_gpt_block(&BlockConfig::new(12, 4, BlockKind::Dense), vb.pp("y")).is_err()); // odd head dim
    let block = rotary_gpt_block(&BlockConfig::new(32, 4, BlockKind::Dense), vb.pp("ok"))?;
    assert!(block
        .forward_t(&input(&[7, 32], DType::F32)?, false)
        .is_err());
    let err = frozen_random_mlp(16, 32, 0, false, vb.pp("f"))?
        .forward(&input(&[2, 15], DType::F32)?)
        .unwrap_err();
    assert!(err.to_string().contains("expected 16"), "{err}");
    Ok(())
}
