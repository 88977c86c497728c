//! Tests of the Walsh-Hadamard transform against references written here, independently of the crate:
//! a dense Sylvester matrix built by its recursion (small n), a direct sum with the (-1)^popcount(i & j) entries
//! (large n), finite differences in f64 for the gradient, and the portable kernel for the SIMD kernels.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_structured::fwht::{
    check_len, fwht_inplace, fwht_rows_inplace, fwht_rows_inplace_with, FwhtFloat, Isa, MAX_LOG2,
};
use candle_structured::hadamard_transform;
use half::{bf16, f16};

/// Deterministic uniform values in [-1, 1), never exactly zero (xorshift64*).
fn random(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            let v = 2.0 * u - 1.0;
            if v == 0.0 {
                0.5
            } else {
                v
            }
        })
        .collect()
}

/// The Sylvester matrix by its recursion H_2n = [[H, H], [H, -H]], row-major, in f64.
fn sylvester(n: usize) -> Vec<f64> {
    let mut h = vec![1.0];
    let mut m = 1;
    while m < n {
        let mut next = vec![0.0; 4 * m * m];
        for i in 0..m {
            for j in 0..m {
                let v = h[i * m + j];
                next[i * 2 * m + j] = v;
                next[i * 2 * m + j + m] = v;
                next[(i + m) * 2 * m + j] = v;
                next[(i + m) * 2 * m + j + m] = -v;
            }
        }
        h = next;
        m *= 2;
    }
    h
}

/// Reference `scale · row · H_n` in f64 for the output columns `cols` of every row (dense matrix for small n,
/// direct sums with (-1)^popcount(i & j) otherwise). Returns (value, Σ|terms|) per (row, col).
fn reference(x: &[f64], n: usize, scale: f64, cols: &[usize]) -> Vec<(f64, f64)> {
    let h = (n <= 1024).then(|| sylvester(n));
    let mut out = Vec::new();
    for row in x.chunks(n) {
        for &j in cols {
            let (mut v, mut a) = (0.0, 0.0);
            for (i, &xi) in row.iter().enumerate() {
                let sign = match &h {
                    Some(h) => h[i * n + j],
                    None => {
                        if (i & j).count_ones() % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        }
                    }
                };
                v += sign * xi;
                a += xi.abs();
            }
            out.push((scale * v, scale.abs() * a));
        }
    }
    out
}

/// The output columns checked for a row of length n: all of them up to 1024, else 48 spread ones.
fn columns(n: usize, seed: u64) -> Vec<usize> {
    if n <= 1024 {
        (0..n).collect()
    } else {
        let mut c: Vec<usize> = random(46, seed)
            .iter()
            .map(|u| ((u + 1.0) / 2.0 * n as f64) as usize % n)
            .collect();
        c.push(0);
        c.push(n - 1);
        c
    }
}

/// Unit roundoff of the arithmetic and of the final rounding for each dtype.
fn roundoff(dtype: DType) -> (f64, f64) {
    let u32_ = f64::powi(2.0, -24);
    match dtype {
        DType::F64 => (f64::powi(2.0, -53), 0.0),
        DType::F32 => (u32_, 0.0),
        DType::F16 => (u32_, f64::powi(2.0, -11)),
        DType::BF16 => (u32_, f64::powi(2.0, -8)),
        _ => unreachable!(),
    }
}

/// Checks `hadamard_transform(xs)` (xs of any layout) against the f64 reference of the values xs holds.
fn check_against_reference(xs: &Tensor, scale: f64, seed: u64) {
    let n = xs.dim(D::Minus1).unwrap();
    let dtype = xs.dtype();
    let y = hadamard_transform(xs, scale).unwrap();
    assert_eq!(y.dims(), xs.dims());
    assert_eq!(y.dtype(), dtype);
    let rows = xs.elem_count() / n;
    let xv: Vec<f64> = xs
        .to_dtype(DType::F64)
        .unwrap()
        .reshape((rows, n))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let yv: Vec<f64> = y
        .to_dtype(DType::F64)
        .unwrap()
        .reshape((rows, n))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let cols = columns(n, seed);
    let expected = reference(&xv, n, scale, &cols);
    let (u, out) = roundoff(dtype);
    let stages = n.trailing_zeros() as f64;
    for (r, chunk) in expected.chunks(cols.len()).enumerate() {
        for (&j, &(want, abs)) in cols.iter().zip(chunk) {
            let got = yv[r * n + j];
            // log2(n) roundings of partial sums bounded by Σ|x|, one for the scale, then the output rounding.
            let tol =
                (stages + 2.0) * u * abs + out * (want.abs() + (stages + 2.0) * u * abs) + 1e-300;
            assert!(
                (got - want).abs() <= tol,
                "{dtype:?} shape {:?} row {r} col {j}: got {got}, want {want} (tol {tol})",
                xs.dims()
            );
        }
    }
}

fn tensor(values: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

#[test]
fn matches_dense_reference_every_dtype_size_and_rank() {
    let leading: [&[usize]; 4] = [&[], &[3], &[2, 3], &[2, 1, 2]];
    for (d, &dtype) in DTYPES.iter().enumerate() {
        for k in 0..=16u32 {
            let n = 1usize << k;
            let lead = leading[(k as usize + d) % 4];
            let mut shape = lead.to_vec();
            shape.push(n);
            let len: usize = shape.iter().product();
            let seed = 100 * d as u64 + k as u64;
            let scale = if k % 2 == 0 {
                1.0 / (n as f64).sqrt()
            } else {
                0.75
            };
            check_against_reference(&tensor(&random(len, seed), &shape, dtype), scale, seed);
        }
    }
}

#[test]
fn every_rank_from_one_to_four() {
    for (i, lead) in [&[][..], &[5], &[2, 3], &[2, 3, 2]].iter().enumerate() {
        for &dtype in &DTYPES {
            let mut shape = lead.to_vec();
            shape.push(64);
            let len: usize = shape.iter().product();
            let x = tensor(&random(len, 7 + i as u64), &shape, dtype);
            check_against_reference(&x, 0.125, i as u64);
        }
    }
}

#[test]
fn non_contiguous_inputs() {
    for &dtype in &DTYPES {
        // Transposed: (n, rows) viewed as (rows, n).
        let base = tensor(&random(256 * 6, 1), &[256, 6], dtype);
        let t = base.t().unwrap();
        assert!(!t.is_contiguous());
        check_against_reference(&t, 1.0 / 16.0, 1);
        // Narrowed last dimension: 32 of 40 columns, from column 5.
        let wide = tensor(&random(4 * 40, 2), &[4, 40], dtype);
        let narrow = wide.narrow(1, 5, 32).unwrap();
        assert!(!narrow.is_contiguous());
        check_against_reference(&narrow, 1.0, 2);
        // Narrowed leading dimension of a 3-D tensor, then permuted leading dimensions.
        let cube = tensor(&random(5 * 3 * 128, 3), &[5, 3, 128], dtype);
        let view = cube.narrow(0, 1, 3).unwrap().transpose(0, 1).unwrap();
        assert!(!view.is_contiguous());
        check_against_reference(&view, 0.5, 3);
        // A broadcast (stride-0) row.
        let row = tensor(&random(16, 4), &[1, 16], dtype);
        let bcast = row.broadcast_as((3, 16)).unwrap();
        check_against_reference(&bcast, 0.25, 4);
    }
}

#[test]
fn half_precision_is_computed_in_f32_and_rounded_once() {
    let n = 1024;
    let v = random(8 * n, 9);
    let x32: Vec<f32> = v.iter().map(|&a| a as f32).collect();
    let xf16: Vec<f16> = x32.iter().map(|&a| f16::from_f32(a)).collect();
    let xbf16: Vec<bf16> = x32.iter().map(|&a| bf16::from_f32(a)).collect();
    let scale = 1.0 / 32.0;
    // f16
    let mut w: Vec<f32> = xf16.iter().map(|a| a.to_f32()).collect();
    fwht_rows_inplace(&mut w, n, scale as f32).unwrap();
    let y = hadamard_transform(
        &Tensor::from_vec(xf16, (8, n), &Device::Cpu).unwrap(),
        scale,
    )
    .unwrap();
    let got: Vec<f16> = y.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f16> = w.iter().map(|&a| f16::from_f32(a)).collect();
    assert_eq!(got, want);
    // bf16
    let mut w: Vec<f32> = xbf16.iter().map(|a| a.to_f32()).collect();
    fwht_rows_inplace(&mut w, n, scale as f32).unwrap();
    let y = hadamard_transform(
        &Tensor::from_vec(xbf16, (8, n), &Device::Cpu).unwrap(),
        scale,
    )
    .unwrap();
    let got: Vec<bf16> = y.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<bf16> = w.iter().map(|&a| bf16::from_f32(a)).collect();
    assert_eq!(got, want);
}

#[test]
fn transform_of_identity_is_sylvester_and_squares_to_n_identity() {
    for k in 0..=8u32 {
        let n = 1usize << k;
        for dtype in [DType::F32, DType::F64] {
            let eye = Tensor::eye(n, dtype, &Device::Cpu).unwrap();
            let h = hadamard_transform(&eye, 1.0).unwrap();
            let hv: Vec<f64> = h
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(hv, sylvester(n), "H_{n} {dtype:?}");
            // H · H = n · I: transforming the rows of H again (exact in floating point: small integers).
            let hh = hadamard_transform(&h, 1.0).unwrap();
            let hhv: Vec<f64> = hh
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { n as f64 } else { 0.0 };
                    assert_eq!(hhv[i * n + j], want, "(H·H)[{i},{j}] for n = {n}");
                }
            }
        }
    }
    // The orthonormal transform is an involution on random data.
    let n = 4096;
    let x = tensor(&random(3 * n, 5), &[3, n], DType::F64);
    let s = 1.0 / (n as f64).sqrt();
    let back = hadamard_transform(&hadamard_transform(&x, s).unwrap(), s).unwrap();
    let err: f64 = (back - &x)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(err < 1e-13, "involution error {err}");
}

/// loss(x) = Σ w ⊙ tanh(scale · x · H) — a non-linear graph around the transform.
fn loss(x: &Tensor, w: &Tensor, scale: f64) -> Tensor {
    (hadamard_transform(x, scale).unwrap().tanh().unwrap() * w)
        .unwrap()
        .sum_all()
        .unwrap()
}

#[test]
fn gradient_matches_finite_differences_and_the_transposed_transform() {
    let (rows, n) = (3, 16);
    let scale = 0.3;
    let x = Var::from_tensor(&tensor(&random(rows * n, 21), &[rows, n], DType::F64)).unwrap();
    let w = tensor(&random(rows * n, 22), &[rows, n], DType::F64);
    let grads = loss(x.as_tensor(), &w, scale).backward().unwrap();
    let g: Vec<f64> = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let x0: Vec<f64> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let eps = 1e-6;
    for i in 0..rows * n {
        let mut xp = x0.clone();
        let mut xm = x0.clone();
        xp[i] += eps;
        xm[i] -= eps;
        let lp: f64 = loss(&tensor(&xp, &[rows, n], DType::F64), &w, scale)
            .to_scalar()
            .unwrap();
        let lm: f64 = loss(&tensor(&xm, &[rows, n], DType::F64), &w, scale)
            .to_scalar()
            .unwrap();
        let fd = (lp - lm) / (2.0 * eps);
        assert!(
            (g[i] - fd).abs() < 1e-7,
            "d loss / d x[{i}]: {} vs finite difference {fd}",
            g[i]
        );
    }

    // Linear loss Σ w ⊙ y: the gradient is exactly hadamard_transform(w, scale), every float dtype.
    for &dtype in &DTYPES {
        let x = Var::from_tensor(&tensor(&random(4 * 256, 23), &[4, 256], dtype)).unwrap();
        let w = tensor(&random(4 * 256, 24), &[4, 256], dtype);
        let y = hadamard_transform(x.as_tensor(), 1.0 / 16.0).unwrap();
        let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        let want = hadamard_transform(&w, 1.0 / 16.0).unwrap();
        let diff: f64 = (g.to_dtype(DType::F64).unwrap() - want.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0, "{dtype:?}");
    }
}

fn error_message(r: candle_core::Result<Tensor>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got a tensor of shape {:?}", t.dims()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::Cpu;
    // Not a power of two: the message names the size and its neighbouring powers of two.
    for (n, below, above) in [
        (3usize, 2usize, 4usize),
        (6, 4, 8),
        (100, 64, 128),
        (1000, 512, 1024),
    ] {
        let x = Tensor::from_vec(
            random(2 * n, 1)
                .iter()
                .map(|&v| v as f32)
                .collect::<Vec<_>>(),
            (2, n),
            &dev,
        )
        .unwrap();
        let msg = error_message(hadamard_transform(&x, 1.0));
        for s in [n, below, above] {
            assert!(msg.contains(&s.to_string()), "{msg:?} should name {s}");
        }
    }
    // An empty last dimension is not a power of two either.
    assert!(hadamard_transform(&Tensor::zeros((2, 0), DType::F32, &dev).unwrap(), 1.0).is_err());
    // Rank 0.
    let msg = error_message(hadamard_transform(&Tensor::new(1.5f32, &dev).unwrap(), 1.0));
    assert!(msg.contains("rank 0"), "{msg}");
    // Integer dtypes.
    for dtype in [DType::U8, DType::U32, DType::I64] {
        let x = Tensor::ones((2, 8), dtype, &dev).unwrap();
        let msg = error_message(hadamard_transform(&x, 1.0));
        assert!(msg.contains("dtype"), "{msg}");
    }
    // Above 2^24: a broadcast view (no memory behind it) and a real 2^25-element f16 tensor (64 MiB).
    let big = 1usize << (MAX_LOG2 + 1);
    let view = Tensor::new(&[0.5f32], &dev)
        .unwrap()
        .broadcast_as((1, big))
        .unwrap();
    let msg = error_message(hadamard_transform(&view, 1.0));
    assert!(
        msg.contains(&big.to_string()) && msg.contains("2^24"),
        "{msg}"
    );
    let real = Tensor::ones(big, DType::F16, &dev).unwrap();
    assert!(hadamard_transform(&real, 1.0).is_err());
    assert!(check_len(1 << MAX_LOG2).is_ok());
    assert!(check_len(big).is_err());
    assert!(check_len(usize::MAX).is_err());
}

#[test]
fn slice_api_errors() {
    // Ragged rows.
    let mut v = vec![1f32; 10];
    let msg = fwht_rows_inplace(&mut v, 4, 1.0).unwrap_err().to_string();
    assert!(msg.contains("10") && msg.contains('4'), "{msg}");
    assert_eq!(v, vec![1f32; 10], "a refused call leaves the data alone");
    let mut v = vec![1f64; 12];
    assert!(fwht_rows_inplace(&mut v, 8, 1.0).is_err());
    // Row length not a power of two, or zero.
    let mut v = vec![1f64; 12];
    assert!(fwht_rows_inplace(&mut v, 6, 1.0).is_err());
    assert!(fwht_rows_inplace(&mut v, 0, 1.0).is_err());
    let mut v = vec![1f32; 12];
    assert!(fwht_inplace(&mut v, 1.0).is_err());
    assert!(fwht_inplace(&mut [0f32; 0], 1.0).is_err());
    // An empty batch of valid rows is fine.
    assert!(fwht_rows_inplace(&mut [0f32; 0], 8, 1.0).is_ok());
    // Every Isa is accepted, available or not (an unavailable one falls back to the portable kernel).
    for isa in Isa::ALL {
        let mut v = vec![1f32; 12];
        assert!(fwht_rows_inplace_with(isa, true, &mut v, 5, 1.0).is_err());
    }
}

#[test]
fn slice_api_matches_reference() {
    for k in [0u32, 1, 3, 5, 9, 13] {
        let n = 1usize << k;
        let v = random(3 * n, 40 + k as u64);
        let mut y: Vec<f64> = v.clone();
        fwht_rows_inplace(&mut y, n, 0.5).unwrap();
        let cols = columns(n, 1);
        let want = reference(&v, n, 0.5, &cols);
        for (r, chunk) in want.chunks(cols.len()).enumerate() {
            for (&j, &(w, a)) in cols.iter().zip(chunk) {
                assert!(
                    (y[r * n + j] - w).abs() <= 1e-14 * a.max(1.0),
                    "n {n} row {r} col {j}"
                );
            }
        }
        let mut one: Vec<f64> = v[..n].to_vec();
        fwht_inplace(&mut one, 0.5).unwrap();
        assert_eq!(one, y[..n]);
    }
}

/// Every available instruction set gives the portable kernel's results bit for bit (same additions, same order),
/// one row and batches, serial and parallel.
#[test]
fn simd_kernels_agree_with_portable() {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.is_available()).collect();
    eprintln!("instruction sets tested: {isas:?}");
    // Up to 2^22: rows of several MiB, where every cache-blocking pass is used.
    for k in 0..=22u32 {
        let n = 1usize << k;
        let rows = if k <= 12 {
            5
        } else if k <= 16 {
            2
        } else {
            1
        };
        let scale64 = if k % 2 == 0 {
            1.0
        } else {
            1.0 / (n as f64).sqrt()
        };
        let v = random(rows * n, 300 + k as u64);
        let x32: Vec<f32> = v.iter().map(|&a| a as f32).collect();
        let mut want32 = x32.clone();
        fwht_rows_inplace_with(Isa::Portable, false, &mut want32, n, scale64 as f32).unwrap();
        let mut want64 = v.clone();
        fwht_rows_inplace_with(Isa::Portable, false, &mut want64, n, scale64).unwrap();
        for &isa in &isas {
            for parallel in [false, k <= 16] {
                let mut got32 = x32.clone();
                fwht_rows_inplace_with(isa, parallel, &mut got32, n, scale64 as f32).unwrap();
                assert!(got32 == want32, "f32 {isa:?} n = 2^{k} parallel {parallel}");
                let mut got64 = v.clone();
                fwht_rows_inplace_with(isa, parallel, &mut got64, n, scale64).unwrap();
                assert!(got64 == want64, "f64 {isa:?} n = 2^{k} parallel {parallel}");
            }
            // One row alone takes the single-row path (no chunking; the straight-line kernels for short rows).
            let mut one32 = x32[..n].to_vec();
            fwht_rows_inplace_with(isa, true, &mut one32, n, scale64 as f32).unwrap();
            assert!(one32 == want32[..n], "f32 {isa:?} n = 2^{k} one row");
            let mut one64 = v[..n].to_vec();
            fwht_rows_inplace_with(isa, true, &mut one64, n, scale64).unwrap();
            assert!(one64 == want64[..n], "f64 {isa:?} n = 2^{k} one row");
        }
        // And the portable kernel itself is right (spot check against the direct sums).
        let cols = columns(n, k as u64);
        for (r, chunk) in reference(&v, n, scale64, &cols)
            .chunks(cols.len())
            .enumerate()
        {
            for (&j, &(w, a)) in cols.iter().zip(chunk) {
                assert!(
                    (want64[r * n + j] - w).abs() <= 1e-14 * a.max(1.0),
                    "portable n 2^{k}"
                );
            }
        }
    }
}

/// Every offset within a 64-byte line of a row of `2^k` elements of `T`: each instruction set, in place, against the
/// portable kernel bit for bit; the elements around the row stay as they were.
fn check_offsets<T>(k: u32, seed: u64)
where
    T: FwhtFloat + candle_core::WithDType + From<f32> + PartialEq + std::fmt::Debug,
{
    let per_line = 64 / std::mem::size_of::<T>();
    check_offsets_in::<T>(k, seed, 0..per_line);
}

/// [`check_offsets`] at the given offsets (in elements) only.
fn check_offsets_in<T>(k: u32, seed: u64, offsets: impl IntoIterator<Item = usize>)
where
    T: FwhtFloat + candle_core::WithDType + From<f32> + PartialEq + std::fmt::Debug,
{
    let n = 1usize << k;
    let per_line = 64 / std::mem::size_of::<T>();
    let x: Vec<T> = random(n + 2 * per_line, seed)
        .iter()
        .map(|&a| T::from(a as f32))
        .collect();
    let scale = T::from(1.0 / (n as f32).sqrt());
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.is_available()).collect();
    for offset in offsets {
        let mut want = x.clone();
        fwht_rows_inplace_with(
            Isa::Portable,
            false,
            &mut want[offset..offset + n],
            n,
            scale,
        )
        .unwrap();
        for &isa in &isas {
            let mut got = x.clone();
            fwht_rows_inplace_with(isa, false, &mut got[offset..offset + n], n, scale).unwrap();
            assert!(
                got == want,
                "{:?} {isa:?} n = 2^{k} offset {offset}",
                T::DTYPE
            );
        }
    }
}

/// The candle op on one row of `2^k` elements of `T` (from its input into a fresh output buffer, wherever the
/// allocator put it) against the portable kernel in place, bit for bit.
fn check_op_from_input<T>(k: u32, seed: u64)
where
    T: FwhtFloat + candle_core::WithDType + From<f32> + PartialEq + std::fmt::Debug,
{
    let n = 1usize << k;
    let x: Vec<T> = random(n, seed).iter().map(|&a| T::from(a as f32)).collect();
    let scale = 0.375; // exact in f32 and f64, so both sides multiply by the same number
    let mut want = x.clone();
    fwht_rows_inplace_with(Isa::Portable, false, &mut want, n, T::from(scale as f32)).unwrap();
    let got: Vec<T> = hadamard_transform(&Tensor::new(&x[..], &Device::Cpu).unwrap(), scale)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(got == want, "op {:?} n = 2^{k}", T::DTYPE);
}

/// Rows that do not start on a cache line (rows beyond L1 go through an aligned scratch buffer then) give the
/// portable kernel's results bit for bit, at every offset within a line, and leave the elements around them alone;
/// so does the candle op, which transforms from its input into a new buffer.
#[test]
fn misaligned_rows_agree_with_portable() {
    // Just beyond the L1 block, and beyond the L2 block, of each kernel (f32: 2^12 and 2^18; f64: 2^11 and 2^17).
    for k in [12u32, 13, 19] {
        check_offsets::<f32>(k, 700 + k as u64);
    }
    for k in [11u32, 12, 18] {
        check_offsets::<f64>(k, 800 + k as u64);
    }
    // Rows beyond 4 MiB go through a scratch of one L2 block: with one pass across blocks (f32 2^21, f64 2^20) and
    // with several, in column chunks (f32 2^22, f64 2^21); aligned, 1 element and 16 bytes past a line.
    for k in [21u32, 22] {
        check_offsets_in::<f32>(k, 700 + k as u64, [0, 1, 4]);
    }
    for k in [20u32, 21] {
        check_offsets_in::<f64>(k, 800 + k as u64, [0, 1, 2]);
    }
    // From the input into a new output buffer: both paths across blocks, in and beyond the row scratch's 4 MiB.
    for k in [6u32, 11, 12, 13, 18, 19, 20, 21, 22] {
        check_op_from_input::<f32>(k, 900 + k as u64);
    }
    for k in [6u32, 11, 12, 13, 18, 19, 20, 21] {
        check_op_from_input::<f64>(k, 950 + k as u64);
    }
}

/// Every kernel runs on a thread with a small stack (256 KiB; test threads get 2 MiB, rayon's workers as much), in
/// optimised and debug builds alike: unoptimised, the kernels' generic passes once took megabytes of stack.
#[test]
fn kernels_fit_a_small_stack() {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.is_available()).collect();
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            for &isa in &isas {
                for k in [3u32, 6, 7, 12, 18, 21] {
                    let n = 1usize << k;
                    let mut x32: Vec<f32> =
                        random(n, 40 + k as u64).iter().map(|&a| a as f32).collect();
                    fwht_rows_inplace_with(isa, false, &mut x32, n, 0.5).unwrap();
                    let mut x64 = random(n, 60 + k as u64);
                    fwht_rows_inplace_with(isa, false, &mut x64, n, 0.5).unwrap();
                    assert!(
                        x32.iter().chain(&[0.0]).all(|v| v.is_finite()),
                        "{isa:?} 2^{k}"
                    );
                }
            }
        })
        .unwrap()
        .join()
        .expect("a kernel overflowed a 256 KiB stack");
}

#[test]
fn large_batches_use_the_parallel_path_correctly() {
    // 300 rows of 256: above the threading threshold; compare with one row at a time.
    let (rows, n) = (300, 256);
    let v: Vec<f32> = random(rows * n, 77).iter().map(|&a| a as f32).collect();
    let mut all = v.clone();
    fwht_rows_inplace(&mut all, n, 0.0625).unwrap();
    for (r, row) in v.chunks(n).enumerate() {
        let mut one = row.to_vec();
        fwht_inplace(&mut one, 0.0625).unwrap();
        assert_eq!(one, all[r * n..(r + 1) * n], "row {r}");
    }
    let x = Tensor::from_vec(v, (3, 100, n), &Device::Cpu).unwrap();
    let y: Vec<f32> = hadamard_transform(&x, 0.0625)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(y, all);
}

/// A seeded batch of `rows` rows of `n` f32, and its transform computed one row at a time.
fn batch_and_row_by_row(rows: usize, n: usize, seed: u64, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let v: Vec<f32> = random(rows * n, seed).iter().map(|&a| a as f32).collect();
    let mut want = v.clone();
    for row in want.chunks_mut(n) {
        fwht_inplace(row, scale).unwrap();
    }
    (v, want)
}

/// The parallel paths: called from outside any pool (this test thread; the transform's helper threads take chunks
/// from the back while the caller takes them from the front) and from inside pools of 2 and 3 threads (rayon scope, one span per
/// thread), for batches of rows shorter and longer than a chunk; every row must equal its one-row transform.
#[test]
fn parallel_paths_match_row_by_row() {
    for (rows, n) in [(64usize, 256usize), (37, 1024), (5, 8192), (64, 16384)] {
        let (v, want) = batch_and_row_by_row(rows, n, 91 + n as u64, 0.5);
        let mut outside = v.clone();
        fwht_rows_inplace(&mut outside, n, 0.5).unwrap();
        assert!(outside == want, "outside any pool, {rows} × {n}");
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut inside = v.clone();
            pool.install(|| fwht_rows_inplace(&mut inside, n, 0.5).unwrap());
            assert!(
                inside == want,
                "inside a {threads}-thread pool, {rows} × {n}"
            );
        }
    }
}

/// The transform's helper threads (used by callers outside any rayon pool): streams of back-to-back batches (the
/// helpers spin between them), batches large enough to wake parked helpers, row counts that do not split evenly,
/// and several threads calling at once (one of them uses the helpers, the others run alone); every batch must
/// equal its row-by-row transform.
#[test]
fn helper_threads_match_row_by_row_under_concurrent_callers() {
    let cases: Vec<(usize, usize)> =
        vec![(64, 128), (37, 1024), (300, 64), (1025, 1024), (3, 8192)];
    let expected: Vec<(Vec<f32>, Vec<f32>)> = cases
        .iter()
        .map(|&(rows, n)| batch_and_row_by_row(rows, n, 123 + rows as u64, 0.25))
        .collect();
    std::thread::scope(|scope| {
        for caller in 0..3 {
            let (cases, expected) = (&cases, &expected);
            scope.spawn(move || {
                for round in 0..20 {
                    let i = (round + caller) % cases.len();
                    let ((rows, n), (v, want)) = (cases[i], &expected[i]);
                    let mut got = v.clone();
                    fwht_rows_inplace(&mut got, n, 0.25).unwrap();
                    assert!(got == *want, "caller {caller}, round {round}, {rows} × {n}");
                }
            });
        }
    });
}
