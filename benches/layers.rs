//! Forward + backward of the structured layers against their dense twins, on CPU, 2048 rows:
//! AdaptiveFastFood vs `candle_nn::Linear` at d = 1024 and 4096, BlockHadamardMlp (4 blocks) vs the dense MLP.
//!
//! `cargo bench --bench layers` (criterion; the trainable parameters of each case are printed first).

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::{adaptive_fastfood, block_hadamard_mlp, CountParams};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::Duration;

const ROWS: usize = 2048;

struct DenseMlp(candle_nn::Linear, candle_nn::Linear);

impl Module for DenseMlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.1
            .forward(&candle_structured::ops::gelu(&self.0.forward(xs)?)?)
    }
}

/// One forward and backward pass (gradients for the input and every parameter).
fn fwd_bwd(m: &dyn Module, x: &Var) -> Result<()> {
    let y = m.forward(x.as_tensor())?;
    let grads = y.sum_all()?.backward()?;
    std::hint::black_box(grads);
    Ok(())
}

type Case = (String, String, usize, Box<dyn Module>, Var);

fn cases() -> Result<Vec<Case>> {
    let dev = Device::Cpu;
    let mut out: Vec<Case> = Vec::new();
    for d in [1024usize, 4096] {
        let x = Var::randn(0f32, 1., (ROWS, d), &dev)?;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let ff = adaptive_fastfood(d, d, 0, vb.pp("ff"))?;
        let lin = candle_nn::linear(d, d, vb.pp("lin"))?;
        let (pf, pl) = (
            ff.param_counts().total().trainable,
            lin.param_counts().total().trainable,
        );
        out.push((
            format!("linear d={d}"),
            "AdaptiveFastFood".into(),
            pf,
            Box::new(ff),
            x.clone(),
        ));
        out.push((
            format!("linear d={d}"),
            "candle_nn::Linear".into(),
            pl,
            Box::new(lin),
            x,
        ));
    }
    let (d, h) = (1024usize, 4096usize);
    let x = Var::randn(0f32, 1., (ROWS, d), &dev)?;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let bh = block_hadamard_mlp(d, h, 4, 0, vb.pp("bh"))?;
    let fc = candle_nn::linear(d, h, vb.pp("fc"))?;
    let proj = candle_nn::linear(h, d, vb.pp("proj"))?;
    let pd = fc.param_counts().total().trainable + proj.param_counts().total().trainable;
    let pb = bh.param_counts().total().trainable;
    out.push((
        format!("mlp d={d} h={h}"),
        "BlockHadamardMlp(4)".into(),
        pb,
        Box::new(bh),
        x.clone(),
    ));
    out.push((
        format!("mlp d={d} h={h}"),
        "dense MLP".into(),
        pd,
        Box::new(DenseMlp(fc, proj)),
        x,
    ));
    Ok(out)
}

/// The trainable parameters of each case (the times are criterion's).
fn summary(cases: &[Case]) {
    println!("\n| case ({ROWS} rows, f32, fwd+bwd) | layer | trainable params |");
    println!("|---|---|---:|");
    for (group, name, params, _, _) in cases {
        println!("| {group} | {name} | {params} |");
    }
    println!();
}

fn bench(c: &mut Criterion) {
    let cases = cases().expect("building the layers failed");
    summary(&cases);
    for (group, name, _, m, x) in &cases {
        let mut g = c.benchmark_group(format!("fwd_bwd/{group}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        g.bench_with_input(BenchmarkId::from_parameter(name), &(), |b, _| {
            b.iter(|| fwd_bwd(m.as_ref(), x).expect("forward/backward failed"))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    // No plots: the plotters backend needs system fonts that a headless machine may lack.
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
