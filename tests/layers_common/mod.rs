//! Shared helpers of the layer tests: explicit dense twins in f64 and finite differences.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use candle_structured::AdaptiveFastFood;

pub type Mat = Vec<Vec<f64>>;

/// Seeded N(0,1) tensor in f64 (candle's CPU RNG cannot be seeded, so draw here).
pub fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        // xorshift64*
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    };
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let (u1, u2) = (1.0 - next(), next());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// The Sylvester Hadamard matrix, built here independently of the crate.
pub fn hadamard(n: usize) -> Mat {
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    if (i & j).count_ones() % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                })
                .collect()
        })
        .collect()
}

pub fn matmul(a: &Mat, b: &Mat) -> Mat {
    let (n, k, m) = (a.len(), b.len(), b[0].len());
    let mut c = vec![vec![0.0; m]; n];
    for i in 0..n {
        for l in 0..k {
            let x = a[i][l];
            for j in 0..m {
                c[i][j] += x * b[l][j];
            }
        }
    }
    c
}

pub fn diag(v: &[f64]) -> Mat {
    let n = v.len();
    (0..n)
        .map(|i| (0..n).map(|j| if i == j { v[i] } else { 0.0 }).collect())
        .collect()
}

pub fn transpose(a: &Mat) -> Mat {
    (0..a[0].len())
        .map(|j| a.iter().map(|r| r[j]).collect())
        .collect()
}

pub fn vec1(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

pub fn vec2(t: &Tensor) -> Result<Mat> {
    t.to_dtype(DType::F64)?.to_vec2::<f64>()
}

/// `x (rows, in) · Wᵀ + b` with `W (out, in)`.
pub fn affine(x: &Mat, w: &Mat, b: Option<&[f64]>) -> Mat {
    let mut y = matmul(x, &transpose(w));
    if let Some(b) = b {
        for r in y.iter_mut() {
            for (v, bb) in r.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
    y
}

/// The explicit `(out_dim, in_dim)` matrix of an AdaptiveFastFood, from its diagonals and permutations:
/// rows of `V_j = 1/(σ√n) · S_j H G_j Π_j H B_j`, `(Π z)_i = z_{π(i)}`, stacked, truncated.
pub fn fastfood_matrix(ff: &AdaptiveFastFood) -> Result<Mat> {
    let (n, k) = (ff.n(), ff.n_blocks());
    let h = hadamard(n);
    let (b, g, s) = (vec2(ff.diag_b())?, vec2(ff.diag_g())?, vec2(ff.diag_s())?);
    let c = 1.0 / (ff.sigma() * (n as f64).sqrt());
    let mut rows = Vec::new();
    for j in 0..k {
        let pi = ff.permutation(j)?;
        let mut p = vec![vec![0.0; n]; n];
        for i in 0..n {
            p[i][pi[i] as usize] = 1.0;
        }
        let v = matmul(&diag(&s[j]), &h);
        let v = matmul(&v, &diag(&g[j]));
        let v = matmul(&v, &p);
        let v = matmul(&v, &h);
        let v = matmul(&v, &diag(&b[j]));
        rows.extend(
            v.into_iter()
                .map(|r| r.into_iter().map(|x| x * c).collect::<Vec<_>>()),
        );
    }
    Ok(rows
        .into_iter()
        .take(ff.out_dim())
        .map(|r| r[..ff.in_dim()].to_vec())
        .collect())
}

/// Largest |a - b| / (1 + |b|).
pub fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f64::max)
}

pub fn flat(m: &Mat) -> Vec<f64> {
    m.iter().flatten().copied().collect()
}

/// Compares the gradient of `loss(x) = Σ f(x) ⊙ r` with central differences, for the input and for up to
/// `per_tensor` entries of every variable of `vm`. All f64. Panics with a message on mismatch.
pub fn check_gradients(
    what: &str,
    vm: &VarMap,
    x: &Tensor,
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
    per_tensor: usize,
) -> Result<usize> {
    let xv = Var::from_tensor(x)?;
    let y = f(xv.as_tensor())?;
    let r = randn(y.dims(), 99)?;
    let loss_of = |xs: &Tensor| -> Result<f64> { (f(xs)? * &r)?.sum_all()?.to_scalar::<f64>() };
    let loss = (y * &r)?.sum_all()?;
    let grads = loss.backward()?;
    let eps = 1e-6;
    let mut checked = 0;
    let pick = |len: usize| -> Vec<usize> {
        if len <= per_tensor {
            (0..len).collect()
        } else {
            (0..per_tensor).map(|i| (i * 7919 + 13) % len).collect()
        }
    };
    // Input.
    let gx = grads
        .get(xv.as_tensor())
        .unwrap_or_else(|| panic!("{what}: no gradient for the input"));
    let gx = vec1(gx)?;
    let x0 = vec1(x)?;
    for i in pick(x0.len()) {
        let mut xp = x0.clone();
        xp[i] += eps;
        let mut xm = x0.clone();
        xm[i] -= eps;
        let lp = loss_of(&Tensor::from_vec(xp, x.dims(), &Device::Cpu)?)?;
        let lm = loss_of(&Tensor::from_vec(xm, x.dims(), &Device::Cpu)?)?;
        let fd = (lp - lm) / (2.0 * eps);
        assert!(
            (fd - gx[i]).abs() <= 1e-5 * (1.0 + fd.abs()),
            "{what}: d/dx[{i}] analytic {} vs finite difference {fd}",
            gx[i]
        );
        checked += 1;
    }
    // Every variable.
    let vars: Vec<(String, Var)> = {
        let data = vm.data().lock().unwrap();
        // float variables only: FastFood's permutation table is an integer buffer
        let mut v: Vec<_> = data
            .iter()
            .filter(|(_, v)| v.dtype().is_float())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert!(
        !vars.is_empty() || what.contains("frozen"),
        "{what}: no variables"
    );
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        let g = vec1(g)?;
        let v0 = var.as_tensor().copy()?;
        let flat0 = vec1(&v0)?;
        for i in pick(flat0.len()) {
            let mut p = flat0.clone();
            p[i] += eps;
            var.set(&Tensor::from_vec(p, v0.dims(), &Device::Cpu)?)?;
            let lp = loss_of(x)?;
            let mut m = flat0.clone();
            m[i] -= eps;
            var.set(&Tensor::from_vec(m, v0.dims(), &Device::Cpu)?)?;
            let lm = loss_of(x)?;
            var.set(&v0)?;
            let fd = (lp - lm) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() <= 1e-5 * (1.0 + fd.abs()),
                "{what}: d/d{name}[{i}] analytic {} vs finite difference {fd}",
                g[i]
            );
            checked += 1;
        }
    }
    Ok(checked)
}
