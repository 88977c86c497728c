//! Fused layer normalisation over the last dimension (one pass per row forward, one pass backward that recomputes
//! the row statistics instead of storing them).

use super::kernels::{expect_contiguous, map_real, multiversion, out, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `y = (x - mean) · rstd · w + b` on `(rows, d)`, `w`, `b`: `(d,)`.
pub(crate) struct LayerNorm {
    pub eps: f64,
}

/// Mean and `1 / √(var + eps)` of one row (two passes, as the backward recomputes them).
#[inline(always)]
fn row_stats<T: Real>(xr: &[T], inv_d: T, eps: f64) -> (T, T) {
    let mut s = T::ZERO;
    for &v in xr {
        s += v;
    }
    let mean = s * inv_d;
    let mut q = T::ZERO;
    for &v in xr {
        let c = v - mean;
        q += c * c;
    }
    (mean, T::ONE / (q * inv_d + T::c(eps)).sqrt())
}

multiversion! {
    fn ln_fwd_rows<T: Real>(x: &[T], w: &[T], b: &[T], y: &mut [T], d: usize, eps: f64) {
        let inv_d = T::c(1.0 / d as f64);
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let (mean, rstd) = row_stats(xr, inv_d, eps);
            for i in 0..d {
                yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
            }
        }
    }
}

multiversion! {
    /// Writes `dx` rows and accumulates `dw`, `db` (`acc` = `[dw; db]`, length `2d`).
    fn ln_bwd_rows<T: Real>(x: &[T], w: &[T], g: &[T], dx: &mut [T], acc: &mut [T], d: usize, eps: f64) {
        let inv_d = T::c(1.0 / d as f64);
        let (dw, db) = acc.split_at_mut(d);
        for ((xr, gr), dxr) in x.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let (mean, rstd) = row_stats(xr, inv_d, eps);
            let mut sg = T::ZERO;
            let mut sgx = T::ZERO;
            for i in 0..d {
                let xh = (xr[i] - mean) * rstd;
                let gw = gr[i] * w[i];
                sg += gw;
                sgx += gw * xh;
                dw[i] += gr[i] * xh;
                db[i] += gr[i];
            }
            let mg = sg * inv_d;
            let mgx = sgx * inv_d;
            for i in 0..d {
                let xh = (xr[i] - mean) * rstd;
                dxr[i] = rstd * (gr[i] * w[i] - mg - xh * mgx);
            }
        }
    }
}

/// Rows per parallel task: a fixed block of about [`super::kernels::PAR_GRAIN`] elements, not a share of the
/// threads, so that the backward's sums of `dw` and `db` over the tasks (in task order) come out the same bit for
/// bit whatever the number of threads.
fn rows_per_task(d: usize) -> usize {
    (super::kernels::PAR_GRAIN / d.max(1)).max(1)
}

impl LayerNorm {
    fn fwd<T: Real>(&self, x: &[T], w: &[T], b: &[T], d: usize) -> Vec<T> {
        let mut y = vec![T::ZERO; x.len()];
        let chunk = rows_per_task(d) * d;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(yc, xc)| ln_fwd_rows(xc, w, b, yc, d, self.eps));
        y
    }
}

fn dims(l1: &Layout, l2: &Layout, l3: &Layout, op: &str) -> Result<(usize, usize)> {
    let (rows, d) = l1.shape().dims2()?;
    if l2.shape().dims() != [d] || l3.shape().dims() != [d] {
        candle_core::bail!(
            "{op}: expected weight and bias of shape ({d},), got {:?} and {:?}",
            l2.shape(),
            l3.shape()
        )
    }
    Ok((rows, d))
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, d) = dims(l1, l2, l3, self.name())?;
        map_real!(self.name(), s1.dtype(), |T| {
            let x = expect_contiguous::<T>(s1, l1, self.name())?;
            let w = expect_contiguous::<T>(s2, l2, self.name())?;
            let b = expect_contiguous::<T>(s3, l3, self.name())?;
            Ok(out(self.fwd(x, w, b, d), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda-untested")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        dims(l1, l2, l3, self.name())?;
        let y = super::cuda::layer_norm((s1, l1), (s2, l2), (s3, l3), self.eps)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, d) = x.dims2()?;
        let grad = grad.contiguous()?;
        let packed = x.apply_op3_no_bwd(w, &grad, &LayerNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?;
        let dw = packed.get(rows)?;
        let db = packed.get(rows + 1)?;
        debug_assert_eq!(dw.dims(), [d]);
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `(rows, d)` of the backward's inputs `x` `(rows, d)`, `w` `(d,)`, `grad_y` `(rows, d)`.
fn bwd_dims(l1: &Layout, l2: &Layout, l3: &Layout, op: &str) -> Result<(usize, usize)> {
    let (rows, d) = l1.shape().dims2()?;
    if l3.shape() != l1.shape() || l2.shape().dims() != [d] {
        candle_core::bail!("{op}: shape mismatch")
    }
    Ok((rows, d))
}

/// Backward of [`LayerNorm`]: inputs `(x, w, grad_y)`, output `(rows + 2, d)` packing `dx`, then `dw`, then `db`.
struct LayerNormBwd {
    eps: f64,
}

impl LayerNormBwd {
    fn run<T: Real>(&self, x: &[T], w: &[T], g: &[T], rows: usize, d: usize) -> Vec<T> {
        let mut packed = vec![T::ZERO; (rows + 2) * d];
        let (dx, acc) = packed.split_at_mut(rows * d);
        let chunk = rows_per_task(d) * d;
        let partials: Vec<Vec<T>> = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(g.par_chunks(chunk))
            .map(|((dxc, xc), gc)| {
                let mut a = vec![T::ZERO; 2 * d];
                ln_bwd_rows(xc, w, gc, dxc, &mut a, d, self.eps);
                a
            })
            .collect();
        for p in partials {
            for (a, v) in acc.iter_mut().zip(p) {
                *a += v;
            }
        }
        packed
    }
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, d) = bwd_dims(l1, l2, l3, self.name())?;
        map_real!(self.name(), s1.dtype(), |T| {
            let x = expect_contiguous::<T>(s1, l1, self.name())?;
            let w = expect_contiguous::<T>(s2, l2, self.name())?;
            let g = expect_contiguous::<T>(s3, l3, self.name())?;
            Ok(out(self.run(x, w, g, rows, d), (rows + 2, d)))
        })
    }

    #[cfg(feature = "cuda-untested")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, d) = bwd_dims(l1, l2, l3, self.name())?;
        let packed = super::cuda::layer_norm_bwd((s1, l1), (s2, l2), (s3, l3), self.eps)?;
        Ok((packed, (rows + 2, d).into()))
    }
}
