//! Criterion benchmarks of the Walsh-Hadamard transform (`cargo bench --bench fwht`, a few minutes).
//!
//! * `op/{f32,bf16}/batch{1,256}/{fwht,dense}/n`: the candle op [`hadamard_transform`] against candle's dense
//!   matmul by the explicit `H_n` on `x: (batch, n)`, n = 2^6 … 2^14 (dense only up to 2^12: `H_16384` alone is
//!   1 GiB and one product of 256 rows takes seconds).
//! * `slice/{f32,f64}/n`: the in-place slice API on a hot buffer, n = 2^10 … 2^22, in elements per second.
use candle_core::{DType, Device, Tensor};
use candle_structured::fwht::{fwht_inplace, hadamard_matrix};
use candle_structured::hadamard_transform;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

/// Largest n for which the dense product is benchmarked.
const DENSE_MAX_LOG2: u32 = 12;

fn op(c: &mut Criterion) {
    let dev = Device::Cpu;
    for dtype in [DType::F32, DType::BF16] {
        for batch in [1usize, 256] {
            let name = format!("op/{}/batch{batch}", dtype.as_str());
            let mut group = c.benchmark_group(&name);
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_millis(600));
            for log2 in (6..=14).step_by(2) {
                let n = 1usize << log2;
                group.throughput(Throughput::Elements((batch * n) as u64));
                let x = Tensor::randn(0f32, 1., (batch, n), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let scale = 1.0 / (n as f64).sqrt();
                group.bench_with_input(BenchmarkId::new("fwht", n), &x, |b, x| {
                    b.iter(|| hadamard_transform(black_box(x), scale).unwrap())
                });
                if log2 <= DENSE_MAX_LOG2 {
                    let h = hadamard_matrix(n, dtype, &dev).unwrap();
                    group.bench_with_input(BenchmarkId::new("dense", n), &x, |b, x| {
                        b.iter(|| black_box(x).matmul(&h).unwrap())
                    });
                }
            }
            group.finish();
        }
    }
}

fn slice(c: &mut Criterion) {
    let mut group = c.benchmark_group("slice/f32");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(500));
    for log2 in (10..=22).step_by(2) {
        let n = 1usize << log2;
        let mut x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.4995)
            .collect();
        let scale = 1.0 / (n as f32).sqrt();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| fwht_inplace(black_box(&mut x), scale).unwrap())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("slice/f64");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(500));
    for log2 in (10..=22).step_by(4) {
        let n = 1usize << log2;
        let mut x: Vec<f64> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.4995)
            .collect();
        let scale = 1.0 / (n as f64).sqrt();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| fwht_inplace(black_box(&mut x), scale).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // No plots: criterion's plotters backend needs system fonts, which headless machines often lack.
    config = Criterion::default().without_plots();
    targets = op, slice
}
criterion_main!(benches);
