//! Fused ops against their slow twins, forward + backward, at the sizes of the issue-7 benchmark (batch 16 ×
//! context 256 tokens, d 128, head dim 32, vocab 4096), fp32 CPU.
//!
//! `cargo bench --bench fused_ops` (threads: `RAYON_NUM_THREADS`).

use candle_core::{DType, Device, Tensor, Var};
use candle_structured::ops;
use criterion::{criterion_group, criterion_main, Criterion};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap()
}

/// Forward, then backward of `sum(y · r)`.
fn fwd_bwd(f: &dyn Fn(&[Tensor]) -> Tensor, vars: &[Var], r: &Tensor) {
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let loss = (y.contiguous().unwrap() * r).unwrap().sum_all().unwrap();
    let _ = loss.backward().unwrap();
}

type Op = Box<dyn Fn(&[Tensor]) -> Tensor>;

fn bench_pair(c: &mut Criterion, name: &str, inputs: Vec<Tensor>, fast: Op, slow: Op) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let y = fast(&inputs);
    let r = randn(y.dims());
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.bench_function("fused", |b| b.iter(|| fwd_bwd(&fast, &vars, &r)));
    g.bench_function("slow", |b| b.iter(|| fwd_bwd(&slow, &vars, &r)));
    g.finish();
}

fn benches(c: &mut Criterion) {
    let (n, d) = (16 * 256, 128);
    bench_pair(
        c,
        "layer_norm_4096x128",
        vec![randn(&[n, d]), randn(&[d]), randn(&[d])],
        Box::new(|t| ops::layer_norm(&t[0], Some(&t[1]), Some(&t[2]), 1e-5).unwrap()),
        Box::new(|t| ops::slow::layer_norm(&t[0], Some(&t[1]), Some(&t[2]), 1e-5).unwrap()),
    );
    bench_pair(
        c,
        "gelu_4096x512",
        vec![randn(&[n, 4 * d])],
        Box::new(|t| ops::gelu(&t[0]).unwrap()),
        Box::new(|t| ops::slow::gelu(&t[0]).unwrap()),
    );
    let cos = randn(&[256, 16]);
    let sin = randn(&[256, 16]);
    let (c1, s1) = (cos.clone(), sin.clone());
    bench_pair(
        c,
        "rotary_16x4x256x32",
        vec![randn(&[16, 4, 256, 32])],
        Box::new(move |t| ops::rotary(&t[0], &cos, &sin).unwrap()),
        Box::new(move |t| ops::slow::rotary(&t[0], &c1, &s1).unwrap()),
    );
    bench_pair(
        c,
        "causal_attention_16x4x256x32_dropout0.1",
        vec![
            randn(&[16, 4, 256, 32]),
            randn(&[16, 4, 256, 32]),
            randn(&[16, 4, 256, 32]),
        ],
        Box::new(|t| ops::causal_attention(&t[0], &t[1], &t[2], 0.1, true).unwrap()),
        Box::new(|t| ops::slow::causal_attention(&t[0], &t[1], &t[2], 0.1, true).unwrap()),
    );
    let targets = Tensor::rand(0f32, 4096f32, n, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    let t2 = targets.clone();
    bench_pair(
        c,
        "cross_entropy_4096x4096",
        vec![randn(&[n, 4096])],
        Box::new(move |t| ops::cross_entropy(&t[0], &targets).unwrap()),
        Box::new(move |t| ops::slow::cross_entropy(&t[0], &t2).unwrap()),
    );
    bench_pair(
        c,
        "linear_16x256x128_to_512",
        vec![randn(&[16, 256, d]), randn(&[4 * d, d]), randn(&[4 * d])],
        Box::new(|t| ops::linear(&t[0], &t[1], Some(&t[2])).unwrap()),
        Box::new(|t| ops::slow::linear(&t[0], &t[1], Some(&t[2])).unwrap()),
    );
    let (c2, s2) = (randn(&[256, 16]), randn(&[256, 16]));
    let (c3, s3) = (c2.clone(), s2.clone());
    bench_pair(
        c,
        "rotary_attention_16x256x384_4_heads",
        vec![randn(&[16, 256, 3 * d])],
        Box::new(move |t| ops::rotary_attention(&t[0], 4, &c2, &s2, 0.0, true).unwrap()),
        Box::new(move |t| ops::slow::rotary_attention(&t[0], 4, &c3, &s3, 0.0, true).unwrap()),
    );
    let t3 = Tensor::rand(0f32, 4096f32, (16, 256), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    let t4 = t3.clone();
    bench_pair(
        c,
        "linear_cross_entropy_16x256x128_vocab4096",
        vec![randn(&[16, 256, d]), randn(&[4096, d])],
        Box::new(move |t| ops::linear_cross_entropy(&t[0], &t[1], &t3).unwrap()),
        Box::new(move |t| ops::slow::linear_cross_entropy(&t[0], &t[1], &t4).unwrap()),
    );
    bench_pair(
        c,
        "residual_dropout_4096x128",
        vec![randn(&[n, d]), randn(&[n, d])],
        Box::new(|t| ops::residual_dropout(&t[0], &t[1], 0.1, true).unwrap()),
        Box::new(|t| (&t[0] + ops::slow::dropout(&t[1], 0.1, true).unwrap()).unwrap()),
    );
    bench_pair(
        c,
        "dropout_4096x128",
        vec![randn(&[n, d])],
        Box::new(|t| ops::dropout(&t[0], 0.1, true).unwrap()),
        Box::new(|t| ops::slow::dropout(&t[0], 0.1, true).unwrap()),
    );
}

criterion_group! {
    name = fused;
    // Criterion's plots need a system font, which a bare machine may not have.
    config = Criterion::default().without_plots();
    targets = benches
}
criterion_main!(fused);
