//! Parameter counts against numbers computed by hand for the paper's shapes (d = 768 and 1024), and against
//! what the layers actually register in their VarMap.

use candle_core::{DType, Device, Result};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::{
    adaptive_fastfood, block_hadamard_mlp, frozen_random_mlp, rotary_gpt_block, BlockConfig,
    BlockKind, CountParams, ParamCount, ParamCounts,
};

fn zeros() -> VarBuilder<'static> {
    VarBuilder::zeros(DType::F32, &Device::Cpu)
}

fn block(d: usize, heads: usize, kind: BlockKind) -> Result<ParamCount> {
    let counts = rotary_gpt_block(&BlockConfig::new(d, heads, kind), zeros())?.param_counts();
    assert_eq!(counts.embedding, ParamCount::ZERO);
    Ok(counts.non_embedding)
}

fn varmap_size(vm: &VarMap) -> usize {
    vm.all_vars()
        .iter()
        .filter(|v| v.dtype().is_float())
        .map(|v| v.elem_count())
        .sum()
}

#[test]
fn gpt_blocks_at_the_papers_widths() -> Result<()> {
    const BH4: BlockKind = BlockKind::BlockHadamard { n_blocks: 4 };
    // d = 768 (12 heads). Dense: 12·d² + 13·d.
    assert_eq!(
        block(768, 12, BlockKind::Dense)?,
        ParamCount::dense(7_087_872)
    );
    // FastFood: qkv 768→2304 (n=1024, k=3): 9216 + 2304; out 768→768: 3072 + 768;
    // fc 768→3072 (n=1024, k=3): 9216 + 3072; proj 3072→768 (n=4096, k=1): 12288 + 768; LayerNorms 3072.
    assert_eq!(
        block(768, 12, BlockKind::FastFood)?,
        ParamCount::structured(43_776, 7_087_872)
    );
    // Block diagonal (4 blocks): dense attention 2_362_368, MLP 1_179_648 + 3072 + 768, LayerNorms 3072.
    assert_eq!(
        block(768, 12, BH4)?,
        ParamCount::structured(3_548_928, 7_087_872)
    );

    // d = 1024 (16 heads).
    assert_eq!(
        block(1024, 16, BlockKind::Dense)?,
        ParamCount::dense(12_596_224)
    );
    // qkv 1024→3072 (k=3): 9216 + 3072; out: 3072 + 1024; fc 1024→4096 (k=4): 12288 + 4096;
    // proj 4096→1024 (n=4096): 12288 + 1024; LayerNorms 4096.
    assert_eq!(
        block(1024, 16, BlockKind::FastFood)?,
        ParamCount::structured(50_176, 12_596_224)
    );
    // attention 4_198_400, MLP 2_097_152 + 4096 + 1024, LayerNorms 4096.
    assert_eq!(
        block(1024, 16, BH4)?,
        ParamCount::structured(6_304_768, 12_596_224)
    );
    Ok(())
}

#[test]
fn single_layers_at_the_papers_widths() -> Result<()> {
    let ff = adaptive_fastfood(768, 768, 0, zeros())?
        .param_counts()
        .non_embedding;
    assert_eq!(ff, ParamCount::structured(3_840, 590_592));
    let ff = adaptive_fastfood(4096, 1024, 0, zeros())?
        .param_counts()
        .non_embedding;
    assert_eq!(ff, ParamCount::structured(13_312, 4_195_328));
    let bh = block_hadamard_mlp(1024, 4096, 4, 0, zeros())?
        .param_counts()
        .non_embedding;
    assert_eq!(bh, ParamCount::structured(2_102_272, 8_393_728));
    // Frozen doping block, hidden 6·d: 2·d·6d frozen weights + a frozen LayerNorm 2·d.
    let fr = frozen_random_mlp(768, 4608, 0, false, zeros())?.param_counts();
    assert_eq!(
        fr,
        ParamCounts::non_embedding(ParamCount::frozen(7_079_424))
    );
    let fr = frozen_random_mlp(1024, 6144, 0, true, zeros())?
        .param_counts()
        .non_embedding;
    assert_eq!(
        fr,
        ParamCount {
            trainable: 2_048,
            frozen: 12_582_912,
            emulated: 12_584_960
        }
    );
    Ok(())
}

#[test]
fn counts_match_what_the_varmap_holds() -> Result<()> {
    for kind in [
        BlockKind::Dense,
        BlockKind::FastFood,
        BlockKind::BlockHadamard { n_blocks: 4 },
    ] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let b = rotary_gpt_block(&BlockConfig::new(768, 12, kind), vb.pp("h"))?;
        assert_eq!(
            b.param_counts().non_embedding.trainable,
            varmap_size(&vm),
            "{kind:?}"
        );
    }
    for ln in [false, true] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let f = frozen_random_mlp(64, 384, 1, ln, vb)?;
        assert_eq!(f.param_counts().non_embedding.trainable, varmap_size(&vm));
    }
    Ok(())
}

#[test]
fn counts_add_up_to_a_model() -> Result<()> {
    // GPT-2 small: 12 dense blocks, 50257×768 token embedding (tied head), 1024×768 learned positions.
    let blocks = rotary_gpt_block(&BlockConfig::new(768, 12, BlockKind::Dense), zeros())?
        .param_counts()
        * 12;
    let emb = ParamCounts::embedding(ParamCount::dense(50_257 * 768 + 1024 * 768));
    let ln_f = ParamCounts::non_embedding(ParamCount::dense(2 * 768));
    let model = [blocks, emb, ln_f].into_iter().sum::<ParamCounts>();
    assert_eq!(model.total().trainable, 124_439_808); // GPT-2 small's published size
    assert_eq!(model.non_embedding.trainable, 85_056_000);
    // A doped model: frozen blocks add frozen and emulated, not trainable, parameters.
    let doped = model + frozen_random_mlp(768, 4608, 0, false, zeros())?.param_counts() * 2;
    assert_eq!(doped.total().trainable, 124_439_808);
    assert_eq!(doped.non_embedding.frozen, 2 * 7_079_424);
    assert_eq!(doped.non_embedding.emulated, 85_056_000 + 2 * 7_079_424);
    let mut acc = ParamCount::ZERO;
    acc += ParamCount::structured(3, 10);
    acc += ParamCount::frozen(5);
    assert_eq!(
        acc,
        ParamCount {
            trainable: 3,
            frozen: 5,
            emulated: 15
        }
    );
    assert_eq!(acc.total(), 8);
    Ok(())
}
