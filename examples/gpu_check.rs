//! Every CUDA check and timing of the Walsh-Hadamard transform in one binary, for one call on a GPU machine.
//!
//! ```text
//! cargo run --release --features cuda --example gpu_check            # checks + timings
//! cargo run --release --features cuda-untested --example gpu_check   # and the opt-in kernels (section 2)
//! cargo run --release --features cuda --example gpu_check -- --quick # checks, fewer sizes, short timings
//! ```
//!
//! In two sections. First the default kernels, as measured on an H100 (docs/gpu-notes.md):
//!
//! 1. Correctness against the CPU op on seeded random inputs: f32, f64, f16, bf16; n = 2^0 … 2^20 (several rows)
//!    and 2^21 … 2^24 (one or two rows); strided, offset, transposed, non-collapsible and broadcast layouts;
//!    gradients through `backward`; the self-inverse property `H(H(x)/√n)/√n = x` on the GPU alone; every layer
//!    (AdaptiveFastFood, BlockHadamardMlp, FrozenRandomMlp, RotaryGptBlock of each kind) forward and every
//!    gradient against the same layer, same seed, on the CPU, in f32 and bf16, and each block in mixed precision
//!    (f32 parameters, bf16 branches).
//! 2. Timings with CUDA events on candle's stream: the transform against a device-to-device copy of the same
//!    bytes (64 MiB) for every n and dtype; against a cuBLAS bf16 matmul by the dense Hadamard matrix
//!    (n = 4096, 16384 rows); latency of one row of 4096.
//!
//! Then the opt-in kernels, which have passed their checks in emulation only (`tests/cuda_emulated.rs`), last so
//! that a fault there cannot hide the results above:
//!
//! 3. The CUDA kernels of the training ops (`cuda/ops.cu`, switched on with `ops::set_cuda_fused_ops`): LayerNorm,
//!    GELU, dropout and residual dropout (same masks as the CPU), rotary, causal attention with dropout, rotary
//!    attention, cross-entropy and the linear cross-entropy head, forward and every gradient against the fused CPU
//!    ops, in f32, bf16 and f16; then every layer check again with these kernels on.
//! 4. The transform's variants (`fwht::CudaKernels`: transposed one-pass, persistent multi-pass) against the CPU
//!    op, then their copy ratios beside the default kernels' for n = 2^10 … 2^20.
//!
//! Exits with status 1 when any check fails.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, ModuleT, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::fwht::{cuda_kernels, hadamard_matrix, set_cuda_kernels, CudaKernels};
use candle_structured::{hadamard_transform, ops};
use clap::Parser;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Fewer sizes and shorter timings.
    #[arg(long)]
    quick: bool,
    /// Leave out the opt-in persistent kernel (its checks and its timing column).
    #[arg(long)]
    no_persistent: bool,
    /// Leave out the opt-in transposed one-pass kernels (their checks and their timing column).
    #[arg(long)]
    no_transposed: bool,
    /// Only the checks of the opt-in variants, no timings (for compute-sanitizer, which slows kernels down).
    #[arg(long)]
    only_variants: bool,
    /// Only the checks of the training ops' CUDA kernels (for compute-sanitizer).
    #[arg(long)]
    only_ops: bool,
    /// Skip the timings.
    #[arg(long)]
    no_timing: bool,
    /// Skip the correctness checks.
    #[arg(long)]
    no_checks: bool,
    /// Bytes of data per timed transform (MiB).
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Smallest log2(n) timed.
    #[arg(long, default_value_t = 0)]
    tmin: usize,
    /// Largest log2(n) timed.
    #[arg(long, default_value_t = 24)]
    tmax: usize,
    /// Time only the copy-ratio table (no cuBLAS, no latency).
    #[arg(long)]
    ratios_only: bool,
}

#[derive(Default)]
struct Checker {
    failures: Vec<String>,
    count: usize,
}

impl Checker {
    fn record(&mut self, what: &str, err: f64, tol: f64) {
        self.count += 1;
        let ok = err.is_finite() && err <= tol;
        if !ok {
            println!("FAIL {what}: rel err {err:.3e} > tol {tol:.1e}");
            self.failures.push(format!("{what}: {err:.3e}"));
        }
    }

    /// Records the relative error of `got` against `want` with the tolerance of `dtype`; returns the error.
    fn compare(&mut self, what: &str, got: &Tensor, want: &Tensor, dtype: DType) -> Result<f64> {
        let e = rel_err(got, want)?;
        self.record(what, e, tol(dtype));
        Ok(e)
    }
}

fn randn(rng: &mut StdRng, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let numel: usize = shape.iter().product();
    let data: Vec<f64> = (0..numel).map(|_| StandardNormal.sample(rng)).collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

/// ‖a − b‖ / ‖b‖ in f64, both brought to the CPU; NaN if either holds a non-finite value.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    if a.len() != b.len() {
        bail!("length mismatch {} vs {}", a.len(), b.len());
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        if !x.is_finite() || !y.is_finite() {
            return Ok(f64::NAN);
        }
        num += (x - y) * (x - y);
        den += y * y;
    }
    Ok(if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    })
}

fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        _ => 1e-2, // bf16: one rounding of an f32 result, 8 significant bits
    }
}

fn name(dtype: DType) -> &'static str {
    dtype.as_str()
}

fn checks(gpu: &Device, quick: bool, c: &mut Checker) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(20261123);
    let t0 = Instant::now();

    // 1. every dtype, every n, against the CPU op
    let max_log = if quick { 16 } else { 24 };
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let mut worst = 0f64;
        for log_n in 0..=max_log {
            let n = 1usize << log_n;
            let rows = if log_n <= 20 {
                ((1usize << 20) >> log_n).clamp(3, 4096)
            } else if log_n <= 22 {
                2
            } else {
                1
            };
            let x = randn(&mut rng, &[rows, n], dtype)?;
            let scale = 1.0 / (n as f64).sqrt();
            let want = hadamard_transform(&x, scale)?;
            let got = hadamard_transform(&x.to_device(gpu)?, scale)?;
            if got.dtype() != dtype || got.dims() != [rows, n] {
                c.failures
                    .push(format!("{} n=2^{log_n}: wrong dtype/shape", name(dtype)));
            }
            let what = format!("{} n=2^{log_n} rows={rows}", name(dtype));
            worst = worst.max(c.compare(&what, &got, &want, dtype)?);
        }
        println!(
            "check  {:5} n=2^0..2^{max_log} vs CPU op: worst rel err {worst:.2e} (tol {:.0e})",
            name(dtype),
            tol(dtype)
        );
    }

    // 2. layouts: each view built the same way on both devices
    for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
        for log_n in [0usize, 3, 7, 10, 12, 15, 17] {
            let n = 1usize << log_n;
            let base = randn(&mut rng, &[5, 2 * n + 1], dtype)?;
            let gbase = base.to_device(gpu)?;
            let scale = 0.5;
            // (a) row stride 2n+1, offset 1: strided rows, misaligned for vector loads
            // (b) row stride 2n+1, offset n: strided rows
            // (c) broadcast rows (stride 0)
            // (d) transposed: last stride != 1 (contiguous copy first)
            // (e) 3-D with leading dims that do not collapse
            type View = fn(&Tensor, usize) -> candle_core::Result<Tensor>;
            let views: [(&str, View); 5] = [
                ("narrow+1", |t, n| t.narrow(1, 1, n)),
                ("narrow+n", |t, n| t.narrow(1, n, n)),
                ("broadcast", |t, n| {
                    t.narrow(0, 2, 1)?.narrow(1, 0, n)?.broadcast_as((4, n))
                }),
                ("transposed", |t, n| {
                    // (n, 5) transposed to (5, n)
                    t.narrow(1, 0, n)?.t()?.contiguous()?.t()
                }),
                ("3d-noncollapsible", |t, n| {
                    t.narrow(1, 0, 2 * n)?
                        .reshape((5, 2, n))?
                        .narrow(0, 1, 3)?
                        .narrow(1, 1, 1)?
                        .broadcast_as((3, 2, n))?
                        .transpose(0, 1)
                }),
            ];
            for (label, f) in views {
                let xc = f(&base, n)?;
                let xg = f(&gbase, n)?;
                let want = hadamard_transform(&xc, scale)?;
                let got = hadamard_transform(&xg, scale)?;
                c.record(
                    &format!("{} n=2^{log_n} layout {label}", name(dtype)),
                    rel_err(&got, &want)?,
                    tol(dtype),
                );
            }
        }
    }
    println!("check  layouts (narrowed, offset, broadcast, transposed, 3-D) f32/bf16/f16/f64 n=2^0..2^17: done");

    // 3. gradients through backward, against the CPU
    for dtype in [DType::F32, DType::BF16, DType::F64] {
        for log_n in [0usize, 6, 12, 15, 16, 20] {
            let n = 1usize << log_n;
            let rows = if log_n >= 16 { 2 } else { 8 };
            let x = randn(&mut rng, &[rows, n], dtype)?;
            let w = randn(&mut rng, &[rows, n], dtype)?;
            let scale = 1.0 / (n as f64).sqrt();
            let grad_on = |dev: &Device| -> Result<Tensor> {
                let xv = Var::from_tensor(&x.to_device(dev)?)?;
                let y = hadamard_transform(xv.as_tensor(), scale)?;
                let loss = (y * w.to_device(dev)?)?.sqr()?.sum_all()?;
                let grads = loss.backward()?;
                Ok(grads.get(xv.as_tensor()).context("no gradient")?.clone())
            };
            let (gc, gg) = (grad_on(&Device::Cpu)?, grad_on(gpu)?);
            c.record(
                &format!("{} n=2^{log_n} gradient", name(dtype)),
                rel_err(&gg, &gc)?,
                tol(dtype) * 4.0,
            );
        }
    }
    println!("check  gradients (loss = sum((H x * w)^2)) f32/bf16/f64 n=2^0..2^20 vs CPU: done");

    // 4. self-inverse on the GPU alone (independent of the CPU op)
    for log_n in [1usize, 5, 9, 13, 15, 18, 22] {
        let n = 1usize << log_n;
        let x = randn(&mut rng, &[3, n], DType::F32)?.to_device(gpu)?;
        let s = 1.0 / (n as f64).sqrt();
        let back = hadamard_transform(&hadamard_transform(&x, s)?, s)?;
        c.record(
            &format!("f32 n=2^{log_n} H(H(x))=x"),
            rel_err(&back, &x)?,
            1e-5,
        );
    }
    // 5. the dense reference on the CPU in f64 for small n (independent of the fast CPU kernel)
    for log_n in [0usize, 2, 4, 6, 8, 10] {
        let n = 1usize << log_n;
        let x = randn(&mut rng, &[7, n], DType::F64)?;
        let dense = x.matmul(&hadamard_matrix(n, DType::F64, &Device::Cpu)?)?;
        let got = hadamard_transform(&x.to_dtype(DType::F32)?.to_device(gpu)?, 1.0)?;
        c.record(
            &format!("f32 n=2^{log_n} vs dense f64"),
            rel_err(&got, &dense)?,
            1e-6,
        );
    }
    println!("check  self-inverse and dense-f64 reference: done");

    // 6. errors, not panics
    let bad = Tensor::zeros((2, 12), DType::F32, gpu)?;
    match hadamard_transform(&bad, 1.0) {
        Err(e) => println!("check  n=12 refused: {e}"),
        Ok(_) => c.failures.push("n=12 accepted".into()),
    }
    let ints = Tensor::zeros((2, 8), DType::U32, gpu)?;
    if hadamard_transform(&ints, 1.0).is_ok() {
        c.failures.push("u32 accepted".into());
    }
    let empty = Tensor::zeros((0, 8), DType::F32, gpu)?;
    if hadamard_transform(&empty, 1.0)?.dims() != [0, 8] {
        c.failures.push("empty input".into());
    }
    println!(
        "checks: {} comparisons, {} failures, {:.1} s",
        c.count,
        c.failures.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Forward and every gradient (parameters and input) of a layer built from the same seed on the CPU and the GPU.
fn compare_layer<M>(
    label: &str,
    gpu: &Device,
    c: &mut Checker,
    x_shape: &[usize],
    dtype: DType,
    build: impl Fn(VarBuilder) -> candle_core::Result<M>,
    fwd: impl Fn(&M, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<()> {
    compare_layer_at(label, gpu, c, x_shape, (dtype, dtype), build, fwd)
}

/// [`compare_layer`] with parameters and input in `dtype` and the tolerances of `compute` (the dtype the layer
/// computes in: bf16 for a mixed-precision forward of f32 parameters).
fn compare_layer_at<M>(
    label: &str,
    gpu: &Device,
    c: &mut Checker,
    x_shape: &[usize],
    (dtype, compute): (DType, DType),
    build: impl Fn(VarBuilder) -> candle_core::Result<M>,
    fwd: impl Fn(&M, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(99);
    let x = randn(&mut rng, x_shape, dtype)?;
    let mut results = Vec::new();
    for dev in [&Device::Cpu, gpu] {
        let vm = VarMap::new();
        let m = build(VarBuilder::from_varmap(&vm, dtype, dev))?;
        let xv = Var::from_tensor(&x.to_device(dev)?)?;
        let y = fwd(&m, xv.as_tensor())?;
        let w = randn(&mut StdRng::seed_from_u64(5), y.dims(), dtype)?.to_device(dev)?;
        let grads = (&y * &w)?.sum_all()?.backward()?;
        let mut named: Vec<(String, Tensor)> = vm
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .filter_map(|(k, v)| grads.get(v.as_tensor()).map(|g| (k.clone(), g.clone())))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(g) = grads.get(xv.as_tensor()) {
            named.push(("input".into(), g.clone()));
        }
        results.push((y, named));
    }
    let (tf, tg) = match compute {
        DType::F32 => (1e-4, 1e-3),
        DType::F64 => (1e-10, 1e-9),
        // bf16: CPU and cuBLAS accumulate matmuls and reductions in different orders; through a whole block
        // (LayerNorm, attention, 3 matmuls) bf16 rounding of intermediates gives a few percent.
        _ => (8e-2, 1.5e-1),
    };
    let (yc, gc) = &results[0];
    let (yg, gg) = &results[1];
    c.record(&format!("layer {label} forward"), rel_err(yg, yc)?, tf);
    if gc.len() != gg.len() {
        c.failures.push(format!(
            "layer {label}: {} gradients on CPU, {} on GPU",
            gc.len(),
            gg.len()
        ));
    }
    let mut worst = 0f64;
    for ((nc, tc), (ng, tgpu)) in gc.iter().zip(gg) {
        if nc != ng {
            c.failures
                .push(format!("layer {label}: gradient {nc} vs {ng}"));
            continue;
        }
        let e = rel_err(tgpu, tc)?;
        worst = worst.max(e);
        c.record(&format!("layer {label} grad {nc}"), e, tg);
    }
    println!(
        "check  layer {label:<40} {:5} forward {:.1e}, {} gradients, worst {worst:.1e}",
        name(compute),
        rel_err(yg, yc)?,
        gc.len()
    );
    Ok(())
}

fn layer_checks(gpu: &Device, c: &mut Checker) -> Result<()> {
    use candle_structured::layers::{
        adaptive_fastfood, block_hadamard_mlp, frozen_random_mlp, rotary_gpt_block, BlockConfig,
        BlockKind,
    };
    let block_kinds = [
        ("dense", BlockKind::Dense),
        ("fastfood", BlockKind::FastFood),
        ("block-hadamard", BlockKind::BlockHadamard { n_blocks: 4 }),
    ];
    for dtype in [DType::F32, DType::BF16] {
        compare_layer(
            "AdaptiveFastFood 768->3072",
            gpu,
            c,
            &[4, 16, 768],
            dtype,
            |vb| adaptive_fastfood(768, 3072, 11, vb),
            |m, x| m.forward(x),
        )?;
        compare_layer(
            "AdaptiveFastFood 3072->768",
            gpu,
            c,
            &[4, 16, 3072],
            dtype,
            |vb| adaptive_fastfood(3072, 768, 12, vb),
            |m, x| m.forward(x),
        )?;
        compare_layer(
            "BlockHadamardMlp 768x3072, 4 blocks",
            gpu,
            c,
            &[4, 16, 768],
            dtype,
            |vb| block_hadamard_mlp(768, 3072, 4, 13, vb),
            |m, x| m.forward(x),
        )?;
        compare_layer(
            "FrozenRandomMlp 256x1536 (trainable LN)",
            gpu,
            c,
            &[4, 16, 256],
            dtype,
            |vb| frozen_random_mlp(256, 1536, 14, true, vb),
            |m, x| m.forward(x),
        )?;
        for (kname, kind) in block_kinds {
            compare_layer(
                &format!("RotaryGptBlock d=256 h=4 {kname}"),
                gpu,
                c,
                &[2, 32, 256],
                dtype,
                |vb| rotary_gpt_block(&BlockConfig::new(256, 4, kind).with_seed(15), vb),
                |m, x| m.forward_t(x, false),
            )?;
        }
    }
    // Mixed precision (`train_small --precision bf16`): f32 parameters and residual stream, bf16 branches.
    for (kname, kind) in block_kinds {
        compare_layer_at(
            &format!("RotaryGptBlock d=256 h=4 {kname}, f32 params, bf16 compute"),
            gpu,
            c,
            &[2, 32, 256],
            (DType::F32, DType::BF16),
            |vb| rotary_gpt_block(&BlockConfig::new(256, 4, kind).with_seed(15), vb),
            |m, x| m.forward_mixed(x, false, DType::BF16),
        )?;
    }
    Ok(())
}

/// One training op on the GPU (CUDA kernels on) against the fused CPU op in f32 on the same inputs (rounded to
/// `dtype` first): the forward and the gradient of every floating-point input. `inputs` are on the CPU, in f32
/// (integer ones as they are), `f` is the op, called with fixed dropout seeds (`ops::Mode::train(2026)`) so that both devices
/// draw the same masks; `matmul`: the op multiplies matrices inside (half-precision tolerances are looser).
#[allow(clippy::too_many_arguments)]
fn compare_op(
    label: &str,
    gpu: &Device,
    c: &mut Checker,
    dtype: DType,
    matmul: bool,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> Result<()> {
    let mut results = Vec::new();
    for (dev, dt) in [(&Device::Cpu, DType::F32), (gpu, dtype)] {
        let vars: Vec<Option<Var>> = inputs
            .iter()
            .map(|t| -> Result<Option<Var>> {
                if !t.dtype().is_float() {
                    return Ok(None);
                }
                // the same values on both devices: rounded to `dtype`, computed in `dt`
                let v = t.to_dtype(dtype)?.to_dtype(dt)?.to_device(dev)?;
                Ok(Some(Var::from_tensor(&v)?))
            })
            .collect::<Result<_>>()?;
        let ts: Vec<Tensor> = inputs
            .iter()
            .zip(&vars)
            .map(|(t, v)| match v {
                Some(v) => Ok(v.as_tensor().clone()),
                None => t.to_device(dev),
            })
            .collect::<candle_core::Result<_>>()?;
        let y = f(&ts)?;
        let w = randn(&mut StdRng::seed_from_u64(5), y.dims(), DType::F32)?
            .to_dtype(y.dtype())?
            .to_device(dev)?;
        let grads = (y.to_dtype(DType::F32)? * w.to_dtype(DType::F32)?)?
            .sum_all()?
            .backward()?;
        let gs: Vec<Option<Tensor>> = vars
            .iter()
            .map(|v| v.as_ref().and_then(|v| grads.get(v.as_tensor()).cloned()))
            .collect();
        results.push((y, gs));
    }
    let (yc, gc) = &results[0];
    let (yg, gg) = &results[1];
    // bf16 and f16 inputs are exact in f32; their results differ from the CPU's f32 by the roundings inside:
    // one or two for the element-wise ops, more where half-precision matmuls (attention, the LM head) round
    // their products and the probabilities between them
    let (tf, tg) = match (dtype, matmul) {
        (DType::F32, _) => (1e-5, 1e-4),
        (DType::F16, false) => (2e-3, 4e-3),
        (DType::F16, true) => (4e-3, 1e-2),
        (_, false) => (1e-2, 3e-2),
        (_, true) => (3e-2, 8e-2),
    };
    let ef = rel_err(yg, yc)?;
    c.record(&format!("op {label} {} forward", name(dtype)), ef, tf);
    let mut worst = 0f64;
    for (i, (a, b)) in gg.iter().zip(gc).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => {
                let e = rel_err(a, b)?;
                worst = worst.max(e);
                c.record(&format!("op {label} {} grad {i}", name(dtype)), e, tg);
            }
            (None, None) => {}
            _ => c
                .failures
                .push(format!("op {label}: gradient {i} on one device only")),
        }
    }
    println!(
        "check  op {label:<30} {:5} forward {ef:.1e}, gradients worst {worst:.1e}",
        name(dtype)
    );
    Ok(())
}

/// The CUDA kernels of the training ops against the fused CPU ops (see [`compare_op`]).
fn op_checks(gpu: &Device, c: &mut Checker) -> Result<()> {
    with_cuda_ops(|| {
        let mut rng = StdRng::seed_from_u64(31);
        let f32s = |rng: &mut StdRng, shape: &[usize]| randn(rng, shape, DType::F32);
        let (b, h, t, hd, vocab) = (2, 4, 100, 32, 1000);
        let ln = [
            f32s(&mut rng, &[64, 768])?,
            f32s(&mut rng, &[768])?,
            f32s(&mut rng, &[768])?,
        ];
        let x = f32s(&mut rng, &[64, 3072])?;
        let res = f32s(&mut rng, &[64, 3072])?;
        let qkv4: Vec<Tensor> = (0..3)
            .map(|_| f32s(&mut rng, &[b, h, t, hd]))
            .collect::<Result<_>>()?;
        let qkv = f32s(&mut rng, &[b, t, 3 * h * hd])?;
        let angles: Vec<f32> = (0..t * hd / 2)
            .map(|k| (k / (hd / 2)) as f32 * 0.9f32.powi((k % (hd / 2)) as i32))
            .collect();
        let ang = Tensor::from_vec(angles, (t, hd / 2), &Device::Cpu)?;
        let (cos, sin) = (ang.cos()?, ang.sin()?);
        let logits = f32s(&mut rng, &[64, vocab])?;
        let feats = f32s(&mut rng, &[64, 128])?;
        let head = (f32s(&mut rng, &[vocab, 128])? * 0.1)?;
        let targets = Tensor::from_vec(
            (0..64u32)
                .map(|i| (i * 7919 + 3) % vocab as u32)
                .collect::<Vec<u32>>(),
            64,
            &Device::Cpu,
        )?;
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            compare_op("layer_norm", gpu, c, dtype, false, &ln, &|x| {
                ops::layer_norm(&x[0], Some(&x[1]), Some(&x[2]), 1e-5)
            })?;
            compare_op(
                "gelu",
                gpu,
                c,
                dtype,
                false,
                std::slice::from_ref(&x),
                &|x| ops::gelu(&x[0]),
            )?;
            compare_op(
                "dropout 0.1",
                gpu,
                c,
                dtype,
                false,
                std::slice::from_ref(&x),
                &|x| ops::dropout(&x[0], 0.1, ops::Mode::train(2026)),
            )?;
            compare_op(
                "residual_dropout 0.1",
                gpu,
                c,
                dtype,
                false,
                &[res.clone(), x.clone()],
                &|x| ops::residual_dropout(&x[0], &x[1], 0.1, ops::Mode::train(2026)),
            )?;
            let rot = [qkv4[0].clone(), cos.clone(), sin.clone()];
            compare_op("rotary", gpu, c, dtype, false, &rot, &|x| {
                ops::rotary(&x[0], &x[1], &x[2])
            })?;
            for p in [0.0, 0.1] {
                compare_op(
                    &format!("causal_attention {p}"),
                    gpu,
                    c,
                    dtype,
                    true,
                    &qkv4,
                    &|x| ops::causal_attention(&x[0], &x[1], &x[2], p, ops::Mode::train(2026)),
                )?;
            }
            let ra = [qkv.clone(), cos.clone(), sin.clone()];
            compare_op("rotary_attention 0.1", gpu, c, dtype, true, &ra, &|x| {
                ops::rotary_attention(&x[0], h, &x[1], &x[2], 0.1, ops::Mode::train(2026))
            })?;
            compare_op(
                "cross_entropy",
                gpu,
                c,
                dtype,
                false,
                &[logits.clone(), targets.clone()],
                &|x| ops::cross_entropy(&x[0], &x[1]),
            )?;
            let lx = [feats.clone(), head.clone(), targets.clone()];
            compare_op("linear_cross_entropy", gpu, c, dtype, true, &lx, &|x| {
                ops::linear_cross_entropy(&x[0], &x[1], &x[2])
            })?;
        }
        Ok(())
    })
}

/// Runs `f` with the training ops on their CUDA kernels, then restores the previous choice.
fn with_cuda_ops<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    let before = ops::cuda_fused_ops();
    ops::set_cuda_fused_ops(true);
    let r = f();
    ops::set_cuda_fused_ops(before);
    r
}

/// Runs `f` with the CUDA kernel variants `k`, then restores the previous choice.
fn with_kernels<R>(k: CudaKernels, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let before = cuda_kernels();
    set_cuda_kernels(k);
    let r = f();
    set_cuda_kernels(before);
    r
}

const TRANSPOSED: CudaKernels = CudaKernels {
    transposed: true,
    persistent_from: None,
};
const PERSISTENT: CudaKernels = CudaKernels {
    transposed: false,
    persistent_from: Some(13),
};

/// The opt-in kernel variants against the CPU op: the transposed one-pass kernels (f32/f16/bf16, n = 2^10..2^15)
/// and the persistent multi-pass kernel (every dtype, n = 2^13..2^20), contiguous rows and rows at stride n + 8
/// starting one element in. Runs after the other checks: were the persistent kernel's in-kernel waits to hang
/// on a GPU, everything else has been printed already.
fn variant_checks(gpu: &Device, args: &Args, c: &mut Checker) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(20261124);
    let mut runs: Vec<(
        &str,
        CudaKernels,
        Vec<DType>,
        std::ops::RangeInclusive<usize>,
    )> = Vec::new();
    if !args.no_transposed {
        runs.push((
            "transposed",
            TRANSPOSED,
            vec![DType::F32, DType::F16, DType::BF16],
            10..=15,
        ));
    }
    if !args.no_persistent {
        let max = if args.quick { 16 } else { 20 };
        runs.push((
            "persistent",
            PERSISTENT,
            vec![DType::F32, DType::F64, DType::F16, DType::BF16],
            13..=max,
        ));
    }
    for (label, kernels, dtypes, sizes) in runs {
        let mut worst = 0f64;
        for &dtype in &dtypes {
            for log_n in sizes.clone() {
                let n = 1usize << log_n;
                let rows = ((1usize << 20) >> log_n).clamp(3, 4096);
                let base = randn(&mut rng, &[rows, n + 8], dtype)?;
                let gbase = base.to_device(gpu)?;
                let scale = 1.0 / (n as f64).sqrt();
                for (layout, off) in [("contiguous", 0), ("narrow+1", 1)] {
                    let xc = base.narrow(1, off, n)?;
                    let xg = gbase.narrow(1, off, n)?;
                    let (xc, xg) = if off == 0 {
                        (xc.contiguous()?, xg.contiguous()?)
                    } else {
                        (xc, xg)
                    };
                    let got = with_kernels(kernels, || Ok(hadamard_transform(&xg, scale)?))?;
                    let want = hadamard_transform(&xc, scale)?;
                    let what = format!("{} n=2^{log_n} {label} {layout}", name(dtype));
                    worst = worst.max(c.compare(&what, &got, &want, dtype)?);
                }
            }
        }
        println!(
            "check  {label} kernels n=2^{}..2^{}, contiguous and strided: worst rel err {worst:.2e}",
            sizes.start(),
            sizes.end()
        );
    }
    Ok(())
}

/// The copy-ratio goals of issue 6 against the best of the default kernels and the variants, per dtype: which
/// sizes meet them and which kernel is fastest there, so that a run says at once what to make the default.
fn goal_summary(rows: &[Row]) -> String {
    let mut out =
        String::from("goals (best of default / transposed / persistent, ratio to the copy):");
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        let (mut met, mut missed, mut wins) = (Vec::new(), Vec::new(), Vec::new());
        for r in rows.iter().filter(|r| r.dtype == dtype && r.log_n <= 20) {
            let candidates = [
                ("default", Some(r.fwht_us)),
                ("transposed", r.transposed_us),
                ("persistent", r.persistent_us),
            ];
            let (best_name, best_us) = candidates
                .iter()
                .filter_map(|&(k, us)| us.map(|us| (k, us)))
                .fold(
                    ("default", f64::INFINITY),
                    |a, b| if b.1 < a.1 { b } else { a },
                );
            let ratio = best_us / r.copy_us;
            // f16/bf16: 1.1 up to 2^15, 1.5 for 2^16..2^20; f32: 1.1
            let goal = if dtype != DType::F32 && r.log_n >= 16 {
                1.5
            } else {
                1.1
            };
            let entry = format!("2^{} {ratio:.2}", r.log_n);
            if ratio <= goal {
                met.push(entry);
            } else {
                missed.push(entry);
            }
            if best_name != "default" {
                wins.push(format!(
                    "2^{} {best_name} {:.2}x faster",
                    r.log_n,
                    r.fwht_us / best_us
                ));
            }
        }
        out += &format!(
            "\n  {:5} met: [{}]\n        missed: [{}]\n        a variant beats the default: [{}]",
            name(dtype),
            met.join(", "),
            missed.join(", "),
            wins.join(", ")
        );
    }
    out
}

fn stream_of(dev: &Device) -> Result<Arc<CudaStream>> {
    match dev {
        Device::Cuda(d) => Ok(d.cuda_stream()),
        _ => bail!("not a CUDA device"),
    }
}

/// Milliseconds per call of `f`: the best of `reps` batches of `iters` calls between two CUDA events.
fn time_ms(
    stream: &Arc<CudaStream>,
    reps: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    stream.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let a = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        for _ in 0..iters {
            f()?;
        }
        let b = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        best = best.min(a.elapsed_ms(&b)? as f64 / iters as f64);
    }
    Ok(best)
}

struct Row {
    dtype: DType,
    log_n: usize,
    rows: usize,
    fwht_us: f64,
    copy_us: f64,
    /// the opt-in transposed one-pass kernels (n = 2^10 … 2^15)
    transposed_us: Option<f64>,
    /// the opt-in persistent kernel (n = 2^13 … 2^20)
    persistent_us: Option<f64>,
}

/// The timing setup: candle's stream, the copy's preallocated buffers, batch sizes.
struct Bench {
    stream: Arc<CudaStream>,
    bytes: usize,
    src: CudaSlice<u8>,
    dst: CudaSlice<u8>,
    reps: usize,
    iters: usize,
}

impl Bench {
    fn new(gpu: &Device, args: &Args) -> Result<Self> {
        let stream = stream_of(gpu)?;
        let bytes = args.mib << 20;
        let (reps, iters) = if args.quick { (2, 5) } else { (5, 20) };
        let src = stream.alloc_zeros::<u8>(bytes)?;
        let dst = stream.alloc_zeros::<u8>(bytes)?;
        Ok(Self {
            stream,
            bytes,
            src,
            dst,
            reps,
            iters,
        })
    }

    /// Milliseconds of one device-to-device copy of the same bytes.
    fn copy_ms(&mut self, reps: usize, iters: usize) -> Result<f64> {
        let (stream, src, dst) = (&self.stream, &self.src, &mut self.dst);
        time_ms(stream, reps, iters, || {
            stream.memcpy_dtod(src, dst)?;
            Ok(())
        })
    }

    /// Milliseconds of one `hadamard_transform` of `x` (output allocation included) with the kernels `k`.
    fn fwht_ms(&self, x: &Tensor, scale: f64, k: CudaKernels) -> Result<f64> {
        with_kernels(k, || {
            time_ms(&self.stream, self.reps, self.iters, || {
                let _y = hadamard_transform(x, scale)?;
                Ok(())
            })
        })
    }

    /// The copy-ratio rows for bf16, f16, f32 and n = 2^`log_min` … 2^`log_max`: the default kernels, and with
    /// `variants` the opt-in ones beside them where they apply.
    fn ratios(
        &mut self,
        gpu: &Device,
        args: &Args,
        (log_min, log_max): (usize, usize),
        variants: bool,
    ) -> Result<Vec<Row>> {
        let mut rows_timed = Vec::new();
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let numel = self.bytes / dtype.size_in_bytes();
            // one random buffer per dtype, reshaped per n (random data, never zeros)
            let x = Tensor::randn(0f32, 1f32, numel, gpu)?.to_dtype(dtype)?;
            for log_n in log_min..=log_max {
                let n = 1usize << log_n;
                if n > numel {
                    break;
                }
                let rows = numel / n;
                let xr = x.reshape((rows, n))?;
                let scale = 1.0 / (n as f64).sqrt();
                let fwht_us = self.fwht_ms(&xr, scale, CudaKernels::default())? * 1e3;
                // copy timed again beside each size (same bytes), to follow clock changes
                let copy_us = self.copy_ms(2, self.iters.min(10))? * 1e3;
                let variant_us = |k: CudaKernels, applies: bool| -> Result<Option<f64>> {
                    Ok(if variants && applies {
                        Some(self.fwht_ms(&xr, scale, k)? * 1e3)
                    } else {
                        None
                    })
                };
                let r = Row {
                    dtype,
                    log_n,
                    rows,
                    fwht_us,
                    copy_us,
                    transposed_us: variant_us(
                        TRANSPOSED,
                        (10..=15).contains(&log_n) && !args.no_transposed,
                    )?,
                    persistent_us: variant_us(
                        PERSISTENT,
                        (13..=20).contains(&log_n) && !args.no_persistent,
                    )?,
                };
                println!("{}", r.log_line(self.bytes));
                rows_timed.push(r);
            }
        }
        println!("{}", goal_summary(&rows_timed));
        Ok(rows_timed)
    }
}

const TABLE_HEADER: &str = "| dtype | n | rows | fwht us | copy us | fwht/copy | transposed us | transposed/copy | persistent us | persistent/copy |\n|---|---|---|---|---|---|---|---|---|---|";

impl Row {
    /// The (µs, ratio to the copy) columns of an opt-in variant, `-` where it was not timed.
    fn cols(&self, v: Option<f64>) -> (String, String) {
        match v {
            Some(us) => (format!("{us:9.1}"), format!("{:5.2}", us / self.copy_us)),
            None => ("        -".to_string(), "    -".to_string()),
        }
    }

    fn log_line(&self, bytes: usize) -> String {
        let (t_us, t_ratio) = self.cols(self.transposed_us);
        let (p_us, p_ratio) = self.cols(self.persistent_us);
        format!(
            "timing {:5} n=2^{:<2} rows={:<9} fwht {:9.1} us  copy {:9.1} us  ratio {:.3}  ({:.2} TB/s)  transposed {t_us} us ratio {t_ratio}  persistent {p_us} us ratio {p_ratio}",
            name(self.dtype),
            self.log_n,
            self.rows,
            self.fwht_us,
            self.copy_us,
            self.fwht_us / self.copy_us,
            2.0 * bytes as f64 / (self.fwht_us * 1e-6) / 1e12
        )
    }

    fn table_line(&self) -> String {
        let (t_us, t_ratio) = self.cols(self.transposed_us);
        let (p_us, p_ratio) = self.cols(self.persistent_us);
        format!(
            "| {:5} | 2^{:<2} | {:>8} | {:>9.1} | {:>9.1} | {:>5.2} | {t_us} | {t_ratio} | {p_us} | {p_ratio} |",
            name(self.dtype),
            self.log_n,
            self.rows,
            self.fwht_us,
            self.copy_us,
            self.fwht_us / self.copy_us
        )
    }
}

/// Every timing of issue 6 with the default kernels: the copy-ratio table, cuBLAS, the latency of one row.
fn timings(gpu: &Device, args: &Args) -> Result<Vec<String>> {
    let mut bench = Bench::new(gpu, args)?;
    let copy_ms = bench.copy_ms(bench.reps, bench.iters)?;
    let copy_bw = 2.0 * bench.bytes as f64 / (copy_ms * 1e-3) / 1e12;
    println!(
        "timing copy {} MiB: {:.1} us = {copy_bw:.2} TB/s (read + write)",
        args.mib,
        copy_ms * 1e3
    );
    let max_log = if args.quick {
        args.tmax.min(16)
    } else {
        args.tmax
    };
    let mut table: Vec<String> = bench
        .ratios(gpu, args, (args.tmin, max_log), false)?
        .iter()
        .map(Row::table_line)
        .collect();
    if args.ratios_only {
        return Ok(table);
    }
    let (stream, reps, iters) = (bench.stream.clone(), bench.reps, bench.iters);
    // against cuBLAS: bf16 (16384 x 4096) @ H_4096
    let (m, n) = (16384usize, 4096usize);
    let xb = Tensor::randn(0f32, 1f32, (m, n), gpu)?.to_dtype(DType::BF16)?;
    let h = hadamard_matrix(n, DType::BF16, gpu)?;
    let mm_ms = time_ms(&stream, reps, iters, || {
        let _y = xb.matmul(&h)?;
        Ok(())
    })?;
    let ht_ms = time_ms(&stream, reps, iters, || {
        let _y = hadamard_transform(&xb, 1.0 / 64.0)?;
        Ok(())
    })?;
    // agreement of the two on this input (bf16 output of both)
    let e = rel_err(
        &hadamard_transform(&xb, 1.0)?,
        &xb.matmul(&h)?.to_dtype(DType::F32)?,
    )?;
    let mm_tflops = 2.0 * (m * n * n) as f64 / (mm_ms * 1e-3) / 1e12;
    println!(
        "timing cuBLAS bf16 matmul (16384x4096)@H4096: {:.1} us ({mm_tflops:.0} TFLOP/s); fwht {:.1} us; speedup {:.1}x; rel diff {e:.1e}",
        mm_ms * 1e3,
        ht_ms * 1e3,
        mm_ms / ht_ms
    );
    table.push(format!(
        "| cuBLAS bf16 matmul 16384x4096 @ H_4096 | {:.1} us ({mm_tflops:.0} TFLOP/s) | fwht {:.1} us | speedup {:.1}x |",
        mm_ms * 1e3,
        ht_ms * 1e3,
        mm_ms / ht_ms
    ));

    // latency: one row of 4096
    for dtype in [DType::F32, DType::BF16] {
        let x1 = Tensor::randn(0f32, 1f32, (1, 4096), gpu)?.to_dtype(dtype)?;
        let per_call_ms = time_ms(&stream, reps, 1000, || {
            let _y = hadamard_transform(&x1, 1.0 / 64.0)?;
            Ok(())
        })?;
        let mut walls = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let _y = hadamard_transform(&x1, 1.0 / 64.0)?;
            stream.synchronize()?;
            walls.push(t.elapsed().as_secs_f64() * 1e6);
        }
        walls.sort_by(|a, b| a.total_cmp(b));
        let med = walls[walls.len() / 2];
        println!(
            "timing one row of 4096 {}: {:.2} us per call back to back (events), {med:.1} us host wall incl. sync (median of 200)",
            name(dtype),
            per_call_ms * 1e3
        );
        table.push(format!(
            "| one row of 4096 {} | {:.2} us/call back-to-back | {med:.1} us wall incl. sync |",
            name(dtype),
            per_call_ms * 1e3
        ));
    }
    Ok(table)
}

/// Shape sanity on a tensor with a leading batch (guards the reshape path used above).
fn x_dim_check(gpu: &Device) -> Result<()> {
    let x = Tensor::ones((2, 3, 8), DType::F32, gpu)?;
    let y = hadamard_transform(&x, 1.0)?;
    let first = y.narrow(D::Minus1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?;
    if first.iter().any(|&v| v != 8.0) {
        bail!("ones: first output {first:?}, want 8");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let gpu = Device::new_cuda(0).context("no CUDA device")?;
    println!(
        "gpu_check: candle-structured {} on {:?}",
        env!("CARGO_PKG_VERSION"),
        gpu.location()
    );
    let mut c = Checker::default();
    if args.only_variants || args.only_ops {
        if args.only_variants {
            variant_checks(&gpu, &args, &mut c)?;
        }
        if args.only_ops {
            op_checks(&gpu, &mut c)?;
        }
        println!(
            "selected checks: {} comparisons, {} failures",
            c.count,
            c.failures.len()
        );
        return if c.failures.is_empty() {
            Ok(())
        } else {
            bail!("{} checks failed", c.failures.len())
        };
    }

    // 1. The default kernels, measured on an H100 (docs/gpu-notes.md): checks, then every timing.
    if !args.no_checks {
        checks(&gpu, args.quick, &mut c)?;
        x_dim_check(&gpu)?;
        layer_checks(&gpu, &mut c)?;
        println!(
            "checks of the default kernels incl. layers: {} comparisons, {} failures",
            c.count,
            c.failures.len()
        );
    }
    if !args.no_timing {
        let table = timings(&gpu, &args)?;
        println!("\n{TABLE_HEADER}");
        for line in &table {
            println!("{line}");
        }
    }

    // 2. The opt-in kernels, not yet run on a GPU: the training ops' kernels (alone, then under every layer)
    //    and the transform's variants, checks and then timings. Last, so that whatever goes wrong here (a
    //    failed launch, a fault that ends the CUDA context, a hang cut by a timeout) leaves everything above
    //    printed; an error here is reported as a failure of this section.
    let mut opt_in = Checker::default();
    let section = (|| -> Result<()> {
        if !cfg!(feature = "cuda-untested") {
            println!("\nthe opt-in kernels are not built: rebuild with `--features cuda-untested` to check them");
            return Ok(());
        }
        if !args.no_checks {
            op_checks(&gpu, &mut opt_in)?;
            println!("layer checks with the CUDA op kernels:");
            with_cuda_ops(|| layer_checks(&gpu, &mut opt_in))?;
            variant_checks(&gpu, &args, &mut opt_in)?;
            println!(
                "checks of the opt-in kernels: {} comparisons, {} failures",
                opt_in.count,
                opt_in.failures.len()
            );
        }
        if !args.no_timing && (!args.no_transposed || !args.no_persistent) {
            println!("\ntimings of the opt-in variants beside the default:");
            let mut bench = Bench::new(&gpu, &args)?;
            let rows = bench.ratios(&gpu, &args, (args.tmin.max(10), args.tmax.min(20)), true)?;
            println!("\n{TABLE_HEADER}");
            for r in &rows {
                println!("{}", r.table_line());
            }
        }
        Ok(())
    })();
    if let Err(e) = section {
        println!("\nthe opt-in section stopped: {e:#}");
        opt_in
            .failures
            .push(format!("the opt-in section stopped: {e:#}"));
    }

    let verdict = |label: &str, k: &Checker| {
        if k.failures.is_empty() {
            println!("{label}: ALL CHECKS PASSED ({} comparisons)", k.count);
        } else {
            println!("{label}: {} CHECKS FAILED:", k.failures.len());
            for f in &k.failures {
                println!("  {f}");
            }
        }
    };
    println!();
    if args.no_checks {
        println!("checks skipped");
    } else {
        verdict("default kernels", &c);
    }
    verdict("opt-in kernels", &opt_in);
    if c.failures.is_empty() && opt_in.failures.is_empty() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}
