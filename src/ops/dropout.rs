//! Fused inverted dropout whose mask is a counter-based hash of `(seed, element index)`: nothing is stored for the
//! backward, which applies the same mask to the incoming gradient.

use super::kernels::{
    dropout_row, expect_contiguous, expect_same_shape, map_real, out, row_key, Real,
};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per hash key (and per parallel task).
const BLOCK: usize = 1 << 12;

pub(crate) struct Dropout {
    pub p: f32,
    pub seed: u64,
}

impl Dropout {
    /// `dropout(x)`, or `residual + dropout(x)`.
    fn run<T: Real>(&self, x: &[T], residual: Option<&[T]>) -> Vec<T> {
        let threshold = (self.p as f64 * 4_294_967_296.0).min(4_294_967_295.0) as u32;
        let scale = T::c(1.0 / (1.0 - self.p as f64));
        let mut y = vec![T::ZERO; x.len()];
        y.par_chunks_mut(BLOCK)
            .zip(x.par_chunks(BLOCK))
            .enumerate()
            .for_each(|(blk, (yc, xc))| {
                dropout_row(row_key(self.seed, blk as u64), threshold, scale, yc);
                for (y, &x) in yc.iter_mut().zip(xc) {
                    *y *= x;
                }
                if let Some(r) = residual {
                    for (y, &r) in yc.iter_mut().zip(&r[blk * BLOCK..]) {
                        *y += r;
                    }
                }
            });
        y
    }
}

/// `residual + dropout(x)` as one node (CustomOp2 on `residual`, `x`): the gradient passes to the residual
/// unchanged and to `x` through the same mask.
pub(crate) struct ResidualDropout(pub Dropout);

impl CustomOp2 for ResidualDropout {
    fn name(&self) -> &'static str {
        "fused-residual-dropout"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        expect_same_shape(l1, l2, self.name())?;
        fn go<T: Real>(
            op: &ResidualDropout,
            (s1, l1): (&CpuStorage, &Layout),
            (s2, l2): (&CpuStorage, &Layout),
        ) -> Result<(CpuStorage, Shape)> {
            let r = expect_contiguous::<T>(s1, l1, op.name())?;
            let x = expect_contiguous::<T>(s2, l2, op.name())?;
            Ok(out(op.0.run(x, Some(r)), l1.shape().clone()))
        }
        map_real!(self.name(), s1.dtype(), |T| go::<T>(
            self,
            (s1, l1),
            (s2, l2)
        ))
    }

    #[cfg(feature = "cuda-untested")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        expect_same_shape(l1, l2, self.name())?;
        let y = super::cuda::dropout((s2, l2), Some((s1, l1)), self.0.p, self.0.seed)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _residual: &Tensor,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let same = Dropout {
            p: self.0.p,
            seed: self.0.seed,
        };
        let g = grad.contiguous()?;
        let dx = g.apply_op1_no_bwd(&same)?;
        Ok((Some(g), Some(dx)))
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map_real!(self.name(), s.dtype(), |T| {
            let x = expect_contiguous::<T>(s, l, self.name())?;
            Ok(out(self.run(x, None), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda-untested")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = super::cuda::dropout((s, l), None, self.p, self.seed)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let same = Dropout {
            p: self.p,
            seed: self.seed,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&same)?))
    }
}
