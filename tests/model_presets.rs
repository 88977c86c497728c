//! Preset parameter counts against figures computed by hand from the paper's Tables 1–3, and the analytic counts
//! of `GptConfig::param_counts` against the built models (their `VarMap`s and `CountParams`).

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::model::{
    gpt, preset, presets, presets_table, GptConfig, LayerSpec, CPU_LR_128,
};
use candle_structured::params::CountParams;
use candle_structured::BlockKind;

/// Dense pre-LN block: q,k,v (3d² + 3d), output (d² + d), MLP d→4d→d (8d² + 5d), two LayerNorms (4d).
fn dense_block(d: usize) -> usize {
    3 * d * d + 3 * d + d * d + d + 4 * d * d + 4 * d + 4 * d * d + d + 4 * d
}

/// FastFood linear in→out trains 3·n·⌈out/n⌉ diagonal entries (n = next power of two ≥ in) plus the bias.
fn ff(i: usize, o: usize) -> usize {
    let n = i.next_power_of_two();
    3 * n * o.div_ceil(n) + o
}

#[test]
fn paper_presets_match_hand_counts() {
    // Table 1.
    for (name, layers, d) in [
        ("xxsmall", 3, 768),
        ("xsmall", 6, 768),
        ("small", 12, 768),
        ("medium", 24, 1024),
    ] {
        let p = preset(name).unwrap();
        let c = p.model.param_counts();
        assert_eq!(
            c.non_embedding.trainable,
            layers * dense_block(d) + 2 * d,
            "{name}"
        );
        assert_eq!(c.non_embedding.frozen, 0, "{name}");
        assert_eq!(
            c.non_embedding.emulated, c.non_embedding.trainable,
            "{name}"
        );
        assert_eq!(c.embedding.trainable, 50_262 * d, "{name}");
        assert_eq!(p.model.context, 1024);
        assert_eq!(p.train.batch_size, 80);
        assert_eq!(p.train.warmup_tokens, 409_600_000);
        assert_eq!(p.train.max_tokens, 32_000_000_000);
        assert_eq!(p.train.grad_clip, 1.0);
        assert_eq!(p.train.weight_decay, 0.0);
        assert_eq!(p.model.dropout, 0.1);
    }
    // "small: about 85M non-embedding trainable" = 12 · 12 · 768² ≈ 84.9M plus biases and norms.
    let small = preset("small")
        .unwrap()
        .model
        .param_counts()
        .non_embedding
        .trainable;
    assert_eq!(small, 85_056_000);
    assert!((small as f64 - 12.0 * 12.0 * 768.0 * 768.0).abs() / (small as f64) < 0.002);
    assert_eq!(preset("medium").unwrap().train.lr, 3e-4);
    assert_eq!(preset("medium").unwrap().train.decay_tokens, 40_900_000_000);
    assert_eq!(preset("small").unwrap().train.decay_tokens, 32_800_000_000);

    // Table 2: alternating, first and last trainable, frozen MLP hidden 6·d (2·d·6d weights + a frozen LayerNorm).
    for (name, t, f, d) in [
        ("doped-xsmall", 3, 2, 768),
        ("doped-small", 6, 5, 768),
        ("doped-medium", 12, 11, 1024),
    ] {
        let p = preset(name).unwrap();
        assert_eq!(p.model.n_layers(), t + f, "{name}");
        assert!(matches!(p.model.layers[0], LayerSpec::Block(_)));
        assert!(matches!(p.model.layers[t + f - 1], LayerSpec::Block(_)));
        let c = p.model.param_counts();
        assert_eq!(
            c.non_embedding.trainable,
            t * dense_block(d) + 2 * d,
            "{name}"
        );
        assert_eq!(
            c.non_embedding.frozen,
            f * (2 * d * 6 * d + 2 * d),
            "{name}"
        );
        assert_eq!(
            c.non_embedding.emulated,
            c.non_embedding.trainable + c.non_embedding.frozen,
            "{name}"
        );
    }

    // Table 3, d = 1024, 12 layers, 16 heads.
    let d = 1024;
    let p = preset("fastfood").unwrap();
    let c = p.model.param_counts();
    let per_layer = ff(d, 3 * d) + ff(d, d) + ff(d, 4 * d) + ff(4 * d, d) + 4 * d;
    assert_eq!(
        per_layer,
        3 * 1024 * 3 + 3072 + 3 * 1024 + 1024 + 3 * 1024 * 4 + 4096 + 3 * 4096 + 1024 + 4096
    );
    assert_eq!(c.non_embedding.trainable, 12 * per_layer + 2 * d);
    assert_eq!(c.non_embedding.emulated, 12 * dense_block(d) + 2 * d);
    let p = preset("blockdiag").unwrap();
    let c = p.model.param_counts();
    // Attention dense (4d² + 4d), MLP two block-diagonal matrices with 4 blocks (2·d·4d/4) + biases (4d + d).
    assert_eq!(
        c.non_embedding.trainable,
        12 * (4 * d * d + 4 * d + 2 * d * d + 5 * d + 4 * d) + 2 * d
    );
    assert_eq!(c.non_embedding.emulated, 12 * dense_block(d) + 2 * d);
    assert_eq!(p.train.lr, 5e-4);
}

#[test]
fn cpu_twins_keep_the_pattern() {
    let all = presets();
    assert_eq!(all.len(), 27);
    for p in all.iter().filter(|p| !p.name.ends_with("-cpu")) {
        let twin = preset(&format!("{}-cpu", p.name)).unwrap();
        let d = twin.model.d_model;
        assert_eq!(d, if p.model.d_model == 768 { 128 } else { 160 });
        assert_eq!(d / twin.model.n_heads, 32, "head dim 32");
        assert_eq!(twin.model.context, 256);
        assert_eq!(twin.model.vocab_size, 4096);
        assert_eq!(twin.model.n_layers(), p.model.n_layers());
        for (a, b) in p.model.layers.iter().zip(&twin.model.layers) {
            match (a, b) {
                (LayerSpec::Block(x), LayerSpec::Block(y)) => assert_eq!(x, y),
                (LayerSpec::Frozen { hidden: h1 }, LayerSpec::Frozen { hidden: h2 }) => {
                    assert_eq!(*h1, 6 * p.model.d_model);
                    assert_eq!(*h2, 6 * d);
                }
                _ => panic!("{}: layer pattern differs", p.name),
            }
        }
    }
    // Every CPU preset follows the CPU recipe: 4 x 256 tokens per step, warmup over the first 5 % of the budget,
    // cosine to 10 % at its end, the peak rate falling as 1/width, no dropout.
    for p in all.iter().filter(|p| p.name.ends_with("-cpu")) {
        let t = &p.train;
        assert_eq!((t.batch_size, t.seq_len), (4, 256), "{}", p.name);
        assert_eq!(t.warmup_tokens, t.max_tokens / 20, "{}", p.name);
        assert_eq!(t.decay_tokens, t.max_tokens, "{}", p.name);
        assert_eq!(t.min_lr_fraction, 0.1);
        let want = CPU_LR_128 * 128.0 / p.model.d_model as f64;
        assert!(
            (t.lr - want).abs() < 1e-12 * want,
            "{}: lr {}",
            p.name,
            t.lr
        );
        assert_eq!(p.model.dropout, 0.0, "{}", p.name);
        // Rescaling the budget keeps the shape.
        let half = t.with_budget(t.max_tokens / 2);
        assert!((half.warmup_tokens as f64 - t.warmup_tokens as f64 / 2.0).abs() <= 1.0);
        assert!((half.decay_tokens as f64 - t.decay_tokens as f64 / 2.0).abs() <= 1.0);
    }
    let small = preset("small-cpu").unwrap().model.param_counts();
    assert_eq!(small.non_embedding.trainable, 12 * dense_block(128) + 256);
    assert_eq!(small.embedding.trainable, 4096 * 128);
    let table = presets_table();
    assert!(table.contains("85056000"), "{table}");
    assert_eq!(table.lines().count(), 28);
}

#[test]
fn unknown_preset_is_a_clear_error() {
    let err = preset("huge").unwrap_err().to_string();
    assert!(
        err.contains("unknown preset") && err.contains("small-cpu"),
        "{err}"
    );
}

/// Trainable scalars registered in the VarMap.
fn varmap_total(vm: &VarMap) -> usize {
    vm.all_vars()
        .iter()
        .filter(|v| v.dtype().is_float())
        .map(|v| v.elem_count())
        .sum()
}

#[test]
fn analytic_counts_equal_built_models() {
    let dev = Device::Cpu;
    let mut configs = Vec::new();
    for kind in [
        BlockKind::Dense,
        BlockKind::FastFood,
        BlockKind::BlockHadamard { n_blocks: 4 },
    ] {
        let mut c = GptConfig::dense(50, 16, 48, 3, 3);
        c.layers = vec![
            LayerSpec::Block(kind),
            LayerSpec::Frozen { hidden: 6 * 48 },
            LayerSpec::Block(kind),
        ];
        configs.push(c.clone());
        c.tie_embeddings = false;
        c.frozen_trainable_ln = true;
        configs.push(c);
    }
    // The CPU twins themselves (small sizes).
    for name in [
        "small-cpu",
        "doped-small-cpu",
        "fastfood-cpu",
        "blockdiag-cpu",
    ] {
        configs.push(preset(name).unwrap().model);
    }
    for cfg in configs {
        let vm = VarMap::new();
        let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let built = model.param_counts();
        assert_eq!(built, cfg.param_counts(), "{cfg:?}");
        assert_eq!(varmap_total(&vm), built.total().trainable, "{cfg:?}");
    }
}

#[test]
fn forward_shapes_and_context_check() {
    let dev = Device::Cpu;
    let cfg = GptConfig::dense(40, 8, 32, 2, 2);
    let vm = VarMap::new();
    let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3, 4], [5, 6, 7, 8]], &dev).unwrap();
    assert_eq!(model.forward_t(&ids, false).unwrap().dims(), &[2, 4, 40]);
    let long = Tensor::zeros((1, 9), DType::U32, &dev).unwrap();
    let err = model.forward_t(&long, false).unwrap_err().to_string();
    assert!(err.contains("exceeds the model's context"), "{err}");
    let bad = Tensor::new(&[[40u32]], &dev).unwrap();
    let err = model.forward_t(&bad, false).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    // Same seed, same model.
    let vm2 = VarMap::new();
    let model2 = gpt(&cfg, VarBuilder::from_varmap(&vm2, DType::F32, &dev)).unwrap();
    let a: Vec<f32> = model
        .forward_t(&ids, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = model2
        .forward_t(&ids, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);
}
