//! Muon (Jordan et al. 2024): momentum whose update for a weight matrix is replaced by the nearest
//! semi-orthogonal matrix, computed by a Newton–Schulz iteration. [`super::AdamW`] applies it to the hidden
//! matrices when [`super::AdamWConfig::muon`] is set; embeddings, the head, biases and gains keep AdamW.

use candle_core::{Result, Tensor};

/// Muon's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MuonConfig {
    /// Momentum μ of `m ← μ·m + g`; the update orthogonalises the Nesterov look-ahead `g + μ·m`.
    pub momentum: f64,
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
}

impl Default for MuonConfig {
    /// μ = 0.95 and 5 iterations, as Muon's authors use.
    fn default() -> Self {
        Self {
            momentum: 0.95,
            ns_steps: 5,
        }
    }
}

/// The scale of an orthogonalised update of a `rows × cols` matrix: `0.2·√max(rows, cols)`, which gives it the
/// root-mean-square of a typical AdamW update (about 0.2 per element, Liu et al. 2025, "Muon is scalable"), so that
/// Muon and AdamW share one learning rate.
pub fn update_scale(rows: usize, cols: usize) -> f64 {
    0.2 * (rows.max(cols) as f64).sqrt()
}

/// Muon's quintic `p(A) = a·I + b·A + c·A²`.
const QUINTIC: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// Approximately `U·Vᵀ` for `g = U·Σ·Vᵀ` (singular values above about 1e-3·‖g‖_F mapped into 0.7–1.2), by `steps`
/// iterations of the quintic `X ← p(A)·X = a·X + (b·A + c·A²)·X`, `A = X·Xᵀ`, from `X = g / ‖g‖_F`, with Muon's
/// coefficients (3.4445, −4.7750, 2.0315). A tall matrix is iterated as its transpose, so `A` is the smaller Gram
/// matrix. `g` must be a matrix.
///
/// Every iterate is `X_k = Q_k·X_0` with `Q_k` a polynomial in `G = X_0·X_0ᵀ`, so for a matrix at least twice as
/// wide as tall the iteration runs on the small side alone: `A_k = Q_k²·G`, `Q_{k+1} = p(A_k)·Q_k`,
/// `A_{k+1} = p(A_k)²·A_k`, and one product `Q·X_0` at the end (4 products of the small side per step instead of 2
/// of the wide one and 1 of the small; the same result up to rounding).
pub fn orthogonalize(g: &Tensor, steps: usize) -> Result<Tensor> {
    let (rows, cols) = g.dims2()?;
    let tall = rows > cols;
    let mut x = if tall {
        g.t()?.contiguous()?
    } else {
        g.clone()
    };
    let norm = x.sqr()?.sum_all()?.sqrt()?.affine(1.0, 1e-7)?;
    x = x.broadcast_div(&norm)?;
    let x = if rows.max(cols) >= 2 * rows.min(cols) {
        by_gram(&x, steps)?
    } else {
        by_rows(x, steps)?
    };
    if tall {
        x.t()?.contiguous()
    } else {
        Ok(x)
    }
}

/// The quintic on a wide `x` itself.
fn by_rows(mut x: Tensor, steps: usize) -> Result<Tensor> {
    let (a, b, c) = QUINTIC;
    for _ in 0..steps {
        let gram = x.matmul(&x.t()?)?;
        let poly = ((&gram * b)? + (gram.matmul(&gram)? * c)?)?;
        x = ((&x * a)? + poly.matmul(&x)?)?;
    }
    Ok(x)
}

/// The quintic on the Gram matrix of a wide `x` (see [`orthogonalize`]).
fn by_gram(x: &Tensor, steps: usize) -> Result<Tensor> {
    let (a, b, c) = QUINTIC;
    let mut gram = x.matmul(&x.t()?)?;
    let eye = Tensor::eye(gram.dim(0)?, gram.dtype(), gram.device())?;
    let mut q: Option<Tensor> = None;
    for k in 0..steps {
        let poly = (((&eye * a)? + (&gram * b)?)? + (gram.matmul(&gram)? * c)?)?;
        if k + 1 < steps {
            gram = poly.matmul(&poly.matmul(&gram)?)?;
        }
        q = Some(match q {
            Some(q) => poly.matmul(&q)?,
            None => poly,
        });
    }
    match q {
        Some(q) => q.matmul(x),
        None => Ok(x.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn seeded(rows: usize, cols: usize, seed: u64) -> Result<Tensor> {
        let mut rng = crate::rng::SeededRng::new(seed, "muon-test");
        let v: Vec<f64> = (0..rows * cols)
            .map(|_| rng.uniform_in(-0.5, 0.5))
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu)
    }

    /// The singular values of the result (square roots of the eigenvalues of `XᵀX` or `XXᵀ`, whichever is
    /// smaller) all lie in Muon's band, and the result keeps the input's singular vectors: `Xᵀ·g` (or `g·Xᵀ`)
    /// is symmetric positive semi-definite.
    #[test]
    fn singular_values_land_near_one_for_wide_and_tall_matrices() -> Result<()> {
        for (rows, cols) in [(12, 40), (40, 12), (16, 16)] {
            let g = seeded(rows, cols, 7 + rows as u64)?;
            let x = orthogonalize(&g, 5)?;
            assert_eq!(x.dims(), &[rows, cols]);
            let small = rows.min(cols);
            let gram = if rows <= cols {
                x.matmul(&x.t()?)?
            } else {
                x.t()?.matmul(&x)?
            };
            // Power iteration on the Gram matrix bounds the largest singular value; its trace / size and the
            // trace of its square bound the spread.
            let gram_v = gram.to_vec2::<f64>()?;
            let trace: f64 = (0..small).map(|i| gram_v[i][i]).sum();
            let mean_sq = trace / small as f64;
            assert!(
                (0.5..1.5).contains(&mean_sq),
                "{rows}x{cols}: mean squared singular value {mean_sq}"
            );
            let mut v = vec![1.0f64; small];
            let mut top = 0.0;
            for _ in 0..200 {
                let w: Vec<f64> = (0..small)
                    .map(|i| (0..small).map(|j| gram_v[i][j] * v[j]).sum())
                    .collect();
                top = w.iter().map(|x| x * x).sum::<f64>().sqrt();
                v = w.iter().map(|x| x / top).collect();
            }
            assert!(
                top.sqrt() < 1.25,
                "{rows}x{cols}: top singular value {}",
                top.sqrt()
            );
            // Same singular vectors: the cross product is symmetric with a positive trace.
            let cross = if rows <= cols {
                x.matmul(&g.t()?)?
            } else {
                x.t()?.matmul(&g)?
            };
            let asym = (&cross - cross.t()?)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            let scale = cross.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(asym < 1e-3 * scale, "{rows}x{cols}: asymmetry {asym}");
        }
        Ok(())
    }

    /// The iteration on the Gram matrix equals the one on the matrix (f64, to rounding), for both orientations.
    #[test]
    fn gram_iteration_equals_the_direct_one() -> Result<()> {
        for (rows, cols) in [(10, 36), (36, 10), (8, 16)] {
            let g = seeded(rows, cols, 11 + cols as u64)?;
            let wide = if rows > cols {
                g.t()?.contiguous()?
            } else {
                g.clone()
            };
            let norm = wide.sqr()?.sum_all()?.sqrt()?;
            let x = wide.broadcast_div(&norm)?;
            for steps in [1, 5] {
                let direct = by_rows(x.clone(), steps)?;
                let gram = by_gram(&x, steps)?;
                let diff = (direct - gram)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(diff < 1e-10, "{rows}x{cols}, {steps} steps: {diff}");
            }
        }
        Ok(())
    }

    /// f32 follows f64 at the main job's shapes (the Gram iteration for the wide ones, the direct one for the
    /// square), to a small fraction of the result's elements (about `1/√cols`).
    #[test]
    fn f32_matches_f64_and_a_vector_is_refused() -> Result<()> {
        for (rows, cols) in [(24, 56), (96, 384), (288, 96), (96, 96)] {
            let g = seeded(rows, cols, 3 + cols as u64)?;
            let a = orthogonalize(&g, 5)?;
            let b = orthogonalize(&g.to_dtype(DType::F32)?, 5)?.to_dtype(DType::F64)?;
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-4, "{rows}x{cols}: f32 against f64: {diff}");
        }
        let g = seeded(24, 56, 3)?;
        assert!(orthogonalize(&g.flatten_all()?, 5).is_err());
        Ok(())
    }
}
