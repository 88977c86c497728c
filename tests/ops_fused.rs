//! The fused ops (`candle_structured::ops`) against their slow twins (`ops::slow`): forward values and gradients on
//! seeded random inputs in f64 and f32, gradients against central finite differences in f64, strided inputs,
//! fallbacks for half precision, and errors on bad input.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_structured::ops;
use rand::{Rng, SeedableRng};

fn randn(rng: &mut rand::rngs::StdRng, shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            // Box-Muller from two uniforms.
            let u: f64 = rng.random_range(1e-12..1.0);
            let w: f64 = rng.random_range(0.0..1.0);
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * w).cos()
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// `sum(f(inputs) * r)` and the gradients of every input, for a fixed random cotangent `r`.
fn value_and_grads(
    f: &dyn Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    r: &Tensor,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let loss = (y.contiguous().unwrap() * r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gs = vars
        .iter()
        .map(|v| {
            grads
                .get(v)
                .cloned()
                .unwrap_or_else(|| v.as_tensor().zeros_like().unwrap())
        })
        .collect();
    (y, gs)
}

/// Compares forward and gradients of `fast` and `slow`, relative to the size of the values.
fn compare(
    name: &str,
    fast: &dyn Fn(&[Tensor]) -> Tensor,
    slow: &dyn Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    grad_of: &[bool],
    tol: f64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let y_ref = slow(inputs);
    let r = randn(&mut rng, y_ref.dims(), y_ref.dtype());
    let (ys, gs) = value_and_grads(slow, inputs, &r);
    let (yf, gf) = value_and_grads(fast, inputs, &r);
    let scale = max_abs(&ys).max(1.0);
    let e = max_abs_diff(&yf, &ys);
    assert!(
        e <= tol * scale,
        "{name}: forward differs by {e:e} (scale {scale:e})"
    );
    for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
        if !grad_of[i] {
            continue;
        }
        let scale = max_abs(b).max(1.0);
        let e = max_abs_diff(a, b);
        assert!(
            e <= tol * scale,
            "{name}: gradient of input {i} differs by {e:e} (scale {scale:e})"
        );
    }
}

/// Central finite differences of `sum(f(inputs) * r)` at a few random coordinates of input `which`, against the
/// gradient from `backward` (f64).
fn check_fd(
    name: &str,
    f: &dyn Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    which: usize,
    tol: f64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let y = f(inputs);
    let r = randn(&mut rng, y.dims(), DType::F64);
    let (_, g) = value_and_grads(f, inputs, &r);
    let g: Vec<f64> = g[which].flatten_all().unwrap().to_vec1().unwrap();
    let base: Vec<f64> = inputs[which].flatten_all().unwrap().to_vec1().unwrap();
    let h = 1e-5;
    for _ in 0..12 {
        let idx = rng.random_range(0..base.len());
        let eval = |delta: f64| -> f64 {
            let mut v = base.clone();
            v[idx] += delta;
            let mut ins = inputs.to_vec();
            ins[which] = Tensor::from_vec(v, inputs[which].dims(), &Device::Cpu).unwrap();
            (f(&ins) * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = (eval(h) - eval(-h)) / (2.0 * h);
        let err = (fd - g[idx]).abs();
        assert!(
            err <= tol * (1.0 + fd.abs()),
            "{name}: d/dx[{idx}] backward {} vs finite difference {fd} (input {which})",
            g[idx]
        );
    }
}

fn layer_norm_case(dtype: DType) -> Vec<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    vec![
        randn(&mut rng, &[3, 5, 48], dtype)
            .affine(2.0, 0.5)
            .unwrap(),
        randn(&mut rng, &[48], dtype).affine(0.5, 1.0).unwrap(),
        randn(&mut rng, &[48], dtype),
    ]
}

#[test]
fn layer_norm_matches_slow_and_finite_differences() {
    let fast = |t: &[Tensor]| ops::layer_norm(&t[0], Some(&t[1]), Some(&t[2]), 1e-5).unwrap();
    let slow = |t: &[Tensor]| ops::slow::layer_norm(&t[0], Some(&t[1]), Some(&t[2]), 1e-5).unwrap();
    compare(
        "layer_norm f64",
        &fast,
        &slow,
        &layer_norm_case(DType::F64),
        &[true; 3],
        1e-10,
    );
    compare(
        "layer_norm f32",
        &fast,
        &slow,
        &layer_norm_case(DType::F32),
        &[true; 3],
        2e-5,
    );
    let ins = layer_norm_case(DType::F64);
    for which in 0..3 {
        check_fd("layer_norm", &fast, &ins, which, 1e-6);
    }
    // Without affine parameters.
    let fast0 = |t: &[Tensor]| ops::layer_norm(&t[0], None, None, 1e-5).unwrap();
    let slow0 = |t: &[Tensor]| ops::slow::layer_norm(&t[0], None, None, 1e-5).unwrap();
    compare(
        "layer_norm plain",
        &fast0,
        &slow0,
        &ins[..1],
        &[true],
        1e-10,
    );
}

#[test]
fn linear_matches_slow_and_finite_differences() {
    // Shapes: 2-D and 3-D inputs, rows above the backward's 1024-row block (partial sums), with and without bias.
    for (shape, k, n) in [
        (vec![7usize, 5], 5usize, 9usize),
        (vec![3, 11, 6], 6, 4),
        (vec![1100, 3], 3, 5),
    ] {
        for dtype in [DType::F64, DType::F32] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(31 + k as u64);
            let x = randn(&mut rng, &shape, dtype);
            let w = randn(&mut rng, &[n, k], dtype);
            let b = randn(&mut rng, &[n], dtype);
            let tol = if dtype == DType::F64 { 1e-10 } else { 2e-5 };
            compare(
                "linear",
                &|t| ops::linear(&t[0], &t[1], Some(&t[2])).unwrap(),
                &|t| ops::slow::linear(&t[0], &t[1], Some(&t[2])).unwrap(),
                &[x.clone(), w.clone(), b],
                &[true, true, true],
                tol,
            );
            compare(
                "linear without bias",
                &|t| ops::linear(&t[0], &t[1], None).unwrap(),
                &|t| ops::slow::linear(&t[0], &t[1], None).unwrap(),
                &[x, w],
                &[true, true],
                tol,
            );
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let ins = [
        randn(&mut rng, &[2, 3, 4], DType::F64),
        randn(&mut rng, &[5, 4], DType::F64),
        randn(&mut rng, &[5], DType::F64),
    ];
    let f = |t: &[Tensor]| ops::linear(&t[0], &t[1], Some(&t[2])).unwrap();
    for which in 0..3 {
        check_fd("linear", &f, &ins, which, 1e-7);
    }
}

#[test]
fn linear_skips_gradients_of_constants() {
    // A frozen (non-variable) weight gets no gradient, and the input's gradient is still right.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let x = Var::from_tensor(&randn(&mut rng, &[6, 4], DType::F64)).unwrap();
    let w = randn(&mut rng, &[3, 4], DType::F64);
    let r = randn(&mut rng, &[6, 3], DType::F64);
    let loss = (ops::linear(x.as_tensor(), &w, None).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    assert!(grads.get(&w).is_none());
    let dx = grads.get(&x).unwrap();
    assert!(max_abs_diff(dx, &r.matmul(&w).unwrap()) < 1e-12);
}

#[test]
fn gelu_matches_slow_and_finite_differences() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let x64 = (randn(&mut rng, &[7, 300], DType::F64) * 3.0).unwrap();
    let fast = |t: &[Tensor]| ops::gelu(&t[0]).unwrap();
    let slow = |t: &[Tensor]| ops::slow::gelu(&t[0]).unwrap();
    // candle's own gelu_erf backward uses 0.398942 for 1/√(2π), a 1e-6 relative error.
    compare(
        "gelu f64",
        &fast,
        &slow,
        std::slice::from_ref(&x64),
        &[true],
        5e-6,
    );
    let x32 = x64.to_dtype(DType::F32).unwrap();
    compare("gelu f32", &fast, &slow, &[x32], &[true], 1e-5);
    check_fd("gelu", &fast, &[x64], 0, 1e-7);
}

fn rope_tables(t: usize, half: usize, dtype: DType) -> (Tensor, Tensor) {
    let mut c = Vec::new();
    let mut s = Vec::new();
    for p in 0..t {
        for i in 0..half {
            let a = p as f64 / 10000f64.powf(i as f64 / half as f64);
            c.push(a.cos());
            s.push(a.sin());
        }
    }
    let c = Tensor::from_vec(c, (t, half), &Device::Cpu).unwrap();
    let s = Tensor::from_vec(s, (t, half), &Device::Cpu).unwrap();
    (c.to_dtype(dtype).unwrap(), s.to_dtype(dtype).unwrap())
}

#[test]
fn rotary_matches_slow_on_strided_views() {
    for dtype in [DType::F64, DType::F32] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (b, t, h, hd) = (2, 9, 3, 8);
        // A fused-QKV-like buffer (b, t, 3, h, hd); the "query" is a strided (b, h, t, hd) view of it.
        let qkv = randn(&mut rng, &[b, t, 3, h, hd], dtype);
        let (c, s) = rope_tables(t, hd / 2, dtype);
        let view = |x: &Tensor| {
            x.narrow(2, 1, 1)
                .unwrap()
                .squeeze(2)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
        };
        let fast = |ts: &[Tensor]| ops::rotary(&view(&ts[0]), &ts[1], &ts[2]).unwrap();
        let slow = |ts: &[Tensor]| {
            ops::slow::rotary(&view(&ts[0]).contiguous().unwrap(), &ts[1], &ts[2]).unwrap()
        };
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-6 };
        compare(
            "rotary",
            &fast,
            &slow,
            &[qkv.clone(), c.clone(), s.clone()],
            &[true, false, false],
            tol,
        );
        if dtype == DType::F64 {
            check_fd("rotary", &fast, &[qkv, c, s], 0, 1e-8);
        }
    }
}

fn qkv(dtype: DType, b: usize, h: usize, t: usize, hd: usize) -> Vec<Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    (0..3)
        .map(|_| randn(&mut rng, &[b, h, t, hd], dtype))
        .collect()
}

#[test]
fn attention_matches_slow_without_dropout() {
    let fast = |t: &[Tensor]| ops::causal_attention(&t[0], &t[1], &t[2], 0.1, false).unwrap();
    let slow = |t: &[Tensor]| ops::slow::causal_attention(&t[0], &t[1], &t[2], 0.1, false).unwrap();
    // Sequence lengths around the 16-lane reductions, head dims 8 and 32.
    for &(t, hd) in &[(5, 8), (17, 32), (40, 16)] {
        compare(
            "attention f64",
            &fast,
            &slow,
            &qkv(DType::F64, 2, 3, t, hd),
            &[true; 3],
            1e-10,
        );
        compare(
            "attention f32",
            &fast,
            &slow,
            &qkv(DType::F32, 2, 3, t, hd),
            &[true; 3],
            2e-5,
        );
    }
    // Head dims 8 (generic kernel), 32 and 64 (specialised kernels).
    for hd in [8, 32, 64] {
        let ins = qkv(DType::F64, 1, 2, 19, hd);
        for which in 0..3 {
            check_fd("attention", &fast, &ins, which, 1e-7);
        }
    }
    compare(
        "attention hd64",
        &fast,
        &slow,
        &qkv(DType::F64, 1, 2, 70, 64),
        &[true; 3],
        1e-10,
    );
    // Transposed (strided) inputs give the same result as contiguous ones.
    let ins = qkv(DType::F32, 2, 3, 12, 8);
    let tr: Vec<Tensor> = ins
        .iter()
        .map(|x| {
            x.transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(1, 2)
                .unwrap()
        })
        .collect();
    let a = fast(&ins);
    let b = fast(&tr);
    assert!(max_abs_diff(&a, &b) == 0.0);
}

#[test]
fn rotary_attention_matches_slow_and_finite_differences() {
    // Head dims 32 (the compile-time kernel) and 6 (the generic one); the qkv input as a strided view too.
    for (b, t, h, hd) in [(2usize, 9usize, 3usize, 6usize), (1, 20, 2, 32)] {
        for dtype in [DType::F64, DType::F32] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(17 + hd as u64);
            let wide = randn(&mut rng, &[b, t, 3 * h * hd + 5], dtype);
            let qkv = wide.narrow(2, 2, 3 * h * hd).unwrap();
            let (cos, sin) = rope_tables(t, hd / 2, dtype);
            let tol = if dtype == DType::F64 { 1e-10 } else { 2e-5 };
            let (c, s) = (cos.clone(), sin.clone());
            compare(
                "rotary_attention",
                &|x| ops::rotary_attention(&x[0], h, &c, &s, 0.1, false).unwrap(),
                &|x| ops::slow::rotary_attention(&x[0], h, &c, &s, 0.1, false).unwrap(),
                &[qkv],
                &[true],
                tol,
            );
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let (t, h, hd) = (7, 2, 4);
    let qkv = randn(&mut rng, &[2, t, 3 * h * hd], DType::F64);
    let (cos, sin) = rope_tables(t, hd / 2, DType::F64);
    let f = |x: &[Tensor]| ops::rotary_attention(&x[0], h, &cos, &sin, 0.0, false).unwrap();
    check_fd("rotary_attention", &f, &[qkv], 0, 1e-7);
}

#[test]
fn rotary_attention_dropout_matches_the_composed_fused_ops() {
    // With dropout, the mask is drawn from the mode's seed: the fused op and the composition of the fused
    // rotary and attention ops (same seed) draw the same mask, forward and backward.
    let (b, t, h, hd) = (2usize, 12usize, 2usize, 32usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let qkv = randn(&mut rng, &[b, t, 3 * h * hd], DType::F64);
    let (cos, sin) = rope_tables(t, hd / 2, DType::F64);
    let composed = |x: &[Tensor]| {
        let q5 = x[0]
            .reshape((b, t, 3, h, hd))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap();
        let q = ops::rotary(&q5.get(0).unwrap().contiguous().unwrap(), &cos, &sin).unwrap();
        let k = ops::rotary(&q5.get(1).unwrap().contiguous().unwrap(), &cos, &sin).unwrap();
        let v = q5.get(2).unwrap().contiguous().unwrap();
        ops::causal_attention(&q, &k, &v, 0.3, ops::Mode::train(77))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, h * hd))
            .unwrap()
    };
    let fused = |x: &[Tensor]| {
        ops::rotary_attention(&x[0], h, &cos, &sin, 0.3, ops::Mode::train(77)).unwrap()
    };
    compare(
        "rotary_attention with dropout",
        &fused,
        &composed,
        &[qkv],
        &[true],
        1e-10,
    );
}

#[test]
fn composed_attention_matches_the_fused_op_with_dropout() {
    // The CUDA form of attention (matmuls around the softmax-and-dropout op) draws the fused CPU op's dropout mask
    // for the same seed: same outputs and gradients, with and without dropout, odd sequence lengths included.
    for &(t, hd, p) in &[(5usize, 8usize, 0.0f32), (19, 32, 0.3), (33, 16, 0.1)] {
        let composed = |x: &[Tensor]| {
            ops::causal_attention_composed_seeded(&x[0], &x[1], &x[2], p, 4321).unwrap()
        };
        let fused =
            |x: &[Tensor]| ops::causal_attention_seeded(&x[0], &x[1], &x[2], p, 4321).unwrap();
        compare(
            "composed attention f64",
            &composed,
            &fused,
            &qkv(DType::F64, 2, 3, t, hd),
            &[true; 3],
            1e-10,
        );
        compare(
            "composed attention f32",
            &composed,
            &fused,
            &qkv(DType::F32, 2, 3, t, hd),
            &[true; 3],
            2e-5,
        );
    }
    // Its own backward (the softmax op's) against finite differences, with dropout.
    let composed =
        |x: &[Tensor]| ops::causal_attention_composed_seeded(&x[0], &x[1], &x[2], 0.3, 99).unwrap();
    let ins = qkv(DType::F64, 1, 2, 13, 8);
    for which in 0..3 {
        check_fd("composed attention+dropout", &composed, &ins, which, 1e-7);
    }
}

#[test]
fn attention_dropout_is_consistent_and_unbiased() {
    let seeded =
        |t: &[Tensor]| ops::causal_attention_seeded(&t[0], &t[1], &t[2], 0.3, 1234).unwrap();
    // The backward regenerates the forward's mask: finite differences agree.
    for hd in [8, 32] {
        let ins = qkv(DType::F64, 1, 2, 21, hd);
        for which in 0..3 {
            check_fd("attention+dropout", &seeded, &ins, which, 1e-7);
        }
    }
    // Averaged over many masks, dropout leaves the output unbiased: with v = 1 every row of the output is the
    // mean of the kept scaled probabilities, whose expectation is 1.
    let (b, h, t, hd) = (4, 4, 64, 8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let q = randn(&mut rng, &[b, h, t, hd], DType::F32);
    let k = randn(&mut rng, &[b, h, t, hd], DType::F32);
    let v = Tensor::ones((b, h, t, hd), DType::F32, &Device::Cpu).unwrap();
    let y = ops::causal_attention(&q, &k, &v, 0.25, true).unwrap();
    let mean = y.mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!((mean - 1.0).abs() < 0.03, "mean {mean}");
    let y2 = ops::causal_attention(&q, &k, &v, 0.25, true).unwrap();
    assert!(max_abs_diff(&y, &y2) > 0.0, "two calls drew the same mask");
}

#[test]
fn cross_entropy_matches_slow_and_finite_differences() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let (rows, vocab) = (37, 103);
    let logits = (randn(&mut rng, &[rows, vocab], DType::F64) * 3.0).unwrap();
    let t: Vec<u32> = (0..rows)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    let targets = Tensor::from_vec(t, rows, &Device::Cpu).unwrap();
    let tg = targets.clone();
    let fast = move |ts: &[Tensor]| ops::cross_entropy(&ts[0], &tg).unwrap();
    let tg = targets.clone();
    let slow = move |ts: &[Tensor]| ops::slow::cross_entropy(&ts[0], &tg).unwrap();
    compare(
        "cross_entropy f64",
        &fast,
        &slow,
        std::slice::from_ref(&logits),
        &[true],
        1e-12,
    );
    let l32 = logits.to_dtype(DType::F32).unwrap();
    compare("cross_entropy f32", &fast, &slow, &[l32], &[true], 1e-5);
    check_fd("cross_entropy", &fast, &[logits], 0, 1e-8);
    // An out-of-range target is an error, not a panic.
    let bad = Tensor::from_vec(vec![0u32, vocab as u32], 2, &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, vocab), DType::F32, &Device::Cpu).unwrap();
    assert!(ops::cross_entropy(&x, &bad).is_err());
}

#[test]
fn linear_cross_entropy_matches_slow_and_finite_differences() {
    for dtype in [DType::F64, DType::F32] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(41);
        let (rows, d, vocab) = (1100usize, 6usize, 37usize);
        let h = randn(&mut rng, &[2, rows / 2, d], dtype);
        let w = randn(&mut rng, &[vocab, d], dtype);
        let t: Vec<u32> = (0..rows)
            .map(|_| rng.random_range(0..vocab as u32))
            .collect();
        let t = Tensor::from_vec(t, (2, rows / 2), &Device::Cpu).unwrap();
        let tol = if dtype == DType::F64 { 1e-10 } else { 2e-5 };
        compare(
            "linear_cross_entropy",
            &|x| ops::linear_cross_entropy(&x[0], &x[1], &t).unwrap(),
            &|x| ops::slow::linear_cross_entropy(&x[0], &x[1], &t).unwrap(),
            &[h, w],
            &[true, true],
            tol,
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let ins = [
        randn(&mut rng, &[5, 4], DType::F64),
        randn(&mut rng, &[9, 4], DType::F64),
    ];
    let t = Tensor::new(&[0u32, 8, 3, 3, 5], &Device::Cpu).unwrap();
    let f = |x: &[Tensor]| ops::linear_cross_entropy(&x[0], &x[1], &t).unwrap();
    check_fd("linear_cross_entropy", &f, &ins, 0, 1e-7);
    check_fd("linear_cross_entropy", &f, &ins, 1, 1e-7);
    // A target out of range is an error, not a panic.
    let bad = Tensor::new(&[0u32, 9, 3, 3, 5], &Device::Cpu).unwrap();
    assert!(ops::linear_cross_entropy(&ins[0], &ins[1], &bad).is_err());
}

#[test]
fn dropout_masks_are_reused_by_the_backward() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let x = randn(&mut rng, &[64, 129], DType::F64);
    let f = |t: &[Tensor]| ops::dropout_seeded(&t[0], 0.2, 77).unwrap();
    check_fd("dropout", &f, std::slice::from_ref(&x), 0, 1e-9);
    let y = ops::dropout(&x, 0.2, true).unwrap();
    let zeros = y
        .eq(0.0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .mean_all()
        .unwrap();
    let frac = zeros.to_scalar::<f64>().unwrap();
    assert!((frac - 0.2).abs() < 0.02, "dropped fraction {frac}");
    // Kept elements are scaled by 1/(1-p).
    let ratio = (y / &x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!(ratio.iter().all(|&r| r == 0.0 || (r - 1.25).abs() < 1e-7));
    assert_eq!(
        max_abs_diff(&ops::dropout(&x, 0.2, false).unwrap(), &x),
        0.0
    );
}

#[test]
fn residual_dropout_matches_residual_plus_dropout() {
    // Same seed, same mask: the fused node equals `x + dropout(a)` built from two nodes, values and both
    // gradients; without training it is the plain sum.
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let x = randn(&mut rng, &[3, 1500, 7], DType::F64);
    let a = randn(&mut rng, &[3, 1500, 7], DType::F64);
    let fused =
        |t: &[Tensor]| ops::residual_dropout(&t[0], &t[1], 0.25, ops::Mode::train(5)).unwrap();
    let composed =
        |t: &[Tensor]| (&t[0] + ops::dropout(&t[1], 0.25, ops::Mode::train(5)).unwrap()).unwrap();
    compare(
        "residual_dropout",
        &fused,
        &composed,
        &[x.clone(), a.clone()],
        &[true, true],
        1e-12,
    );
    let y = fused(&[x.clone(), a.clone()]);
    let kept = ((&y - &x)
        .unwrap()
        .ne(0.0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap())
    .mean_all()
    .unwrap()
    .to_scalar::<f64>()
    .unwrap();
    assert!((kept - 0.75).abs() < 0.02, "kept fraction {kept}");
    let eval = ops::residual_dropout(&x, &a, 0.25, false).unwrap();
    assert!(max_abs_diff(&eval, &(&x + &a).unwrap()) == 0.0);
}

#[test]
fn half_precision_falls_back_to_the_slow_twins() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    for dtype in [DType::F16, DType::BF16] {
        let x = randn(&mut rng, &[4, 32], dtype);
        let w = Tensor::ones(32, dtype, &Device::Cpu).unwrap();
        let b = Tensor::zeros(32, dtype, &Device::Cpu).unwrap();
        let a = ops::layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap();
        let s = ops::slow::layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap();
        assert_eq!(max_abs_diff(&a, &s), 0.0);
        assert_eq!(
            max_abs_diff(&ops::gelu(&x).unwrap(), &ops::slow::gelu(&x).unwrap()),
            0.0
        );
        let q = randn(&mut rng, &[1, 2, 6, 8], dtype);
        let y = ops::causal_attention(&q, &q, &q, 0.0, false).unwrap();
        assert_eq!(y.dims(), [1, 2, 6, 8]);
        let (c, s) = rope_tables(6, 4, dtype);
        let r = ops::rotary(&q, &c, &s).unwrap();
        assert_eq!(
            max_abs_diff(&r, &ops::slow::rotary(&q, &c, &s).unwrap()),
            0.0
        );
    }
}

#[test]
fn bad_shapes_are_errors() {
    let x = Tensor::zeros((2, 3, 5, 8), DType::F32, &Device::Cpu).unwrap();
    let (c, s) = rope_tables(4, 4, DType::F32); // wrong sequence length
    assert!(ops::rotary(&x, &c, &s).is_err());
    let k = Tensor::zeros((2, 3, 6, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(ops::causal_attention(&x, &k, &k, 0.0, false).is_err());
    let w = Tensor::ones(7, DType::F32, &Device::Cpu).unwrap();
    assert!(ops::layer_norm(&x, Some(&w), None, 1e-5).is_err());
    let _ = x.sum_keepdim(D::Minus1).unwrap();
}
